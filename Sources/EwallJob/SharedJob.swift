import Crypto
import EwallCore
import EwallEmbedding
import EwallFetch
import EwallRedis
import EwallStore
import Foundation
import Logging

/// How a shared job is split and leased, with documented defaults.
public struct SharedJobConfiguration: Sendable {
    /// Items per chunk, the unit a worker claims (default 256: a few seconds of one CPU
    /// worker, a fraction of a second of a GPU one).
    public var chunkSize = 256
    /// A claim holds for this long unless renewed (default 60 s). A worker that dies, freezes
    /// or loses the database loses its chunks this long after its last renewal.
    public var lease: Duration = .seconds(60)
    /// How often a working worker renews its leases (default 15 s; every commit renews too).
    public var heartbeat: Duration = .seconds(15)
    /// Chunks one worker holds at once (default 2: the one in progress and the next, so the
    /// model does not wait on a claim, and no worker hoards chunks that others could run or
    /// that wait for a lease to expire when it dies).
    public var maxHeldChunks = 2
    /// A worker that follows the job waits for its next run when this one has nothing left (or
    /// was cancelled), and for a job not submitted yet, instead of returning; it stops on
    /// ``JobWorker/stop()`` only (`ewall-embed --worker --follow`, for `ewall sync --job`'s
    /// rounds). Off by default.
    public var follow = false
    /// How often a following worker looks for the next run (default 100 ms: one small claim
    /// transaction per worker 10 times a second while the job is idle).
    public var followPoll: Duration = .milliseconds(100)

    public init() {}
}

/// Submitting a manifest as a shared job: streamed once into the store, items grouped into
/// chunks, in one transaction.
public enum JobSubmission {
    /// What a submission stored.
    public struct Result: Sendable, Codable {
        public var job: String
        public var runID: Int64
        public var manifest: String
        public var manifestSHA256: String
        public var modelID: String
        public var preprocessing: String
        public var counts: SubmitCounts
        public var chunks: Int

        enum CodingKeys: String, CodingKey {
            case job, manifest, counts, chunks
            case runID = "run_id", manifestSHA256 = "manifest_sha256", modelID = "model_id", preprocessing
        }
    }

    /// Reads the manifest once, stores the products, decides (as a rerun does) what needs
    /// work, and stores that as job `name` for workers to claim. Refuses while a run of the
    /// same name is running; refuses a manifest that changes while it is read (nothing is
    /// stored then). Bad rows are reported through `onFailure` and counted.
    public static func submit(
        name: String, job: EmbeddingJobConfiguration, shared: SharedJobConfiguration,
        key: ModelKey, queue: PostgresJobQueue, submittedBy: String,
        onFailure: @escaping @Sendable (JobFailure) -> Void = { _ in },
        logger: Logger = Logger(label: "ewall.job")
    ) async throws -> Result {
        let path = job.manifestPath
        let before = try sha256(of: path)
        let reader = try ManifestReader(path: path, rules: job.inputRules, baseDirectory: job.fetch.baseDirectory)
        let stats = JobStats()
        // The skip rules of a rerun, against the same store.
        let rules = EmbeddingJobRules(configuration: job, store: queue.store, key: key, logger: logger)
        let spec = JobSpec(
            name: name, manifest: URL(fileURLWithPath: path).standardizedFileURL.path, manifestSHA256: before,
            key: key, chunkSize: shared.chunkSize, submittedBy: submittedBy)
        let runID = try await queue.submit(
            spec,
            counts: {
                let (c, _, _, _) = stats.snapshot()
                var s = SubmitCounts()
                s.rows = c.rows
                s.skipped = c.skipped
                s.skippedFailed = c.skippedFailed
                s.badRows = c.badRows
                s.duplicates = c.duplicates
                return s
            },
            items: {
                var rows: [ManifestRow] = []
                while rows.count < job.lookupChunk, let next = reader.next() {
                    stats.update { $0.rows += 1 }
                    switch next {
                    case .success(let row): rows.append(row)
                    case .failure(let p):
                        stats.update { $0.badRows += 1 }
                        onFailure(
                            JobFailure(
                                line: p.line, productID: p.productID, imageURL: p.imageURL,
                                errorClass: FailureClass.badRow, stage: "manifest", message: p.message,
                                httpStatus: nil, attempts: 0))
                    }
                }
                if rows.isEmpty {
                    let dups = reader.duplicates
                    stats.update {
                        $0.duplicates = dups
                        $0.rows += dups
                    }
                    // The manifest must be the one hashed: a file rewritten under us is refused whole.
                    guard try sha256(of: path) == before else {
                        throw ManifestError(
                            "the manifest \(path) changed while it was being submitted; nothing was stored: "
                                + "submit again once it is written")
                    }
                    return []
                }
                return try await rules.needingWork(rows, stats: stats)
                    .map { QueuedItem(productID: $0.product.id, imageURL: $0.imageURL, line: $0.line) }
            })
        let status = try await queue.status(job: name)
        return Result(
            job: name, runID: runID, manifest: spec.manifest, manifestSHA256: before, modelID: key.modelID,
            preprocessing: key.preprocessing, counts: status.submitted, chunks: status.chunks)
    }

    /// SHA-256 of a file, hex, read in 4 MiB pieces.
    static func sha256(of path: String) throws -> String {
        guard let h = FileHandle(forReadingAtPath: path) else {
            throw ManifestError("cannot open the manifest \(path)")
        }
        defer { try? h.close() }
        var hasher = SHA256()
        while true {
            let chunk = h.readData(ofLength: 4 << 20)
            if chunk.isEmpty { break }
            hasher.update(data: chunk)
        }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}

/// The rerun rules of ``EmbeddingJob`` (what is done, what failed and stays failed), usable
/// without running a job.
struct EmbeddingJobRules: Sendable {
    let configuration: EmbeddingJobConfiguration
    let store: any EmbeddingStore
    let key: ModelKey
    let logger: Logger

    func needingWork(_ rows: [ManifestRow], stats: JobStats) async throws -> [ManifestRow] {
        let store = self.store, products = rows.map(\.product), ids = rows.map(\.product.id), key = self.key
        let waiter = StoreWaiter(
            store: store, limit: configuration.storeWaitLimit, callTimeout: configuration.storeCallTimeout,
            logger: logger)
        try await waiter.call("storing products", stats: stats) {
            try await store.upsertProducts(products, source: .manifest)
        }
        let states =
            configuration.force
            ? [:]
            : try await waiter.call("reading what is done", stats: stats) {
                try await store.states(productIDs: ids, key: key)
            }
        return rows.filter { row in
            guard let state = states[row.product.id] else { return true }
            if state.embeddedURL == row.imageURL {
                stats.update { $0.skipped += 1 }
                return false
            }
            if let l = state.ledger, l.status == .failed, l.imageURL == row.imageURL {
                let cls = l.errorClass ?? "unknown"
                if !(configuration.retryFailed && FailureClass.isTransient(cls)) {
                    stats.skippedFailed(cls)
                    return false
                }
            }
            return true
        }
    }
}

/// One worker of a shared job: claims chunks under leases, runs their items through the same
/// pipeline as ``EmbeddingJob`` (fetch, decode, batches of 32, model) and commits each batch
/// with its item states in one transaction under its leases. Any number of workers on any
/// number of machines may run one job; a commit whose lease was taken over is refused, so an
/// item is never written twice and never lost.
public final class JobWorker: Sendable {
    public let job: String
    /// `host:pid` unless given: shown in `ewall job status` and in progress lines.
    public let name: String
    public let queue: PostgresJobQueue
    public let embedder: ImageEmbedder
    public let configuration: EmbeddingJobConfiguration
    public let shared: SharedJobConfiguration
    private let logger: Logger
    private let stopFlag = StopFlag()

    public init(
        job: String, name: String, queue: PostgresJobQueue, embedder: ImageEmbedder,
        configuration: EmbeddingJobConfiguration, shared: SharedJobConfiguration = SharedJobConfiguration(),
        logger: Logger = Logger(label: "ewall.worker")
    ) {
        self.job = job
        self.name = name
        self.queue = queue
        self.embedder = embedder
        self.configuration = configuration
        self.shared = shared
        self.logger = logger
    }

    /// The default worker name: this host and process.
    public static var defaultName: String {
        "\(ProcessInfo.processInfo.hostName):\(ProcessInfo.processInfo.processIdentifier)"
    }

    public var key: ModelKey { ModelKey(modelID: embedder.modelID, preprocessing: embedder.preprocessingID) }

    /// Finish the current batch, give back the leases, claim nothing more.
    public func stop() { stopFlag.set() }

    /// Works until the job has nothing left (or is cancelled, or ``stop()``). Refuses, before
    /// claiming anything, a job that does not exist or was submitted for another model key.
    public func run(
        progressInterval: Double = 5,
        onProgress: @escaping @Sendable (JobProgress) -> Void = { _ in },
        onFailure: @escaping @Sendable (JobFailure) -> Void = { _ in }
    ) async throws -> JobSummary {
        try await join()
        let stats = JobStats()
        let clock = JobClock()
        let leases = LeaseBook()
        let waiter = StoreWaiter(
            store: queue.store, limit: configuration.storeWaitLimit,
            callTimeout: configuration.storeCallTimeout, logger: logger)
        var fetch = configuration.fetch
        fetch.baseDirectory = fetch.baseDirectory ?? "/"
        let cache = await JobPipeline.cache(for: configuration, key: key, dimension: embedder.dimension, logger: logger)
        // With Redis, the per-host limit and hosts' pauses are shared through it; without, a
        // host's 429 + Retry-After seen by any worker pauses it for all through the store.
        if let cache { fetch.share(through: cache.client) }
        fetch.sharedPauses = fetch.sharedPauses ?? SharedHostPauses(StoreHostPauses(queue: queue, worker: name))
        let pipeline = JobPipeline(
            embedder: embedder, store: queue.store, fetcher: ImageFetcher(configuration: fetch, logger: logger),
            stats: stats,
            stopFlag: stopFlag, concurrency: configuration.concurrency, preparedQueue: configuration.preparedQueue,
            reuse: !configuration.force, cache: cache, logger: logger)
        let mirror = cache.map { BatchMirror(client: $0.client, job: job, owner: name) }
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Int(progressInterval * 1000)))
                if Task.isCancelled { break }
                onProgress(stats.progress(estimatedRows: nil, elapsed: clock.elapsed))
            }
        }
        let heartbeat = Task { await self.heartbeat(leases: leases, stats: stats) }
        let mirroring = mirror.map { m in Task { await self.mirror(m) } }
        var systemic: (any Error)?
        do {
            try await pipeline.run(
                feed: { try await self.feed(pipeline, leases: leases, waiter: waiter, stats: stats) },
                commit: { unit in
                    try await self.commit(unit, leases: leases, waiter: waiter, stats: stats, onFailure: onFailure)
                })
        } catch {
            systemic = error
        }
        heartbeat.cancel()
        ticker.cancel()
        mirroring?.cancel()
        // Chunks not finished (stopped, cancelled, failed) go back at once, not at expiry.
        try? await queue.release(job: job, leases: leases.all)
        if let mirror, let status = try? await queue.status(job: job, lease: shared.lease) {
            await mirror.finish(status: Self.json(status), runID: status.runID, done: status.status != "running")
        }
        await cache?.client.close()
        onProgress(stats.progress(estimatedRows: nil, elapsed: clock.elapsed))
        let summary = JobSummary(
            stats: stats, source: "job \(job)", store: queue.store.displayName, embedder: embedder,
            wall: clock.elapsed, interrupted: stopFlag.isSet && systemic == nil && !leases.cancelled,
            error: systemic.map(EmbeddingJob.systemicFailure), job: job, worker: name,
            hosts: pipeline.fetcher.hostTimings(), cache: cache?.statistics)
        if let systemic { throw JobAborted(summary: summary, underlying: systemic) }
        return summary
    }

    /// Joins the job; a following worker waits for a job that does not exist yet.
    /// Returns without joining when a following worker is stopped before the job exists.
    private func join() async throws {
        while true {
            do {
                try await queue.join(job: job, worker: name, key: key)
                return
            } catch let e as JobQueueError where e.code == .unknownJob && shared.follow {
                if stopFlag.isSet { return }
                try await Task.sleep(for: shared.followPoll)
            }
        }
    }

    /// Claims chunks and sends their items on, holding at most `maxHeldChunks` at once (the
    /// one in progress and the next); waits while other workers hold every pending chunk;
    /// returns when the job is done or cancelled (a following worker waits for the next run).
    private func feed(_ pipeline: JobPipeline, leases: LeaseBook, waiter: StoreWaiter, stats: JobStats) async throws {
        let base = configuration.fetch.baseDirectory
        // A following worker joins each new run again (a submission clears the workers), and so
        // is checked against the model key that run was submitted with.
        var rejoin = false
        while !stopFlag.isSet && !leases.cancelled {
            if leases.count >= shared.maxHeldChunks {
                try await Task.sleep(for: .milliseconds(20))
                continue
            }
            let (job, worker, lease, queue) = (self.job, self.name, shared.lease, self.queue)
            let claim = try await waiter.call("claiming a chunk", stats: stats) {
                try await queue.claim(job: job, worker: worker, lease: lease)
            }
            switch claim {
            case .chunk(let c):
                let lease = ChunkLease(chunk: c.chunk, generation: c.generation)
                if rejoin {
                    rejoin = false
                    do { try await queue.join(job: job, worker: worker, key: key) } catch {
                        try? await queue.release(job: job, leases: [lease])
                        throw error
                    }
                }
                if c.items.isEmpty { continue }
                leases.add(lease, items: c.items.map(\.productID))
                for item in c.items {
                    if leases.isLost(lease) || stopFlag.isSet { break }
                    var work: WorkItem
                    switch ImageLocation.parse(item.imageURL, baseDirectory: base, rules: configuration.inputRules) {
                    case .success(let location):
                        work = WorkItem(
                            row: ManifestRow(
                                line: item.line, product: Product(id: item.productID),
                                imageURL: item.imageURL, location: location), lease: lease)
                    case .failure(let e):
                        // Checked at submit; a URL this worker's rules refuse fails as invalid_url, unfetched.
                        work = WorkItem(
                            row: ManifestRow(
                                line: item.line, product: Product(id: item.productID),
                                imageURL: item.imageURL, location: .file("")), lease: lease)
                        work.refused = work.failure(e.code, stage: "fetch", e.message)
                    }
                    if !(await pipeline.send(work)) { return }
                }
            case .wait(let delay):
                // Every pending chunk is leased: to another worker (look again after `delay`), or
                // to this one, whose pipeline holds it (look again as soon as one of ours is done:
                // the job's next run, or its end, need not wait out `delay`).
                let held = leases.count
                let until = ContinuousClock.now + delay
                while held > 0 && leases.count >= held && ContinuousClock.now < until && !stopFlag.isSet {
                    try await Task.sleep(for: .milliseconds(20))
                }
                if held == 0 { try await Task.sleep(for: delay) }
            case .finished:
                guard shared.follow else { return }
                rejoin = true
                try await Task.sleep(for: shared.followPoll)
            case .cancelled:
                guard shared.follow else {
                    leases.cancelled = true
                    return
                }
                rejoin = true
                try await Task.sleep(for: shared.followPoll)
            }
        }
    }

    /// Commits a unit under its leases. Items of chunks taken over by another worker are not
    /// written (that worker does them) and are counted as `refused`.
    private func commit(
        _ unit: WriteUnit, leases: LeaseBook, waiter: StoreWaiter, stats: JobStats,
        onFailure: @Sendable (JobFailure) -> Void
    ) async throws -> WriteUnit {
        var failureClass: [String: String] = [:]
        for (item, f) in unit.failures { failureClass[item.row.product.id] = f.errorClass }
        let outcomes = unit.outcomes.compactMap { item, status -> ItemOutcome? in
            guard let lease = item.lease else { return nil }
            return ItemOutcome(
                lease: lease, productID: item.row.product.id, status: status,
                errorClass: failureClass[item.row.product.id])
        }
        let (job, worker, lease, queue, batch) = (self.job, self.name, shared.lease, self.queue, unit.batch)
        let result = try await waiter.call("committing a batch", stats: stats) {
            try await queue.commit(job: job, worker: worker, batch: batch, outcomes: outcomes, lease: lease)
        }
        let mine = unit.outcomes.filter { $0.0.lease.map { result.committed.contains($0.chunk) } ?? false }
        stats.committed(mine.map(\.1))
        let refused = unit.outcomes.count - mine.count
        if refused > 0 {
            stats.update { $0.refused += refused }
            logger.warning(
                "job \(job) worker \(worker): \(refused) items not committed: the lease on chunk(s) \(result.refused.sorted()) was taken over by another worker"
            )
            for c in result.refused { leases.markLost(c) }
        }
        for (item, f) in unit.failures where item.lease.map({ result.committed.contains($0.chunk) }) ?? false {
            stats.failed(f.errorClass)
            onFailure(f)
        }
        leases.done(unit.outcomes.compactMap { item, _ in item.lease.map { ($0, item.row.product.id) } })
        if refused == 0 { return unit }
        let committed = Set(mine.map(\.0.row.product.id))
        var done = WriteUnit()
        done.batch.embeddings = unit.batch.embeddings.filter { committed.contains($0.productID) }
        done.failures = unit.failures.filter { committed.contains($0.0.row.product.id) }
        done.outcomes = mine
        return done
    }

    /// Mirrors the job's status (and holds or renews `batch:lock:{job}`) in Redis, once a second.
    private func mirror(_ mirror: BatchMirror) async {
        while !Task.isCancelled {
            if mirror.due(), let status = try? await queue.status(job: job, lease: shared.lease) {
                await mirror.publish(status: Self.json(status))
            }
            try? await Task.sleep(for: mirror.interval)
        }
    }

    /// The status as `ewall job status --json` prints it.
    static func json(_ status: JobStatusReport) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.sortedKeys]
        return Array((try? encoder.encode(status)) ?? Data())
    }

    /// Renews the leases every `shared.heartbeat`; learns of leases lost and of cancellation.
    private func heartbeat(leases: LeaseBook, stats: JobStats) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: shared.heartbeat)
            if Task.isCancelled { return }
            guard
                let (lost, cancelled) = try? await queue.heartbeat(
                    job: job, worker: name, leases: leases.all,
                    lease: shared.lease)
            else { continue }
            for c in lost { leases.markLost(c) }
            if cancelled && shared.follow {
                // The run was cancelled: drop its chunks and wait for the next run.
                for l in leases.all { leases.markLost(l.chunk) }
            } else if cancelled {
                leases.cancelled = true
                logger.warning("job \(job) was cancelled: worker \(name) finishes its current batch and stops")
                stopFlag.set()
            }
        }
    }
}

/// The leases a worker holds and how many of each chunk's items are still in its pipeline.
final class LeaseBook: Sendable {
    private struct State: Sendable {
        var outstanding: [ChunkLease: Set<String>] = [:]
        var lost: Set<Int> = []
        var cancelled = false
    }

    private let state = Locked(State())

    var cancelled: Bool {
        get { state.withLock { $0.cancelled } }
        set { state.withLock { $0.cancelled = newValue } }
    }

    var all: [ChunkLease] { state.withLock { Array($0.outstanding.keys) } }

    /// Chunks held with items still in the pipeline.
    var count: Int { state.withLock { $0.outstanding.count } }

    func add(_ lease: ChunkLease, items: [String]) {
        state.withLock { $0.outstanding[lease] = Set(items) }
    }

    func done(_ items: [(ChunkLease, String)]) {
        state.withLock { s in
            for (lease, id) in items {
                s.outstanding[lease]?.remove(id)
                if s.outstanding[lease]?.isEmpty == true { s.outstanding[lease] = nil }
            }
        }
    }

    func markLost(_ chunk: Int) {
        state.withLock { s in
            s.lost.insert(chunk)
            for l in s.outstanding.keys where l.chunk == chunk { s.outstanding[l] = nil }
        }
    }

    func isLost(_ lease: ChunkLease) -> Bool {
        state.withLock { s in s.lost.contains(lease.chunk) && s.outstanding[lease] == nil }
    }
}

/// Host pauses shared through the job's PostgreSQL store (table `ewall_host_pauses`, expiry by
/// the database's clock). A store that does not answer is a board without pauses: a fetch never
/// fails or waits because of it.
struct StoreHostPauses: HostPauseBoard {
    let queue: PostgresJobQueue
    let worker: String

    func publish(host: String, seconds: Double) async {
        try? await queue.pauseHost(host, seconds: seconds, seenBy: worker)
    }

    func current() async -> [String: Double] {
        (try? await queue.pausedHosts()) ?? [:]
    }
}
