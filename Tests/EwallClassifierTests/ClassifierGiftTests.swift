import EwallClassifier
import EwallCore
import EwallStore
import EwallTestSupport
import Foundation
import Testing

/// The category classifier and gifts: a gift is never a reference and is answered `gift`, with the
/// reason, never a merchandise category. Gift flags round-trip through both stores.
@Suite("Classifier and gifts")
struct ClassifierGiftTests {
    static let key = ModelKey(modelID: "test@0", preprocessing: "squash224")

    @Test("gifts are not references and are answered gift with the reason", arguments: StoreKind.allCases)
    func giftsNotReferences(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        defer { Task { await store.close() } }
        let cat = try await StoreClassificationTests.seed(store)
        // A person filed a pouch given away under "bag", and one labelled coat is flagged as a gift.
        let giftVector = cat.labelled[0].vector
        try await store.upsertProducts(
            [Product(id: "pouch", title: "[사은품] 로고 파우치", category: "accessory", inStock: true, price: 1_000)],
            source: .manifest)
        try await store.write(
            WriteBatch(embeddings: [
                StoredEmbedding(productID: "pouch", imageURL: "u", key: Self.key, vector: giftVector)
            ]))
        let flagged = cat.labelled[1].productID
        try await store.writeGiftFlags([
            GiftFlag(
                productID: flagged, isGift: true, giftType: "MASTER", decidedBy: "master", reason: "사은품 마스터 등록 상품",
                explanation: "", resembles: nil, rulesVersion: "t", rulesSHA256: "s", flaggedAt: Date())
        ])
        let gifts = try GiftDetector(rules: GiftDetectorTests.rules)
        let withGifts = try await CategoryClassifier.open(
            store: store, key: Self.key, rules: KeywordRulesTests.rules, gifts: gifts)
        let plain = try await CategoryClassifier.open(store: store, key: Self.key, rules: KeywordRulesTests.rules)
        #expect(!withGifts.references.rowIDs.contains("pouch") && !withGifts.references.rowIDs.contains(flagged))
        func available(_ c: CategoryClassifier, _ name: String) -> Int? {
            c.references.categories.first { $0.name == name }?.available
        }
        // The flagged product's category has one candidate fewer; the pouch's "accessory" has none left.
        let flaggedCategory = cat.labelled[1].category
        let filed = cat.labelled.filter { $0.category == flaggedCategory }.count + (flaggedCategory == "jeans" ? 1 : 0)
        #expect(available(withGifts, flaggedCategory) == filed - 1)
        #expect(available(plain, flaggedCategory) == filed - 1, "a stored flag counts without the detector")
        #expect(available(plain, "accessory") == 1 && available(withGifts, "accessory") == nil)
        #expect(withGifts.stamp != plain.stamp)

        let pouch = try withGifts.classify(
            ClassifierInput(productID: "pouch", vector: giftVector, title: "[사은품] 로고 파우치", price: 1_000))
        #expect(pouch.category == "gift" && pouch.decidedBy == .gift)
        #expect(pouch.gift?.giftType == "KEYWORD")
        #expect(pouch.gift?.classificationReason == "키워드 '사은품' 포함 (자동분류)")
        #expect(pouch.explanation.hasPrefix("gift by gift (GIFT by keyword"))
        let stored = try withGifts.classify(ClassifierInput(productID: flagged, vector: giftVector, title: "labelled"))
        #expect(stored.category == "gift" && stored.gift?.decidedBy == "stored_flag")
        let free = try withGifts.classify(ClassifierInput(vector: giftVector, title: "울 코트", price: 0))
        #expect(free.category == "gift" && free.gift?.classificationReason == "판매가 0원 (자동분류)")
        // A product that comes with a gift is filed under its own category.
        let coat = try withGifts.classify(ClassifierInput(vector: nil, title: "울 트렌치 코트 (사은품 포함)", price: 99_000))
        #expect(coat.category == "coat" && coat.decidedBy == .keyword)
        // The answer round-trips as JSON with its reason.
        let json = String(decoding: try JSONEncoder().encode(pouch), as: UTF8.self)
        #expect(json.contains("\"decided_by\":\"gift\"") && json.contains("classification_reason"))
    }

    @Test("gift flags round-trip; a newer flag replaces the older", arguments: StoreKind.allCases)
    func flagsRoundTrip(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        defer { Task { await store.close() } }
        let at = Date(timeIntervalSince1970: 1_800_000_000)
        let a = GiftFlag(
            productID: "a", isGift: true, giftType: "IMAGE", decidedBy: "image", reason: "사은품 이미지 유사 (g1)",
            explanation: "x", resembles: "g1", rulesVersion: "v1", rulesSHA256: "s1", flaggedAt: at)
        let b = GiftFlag(
            productID: "b", isGift: false, giftType: nil, decidedBy: "none", reason: "일반 상품", explanation: "y",
            resembles: nil, rulesVersion: "v1", rulesSHA256: "s1", flaggedAt: at)
        try await store.writeGiftFlags([a, b])
        #expect(try await store.giftFlags(productIDs: ["a", "b", "c"]) == ["a": a, "b": b])
        #expect(try await store.giftProductIDs() == ["a"])
        var a2 = a
        a2.isGift = false
        a2.giftType = nil
        var b2 = b
        b2.isGift = true
        b2.giftType = "ZERO_PRICE"
        try await store.writeGiftFlags([a2, b2])
        #expect(try await store.giftProductIDs() == ["b"])
        #expect(try await store.giftFlags(productIDs: ["b"])["b"]?.giftType == "ZERO_PRICE")
    }
}
