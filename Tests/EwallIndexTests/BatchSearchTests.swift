import EwallCore
import EwallIndex
import EwallStore
import EwallTestSupport
import Foundation
import Testing

/// Coalesced queries: `ew_faiss_search_batch` (FaissIndex.searchBatch) and
/// ProductSearch.similar(batch:) give exactly what one query at a time gives. Serialized: it
/// switches the process-wide distance kernel.
@Suite("Batched search (coalesced queries)", .serialized)
struct BatchSearchTests {
    static let data = SyntheticVectors(count: 4000, dimension: 48, clusters: 80, seed: 31)

    static func filled(_ factory: String, metric: IndexMetric = .l2, data: SyntheticVectors = data) throws -> FaissIndex {
        let index = try FaissIndex(dimension: data.dimension, factory: factory, metric: metric)
        if !index.isTrained { try data.values.withUnsafeBufferPointer { try index.train($0) } }
        try index.add(data.values, ids: (0..<data.count).map { 5 + 3 * Int64($0) })
        return index
    }

    /// n queries (rows of the data, and a few off-data points), each with its own nprobe,
    /// allowed bitmap and excluded ids, some with none.
    static func queries(_ n: Int, data: SyntheticVectors = data, seed: UInt64) -> [(vector: [Float], parameters: SearchParameters)] {
        var rng = TestRNG(seed: seed)
        let capacity = 5 + 3 * data.count
        return (0..<n).map { i in
            var v = data.row(Int(rng.next() % UInt64(data.count)))
            if i % 7 == 3 { v = (0..<data.dimension).map { _ in rng.gaussian() } }
            var p = SearchParameters()
            switch i % 4 {
            case 0: break
            case 1: p.nprobe = 1 + Int(rng.next() % 12)
            case 2:
                var b = IDBitmap(capacity: capacity)
                let mod = 2 + Int(rng.next() % 5)
                for r in 0..<data.count where r % mod == i % mod { b.insert(5 + 3 * Int64(r)) }
                p.allowed = b
                p.nprobe = 4 + Int(rng.next() % 30)
            default:
                p.excluded = (0..<3).map { _ in 5 + 3 * Int64(rng.next() % UInt64(data.count)) }
                p.nprobe = i % 8 == 3 ? 64 : 2
            }
            return (v, p)
        }
    }

    static func expectSame(_ index: FaissIndex, _ qs: [(vector: [Float], parameters: SearchParameters)], k: Int,
                           _ comment: Comment) throws {
        let batched = try index.searchBatch(qs, k: k)
        #expect(batched.count == qs.count)
        var same = 0
        for (i, q) in qs.enumerated() {
            let one = try index.search(q.vector, k: k, parameters: q.parameters)
            if one.ids == batched[i].ids && one.distances == batched[i].distances { same += 1 }
            else { Issue.record("\(comment): query \(i) differs: \(one.ids) vs \(batched[i].ids)") }
        }
        #expect(same == qs.count, comment)
    }

    @Test("The batch C call equals one ew_faiss_search per query (same ids, same distances, bit for bit) for every kind, kernel and batch size",
          arguments: ["IVF40,Flat", "IVF256,Flat", "IVF40,SQ8", "IVF256,SQ8", "Flat", "HNSW16"])
    func batchEqualsSingles(factory: String) throws {
        defer { DistanceKernel.use(.auto) }
        let index = try Self.filled(factory)
        for kernel in DistanceKernel.allCases where kernel.isSupported {
            DistanceKernel.use(kernel)
            for (n, k) in [(1, 10), (2, 5), (19, 10), (20, 10), (64, 10), (100, 1), (64, 50)] {
                try Self.expectSame(index, Self.queries(n, seed: UInt64(n * 100 + k)), k: k, "\(factory) \(kernel) n=\(n) k=\(k)")
            }
        }
    }

    @Test("Inner-product IVF and a wide (512-d) IVF-Flat: batch equals singles")
    func innerProductAndWide() throws {
        defer { DistanceKernel.use(.auto) }
        let ip = try Self.filled("IVF200,Flat", metric: .ip)
        try Self.expectSame(ip, Self.queries(64, seed: 9), k: 10, "IP")
        let wideData = SyntheticVectors(count: 1500, dimension: 512, clusters: 30, seed: 4)
        let wide = try Self.filled("IVF100,Flat", data: wideData)
        for kernel in DistanceKernel.allCases where kernel.isSupported {
            DistanceKernel.use(kernel)
            try Self.expectSame(wide, Self.queries(48, data: wideData, seed: 11), k: 10, "512-d \(kernel)")
        }
    }

    @Test("Degenerate queries (zeros, duplicates of one point, huge values) and every list probed: batch equals singles")
    func degenerate() throws {
        // 256 lists: the coarse pass keeps only candidates (2p+32 of them), so both the proof
        // and its fallback run (huge values make the error bound too wide to prove anything).
        let index = try Self.filled("IVF256,Flat")
        let d = Self.data.dimension
        var qs = Self.queries(30, seed: 77)
        qs += (0..<10).map { _ in ([Float](repeating: 0, count: d), SearchParameters(nprobe: 3)) }
        qs += (0..<10).map { _ in (Self.data.row(17), SearchParameters()) }
        qs += (0..<5).map { i in (Self.data.row(i).map { $0 * 1e15 }, SearchParameters(nprobe: 2)) }
        qs += (0..<5).map { i in (Self.data.row(i), SearchParameters(nprobe: 256)) }
        // Far from everything: the centroids' distances differ by less than the error bound.
        qs += (0..<5).map { i in ([Float](repeating: -1e4 * Float(i + 1), count: d), SearchParameters(nprobe: 2 + i)) }
        try Self.expectSame(index, qs, k: 10, "degenerate")
        #expect(try index.searchBatch([], k: 10).isEmpty)
    }

    // MARK: ProductSearch

    static func category(_ r: Int) -> String? { r % 300 == 7 ? "rare" : "c\(data.cluster[r] % 10)" }
    static func inStock(_ r: Int) -> Bool? { r % 3 == 0 ? false : (r % 3 == 1 ? true : nil) }

    static func sameAnswer(_ a: SimilarAnswer, _ b: SimilarAnswer) -> Bool {
        a.query == b.query && a.category == b.category && a.results == b.results && a.candidates == b.candidates
            && a.eligible == b.eligible && a.nprobe == b.nprobe && a.efSearch == b.efSearch && a.notes == b.notes
            && a.index == b.index
    }

    @Test("ProductSearch.similar(batch:) answers each request exactly as similar(vector:) alone: categories, stock, exclusions, k, deepening, errors",
          arguments: ["IVF40,Flat", "HNSW16"])
    func productSearchBatch(factory: String) async throws {
        let (store, _) = try await Catalogue.store(Self.data, category: Self.category, inStock: Self.inStock)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, index: factory))
        let search = try await ProductSearch.open(folder: folder, store: store, exactBelow: 50)
        var rng = TestRNG(seed: 5)
        var requests: [SimilarRequest] = []
        for i in 0..<90 {
            let row = Int(rng.next() % UInt64(Self.data.count))
            var q = SimilarQuery(k: [10, 10, 5, 30][i % 4], minSimilarity: i % 5 == 0 ? 0 : 0.5,
                                 sameCategory: i % 3 != 2, inStockOnly: i % 4 != 1)
            if i % 11 == 0 { q.k = 1 }
            let category: String? = i % 13 == 0 ? "rare" : (i % 17 == 0 ? nil : Self.category(row))
            let excluding: String? = i % 6 == 5 ? nil : Catalogue.pid(row)
            var vector = Self.data.row(row)
            if i == 40 { vector = [1, 2, 3] }  // wrong dimension: an error for this one only
            requests.append(SimilarRequest(vector: vector, category: category, excluding: excluding, query: q))
        }
        for n in [1, 7, 90] {
            let part = Array(requests.prefix(n))
            let batched = search.similar(batch: part)
            #expect(batched.count == part.count)
            for (r, b) in zip(part, batched) {
                let alone = Result { try search.similar(vector: r.vector, category: r.category, excluding: r.excluding, query: r.query) }
                switch (alone, b) {
                case (.success(let x), .success(let y)): #expect(Self.sameAnswer(x, y), "\(factory) n=\(n) \(r.category ?? "-") k=\(r.query.k)")
                case (.failure, .failure): break
                default: Issue.record("\(factory): one failed, the other did not: \(alone) vs \(b)")
                }
            }
        }
        // And through the stored-product path.
        let r = try await search.request(for: Catalogue.pid(12))
        let a = try await search.similar(to: Catalogue.pid(12))
        guard case .success(let b) = search.similar(batch: [r]).first else { Issue.record("batch of one failed"); return }
        #expect(Self.sameAnswer(a, b))
    }
}
