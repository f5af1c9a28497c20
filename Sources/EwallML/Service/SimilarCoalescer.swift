import EwallCore
import EwallIndex
import Metrics

/// Concurrent similar-products searches, searched together: a request that arrives while
/// others wait or run joins the next batch, and a batch is one ``ProductSearch/similar(batch:)``
/// (for IVF, one coarse pass for all of its queries, then each query's own lists and filter).
/// A request that finds nothing in flight starts at once (no wait for company): a quiet server
/// answers each query alone, a busy one in batches of up to `maxBatch`.
///
/// Up to `lanes` batches run at once, each on a thread of its own (a lane takes the waiting
/// requests when its batch is done), so a busy server searches on every core it is given
/// rather than on one thread with the rest idle.
///
/// Each request carries the index snapshot it took when it arrived and is answered from it,
/// exactly as it would be alone; a batch groups its requests by snapshot.
final class SimilarCoalescer: Sendable {
    typealias Answer = Result<SimilarAnswer, any Error>

    private struct Waiting: Sendable {
        let search: ProductSearch
        let request: SimilarRequest
        let continuation: CheckedContinuation<Answer, Never>
    }

    private struct State: Sendable {
        var queue: [Waiting] = []
        /// Drains running (or about to): new requests just queue once all lanes are busy.
        var running = 0
    }

    private let state = Locked(State())
    /// FAISS work runs here, off Swift's cooperative pool: one thread per lane.
    private let worker: BlockingWorker
    let maxBatch: Int
    /// Batches searched at once.
    let lanes: Int
    private let batchSize: Recorder

    init(maxBatch: Int = 64, lanes: Int = 1, metrics: any MetricsFactory) {
        self.maxBatch = max(1, maxBatch)
        self.lanes = max(1, lanes)
        worker = BlockingWorker(name: "ewall-similar", threads: self.lanes)
        batchSize = Recorder(label: "ewall_similar_batch_size", dimensions: [], aggregate: true, factory: metrics)
    }

    /// Answers `request` from `search`, together with whatever requests are in flight.
    func answer(_ request: SimilarRequest, on search: ProductSearch) async -> Answer {
        await withCheckedContinuation { continuation in
            let lead = state.withLock { s -> Bool in
                s.queue.append(Waiting(search: search, request: request, continuation: continuation))
                if s.running >= lanes { return false }
                s.running += 1
                return true
            }
            if lead {
                let worker = self.worker
                Task.detached { await worker.run { self.drain() } }
            }
        }
    }

    /// Runs batches until the queue is empty: each takes up to `maxBatch` waiting requests (in
    /// arrival order); requests that arrive meanwhile form the next (this lane's or another's).
    private func drain() {
        while true {
            let batch = state.withLock { s -> [Waiting] in
                if s.queue.isEmpty {
                    s.running -= 1
                    return []
                }
                let n = min(maxBatch, s.queue.count)
                defer { s.queue.removeFirst(n) }
                return Array(s.queue.prefix(n))
            }
            if batch.isEmpty { return }
            var groups: [ObjectIdentifier: [Int]] = [:]
            var order: [ObjectIdentifier] = []
            for (i, w) in batch.enumerated() {
                let key = ObjectIdentifier(w.search)
                if groups[key] == nil { order.append(key) }
                groups[key, default: []].append(i)
            }
            for key in order {
                let members = groups[key]!
                batchSize.record(members.count)
                let answers = batch[members[0]].search.similar(batch: members.map { batch[$0].request })
                for (j, i) in members.enumerated() { batch[i].continuation.resume(returning: answers[j]) }
            }
        }
    }
}
