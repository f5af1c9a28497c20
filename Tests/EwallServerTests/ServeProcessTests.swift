import EwallML
import EwallTestSupport
import Foundation
import Testing

/// The `ewall-serve` executable itself: flags, SIGHUP reload, graceful shutdown on SIGTERM.
@Suite("ewall-serve process", .serialized)
struct ServeProcessTests {
    /// A running `ewall-serve`, its port read from the "listening on" line.
    final class Served: Sendable {
        let running: RunningProcess
        let port: Int

        init(_ args: [String]) throws {
            running = try ProcessRunner.start(try ProcessRunner.built("ewall-serve"), args)
            let deadline = ContinuousClock.now + .seconds(60)
            while running.isRunning && ContinuousClock.now < deadline {
                let seen = running.stdout
                if let r = seen.range(of: #"listening on http://127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
                    port = Int(seen[r].split(separator: ":").last!)!
                    return
                }
                Thread.sleep(forTimeInterval: 0.05)
            }
            running.signal(SIGKILL)
            let r = running.wait()
            throw Fixtures.Missing(description: "ewall-serve did not start: \(r.stdout) \(r.stderr)")
        }

        var process: Process { running.process }
        var base: String { "http://127.0.0.1:\(port)" }

        func signal(_ s: Int32) { running.signal(s) }

        func waitForExit() -> Int32 { running.wait().status }
    }

    static func args(_ dir: URL) -> [String] {
        [
            "--port", "0", "--db", "sqlite:\(dir.path)/ewall.sqlite", "--index",
            dir.appendingPathComponent("faiss").path,
            "--model", Fixtures.model, "--rules", Fixtures.path("data/category_rules.json"), "--watch-seconds", "0",
        ]
    }

    @Test("--help names every flag the issue asks for")
    func help() throws {
        let r = try ProcessRunner.run(try ProcessRunner.built("ewall-serve"), ["--help"])
        let text = r.stdout
        #expect(r.status == 0)
        for flag in [
            "--host", "--port", "--db", "--index", "--model", "--allow-host", "--max-batch-wait-ms", "--max-queue",
            "--max-body-bytes", "--max-pixels", "--request-timeout", "--watch-seconds", "SIGHUP", "random-init",
            "--header-timeout", "--idle-timeout", "--max-connections", "(default: 10.0)", "(default: 60.0)",
            "(default: 4096)", "405", "%2F",
        ] {
            #expect(text.contains(flag), "--help lacks \(flag)")
        }
    }

    @Test("SIGHUP reloads a rebuilt index; SIGTERM finishes the requests in flight, then exits 0")
    func signals() async throws {
        let cat = try await PhotoCatalogue.shared.value
        let dir = try cat.copy()
        let served = try Served(Self.args(dir))
        defer { if served.process.isRunning { served.process.terminate() } }
        #expect(try await HTTP.call(.GET, "\(served.base)/readyz").json["index_count"] as? Int == 20)

        // Rebuild with two more products, then SIGHUP.
        let store = try await StoreLocation(parsing: "sqlite:\(dir.path)/ewall.sqlite").open()
        try await store.upsertProducts(
            [Product(id: "p90", category: "down"), Product(id: "p91", category: "down")], source: .manifest)
        try await store.write(
            WriteBatch(
                embeddings: ["p90", "p91"].map {
                    StoredEmbedding(productID: $0, imageURL: "file:///x.jpg", key: cat.key, vector: cat.vectors["p00"]!)
                }))
        _ = try await IndexBuilder.build(
            store: store,
            options: IndexBuildOptions(
                folder: IndexFolder(path: dir.appendingPathComponent("faiss").path), threads: 1))
        await store.close()
        #expect(
            try await HTTP.call(.GET, "\(served.base)/readyz").json["index_count"] as? Int == 20, "no watch: not yet")
        served.signal(SIGHUP)
        var count = 0
        for _ in 0..<50 where count != 22 {
            try await Task.sleep(for: .milliseconds(100))
            count = try await HTTP.call(.GET, "\(served.base)/readyz").json["index_count"] as? Int ?? 0
        }
        #expect(count == 22)

        // Embeds in flight (each waits for a forward pass), then SIGTERM.
        let image = try Fixtures.bytes(cat.photos[3])
        let inFlight = (0..<12).map { _ in
            Task { try await HTTP.call(.POST, "\(served.base)/api/embeddings", body: image, contentType: "image/jpeg") }
        }
        try await Task.sleep(for: .milliseconds(150))
        served.signal(SIGTERM)
        for t in inFlight {
            let r = try await t.value
            #expect(r.status == 200, "a request in flight at SIGTERM got \(r.status): \(r.text.prefix(200))")
        }
        #expect(served.waitForExit() == 0)
        // And nothing listens any more.
        await #expect(throws: (any Error).self) {
            _ = try await HTTP.call(.GET, "\(served.base)/healthz", timeout: .seconds(2))
        }
    }
}
