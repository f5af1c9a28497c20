import EwallCore
import EwallStore
import Foundation

// The gift detector over an embedding store: every product decided, reported, and with `apply`
// the flags stored (`gift_flags`), where similar products and the classifier read them.

/// One product's answer in the platform's shape (`ewall gifts --json`, `POST /api/gifts/check`).
public struct GiftReport: Sendable, Encodable, Hashable {
    public var productID: String?
    /// `GIFT` or `PRODUCT`.
    public var productType: String
    /// `ZERO_PRICE`, `MASTER`, `KEYWORD` or `IMAGE`; `nil` for a product.
    public var giftType: String?
    /// In Korean, as the platform writes it.
    public var classificationReason: String
    public var isRevenue: Bool
    /// The step that decided: `master`, `zero_price`, `keyword`, `image` or `none`.
    public var decidedBy: String
    /// For `IMAGE`: the registered gift it resembles, and how closely.
    public var resembles: GiftResemblance?
    public var explanation: String
    public var rulesVersion: String
    public var title: String?
    /// The decision itself (not encoded: the fields above are its platform shape).
    public var decision: GiftDecision
    /// The product's price, when known (not encoded).
    public var price: Double?

    enum CodingKeys: String, CodingKey {
        case productID = "product_id", productType = "product_type", giftType = "gift_type"
        case classificationReason = "classification_reason", isRevenue = "is_revenue", decidedBy = "decided_by"
        case resembles, explanation, rulesVersion = "rules_version", title
    }

    /// The platform's fields are always present (`gift_type` is null for a product).
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(productID, forKey: .productID)
        try c.encode(productType, forKey: .productType)
        try c.encode(giftType, forKey: .giftType)
        try c.encode(classificationReason, forKey: .classificationReason)
        try c.encode(isRevenue, forKey: .isRevenue)
        try c.encode(decidedBy, forKey: .decidedBy)
        try c.encodeIfPresent(resembles, forKey: .resembles)
        try c.encode(explanation, forKey: .explanation)
        try c.encode(rulesVersion, forKey: .rulesVersion)
        try c.encodeIfPresent(title, forKey: .title)
    }

    public init(_ d: GiftDecision, title: String? = nil, price: Double? = nil) {
        decision = d
        self.price = price
        productID = d.productID
        productType = d.productType
        giftType = d.giftType
        classificationReason = d.classificationReason
        isRevenue = d.isRevenue
        decidedBy = d.decidedBy.rawValue
        resembles = d.decidedBy == .image ? d.resembles : nil
        explanation = d.explanation
        rulesVersion = d.rulesVersion
        self.title = title
    }
}

/// Totals of a gift run.
public struct GiftSummary: Sendable, Codable {
    public var products = 0
    public var gifts = 0
    public var byStep: [String: Int] = [:]
    public var applied = false
    public var rulesVersion = ""
    public var seconds = 0.0

    enum CodingKeys: String, CodingKey {
        case products, gifts, byStep = "by_step", applied, rulesVersion = "rules_version", seconds
    }
}

extension GiftDetector {
    /// The detector for a store: the rules, the registered gifts (the rules' `master` and
    /// `master`), and, when `key` is given, the registered gifts' vectors under it for the image
    /// step.
    public static func open(
        store: any EmbeddingStore, rules: GiftRules, key: ModelKey?, master: [String] = []
    ) async throws -> GiftDetector {
        let ids = Array(Set(rules.master + master)).sorted()
        var vectors: [String: [Float]] = [:]
        if let key, !ids.isEmpty { vectors = try await store.vectors(productIDs: ids, key: key) }
        return try GiftDetector(rules: rules, master: ids.map { MasterGift(productID: $0, vector: vectors[$0]) })
    }

    /// The stored flag of a decision (its product id must be set), as `ewall gifts --apply` and
    /// `ewall sync` write it.
    public func flag(_ d: GiftDecision, at time: Date = Date()) -> GiftFlag {
        GiftFlag(
            productID: d.productID ?? "", isGift: d.isGift, giftType: d.giftType, decidedBy: d.decidedBy.rawValue,
            reason: d.classificationReason, explanation: d.explanation,
            resembles: d.decidedBy == .image ? d.resembles?.productID : nil, rulesVersion: rules.version,
            rulesSHA256: rules.sha256, flaggedAt: time)
    }

    /// Decides every product of the store a page at a time; `onPage` gets each page's reports
    /// in product-id order. With `apply`, every answer (gift or not) is stored as a flag.
    public func run(
        store: any EmbeddingStore, key: ModelKey?, apply: Bool, pageSize: Int = 2048,
        onPage: (([GiftReport]) async throws -> Void)? = nil
    ) async throws -> GiftSummary {
        let started = ContinuousClock.now
        var summary = GiftSummary()
        summary.applied = apply
        summary.rulesVersion = rules.version
        var after: String?
        let imageStep = key != nil && hasMasterVectors
        while true {
            try Task.checkCancellation()
            let page = try await store.products(after: after, limit: pageSize)
            let vectors: [String: [Float]] =
                imageStep && !page.isEmpty ? try await store.vectors(productIDs: page.map(\.id), key: key!) : [:]
            let decisions = page.map { p in
                decide(
                    GiftInput(productID: p.id, title: p.title, brand: p.brand, price: p.price, vector: vectors[p.id]))
            }
            if apply {
                let now = Date()
                try await store.writeGiftFlags(decisions.map { flag($0, at: now) })
            }
            for d in decisions {
                summary.products += 1
                if d.isGift { summary.gifts += 1 }
                summary.byStep[d.decidedBy.rawValue, default: 0] += 1
            }
            try await onPage?(zip(decisions, page).map { GiftReport($0, title: $1.title, price: $1.price) })
            guard let last = page.last, page.count == pageSize else { break }
            after = last.id
        }
        summary.seconds = (ContinuousClock.now - started).inSeconds
        return summary
    }
}
