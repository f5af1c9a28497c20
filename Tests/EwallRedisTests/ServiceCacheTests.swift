import EwallCore
import EwallFetch
import EwallML
import EwallRedis
import EwallTestSupport
import Foundation
import Testing

/// `EwallService` with the platform's Redis: replicas share vectors; Redis dying under load
/// costs nothing but hits.
@Suite(
    "EwallService with Redis", .serialized,
    .enabled(if: RedisServer.available, "needs Debian's redis-server (make deps)"))
struct ServiceCacheTests {
    static func service(
        _ redis: RedisServer, url: String? = nil, preprocessing: PreprocessingMode = .squash224,
        logger: CapturedLogs = CapturedLogs()
    ) async throws -> EwallService {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("svc-redis-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        var config = EwallConfiguration(
            modelPath: Fixtures.model, storeURL: "sqlite:\(dir.path)/ewall.sqlite",
            indexPath: dir.appendingPathComponent("faiss").path, rulesPath: nil,
            preprocessing: preprocessing, precision: .fp32, indexWatchInterval: nil)
        config.redis = RedisConfiguration(location: try RedisLocation(parsing: url ?? redis.url()))
        var log = logger.logger
        log.logLevel = .warning
        return try await EwallService(configuration: config, logger: log)
    }

    @Test("a second replica gets the first one's vector from the cache, bit for bit; another preprocessing does not")
    func replicasShare() async throws {
        let redis = try RedisServer()
        let bytes = try Fixtures.bytes(try Fixtures.photos()[0])
        let one = try await Self.service(redis)
        let made = try await one.embed(.bytes(bytes))
        #expect(one.cacheStatistics?.misses == 1)
        // The fill happens off the answer's path: wait for it.
        for _ in 0..<100 where (one.cacheStatistics?.writes ?? 0) == 0 { try await Task.sleep(for: .milliseconds(10)) }
        let two = try await Self.service(redis)
        let cached = try await two.embed(.bytes(bytes))
        #expect(two.cacheStatistics?.hits == 1)
        #expect(cached.vector.map(\.bitPattern) == made.vector.map(\.bitPattern))
        #expect(cached.width == made.width && cached.height == made.height && cached.format == made.format)
        #expect(two.batching.images == 0, "a hit must not run the model")
        let crop = try await Self.service(redis, preprocessing: .resize256Crop224)
        _ = try await crop.embed(.bytes(bytes))
        #expect(crop.cacheStatistics?.hits == 0 && crop.batching.images == 1)
        for s in [one, two, crop] { await s.shutdown() }
    }

    @Test(
        "a cached NaN vector under an image's key (valid header) is never served: recomputed, counted, overwritten")
    func poisonedValue() async throws {
        let redis = try RedisServer()
        let bytes = try Fixtures.bytes(try Fixtures.photos()[2])
        let service = try await Self.service(redis)
        let key = RedisKeys.embedding(service.modelKey, sha256: ImageFetcher.sha256(bytes))
        var bad = [Float](repeating: 0, count: service.dimension)
        bad[0] = .nan
        bad[1] = .infinity
        let poison = VectorValue.encode(
            CachedEmbedding(vector: bad, imageSHA256: ImageFetcher.sha256(bytes)), key: service.modelKey)
        let client = RedisClient(location: try RedisLocation(parsing: redis.url()))
        guard case .success = await client.send(["SET", RedisArgument(key), RedisArgument(poison)]) else {
            Issue.record("SET failed")
            return
        }
        let made = try await service.embed(.bytes(bytes))
        #expect(VectorRule.problem(made.vector, dimension: service.dimension) == nil)
        #expect(service.cacheStatistics?.foreign == 1 && service.cacheStatistics?.hits == 0)
        #expect(service.batching.images == 1, "the poisoned value must be recomputed by the model")
        for _ in 0..<100 where (service.cacheStatistics?.writes ?? 0) == 0 {
            try await Task.sleep(for: .milliseconds(10))
        }
        let again = try await service.embed(.bytes(bytes))
        #expect(service.cacheStatistics?.hits == 1, "the fill must have overwritten the poisoned value")
        #expect(again.vector.map(\.bitPattern) == made.vector.map(\.bitPattern))
        await client.close()
        await service.shutdown()
    }

    @Test("Redis killed under load: every request is answered (0 errors), misses counted; restarted: hits again")
    func redisDiesUnderLoad() async throws {
        let redis = try RedisServer()
        let photos = Array(try Fixtures.photos().prefix(8)).map { try! Fixtures.bytes($0) }
        let service = try await Self.service(redis)
        let done = Locked(0)
        let killer = Task {
            while done.withLock({ $0 }) < 12 { try? await Task.sleep(for: .milliseconds(5)) }
            redis.stop()
        }
        let failures = await withTaskGroup(of: Bool.self) { group in
            for i in 0..<48 {
                group.addTask {
                    defer { done.withLock { $0 += 1 } }
                    do {
                        _ = try await service.embed(.bytes(photos[i % photos.count]))
                        return false
                    } catch { return true }
                }
            }
            var failed = 0
            for await f in group where f { failed += 1 }
            return failed
        }
        await killer.value
        #expect(failures == 0)
        // The lookups all ran before the kill; the fills of the later batches run after it, in
        // the background (they never delay an answer), so their errors may be counted just after
        // the last answer: wait for them (at most 5 s).
        for _ in 0..<50 where (service.cacheStatistics?.errors ?? 0) == 0 {
            try await Task.sleep(for: .milliseconds(100))
        }
        let stats = try #require(service.cacheStatistics)
        #expect(stats.errors > 0 && stats.hits + stats.misses == 48, "\(stats)")
        try redis.start()
        var hit = false
        for _ in 0..<40 where !hit {
            _ = try await service.embed(.bytes(photos[0]))
            try await Task.sleep(for: .milliseconds(100))
            let before = service.cacheStatistics?.hits ?? 0
            _ = try await service.embed(.bytes(photos[0]))
            hit = (service.cacheStatistics?.hits ?? 0) > before
        }
        #expect(hit, "caching did not resume after Redis came back")
        await service.shutdown()
    }

    @Test("a wrong password: the service starts, warns once, and answers without the cache")
    func wrongPassword() async throws {
        let redis = try RedisServer(password: "right")
        let logs = CapturedLogs()
        let service = try await Self.service(redis, url: redis.url(password: "wrong"), logger: logs)
        for _ in 0..<3 { _ = try await service.embed(.bytes(try Fixtures.bytes(try Fixtures.photos()[1]))) }
        #expect(logs.warnings(containing: "refused our credentials").count == 1)
        #expect(service.cacheStatistics?.hits == 0)
        await service.shutdown()
    }
}
