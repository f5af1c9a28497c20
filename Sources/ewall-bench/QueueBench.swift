import EwallML
import Foundation

/// `ewall-bench queue --db postgres://... --items N --workers W [--vectors]`: the shared job's
/// queue alone, the model replaced by a no-op. Submits N items in chunks of 256, then W
/// workers (tasks with their own connections) claim chunks and commit their items' outcomes in
/// batches of 32 until the job is done. Without `--vectors` a commit carries the item states
/// only (the queue's own cost); with it, a 2048-d float32 vector and a ledger row per item too
/// (what a real worker writes). Prints one JSON object: items/s for submit and for claim+commit.
enum QueueBench {
    static func run(_ args: [String]) async throws {
        func opt(_ name: String, _ fallback: String) -> String {
            args.firstIndex(of: name).flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil } ?? fallback
        }
        let items = Int(opt("--items", "100000"))!
        let workers = Int(opt("--workers", "1"))!
        let batch = Int(opt("--batch", "32"))!
        let vectors = args.contains("--vectors")
        let store = try await StoreLocation(parsing: opt("--db", "")).open()
        let queue = try await PostgresJobQueue.over(store)
        let key = ModelKey(modelID: "bench@noop", preprocessing: "squash224")
        let job = "bench-\(workers)w-\(vectors ? "vec" : "state")-\(UUID().uuidString.prefix(8))"

        var next = 0
        let t0 = ContinuousClock.now
        _ = try await queue.submit(
            JobSpec(
                name: job, manifest: "synthetic", manifestSHA256: "0", key: key, chunkSize: 256,
                submittedBy: "bench"), counts: { SubmitCounts() },
            items: {
                let n = min(4096, items - next)
                defer { next += n }
                return (next..<(next + n)).map {
                    QueuedItem(productID: "b\($0)", imageURL: "http://cdn.example/\($0).jpg", line: $0 + 2)
                }
            })
        let submitSeconds = (ContinuousClock.now - t0).seconds
        // Random values, as real vectors are: PostgreSQL's TOAST compression would shrink a
        // constant vector to nothing and flatter the sizes.
        var g = SystemRandomNumberGenerator()
        let vector = (0..<2048).map { _ in Float.random(in: 0..<0.05, using: &g) }

        let t1 = ContinuousClock.now
        let claims = Counter()
        let commits = Counter()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for w in 0..<workers {
                group.addTask {
                    let name = "bench-\(w)"
                    try await queue.join(job: job, worker: name, key: key)
                    while true {
                        switch try await queue.claim(job: job, worker: name, lease: .seconds(60)) {
                        case .chunk(let c):
                            claims.add(1)
                            let lease = ChunkLease(chunk: c.chunk, generation: c.generation)
                            for start in stride(from: 0, to: c.items.count, by: batch) {
                                let slice = c.items[start..<min(start + batch, c.items.count)]
                                var write = WriteBatch()
                                if vectors {
                                    for i in slice {
                                        write.embeddings.append(
                                            StoredEmbedding(
                                                productID: i.productID, imageURL: i.imageURL, key: key,
                                                vector: vector, imageSHA256: String(repeating: "a", count: 64)))
                                        write.ledger.append(
                                            LedgerEntry(
                                                productID: i.productID, imageURL: i.imageURL, key: key,
                                                status: .embedded, httpStatus: 200, attempts: 1))
                                    }
                                }
                                let r = try await queue.commit(
                                    job: job, worker: name, batch: write,
                                    outcomes: slice.map {
                                        ItemOutcome(lease: lease, productID: $0.productID, status: .embedded)
                                    }, lease: .seconds(60))
                                precondition(r.refused.isEmpty)
                                commits.add(1)
                            }
                        case .wait(let d): try await Task.sleep(for: d)
                        case .finished, .cancelled: return
                        }
                    }
                }
            }
            try await group.waitForAll()
        }
        let workSeconds = (ContinuousClock.now - t1).seconds
        let status = try await queue.status(job: job)
        precondition(status.done == items && status.workers.map(\.items).reduce(0, +) == items, "items lost or doubled")
        await store.close()
        let out: [String: Any] = [
            "items": items, "workers": workers, "batch": batch, "vectors": vectors, "chunks": claims.value,
            "commits": commits.value,
            "submit_seconds": submitSeconds, "submit_items_per_s": Double(items) / submitSeconds,
            "work_seconds": workSeconds, "items_per_s": Double(items) / workSeconds,
        ]
        print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
    }

    final class Counter: Sendable {
        private let n = Locked(0)
        func add(_ k: Int) { n.withLock { $0 += k } }
        var value: Int { n.withLock { $0 } }
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
