import EwallML
import EwallRedis
import EwallStore
import EwallTestSupport
import Foundation
import Testing

/// The batch job with the platform's Redis: the cache shared between jobs and stores, the
/// per-product view following each product's photo, and a Redis that dies mid-job.
@Suite("Jobs with Redis", .serialized, .enabled(if: RedisServer.available, "needs Debian's redis-server (make deps)"))
struct RedisJobTests {
    static func run(
        _ manifest: String, store: any EmbeddingStore, redis: RedisServer,
        fetch: FetchConfiguration = EmbeddingJobTests.fetchConfig()
    )
        async throws -> JobSummary
    {
        var config = EmbeddingJobConfiguration(manifestPath: manifest, fetch: fetch, concurrency: 8)
        config.redis = RedisConfiguration(location: try RedisLocation(parsing: redis.url()))
        return try await EmbeddingJob(configuration: config, embedder: try EmbeddingJobTests.embedder(), store: store)
            .run(progressInterval: 0.2)
    }

    static func manifest(_ rows: [(String, String)]) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("redis-\(UUID().uuidString).csv").path
        try (["product_id,image_url"] + rows.map { "\($0.0),\($0.1)" }).joined(separator: "\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func sqlite() async throws -> any EmbeddingStore {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("redis-\(UUID().uuidString).sqlite")
            .path
        return try await StoreLocation(parsing: "sqlite:\(path)").open()
    }

    @Test(
        "another job on another store takes every vector from the cache, bit for bit, with no forward pass; the per-product view follows each photo"
    )
    func cacheAcrossJobsAndProductView() async throws {
        let redis = try RedisServer()
        let photos = Array(try Fixtures.photos().prefix(4))
        let rows = photos.enumerated().map { ("p\($0.offset)", $0.element) }
        let key = ModelKey(modelID: try EmbeddingJobTests.embedder().modelID, preprocessing: "squash224")
        let a = try await Self.sqlite(), b = try await Self.sqlite()
        defer {
            Task {
                await a.close()
                await b.close()
            }
        }

        let first = try await Self.run(try Self.manifest(rows), store: a, redis: redis)
        #expect(first.counts.embedded == 4 && first.cache?.hits == 0 && (first.cache?.writes ?? 0) >= 4)
        let second = try await Self.run(try Self.manifest(rows), store: b, redis: redis)
        #expect(second.counts.embedded == 4 && second.cache?.hits == 4 && second.stageSeconds.infer == 0)
        let view = EmbeddingCache(
            client: RedisClient(location: try RedisLocation(parsing: redis.url())), key: key, dimension: 2048)
        for (id, _) in rows {
            let inA = try #require(try await a.embedding(productID: id, key: key))
            let inB = try #require(try await b.embedding(productID: id, key: key))
            #expect(inA.vector.map(\.bitPattern) == inB.vector.map(\.bitPattern))
            #expect(await view.product(id)?.vector.map(\.bitPattern) == inA.vector.map(\.bitPattern))
        }

        // p0's photo is replaced by p1's; p2's by a damaged file: p0's view is the new vector,
        // p2's is gone (no reader may get the old photo's vector).
        let broken = Fixtures.image("truncated_half.jpg")
        let third = try await Self.run(try Self.manifest([("p0", photos[1]), ("p2", broken)]), store: a, redis: redis)
        #expect(third.counts.embedded == 1 && third.counts.failed == 1)
        let p0 = try #require(try await a.embedding(productID: "p0", key: key))
        #expect(await view.product("p0")?.vector.map(\.bitPattern) == p0.vector.map(\.bitPattern))
        #expect(await view.product("p0")?.imageSHA256 == ImageFetcher.sha256(try Fixtures.bytes(photos[1])))
        #expect(await view.product("p2") == nil)
        #expect(await view.product("p3") != nil)
    }

    @Test("Redis killed mid-job: the job completes with every item stored and counts the errors")
    func redisDiesMidJob() async throws {
        let redis = try RedisServer()
        let photos = try Fixtures.photos()
        let images = try photos.map { try Fixtures.bytes($0) }
        let server = try TestHTTPServer { req in
            guard let i = Int(req.path.dropFirst(5).prefix(while: \.isNumber)), i < images.count else {
                return .init(status: 404)
            }
            return .init(headers: [("Content-Type", "image/jpeg")], body: images[i], delay: .milliseconds(60))
        }
        defer { server.shutdown() }
        let store = try await Self.sqlite()
        defer { Task { await store.close() } }
        let rows = (0..<images.count).map { ("q\($0)", server.url("/img/\($0).jpg")) }
        // Kill Redis once the job has written to it.
        let killer = Task {
            while !Task.isCancelled {
                if (Int(redis.cli(["DBSIZE"])) ?? 0) > 0 {
                    redis.stop()
                    return true
                }
                try? await Task.sleep(for: .milliseconds(20))
            }
            return false
        }
        var fetch = EmbeddingJobTests.fetchConfig()
        fetch.perHostLimit = 2
        let summary = try await Self.run(try Self.manifest(rows), store: store, redis: redis, fetch: fetch)
        killer.cancel()
        #expect(await killer.value, "the job ended before Redis was killed")
        #expect(summary.counts.embedded == images.count && summary.counts.failed == 0 && summary.error == nil)
        #expect((summary.cache?.errors ?? 0) > 0)
        let key = ModelKey(modelID: try EmbeddingJobTests.embedder().modelID, preprocessing: "squash224")
        #expect(try await store.modelKeys().first { $0.key == key }?.count == images.count)
    }
}
