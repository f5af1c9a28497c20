import EwallML
import EwallRedis
import EwallTestSupport
import Foundation
import Testing

/// The platform's gift keys against a real redis-server: rules read from `gift:rules:{company}`
/// (a malformed value refused, the rules in force kept), the master list, results with their
/// fields and TTL, values not ours left alone and counted, invalidation when the rules change.
@Suite(
    "Gift keys in Redis", .serialized,
    .enabled(if: RedisServer.available, "needs Debian's redis-server (make deps)"))
struct GiftKeysTests {
    static let fileRules = try! GiftRules.load(path: Fixtures.path("data/gift_rules.json"))

    static func keys(_ server: RedisServer, company: Int = 7) throws -> GiftKeys {
        GiftKeys(client: RedisClient(location: try RedisLocation(parsing: server.url())), companyID: company)
    }

    @Test("rules come from gift:rules:{company} when present; a malformed value is refused and counted")
    func rules() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let keys = try Self.keys(server)
        let book = GiftRuleBook(Self.fileRules)
        #expect(await keys.loadRules(into: book) == nil)
        #expect(book.current.version == Self.fileRules.version)

        _ = server.cli(["SET", "gift:rules:7", #"{"format":1,"version":"company-7","words":{"ko":["판촉"]}}"#])
        let read = await keys.loadRules(into: book)
        #expect(read?.contains("company-7") == true)
        #expect(book.current.version == "company-7")
        #expect(book.current.source == "redis gift:rules:7")

        let bad = #"{"format":1,"version":"bad","words":{"ko":["a"]},"image":{"threshold":2}}"#
        _ = server.cli(["SET", "gift:rules:7", bad])
        let refused = try #require(await keys.loadRules(into: book))
        #expect(refused.contains("field 'image.threshold'") && refused.contains("stay in force"))
        #expect(book.current.version == "company-7")
        #expect(keys.stats.foreign == 1)
        #expect(server.cli(["GET", "gift:rules:7"]).contains("bad"), "the value is left alone")

        _ = server.cli(["DEL", "gift:rules:7"])
        _ = server.cli(["HSET", "gift:rules:7", "a", "b"])
        #expect(await keys.loadRules(into: book) != nil)
        #expect(book.current.version == "company-7" && keys.stats.foreign == 2)
        // Another company's key is its own.
        #expect(await (try Self.keys(server, company: 8)).loadRules(into: GiftRuleBook(Self.fileRules)) == nil)
    }

    @Test("the master list: a set, or a JSON array; anything else is not ours")
    func master() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let keys = try Self.keys(server)
        #expect(await keys.master() == nil)
        _ = server.cli(["SADD", "gift:master:7", "G2", "G1"])
        #expect(await keys.master() == ["G1", "G2"])
        _ = server.cli(["DEL", "gift:master:7"])
        _ = server.cli(["SET", "gift:master:7", #"["G9"]"#])
        #expect(await keys.master() == ["G9"])
        _ = server.cli(["SET", "gift:master:7", "not json"])
        #expect(await keys.master() == nil && keys.stats.foreign == 1)
    }

    @Test("results: the platform's fields under gift:classification:{code}:{company}, TTL 4 h; others' left alone")
    func results() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let keys = try Self.keys(server)
        let detector = try GiftDetector(rules: Self.fileRules)
        let gift = detector.decide(GiftInput(productID: "A1", title: "울 코트", price: 59_000, supplyPrice: 0))
        let product = detector.decide(GiftInput(productID: "B2", title: "울 코트", price: 59_000))
        _ = server.cli(["SET", "gift:classification:C3:7", #"{"product_type":"GIFT","gift_type":"MASTER"}"#])
        let now = Date()
        await keys.write([
            ("A1", .init(gift, price: 59_000, rules: Self.fileRules, at: now)),
            ("B2", .init(product, price: 59_000, rules: Self.fileRules, at: now)),
            ("C3", .init(product, price: 59_000, rules: Self.fileRules, at: now)),
        ])
        #expect(keys.stats.written == 2 && keys.stats.foreign == 1)
        let raw = server.cli(["GET", "gift:classification:A1:7"])
        let json = try #require(try JSONSerialization.jsonObject(with: Data(raw.utf8)) as? [String: Any])
        #expect(json["product_type"] as? String == "GIFT")
        #expect(json["gift_type"] as? String == "ZERO_PRICE")
        #expect(json["classification_reason"] as? String == "공급가 0원 (자동분류)")
        #expect(json["is_revenue"] as? Bool == false)
        #expect(json["revenue_impact"] as? Double == 0)
        #expect((json["classified_at"] as? String)?.isEmpty == false)
        let ttl = Int(server.cli(["PTTL", "gift:classification:A1:7"]))!
        #expect(ttl > 4 * 3600 * 1000 - 60_000 && ttl <= 4 * 3600 * 1000)
        let rawB = server.cli(["GET", "gift:classification:B2:7"])
        let jsonB = try #require(try JSONSerialization.jsonObject(with: Data(rawB.utf8)) as? [String: Any])
        #expect(jsonB["gift_type"] is NSNull, "gift_type is null for a product")
        let b = try #require(await keys.result(productCode: "B2"))
        #expect(b.productType == "PRODUCT" && b.giftType == nil && b.isRevenue && b.revenueImpact == 59_000)
        #expect(server.cli(["GET", "gift:classification:C3:7"]).contains("MASTER"), "not ours: left alone")
        #expect(await keys.result(productCode: "C3") == nil)
    }

    @Test("a change of rules removes the results they produced, and only ours")
    func invalidation() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let keys = try Self.keys(server)
        let a = Self.fileRules
        let b = try GiftRules(data: Data(#"{"format":1,"version":"b","words":{"ko":["사은품"]}}"#.utf8))
        #expect(await keys.invalidateStale(rules: a) == 0)
        let d = try GiftDetector(rules: a).decide(GiftInput(productID: "A1", title: "사은품 파우치", price: 1))
        await keys.write([
            ("A1", .init(d, price: 1, rules: a, at: Date())), ("A2", .init(d, price: 1, rules: a, at: Date())),
        ])
        _ = server.cli(["SET", "gift:classification:X:7", "theirs"])
        _ = server.cli(["SET", "gift:classification:A1:8", #"{"source":"ewall","rules_sha256":"old"}"#])
        #expect(await keys.invalidateStale(rules: a) == 0, "same rules: nothing to remove")
        #expect(await keys.result(productCode: "A1") != nil)
        #expect(await keys.invalidateStale(rules: b) == 2)
        let a1 = await keys.result(productCode: "A1"), a2 = await keys.result(productCode: "A2")
        #expect(a1 == nil && a2 == nil)
        #expect(server.cli(["GET", "gift:classification:X:7"]) == "theirs")
        #expect(server.cli(["GET", "gift:classification:A1:8"]).contains("old"), "another company's stay")
        #expect(server.cli(["GET", "ewall:gift:rules_sha256:7"]) == b.sha256)
        #expect(keys.stats.invalidated == 2)
    }
}
