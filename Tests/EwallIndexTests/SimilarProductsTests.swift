import EwallCore
import EwallIndex
import EwallStore
import EwallTestSupport
import Foundation
import Testing

@Suite("Similar products: the platform's rules", .serialized)
struct SimilarProductsTests {
    static let data = SyntheticVectors(count: 6000, dimension: 32, clusters: 150, seed: 21)

    /// Category "rare" for 1 product in 300 (spread over all clusters), else by cluster;
    /// every third product out of stock.
    static func category(_ r: Int) -> String? { r % 300 == 7 ? "rare" : "c\(data.cluster[r] % 10)" }
    static func inStock(_ r: Int) -> Bool? { r % 3 == 0 ? false : (r % 3 == 1 ? true : nil) }

    func catalogue(
        index: String = "auto", exactBelow: Int = 2048
    ) async throws -> (ProductSearch, any EmbeddingStore, String) {
        let (store, url) = try await Catalogue.store(Self.data, category: Self.category, inStock: Self.inStock)
        let folder = Catalogue.folder()
        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, index: index))
        return (try await ProductSearch.open(folder: folder, store: store, exactBelow: exactBelow), store, url)
    }

    @Test(
        "Defaults: k=10, same category, in stock (unknown counts as in stock), itself excluded, similarity 1/(1+d) >= 0.5"
    )
    func defaults() async throws {
        let (search, store, _) = try await catalogue()
        defer { Task { await store.close() } }
        #expect(search.manifest.factory.hasPrefix("IVF"))
        let q = 1 // in stock
        let a = try await search.similar(to: Catalogue.pid(q))
        let cat = Self.category(q)
        #expect(!a.results.isEmpty && a.results.count <= 10)
        for r in a.results {
            #expect(r.productID != Catalogue.pid(q))
            #expect(r.category == cat)
            #expect(r.inStock != false)
            #expect(r.similarity >= 0.5)
            #expect(abs(r.similarity - 1 / (1 + r.distance)) < 1e-9)
            let row = Int(r.productID.dropFirst())!
            let squared = ExactSearch.squaredL2(Self.data.row(q)[...], Self.data.row(row)[...])
            #expect(abs(r.distance - Double(squared).squareRoot()) < 1e-3)
            #expect(abs(r.cosine - VectorMath.cosine(Self.data.row(q), Self.data.row(row))) < 1e-4)
        }
        #expect(zip(a.results, a.results.dropFirst()).allSatisfy { $0.similarity >= $1.similarity })
        // The answer names the snapshot that produced it.
        #expect(a.index == search.identity)
        #expect(
            a.index.factory == search.manifest.factory && a.index.count == search.count
                && a.index.builtAt == search.manifest.builtAt
                && a.index.sha256 == search.manifest.files["index"]?.sha256)
        // The same as the exact answer under the same filters.
        let exact = ExactSearch.nearest(Self.data.row(q), in: Self.data, k: 10) {
            $0 != q && Self.category($0) == cat && Self.inStock($0) != false
        }.filter { 1 / (1 + Double($0.distance).squareRoot()) >= 0.5 }
        #expect(
            Set(a.results.map(\.productID)).intersection(exact.map { Catalogue.pid($0.row) }).count >= exact.count - 1)
    }

    @Test(
        "A filter that excludes 99.7% of the catalogue still returns the exact k when k exist",
        arguments: ["auto", "HNSW16"])
    func selectiveFilter(index: String) async throws {
        let (search, store, _) = try await catalogue(index: index)
        defer { Task { await store.close() } }
        let rare = (0..<6000).filter { Self.category($0) == "rare" }
        #expect(rare.count == 20)
        let q = rare[0]
        let a = try await search.similar(
            to: Catalogue.pid(q), query: SimilarQuery(k: 10, minSimilarity: 0, inStockOnly: false))
        #expect(a.results.count == 10, "\(a.notes)")
        #expect(a.results.allSatisfy { $0.category == "rare" && $0.productID != Catalogue.pid(q) })
        let exact = ExactSearch.nearest(Self.data.row(q), in: Self.data, k: 10) {
            $0 != q && Self.category($0) == "rare"
        }
        #expect(a.results.map(\.productID) == exact.map { Catalogue.pid($0.row) })
        // Fewer than k exist: all of them, and a note says how many were eligible.
        let few = try await search.similar(
            to: Catalogue.pid(q), query: SimilarQuery(k: 50, minSimilarity: 0, inStockOnly: false))
        #expect(few.results.count == 19 && few.eligible == 19)
    }

    @Test("Without the exact path, IVF searches deeper (nprobe doubles) until k pass the filter")
    func deeper() async throws {
        let (search, store, _) = try await catalogue(exactBelow: 0)
        defer { Task { await store.close() } }
        let q = (0..<6000).first { Self.category($0) == "rare" }!
        let a = try await search.similar(
            to: Catalogue.pid(q), query: SimilarQuery(k: 10, minSimilarity: 0, inStockOnly: false))
        #expect(a.results.count == 10 && a.results.allSatisfy { $0.category == "rare" })
        #expect((a.nprobe ?? 0) > (search.manifest.search.nprobe ?? 0), "the search should have gone deeper")
        let exact = Set(
            ExactSearch.nearest(Self.data.row(q), in: Self.data, k: 10) { $0 != q && Self.category($0) == "rare" }
                .map { Catalogue.pid($0.row) })
        #expect(Set(a.results.map(\.productID)).intersection(exact).count >= 7)
    }

    @Test("Switches: --any-category, --include-out-of-stock, --min-similarity, --k")
    func switches() async throws {
        let (search, store, _) = try await catalogue(index: "Flat")
        defer { Task { await store.close() } }
        let q = Catalogue.pid(4)
        let all = try await search.similar(
            to: q, query: SimilarQuery(k: 25, minSimilarity: 0, sameCategory: false, inStockOnly: false))
        #expect(all.results.count == 25)
        let exact = ExactSearch.nearest(Self.data.row(4), in: Self.data, k: 26).filter { $0.row != 4 }.prefix(25)
        #expect(all.results.map(\.productID) == exact.map { Catalogue.pid($0.row) })
        #expect(all.results.contains { $0.inStock == false })
        let inStock = try await search.similar(to: q, query: SimilarQuery(k: 25, minSimilarity: 0, sameCategory: false))
        #expect(inStock.results.allSatisfy { $0.inStock != false } && inStock.results.count == 25)
        let threshold = all.results[5].similarity
        let strict = try await search.similar(
            to: q, query: SimilarQuery(k: 25, minSimilarity: threshold, sameCategory: false, inStockOnly: false))
        #expect(strict.results.count == 6 && strict.results.allSatisfy { $0.similarity >= threshold })
    }

    @Test("The query product never appears in its own results, even when an exact duplicate exists under another id")
    func excludesItselfNotItsTwin() async throws {
        let data = SyntheticVectors(count: 300, dimension: 32, clusters: 10, seed: 4)
        let (store, _) = try await Catalogue.store(data)
        defer { Task { await store.close() } }
        // p000005's image, again, as another product.
        try await Catalogue.put(data, rows: [5], into: store, ids: { _ in "twin-of-5" })
        let folder = Catalogue.folder()
        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder))
        let search = try await ProductSearch.open(folder: folder, store: store)
        for k in [1, 10, 301] {
            let a = try await search.similar(
                to: Catalogue.pid(5), query: SimilarQuery(k: k, minSimilarity: 0, sameCategory: false))
            #expect(!a.results.contains { $0.productID == Catalogue.pid(5) })
            #expect(a.results.first?.productID == "twin-of-5")
            #expect(a.results.first?.similarity == 1 && a.results.first?.distance == 0)
        }
        let twin = try await search.similar(to: "twin-of-5", query: SimilarQuery(k: 3, minSimilarity: 0))
        #expect(twin.results.first?.productID == Catalogue.pid(5))
        #expect(!twin.results.contains { $0.productID == "twin-of-5" })
    }

    @Test("Errors: unknown product, product without a vector, index from another model; a stale index is reported")
    func errors() async throws {
        let data = SyntheticVectors(count: 200, dimension: 16, clusters: 5, seed: 8)
        let (store, _) = try await Catalogue.store(data)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder))
        try await store.upsertProducts([Product(id: "no-vector", category: "c1")], source: .manifest)
        // Embedded after the build: the index is older than the store.
        let extra = SyntheticVectors(count: 3, dimension: 16, clusters: 1, seed: 80)
        try await Catalogue.put(extra, rows: [0, 1, 2], into: store, ids: { "late-\($0)" })
        let search = try await ProductSearch.open(folder: folder, store: store)
        #expect(search.missingFromIndex == 3)
        #expect(search.warnings.contains { $0.contains("older than the store") && $0.contains("3 of the store's 203") })

        await #expect { try await search.similar(to: "nope") } throws: { ($0 as? IndexError)?.code == .unknownProduct }
        await #expect { try await search.similar(to: "no-vector") } throws: { ($0 as? IndexError)?.code == .noVector }

        let (other, _) = try await Catalogue.store(SyntheticVectors(count: 10, dimension: 16, clusters: 1, seed: 1))
        defer { Task { await other.close() } }
        try await other.write(
            WriteBatch(embeddings: [
                StoredEmbedding(
                    productID: "x", imageURL: "u", key: ModelKey(modelID: "other@2", preprocessing: "squash224"),
                    vector: data.row(0))
            ]))
        // A store that has only another model's vectors.
        let onlyOther = try await StoreLocation(parsing: try await StoreKind.sqlite.freshURL()).open()
        defer { Task { await onlyOther.close() } }
        try await onlyOther.write(
            WriteBatch(embeddings: [
                StoredEmbedding(
                    productID: "x", imageURL: "u", key: ModelKey(modelID: "other@2", preprocessing: "squash224"),
                    vector: data.row(0))
            ]))
        await #expect { try await ProductSearch.open(folder: folder, store: onlyOther) } throws: { e in
            guard let e = e as? IndexError else { return false }
            return e.code == .mismatch && e.message.contains("synthetic@1") && e.message.contains("other@2")
        }
    }
}

@Suite("Similar-products defaults and bounds")
struct SimilarQueryBoundsTests {
    @Test("one set of defaults and bounds: the platform's rules, k 1...1000, similarity 0...1")
    func bounds() {
        let q = SimilarQuery()
        #expect(q.k == 10 && q.minSimilarity == 0.5 && q.sameCategory && q.inStockOnly && q.problem == nil)
        #expect(SimilarQuery(k: 1000).problem == nil && SimilarQuery(k: 1).problem == nil)
        #expect(SimilarQuery(k: 0).problem?.contains("1...1000") == true)
        #expect(SimilarQuery(k: 1001).problem?.contains("not 1001") == true)
        #expect(SimilarQuery(minSimilarity: 1.5).problem?.contains("min_similarity") == true)
        #expect(SimilarQuery(minSimilarity: -0.1).problem != nil)
    }
}
