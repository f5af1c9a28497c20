import EwallCore
import EwallIndex
import EwallStore
import EwallTestSupport
import Foundation

/// Synthetic catalogues in real stores, and temporary index folders.
enum Catalogue {
    static let key = ModelKey(modelID: "synthetic@1", preprocessing: "squash224")

    /// Zero-padded, so product-id order is row order and a full build's ids are row numbers.
    static func pid(_ row: Int) -> String { String(format: "p%06d", row) }

    static func folder() -> IndexFolder {
        IndexFolder(
            path: FileManager.default.temporaryDirectory
                .appendingPathComponent("ewall-index-\(UUID().uuidString)/faiss").path)
    }

    /// A store holding `data`, category "c<cluster>" and in stock unless `inStock` says otherwise.
    static func store(
        _ data: SyntheticVectors, kind: StoreKind = .sqlite,
        category: ((Int) -> String?)? = nil, inStock: (Int) -> Bool? = { _ in true }
    ) async throws -> (any EmbeddingStore, String) {
        let url = try await kind.freshURL()
        let store = try await StoreLocation(parsing: url).open()
        try await put(data, rows: Array(0..<data.count), into: store, category: category, inStock: inStock)
        return (store, url)
    }

    static func put(
        _ data: SyntheticVectors, rows: [Int], into store: any EmbeddingStore, ids: ((Int) -> String)? = nil,
        category: ((Int) -> String?)? = nil, inStock: (Int) -> Bool? = { _ in true }
    ) async throws {
        let name = ids ?? pid
        for chunk in stride(from: 0, to: rows.count, by: 500) {
            let part = rows[chunk..<min(rows.count, chunk + 500)]
            try await store.upsertProducts(
                part.map { r in
                    Product(
                        id: name(r), title: "product \(r)", category: category?(r) ?? "c\(data.cluster[r])",
                        inStock: inStock(r))
                }, source: .manifest)
            try await store.write(
                WriteBatch(
                    embeddings: part.map { r in
                        StoredEmbedding(productID: name(r), imageURL: "file:///\(r).jpg", key: key, vector: data.row(r))
                    }))
        }
    }

    static func options(
        _ folder: IndexFolder, index: String = "auto", target: Double = 0.95,
        incremental: Bool = false, queries: Int = 200
    ) -> IndexBuildOptions {
        IndexBuildOptions(
            folder: folder, index: index, targetRecall: target, maxMemory: 1 << 34,
            incremental: incremental, recallQueries: queries, pageSize: 700, threads: 2)
    }

    /// recall@10 of a loaded folder against ``ExactSearch`` on `queries` rows, the query excluded.
    static func independentRecall(_ loaded: IndexFolder.Loaded, data: SyntheticVectors, queries: [Int]) throws -> Double
    {
        var sum = 0.0
        let m = loaded.manifest
        for q in queries {
            let exact = Set(ExactSearch.nearest(data.row(q), in: data, k: 11).map(\.row).filter { $0 != q }.prefix(10))
            // Compressed kinds with exact vectors beside them re-rank, as ProductSearch does.
            let factor = loaded.exact == nil ? 1 : (m.refine?.factor ?? 1)
            var found = try loaded.index.search(
                data.row(q), k: 11 * factor,
                parameters: SearchParameters(nprobe: m.search.nprobe, efSearch: m.search.efSearch)
            )
            .results(of: 0)
            if let exact = loaded.exact { found = try exact.rerank(data.row(q), found, k: 11, metric: m.metric) }
            let rows = found.compactMap { loaded.ids.productID($0.id) }.compactMap { Int($0.dropFirst()) }
            let approx = rows.filter { $0 != q }.prefix(10)
            sum += Double(approx.filter(exact.contains).count) / Double(exact.count)
        }
        return sum / Double(queries.count)
    }
}
