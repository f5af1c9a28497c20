import EwallCore
import EwallImaging
import EwallInference
import Foundation
import Metrics

/// Dynamic batching: single-image embeds from many concurrent callers are coalesced into
/// forward passes of up to `maxBatch` images, as model servers do. The batches are cut by a
/// ``BatchFormer`` (``BatchFormer/take(from:)``) from the queue of callers.
///
/// One runner task forms batches. When the model (a stream of it) is idle and an image arrives, the runner
/// waits at most `maxWait` for more (a quiet server pays that much latency, no more); while a
/// batch is in the model, new images queue, and the next batch starts as soon as the model is
/// free, so a busy server runs full batches back to back. Beyond `maxQueue` waiting images,
/// ``submit(_:)`` refuses at once with an estimate of when to retry.
final class EmbedBatcher: Sendable {
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

    private struct Pending: Sendable {
        let id: Int
        let tensor: ImageTensor
        let enqueued: ContinuousClock.Instant
        let done: CheckedContinuation<Result<[Float], InferenceError>, Never>
    }

    /// Everything that changes, behind one lock; continuations are resumed outside it.
    private struct State: Sendable {
        var queue: [Pending] = []
        /// The runner, while it waits.
        var wake: CheckedContinuation<Void, Never>?
        var wakeWhenFull = false
        /// Which wait a deadline timer belongs to, so a late timer never ends a later wait.
        var waitNumber = 0
        var accepting = true
        var statistics = Statistics()
        var nextID = 0
        /// Seconds the last forward pass took, for the retry estimate.
        var lastBatchSeconds = 1.0
    }

    let options: Options
    private let embedder: Embedder
    private let former: BatchFormer<Pending>
    private let state = Locked(State())

    private let batchSize: Recorder
    private let queueDepth: Recorder
    private let queueWait: Metrics.Timer
    private let forward: Metrics.Timer
    private let refusals: Counter

    init(embedder: Embedder, options: Options, metrics: any MetricsFactory) {
        self.embedder = embedder
        self.options = options
        former = BatchFormer(size: min(options.maxBatch, embedder.batchSize))
        batchSize = Recorder(label: "ewall_embed_batch_size", dimensions: [], aggregate: true, factory: metrics)
        queueDepth = Recorder(label: "ewall_embed_queue_depth", dimensions: [], aggregate: false, factory: metrics)
        queueWait = Metrics.Timer(label: "ewall_embed_queue_wait_seconds", dimensions: [], factory: metrics)
        forward = Metrics.Timer(label: "ewall_embed_forward_seconds", dimensions: [], factory: metrics)
        refusals = Counter(label: "ewall_embed_refused_total", dimensions: [], factory: metrics)
        queueDepth.record(0)
    }

    /// What ``submit(_:)`` decided under the lock, acted on outside it.
    private enum Admission {
        case cancelled, shuttingDown
        case refused(depth: Int, retryAfter: Duration)
        case queued(depth: Int, runner: CheckedContinuation<Void, Never>?)
    }

    /// Queues one preprocessed image and returns its vector once its batch has run.
    /// Throws ``EwallError`` `overloaded` when the queue is full and `shutting_down` after ``finish()``.
    ///
    /// Cancelling the calling task takes the image out of the queue if its batch has not
    /// started (the call then fails with `cancelled`); a batch that started finishes.
    func submit(_ tensor: ImageTensor) async throws(EwallError) -> Result<[Float], InferenceError> {
        let id = state.withLock { s -> Int in
            s.nextID += 1
            return s.nextID
        }
        var refusal: EwallError?
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (done: CheckedContinuation<Result<[Float], InferenceError>, Never>) in
                let admission = state.withLock { s -> Admission in
                    if Task.isCancelled { return .cancelled }
                    guard s.accepting else { return .shuttingDown }
                    guard s.queue.count < options.maxQueue else {
                        s.statistics.refused += 1
                        let batchesAhead = Double(s.queue.count / max(1, options.maxBatch) + 1)
                        let after = Duration.milliseconds(Int((batchesAhead * s.lastBatchSeconds * 1000).rounded(.up)))
                        return .refused(depth: s.queue.count, retryAfter: max(.seconds(1), after))
                    }
                    s.queue.append(Pending(id: id, tensor: tensor, enqueued: .now, done: done))
                    var runner: CheckedContinuation<Void, Never>?
                    if let w = s.wake, !s.wakeWhenFull || s.queue.count >= options.maxBatch {
                        runner = w
                        s.wake = nil
                    }
                    return .queued(depth: s.queue.count, runner: runner)
                }
                switch admission {
                case .cancelled:
                    done.resume(returning: .failure(InferenceError(.forwardFailed, "cancelled before its batch ran")))
                case .shuttingDown:
                    refusal = EwallError(.unavailable, "shutting_down", "the service is shutting down")
                    done.resume(returning: .failure(InferenceError(.forwardFailed, "refused")))
                case .refused(let depth, let retryAfter):
                    refusals.increment()
                    refusal = EwallError(
                        .overloaded, "overloaded",
                        "\(depth) images are waiting for the model (limit \(options.maxQueue)); retry later",
                        retryAfter: retryAfter)
                    done.resume(returning: .failure(InferenceError(.forwardFailed, "refused")))
                case .queued(let depth, let runner):
                    queueDepth.record(depth)
                    runner?.resume()
                }
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
                let (first, done) = state.withLock { ($0.queue.first?.enqueued, $0.queue.isEmpty && !$0.accepting) }
                if done { break }
                guard let first else { continue }
                // A stream is free and something waits: give others up to maxWait to join.
                let deadline = first + options.maxWait
                if deadline > .now { await waitUntil(full: true, deadline: deadline) }
                let (batch, depth) = state.withLock { s in (former.take(from: &s.queue), s.queue.count) }
                queueDepth.record(depth)
                if batch.isEmpty { continue }
                inModel.addTask { await self.runBatch(batch) }
                running += 1
            }
        }
    }

    /// Takes a cancelled caller's image out of the queue, if its batch has not started.
    private func cancel(_ id: Int) {
        let removed = state.withLock { s -> Pending? in
            guard let i = s.queue.firstIndex(where: { $0.id == id }) else { return nil }
            return s.queue.remove(at: i)
        }
        removed?.done.resume(returning: .failure(InferenceError(.forwardFailed, "cancelled before its batch ran")))
    }

    /// Stops accepting; the runner returns after the queued images have run.
    func finish() {
        let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.accepting = false
            defer { s.wake = nil }
            return s.wake
        }
        w?.resume()
    }

    var snapshot: Statistics { state.withLock { $0.statistics } }

    var depth: Int { state.withLock { $0.queue.count } }

    /// Suspends the runner until something is queued (`full == false`), or until a whole batch
    /// is queued or `deadline` passes (`full == true`), or until ``finish()``.
    private func waitUntil(full: Bool, deadline: ContinuousClock.Instant? = nil) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let wait = state.withLock { s -> Int? in
                let ready = full ? s.queue.count >= options.maxBatch : !s.queue.isEmpty
                if ready || !s.accepting { return nil }
                s.wake = c
                s.wakeWhenFull = full
                s.waitNumber += 1
                return s.waitNumber
            }
            guard let number = wait else {
                c.resume()
                return
            }
            if let deadline {
                Task { [weak self] in
                    try? await Task.sleep(until: deadline, clock: .continuous)
                    self?.resumeRunner(wait: number)
                }
            }
        }
    }

    private func resumeRunner(wait number: Int) {
        let w = state.withLock { s -> CheckedContinuation<Void, Never>? in
            guard number == s.waitNumber else { return nil }
            defer { s.wake = nil }
            return s.wake
        }
        w?.resume()
    }

    private func runBatch(_ batch: [Pending]) async {
        let start = ContinuousClock.now
        for p in batch { queueWait.recordNanoseconds((start - p.enqueued).inNanoseconds) }
        let results = await embedder.embedBatch(batch.map(\.tensor))
        let took = ContinuousClock.now - start
        forward.recordNanoseconds(took.inNanoseconds)
        batchSize.record(batch.count)
        state.withLock { s in
            s.statistics.images += batch.count
            s.statistics.batches += 1
            s.statistics.sizes[batch.count, default: 0] += 1
            s.lastBatchSeconds = took.inSeconds
        }
        for (p, r) in zip(batch, results) { p.done.resume(returning: r) }
    }
}
