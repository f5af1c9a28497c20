import Crypto
import EwallCore
import EwallStore
import Foundation

// The classifier over an embedding store: references from the products a person filed,
// products to classify chosen by id, `generic` or all, answers applied (or only reported).

extension CategoryClassifier {
    /// Builds the classifier from a store: the references are products a person filed (a
    /// category from a manifest or an import, not `generic`) that have a vector under `key`.
    /// Reads every product's metadata once and only the chosen references' vectors.
    ///
    /// Gifts are never references: neither products the store flags (`gift_flags`) nor, with
    /// `gifts`, products the detector finds by their list, price or title. With `gifts`, the
    /// classifier answers `gift` for them.
    public static func open(
        store: any EmbeddingStore, key: ModelKey, rules: KeywordRules?,
        configuration: ClassifierConfiguration = .init(), pageSize: Int = 4096, gifts: GiftDetector? = nil
    ) async throws -> CategoryClassifier {
        let giftIDs = try await store.giftProductIDs()
        var idsByCategory: [String: [String]] = [:]
        var after: String?
        while true {
            let page = try await store.productsWithVectors(key: key, after: after, limit: pageSize)
            for p in page where p.hasPersonSetCategory && !giftIDs.contains(p.id) {
                if let gifts,
                    gifts.decide(GiftInput(productID: p.id, title: p.title, brand: p.brand, price: p.price)).isGift
                {
                    continue
                }
                idsByCategory[p.category!, default: []].append(p.id)
            }
            guard let last = page.last, page.count == pageSize else { break }
            after = last.id
        }
        var chosenIDs: [(String, String)] = []
        for (category, ids) in idsByCategory {
            for id in ReferenceSet.choose(ids, count: configuration.maxReferences + 1) {
                chosenIDs.append((id, category))
            }
        }
        let vectors = try await store.vectors(productIDs: chosenIDs.map(\.0), key: key)
        let chosen = chosenIDs.compactMap { id, category in
            vectors[id].map { LabelledVector(productID: id, category: category, vector: $0) }
        }
        let refs = try ReferenceSet(
            chosen: chosen, available: idsByCategory.mapValues(\.count),
            maxReferences: configuration.maxReferences)
        return try CategoryClassifier(
            references: refs, rules: rules, configuration: configuration, modelKey: key, gifts: gifts, giftIDs: giftIDs)
    }

    /// Digest of one product's own inputs (vector bytes, title, brand, price): with ``stamp``,
    /// the cache key of a stored answer. The price is in it because a zero price makes the
    /// answer `gift` (the gift detector's zero-price step).
    public static func inputHash(vector: [Float]?, title: String?, brand: String?, price: Double? = nil) -> String {
        var h = SHA256()
        if let vector { vector.withUnsafeBytes { h.update(bufferPointer: $0) } }
        h.update(data: Data("\u{0}\(title ?? "")\u{0}\(brand ?? "")".utf8))
        if let price { h.update(data: Data("\u{0}price=\(price)".utf8)) }
        return h.finalize().prefix(16).map { String(format: "%02x", $0) }.joined()
    }
}

/// Which products to classify.
public enum ClassifySelection: Sendable, Hashable {
    case products([String])
    /// Products whose category is `generic`, empty or unset.
    case generic
    case all
}

/// What happened (or would happen) to one product's category.
public enum ClassifyAction: String, Sendable, Codable {
    /// Dry run: `--apply` would write this category.
    case wouldSet = "would_set"
    /// Written, marked as set by the classifier.
    case set
    /// The stored answer is current (same stamp and inputs) and already applied: nothing to write.
    case unchanged
    /// A person set this product's category: reported, never written.
    case personSet = "person_set"
    /// A person's category arrived between reading and writing: the store refused the write.
    case refused
}

/// One product's answer with what the store had.
public struct ClassifiedProduct: Sendable, Codable {
    public var classification: Classification
    public var title: String?
    public var currentCategory: String?
    public var currentSource: CategorySource?
    public var action: ClassifyAction
    /// The answer came from the store's record (same stamp and inputs), not recomputed.
    public var cached: Bool

    enum CodingKeys: String, CodingKey {
        case classification, title, action, cached
        case currentCategory = "current_category", currentSource = "current_source"
    }
}

/// Totals of a run.
public struct ClassifySummary: Sendable, Codable {
    public var products = 0
    public var byDecision: [String: Int] = [:]
    public var byAction: [String: Int] = [:]
    public var byCategory: [String: Int] = [:]
    public var cached = 0
    public var unknown: [String] = []
    public var applied: Bool = false
    public var stamp: String = ""
    public var seconds: Double = 0

    enum CodingKeys: String, CodingKey {
        case products, cached, unknown, applied, stamp, seconds
        case byDecision = "by_decision", byAction = "by_action", byCategory = "by_category"
    }
}

extension CategoryClassifier {
    /// Classifies products of the store a page at a time, reusing stored answers whose stamp
    /// and inputs still match, and with `apply` writes the answers (never over a person's
    /// category). `onPage` receives every page's results, in product-id order for `.generic`
    /// and `.all`, in the given order for `.products`.
    public func run(
        store: any EmbeddingStore, key: ModelKey, selection: ClassifySelection, apply: Bool,
        pageSize: Int = 1024,
        onPage: (([ClassifiedProduct]) async throws -> Void)? = nil
    ) async throws -> ClassifySummary {
        let started = ContinuousClock.now
        var summary = ClassifySummary()
        summary.applied = apply
        summary.stamp = stamp

        func process(_ products: [Product]) async throws {
            if products.isEmpty { return }
            try Task.checkCancellation()
            let ids = products.map(\.id)
            async let vectorsCall = store.vectors(productIDs: ids, key: key)
            async let recordsCall = store.classifications(productIDs: ids)
            let (vectors, records) = try await (vectorsCall, recordsCall)
            var results: [ClassifiedProduct?] = Array(repeating: nil, count: products.count)
            var hashes: [String] = []
            var toScore: [Int] = []
            for (i, p) in products.enumerated() {
                let hash = Self.inputHash(vector: vectors[p.id], title: p.title, brand: p.brand, price: p.price)
                hashes.append(hash)
                if let r = records[p.id], r.stamp == stamp, r.inputHash == hash,
                    let c = try? JSONDecoder().decode(Classification.self, from: Data(r.explanation.utf8))
                {
                    let current = p.categorySource == .classifier && p.category == r.category
                    results[i] = ClassifiedProduct(
                        classification: c, title: p.title, currentCategory: p.category,
                        currentSource: p.categorySource,
                        action: p.hasPersonSetCategory ? .personSet : current ? .unchanged : (apply ? .set : .wouldSet),
                        cached: true)
                } else {
                    toScore.append(i)
                }
            }
            let inputs = toScore.map {
                ClassifierInput(
                    productID: products[$0].id, vector: vectors[products[$0].id],
                    title: products[$0].title, brand: products[$0].brand, price: products[$0].price)
            }
            for (j, c) in try classify(inputs).enumerated() {
                let p = products[toScore[j]]
                results[toScore[j]] = ClassifiedProduct(
                    classification: c, title: p.title, currentCategory: p.category,
                    currentSource: p.categorySource,
                    action: p.hasPersonSetCategory ? .personSet : (apply ? .set : .wouldSet),
                    cached: false)
            }
            var page = results.map { $0! }
            if apply {
                let encoder = JSONEncoder()
                encoder.outputFormatting = .sortedKeys
                var records: [ClassificationRecord] = []
                for (i, r) in page.enumerated() where r.action == .set {
                    let c = r.classification
                    records.append(
                        ClassificationRecord(
                            productID: products[i].id, category: c.category, decidedBy: c.decidedBy.rawValue,
                            method: c.method.rawValue, score: c.decidedBy == .embedding ? c.best?.score : nil,
                            stamp: stamp,
                            inputHash: hashes[i], explanation: String(decoding: try encoder.encode(c), as: UTF8.self)))
                }
                let written = try await store.applyClassifications(records)
                for i in page.indices where page[i].action == .set && !written.contains(products[i].id) {
                    page[i].action = .refused
                }
            }
            for r in page {
                summary.products += 1
                summary.byDecision[r.classification.decidedBy.rawValue, default: 0] += 1
                summary.byAction[r.action.rawValue, default: 0] += 1
                summary.byCategory[r.classification.category, default: 0] += 1
                if r.cached { summary.cached += 1 }
            }
            try await onPage?(page)
        }

        switch selection {
        case .products(let ids):
            for chunk in stride(from: 0, to: ids.count, by: pageSize) {
                var found: [Product] = []
                for id in ids[chunk..<min(chunk + pageSize, ids.count)] {
                    if let p = try await store.product(id: id) { found.append(p) } else { summary.unknown.append(id) }
                }
                try await process(found)
            }
        case .generic, .all:
            var after: String?
            while true {
                let page = try await store.products(after: after, limit: pageSize)
                let wanted =
                    selection == .all
                    ? page
                    : page.filter {
                        ($0.category ?? "").isEmpty || $0.category == Product.genericCategory
                    }
                try await process(wanted)
                guard let last = page.last, page.count == pageSize else { break }
                after = last.id
            }
        }
        let elapsed = ContinuousClock.now - started
        summary.seconds = elapsed.inSeconds
        return summary
    }

    /// The labelled products of a store (a person's category, not `generic`), with their
    /// vectors under `key` where they have one: what ``Calibration/run(_:products:thresholds:targetPrecision:)`` takes.
    public static func labelledProducts(
        store: any EmbeddingStore, key: ModelKey, pageSize: Int = 2048
    ) async throws -> [LabelledProduct] {
        var out: [LabelledProduct] = []
        var after: String?
        while true {
            let page = try await store.products(after: after, limit: pageSize)
            let labelled = page.filter(\.hasPersonSetCategory)
            let vectors = try await store.vectors(productIDs: labelled.map(\.id), key: key)
            for p in labelled {
                out.append(
                    LabelledProduct(
                        productID: p.id, category: p.category!, vector: vectors[p.id], title: p.title, brand: p.brand))
            }
            guard let last = page.last, page.count == pageSize else { break }
            after = last.id
        }
        return out
    }
}
