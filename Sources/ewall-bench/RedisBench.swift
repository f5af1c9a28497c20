import EwallCore
import EwallRedis
import Foundation

/// `ewall-bench redis --redis URL [--count N] [--concurrency C]` (bench/redis_bench.py): the
/// embedding cache's lookup latency, end to end as EwallML pays it (a 2048-d vector: MGET on
/// the client's own thread, the value checked and decoded into floats). Prints one JSON object
/// with p50/p99/max in ms for one caller at a time and for C concurrent callers.
enum RedisBench {
    static func run(_ args: [String]) async throws {
        func opt(_ name: String, _ fallback: String) -> String {
            args.firstIndex(of: name).flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil } ?? fallback
        }
        let location = try RedisLocation(parsing: opt("--redis", "redis://127.0.0.1:6379/0"))
        let count = Int(opt("--count", "20000"))!
        let concurrency = Int(opt("--concurrency", "64"))!
        let key = ModelKey(modelID: "bench@00000000", preprocessing: "squash224")
        let cache = EmbeddingCache(
            client: RedisClient(location: location, timeout: .seconds(1)), key: key, dimension: 2048)
        var rng = SystemRandomNumberGenerator()
        let shas = (0..<256).map { i in String(format: "%064x", i) }
        await cache.store(
            shas.map {
                CachedEmbedding(vector: (0..<2048).map { _ in Float.random(in: -1...1, using: &rng) }, imageSHA256: $0)
            })

        func timed(_ sha: String) async -> Double {
            let t0 = ContinuousClock.now
            let hit = await cache.lookup(sha256: sha)
            precondition(hit != nil, "the bench's own value was not found: is Redis answering?")
            return (ContinuousClock.now - t0).inSeconds * 1000
        }
        for i in 0..<500 { _ = await timed(shas[i % shas.count]) } // warm-up
        var serial: [Double] = []
        let t0 = ContinuousClock.now
        for i in 0..<count { serial.append(await timed(shas[i % shas.count])) }
        let serialSeconds = (ContinuousClock.now - t0).inSeconds

        let t1 = ContinuousClock.now
        let concurrent = await withTaskGroup(of: [Double].self) { group in
            for w in 0..<concurrency {
                group.addTask {
                    var out: [Double] = []
                    for i in stride(from: w, to: count, by: concurrency) {
                        out.append(await timed(shas[i % shas.count]))
                    }
                    return out
                }
            }
            var all: [Double] = []
            for await part in group { all += part }
            return all
        }
        let concurrentSeconds = (ContinuousClock.now - t1).inSeconds
        func summary(_ xs: [Double], seconds: Double) -> [String: Double] {
            let s = xs.sorted()
            func p(_ q: Double) -> Double { s[min(s.count - 1, Int(Double(s.count) * q))] }
            return [
                "p50_ms": p(0.50), "p99_ms": p(0.99), "max_ms": s.last ?? 0,
                "lookups_per_s": Double(xs.count) / seconds,
            ]
        }
        let out: [String: Any] = [
            "count": count, "concurrency": concurrency,
            "value_bytes": VectorValue.encode(
                CachedEmbedding(vector: [Float](repeating: 0, count: 2048), imageSHA256: shas[0]), key: key
            ).count,
            "serial": summary(serial, seconds: serialSeconds),
            "concurrent": summary(concurrent, seconds: concurrentSeconds),
            "errors": cache.statistics.errors,
        ]
        print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
    }
}
