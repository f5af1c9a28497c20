import EwallCore
import EwallStore
import EwallTestSupport
import Foundation
import Testing

/// `ewall-embed --redis` as the platform runs it: several worker processes on one job and one
/// Redis. PostgreSQL and Redis are real servers on loopback.
@Suite(
    "ewall-embed with Redis", .serialized,
    .enabled(if: RedisServer.available, "needs Debian's redis-server (make deps)"))
struct RedisCLITests {
    @Test(
        "three workers with --per-host 4 against one image server: never more than 4 in flight; the job's status, history and lock under batch:*"
    )
    func threeWorkersShareLimitsAndStatus() async throws {
        let redis = try RedisServer()
        let (server, manifest) = try SharedJobCLITests.catalogue(48, delay: .milliseconds(60))
        defer { server.shutdown() }
        let db = try await PostgresServer.freshDatabase()
        let sub = try SharedJobCLITests.submit(manifest, db, "catalogue")
        #expect(sub.status == 0, "\(sub.stderr)")
        let workers = try (0..<3).map {
            try SharedJobCLITests.worker(
                db, "catalogue",
                [
                    "--worker-name", "w\($0)", "--redis", redis.url(), "--per-host", "4",
                    "--concurrency", "16",
                ])
        }
        // While they run, the lock names one of them and the status is the job's.
        var sawLock = false, sawStatus = false
        for _ in 0..<200 where !(sawLock && sawStatus) {
            sawLock = sawLock || redis.cli(["GET", "batch:lock:catalogue"]).hasPrefix("w")
            sawStatus = sawStatus || redis.cli(["GET", "batch:status:catalogue"]).contains("\"name\":\"catalogue\"")
            try await Task.sleep(for: .milliseconds(25))
        }
        let results = workers.map { $0.wait() }
        for r in results { #expect(r.status == 0, "\(r.stderr.suffix(600))") }
        #expect(sawLock && sawStatus)
        #expect(server.maxInFlight <= 4, "the image server saw \(server.maxInFlight) requests at once")
        try await SharedJobCLITests.expectEachItemOnce(db, "catalogue", items: 48)
        // Done: the final status, one history entry for the run, the lock gone.
        let status =
            try JSONSerialization.jsonObject(with: Data(redis.cli(["GET", "batch:status:catalogue"]).utf8))
            as? [String: Any]
        #expect(status?["status"] as? String == "done" && status?["done"] as? Int == 48)
        let runID = try await SharedJobCLITests.status(db, "catalogue").runID
        #expect(redis.cli(["HGET", "batch:history:catalogue", "\(runID)"]).contains("\"status\":\"done\""))
        #expect(redis.cli(["EXISTS", "batch:lock:catalogue"]) == "0")
        // Each worker's summary carries the cache's counts; the per-product view has every product.
        let summary = try EmbedJobCLITests.summary(results[0].stdout)
        #expect(summary["cache"] is [String: Any])
        #expect(redis.cli(["EXISTS", "product_embedding:p0", "product_embedding:p47"]) == "2")
    }

    @Test("a malformed --redis URL exits 64 with the reason; $EWALL_REDIS is read too")
    func malformedURL() throws {
        let r = try JobProcess.run(["--manifest", "/nonexistent.csv", "--redis", "redis://:secret@cache:port/0"])
        #expect(r.status == 64)
        #expect(r.stderr.contains("the port is not a number") && !r.stderr.contains("secret"), "\(r.stderr)")
        let r2 = try ProcessRunner.run(
            try executable("ewall-embed"), ["--manifest", "/nonexistent.csv"],
            environment: ["EWALL_REDIS": "http://cache:6379"], replacing: true)
        #expect(r2.status == 64 && r2.stderr.contains("the scheme must be redis://"), "\(r2.stderr)")
    }
}
