import Foundation

/// Which FAISS index to build for a catalogue, and why: what `--index auto` decides.
///
/// The rules, from figures measured on this project's 2-core machine (Debian's FAISS 1.7.3,
/// 2048-d; see docs/faiss-index.md, "Which index"):
/// - **Flat** (exact) while the catalogue is small: below ``flatLimit`` vectors one query
///   scans them all in a few milliseconds (10k took 12-15 ms), and there is nothing to tune.
/// - **IVF-Flat** above it: nlist = 4·√N, lowered so that every list gets at least 39
///   training points (faiss #2513); exact distances inside the visited lists; nprobe is
///   raised until the recall target is met.
/// - **IVF-SQ8** when the float vectors do not fit `--max-memory` but 8-bit codes (¼) do.
/// - **IVF-PQ** below that, with as many sub-quantizers as the budget allows.
/// - Both compressed kinds **re-rank**: the codes find ``refineFactor`` × k candidates, and
///   their exact vectors, memory-mapped from `vectors.f32` beside the index (not counted
///   in `--max-memory`: the kernel pages rows in and out), choose the k answered.
/// - Below the smallest PQ, ``auto(count:dimension:maxMemory:)`` refuses, naming the budget
///   that the smallest kind needs.
/// - **HNSW** is never chosen automatically: at 100k × 2048 it took 24 minutes to build here
///   (IVF-Flat: 37 s), stores full vectors (no memory saving) and cannot remove vectors, so
///   `--incremental` could not keep it. Name it with `--index HNSW32` when that is acceptable.
public struct IndexPlan: Sendable, Codable, Hashable {
    /// The FAISS factory string (before the shim's IDMap2 wrapping).
    public var factory: String
    /// True when the index is approximate: recall is measured and nprobe/efSearch tuned.
    public var approximate: Bool
    /// Vectors used to train (0: no training needed).
    public var trainingSize: Int
    /// Why this index, in a sentence for people.
    public var reason: String
    /// Compressed kinds: candidates per answer re-ranked by exact vectors (nil: none).
    public var refineFactor: Int?

    public static let flatLimit = 5_000
    /// FAISS warns below 39 training points per centroid; fewer give poor lists.
    public static let minPointsPerList = 39

    public init(factory: String, approximate: Bool, trainingSize: Int, reason: String, refineFactor: Int? = nil) {
        self.factory = factory
        self.approximate = approximate
        self.trainingSize = trainingSize
        self.reason = reason
        self.refineFactor = refineFactor
    }

    /// Whether a factory string stores compressed codes (SQ, PQ, ...), not the vectors.
    public static func isCompressed(_ factory: String) -> Bool {
        let f = factory.uppercased()
        return f.contains("SQ") || f.contains("PQ") || f.contains("LSH") || f.contains("RQ")
    }

    /// Candidates re-ranked per answer: 8-bit scalar codes rank nearly right (4 × k); PQ codes
    /// are coarser (16 × k). Chosen so that recall@10 reaches 0.95 at a moderate nprobe on
    /// the bench's clustered data; see docs/faiss-index.md, "Which index".
    public static func refineFactor(for factory: String) -> Int? {
        guard isCompressed(factory) else { return nil }
        return factory.uppercased().contains("SQ") ? 4 : 16
    }

    /// Bytes the index's vectors take: float32 for flat kinds, `codeBytes` per vector otherwise,
    /// plus 8 bytes of id.
    static func bytes(count: Int, codeBytes: Int) -> Int64 { Int64(count) * Int64(codeBytes + 8) }

    /// PQ sub-quantizer counts tried, most bytes first (8 bits each; each covers at least 4 dimensions).
    static func pqSizes(dimension: Int) -> [Int] {
        [512, 256, 128, 64, 32, 16, 8].filter { dimension % $0 == 0 && $0 * 4 <= dimension }
    }

    /// The automatic choice for `count` vectors of `dimension` floats within `maxMemory` bytes.
    /// Throws when even the smallest product quantisation exceeds it, naming the budget it needs.
    public static func auto(count: Int, dimension: Int, maxMemory: Int64) throws -> IndexPlan {
        let flatBytes = bytes(count: count, codeBytes: dimension * 4)
        if count < flatLimit && flatBytes <= maxMemory {
            return IndexPlan(
                factory: "Flat", approximate: false, trainingSize: 0,
                reason: "\(count) vectors < \(flatLimit): exact search is fast enough and needs no tuning")
        }
        let nlist = listCount(for: count)
        let training = trainingSize(count: count, lists: nlist)
        if flatBytes <= maxMemory {
            return IndexPlan(
                factory: "IVF\(nlist),Flat", approximate: true, trainingSize: training,
                reason: "\(count) vectors: inverted lists (nlist \(nlist) ≈ 4·√N, ≥ \(minPointsPerList) points each) "
                    + "over exact vectors (\(sizeText(flatBytes)) fits --max-memory \(sizeText(maxMemory)))")
        }
        let sqBytes = bytes(count: count, codeBytes: dimension)
        if sqBytes <= maxMemory {
            let factory = "IVF\(nlist),SQ8"
            return IndexPlan(
                factory: factory, approximate: true, trainingSize: training,
                reason: "float vectors (\(sizeText(flatBytes))) exceed --max-memory \(sizeText(maxMemory)); "
                    + "8-bit scalar codes take \(sizeText(sqBytes)), re-ranked by exact vectors from vectors.f32",
                refineFactor: refineFactor(for: factory))
        }
        // Product quantisation: the most sub-quantizers (of 8 bits) that fit and divide the dimension.
        let candidates = pqSizes(dimension: dimension)
        guard let m = candidates.first(where: { bytes(count: count, codeBytes: $0) <= maxMemory }) else {
            let smallest = candidates.last ?? 8
            throw IndexError(
                .argument,
                "--max-memory \(sizeText(maxMemory)) is below the smallest index for \(count) vectors: "
                    + "IVF\(nlist),PQ\(smallest) needs \(sizeText(bytes(count: count, codeBytes: smallest))) "
                    + "(\(smallest + 8) bytes per vector); raise --max-memory to at least that")
        }
        let factory = "IVF\(nlist),PQ\(m)x8np"
        return IndexPlan(
            factory: factory, approximate: true, trainingSize: max(training, min(count, 256 * 64)),
            reason: "even 8-bit codes (\(sizeText(sqBytes))) exceed --max-memory \(sizeText(maxMemory)); "
                + "product quantisation with \(m) bytes per vector (\(sizeText(bytes(count: count, codeBytes: m)))), "
                + "re-ranked by exact vectors from vectors.f32",
            refineFactor: refineFactor(for: factory))
    }

    /// "96 KiB", "1,234 MiB": a budget in the unit a person would pass to --max-memory.
    static func sizeText(_ b: Int64) -> String {
        b < 10 << 20
            ? String(format: "%.0f KiB", (Double(b) / 1024).rounded(.up))
            : String(format: "%.0f MiB", (Double(b) / 1_048_576).rounded(.up))
    }

    /// The next larger automatic choice than `factory` (for a build whose recall fell short):
    /// its factory string and the `--max-memory` it needs. Nil above IVF-Flat.
    public static func nextLarger(than factory: String, count: Int, dimension: Int) -> (factory: String, bytes: Int64)?
    {
        let nlist = listCount(for: count)
        var ladder = pqSizes(dimension: dimension).reversed().map {
            ("IVF\(nlist),PQ\($0)x8np", bytes(count: count, codeBytes: $0))
        }
        ladder.append(("IVF\(nlist),SQ8", bytes(count: count, codeBytes: dimension)))
        ladder.append(("IVF\(nlist),Flat", bytes(count: count, codeBytes: dimension * 4)))
        guard let i = ladder.firstIndex(where: { $0.0 == factory }), i + 1 < ladder.count else { return nil }
        return ladder[i + 1]
    }

    /// An explicit factory string: approximate unless it is plain Flat.
    public static func explicit(_ factory: String, count: Int) -> IndexPlan {
        let exact = factory == "Flat" || factory == "IDMap2,Flat"
        let lists = factory.split(separator: ",").compactMap { part -> Int? in
            part.hasPrefix("IVF") ? Int(part.dropFirst(3).prefix { $0.isNumber }) : nil
        }.first
        let training =
            lists.map { trainingSize(count: count, lists: $0) }
            ?? (factory.contains("PQ") || factory.contains("SQ") ? min(count, 65_536) : 0)
        return IndexPlan(
            factory: factory, approximate: !exact, trainingSize: training, reason: "--index \(factory)",
            refineFactor: refineFactor(for: factory))
    }

    /// nlist ≈ 4·√N, at most N / 39, at least 1.
    public static func listCount(for count: Int) -> Int {
        let byRoot = Int((4 * Double(count).squareRoot()).rounded())
        return max(1, min(byRoot, count / minPointsPerList))
    }

    /// All vectors up to 256 per list (FAISS's own cap), at most max(131,072, 40 per list):
    /// k-means over 2048-d points is the slowest part of a build here.
    public static func trainingSize(count: Int, lists: Int) -> Int {
        min(count, lists * 256, max(131_072, lists * 40))
    }

    /// The settings tried, in order, when tuning for recall.
    public static func nprobeLadder(lists: Int) -> [Int] {
        var out: [Int] = []
        var p = 1
        while p < lists {
            out.append(p)
            p *= 2
        }
        out.append(lists)
        return out
    }

    public static let efSearchLadder = [16, 32, 64, 128, 256, 512, 1024, 2048]
}
