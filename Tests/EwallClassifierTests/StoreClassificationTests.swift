import EwallClassifier
import EwallCore
import EwallStore
import EwallTestSupport
import Foundation
import Testing

/// The classifier over a real store (SQLite and PostgreSQL): references from a person's
/// categories, dry run versus apply, person-set categories never overwritten, the cache.
@Suite("Classifier over a store")
struct StoreClassificationTests {
    static let key = ModelKey(modelID: "test@0", preprocessing: "squash224")

    /// 6 categories x 14 labelled products from a manifest, 60 `generic` ones, 5 the classifier
    /// set earlier, one person-filed product whose vector looks like another category, and one
    /// generic product without a vector.
    static func seed(_ store: any EmbeddingStore) async throws -> Catalogue {
        let cat = Catalogue(labelledPerCategory: 14, products: 60)
        var labelled = cat.labelled.map {
            Product(id: $0.productID, title: "labelled \($0.productID)", category: $0.category, inStock: true)
        }
        labelled.append(Product(id: "odd-person", title: "사람이 고른 분류", category: "jeans", inStock: true))
        try await store.upsertProducts(labelled, source: .manifest)
        let generic = cat.products.prefix(60).map {
            Product(id: $0.productID!, title: $0.title, category: "generic", inStock: true)
        }
        try await store.upsertProducts(Array(generic.dropFirst(5)), source: .manifest)
        try await store.upsertProducts(
            Array(generic.prefix(5)).map {
                var p = $0
                p.category = "coat"
                return p
            }, source: .classifier)
        try await store.upsertProducts(
            [Product(id: "no-vector", title: "여성 구스다운 롱패딩", category: "generic")], source: .manifest)
        var embeddings = cat.labelled.map {
            StoredEmbedding(productID: $0.productID, imageURL: "u", key: key, vector: $0.vector)
        }
        embeddings += cat.products.prefix(60).map {
            StoredEmbedding(productID: $0.productID!, imageURL: "u", key: key, vector: $0.vector!)
        }
        embeddings.append(
            StoredEmbedding(productID: "odd-person", imageURL: "u", key: key, vector: cat.labelled[0].vector))
        try await store.write(WriteBatch(embeddings: embeddings, ledger: []))
        return cat
    }

    static func open(
        _ store: any EmbeddingStore, rules: KeywordRules = KeywordRulesTests.rules
    ) async throws -> CategoryClassifier {
        try await CategoryClassifier.open(store: store, key: key, rules: rules)
    }

    @Test(
        "references come from a person's categories; dry run writes nothing; apply never overwrites a person",
        arguments: StoreKind.allCases)
    func applyRules(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        defer { Task { await store.close() } }
        let cat = try await Self.seed(store)
        let classifier = try await Self.open(store)
        #expect(classifier.references.categories.map(\.name) == Catalogue.categories)
        #expect(classifier.references.categories.first { $0.name == "jeans" }!.available == 15)
        #expect(!classifier.references.rowIDs.contains { $0.hasPrefix("p-") })

        // The store-backed classifier answers as the in-memory one built from the same candidates.
        var candidates = cat.labelled
        candidates.append(LabelledVector(productID: "odd-person", category: "jeans", vector: cat.labelled[0].vector))
        let memory = try CategoryClassifier(
            references: ReferenceSet(candidates: candidates), rules: KeywordRulesTests.rules,
            modelKey: Self.key)
        #expect(memory.stamp == classifier.stamp)

        var seen: [ClassifiedProduct] = []
        let dry = try await classifier.run(store: store, key: Self.key, selection: .all, apply: false) { seen += $0 }
        #expect(dry.products == 6 * 14 + 1 + 60 + 1)
        #expect(dry.byAction["set", default: 0] == 0)
        #expect(try await store.product(id: "p-7")?.category == "generic")
        #expect(try await store.classifications(productIDs: ["p-7"]).isEmpty)
        let odd = try #require(seen.first { $0.classification.productID == "odd-person" })
        #expect(odd.action == .personSet && odd.classification.category == "bag")
        let noVector = try #require(seen.first { $0.classification.productID == "no-vector" })
        #expect(noVector.classification.decidedBy == .keyword && noVector.classification.category == "down")
        for r in seen where r.classification.productID!.hasPrefix("p-") {
            let p = cat.products.first { $0.productID == r.classification.productID }!
            #expect(sameAnswer(try memory.classify(p), r.classification))
        }

        let applied = try await classifier.run(store: store, key: Self.key, selection: .all, apply: true)
        #expect(applied.byAction["set"] == 60 + 1)
        #expect(applied.byAction["person_set"] == 6 * 14 + 1)
        for r in seen {
            let id = r.classification.productID!
            let p = try #require(try await store.product(id: id))
            if r.action == .personSet {
                #expect(p.categorySource == .manifest, "\(id)")
                #expect(
                    p.category == (id == "odd-person" ? "jeans" : cat.labelled.first { $0.productID == id }!.category))
            } else {
                #expect(p.category == r.classification.category, "\(id)")
                #expect(p.categorySource == .classifier, "\(id)")
                let record = try #require(try await store.classifications(productIDs: [id])[id])
                #expect(record.stamp == classifier.stamp)
                #expect(record.decidedBy == r.classification.decidedBy.rawValue)
                #expect(record.score == (r.classification.decidedBy == .embedding ? r.classification.best?.score : nil))
            }
        }

        // A person's category that arrives between reading and writing is not overwritten.
        try await store.upsertProducts([Product(id: "p-9", category: "shoes")], source: .import)
        let refused = try await store.applyClassifications([
            ClassificationRecord(
                productID: "p-9", category: "coat", decidedBy: "embedding", method: "mean-refs", score: 0.9,
                stamp: "s", inputHash: "h", explanation: "{}")
        ])
        #expect(refused.isEmpty)
        #expect(try await store.product(id: "p-9")?.category == "shoes")
        #expect(try await store.product(id: "p-9")?.categorySource == .import)
    }

    @Test("the cache: a rerun writes nothing; new rules, references or model recompute", arguments: StoreKind.allCases)
    func cache(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        defer { Task { await store.close() } }
        _ = try await Self.seed(store)
        let first = try await Self.open(store).run(store: store, key: Self.key, selection: .generic, apply: true)
        #expect(first.products == 56) // 55 generic with vectors + the one without
        #expect(first.byAction["set"] == 56 && first.cached == 0)

        // Now only the products answered `generic` are still generic: their answers are cached.
        let again = try await Self.open(store).run(store: store, key: Self.key, selection: .generic, apply: true)
        #expect(again.products == first.byCategory["generic"])
        #expect(again.cached == again.products && again.byAction["unchanged"] == again.products)
        let all = try await Self.open(store).run(store: store, key: Self.key, selection: .all, apply: true)
        #expect(all.cached == 56)
        #expect(all.byAction["unchanged"] == 56)
        #expect(all.byAction["set"] == 5) // the five the classifier set before this classifier existed

        let rerun = try await Self.open(store).run(store: store, key: Self.key, selection: .all, apply: true)
        #expect(rerun.byAction["unchanged"] == 61 && rerun.byAction["set", default: 0] == 0)

        // Other rules: every answer is recomputed (and rewritten).
        let other = try KeywordRules(rules: [.init(category: "down", priority: 1, ko: ["패딩"])])
        let newRules = try await Self.open(store, rules: other).run(
            store: store, key: Self.key, selection: .all, apply: true)
        #expect(newRules.cached == 0 && newRules.byAction["set"] == 61)

        // A new reference (a person files a product): the stamp changes.
        let before = try await Self.open(store, rules: other).stamp
        try await store.upsertProducts([Product(id: "p-20", category: "fleece")], source: .manifest)
        let after = try await Self.open(store, rules: other)
        #expect(after.stamp != before)
        let refsChanged = try await after.run(store: store, key: Self.key, selection: .all, apply: true)
        #expect(refsChanged.cached == 0)

        // A product's own vector changes: only it is recomputed.
        try await store.write(
            WriteBatch(
                embeddings: [
                    StoredEmbedding(
                        productID: "p-21", imageURL: "u2", key: Self.key,
                        vector: (0..<128).map { Float($0 % 7) })
                ], ledger: []))
        let one = try await after.run(store: store, key: Self.key, selection: .all, apply: true)
        #expect(one.cached == 59)
        #expect(one.byAction["set"] == 1)

        // A product's price changes (zero makes a gift): only it is recomputed.
        try await store.upsertProducts([Product(id: "p-22", price: 0)], source: .manifest)
        let repriced = try await after.run(store: store, key: Self.key, selection: .all, apply: true)
        #expect(repriced.cached == 59)
    }

    @Test("by id: unknown ids are reported, not fatal", arguments: [StoreKind.sqlite])
    func byID(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        defer { Task { await store.close() } }
        _ = try await Self.seed(store)
        var seen: [ClassifiedProduct] = []
        let s = try await Self.open(store).run(
            store: store, key: Self.key, selection: .products(["p-3", "nope", "coat-ref-1"]),
            apply: false
        ) { seen += $0 }
        #expect(s.unknown == ["nope"])
        #expect(seen.map { $0.classification.productID! } == ["p-3", "coat-ref-1"])
        #expect(seen[1].action == .personSet)
        // A reference classified by id is left out of its own references.
        #expect(seen[1].classification.best!.references == 10)
    }
}
