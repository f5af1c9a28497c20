import EwallCore
import EwallStore
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
            try FaissIndex.exactNeighbours(
                queries: $0, vectors: chunk, dimension: queries.dimension, k: kk, metric: metric)
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
    static func recall(
        index: FaissIndex, truth: GroundTruth, parameters: SearchParameters, refine: Refining? = nil
    ) throws -> Double {
        let k = IndexBuilder.recallK
        let found = try index.search(truth.queries.vectors, k: (k + 1) * (refine?.factor ?? 1), parameters: parameters)
        let d = truth.queries.dimension
        var sum = 0.0
        for q in 0..<truth.queries.count {
            let exact = Set(truth.top(q, k))
            guard !exact.isEmpty else {
                sum += 1
                continue
            }
            var results = found.results(of: q)
            if let refine {
                results = try refine.vectors.rerank(
                    Array(truth.queries.vectors[q * d..<(q + 1) * d]), results, k: k + 1,
                    metric: truth.metric)
            }
            let approx = results.map(\.id).filter { $0 != truth.queries.ids[q] }.prefix(k)
            sum += Double(approx.filter(exact.contains).count) / Double(exact.count)
        }
        return sum / Double(max(1, truth.queries.count))
    }

    /// The smallest nprobe (IVF) or efSearch (HNSW) that meets `target`, with the curve measured.
    static func tune(
        index: FaissIndex, truth: GroundTruth, target: Double, refine: Refining? = nil,
        progress: @Sendable (IndexBuildProgress) -> Void
    ) throws -> (IndexManifest.Search, IndexManifest.Recall?) {
        guard truth.queries.count > 0 else { return (IndexManifest.Search(), nil) }
        var curve: [IndexManifest.RecallPoint] = []
        var chosen = IndexManifest.Search()
        var last = 0.0
        let ladder: [(Int?, Int?)] =
            switch index.kind {
            case .ivf: IndexPlan.nprobeLadder(lists: index.listCount).map { ($0, nil) }
            case .hnsw: IndexPlan.efSearchLadder.map { (nil, $0) }
            default: [(nil, nil)]
            }
        for (i, (nprobe, ef)) in ladder.enumerated() {
            progress(IndexBuildProgress(phase: "measuring recall@10", done: i, total: ladder.count))
            last = try recall(
                index: index, truth: truth, parameters: SearchParameters(nprobe: nprobe, efSearch: ef), refine: refine)
            curve.append(.init(nprobe: nprobe, efSearch: ef, recall: last))
            chosen = IndexManifest.Search(nprobe: nprobe, efSearch: ef)
            if last >= target { break }
        }
        return (
            chosen,
            IndexManifest.Recall(
                k: IndexBuilder.recallK, measured: last, target: target, met: last >= target,
                queries: truth.queries.count, curve: curve)
        )
    }
}

// MARK: - Under the default filters

/// The products' categories and stock by ordinal (the store's product-id order, as the build
/// streams the vectors), for measuring recall under the platform's default filters.
struct FilterColumns {
    /// 0: no category; else 1 + an index into the categories seen.
    var category: [UInt16] = []
    var inStock: [Bool] = []
    /// The product id at each ordinal: the vector stream is checked against it row by row.
    var productIDs: [String] = []

    /// Reads every product with a vector under `key`, in product-id order (the order the vectors
    /// stream in). Nil when no product has a category (nothing to filter by) or the count is not
    /// `count` (the store changed since it was counted).
    static func read(_ store: any EmbeddingStore, _ key: ModelKey, count: Int) async throws -> FilterColumns? {
        var c = FilterColumns()
        c.category.reserveCapacity(count)
        c.inStock.reserveCapacity(count)
        c.productIDs.reserveCapacity(count)
        var codes: [String: UInt16] = [:]
        var after: String?
        while true {
            let page = try await store.productsWithVectors(key: key, after: after, limit: 10_000)
            for p in page {
                var code: UInt16 = 0
                if let name = p.category, !name.isEmpty {
                    if let known = codes[name] {
                        code = known
                    } else if codes.count < Int(UInt16.max) - 1 {
                        code = UInt16(codes.count + 1)
                        codes[name] = code
                    }
                }
                c.category.append(code)
                c.inStock.append(p.inStock ?? true) // unknown stock counts as in stock, as in answers
                c.productIDs.append(p.id)
            }
            guard page.count == 10_000, let last = page.last else { break }
            after = last.id
        }
        guard c.productIDs.count == count, !codes.isEmpty else { return nil }
        return c
    }
}

/// Exact k nearest neighbours of each query among the products the default filters allow it
/// (same category, in stock, itself excluded), accumulated chunk by chunk as the vectors stream.
struct FilteredTruth {
    let k: Int
    let metric: IndexMetric
    let dimension: Int
    /// Query ordinals (ids), their categories and vectors (in that order), and the queries of
    /// each category with their vectors side by side (one exact search per category and chunk).
    let ids: [Int64]
    let categories: [UInt16]
    let vectors: [Float]
    private let byCategory: [UInt16: (members: [Int], vectors: [Float])]
    private(set) var best: [[(id: Int64, distance: Float)]]

    /// Up to `limit` of the recall `queries` that are in stock and have a category.
    init(queries: RecallQueries, columns: FilterColumns, limit: Int, k: Int, metric: IndexMetric) {
        self.k = k
        self.metric = metric
        dimension = queries.dimension
        var ids: [Int64] = [], cats: [UInt16] = [], vectors: [Float] = []
        var groups: [UInt16: (members: [Int], vectors: [Float])] = [:]
        for q in 0..<queries.count where ids.count < limit {
            let ordinal = Int(queries.ids[q])
            let c = columns.category[ordinal]
            guard c != 0, columns.inStock[ordinal] else { continue }
            groups[c, default: ([], [])].members.append(ids.count)
            groups[c, default: ([], [])].vectors += queries.vectors[q * dimension..<(q + 1) * dimension]
            ids.append(Int64(ordinal))
            cats.append(c)
            vectors += queries.vectors[q * dimension..<(q + 1) * dimension]
        }
        self.ids = ids
        categories = cats
        self.vectors = vectors
        byCategory = groups
        best = Array(repeating: [], count: ids.count)
    }

    var count: Int { ids.count }

    func better(_ a: Float, _ b: Float) -> Bool { metric == .l2 ? a < b : a > b }

    /// Merges one chunk of vectors (ordinals `ids`): each category's allowed rows are gathered
    /// and searched exactly for that category's queries at once.
    mutating func merge(chunk: UnsafeBufferPointer<Float>, ids chunkIDs: [Int64], columns: FilterColumns) throws {
        let d = dimension
        for (c, group) in byCategory {
            var rows: [Int] = []
            for (r, id) in chunkIDs.enumerated() where columns.category[Int(id)] == c && columns.inStock[Int(id)] {
                rows.append(r)
            }
            if rows.isEmpty { continue }
            var gathered: [Float] = []
            gathered.reserveCapacity(rows.count * d)
            for r in rows { gathered += chunk[(r * d)..<((r + 1) * d)] }
            let kk = min(k + 1, rows.count)
            let found = try group.vectors.withUnsafeBufferPointer { qv in
                try gathered.withUnsafeBufferPointer { gv in
                    try FaissIndex.exactNeighbours(queries: qv, vectors: gv, dimension: d, k: kk, metric: metric)
                }
            }
            for (j, q) in group.members.enumerated() {
                var merged = best[q]
                for (row, distance) in found.results(of: j) where chunkIDs[rows[Int(row)]] != ids[q] {
                    merged.append((chunkIDs[rows[Int(row)]], distance))
                }
                merged.sort { better($0.distance, $1.distance) || ($0.distance == $1.distance && $0.id < $1.id) }
                best[q] = Array(merged.prefix(k))
            }
        }
    }
}

extension Tuning {
    /// recall@k under the default filters at `nprobe` (and `hop`), and the mean seconds of one
    /// search: each query searched with its category's in-stock products allowed and itself
    /// excluded, with its recorded lists (`nearest`), as ``ProductSearch`` searches a stored product.
    static func filteredRecall(
        index: FaissIndex, truth: FilteredTruth, allowed: [UInt16: IDBitmap], nprobe: Int,
        hop: SecondHop? = nil, nearest: NearestLists? = nil
    ) throws -> (recall: Double, seconds: Double, standardError: Double) {
        let d = truth.dimension
        var sum = 0.0, squares = 0.0
        var elapsed = 0.0
        for q in 0..<truth.count {
            let exact = Set(truth.best[q].map(\.id))
            guard !exact.isEmpty else {
                sum += 1
                squares += 1
                continue
            }
            var params = SearchParameters(
                nprobe: nprobe, allowed: allowed[truth.categories[q]], excluded: [truth.ids[q]],
                nearest: nearest?.row(truth.ids[q]), hop: hop)
            let vector = Array(truth.vectors[(q * d)..<((q + 1) * d)])
            let t = DispatchTime.now().uptimeNanoseconds
            var found = try index.searchBatch([(vector, params)], k: truth.k)[0].results(of: 0)
            // As ProductSearch does when the filter thinned a search below k: nprobe doubles and
            // the search runs again (its time counted), so the build measures what is served.
            while found.count < truth.k, params.deepenIVF(listCount: index.listCount) {
                found = try index.searchBatch([(vector, params)], k: truth.k)[0].results(of: 0)
            }
            elapsed += Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9
            let r = Double(found.map(\.id).filter(exact.contains).count) / Double(exact.count)
            sum += r
            squares += r * r
        }
        let n = Double(max(1, truth.count))
        let mean = sum / n
        let variance = max(0, squares / n - mean * mean) * n / max(1, n - 1)
        return (mean, elapsed / n, (variance / n).squareRoot())
    }

    // A filtered point meets the target when its estimate clears it by two standard errors
    // (IndexManifest.RecallPoint.lowerBound): a point chosen right at the target on 200 queries
    // (about +-0.01 of sampling noise at 0.95) served 0.944 at 1M; the build measures on
    // IndexBuilder.filteredRecallQueries (3,000) eligible products now.

    /// Second hops tried at build: (nprobe, top, lists, hub), where `hub` leaves out of the
    /// hop the lists of more than that many times the mean list's entries (nil: none left out).
    /// 1M bench store, 60 queries, simulated: nprobe 4 + 5 x 4, 0.970 recall@10 with 1,666
    /// filtered distances a query; nprobe 1 + 10 x 4 without lists over 8x the mean, 0.958 with 142.
    /// At 1M (1,000 queries, one standard error of margin) 2 + 10 x 4 fell short and the next
    /// point, 4 + 10 x 4, doubled the served p99 (45 -> 86 ms): the points between them
    /// (2 + 10 x 6, 2 + 10 x 8, 3 + 10 x 4) give the build a cheaper way over the bound.
    static let hopLadder: [(nprobe: Int, top: Int, lists: Int, hub: Int?)] = [
        (1, 10, 4, 8), (1, 10, 8, 8), (2, 10, 4, 8), (2, 10, 6, 8), (2, 10, 8, 8), (3, 10, 4, 8), (4, 10, 4, 8),
        (4, 10, 8, 8), (8, 10, 4, 8),
        (1, 3, 2, nil), (2, 3, 2, nil), (2, 5, 2, nil), (2, 5, 4, nil), (4, 5, 4, nil), (4, 10, 4, nil),
        (8, 10, 4, nil),
    ]

    /// Where filtered searches meet `target` under the default filters, with the curve measured:
    /// with the recorded lists (`nearest`), every point of ``hopLadder``; then the smallest
    /// nprobe from `start` (the unfiltered tuning's) up, in steps of about 1.5x, until one meets
    /// the target or searches slower than the fastest hop that met it (a deeper one only costs
    /// more: at 1M, nprobe 8 took 2.0 ms a search against 0.5 ms for the hop chosen, and the
    /// ladder's climb to 62 took 90 s of the build on 3,000 queries). Of the points that meet
    /// it, the one whose searches took least time at build. nil hop: the plain nprobe won.
    static func tuneFiltered(
        index: FaissIndex, truth: FilteredTruth, columns: FilterColumns, start: Int, target: Double,
        nearest: NearestLists? = nil,
        progress: @Sendable (IndexBuildProgress) -> Void
    ) throws -> (Int, IndexManifest.Hop?, IndexManifest.Recall)? {
        guard truth.count > 0, index.kind == .ivf else { return nil }
        var allowed: [UInt16: IDBitmap] = [:]
        for c in Set(truth.categories) { allowed[c] = IDBitmap(capacity: columns.category.count) }
        for (ordinal, c) in columns.category.enumerated() where allowed[c] != nil && columns.inStock[ordinal] {
            allowed[c]!.insert(Int64(ordinal))
        }
        var ladder: [Int] = []
        var p = max(1, start)
        while p < index.listCount {
            ladder.append(p)
            p = max(p + 1, (p * 3 + 1) / 2)
        }
        ladder.append(index.listCount)
        let hops = nearest.map { _ in Self.hopLadder.filter { $0.nprobe < index.listCount } } ?? []
        let steps = ladder.count + hops.count
        // One untimed pass first: the first point timed cold read 60 µs against 35-39 µs for
        // the hops after it (100k), and the fastest point is what the build chooses.
        _ = try filteredRecall(index: index, truth: truth, allowed: allowed, nprobe: ladder[0], nearest: nearest)
        var hopCurve: [IndexManifest.RecallPoint] = []
        var hopped: (nprobe: Int, hop: IndexManifest.Hop, recall: Double, seconds: Double)?
        if let nearest {
            let meanList = Double(index.count) / Double(max(1, index.listCount))
            for (i, h) in hops.enumerated() {
                progress(
                    IndexBuildProgress(
                        phase: "measuring recall@10 under the default filters, second hop", done: i, total: steps))
                let point = IndexManifest.Hop(
                    top: h.top, lists: h.lists, maxList: h.hub.map { Int((Double($0) * meanList).rounded(.up)) })
                let hop = SecondHop(table: nearest, top: point.top, lists: point.lists, maxList: point.maxList)
                let (r, s, se) = try filteredRecall(
                    index: index, truth: truth, allowed: allowed, nprobe: h.nprobe, hop: hop,
                    nearest: nearest)
                let measured = IndexManifest.RecallPoint(
                    nprobe: h.nprobe, recall: r, secondHop: point, microseconds: s * 1e6, standardError: se)
                hopCurve.append(measured)
                if measured.lowerBound >= target && s < (hopped?.seconds ?? .infinity) {
                    hopped = (h.nprobe, point, r, s)
                }
            }
        }
        var curve: [IndexManifest.RecallPoint] = []
        var plain: (nprobe: Int, recall: Double, seconds: Double, met: Bool)?
        for (i, nprobe) in ladder.enumerated() {
            progress(
                IndexBuildProgress(
                    phase: "measuring recall@10 under the default filters", done: hops.count + i, total: steps))
            let (r, s, se) = try filteredRecall(
                index: index, truth: truth, allowed: allowed, nprobe: nprobe, nearest: nearest)
            let point = IndexManifest.RecallPoint(nprobe: nprobe, recall: r, microseconds: s * 1e6, standardError: se)
            curve.append(point)
            let met = point.lowerBound >= target
            plain = (nprobe, r, s, met)
            if met || s > (hopped?.seconds ?? .infinity) { break }
        }
        curve += hopCurve
        guard let plain else { return nil }
        let recall = { (r: Double) in
            IndexManifest.Recall(
                k: truth.k, measured: r, target: target, met: r >= target, queries: truth.count, curve: curve)
        }
        if let hopped, !plain.met || hopped.seconds < plain.seconds {
            return (hopped.nprobe, hopped.hop, recall(hopped.recall))
        }
        return (plain.nprobe, nil, recall(plain.recall))
    }
}
