import EwallCore
import EwallImaging
import EwallInference
import Foundation
import Metrics

/// Dynamic batching: single-image embeds from many concurrent callers are coalesced into
/// forward passes of up to `maxBatch` images, as model servers do.
///
/// One runner task forms batches. When the model (a stream of it) is idle and an image arrives, the runner
/// waits at most `maxWait` for more (a quiet server pays that much latency, no more); while a
/// batch is in the model, new images queue, and the next batch starts as soon as the model is
/// free, so a busy server runs full batches back to back. Beyond `maxQueue` waiting images,
/// ``submit(_:)`` refuses at once with an estimate of when to retry.
///
/// Safe because: `queue`, `wake`, `wakeWhenFull`, `accepting` and the statistics are only
/// touched under `lock`; continuations are resumed outside it.
final class EmbedBatcher: @unchecked Sendable {
    struct Options: Sendable {
        var maxBatch: Int
        var maxWait: Duration
        var maxQueue: Int
    }

    /// Counts of what the batcher did, for tests and benchmarks.
    struct Statistics: Sendable, Hashable {
        var images = 0
        var batches = 0
        var refused = 0
        /// Batches by size.
        var sizes: [Int: Int] = [:]
        var meanBatch: Double { batches == 0 ? 0 : Double(images) / Double(batches) }
    }

    private struct Pending {
        let id: Int
        let tensor: ImageTensor
        let enqueued: ContinuousClock.Instant
        let done: CheckedContinuation<Result<[Float], InferenceError>, Never>
    }

    let options: Options
    private let embedder: Embedder
    private let lock = NSLock()
    private var queue: [Pending] = []
    private var wake: CheckedContinuation<Void, Never>?
    private var wakeWhenFull = false
    /// Which wait a deadline timer belongs to, so a late timer never ends a later wait.
    private var waitNumber = 0
    private var accepting = true
    private var statistics = Statistics()
    private var nextID = 0
    /// Seconds the last forward pass took, for the retry estimate.
    private var lastBatchSeconds = 1.0

    private let batchSize: Recorder
    private let queueDepth: Recorder
    private let queueWait: Metrics.Timer
    private let forward: Metrics.Timer
    private let refusals: Counter

    init(embedder: Embedder, options: Options, metrics: any MetricsFactory) {
        self.embedder = embedder
        self.options = options
        batchSize = Recorder(label: "ewall_embed_batch_size", dimensions: [], aggregate: true, factory: metrics)
        queueDepth = Recorder(label: "ewall_embed_queue_depth", dimensions: [], aggregate: false, factory: metrics)
        queueWait = Metrics.Timer(label: "ewall_embed_queue_wait_seconds", dimensions: [], factory: metrics)
        forward = Metrics.Timer(label: "ewall_embed_forward_seconds", dimensions: [], factory: metrics)
        refusals = Counter(label: "ewall_embed_refused_total", dimensions: [], factory: metrics)
        queueDepth.record(0)
    }

    /// Queues one preprocessed image and returns its vector once its batch has run.
    /// Throws ``EwallError`` `overloaded` when the queue is full and `shutting_down` after ``finish()``.
    ///
    /// Cancelling the calling task takes the image out of the queue if its batch has not
    /// started (the call then fails with `cancelled`); a batch that started finishes.
    func submit(_ tensor: ImageTensor) async throws(EwallError) -> Result<[Float], InferenceError> {
        var refusal: EwallError?
        let id = lock.withLock { () -> Int in
            nextID += 1
            return nextID
        }
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (done: CheckedContinuation<Result<[Float], InferenceError>, Never>) in
                lock.lock()
                if Task.isCancelled {
                    lock.unlock()
                    done.resume(returning: .failure(InferenceError(.forwardFailed, "cancelled before its batch ran")))
                    return
                }
                guard accepting else {
                    lock.unlock()
                    refusal = EwallError(.unavailable, "shutting_down", "the service is shutting down")
                    done.resume(returning: .failure(InferenceError(.forwardFailed, "refused")))
                    return
                }
                guard queue.count < options.maxQueue else {
                    statistics.refused += 1
                    let batchesAhead = Double(queue.count / max(1, options.maxBatch) + 1)
                    let after = Duration.milliseconds(Int((batchesAhead * lastBatchSeconds * 1000).rounded(.up)))
                    let depth = queue.count
                    lock.unlock()
                    refusals.increment()
                    refusal = EwallError(
                        .overloaded, "overloaded",
                        "\(depth) images are waiting for the model (limit \(options.maxQueue)); retry later",
                        retryAfter: max(.seconds(1), after))
                    done.resume(returning: .failure(InferenceError(.forwardFailed, "refused")))
                    return
                }
                queue.append(Pending(id: id, tensor: tensor, enqueued: .now, done: done))
                let depth = queue.count
                var runner: CheckedContinuation<Void, Never>?
                if let w = wake, !wakeWhenFull || depth >= options.maxBatch {
                    runner = w
                    wake = nil
                }
                lock.unlock()
                queueDepth.record(depth)
                runner?.resume()
            }
        } onCancel: {
            self.cancel(id)
        }
        if let refusal { throw refusal }
        return result
    }

    /// Forms and runs batches until ``finish()`` is called and the queue is empty. With
    /// several model streams (``Embedder/streams``), that many batches run at once: the next
    /// one forms while the others are in the model.
    func run() async {
        await withTaskGroup(of: Void.self) { inModel in
            var running = 0
            while true {
                if running == embedder.streams {
                    await inModel.next()
                    running -= 1
                }
                await waitUntil(full: false)
                let (first, done) = lock.withLock { (queue.first?.enqueued, queue.isEmpty && !accepting) }
                if done { break }
                guard let first else { continue }
                // A stream is free and something waits: give others up to maxWait to join.
                let deadline = first + options.maxWait
                if deadline > .now { await waitUntil(full: true, deadline: deadline) }
                let (batch, depth) = lock.withLock { () -> ([Pending], Int) in
                    let n = min(options.maxBatch, queue.count)
                    let batch = Array(queue.prefix(n))
                    queue.removeFirst(n)
                    return (batch, queue.count)
                }
                queueDepth.record(depth)
                if batch.isEmpty { continue }
                inModel.addTask { await self.runBatch(batch) }
                running += 1
            }
        }
    }

    /// Takes a cancelled caller's image out of the queue, if its batch has not started.
    private func cancel(_ id: Int) {
        let removed = lock.withLock { () -> Pending? in
            guard let i = queue.firstIndex(where: { $0.id == id }) else { return nil }
            return queue.remove(at: i)
        }
        removed?.done.resume(returning: .failure(InferenceError(.forwardFailed, "cancelled before its batch ran")))
    }

    /// Stops accepting; the runner returns after the queued images have run.
    func finish() {
        lock.lock()
        accepting = false
        let w = wake
        wake = nil
        lock.unlock()
        w?.resume()
    }

    var snapshot: Statistics {
        lock.lock()
        defer { lock.unlock() }
        return statistics
    }

    var depth: Int {
        lock.lock()
        defer { lock.unlock() }
        return queue.count
    }

    /// Suspends the runner until something is queued (`full == false`), or until a whole batch
    /// is queued or `deadline` passes (`full == true`), or until ``finish()``.
    private func waitUntil(full: Bool, deadline: ContinuousClock.Instant? = nil) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            lock.lock()
            let ready = full ? queue.count >= options.maxBatch : !queue.isEmpty
            if ready || !accepting {
                lock.unlock()
                c.resume()
                return
            }
            wake = c
            wakeWhenFull = full
            waitNumber += 1
            let number = waitNumber
            lock.unlock()
            if let deadline {
                Task { [weak self] in
                    try? await Task.sleep(until: deadline, clock: .continuous)
                    self?.resumeRunner(wait: number)
                }
            }
        }
    }

    private func resumeRunner(wait number: Int) {
        lock.lock()
        guard number == waitNumber else {
            lock.unlock()
            return
        }
        let w = wake
        wake = nil
        lock.unlock()
        w?.resume()
    }

    private func runBatch(_ batch: [Pending]) async {
        let start = ContinuousClock.now
        for p in batch { queueWait.recordNanoseconds((start - p.enqueued).inNanoseconds) }
        let results = await embedder.embedBatch(batch.map(\.tensor))
        let took = ContinuousClock.now - start
        forward.recordNanoseconds(took.inNanoseconds)
        batchSize.record(batch.count)
        lock.withLock {
            statistics.images += batch.count
            statistics.batches += 1
            statistics.sizes[batch.count, default: 0] += 1
            lastBatchSeconds = took.inSeconds
        }
        for (p, r) in zip(batch, results) { p.done.resume(returning: r) }
    }
}
