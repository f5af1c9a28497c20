import Foundation

/// When a faster precision (or the fast JPEG decode) may replace fp32: only when its vectors
/// keep the answers fp32's give, measured on calibration photos.
///
/// Two figures, both against fp32's vectors of the same photos (exact decode):
/// - **top-k neighbour overlap**: for each photo, its ``neighbours`` nearest other photos of the
///   sample by fp32 vectors and by the candidate's; the mean fraction they share (and the same
///   among a store's vectors, when one is given). This is what a shopper sees: the same
///   similar products.
/// - **centered cosine**: the cosine between fp32's and the candidate's vector of the same photo
///   after subtracting fp32's mean vector; the median over the sample. Raw cosines of ResNet
///   features are all close to 1 (every vector shares a large mean component), so centering is
///   what makes drift visible.
///
/// ```swift
/// let drift = PrecisionGuard.drift(reference: fp32Vectors, candidate: bf16Vectors, k: 10)
/// PrecisionGuard().keeps(drift)   // overlap >= 0.95 and centered cosine >= 0.99
/// ```
public struct PrecisionGuard: Sendable, Hashable, Codable {
    /// Minimum mean top-k neighbour overlap with fp32 (sample, and store when given). 0.95.
    public var minOverlap: Double
    /// Minimum median centered cosine to fp32. 0.99.
    public var minCenteredCosine: Double
    /// k of the neighbour overlap. 10, as the similar-products answer.
    public var neighbours: Int
    /// Calibration photos needed (decodable ones). 64.
    public var minimumPhotos: Int
    /// A lower precision must be faster than fp32 by more than this fraction (0.10) to be
    /// chosen, so `auto` is never slower than fp32 by more than the noise of one measurement.
    public var speedMargin: Double

    public init(
        minOverlap: Double = 0.95, minCenteredCosine: Double = 0.99, neighbours: Int = 10,
        minimumPhotos: Int = 64, speedMargin: Double = 0.10
    ) {
        self.minOverlap = minOverlap
        self.minCenteredCosine = minCenteredCosine
        self.neighbours = neighbours
        self.minimumPhotos = minimumPhotos
        self.speedMargin = speedMargin
    }

    /// True when `drift` is within both thresholds (the store's overlap too, when measured).
    public func keeps(_ drift: Drift) -> Bool {
        drift.overlap >= minOverlap && drift.centeredCosine >= minCenteredCosine
            && (drift.storeOverlap.map { $0 >= minOverlap } ?? true)
    }

    /// What fails, e.g. `top-10 overlap 0.912 < 0.95, centered cosine 0.957 < 0.99`; empty when it keeps.
    public func shortfall(_ drift: Drift) -> String {
        var out: [String] = []
        if drift.overlap < minOverlap {
            out.append("top-\(neighbours) overlap \(Self.f3(drift.overlap)) < \(minOverlap)")
        }
        if let s = drift.storeOverlap, s < minOverlap {
            out.append("top-\(neighbours) overlap among the store's vectors \(Self.f3(s)) < \(minOverlap)")
        }
        if drift.centeredCosine < minCenteredCosine {
            out.append("centered cosine \(Self.f3(drift.centeredCosine)) < \(minCenteredCosine)")
        }
        return out.joined(separator: ", ")
    }

    static func f3(_ x: Double) -> String { String(format: "%.3f", x) }

    /// The drift of `candidate` from `reference` (row i of each: the same photo; both
    /// L2-normalised). `store`: other vectors (fp32, normalised) among which each photo's
    /// neighbours are also compared; empty: not measured.
    public static func drift(reference: [[Float]], candidate: [[Float]], store: [[Float]] = [], k: Int = 10) -> Drift {
        precondition(reference.count == candidate.count, "one candidate vector per reference vector")
        let n = reference.count
        guard n > 1, let dim = reference.first?.count else {
            return Drift(overlap: 1, centeredCosine: 1, storeOverlap: nil, photos: n)
        }
        // Centered cosine, centred on fp32's mean.
        var mean = [Float](repeating: 0, count: dim)
        for v in reference { for j in 0..<dim { mean[j] += v[j] } }
        for j in 0..<dim { mean[j] /= Float(n) }
        var cosines: [Double] = []
        for i in 0..<n {
            var dot: Double = 0, na: Double = 0, nb: Double = 0
            for j in 0..<dim {
                let a = Double(reference[i][j] - mean[j]), b = Double(candidate[i][j] - mean[j])
                dot += a * b
                na += a * a
                nb += b * b
            }
            cosines.append(na > 0 && nb > 0 ? dot / (na * nb).squareRoot() : 1)
        }
        cosines.sort()
        let median = n % 2 == 1 ? cosines[n / 2] : (cosines[n / 2 - 1] + cosines[n / 2]) / 2

        // Neighbours among the sample, self excluded.
        let kk = min(k, n - 1)
        var shared = 0
        for i in 0..<n {
            let a = nearest(reference[i], among: reference, excluding: i, k: kk)
            let b = nearest(candidate[i], among: candidate, excluding: i, k: kk)
            shared += a.intersection(b).count
        }
        let overlap = Double(shared) / Double(n * kk)

        var storeOverlap: Double?
        if !store.isEmpty {
            let ks = min(k, store.count)
            var s = 0
            for i in 0..<n {
                s +=
                    nearest(reference[i], among: store, excluding: nil, k: ks)
                    .intersection(nearest(candidate[i], among: store, excluding: nil, k: ks)).count
            }
            storeOverlap = Double(s) / Double(n * ks)
        }
        return Drift(overlap: overlap, centeredCosine: median, storeOverlap: storeOverlap, photos: n)
    }

    /// Indices of the `k` rows of `among` with the largest dot product with `q` (ties by index).
    static func nearest(_ q: [Float], among rows: [[Float]], excluding: Int?, k: Int) -> Set<Int> {
        var scored: [(Float, Int)] = []
        scored.reserveCapacity(rows.count)
        for (i, r) in rows.enumerated() where i != excluding {
            var d: Float = 0
            for j in 0..<min(q.count, r.count) { d += q[j] * r[j] }
            scored.append((d, i))
        }
        scored.sort { $0.0 != $1.0 ? $0.0 > $1.0 : $0.1 < $1.1 }
        return Set(scored.prefix(k).map(\.1))
    }
}

/// How far a precision's (or decode's) vectors are from fp32's on the same photos.
public struct Drift: Sendable, Hashable, Codable {
    /// Mean top-k neighbour overlap among the calibration sample (1: the same neighbours).
    public var overlap: Double
    /// Median centered cosine to fp32's vector of the same photo (1: identical).
    public var centeredCosine: Double
    /// Mean top-k overlap among a store's vectors; nil when no store was given.
    public var storeOverlap: Double?
    /// Photos measured.
    public var photos: Int

    public init(overlap: Double, centeredCosine: Double, storeOverlap: Double? = nil, photos: Int) {
        self.overlap = overlap
        self.centeredCosine = centeredCosine
        self.storeOverlap = storeOverlap
        self.photos = photos
    }

    enum CodingKeys: String, CodingKey {
        case overlap = "top_k_overlap", centeredCosine = "centered_cosine_median", storeOverlap = "store_top_k_overlap"
        case photos
    }
}
