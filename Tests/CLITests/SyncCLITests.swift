import EwallCore
import EwallStore
import EwallTestSupport
import Foundation
import Testing

@testable import EwallSync

@Suite("ewall sync as a process: killed at random, it loses nothing", .serialized)
struct SyncCLITests {
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

        // A writer: one change per transaction, a mix of the three kinds, until told to stop.
        let writing = Locked(true)
        let writer = Thread {
            guard let c = try? SourceConnection(url: url, replication: false) else { return }
            var n = 0
            while writing.withLock({ $0 }) {
                n += 1
                let id = Int.random(in: 1...260)
                switch n % 4 {
                case 0:
                    _ = try? c.query("UPDATE products SET in_stock = NOT in_stock, price = price + 1 WHERE id = \(id)")
                case 1: _ = try? c.query("DELETE FROM products WHERE id = \(id)")
                case 2:
                    _ = try? c.query(
                        "INSERT INTO products (title, category, price, in_stock, image_url) VALUES ('n\(n)', 'c1', 1, true, 'http://127.0.0.1:9/n\(n).jpg')"
                    )
                default:
                    _ = try? c.query("UPDATE products SET category = 'c\(n % 7)', title = 'u\(n)' WHERE id = \(id)")
                }
                Thread.sleep(forTimeInterval: 0.01)
            }
        }
        writer.start()
        for _ in 0..<10 {
            let p = Process()
            p.executableURL = ewall
            p.environment = ProcessRunner.childEnvironment
            p.arguments = args
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            try await Task.sleep(for: .milliseconds(Int.random(in: 300...1200)))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            #expect(p.terminationReason == .uncaughtSignal)
        }
        writing.withLock { $0 = false }
        while writer.isExecuting { try await Task.sleep(for: .milliseconds(20)) }

        // Once more, to the end of the stream, then a clean stop.
        let last = Process()
        last.executableURL = ewall
        last.environment = ProcessRunner.childEnvironment
        last.arguments = args
        last.standardOutput = FileHandle.nullDevice
        last.standardError = FileHandle.nullDevice
        try last.run()
        var caughtUp = false
        for _ in 0..<100 where !caughtUp {
            try await Task.sleep(for: .milliseconds(200))
            let s = try ProcessRunner.run(ewall, ["sync", "--status", "--json"] + Array(args.dropFirst()))
            caughtUp = s.stdout.contains("\"lag_bytes\":0") && s.stdout.contains("\"slot_active\":true")
        }
        kill(last.processIdentifier, SIGTERM)
        last.waitUntilExit()
        #expect(last.terminationStatus == 0)
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
}
