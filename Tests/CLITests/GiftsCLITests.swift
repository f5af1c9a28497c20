import EwallCore
import EwallStore
import EwallTestSupport
import Foundation
import Testing

@Suite("ewall gifts", .serialized)
struct GiftsCLITests {
    /// Five products: a gift by price, by words, a product that comes with a gift, a plain one,
    /// and one on the registered list.
    func store() async throws -> (env: [String: String], dir: URL, db: String) {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ewall-gifts-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let db = "sqlite:\(dir.path)/store.sqlite"
        let store = try await StoreLocation(parsing: db).open()
        try await store.upsertProducts(
            [
                Product(id: "a-free", title: "로고 파우치", price: 0),
                Product(id: "b-word", title: "[사은품] 브랜드 에코백", price: 1_000),
                Product(id: "c-with", title: "울 코트 (사은품 포함)", price: 189_000),
                Product(id: "d-plain", title: "캐시미어 머플러", price: 99_000),
                Product(id: "e-master", title: "쿠션 퍼프", price: 500),
            ], source: .manifest)
        await store.close()
        return (["EWALL_DB": db], dir, db)
    }

    func lines(_ s: String) throws -> [[String: Any]] {
        try s.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
    }

    @Test("a dry run reports every product in the platform's shape; --apply stores the flags")
    func dryRunAndApply() async throws {
        let (env, dir, db) = try await store()
        defer { try? FileManager.default.removeItem(at: dir) }
        let rules = Fixtures.path("data/gift_rules.json")
        let dry = try tool("ewall", ["gifts", "--json", "--rules", rules, "--master", "e-master"], env: env)
        #expect(dry.status == 0, "\(dry.stderr)")
        let rows = try lines(dry.stdout)
        #expect(rows.count == 6)
        let by = Dictionary(uniqueKeysWithValues: rows.dropLast().map { ($0["product_id"] as! String, $0) })
        #expect(by["a-free"]?["product_type"] as? String == "GIFT")
        #expect(by["a-free"]?["gift_type"] as? String == "ZERO_PRICE")
        #expect(by["a-free"]?["classification_reason"] as? String == "판매가 0원 (자동분류)")
        #expect(by["a-free"]?["is_revenue"] as? Bool == false)
        #expect(
            by["b-word"]?["gift_type"] as? String == "KEYWORD" && by["b-word"]?["decided_by"] as? String == "keyword")
        #expect(by["c-with"]?["product_type"] as? String == "PRODUCT")
        #expect(by["c-with"]?["gift_type"] is NSNull, "gift_type is null for a product")
        #expect(by["d-plain"]?["is_revenue"] as? Bool == true)
        #expect(by["e-master"]?["gift_type"] as? String == "MASTER")
        let summary = rows.last!["summary"] as! [String: Any]
        #expect(summary["gifts"] as? Int == 3 && summary["applied"] as? Bool == false)

        let store = try await StoreLocation(parsing: db).open()
        #expect(try await store.giftProductIDs().isEmpty, "a dry run writes nothing")
        await store.close()

        let table = try tool("ewall", ["gifts", "--rules", rules, "--apply"], env: env)
        #expect(table.status == 0, "\(table.stderr)")
        #expect(table.stdout.contains("b-word") && table.stdout.contains("키워드 '사은품' 포함"))
        #expect(table.stdout.contains("written to the store"))
        let after = try await StoreLocation(parsing: db).open()
        #expect(try await after.giftProductIDs() == ["a-free", "b-word"])
        #expect(try await after.giftFlags(productIDs: ["c-with"])["c-with"]?.isGift == false)
        await after.close()
    }

    @Test("a malformed rules file is refused with the field, exit 64")
    func badRules() async throws {
        let (env, dir, _) = try await store()
        defer { try? FileManager.default.removeItem(at: dir) }
        let bad = dir.appendingPathComponent("bad.json").path
        try Data(#"{"format":1,"version":"x","words":{"ko":[""]}}"#.utf8).write(to: URL(fileURLWithPath: bad))
        let r = try tool("ewall", ["gifts", "--rules", bad], env: env)
        #expect(r.status == 64)
        #expect(r.stderr.contains("field 'words.ko[0]'"))
    }

    @Test("ewall calibrate --gifts sweeps the image threshold over the other steps' labels")
    func calibrateImage() async throws {
        let (env, dir, db) = try await store()
        defer { try? FileManager.default.removeItem(at: dir) }
        let key = ModelKey(modelID: "synthetic@gifts", preprocessing: "squash224")
        let s = try await StoreLocation(parsing: db).open()
        var products = [Product(id: "g0", title: "쿠션 퍼프", price: 500)]
        var vectors: [(String, [Float])] = [("g0", [1, 0, 0, 0])]
        for i in 0..<8 {
            products.append(Product(id: "gift\(i)", title: "[사은품] 파우치 \(i)", price: 100))
            vectors.append(("gift\(i)", [1, 0.3, Float(i) * 0.01, 0]))
            products.append(Product(id: "item\(i)", title: "울 코트 \(i)", price: 99_000))
            vectors.append(("item\(i)", [0.5, 0, 0.8, Float(i) * 0.01]))
        }
        try await s.upsertProducts(products, source: .manifest)
        try await s.write(
            WriteBatch(
                embeddings: vectors.map { StoredEmbedding(productID: $0.0, imageURL: "u", key: key, vector: $0.1) }))
        await s.close()
        let rules = Fixtures.path("data/gift_rules.json")
        let r = try tool(
            "ewall",
            [
                "calibrate", "--gifts", "--gift-rules", rules, "--gift-master", "g0", "--target-precision", "0.99",
                "--json",
            ], env: env.merging(["EWALL_MODEL": "/nonexistent.pt"]) { a, _ in a })
        #expect(r.status == 0, "\(r.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(report["gifts"] as? Int == 8 && report["products"] as? Int == 16)
        let t = try #require(report["threshold_for_target"] as? Double)
        #expect(t >= 0.53 && t <= 0.955, "items sit at cosine 0.53, gifts at 0.957: \(t)")
    }
}
