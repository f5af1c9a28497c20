import EwallCore
import EwallFetch
import EwallRedis
import EwallTestSupport
import Foundation
import Logging
import Testing

enum RedisTestData {
    static let key = ModelKey(modelID: "resnet50@0123abcd", preprocessing: "squash224")

    static func vector(_ seed: UInt64, dimension: Int = 2048) -> [Float] {
        var rng = TestRNG(seed: seed)
        var v = (0..<dimension).map { _ in Float.random(in: -1...1, using: &rng) }
        let n = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        v = v.map { $0 / n }
        return v
    }

    static func sha(_ text: String) -> String { ImageFetcher.sha256(Array(text.utf8)) }

    static func cache(
        _ server: RedisServer, key: ModelKey = key, ttl: Duration = .seconds(3600),
        logger: Logger = Logger(label: "test")
    ) -> EmbeddingCache {
        EmbeddingCache(
            client: RedisClient(location: try! RedisLocation(parsing: server.url()), logger: logger),
            key: key, dimension: 2048, ttl: ttl)
    }
}

@Suite("Redis URLs")
struct RedisLocationTests {
    @Test("the forms the platform uses parse; the password never shows")
    func parses() throws {
        let a = try RedisLocation(parsing: "redis://127.0.0.1:6380/2")
        #expect(a.host == "127.0.0.1" && a.port == 6380 && a.database == 2 && a.password == nil)
        let b = try RedisLocation(parsing: "redis://:s%40cret@cache.internal:6379/0")
        #expect(b.password == "s@cret" && b.username == nil && b.host == "cache.internal")
        #expect(!b.description.contains("cret") && b.description.contains("***"))
        let c = try RedisLocation(parsing: "redis://ewall:pw@[::1]")
        #expect(c.username == "ewall" && c.password == "pw" && c.host == "::1" && c.port == 6379 && c.database == 0)
        let d = try RedisLocation(parsing: "redis://localhost")
        #expect(d.port == 6379 && d.database == 0)
    }

    @Test(
        "a malformed URL says what is wrong, without the password",
        arguments: [
            ("http://h:1/0", "scheme"), ("redis://h:port/0", "port is not a number"),
            ("redis://:pw@:6379/0", "host is missing"),
            ("redis://h:70000/0", "out of range"), ("redis://h:1/x", "database 'x'"), ("rediss://h:1", "TLS"),
            ("redis://h:1/0?timeout=1", "query"),
        ])
    func malformed(_ url: String, _ reason: String) {
        do {
            _ = try RedisLocation(parsing: url)
            Issue.record("\(url) parsed")
        } catch {
            #expect(error.description.contains(reason), "\(error)")
            #expect(!error.description.contains(":pw@"))
        }
    }

    @Test("$EWALL_REDIS is read when --redis is not given; neither means no Redis")
    func environment() throws {
        #expect(try RedisConfiguration.location(flag: nil, environment: [:]) == nil)
        #expect(try RedisConfiguration.location(flag: nil, environment: ["EWALL_REDIS": "redis://h:7/1"])?.port == 7)
        #expect(
            try RedisConfiguration.location(flag: "redis://a:8", environment: ["EWALL_REDIS": "redis://h:7/1"])?.host
                == "a")
    }
}

@Suite("The vector value format")
struct VectorValueTests {
    @Test("encode then decode gives the same bits and the image's facts")
    func roundTrip() {
        // Odd bit patterns that keep the norm 1 (a huge value would break VectorRule).
        let v = RedisTestData.vector(1) + [0, -0.0, .leastNonzeroMagnitude, -.leastNormalMagnitude]
        let e = CachedEmbedding(
            vector: v, imageSHA256: RedisTestData.sha("a"), format: "jpeg", width: 4000, height: 3000)
        let bytes = VectorValue.encode(e, key: RedisTestData.key)
        let back = VectorValue.decode(bytes, key: RedisTestData.key, dimension: v.count)
        #expect(back?.vector.map(\.bitPattern) == v.map(\.bitPattern))
        #expect(
            back?.width == 4000 && back?.height == 3000 && back?.format == "jpeg" && back?.imageSHA256 == e.imageSHA256)
    }

    @Test("a value of another model, preprocessing or dimension, or not ours at all, does not decode")
    func foreign() {
        let e = CachedEmbedding(vector: RedisTestData.vector(2), imageSHA256: RedisTestData.sha("a"))
        let bytes = VectorValue.encode(e, key: RedisTestData.key)
        #expect(
            VectorValue.decode(
                bytes, key: ModelKey(modelID: "resnet50@ffff0000", preprocessing: "squash224"), dimension: 2048) == nil)
        #expect(
            VectorValue.decode(
                bytes, key: ModelKey(modelID: RedisTestData.key.modelID, preprocessing: "resize256-crop224"),
                dimension: 2048) == nil)
        #expect(VectorValue.decode(bytes, key: RedisTestData.key, dimension: 512) == nil)
        #expect(VectorValue.decode(Array(bytes.dropLast()), key: RedisTestData.key, dimension: 2048) == nil)
        #expect(VectorValue.decode(Array("[0.1, 0.2]".utf8), key: RedisTestData.key, dimension: 2048) == nil)
        #expect(VectorValue.decode([], key: RedisTestData.key, dimension: 2048) == nil)
    }

    @Test(
        "a value with a valid header whose vector is NaN, infinite, zero or not unit-norm does not decode",
        arguments: [
            ("NaN", Float.nan, Float(1)), ("Inf", .infinity, 1), ("-Inf", -.infinity, 1),
            ("all zeros", 0, 0), ("norm 2", 0, 2),
        ])
    func poisoned(_ what: String, _ value: Float, _ scale: Float) {
        var v = RedisTestData.vector(3).map { $0 * scale }
        if value != 0 { v[17] = value }
        let bytes = VectorValue.encode(
            CachedEmbedding(vector: v, imageSHA256: RedisTestData.sha("p")), key: RedisTestData.key)
        #expect(VectorValue.decode(bytes, key: RedisTestData.key, dimension: 2048) == nil, "\(what)")
        #expect(VectorRule.problem(v, dimension: 2048) != nil, "\(what)")
    }
}

@Suite(
    "The embedding cache against a real redis-server", .serialized,
    .enabled(if: RedisServer.available, "needs Debian's redis-server (make deps)"))
struct EmbeddingCacheTests {
    @Test("a hit returns the vector bit for bit; another model, preprocessing or image bytes miss")
    func hitsAndMisses() async throws {
        let server = try RedisServer()
        let cache = RedisTestData.cache(server)
        let v = RedisTestData.vector(3)
        let shaA = RedisTestData.sha("photo A")
        await cache.store([CachedEmbedding(vector: v, imageSHA256: shaA, format: "jpeg", width: 720, height: 960)])
        let hit = try #require(await cache.lookup(sha256: shaA))
        #expect(hit.vector.map(\.bitPattern) == v.map(\.bitPattern))
        #expect(hit.width == 720 && hit.height == 960 && hit.format == "jpeg")
        #expect(await cache.lookup(sha256: RedisTestData.sha("photo A, one byte changed")) == nil)
        let otherModel = RedisTestData.cache(
            server, key: ModelKey(modelID: "resnet50@99999999", preprocessing: "squash224"))
        #expect(await otherModel.lookup(sha256: shaA) == nil)
        let otherPreprocessing = RedisTestData.cache(
            server,
            key: ModelKey(
                modelID: RedisTestData.key.modelID,
                preprocessing: "resize256-crop224"))
        #expect(await otherPreprocessing.lookup(sha256: shaA) == nil)
        let stats = cache.statistics
        #expect(stats.hits == 1 && stats.misses == 1 && stats.errors == 0 && stats.writes == 1)
        // The key is the documented one, with the configured TTL.
        let ttl = Int(server.cli(["TTL", RedisKeys.embedding(RedisTestData.key, sha256: shaA)])) ?? -99
        #expect((3590...3600).contains(ttl))
    }

    @Test("500 concurrent lookups (pipelined together on two connections) each get their own vector")
    func concurrentLookups() async throws {
        let server = try RedisServer()
        let cache = RedisTestData.cache(server)
        let entries = (0..<50).map {
            CachedEmbedding(vector: RedisTestData.vector(UInt64(100 + $0)), imageSHA256: RedisTestData.sha("c\($0)"))
        }
        await cache.store(entries)
        let wrong = await withTaskGroup(of: Int.self) { group in
            for i in 0..<500 {
                group.addTask {
                    let e = entries[i % entries.count]
                    if i % 7 == 0 { return await cache.lookup(sha256: RedisTestData.sha("absent \(i)")) == nil ? 0 : 1 }
                    return await cache.lookup(sha256: e.imageSHA256)?.vector == e.vector ? 0 : 1
                }
            }
            return await group.reduce(0, +)
        }
        #expect(wrong == 0)
        #expect(cache.statistics.errors == 0)
    }

    @Test("an entry expires after its TTL")
    func expiry() async throws {
        let server = try RedisServer()
        let cache = RedisTestData.cache(server, ttl: .milliseconds(300))
        let sha = RedisTestData.sha("short-lived")
        await cache.store([CachedEmbedding(vector: RedisTestData.vector(4), imageSHA256: sha)])
        #expect(await cache.lookup(sha256: sha) != nil)
        try await Task.sleep(for: .milliseconds(500))
        #expect(await cache.lookup(sha256: sha) == nil)
    }

    @Test("a value under our key that is not ours is ignored, counted, and overwritten by the next fill")
    func foreignValue() async throws {
        let server = try RedisServer()
        let cache = RedisTestData.cache(server)
        let sha = RedisTestData.sha("someone else's")
        let key = RedisKeys.embedding(RedisTestData.key, sha256: sha)
        _ = server.cli(["SET", key, "[0.1,0.2,0.3]"])
        #expect(await cache.lookup(sha256: sha) == nil)
        #expect(cache.statistics.foreign == 1)
        let v = RedisTestData.vector(5)
        await cache.store([CachedEmbedding(vector: v, imageSHA256: sha)])
        #expect(await cache.lookup(sha256: sha)?.vector == v)
        // The per-product view: a plain string left by an older writer is replaced, counted.
        _ = server.cli(["SET", RedisKeys.product("P1"), "old-plain-vector"])
        await cache.writeProducts(current: [("P1", CachedEmbedding(vector: v, imageSHA256: sha))], replaced: [])
        #expect(await cache.product("P1")?.vector == v)
        #expect(cache.statistics.foreign == 2)
    }

    @Test("a NaN vector under our key (valid header) is a miss, counted as foreign, and the next fill overwrites it")
    func poisonedValue() async throws {
        let server = try RedisServer()
        let cache = RedisTestData.cache(server)
        let sha = RedisTestData.sha("poisoned")
        var bad = RedisTestData.vector(8)
        bad[0] = .nan
        let poison = VectorValue.encode(CachedEmbedding(vector: bad, imageSHA256: sha), key: RedisTestData.key)
        let key = RedisKeys.embedding(RedisTestData.key, sha256: sha)
        guard case .success = await cache.client.send(["SET", RedisArgument(key), RedisArgument(poison)]) else {
            Issue.record("SET failed")
            return
        }
        #expect(await cache.lookup(sha256: sha) == nil)
        #expect(cache.statistics.foreign == 1 && cache.statistics.hits == 0)
        let good = RedisTestData.vector(9)
        await cache.store([CachedEmbedding(vector: good, imageSHA256: sha)])
        #expect(await cache.lookup(sha256: sha)?.vector == good)
        #expect(cache.statistics.foreign == 1 && cache.statistics.hits == 1)
    }

    @Test("the per-product view holds the product's current vector and loses it when the photo is replaced")
    func productView() async throws {
        let server = try RedisServer()
        let cache = RedisTestData.cache(server)
        let old = CachedEmbedding(vector: RedisTestData.vector(6), imageSHA256: RedisTestData.sha("old photo"))
        let new = CachedEmbedding(vector: RedisTestData.vector(7), imageSHA256: RedisTestData.sha("new photo"))
        await cache.writeProducts(current: [("P1", old), ("P2", old)], replaced: [])
        #expect(await cache.product("P1")?.imageSHA256 == old.imageSHA256)
        await cache.writeProducts(current: [("P1", new)], replaced: ["P2"])
        #expect(await cache.product("P1")?.vector == new.vector)
        #expect(await cache.product("P2") == nil)
        // Another model key's entry on the same product is its own field, untouched.
        let other = RedisTestData.cache(server, key: ModelKey(modelID: "clip@1", preprocessing: "squash224"))
        await other.writeProducts(current: [("P1", old)], replaced: [])
        #expect(await cache.product("P1")?.vector == new.vector)
        #expect(server.cli(["HLEN", RedisKeys.product("P1")]) == "2")
        let ttl = Int(server.cli(["TTL", RedisKeys.product("P1")])) ?? -99
        #expect((3590...3600).contains(ttl))
    }
}

@Suite(
    "The Redis client when Redis fails", .serialized,
    .enabled(if: RedisServer.available, "needs Debian's redis-server (make deps)"))
struct RedisFailureTests {
    @Test("Redis killed: every call is a miss at once and one warning; restarted: the cache works again")
    func killedAndRestarted() async throws {
        let server = try RedisServer()
        let logs = CapturedLogs()
        let cache = RedisTestData.cache(server, logger: logs.logger)
        let sha = RedisTestData.sha("x")
        await cache.store([CachedEmbedding(vector: RedisTestData.vector(8), imageSHA256: sha)])
        #expect(await cache.lookup(sha256: sha) != nil)
        server.stop()
        let t0 = ContinuousClock.now
        for _ in 0..<50 { #expect(await cache.lookup(sha256: sha) == nil) }
        // Down costs each call microseconds, not a timeout.
        #expect(ContinuousClock.now - t0 < .seconds(1))
        #expect(cache.statistics.errors >= 50 && cache.statistics.misses >= 50)
        #expect(logs.warnings(containing: "not answering").count == 1)
        try server.start()
        // The client retries once a second: within ~1.5 s the cache answers again (empty: no persistence).
        var back = false
        for _ in 0..<40 where !back {
            await cache.store([CachedEmbedding(vector: RedisTestData.vector(8), imageSHA256: sha)])
            back = await cache.lookup(sha256: sha) != nil
            if !back { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(back)
        #expect(logs.warnings(containing: "not answering").count == 1)
    }

    @Test("a wrong password: one clear warning, then no cache and no errors for the caller")
    func wrongPassword() async throws {
        let server = try RedisServer(password: "right")
        let logs = CapturedLogs()
        let client = RedisClient(
            location: try RedisLocation(parsing: server.url(password: "wrong")), logger: logs.logger)
        let cache = EmbeddingCache(client: client, key: RedisTestData.key, dimension: 2048)
        #expect(await client.ping() == false)
        for _ in 0..<5 { #expect(await cache.lookup(sha256: RedisTestData.sha("y")) == nil) }
        #expect(client.isDisabled)
        let warnings = logs.warnings(containing: "refused our credentials")
        #expect(warnings.count == 1)
        #expect(warnings.first.map { !$0.contains("wrong") } ?? false, "the password must not be logged")
        // The right one works.
        let good = RedisClient(location: try RedisLocation(parsing: server.url()))
        #expect(await good.ping())
    }

    @Test("a command slower than the timeout is a miss within the timeout, and the next call works")
    func slow() async throws {
        let server = try RedisServer()
        let client = RedisClient(location: try RedisLocation(parsing: server.url()), timeout: .milliseconds(50))
        #expect(await client.ping())
        let t0 = ContinuousClock.now
        // DEBUG SLEEP is refused on some builds; a Lua busy loop stands in for a stalled Redis.
        let script =
            "local t = redis.call('TIME'); local s = t[1] * 1e6 + t[2]; "
            + "while true do local n = redis.call('TIME'); if n[1] * 1e6 + n[2] - s > 300000 then break end end; return 1"
        let r = await client.send(["EVAL", RedisArgument(script), "0"])
        let waited = ContinuousClock.now - t0
        guard case .failure = r else {
            Issue.record("a 300 ms command answered within a 50 ms timeout: \(r)")
            return
        }
        #expect(waited < .milliseconds(250))
        try await Task.sleep(for: .milliseconds(400))
        #expect(await client.ping())
    }
}
