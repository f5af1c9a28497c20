import EwallCore
import EwallJob
import EwallStore
import EwallTestSupport
import Foundation
import Testing

@testable import EwallSync

@Suite("ewall sync as a process: killed at random, it loses nothing", .serialized)
struct SyncCLITests {
    /// Starts `ewall args` 10 times and kills each with SIGKILL after a random wait (`after`,
    /// in ms), while a thread of its own writes `statement(1)`, `statement(2)`, ... to the
    /// source, one a transaction, every `every` seconds; the writer has stopped on return.
    static func killTenTimes(
        _ ewall: URL, _ args: [String], after window: ClosedRange<Int>, source url: String,
        every interval: TimeInterval, statement: @escaping @Sendable (Int) -> String
    ) async throws {
        let writing = Locked(true)
        let writer = Thread {
            guard let c = try? SourceConnection(url: url, replication: false) else { return }
            var n = 0
            while writing.withLock({ $0 }) {
                n += 1
                _ = try? c.query(statement(n))
                Thread.sleep(forTimeInterval: interval)
            }
        }
        writer.start()
        for _ in 0..<10 {
            let p = try ProcessRunner.start(ewall, args)
            try await Task.sleep(for: .milliseconds(Int.random(in: window)))
            p.signal(SIGKILL)
            _ = p.wait()
            #expect(p.process.terminationReason == .uncaughtSignal)
        }
        writing.withLock { $0 = false }
        while writer.isExecuting { try await Task.sleep(for: .milliseconds(20)) }
    }

    @Test("SIGKILL 10 times during a stream of inserts, updates and deletes: --reconcile finds 0 differences")
    func killedTenTimes() async throws {
        let url = try await PostgresServer.freshDatabase()
        let source = try SourceConnection(url: url, replication: false)
        try source.query(
            """
            CREATE TABLE products (id bigserial PRIMARY KEY, title text, brand text, category text, price numeric(12,2),
              in_stock boolean, image_url text)
            """)
        try source.query(
            """
            INSERT INTO products (title, category, price, in_stock, image_url)
            SELECT 't' || g, 'c' || (g % 5), g, true, 'http://127.0.0.1:9/' || g || '.jpg' FROM generate_series(1, 200) g
            """)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sync-cli-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let args = [
            "sync", "--source", url, "--table", "public.products", "--db", "sqlite:\(dir.path)/store.sqlite",
            "--slot", "ewall_killed", "--no-embed",
        ]
        let ewall = try ProcessRunner.built("ewall")

        // One change per transaction, a mix of the three kinds.
        try await Self.killTenTimes(ewall, args, after: 300...1200, source: url, every: 0.01) { n in
            let id = Int.random(in: 1...260)
            switch n % 4 {
            case 0: return "UPDATE products SET in_stock = NOT in_stock, price = price + 1 WHERE id = \(id)"
            case 1: return "DELETE FROM products WHERE id = \(id)"
            case 2:
                return
                    "INSERT INTO products (title, category, price, in_stock, image_url) VALUES ('n\(n)', 'c1', 1, true, 'http://127.0.0.1:9/n\(n).jpg')"
            default: return "UPDATE products SET category = 'c\(n % 7)', title = 'u\(n)' WHERE id = \(id)"
            }
        }

        // Once more, to the end of the stream, then a clean stop.
        let last = try ProcessRunner.start(ewall, args)
        var caughtUp = false
        for _ in 0..<100 where !caughtUp {
            try await Task.sleep(for: .milliseconds(200))
            let s = try ProcessRunner.run(ewall, ["sync", "--status", "--json"] + Array(args.dropFirst()))
            caughtUp = s.stdout.contains("\"lag_bytes\":0") && s.stdout.contains("\"slot_active\":true")
        }
        last.signal(SIGTERM)
        #expect(last.wait().status == 0)
        #expect(caughtUp)

        let r = try ProcessRunner.run(ewall, ["sync", "--reconcile"] + Array(args.dropFirst()))
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stderr.contains("0 differences"), "\(r.stderr)")

        // --reconcile finds and repairs a difference made behind the sync's back.
        let store = try await SQLiteStore.open(path: "\(dir.path)/store.sqlite")
        let someID = try #require(try await store.syncedProductIDs(after: nil, limit: 1).first)
        _ = try await store.applyCatalogue(
            [.delete(productID: someID)],
            state: try #require(try await store.syncState(name: "ewall_killed")))
        await store.close()
        let found = try ProcessRunner.run(ewall, ["sync", "--reconcile", "--json"] + Array(args.dropFirst()))
        #expect(found.status == 1)
        #expect(found.stdout.contains("\"kind\":\"missing\"") && found.stdout.contains("\"product_id\":\"\(someID)\""))
        let repaired = try ProcessRunner.run(ewall, ["sync", "--reconcile", "--apply"] + Array(args.dropFirst()))
        #expect(repaired.status == 1 && repaired.stderr.contains("repaired"))
        let clean = try ProcessRunner.run(ewall, ["sync", "--reconcile"] + Array(args.dropFirst()))
        #expect(clean.status == 0, "\(clean.stdout)")
    }

    @Test(
        "SIGKILL 10 times while embedding a stream of inserts, image changes and deletes: every product ends with its current image's vector"
    )
    func killedTenTimesEmbedding() async throws {
        // Each product's image is one of 8 photos plus 4 bytes of its number after the JPEG's
        // end (ignored by decoders): distinct bytes, and a known vector per photo.
        let photos = try Fixtures.photos().prefix(8).map { try Fixtures.bytes($0) }
        let www = try TestHTTPServer { req in
            let n = Int(req.path.dropFirst(3).prefix(while: \.isNumber)) ?? 0
            var bytes = photos[n % photos.count]
            withUnsafeBytes(of: UInt32(n).littleEndian) { bytes += $0 }
            return .init(headers: [("Content-Type", "image/jpeg")], body: bytes)
        }
        defer { www.shutdown() }
        let url = try await PostgresServer.freshDatabase()
        let source = try SourceConnection(url: url, replication: false)
        try source.query(
            """
            CREATE TABLE products (id bigserial PRIMARY KEY, title text, brand text, category text, price numeric(12,2),
              in_stock boolean, image_url text)
            """)
        try source.query(
            """
            INSERT INTO products (title, category, price, in_stock, image_url)
            SELECT 't' || g, 'c' || (g % 5), g, true, '\(www.url("/p/"))' || g || '.jpg' FROM generate_series(1, 30) g
            """)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sync-kill-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let args = [
            "sync", "--source", url, "--table", "public.products", "--db", "sqlite:\(dir.path)/store.sqlite",
            "--slot", "ewall_killedembed", "--model", Fixtures.model,
        ]
        let ewall = try ProcessRunner.built("ewall")

        // Inserts, new images for existing products, deletes and stock flips; the kills come
        // past the model's load (about a second), in the stream and the embedding rounds.
        let base = www.url("/p/")
        try await Self.killTenTimes(ewall, args, after: 1500...3500, source: url, every: 0.1) { i in
            let (n, id) = (i + 100, Int.random(in: 1...40))
            switch n % 4 {
            case 0:
                return
                    "INSERT INTO products (title, category, price, in_stock, image_url) VALUES ('n\(n)', 'c1', 1, true, '\(base)\(n).jpg')"
            case 1: return "UPDATE products SET image_url = '\(base)\(n).jpg' WHERE id = \(id)"
            case 2: return "DELETE FROM products WHERE id = \(id)"
            default: return "UPDATE products SET in_stock = NOT in_stock WHERE id = \(id)"
            }
        }

        // Once more, until every current image has its vector, then a clean stop.
        let last = try ProcessRunner.start(ewall, args)
        let store = try await SQLiteStore.open(path: "\(dir.path)/store.sqlite")
        var key: ModelKey?
        var settled = false
        for _ in 0..<300 where !settled {
            try await Task.sleep(for: .milliseconds(200))
            let status = try ProcessRunner.run(ewall, ["sync", "--status", "--json"] + Array(args.dropFirst()))
            key = try await store.modelKeys().first?.key
            guard let key, status.stdout.contains("\"lag_bytes\":0") else { continue }
            settled = try await store.rowsToEmbed(key: key, limit: 10).isEmpty
        }
        last.signal(SIGTERM)
        #expect(last.wait().status == 0)
        #expect(settled, "images still without a vector after the last run")

        let r = try ProcessRunner.run(ewall, ["sync", "--reconcile"] + Array(args.dropFirst()))
        #expect(r.status == 0 && r.stderr.contains("0 differences"), "\(r.stdout)\n\(r.stderr)")

        // Every synced product's vector is its current image's: the photo its number picks.
        let reference = try ProcessRunner.run(
            ewall, ["embed", "--json", "--model", Fixtures.model] + Array(try Fixtures.photos().prefix(8)))
        let photoVectors = reference.stdout.split(separator: "\n").compactMap {
            ((try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any])?["vector"] as? [Double]
        }.map { $0.map(Float.init) }
        #expect(photoVectors.count == 8, "\(reference.stderr)")
        let ids = try await store.syncedProductIDs(after: nil, limit: 10_000)
        let rows = try await store.catalogueRows(productIDs: ids)
        let stored = try await store.vectors(productIDs: ids, key: try #require(key))
        let states = try await store.states(productIDs: ids, key: try #require(key))
        var wrong: [String] = []
        for id in ids {
            guard let image = rows[id]?.imageURL,
                let n = Int(image.split(separator: "/").last?.prefix(while: \.isNumber) ?? "")
            else { continue }
            let want = photoVectors[n % 8]
            guard states[id]?.embeddedURL == image, let got = stored[id],
                zip(got, want).map({ $0 * $1 }).reduce(0, +) > 0.999
            else {
                wrong.append("\(id) (\(image), stored for \(states[id]?.embeddedURL ?? "none"))")
                continue
            }
        }
        #expect(ids.count > 20)
        #expect(
            wrong.isEmpty, "\(wrong.count) of \(ids.count) without their current image's vector: \(wrong.prefix(5))")
        await store.close()
    }
}

@Suite("ewall sync --job: new images to a shared job's following workers", .serialized)
struct SyncJobCLITests {
    /// Polls `check` until it holds or `limit` passes.
    func eventually(within limit: Duration, _ check: () async throws -> Bool) async throws -> Bool {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline {
            if try await check() { return true }
            try await Task.sleep(for: .milliseconds(200))
        }
        return try await check()
    }

    @Test("A source refused at start ends ewall sync with its message and 64, also with embedding on (it hung)")
    func refusedWithEmbedding() async throws {
        let sourceURL = try await PostgresServer.freshDatabase()
        let source = try SourceConnection(url: sourceURL, replication: false)
        try source.query("CREATE TABLE products (id bigserial PRIMARY KEY, title text, image_url text)")
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sync-refused-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        // Under timeout(1): a hang is its status 124, not a test that never ends.
        let r = try ProcessRunner.run(
            path: "/usr/bin/timeout",
            [
                "60", try ProcessRunner.built("ewall").path, "sync", "--source", sourceURL, "--table", "products",
                "--db", "sqlite:\(dir.path)/s.sqlite", "--slot", "ewall_refusedembed", "--model", Fixtures.model,
            ])
        #expect(r.status == 64, "\(r.stderr)")
        #expect(r.stderr.contains("has no column brand") && r.stderr.contains("--map brand="), "\(r.stderr)")
    }

    @Test(
        "On a PostgreSQL store, each round is a run of the job; a --follow worker embeds run after run, and the vectors reach the feed"
    )
    func roundsToFollowingWorker() async throws {
        let photos = try Fixtures.photos().prefix(4).map { try Fixtures.bytes($0) }
        let www = try TestHTTPServer.misbehaving(images: photos, slowDelay: .seconds(1))
        defer { www.shutdown() }
        let sourceURL = try await PostgresServer.freshDatabase()
        let storeURL = try await PostgresServer.freshDatabase()
        let source = try SourceConnection(url: sourceURL, replication: false)
        try source.query(
            """
            CREATE TABLE products (id bigserial PRIMARY KEY, title text, brand text, category text, price numeric(12,2),
              in_stock boolean, image_url text)
            """)
        for i in 0..<3 {
            try source.query(
                "INSERT INTO products (title, category, in_stock, image_url) VALUES ('t\(i)', 'coat', true, '\(www.url(image: i))')"
            )
        }
        // The worker starts first: it waits for the job the sync has not submitted yet.
        let worker = try JobProcess(["--db", storeURL, "--job", "sync-images", "--worker", "--follow"])
        let sync = try ProcessRunner.start(
            try ProcessRunner.built("ewall"),
            [
                "sync", "--source", sourceURL, "--table", "public.products", "--db", storeURL, "--slot",
                "ewall_jobrounds", "--job", "sync-images", "--model", Fixtures.model,
            ])
        defer {
            if sync.isRunning { sync.signal(SIGKILL) }
            if worker.process.isRunning { worker.running.signal(SIGKILL) }
        }

        let store = try #require(try await StoreLocation(parsing: storeURL).open() as? any CatalogueStore)
        func vectorsInFeed() async throws -> Set<String> {
            Set(try await store.catalogueChanges(after: 0, limit: 1000).filter { $0.kind == .vector }.map(\.productID))
        }
        func syncLog() -> String { sync.stderr }
        let firstRun = try await eventually(within: .seconds(90)) { try await vectorsInFeed() == ["1", "2", "3"] }
        let afterFirst = try await vectorsInFeed()
        #expect(firstRun, "feed: \(afterFirst); sync: \(syncLog())")

        // A product arriving after that run ended is the next run, worked by the same worker.
        try source.query(
            "INSERT INTO products (title, category, in_stock, image_url) VALUES ('t3', 'down', true, '\(www.url(image: 3))')"
        )
        let secondRun = try await eventually(within: .seconds(60)) { try await vectorsInFeed().contains("4") }
        let afterSecond = try await vectorsInFeed()
        #expect(secondRun, "feed: \(afterSecond); sync: \(syncLog())")
        #expect(worker.process.isRunning, "a --follow worker waits for the next run instead of exiting")
        // Every run the sync submitted ends as done; the follower joined each (it is in the status).
        let queue = try await PostgresJobQueue.over(store)
        let runsDone = try await eventually(within: .seconds(10)) {
            let runs = try await queue.runs(keepDays: 1).filter { $0.job == "sync-images" }
            return runs.count >= 2 && runs.allSatisfy { $0.outcome == "done" && $0.finishedAt != nil }
        }
        let runs = try await queue.runs(keepDays: 1).map { ($0.runID, $0.outcome) }
        #expect(runsDone, "\(runs)")
        let workers = try await queue.status(job: "sync-images").workers
        #expect(workers.count == 1, "\(workers)")

        // The vectors are the photos' own: the worker fetched each product's current image.
        let key = try #require(try await store.modelKeys().first?.key)
        // The queue's commit wrote each entry with the vector's model key.
        let entries = try await store.catalogueChanges(after: 0, limit: 1000).filter { $0.kind == .vector }
        #expect(entries.count >= 4 && entries.allSatisfy { $0.key == key }, "\(entries)")
        let stored = try await store.vectors(productIDs: ["1", "4"], key: key)
        let direct = try ProcessRunner.run(
            try ProcessRunner.built("ewall"),
            ["embed", "--json", "--model", Fixtures.model, Fixtures.photos()[0], Fixtures.photos()[3]])
        let lines = direct.stdout.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        let expected = lines.compactMap { ($0["vector"] as? [Double])?.map(Float.init) }
        #expect(expected.count == 2, "\(direct.stderr)")
        for (id, want) in zip(["1", "4"], expected) {
            let got = try #require(stored[id])
            let cosine = zip(got, want).map { $0 * $1 }.reduce(0, +)
            #expect(cosine > 0.999, "\(id): cosine \(cosine) to the photo's own vector")
        }

        sync.signal(SIGTERM)
        #expect(sync.wait().status == 0, "\(syncLog())")
        worker.running.signal(SIGTERM)
        let w = worker.wait()
        #expect(w.status == 0 || w.status == 130 || w.status == 143, "\(w.stderr)")
        await store.close()
    }
}
