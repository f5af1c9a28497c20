import EwallML
import EwallServer
import EwallTestSupport
import Foundation
import Testing

/// Batching, overload, time limits, URL refusals and index reload under load, each against
/// its own server on a loopback port.
@Suite("ewall-serve under load", .serialized)
struct ServerBehaviourTests {
    @Test("Concurrent embeds are coalesced into batches of at most 32, and each caller gets its own vector")
    func batching() async throws {
        let cat = try await PhotoCatalogue.shared.value
        let s = try await RunningServer.start { config, _ in config.limits.maxBatchWait = .milliseconds(50) }
        defer { Task { try? await s.stop() } }
        let n = 48
        let images = try (0..<n).map { try Fixtures.bytes(cat.photos[$0 % PhotoCatalogue.count]) }
        let replies = try await withThrowingTaskGroup(of: (Int, Reply).self) { group in
            for i in 0..<n {
                group.addTask {
                    (
                        i,
                        try await HTTP.call(
                            .POST, "\(s.base)/api/embeddings", body: images[i], contentType: "image/jpeg")
                    )
                }
            }
            var out: [Int: Reply] = [:]
            for try await (i, r) in group { out[i] = r }
            return out
        }
        for i in 0..<n {
            let r = try #require(replies[i])
            #expect(r.status == 200)
            let v = try #require(r.json["vector"] as? [Double]).map(Float.init)
            #expect(
                VectorMath.cosine(v, cat.vectors[PhotoCatalogue.pid(i % PhotoCatalogue.count)]!) > 0.99999,
                "request \(i)")
        }
        let b = s.service.batching
        #expect(b.images == n)
        #expect(b.batches < n / 4, "\(b.batches) batches for \(n) concurrent images: \(b.sizes)")
        #expect(b.sizes.keys.allSatisfy { $0 <= 32 })
        #expect(b.meanBatchSize >= 4)
        #expect(b.queueDepth == 0)
    }

    @Test("Overload: beyond the queue limit, embeds answer 503 overloaded with Retry-After; the rest succeed")
    func overload() async throws {
        let cat = try await PhotoCatalogue.shared.value
        let s = try await RunningServer.start { config, _ in
            config.limits.maxBatchSize = 1
            config.limits.maxQueuedImages = 2
        }
        defer { Task { try? await s.stop() } }
        let image = try Fixtures.bytes(cat.photos[0])
        let replies = try await withThrowingTaskGroup(of: Reply.self) { group in
            for _ in 0..<16 {
                group.addTask {
                    try await HTTP.call(.POST, "\(s.base)/api/embeddings", body: image, contentType: "image/jpeg")
                }
            }
            return try await group.reduce(into: [Reply]()) { $0.append($1) }
        }
        let refused = replies.filter { $0.status == 503 }
        #expect(!refused.isEmpty)
        #expect(replies.allSatisfy { $0.status == 200 || $0.status == 503 })
        for r in refused {
            #expect(r.errorCode == "overloaded")
            #expect(Int(r.header("retry-after") ?? "") ?? 0 >= 1)
        }
        #expect(s.service.batching.refused == refused.count)
        #expect(s.service.batching.images == replies.count - refused.count)
    }

    @Test("Request time limit: a slow image URL answers 503 timeout, and the server goes on")
    func timeout() async throws {
        let slow = try TestHTTPServer { _ in .init(body: [1, 2, 3], delay: .seconds(4)) }
        defer { slow.shutdown() }
        let s = try await RunningServer.start { config, server in
            config.urlPolicy = AddressPolicy(allowHosts: ["127.0.0.1"])
            server.requestTimeout = .milliseconds(300)
        }
        defer { Task { try? await s.stop() } }
        let start = ContinuousClock.now
        let r = try await HTTP.call(.POST, "\(s.base)/api/embeddings", json: ["image_url": slow.url("/slow.jpg")])
        #expect(r.status == 503)
        #expect(r.errorCode == "timeout")
        #expect(ContinuousClock.now - start < .seconds(3))
        #expect(try await HTTP.call(.GET, "\(s.base)/api/recommendations/similar/p01").status == 200)
    }

    @Test("SSRF through the API: loopback, metadata and file URLs answer 422 blocked_url without a request")
    func ssrf() async throws {
        let target = try TestHTTPServer { _ in .init(body: Array("internal".utf8)) }
        defer { target.shutdown() }
        let s = try await RouteTests.server.value
        for url in [
            target.url("/admin"), "http://localhost:\(target.port)/x", "http://169.254.169.254/latest/meta-data/iam/",
            "http://[::1]:\(target.port)/y", "file:///etc/passwd", "ftp://example.com/a.jpg",
        ] {
            for path in ["/api/embeddings", "/api/recommendations/similar", "/api/recommendations/classify"] {
                let r = try await HTTP.call(.POST, s.base + path, json: ["image_url": url, "title": "x"])
                #expect(r.status == 422, "\(path) \(url): \(r.status)")
                #expect(r.errorCode == "blocked_url", "\(path) \(url): \(r.text)")
            }
        }
        #expect(target.hits("/admin") + target.hits("/x") + target.hits("/y") == 0)
    }

    @Test("Index hot reload under load: rebuilds picked up by the file watch and the admin route, zero failed requests")
    func reloadUnderLoad() async throws {
        let cat = try await PhotoCatalogue.shared.value
        let dir = try cat.copy()
        let s = try await RunningServer.start(directory: dir) { config, _ in
            config.indexWatchInterval = .milliseconds(200)
        }
        defer { Task { try? await s.stop() } }
        let store = try await StoreLocation(parsing: "sqlite:\(dir.path)/ewall.sqlite").open()
        defer { Task { await store.close() } }
        let folder = IndexFolder(path: dir.appendingPathComponent("faiss").path)

        /// Adds `ids` (copies of p01's vector, category coat, in stock) and rebuilds the index.
        func addAndRebuild(_ ids: [String]) async throws {
            try await store.upsertProducts(
                ids.map { Product(id: $0, title: "new \($0)", category: "coat", inStock: true) }, source: .manifest)
            try await store.write(
                WriteBatch(
                    embeddings: ids.map {
                        StoredEmbedding(
                            productID: $0, imageURL: "file:///\($0).jpg", key: cat.key, vector: cat.vectors["p01"]!)
                    }))
            _ = try await IndexBuilder.build(store: store, options: IndexBuildOptions(folder: folder, threads: 1))
        }

        let stop = Flag()
        let load = Task { () -> [Int: Int] in
            try await withThrowingTaskGroup(of: [Int: Int].self) { group in
                for worker in 0..<6 {
                    group.addTask {
                        var statuses: [Int: Int] = [:]
                        var i = worker
                        while !stop.isSet {
                            let r = try await HTTP.call(
                                .GET,
                                "\(s.base)/api/recommendations/similar/\(PhotoCatalogue.pid(i % 20))?min_similarity=0")
                            statuses[r.status, default: 0] += 1
                            i += 1
                        }
                        return statuses
                    }
                }
                return try await group.reduce(into: [:]) { all, part in all.merge(part, uniquingKeysWith: +) }
            }
        }
        try await Task.sleep(for: .milliseconds(300))
        // 1: rebuild; the file watch swaps the new index in.
        try await addAndRebuild((20..<28).map { PhotoCatalogue.pid($0) })
        var count = 0
        for _ in 0..<50 where count != 28 {
            try await Task.sleep(for: .milliseconds(100))
            count = try await HTTP.call(.GET, "\(s.base)/readyz").json["index_count"] as? Int ?? 0
        }
        #expect(count == 28, "the watch did not pick up the new index")
        // 2: rebuild; the admin route (loopback) swaps it in at once.
        try await addAndRebuild(["p28", "p29"])
        let reload = try await HTTP.call(.POST, "\(s.base)/admin/reload-index")
        #expect(reload.status == 200)
        #expect(reload.json["count"] as? Int == 30)
        try await Task.sleep(for: .milliseconds(300))
        stop.set()
        let statuses = try await load.value
        #expect(statuses.keys.sorted() == [200], "statuses under reload: \(statuses)")
        #expect(statuses[200, default: 0] > 50)
        // The new products are answered from the new index.
        let fresh = try await HTTP.call(.GET, "\(s.base)/api/recommendations/similar/p29?min_similarity=0")
        #expect(fresh.status == 200)
        let ids = (fresh.json["results"] as? [[String: Any]])?.compactMap { $0["product_id"] as? String } ?? []
        #expect(ids.contains("p28") && !ids.contains("p29"))
        #expect(s.service.indexStatus.count == 30)
    }

    @Test("Admin routes answer loopback callers only")
    func adminLoopbackOnly() async throws {
        // The check itself, for the addresses a non-loopback caller would have.
        let s = try await RouteTests.server.value
        #expect(try await HTTP.call(.POST, "\(s.base)/admin/reload-index").status == 200)
        // From another interface of this machine, when it has one, the same route is forbidden.
        guard let address = Self.nonLoopbackIPv4() else { return }
        let open = try await RunningServer.start { _, server in server.host = "0.0.0.0" }
        defer { Task { try? await open.stop() } }
        let r = try await HTTP.call(.POST, "http://\(address):\(open.port)/admin/reload-index")
        #expect(r.status == 403)
        #expect(r.errorCode == "forbidden")
        #expect(try await HTTP.call(.GET, "http://\(address):\(open.port)/healthz").status == 200)
    }

    static func nonLoopbackIPv4() -> String? {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0, let first = list else { return nil }
        defer { freeifaddrs(first) }
        var p: UnsafeMutablePointer<ifaddrs>? = first
        while let a = p {
            if let sa = a.pointee.ifa_addr, sa.pointee.sa_family == sa_family_t(AF_INET) {
                var addr = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                var buf = [CChar](repeating: 0, count: 16)
                inet_ntop(AF_INET, &addr, &buf, 16)
                let s = String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                if !s.hasPrefix("127.") { return s }
            }
            p = a.pointee.ifa_next
        }
        return nil
    }
}

/// A flag set once, read from many tasks.
final class Flag: Sendable {
    private let value = Locked(false)
    var isSet: Bool { value.withLock { $0 } }
    func set() { value.withLock { $0 = true } }
}
