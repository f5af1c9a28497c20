import EwallCore
import EwallStore
import EwallTestSupport
import Foundation
import Testing

/// `ewall-embed` against hostile manifests and a store that goes away: nothing is merged,
/// nothing is lost, and every failure says what broke.
@Suite("ewall-embed: hostile input and a store that goes away", .serialized)
struct HostileJobCLITests {
    static func postgresCount(_ db: String) async throws -> Int {
        try await EmbedJobCLITests.embedded(db)
    }

    @Test(
        "stored ids are the manifest's bytes; NUL, invalid UTF-8 and over-long ids are bad rows",
        arguments: StoreKind.allCases)
    func exactIDsThroughTheJob(_ kind: StoreKind) async throws {
        let image = try Fixtures.bytes(try Fixtures.photos()[0])
        let server = try TestHTTPServer { _ in .init(headers: [("Content-Type", "image/jpeg")], body: image) }
        defer { server.shutdown() }
        let good = [
            "구스다운-롱패딩_01", "👟🧥-2", "MixedCase-ID", "mixedcase-id", "with space",
            String(repeating: "가", count: 85) + "z",
        ]
        var lines: [[UInt8]] = [Array("product_id,image_url".utf8)]
        for (i, id) in good.enumerated() { lines.append(Array("\"\(id)\",\(server.url("/\(i).jpg"))".utf8)) }
        lines.append(Array("a".utf8) + [0] + Array("x,\(server.url("/x.jpg"))".utf8))
        lines.append(Array("a".utf8) + [0] + Array("y,\(server.url("/y.jpg"))".utf8))
        lines.append(Array("c".utf8) + [0xFF] + Array(",\(server.url("/c1.jpg"))".utf8))
        lines.append(Array("c".utf8) + [0xFE] + Array(",\(server.url("/c2.jpg"))".utf8))
        lines.append(Array((String(repeating: "x", count: 257) + ",\(server.url("/long.jpg"))").utf8))
        lines.append(Array("nul-url,\(server.url("/n.jpg"))".utf8) + [0] + Array(".png".utf8))
        let manifest = FileManager.default.temporaryDirectory.appendingPathComponent("hostile-\(UUID()).csv").path
        try Data(Array(lines.joined(separator: [10]))).write(to: URL(fileURLWithPath: manifest))
        let failures = manifest + ".failures.jsonl"
        let db = kind == .sqlite ? EmbedJobCLITests.freshDB() : try await PostgresServer.freshDatabase()

        let r = try JobProcess.run(["--manifest", manifest, "--db", db, "--json", "--failures", failures])
        #expect(r.status == 1, "\(r.stderr)")
        let counts = try #require(try EmbedJobCLITests.summary(r.stdout)["counts"] as? [String: Any])
        #expect(counts["embedded"] as? Int == good.count)
        #expect(counts["bad_rows"] as? Int == 6)
        let failed = try String(contentsOfFile: failures, encoding: .utf8).split(separator: "\n")
        #expect(failed.count == 6)
        #expect(failed.allSatisfy { $0.contains(#""class":"bad_row""#) })
        #expect(server.totalHits == good.count, "a refused row was fetched")

        let store = try await StoreLocation(parsing: db).open()
        let key = try #require(try await store.modelKeys().first?.key)
        let stored = try await store.embeddings(key: key, after: nil, limit: 100).map(\.embedding.productID)
        #expect(Set(stored.map { Array($0.utf8) }) == Set(good.map { Array($0.utf8) }))
        #expect(try await store.products(after: nil, limit: 100).count == good.count)
        await store.close()

        // A rerun skips all of them: nothing was stored under another id.
        let again = try JobProcess.run(["--manifest", manifest, "--db", db, "--json"])
        let counts2 = try #require(try EmbedJobCLITests.summary(again.stdout)["counts"] as? [String: Any])
        #expect(counts2["skipped"] as? Int == good.count && counts2["embedded"] as? Int == 0)
    }

    @Test("PostgreSQL stopped mid-job: the progress line says why while it waits, then exit 2 with the summary")
    func storeGoesAway() async throws {
        let (server, manifest) = try EmbedJobCLITests.catalogue(200, delay: .milliseconds(60))
        defer { server.shutdown() }
        let db = try await PostgresServer.freshDatabase()
        let job = try JobProcess([
            "--manifest", manifest, "--db", db, "--batch-size", "8", "--concurrency", "8",
            "--json", "--store-wait", "3", "--progress-interval", "0.3",
        ])
        while try await Self.postgresCount(db) < 8 {
            #expect(job.process.isRunning, "the job ended before the store could be stopped")
            if !job.process.isRunning { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        try PostgresServer.halt()
        let stopped = ContinuousClock.now
        let r = job.wait()
        let took = ContinuousClock.now - stopped
        try PostgresServer.resume()

        #expect(r.status == 2, "\(r.stderr.suffix(2000))")
        #expect(took < .seconds(25), "gave up after \(took)")
        #expect(r.stderr.contains("STORE NOT ANSWERING"), "\(r.stderr.suffix(2000))")
        #expect(
            r.stderr.contains("onnection refused") || r.stderr.contains("shutting down"), "\(r.stderr.suffix(2000))")
        #expect(r.stderr.contains("ewall: error: the store postgres://postgres@127.0.0.1"), "\(r.stderr.suffix(2000))")
        #expect(!r.stderr.contains("ircuit"), "the pool's internals leak into the message")
        let summary = try EmbedJobCLITests.summary(r.stdout)
        let error = try #require(summary["error"] as? [String: Any])
        #expect(error["code"] as? String == "store_unavailable")
        #expect((error["message"] as? String)?.contains("did not answer for") == true)
        let counts = try #require(summary["counts"] as? [String: Any])
        // What the summary counts as embedded is what the store kept.
        #expect(counts["embedded"] as? Int == (try await Self.postgresCount(db)))

        // The rerun completes the job.
        let rerun = try JobProcess.run(["--manifest", manifest, "--db", db, "--json", "--concurrency", "32"])
        #expect(rerun.status == 0, "\(rerun.stderr.suffix(2000))")
        #expect(try await Self.postgresCount(db) == 200)
    }

    @Test("PostgreSQL restarted mid-job: the job waits, goes on and completes, nothing doubled")
    func storeRestarts() async throws {
        let (server, manifest) = try EmbedJobCLITests.catalogue(160, delay: .milliseconds(60))
        defer { server.shutdown() }
        let db = try await PostgresServer.freshDatabase()
        let job = try JobProcess([
            "--manifest", manifest, "--db", db, "--batch-size", "8", "--concurrency", "8",
            "--json", "--store-wait", "60", "--progress-interval", "0.3",
        ])
        while try await Self.postgresCount(db) < 8 {
            #expect(job.process.isRunning, "the job ended before the store could be restarted")
            if !job.process.isRunning { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        try PostgresServer.halt()
        try await Task.sleep(for: .seconds(2))
        try PostgresServer.resume()
        let r = job.wait()
        #expect(r.status == 0, "\(r.stderr.suffix(2000))")
        let summary = try EmbedJobCLITests.summary(r.stdout)
        #expect(summary["error"] == nil)
        let counts = try #require(summary["counts"] as? [String: Any])
        #expect(counts["embedded"] as? Int == 160)
        let store = try await StoreLocation(parsing: db).open()
        let key = try #require(try await store.modelKeys().first?.key)
        let ids = try await store.embeddings(key: key, after: nil, limit: 1000).map(\.embedding.productID)
        #expect(ids.count == 160 && Set(ids).count == 160)
        #expect(try await store.ledgerCounts(key: key) == ["embedded": 160])
        await store.close()
    }

    @Test("a wrong database is reported at once in PostgreSQL's words, the password redacted")
    func wrongDatabase() async throws {
        let (server, manifest) = try EmbedJobCLITests.catalogue(1, delay: .zero)
        defer { server.shutdown() }
        let port = try PostgresServer.port()
        let start = ContinuousClock.now
        let r = try JobProcess.run([
            "--manifest", manifest, "--db", "postgres://postgres:hunter2@127.0.0.1:\(port)/nodb",
        ])
        #expect(ContinuousClock.now - start < .seconds(8))
        #expect(r.status == 2)
        #expect(r.stderr.contains(#"PostgreSQL refused: database "nodb" does not exist"#), "\(r.stderr)")
        #expect(!r.stderr.contains("hunter2"))
    }
}

@Suite("ewall-embed --job: the name rule")
struct JobNameCLITests {
    @Test(
        "An unprintable or over-long --job is refused before anything runs, saying which rule failed",
        arguments: [
            ("\u{1B}[31mred", "U+001B"), ("a\nb", "line feed"), ("", "is empty"),
            (String(repeating: "j", count: 10_000), "10000 bytes"),
        ])
    func refused(_ name: String, _ reason: String) throws {
        let r = try JobProcess.run(["--job", name, "--worker", "--db", "postgres://nobody@127.0.0.1:1/none"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("--job: ") && r.stderr.contains(reason), "\(r.stderr.prefix(300))")
        #expect(!r.stderr.contains("\u{1B}"), "the refused name was echoed raw")
        #expect(r.stderr.utf8.count < 2000, "the 10 KB name was echoed")
    }
}
