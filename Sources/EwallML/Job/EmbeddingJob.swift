import EwallCore
import EwallFetch
import EwallStore
import Foundation
import Logging

/// What an ``EmbeddingJob`` does, with documented defaults.
public struct EmbeddingJobConfiguration: Sendable {
    /// CSV, TSV or JSON Lines (see ``ManifestReader``).
    public var manifestPath: String
    /// Timeouts, retries, per-host limit, byte cap. Relative paths in the manifest are
    /// resolved against the manifest's folder unless `fetch.baseDirectory` says otherwise.
    public var fetch: FetchConfiguration
    /// Fetches in flight over all hosts (default 32; `fetch.perHostLimit` caps each host).
    public var concurrency: Int
    /// Retry items whose last failure was transient (timeout, connection, 5xx, 429).
    public var retryFailed: Bool
    /// Redo every item, embedded or failed before.
    public var force: Bool
    /// Rows looked up in the store at a time when deciding what to skip.
    public var lookupChunk: Int
    /// Decoded images waiting for the model (default 64, two batches): enough that the
    /// model never waits on a network hiccup, small enough to keep memory flat.
    public var preparedQueue: Int
    /// What ids, URLs and titles in the manifest must meet (a row that breaks one is a bad row).
    public var inputRules = InputRules()
    /// How long the job waits for a store that stopped answering (unreachable, restarting,
    /// busy) before it stops with a systemic error (default 60 s). While it waits, the
    /// progress line says so and why; nothing committed is lost either way.
    public var storeWaitLimit: Duration = .seconds(60)
    /// One store call that takes longer than this counts as no answer (default 15 s).
    public var storeCallTimeout: Duration = .seconds(15)

    public init(manifestPath: String, fetch: FetchConfiguration = FetchConfiguration(), concurrency: Int = 32,
                retryFailed: Bool = false, force: Bool = false, lookupChunk: Int = 512, preparedQueue: Int = 64) {
        self.manifestPath = manifestPath
        self.fetch = fetch
        self.concurrency = concurrency
        self.retryFailed = retryFailed
        self.force = force
        self.lookupChunk = lookupChunk
        self.preparedQueue = preparedQueue
        if self.fetch.baseDirectory == nil {
            self.fetch.baseDirectory = URL(fileURLWithPath: manifestPath).deletingLastPathComponent().path
        }
    }
}

/// The batch job: a manifest of product images in, vectors and a ledger of every outcome in
/// the store.
///
/// Stages, each its own task(s), joined by bounded queues so memory stays flat however long
/// the manifest is:
///
/// ```
/// manifest rows ─▶ [skip check] ─▶ fetch (N, per-host limited) ─▶ decode ─▶ batch of 32 ─▶ model ─▶ write (1 transaction)
/// ```
///
/// Fetching and decoding run ahead of the model (up to ``EmbeddingJobConfiguration/preparedQueue``
/// images), so the model is not left waiting on the network while work is available. A
/// failed item is a ledger row and a ``JobFailure``, never its batch's problem. What is
/// written is committed per batch: a job killed at any moment loses only the items in
/// flight, which the next run does again.
public final class EmbeddingJob: Sendable {
    public let configuration: EmbeddingJobConfiguration
    public let embedder: ImageEmbedder
    public let store: any EmbeddingStore
    private let logger: Logger
    private let stopFlag = StopFlag()

    public init(configuration: EmbeddingJobConfiguration, embedder: ImageEmbedder, store: any EmbeddingStore,
                logger: Logger = Logger(label: "ewall.job")) {
        self.configuration = configuration
        self.embedder = embedder
        self.store = store
        self.logger = logger
    }

    /// The model key every vector of this job is stored under.
    public var key: ModelKey { ModelKey(modelID: embedder.modelID, preprocessing: embedder.configuration.preprocessing.rawValue) }

    /// Asks the job to stop: no new items are started, the items already decoded are
    /// embedded and written (the current batch), and ``run(progressInterval:onProgress:onFailure:)``
    /// returns with `interrupted` set. Items not finished are not recorded: a rerun does them.
    public func stop() {
        stopFlag.set()
    }

    private struct WorkItem: Sendable {
        var row: ManifestRow
        var location: ImageLocation
    }

    private enum Fetched: Sendable {
        case bytes(WorkItem, FetchedImage)
        case failed(WorkItem, JobFailure)
    }

    private enum Prepared: Sendable {
        case ready(WorkItem, FetchedImage, PreparedImage)
        case failed(WorkItem, JobFailure)
    }

    private struct Unit: Sendable {
        var batch: WriteBatch
        var failures: [JobFailure]
    }

    /// Runs the job to the manifest's end (or ``stop()``). Throws only systemic errors: the
    /// manifest cannot be read, the store fails. `onProgress` is called every
    /// `progressInterval` seconds and once at the end; `onFailure` for every bad row and
    /// failed item, after its ledger row is committed.
    public func run(progressInterval: Double = 5,
                    onProgress: @escaping @Sendable (JobProgress) -> Void = { _ in },
                    onFailure: @escaping @Sendable (JobFailure) -> Void = { _ in }) async throws -> JobSummary {
        let config = configuration
        let reader = try ManifestReader(path: config.manifestPath, rules: config.inputRules,
                                        baseDirectory: config.fetch.baseDirectory)
        let estimated = ManifestReader.estimateRows(path: config.manifestPath)
        let fetcher = ImageFetcher(configuration: config.fetch, logger: logger)
        let stats = JobStats()
        let start = ContinuousClock.now
        let key = self.key

        let fetchQueue = BoundedQueue<WorkItem>(capacity: max(8, config.concurrency * 2))
        let fetchedQueue = BoundedQueue<Fetched>(capacity: 16)
        let preparedQueue = BoundedQueue<Prepared>(capacity: config.preparedQueue)
        let writeQueue = BoundedQueue<Unit>(capacity: 1)
        let queues: @Sendable () -> Void = {
            fetchQueue.cancel(); fetchedQueue.cancel(); preparedQueue.cancel(); writeQueue.cancel()
        }

        func elapsed() -> Double { (ContinuousClock.now - start).inSeconds }
        func progress() -> JobProgress {
            let (counts, _, _, _) = stats.snapshot()
            let t = elapsed()
            let rate = Double(counts.embedded) / max(t, 1e-9)
            let doneRate = Double(counts.done) / max(t, 1e-9)
            let eta = estimated.flatMap { est in doneRate > 0 && est > counts.done ? Double(est - counts.done) / doneRate : nil }
            return JobProgress(counts: counts, estimatedRows: estimated, elapsed: t, imagesPerSecond: rate, eta: eta,
                               storeProblem: stats.currentStoreWait)
        }

        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Int(progressInterval * 1000)))
                if Task.isCancelled { break }
                onProgress(progress())
            }
        }
        // The fetch stage is cancellable on its own: stopping cancels requests in flight.
        let fetchStage = Task {
            await withTaskGroup(of: Void.self) { group in
                for _ in 0..<max(1, config.concurrency) {
                    group.addTask {
                        while let item = await fetchQueue.next() {
                            if self.stopFlag.isSet || Task.isCancelled { continue }
                            let t0 = ContinuousClock.now
                            let result = await fetcher.fetch(item.location)
                            stats.time(\.fetch, (ContinuousClock.now - t0).inSeconds)
                            switch result {
                            case .success(let image):
                                await fetchedQueue.send(.bytes(item, image))
                            case .failure(let e) where e.code == ImageFetcher.cancelled:
                                continue  // stopping: not a failure, the next run does it
                            case .failure(let e):
                                await fetchedQueue.send(.failed(item, JobFailure(
                                    line: item.row.line, productID: item.row.product.id, imageURL: item.row.imageURL,
                                    errorClass: e.code, stage: "fetch", message: e.message, httpStatus: e.httpStatus,
                                    attempts: e.attempts)))
                            }
                        }
                    }
                }
            }
            fetchedQueue.finish()
        }
        let stopWatcher = Task {
            while !Task.isCancelled && !stopFlag.isSet { try? await Task.sleep(for: .milliseconds(100)) }
            if stopFlag.isSet {
                fetchQueue.cancel()
                fetchStage.cancel()
            }
        }

        var systemic: (any Error)?
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                // 1. Manifest rows -> store lookups -> work items.
                group.addTask {
                    defer { fetchQueue.finish() }
                    var chunk: [ManifestRow] = []
                    func flush() async throws {
                        if chunk.isEmpty { return }
                        try await self.schedule(chunk, key: key, stats: stats, queue: fetchQueue)
                        chunk.removeAll(keepingCapacity: true)
                    }
                    while !self.stopFlag.isSet, let next = reader.next() {
                        stats.update { $0.rows += 1 }
                        switch next {
                        case .success(let row):
                            chunk.append(row)
                            if chunk.count >= config.lookupChunk { try await flush() }
                        case .failure(let p):
                            stats.update { $0.badRows += 1 }
                            onFailure(JobFailure(line: p.line, productID: p.productID, imageURL: p.imageURL,
                                                 errorClass: FailureClass.badRow, stage: "manifest", message: p.message,
                                                 httpStatus: nil, attempts: 0))
                        }
                    }
                    if !self.stopFlag.isSet { try await flush() }
                    let dups = reader.duplicates
                    stats.update { $0.duplicates = dups; $0.rows += dups }
                }
                // 2. Fetch: started above as `fetchStage`.
                group.addTask { await fetchStage.value }
                // 3. Decode and preprocess, on the embedder's decode threads.
                group.addTask {
                    await withTaskGroup(of: Void.self) { decoders in
                        for _ in 0..<max(1, self.embedder.configuration.decodeThreads) {
                            decoders.addTask {
                                while let f = await fetchedQueue.next() {
                                    switch f {
                                    case .failed(let item, let failure):
                                        await preparedQueue.send(.failed(item, failure))
                                    case .bytes(let item, let image):
                                        let t0 = ContinuousClock.now
                                        let r = await self.embedder.prepare(image.bytes)
                                        stats.time(\.decode, (ContinuousClock.now - t0).inSeconds)
                                        switch r {
                                        case .success(let p):
                                            await preparedQueue.send(.ready(item, image, p))
                                        case .failure(let e):
                                            await preparedQueue.send(.failed(item, JobFailure(
                                                line: item.row.line, productID: item.row.product.id, imageURL: item.row.imageURL,
                                                errorClass: e.code, stage: e.stage.rawValue, message: e.message,
                                                httpStatus: image.httpStatus, attempts: image.attempts)))
                                        }
                                    }
                                }
                            }
                        }
                    }
                    preparedQueue.finish()
                }
                // 4. Batches of the model's size -> vectors -> write units.
                group.addTask {
                    defer { writeQueue.finish() }
                    let size = self.embedder.embedder.batchSize
                    var ready: [(WorkItem, FetchedImage, PreparedImage)] = []
                    var failures: [(WorkItem, JobFailure)] = []
                    func ship() async {
                        var unit = Unit(batch: WriteBatch(), failures: [])
                        if !ready.isEmpty {
                            let t0 = ContinuousClock.now
                            let vectors = await self.embedder.embed(prepared: ready.map(\.2))
                            stats.time(\.infer, (ContinuousClock.now - t0).inSeconds)
                            for ((item, image, _), v) in zip(ready, vectors) {
                                switch v {
                                case .success(let e):
                                    unit.batch.embeddings.append(StoredEmbedding(
                                        productID: item.row.product.id, imageURL: item.row.imageURL, key: key, vector: e.vector,
                                        imageSHA256: image.sha256, width: e.image.width, height: e.image.height,
                                        bytes: image.bytes.count, contentType: image.contentType))
                                    unit.batch.ledger.append(LedgerEntry(
                                        productID: item.row.product.id, imageURL: item.row.imageURL, key: key, status: .embedded,
                                        httpStatus: image.httpStatus, attempts: image.attempts))
                                case .failure(let f):
                                    failures.append((item, JobFailure(
                                        line: item.row.line, productID: item.row.product.id, imageURL: item.row.imageURL,
                                        errorClass: f.code, stage: f.stage.rawValue, message: f.message,
                                        httpStatus: image.httpStatus, attempts: image.attempts)))
                                }
                            }
                        }
                        for (item, f) in failures {
                            unit.batch.ledger.append(LedgerEntry(
                                productID: item.row.product.id, imageURL: item.row.imageURL, key: key, status: .failed,
                                errorClass: f.errorClass, httpStatus: f.httpStatus, attempts: f.attempts, lastError: f.message))
                            unit.failures.append(f)
                        }
                        ready.removeAll(keepingCapacity: true)
                        failures.removeAll(keepingCapacity: true)
                        if !unit.batch.isEmpty { await writeQueue.send(unit) }
                    }
                    while let p = await preparedQueue.next() {
                        switch p {
                        case .ready(let item, let image, let prepared): ready.append((item, image, prepared))
                        case .failed(let item, let failure): failures.append((item, failure))
                        }
                        if ready.count >= size || failures.count >= 2 * size { await ship() }
                    }
                    await ship()
                }
                // 5. One transaction per unit.
                group.addTask {
                    while let unit = await writeQueue.next() {
                        let t0 = ContinuousClock.now
                        do {
                            let store = self.store
                            try await self.withStore("writing a batch", stats: stats) { try await store.write(unit.batch) }
                        } catch {
                            queues()
                            self.stopFlag.set()
                            throw error
                        }
                        stats.time(\.write, (ContinuousClock.now - t0).inSeconds)
                        stats.update { $0.embedded += unit.batch.embeddings.count }
                        for f in unit.failures {
                            stats.failed(f.errorClass)
                            onFailure(f)
                        }
                    }
                }
                do {
                    try await group.waitForAll()
                } catch {
                    queues()
                    fetchStage.cancel()
                    throw error
                }
            }
        } catch {
            systemic = error
        }
        ticker.cancel()
        stopWatcher.cancel()
        try? await fetcher.shutdown()
        onProgress(progress())
        let summary = makeSummary(stats: stats, wall: elapsed(), error: systemic.map(Self.systemicFailure))
        if let systemic { throw JobAborted(summary: summary, underlying: systemic) }
        return summary
    }

    /// The failure as the summary states it: a stable code and the message a user acts on.
    static func systemicFailure(_ error: any Error) -> SystemicFailure {
        switch error {
        case let e as StoreError: return SystemicFailure(code: e.code.rawValue, message: e.message)
        case let e as ManifestError: return SystemicFailure(code: "manifest_unreadable", message: e.message)
        default: return SystemicFailure(code: "internal", message: "\(error)")
        }
    }

    private func makeSummary(stats: JobStats, wall: Double, error: SystemicFailure?) -> JobSummary {
        let config = configuration, key = self.key
        let (counts, failures, skippedFailures, stages) = stats.snapshot()
        var byClass = failures
        if counts.badRows > 0 { byClass[FailureClass.badRow] = counts.badRows }
        return JobSummary(
            manifest: config.manifestPath, store: store.displayName, modelID: key.modelID, preprocessing: key.preprocessing,
            precision: embedder.precision.rawValue, randomInitModel: embedder.card?.pretrained == false, counts: counts,
            failuresByClass: byClass, skippedFailedByClass: skippedFailures, seconds: wall,
            imagesPerSecond: Double(counts.embedded) / max(wall, 1e-9), stageSeconds: stages,
            modelBusy: min(1, stages.infer / max(wall, 1e-9)), interrupted: stopFlag.isSet && error == nil, error: error)
    }

    /// Runs one store call, waiting for the store while it does not answer: each call is
    /// bounded by ``EmbeddingJobConfiguration/storeCallTimeout``; a transient failure (the
    /// server is down, restarting or busy) is retried with backoff for up to
    /// ``EmbeddingJobConfiguration/storeWaitLimit``, with the reason (asked of the store
    /// itself) on the progress line. Store calls are idempotent upserts, so a call that timed
    /// out after committing is harmless to repeat. Other store errors are thrown at once.
    private func withStore<T: Sendable>(_ what: String, stats: JobStats,
                                        _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let limit = configuration.storeWaitLimit.inSeconds
        // A call that takes longer than the whole wait is no answer either (never under 5 s).
        let timeout = min(configuration.storeCallTimeout, max(.seconds(5), configuration.storeWaitLimit))
        var firstFailure: ContinuousClock.Instant?
        var delay = 0.25
        while true {
            do {
                let value = try await Self.deadline(timeout, store: store.displayName, body)
                if firstFailure != nil {
                    stats.setStoreWait(nil)
                    logger.warning("the store \(store.displayName) answers again; the job goes on")
                }
                return value
            } catch let e as StoreError where e.isTransient {
                let now = ContinuousClock.now
                if firstFailure == nil {
                    firstFailure = now
                }
                let waited = (now - firstFailure!).inSeconds
                let reason = await store.diagnose() ?? e.message
                if waited >= limit || Task.isCancelled {
                    stats.setStoreWait(nil)
                    throw StoreError(e.code, "the store \(store.displayName) did not answer for \(Int(waited.rounded())) s "
                                     + "(limit \(Int(limit)) s) while \(what): \(reason)", detail: e.debugDescription)
                }
                stats.setStoreWait(StoreWait(reason: reason, waited: waited, limit: limit))
                try await Task.sleep(for: .milliseconds(Int(min(delay, 5, max(0.05, limit - waited)) * 1000)))
                delay *= 2
            }
        }
    }

    /// `body`, or a transient ``StoreError`` when it takes longer than `limit`.
    private static func deadline<T: Sendable>(_ limit: Duration, store: String,
                                              _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T.self) { group in
            group.addTask { try await body() }
            group.addTask {
                try await Task.sleep(for: limit)
                throw StoreError(.unavailable, "\(store) gave no answer within \(limit)")
            }
            defer { group.cancelAll() }
            return try await group.next()!
        }
    }

    /// Stores the rows' products, then queues the rows that need work, skipping what the
    /// store says is done.
    private func schedule(_ rows: [ManifestRow], key: ModelKey, stats: JobStats, queue: BoundedQueue<WorkItem>) async throws {
        let store = self.store, products = rows.map(\.product), ids = rows.map(\.product.id)
        try await withStore("storing products", stats: stats) { try await store.upsertProducts(products, source: .manifest) }
        let states = configuration.force
            ? [:] : try await withStore("reading what is done", stats: stats) { try await store.states(productIDs: ids, key: key) }
        for row in rows {
            if let state = states[row.product.id] {
                if state.embeddedURL == row.imageURL {
                    stats.update { $0.skipped += 1 }
                    continue
                }
                if let l = state.ledger, l.status == .failed, l.imageURL == row.imageURL {
                    let cls = l.errorClass ?? "unknown"
                    if !(configuration.retryFailed && FailureClass.isTransient(cls)) {
                        stats.skippedFailed(cls)
                        continue
                    }
                }
            }
            if !(await queue.send(WorkItem(row: row, location: row.location))) { return }
        }
    }
}

/// A flag set once, read from any thread.
///
/// Safe because: `value` is only touched under `lock`.
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false

    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return value
    }

    func set() {
        lock.lock()
        value = true
        lock.unlock()
    }
}
