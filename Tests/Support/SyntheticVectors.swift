import Foundation

/// Seeded vectors with the neighbour structure of real image embeddings: a mixture of tight
/// clusters, each spread along a few directions only (low intrinsic dimension), non-negative
/// (as ResNet features after ReLU) and L2-normalised. Uniform random vectors have no near
/// neighbours and make every approximate index look broken; these do not.
public struct SyntheticVectors: Sendable {
    public let count: Int
    public let dimension: Int
    /// Row-major, count × dimension.
    public let values: [Float]
    /// The cluster of each row.
    public let cluster: [Int]

    public init(count: Int, dimension: Int, clusters: Int, intrinsic: Int = 4, spread: Float = 0.35, seed: UInt64) {
        var rng = TestRNG(seed: seed)
        var centres: [[Float]] = []
        var bases: [[[Float]]] = []
        for _ in 0..<clusters {
            centres.append((0..<dimension).map { _ in abs(rng.gaussian()) })
            bases.append((0..<intrinsic).map { _ in (0..<dimension).map { _ in rng.gaussian() } })
        }
        var values = [Float](repeating: 0, count: count * dimension)
        var cluster = [Int](repeating: 0, count: count)
        for i in 0..<count {
            let c = Int(rng.next() % UInt64(clusters))
            cluster[i] = c
            var row = centres[c]
            for b in bases[c] {
                let a = rng.gaussian() * spread
                for j in 0..<dimension { row[j] += a * b[j] }
            }
            var norm: Float = 0
            for j in 0..<dimension {
                row[j] = max(0, row[j])
                norm += row[j] * row[j]
            }
            norm = max(norm.squareRoot(), 1e-12)
            for j in 0..<dimension { values[i * dimension + j] = row[j] / norm }
        }
        self.count = count
        self.dimension = dimension
        self.values = values
        self.cluster = cluster
    }

    public func row(_ i: Int) -> [Float] { Array(values[i * dimension..<(i + 1) * dimension]) }
}

/// A tiny seeded generator for tests (SplitMix64 + Box-Muller).
public struct TestRNG: RandomNumberGenerator {
    var state: UInt64
    public init(seed: UInt64) { state = seed &+ 0x1234_5678 }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    public mutating func uniform() -> Float { Float(next() >> 40) / Float(1 << 24) }
    public mutating func gaussian() -> Float {
        let u = max(uniform(), 1e-7), v = uniform()
        return (-2 * log(u)).squareRoot() * cos(2 * .pi * v)
    }
}

/// The exact nearest neighbours, by brute force in plain Swift: the reference every index is
/// checked against.
public enum ExactSearch {
    public static func squaredL2(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
        var s: Float = 0
        for (x, y) in zip(a, b) { s += (x - y) * (x - y) }
        return s
    }

    /// The k nearest rows of `data` to `query` (squared L2), as (row, distance), nearest first;
    /// only rows `allowed` returns true for.
    public static func nearest(
        _ query: [Float], in data: SyntheticVectors, k: Int,
        allowed: (Int) -> Bool = { _ in true }
    ) -> [(row: Int, distance: Float)] {
        var all: [(row: Int, distance: Float)] = []
        let d = data.dimension
        for i in 0..<data.count where allowed(i) {
            all.append((i, squaredL2(query[...], data.values[i * d..<(i + 1) * d])))
        }
        all.sort { $0.distance < $1.distance || ($0.distance == $1.distance && $0.row < $1.row) }
        return Array(all.prefix(k))
    }
}
