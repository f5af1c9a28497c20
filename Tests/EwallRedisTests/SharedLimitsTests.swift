import EwallCore
import EwallFetch
import EwallRedis
import EwallTestSupport
import Foundation
import Testing

@Suite(
    "Fetch limits and job status shared through Redis", .serialized,
    .enabled(if: RedisServer.available, "needs Debian's redis-server (make deps)"))
struct SharedLimitsTests {
    /// A worker as another process would be: its own Redis connections, its own fetcher.
    static func worker(_ redis: RedisServer?, perHost: Int) throws -> ImageFetcher {
        var config = FetchConfiguration(
            perHostLimit: perHost, requestTimeout: .seconds(10), maxAttempts: 3,
            backoffBase: .milliseconds(10), backoffMax: .milliseconds(20))
        if let redis { config.share(through: RedisClient(location: try RedisLocation(parsing: redis.url()))) }
        return ImageFetcher(configuration: config)
    }

    static func fetchAll(_ fetchers: [ImageFetcher], urls: [String]) async -> Int {
        await withTaskGroup(of: Bool.self) { group in
            for f in fetchers {
                for u in urls { group.addTask { if case .success = await f.fetch(u) { true } else { false } } }
            }
            var ok = 0
            for await r in group where r { ok += 1 }
            return ok
        }
    }

    @Test("three workers with a per-host limit of 4: the server never sees more than 4 in flight (without Redis: 12)")
    func perHostLimitAcrossWorkers() async throws {
        let redis = try RedisServer()
        let image = TestHTTPServer.Response(
            headers: [("Content-Type", "image/jpeg")], body: Array(repeating: 7, count: 2000),
            delay: .milliseconds(40))
        let urls = (0..<16).map { "/img/\($0).jpg" }

        let shared = try TestHTTPServer { _ in image }
        defer { shared.shutdown() }
        let workers = try (0..<3).map { _ in try Self.worker(redis, perHost: 4) }
        let ok = await Self.fetchAll(workers, urls: urls.map { shared.url($0) })
        for w in workers { try await w.shutdown() }
        #expect(ok == 48)
        #expect(shared.maxInFlight == 4, "max in flight \(shared.maxInFlight)")
        // Every slot was given back (the sorted set is empty or gone).
        #expect(redis.cli(["ZCARD", RedisKeys.fetchSlots("127.0.0.1:\(shared.port)")]) == "0")

        // The same three without Redis: each keeps its own limit, and the host sees their sum.
        let alone = try TestHTTPServer { _ in image }
        defer { alone.shutdown() }
        let separate = try (0..<3).map { _ in try Self.worker(nil, perHost: 4) }
        _ = await Self.fetchAll(separate, urls: urls.map { alone.url($0) })
        for w in separate { try await w.shutdown() }
        #expect(alone.maxInFlight > 4, "without Redis the limit is per process: \(alone.maxInFlight)")
    }

    @Test("a worker that died keeps no slots: they expire after their lease")
    func deadWorkersSlotsExpire() async throws {
        let redis = try RedisServer()
        let client = RedisClient(location: try RedisLocation(parsing: redis.url()))
        let board = RedisHostSlots(client: client)
        // A worker takes both slots and dies without giving them back.
        for _ in 0..<2 { #expect(await board.acquire(host: "cdn.example", limit: 2, lease: .seconds(1)) != nil) }
        let t0 = ContinuousClock.now
        let token = await board.acquire(host: "cdn.example", limit: 2, lease: .seconds(1))
        let waited = ContinuousClock.now - t0
        #expect(token != nil)
        #expect(waited > .milliseconds(700) && waited < .seconds(3), "waited \(waited)")
    }

    @Test("Redis down: the slot board answers nil at once and fetches go on under the local limit")
    func boardDown() async throws {
        let redis = try RedisServer()
        let worker = try Self.worker(redis, perHost: 2)
        let server = try TestHTTPServer { _ in .init(headers: [("Content-Type", "image/jpeg")], body: [1, 2, 3]) }
        defer { server.shutdown() }
        redis.stop()
        let ok = await Self.fetchAll([worker], urls: (0..<8).map { server.url("/\($0).jpg") })
        try await worker.shutdown()
        #expect(ok == 8)
        #expect(server.maxInFlight <= 2)
    }

    @Test("a 429 with Retry-After seen by one worker pauses the others")
    func pauseIsShared() async throws {
        let redis = try RedisServer()
        let refused = Locked(false)
        let arrivals = Locked<[String: [ContinuousClock.Instant]]>([:])
        let server = try TestHTTPServer { req in
            let who = req.path.hasPrefix("/b/") ? "b" : "a"
            arrivals.withLock { $0[who, default: []].append(.now) }
            if who == "a"
                && !refused.withLock({ r in
                    defer { r = true }
                    return r
                })
            {
                return .init(status: 429, headers: [("Retry-After", "2")])
            }
            return .init(headers: [("Content-Type", "image/jpeg")], body: [1, 2, 3])
        }
        defer { server.shutdown() }
        let a = try Self.worker(redis, perHost: 4), b = try Self.worker(redis, perHost: 4)
        // Worker a is refused with Retry-After: 2 and publishes the pause.
        let first = Task { await a.fetch(server.url("/a/x.jpg")) }
        while arrivals.withLock({ $0["a"]?.count ?? 0 }) < 1 { try await Task.sleep(for: .milliseconds(5)) }
        let refusedAt = arrivals.withLock { $0["a"]![0] }
        // Worker b's poll (every 250 ms) picks the pause up; its request waits for the end of it.
        try await Task.sleep(for: .milliseconds(600))
        let second = await b.fetch(server.url("/b/y.jpg"))
        if case .failure(let e) = second { Issue.record("b failed: \(e)") }
        if case .failure(let e) = await first.value { Issue.record("a failed: \(e)") }
        try await a.shutdown()
        try await b.shutdown()
        let bAt = try #require(arrivals.withLock { $0["b"]?.first })
        #expect(bAt - refusedAt > .milliseconds(1700), "b asked \(bAt - refusedAt) after the 429")
    }

    @Test("batch status, history and lock: written under the platform's keys and TTLs; the lock passes between workers")
    func batchMirror() async throws {
        let redis = try RedisServer()
        let client = RedisClient(location: try RedisLocation(parsing: redis.url()))
        let one = BatchMirror(client: client, job: "nightly", owner: "host-a:1")
        let two = BatchMirror(client: client, job: "nightly", owner: "host-b:2")
        #expect(await one.publish(status: Array(#"{"done":1}"#.utf8)) == "host-a:1")
        #expect(await two.publish(status: Array(#"{"done":2}"#.utf8)) == "host-a:1")
        #expect(redis.cli(["GET", "batch:status:nightly"]) == #"{"done":2}"#)
        let statusTTL = Int(redis.cli(["TTL", "batch:status:nightly"])) ?? 0
        #expect(statusTTL > 3590 && statusTTL <= 3600)
        #expect(redis.cli(["GET", "batch:lock:nightly"]) == "host-a:1")
        let lockTTL = Int(redis.cli(["TTL", "batch:lock:nightly"])) ?? 0
        #expect(lockTTL > 1790 && lockTTL <= 1800)
        // The holder stops before the job is done: the lock passes to a worker still running.
        await one.finish(status: Array(#"{"done":3}"#.utf8), runID: 7, done: false)
        #expect(redis.cli(["EXISTS", "batch:lock:nightly"]) == "0")
        #expect(await two.publish(status: Array(#"{"done":4}"#.utf8)) == "host-b:2")
        #expect(redis.cli(["EXISTS", "batch:history:nightly"]) == "0")
        // The last worker sees it done: history entry for the run, lock gone.
        await two.finish(status: Array(#"{"done":5,"status":"done"}"#.utf8), runID: 7, done: true)
        #expect(redis.cli(["HGET", "batch:history:nightly", "7"]) == #"{"done":5,"status":"done"}"#)
        let historyTTL = Int(redis.cli(["TTL", "batch:history:nightly"])) ?? 0
        #expect(historyTTL > 7 * 86400 - 10 && historyTTL <= 7 * 86400)
        #expect(redis.cli(["EXISTS", "batch:lock:nightly"]) == "0")
        // At most one status write a second per worker.
        #expect(one.due() && !one.due())
    }
}
