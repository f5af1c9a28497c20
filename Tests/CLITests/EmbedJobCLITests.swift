import EwallCore
import EwallStore
import EwallTestSupport
import Foundation
import Testing

/// A built executable next to this test bundle (or in .build/debug).
func executable(_ name: String) throws -> URL { try ProcessRunner.built(name) }

/// `ewall-embed` as a child process (``ProcessRunner/start(_:_:prefix:environment:replacing:)``),
/// with the test model unless the arguments name one.
final class JobProcess {
    let running: RunningProcess
    var process: Process { running.process }

    /// `prefix` runs it through another program first (`ip netns exec NS` for a test host).
    init(_ args: [String], prefix: [String] = []) throws {
        let full = args.contains("--model") || args.contains("--help") ? args : args + ["--model", Fixtures.model]
        running = try ProcessRunner.start(try executable("ewall-embed"), full, prefix: prefix)
    }

    func wait() -> (status: Int32, stdout: String, stderr: String) {
        let r = running.wait()
        return (r.status, r.stdout, r.stderr)
    }

    /// Waits at most `limit`; a process still running then is killed (SIGKILL), so a hang
    /// fails its test instead of holding the suite.
    func wait(within limit: Duration) -> (status: Int32, stdout: String, stderr: String, timedOut: Bool) {
        let (r, timedOut) = running.wait(within: limit)
        return (r.status, r.stdout, r.stderr, timedOut)
    }

    static func run(_ args: [String]) throws -> (status: Int32, stdout: String, stderr: String) {
        try JobProcess(args).wait()
    }
}

@Suite("ewall-embed, the command", .serialized)
struct EmbedJobCLITests {
    /// `n` rows over 8 sample photos, served with a small delay so a job takes a few seconds.
    static func catalogue(_ n: Int, delay: Duration = .milliseconds(40)) throws -> (TestHTTPServer, String) {
        let images = try Fixtures.photos().prefix(8).map { try Fixtures.bytes($0) }
        let server = try TestHTTPServer { req in
            let i = Int(req.path.dropFirst(5).prefix(while: \.isNumber)) ?? 0
            return .init(headers: [("Content-Type", "image/jpeg")], body: images[i % images.count], delay: delay)
        }
        let manifest = FileManager.default.temporaryDirectory.appendingPathComponent("m-\(UUID()).csv").path
        try (["product_id,image_url"] + (0..<n).map { "p\($0),\(server.url("/img/\($0).jpg"))" })
            .joined(separator: "\n").write(toFile: manifest, atomically: true, encoding: .utf8)
        return (server, manifest)
    }

    static func freshDB() -> String {
        "sqlite:" + FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID()).sqlite").path
    }

    static func embedded(_ db: String) async throws -> Int {
        let store = try await StoreLocation(parsing: db).open()
        defer { Task { await store.close() } }
        return try await store.modelKeys().first?.count ?? 0
    }

    static func summary(_ stdout: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(stdout.utf8)) as? [String: Any])
    }

    @Test("kill -9 in the middle of a job loses only work in flight; a rerun completes it without duplicates")
    func killNineAndResume() async throws {
        let (server, manifest) = try Self.catalogue(160)
        defer { server.shutdown() }
        let db = Self.freshDB()
        let job = try JobProcess(["--manifest", manifest, "--db", db, "--batch-size", "8", "--concurrency", "8"])
        while try await Self.embedded(db) < 16 {
            #expect(job.process.isRunning, "the job ended before it could be killed")
            if !job.process.isRunning { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        kill(job.process.processIdentifier, SIGKILL)
        let killed = job.wait()
        #expect(killed.status == SIGKILL)
        let before = try await Self.embedded(db)
        #expect(before >= 16 && before < 160)

        let rerun = try JobProcess.run(["--manifest", manifest, "--db", db, "--json"])
        #expect(rerun.status == 0, "\(rerun.stderr)")
        let counts = try #require(try Self.summary(rerun.stdout)["counts"] as? [String: Any])
        #expect(counts["skipped"] as? Int == before)
        #expect(counts["embedded"] as? Int == 160 - before)
        #expect(try await Self.embedded(db) == 160)

        // Every product exactly once, every ledger row "embedded".
        let store = try await StoreLocation(parsing: db).open()
        let key = try #require(try await store.modelKeys().first?.key)
        #expect(try await store.ledgerCounts(key: key) == ["embedded": 160])
        let ids = try await store.embeddings(key: key, after: nil, limit: 1000).map(\.embedding.productID)
        #expect(Set(ids).count == 160 && ids.count == 160)
        await store.close()
    }

    @Test("SIGINT finishes and writes the current batch, then exits 130 with an interrupted summary")
    func sigintIsGraceful() async throws {
        let (server, manifest) = try Self.catalogue(400, delay: .milliseconds(100))
        defer { server.shutdown() }
        let db = Self.freshDB()
        let job = try JobProcess([
            "--manifest", manifest, "--db", db, "--batch-size", "8", "--concurrency", "8", "--json",
        ])
        while try await Self.embedded(db) < 8 {
            if !job.process.isRunning { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        kill(job.process.processIdentifier, SIGINT)
        let r = job.wait()
        #expect(r.status == 130, "\(r.stderr)")
        #expect(r.stderr.contains("SIGINT: finishing the current batch"))
        let summary = try Self.summary(r.stdout)
        #expect(summary["interrupted"] as? Bool == true)
        let counts = try #require(summary["counts"] as? [String: Any])
        let stored = try await Self.embedded(db)
        #expect(counts["embedded"] as? Int == stored)
        #expect(counts["failed"] as? Int == 0)
        #expect(stored < 400)
    }

    @Test("exit 0 when all is embedded, 1 with failures (also when skipped as failed earlier), and a failures file")
    func exitCodesAndFailuresFile() async throws {
        let (server, good) = try Self.catalogue(3, delay: .zero)
        defer { server.shutdown() }
        let db = Self.freshDB()
        let ok = try JobProcess.run(["--manifest", good, "--db", db])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(ok.stdout.contains("embedded 3"))
        #expect(ok.stdout.contains("RANDOM-INIT MODEL"))

        let manifest = FileManager.default.temporaryDirectory.appendingPathComponent("m-\(UUID()).jsonl").path
        try """
        {"product_id": "a", "image_url": "\(server.url("/img/1.jpg"))"}
        {"product_id": "b", "image_url": "\(Fixtures.image("truncated_half.jpg"))"}
        {"product_id": "", "image_url": "\(server.url("/img/2.jpg"))"}
        """.write(toFile: manifest, atomically: true, encoding: .utf8)
        let failures = FileManager.default.temporaryDirectory.appendingPathComponent("f-\(UUID()).jsonl").path
        let some = try JobProcess.run(["--manifest", manifest, "--db", db, "--failures", failures])
        #expect(some.status == 1)
        let lines = try String(contentsOfFile: failures, encoding: .utf8).split(separator: "\n")
            .map { try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        #expect(lines.count == 2)
        let truncated = try #require(lines.first { $0["product_id"] as? String == "b" })
        #expect(truncated["class"] as? String == "truncated" && truncated["stage"] as? String == "decode")
        let bad = try #require(lines.first { $0["class"] as? String == "bad_row" })
        #expect(bad["line"] as? Int == 3)

        let again = try JobProcess.run(["--manifest", manifest, "--db", db, "--json"])
        #expect(again.status == 1)
        let counts = try #require(try Self.summary(again.stdout)["counts"] as? [String: Any])
        #expect(
            counts["skipped"] as? Int == 1 && counts["skipped_failed"] as? Int == 1 && counts["bad_rows"] as? Int == 1)
    }

    @Test("systemic errors exit 2 with a message that says what to do")
    func systemicErrors() throws {
        let (server, manifest) = try Self.catalogue(1, delay: .zero)
        defer { server.shutdown() }
        let missing = try JobProcess.run(["--manifest", "/nonexistent/m.csv", "--db", Self.freshDB()])
        #expect(missing.status == 2)
        #expect(missing.stderr.contains("cannot read the manifest /nonexistent/m.csv"))
        let port = PostgresServer.freePort()
        let pg = try JobProcess.run(["--manifest", manifest, "--db", "postgres://u:secret@127.0.0.1:\(port)/d"])
        #expect(pg.status == 2)
        #expect(pg.stderr.contains("127.0.0.1:\(port)") && !pg.stderr.contains("secret"))
        let model = try JobProcess.run(["--manifest", manifest, "--db", Self.freshDB(), "--model", "/nonexistent.pt"])
        #expect(model.status == 2)
        #expect(model.stderr.contains("make model"))
    }

    @Test("--help documents the flags and the exit status")
    func help() throws {
        let r = try JobProcess.run(["--help"])
        for text in [
            "--manifest", "--db", "--per-host", "--retry-failed", "--force", "--failures", "--json", "Exit status",
            "$EWALL_DB", "--job", "--worker", "--chunk-size", "--lease-seconds", "--heartbeat-seconds", "--store-wait",
            "--max-id-bytes", "--item-deadline",
        ] {
            #expect(r.stdout.contains(text), "\(text) missing from --help")
        }
    }
}

@Suite("ewall import / export", .serialized)
struct TransferCLITests {
    @Test("a Django-shaped seed imports, exports back identically, and keys are never mixed")
    func roundTrip() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("transfer-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let db = "sqlite:\(dir.path)/e.sqlite"
        var lines: [String] = []
        for i in 0..<5 {
            let v = (0..<2048).map { Double(($0 * 7 + i) % 13) / 13 }
            let obj: [String: Any] = [
                "product_id": "p\(i)", "image_url": "https://cdn/p\(i).jpg", "model_version": "django-resnet50-v1",
                "embedding_vector": v, "title": "패딩 \(i)", "category": "down", "in_stock": i % 2 == 0,
            ]
            lines.append(
                String(decoding: try JSONSerialization.data(withJSONObject: obj, options: [.sortedKeys]), as: UTF8.self)
            )
        }
        lines.append(
            #"{"product_id": "bad", "image_url": "u", "model_version": "django-resnet50-v1", "embedding_vector": [1, "x"]}"#
        )
        try lines.joined(separator: "\n").write(
            toFile: dir.appendingPathComponent("seed.jsonl").path, atomically: true, encoding: .utf8)

        let imported = try ewall(["import", "--seed-jsonl", dir.appendingPathComponent("seed.jsonl").path, "--db", db])
        #expect(imported.status == 1)
        #expect(imported.stdout.contains("5 vectors"))
        #expect(imported.stderr.contains("line 6"))

        let out = dir.appendingPathComponent("out.jsonl").path
        let exported = try ewall(["export", "--jsonl", out, "--db", db])
        #expect(exported.status == 0, "\(exported.stderr)")
        let rows = try String(contentsOfFile: out, encoding: .utf8).split(separator: "\n")
            .map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(rows.map { $0["product_id"] as! String } == ["p0", "p1", "p2", "p3", "p4"])
        let v2 = try #require(rows[2]["embedding_vector"] as? [Double])
        let expected: [Float] = (0..<2048).map { (j: Int) -> Float in Float(Double((j * 7 + 2) % 13) / 13) }
        let got: [Float] = v2.map { Float($0) }
        #expect(got == expected)
        #expect(rows[1]["in_stock"] as? Bool == false && rows[1]["title"] as? String == "패딩 1")
        #expect(rows[0]["preprocessing"] as? String == "squash224")

        let npy = dir.appendingPathComponent("v.npy").path
        #expect(try ewall(["export", "--npy", npy, "--db", db]).status == 0)
        let (shape, _) = try Npy.decode(Data(contentsOf: URL(fileURLWithPath: npy)))
        #expect(shape == [5, 2048])
        #expect(try String(contentsOfFile: npy + ".ids.txt", encoding: .utf8) == "p0\np1\np2\np3\np4\n")

        // Another model's vectors in the same store: export must be told which.
        let other = dir.appendingPathComponent("other.jsonl").path
        try String(contentsOfFile: out, encoding: .utf8).replacingOccurrences(
            of: "django-resnet50-v1", with: "django-resnet50-v2"
        )
        .write(toFile: other, atomically: true, encoding: .utf8)
        #expect(try ewall(["import", "--seed-jsonl", other, "--db", db]).status == 0)
        let mixed = try ewall(["export", "--jsonl", out, "--db", db])
        #expect(mixed.status == 2)
        #expect(mixed.stderr.contains("never mixed"))
        #expect(try ewall(["export", "--jsonl", out, "--db", db, "--model-id", "django-resnet50-v2"]).status == 0)
    }
}
