import EwallCore
import EwallStore
import EwallTestSupport
import Foundation
import Testing

@Suite("ewall classify and ewall calibrate", .serialized)
struct ClassifyCLITests {
    static let key = ModelKey(modelID: "synthetic@classify", preprocessing: "squash224")

    /// 300 products in 3 clusters: the first 150 filed by a person under `cat<cluster>`, the
    /// rest `generic`, every third of those titled with a Korean keyword.
    func catalogue() async throws -> (env: [String: String], dir: URL, cluster: [Int]) {
        let data = SyntheticVectors(count: 300, dimension: 32, clusters: 3, seed: 5)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ewall-classify-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let db = "sqlite:\(dir.path)/store.sqlite"
        let store = try await StoreLocation(parsing: db).open()
        try await store.upsertProducts(
            (0..<300).map { i in
                let id = String(format: "p%04d", i)
                return i < 150
                    ? Product(id: id, title: "item \(i)", category: "cat\(data.cluster[i])")
                    : Product(id: id, title: i % 3 == 0 ? "여성 구스다운 롱패딩 \(i)" : "item \(i)", category: "generic")
            }, source: .manifest)
        try await store.write(
            WriteBatch(
                embeddings: (0..<300).map {
                    StoredEmbedding(
                        productID: String(format: "p%04d", $0), imageURL: "u\($0)", key: Self.key, vector: data.row($0))
                }))
        await store.close()
        return (["EWALL_DB": db, "EWALL_MODEL": "/nonexistent.pt"], dir, data.cluster)
    }

    func lines(_ s: String) throws -> [[String: Any]] {
        try s.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
    }

    @Test("dry run by default, --apply writes, a rerun reuses the stored answers; --json lines")
    func classifyAndApply() async throws {
        let (env, dir, cluster) = try await catalogue()
        defer { try? FileManager.default.removeItem(at: dir) }
        let dry = try tool("ewall", ["classify", "--json"], env: env)
        #expect(dry.status == 0, "\(dry.stderr)")
        let rows = try lines(dry.stdout)
        #expect(rows.count == 151)
        var right = 0
        for r in rows.dropLast() {
            let c = r["classification"] as! [String: Any]
            let i = Int((c["product_id"] as! String).dropFirst())!
            #expect(c["decided_by"] as? String == "embedding")
            #expect((c["best"] as? [String: Any])?["references"] as? Int == 10)
            #expect(r["action"] as? String == "would_set")
            if c["category"] as? String == "cat\(cluster[i])" { right += 1 }
        }
        #expect(right >= 145, "synthetic clusters are well separated: \(right) of 150")
        let summary = rows.last!["summary"] as! [String: Any]
        #expect((summary["by_action"] as! [String: Int])["would_set"] == 150)

        let store = try await StoreLocation(parsing: env["EWALL_DB"]!).open()
        #expect(try await store.product(id: "p0200")?.category == "generic")

        let applied = try tool("ewall", ["classify", "--apply"], env: env)
        #expect(applied.status == 0, "\(applied.stderr)")
        #expect(applied.stdout.contains("written to the store"))
        let p = try #require(try await store.product(id: "p0200"))
        #expect(p.category == "cat\(cluster[200])" && p.categorySource == .classifier)
        #expect(try await store.product(id: "p0010")?.categorySource == .manifest)

        let again = try tool("ewall", ["classify", "--all", "--apply", "--json"], env: env)
        let s2 = try lines(again.stdout).last!["summary"] as! [String: Any]
        #expect((s2["by_action"] as! [String: Int])["unchanged"] == 150)
        #expect((s2["by_action"] as! [String: Int])["person_set"] == 150)
        await store.close()

        // A high threshold hands over to the keyword rules (data/category_rules.json).
        let kw = try tool("ewall", ["classify", "p0201", "p0202", "--threshold", "0.99"], env: env)
        #expect(kw.status == 0, "\(kw.stderr)")
        let line201 = kw.stdout.split(separator: "\n").first { $0.hasPrefix("p0201") }.map(String.init) ?? ""
        #expect(line201.contains("down") && line201.contains("keyword") && line201.contains("'구스다운'"), "\(kw.stdout)")
        #expect(kw.stdout.split(separator: "\n").contains { $0.hasPrefix("p0202") && $0.contains("none") })
    }

    @Test("unknown products exit 1, a missing rules file exits 2, --help names the flags")
    func errors() async throws {
        let (env, dir, _) = try await catalogue()
        defer { try? FileManager.default.removeItem(at: dir) }
        let unknown = try tool("ewall", ["classify", "p0001", "nope"], env: env)
        #expect(unknown.status == 1)
        #expect(unknown.stderr.contains("unknown product nope"))
        #expect(unknown.stdout.contains("p0001"))
        let rules = try tool("ewall", ["classify", "--rules", "/no/such.json"], env: env)
        #expect(rules.status == 2 && rules.stderr.contains("cannot read the rules file /no/such.json"))
        let both = try tool("ewall", ["classify", "--all", "--only-generic"], env: env)
        #expect(both.status != 0 && both.stderr.contains("one of them"))
        let help = try tool("ewall", ["classify", "--help"], env: env)
        for flag in [
            "--only-generic", "--all", "--db", "--threshold", "--method", "--rules", "--apply", "--dry-run", "--json",
        ] {
            #expect(help.stdout.contains(flag), "\(flag)")
        }
        #expect(help.stdout.contains("random-init"))
    }

    @Test("ewall calibrate: the table, the confusion, the threshold for a target precision; --json")
    func calibrate() async throws {
        let (env, dir, _) = try await catalogue()
        defer { try? FileManager.default.removeItem(at: dir) }
        let text = try tool("ewall", ["calibrate"], env: env)
        #expect(text.status == 0, "\(text.stderr)")
        #expect(text.stdout.contains("calibration on 150 products"))
        #expect(text.stdout.contains("confusion at threshold 0.35"))
        #expect(text.stdout.contains("     0.10") && text.stdout.contains("     0.90"))
        let json = try tool(
            "ewall", ["calibrate", "--json", "--method", "knn", "--target-precision", "0.95"], env: env)
        let r = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as! [String: Any]
        #expect(r["products"] as? Int == 150)
        #expect(r["method"] as? String == "knn")
        #expect((r["rows"] as! [[String: Any]]).count == 17)
        let conf = r["confusion"] as! [String: Any]
        #expect(conf["categories"] as? [String] == ["cat0", "cat1", "cat2"])
        let counts = conf["counts"] as! [[Int]]
        #expect(counts.map { $0.reduce(0, +) }.reduce(0, +) == 150)
        #expect(r["threshold_for_target"] is Double)
    }
}
