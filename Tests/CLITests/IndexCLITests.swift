import EwallCore
import EwallIndex
import EwallStore
import EwallTestSupport
import Foundation
import Testing

/// Runs one of the built executables (next to this test bundle in .build/<config>/).
func tool(
    _ name: String, _ args: [String], env: [String: String] = [:]
) throws -> (status: Int32, stdout: String, stderr: String) {
    let r = try ProcessRunner.run(try ProcessRunner.built(name), args, environment: env)
    return (r.status, r.stdout, r.stderr)
}

@Suite("rebuild-faiss-index and ewall similar", .serialized)
struct IndexCLITests {
    static let key = ModelKey(modelID: "synthetic@cli", preprocessing: "squash224")

    /// 600 products in 3 categories by cluster; every 4th out of stock.
    func catalogue(key: ModelKey = Self.key, dimension: Int = 32) async throws -> (db: String, dir: URL) {
        let data = SyntheticVectors(count: 600, dimension: dimension, clusters: 30, seed: 12)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ewall-index-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let db = "sqlite:\(dir.path)/store.sqlite"
        let store = try await StoreLocation(parsing: db).open()
        try await store.upsertProducts(
            (0..<600).map {
                Product(
                    id: String(format: "p%04d", $0), title: "item \($0)", category: "cat\(data.cluster[$0] % 3)",
                    inStock: $0 % 4 != 0)
            }, source: .manifest)
        try await store.write(
            WriteBatch(
                embeddings: (0..<600).map {
                    StoredEmbedding(
                        productID: String(format: "p%04d", $0), imageURL: "u\($0)", key: key, vector: data.row($0))
                }))
        await store.close()
        return (db, dir)
    }

    @Test(
        "Builds from $EWALL_DB into $EWALL_INDEX, prints a summary (--json too), and ewall similar answers with the defaults"
    )
    func buildAndSearch() async throws {
        let (db, dir) = try await catalogue()
        defer { try? FileManager.default.removeItem(at: dir) }
        let env = ["EWALL_DB": db, "EWALL_INDEX": dir.appendingPathComponent("faiss").path]
        let text = try tool("rebuild-faiss-index", [], env: env)
        #expect(text.status == 0, "\(text.stderr)")
        #expect(text.stdout.contains("IDMap2,Flat") && text.stdout.contains("600 vectors"))
        let r = try tool("rebuild-faiss-index", ["--json", "--index", "IVF8,Flat", "--target-recall", "0.9"], env: env)
        #expect(r.status == 0, "\(r.stderr)")
        let s = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as! [String: Any]
        #expect(s["count"] as? Int == 600 && s["factory"] as? String == "IVF8,Flat" && s["mode"] as? String == "full")
        let recall = try #require(s["recall"] as? [String: Any])
        #expect((recall["measured"] as? Double ?? 0) >= 0.9 && recall["met"] as? Bool == true)
        // Categories and stock in the store: recall under the default filters is measured too.
        let filtered = try #require(s["filtered_recall"] as? [String: Any], "\(r.stdout)")
        #expect((filtered["measured"] as? Double ?? 0) >= 0.9 && filtered["met"] as? Bool == true)
        #expect((s["search"] as? [String: Any])?["filtered_nprobe"] as? Int != nil)
        for f in ["image_index.faiss", "manifest.json", "id_map.tsv"] {
            #expect(FileManager.default.fileExists(atPath: dir.appendingPathComponent("faiss/\(f)").path))
        }

        let a = try tool("ewall", ["similar", "p0001", "--json", "--min-similarity", "0"], env: env)
        #expect(a.status == 0, "\(a.stderr)")
        let answer = try JSONSerialization.jsonObject(with: Data(a.stdout.utf8)) as! [String: Any]
        let results = try #require(answer["results"] as? [[String: Any]])
        #expect(results.count == 10)
        #expect(
            results.allSatisfy {
                $0["product_id"] as? String != "p0001" && $0["category"] as? String == answer["category"] as? String
            })
        #expect(results.allSatisfy { $0["in_stock"] as? Bool == true })
        #expect(
            results.allSatisfy { r in
                let d = r["distance"] as! Double, sim = r["similarity"] as! Double
                return abs(sim - 1 / (1 + d)) < 1e-9
            })
        let wide = try tool(
            "ewall",
            [
                "similar", "p0001", "--json", "--min-similarity", "0", "--any-category",
                "--include-out-of-stock", "--k", "40",
            ], env: env)
        let all =
            (try JSONSerialization.jsonObject(with: Data(wide.stdout.utf8)) as! [String: Any])["results"]
            as! [[String: Any]]
        #expect(all.count == 40 && all.contains { $0["in_stock"] as? Bool == false })
        let table = try tool("ewall", ["similar", "p0002", "--min-similarity", "0"], env: env)
        #expect(table.status == 0 && table.stdout.contains("similarity") && table.stdout.contains("p0"))

        let unknown = try tool("ewall", ["similar", "nope"], env: env)
        #expect(unknown.status == 1 && unknown.stderr.contains("unknown product nope"))
        let noIndex = try tool(
            "ewall", ["similar", "p0001", "--index", dir.appendingPathComponent("none").path], env: env)
        #expect(noIndex.status == 2 && noIndex.stderr.contains("run rebuild-faiss-index"))
    }

    @Test(
        "ewall similar --image: embedded by the service; PRODUCT_ID gives the category and is excluded; an unknown product exits 1; an index of another model exits 2"
    )
    func byImage() async throws {
        let card = try #require(try ModelCard.load(forModel: Fixtures.model))
        let photo = Fixtures.image("baseline_600x400.jpg")
        let (db, dir) = try await catalogue(
            key: ModelKey(modelID: card.modelID, preprocessing: "squash224"), dimension: 2048)
        defer { try? FileManager.default.removeItem(at: dir) }
        let env = ["EWALL_DB": db, "EWALL_INDEX": dir.appendingPathComponent("faiss").path]
        let built = try tool("rebuild-faiss-index", [], env: env)
        #expect(built.status == 0, "\(built.stderr)")
        let model = ["--model", Fixtures.model, "--batch-size", "1", "--threads", "1"]

        let a = try tool(
            "ewall", ["similar", "p0001", "--image", photo, "--json", "--min-similarity", "0", "--k", "5"] + model,
            env: env)
        #expect(a.status == 0, "\(a.stderr)")
        let answer = try JSONSerialization.jsonObject(with: Data(a.stdout.utf8)) as! [String: Any]
        let results = try #require(answer["results"] as? [[String: Any]])
        #expect(results.count == 5 && answer["category"] as? String != nil)
        #expect(
            results.allSatisfy {
                $0["product_id"] as? String != "p0001" && $0["category"] as? String == answer["category"] as? String
            })
        if !card.pretrained { #expect(a.stderr.contains("RANDOM-INIT")) }

        let unknown = try tool("ewall", ["similar", "nope", "--image", photo] + model, env: env)
        #expect(unknown.status == 1 && unknown.stderr.contains("unknown product nope"), "\(unknown.stderr)")
        let missing = try tool(
            "ewall", ["similar", "--image", dir.appendingPathComponent("none.jpg").path] + model, env: env)
        #expect(missing.status == 2 && missing.stderr.contains("cannot read"), "\(missing.stderr)")

        let (otherDB, otherDir) = try await catalogue()
        defer { try? FileManager.default.removeItem(at: otherDir) }
        let otherEnv = ["EWALL_DB": otherDB, "EWALL_INDEX": otherDir.appendingPathComponent("faiss").path]
        #expect(try tool("rebuild-faiss-index", [], env: otherEnv).status == 0)
        let mismatch = try tool("ewall", ["similar", "--image", photo, "--category", "cat0"] + model, env: otherEnv)
        #expect(mismatch.status == 2, "\(mismatch.stderr)")
        #expect(
            mismatch.stderr.contains("the index was built from model synthetic@cli, --model is \(card.modelID)"),
            "\(mismatch.stderr)")
    }

    @Test("A rebuild while another holds the lock exits 2 and says who holds it; the index stays as it was")
    func lockHeld() async throws {
        let (db, dir) = try await catalogue()
        defer { try? FileManager.default.removeItem(at: dir) }
        let folder = IndexFolder(path: dir.appendingPathComponent("faiss").path)
        let lock = try IndexLock(folder: folder)
        let r = try tool("rebuild-faiss-index", ["--db", db, "--out", folder.path])
        #expect(r.status == 2)
        #expect(r.stderr.contains("another rebuild") && r.stderr.contains("pid \(getpid())"), "\(r.stderr)")
        #expect(!folder.exists)
        withExtendedLifetime(lock) {}
    }

    @Test("--help documents the choices, the defaults and the exit codes")
    func help() throws {
        let r = try tool("rebuild-faiss-index", ["--help"])
        for s in [
            "--index", "--metric", "--target-recall", "--max-memory", "--incremental", "$EWALL_INDEX", "IVF-Flat",
            "Exit status",
        ] {
            #expect(r.stdout.contains(s), "\(s)")
        }
        let s = try tool("ewall", ["similar", "--help"])
        for f in ["--k", "--min-similarity", "--any-category", "--include-out-of-stock", "--image", "1/(1+d)"] {
            #expect(s.stdout.contains(f), "\(f)")
        }
    }
}
