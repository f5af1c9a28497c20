import Foundation

/// Query vectors taken from the catalogue for measuring recall, with their own ids (a query's
/// own vector is left out of both answers: similar products never include the product itself).
struct RecallQueries {
    let dimension: Int
    var vectors: [Float] = []
    var ids: [Int64] = []
    init(dimension: Int) { self.dimension = dimension }
    var count: Int { ids.count }
    mutating func append(_ v: ArraySlice<Float>, id: Int64) {
        vectors.append(contentsOf: v)
        ids.append(id)
    }
}

/// Exact k nearest neighbours of the queries, accumulated chunk by chunk while the vectors
/// stream past (FAISS's BLAS brute force on each chunk, merged here).
struct GroundTruth {
    let queries: RecallQueries
    let k: Int
    let metric: IndexMetric
    private(set) var best: [[(id: Int64, distance: Float)]]

    init(queries: RecallQueries, k: Int, metric: IndexMetric) {
        self.queries = queries
        self.k = k
        self.metric = metric
        best = Array(repeating: [], count: queries.count)
    }

    func better(_ a: Float, _ b: Float) -> Bool { metric == .l2 ? a < b : a > b }

    mutating func merge(chunk: UnsafeBufferPointer<Float>, ids: [Int64]) throws {
        guard queries.count > 0, !ids.isEmpty else { return }
        let kk = min(k, ids.count)
        let found = try queries.vectors.withUnsafeBufferPointer {
            try FaissIndex.exactNeighbours(queries: $0, vectors: chunk, dimension: queries.dimension, k: kk, metric: metric)
        }
        for q in 0..<queries.count {
            var merged = best[q]
            for (row, distance) in found.results(of: q) { merged.append((ids[Int(row)], distance)) }
            merged.sort { better($0.distance, $1.distance) || ($0.distance == $1.distance && $0.id < $1.id) }
            best[q] = Array(merged.prefix(k))
        }
    }

    /// The query's exact top `n`, without itself.
    func top(_ q: Int, _ n: Int) -> [Int64] {
        Array(best[q].lazy.map(\.id).filter { $0 != queries.ids[q] }.prefix(n))
    }
}

/// Re-ranking for a compressed index: `factor × k` candidates by code, the best k by exact vector.
struct Refining {
    let vectors: ExactVectors
    let factor: Int
}

enum Tuning {
    /// recall@10 of `index` under `parameters` against `truth` (re-ranked when `refine` is given).
    static func recall(index: FaissIndex, truth: GroundTruth, parameters: SearchParameters, refine: Refining? = nil) throws -> Double {
        let k = IndexBuilder.recallK
        let found = try index.search(truth.queries.vectors, k: (k + 1) * (refine?.factor ?? 1), parameters: parameters)
        let d = truth.queries.dimension
        var sum = 0.0
        for q in 0..<truth.queries.count {
            let exact = Set(truth.top(q, k))
            guard !exact.isEmpty else { sum += 1; continue }
            var results = found.results(of: q)
            if let refine {
                results = try refine.vectors.rerank(Array(truth.queries.vectors[q * d..<(q + 1) * d]), results, k: k + 1,
                                                    metric: truth.metric)
            }
            let approx = results.map(\.id).filter { $0 != truth.queries.ids[q] }.prefix(k)
            sum += Double(approx.filter(exact.contains).count) / Double(exact.count)
        }
        return sum / Double(max(1, truth.queries.count))
    }

    /// The smallest nprobe (IVF) or efSearch (HNSW) that meets `target`, with the curve measured.
    static func tune(index: FaissIndex, truth: GroundTruth, target: Double, refine: Refining? = nil,
                     progress: @Sendable (IndexBuildProgress) -> Void) throws -> (IndexManifest.Search, IndexManifest.Recall?) {
        guard truth.queries.count > 0 else { return (IndexManifest.Search(), nil) }
        var curve: [IndexManifest.RecallPoint] = []
        var chosen = IndexManifest.Search()
        var last = 0.0
        let ladder: [(Int?, Int?)] = switch index.kind {
        case .ivf: IndexPlan.nprobeLadder(lists: index.listCount).map { ($0, nil) }
        case .hnsw: IndexPlan.efSearchLadder.map { (nil, $0) }
        default: [(nil, nil)]
        }
        for (i, (nprobe, ef)) in ladder.enumerated() {
            progress(IndexBuildProgress(phase: "measuring recall@10", done: i, total: ladder.count))
            last = try recall(index: index, truth: truth, parameters: SearchParameters(nprobe: nprobe, efSearch: ef), refine: refine)
            curve.append(.init(nprobe: nprobe, efSearch: ef, recall: last))
            chosen = IndexManifest.Search(nprobe: nprobe, efSearch: ef)
            if last >= target { break }
        }
        return (chosen, IndexManifest.Recall(k: IndexBuilder.recallK, measured: last, target: target, met: last >= target,
                                             queries: truth.queries.count, curve: curve))
    }
}
