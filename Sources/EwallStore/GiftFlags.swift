import EwallCore
import Foundation

/// The gift detector's answer for one product, as the store keeps it (`gift_flags`): what
/// `ewall gifts --apply` writes, and what similar products and the classifier read to leave
/// gifts out.
public struct GiftFlag: Sendable, Hashable {
    public var productID: String
    public var isGift: Bool
    /// The platform's `gift_type` (`ZERO_PRICE`, `MASTER`, `KEYWORD`, `IMAGE`), `nil` for a product.
    public var giftType: String?
    /// The step that decided (`master`, `zero_price`, `keyword`, `image`, `none`).
    public var decidedBy: String
    /// The platform's `classification_reason`, in Korean.
    public var reason: String
    /// The detector's explanation, for people.
    public var explanation: String
    /// For `IMAGE`: the registered gift it resembles.
    public var resembles: String?
    public var rulesVersion: String
    /// SHA-256 of the rules that produced it: a flag made under other rules is stale.
    public var rulesSHA256: String
    public var flaggedAt: Date

    public init(
        productID: String, isGift: Bool, giftType: String?, decidedBy: String, reason: String, explanation: String,
        resembles: String?, rulesVersion: String, rulesSHA256: String, flaggedAt: Date
    ) {
        self.productID = productID
        self.isGift = isGift
        self.giftType = giftType
        self.decidedBy = decidedBy
        self.reason = reason
        self.explanation = explanation
        self.resembles = resembles
        self.rulesVersion = rulesVersion
        self.rulesSHA256 = rulesSHA256
        self.flaggedAt = flaggedAt
    }
}

/// The gift flags' place in the store: each store implements these beside its other methods.
public protocol GiftFlagStore: Sendable {
    /// Writes gift flags in one transaction (a newer flag replaces the older).
    func writeGiftFlags(_ flags: [GiftFlag]) async throws

    /// The stored flags of these products (absent: never applied).
    func giftFlags(productIDs: [String]) async throws -> [String: GiftFlag]

    /// The ids of every product flagged as a gift.
    func giftProductIDs() async throws -> Set<String>
}
