import EwallCore
import EwallIndex
import EwallStore
import EwallTestSupport
import Foundation
import Testing

@Suite("Similar products leave gifts out", .serialized)
struct SimilarGiftsTests {
    static let data = SyntheticVectors(count: 3000, dimension: 16, clusters: 60, seed: 37)

    /// Every fourth product is a gift, spread over every cluster, category and stock state.
    static func isGift(_ r: Int) -> Bool { r % 4 == 2 }
    static func category(_ r: Int) -> String? { "c\(data.cluster[r] % 6)" }
    static func inStock(_ r: Int) -> Bool? { r % 3 == 0 ? false : (r % 3 == 1 ? true : nil) }

    static func flags(_ rows: Range<Int>) -> [GiftFlag] {
        rows.filter(isGift).map { r in
            GiftFlag(
                productID: Catalogue.pid(r), isGift: true, giftType: "KEYWORD", decidedBy: "keyword",
                reason: "키워드 '사은품' 포함 (자동분류)", explanation: "test", resembles: nil, rulesVersion: "t",
                rulesSHA256: "x", flaggedAt: Date())
        }
    }

    static let combinations: [(Bool, Bool)] = [(true, true), (true, false), (false, true), (false, false)]

    @Test(
        "no gift in any answer, by id or by vector, under every filter combination and index kind",
        arguments: ["auto", "Flat", "HNSW16"])
    func noGifts(index: String) async throws {
        let (store, _) = try await Catalogue.store(Self.data, category: Self.category, inStock: Self.inStock)
        defer { Task { await store.close() } }
        try await store.writeGiftFlags(Self.flags(0..<Self.data.count))
        // A product flagged and then found not to be a gift is recommended again.
        try await store.writeGiftFlags([
            GiftFlag(
                productID: Catalogue.pid(6), isGift: false, giftType: nil, decidedBy: "none", reason: "일반 상품",
                explanation: "", resembles: nil, rulesVersion: "t", rulesSHA256: "x", flaggedAt: Date())
        ])
        let folder = Catalogue.folder()
        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, index: index))
        let search = try await ProductSearch.open(folder: folder, store: store)
        let gifts = Set((0..<Self.data.count).filter { Self.isGift($0) && $0 != 6 }.map(Catalogue.pid))
        #expect(try await store.giftProductIDs() == gifts)

        var sawGiftWhenAsked = 0
        for (same, stock) in Self.combinations {
            for q in [1, 2, 5, 6, 10, 301, 1202] { // 2, 10 and 1202 are gifts themselves
                let query = SimilarQuery(k: 20, minSimilarity: 0, sameCategory: same, inStockOnly: stock)
                let byID = try await search.similar(to: Catalogue.pid(q), query: query)
                let byVector = try search.similar(
                    vector: Self.data.row(q), category: Self.category(q), excluding: nil, query: query)
                for a in [byID, byVector] {
                    #expect(!a.results.isEmpty)
                    #expect(
                        a.results.allSatisfy { !gifts.contains($0.productID) }, "same \(same) stock \(stock) q \(q)")
                    if stock { #expect(a.results.allSatisfy { $0.inStock != false }) }
                    if same { #expect(a.results.allSatisfy { $0.category == Self.category(q) }) }
                }
                var asked = query
                asked.includeGifts = true
                let withGifts = try await search.similar(to: Catalogue.pid(q), query: asked)
                sawGiftWhenAsked += withGifts.results.filter { gifts.contains($0.productID) }.count
            }
            // The batched path leaves them out too.
            let batch = search.similar(
                batch: [1, 5, 301].map {
                    SimilarRequest(
                        vector: Self.data.row($0), category: Self.category($0), excluding: Catalogue.pid($0),
                        query: SimilarQuery(k: 20, minSimilarity: 0, sameCategory: same, inStockOnly: stock))
                })
            for r in batch {
                let a = try r.get()
                #expect(!a.results.isEmpty && a.results.allSatisfy { !gifts.contains($0.productID) })
            }
        }
        #expect(sawGiftWhenAsked > 0, "include_gifts lets the back office see them")
    }

    @Test("a gift flag is a bitmap beside stock and category: eligible counts leave gifts out")
    func eligibleCounts() async throws {
        let (store, _) = try await Catalogue.store(Self.data, category: Self.category, inStock: Self.inStock)
        defer { Task { await store.close() } }
        try await store.writeGiftFlags(Self.flags(0..<Self.data.count))
        let folder = Catalogue.folder()
        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, index: "Flat"))
        let search = try await ProductSearch.open(folder: folder, store: store)
        let q = 1
        let all = SimilarQuery(k: 5, minSimilarity: 0, sameCategory: false, inStockOnly: false)
        var withGifts = all
        withGifts.includeGifts = true
        let a = try search.similar(vector: Self.data.row(q), category: nil, excluding: Catalogue.pid(q), query: all)
        let b = try search.similar(
            vector: Self.data.row(q), category: nil, excluding: Catalogue.pid(q), query: withGifts)
        let giftCount = (0..<Self.data.count).filter(Self.isGift).count
        #expect(b.eligible == Self.data.count - 1)
        #expect(a.eligible == Self.data.count - 1 - giftCount)
    }
}
