import EwallCore
import EwallEmbedding
import EwallFetch
import EwallRedis
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
    /// The platform's Redis (`nil`: none). With it, known image bytes are looked up in the
    /// embedding cache before inference and every new vector fills it; the per-product view
    /// (`product_embedding:{id}`) is written through after each commit; the per-host limit and
    /// hosts' 429 pauses hold across every process that uses the same Redis. Redis down or
    /// slow is a cache miss and a count in the summary, never an item's failure.
    public var redis: RedisConfiguration?

    public init(
        manifestPath: String, fetch: FetchConfiguration = FetchConfiguration(), concurrency: Int = 32,
        retryFailed: Bool = false, force: Bool = false, lookupChunk: Int = 512, preparedQueue: Int = 64
    ) {
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

    public init(
        configuration: EmbeddingJobConfiguration, embedder: ImageEmbedder, store: any EmbeddingStore,
        logger: Logger = Logger(label: "ewall.job")
    ) {
        self.configuration = configuration
        self.embedder = embedder
        self.store = store
        self.logger = logger
    }

    /// The model key every vector of this job is stored under.
    public var key: ModelKey { ModelKey(modelID: embedder.modelID, preprocessing: embedder.preprocessingID) }

    /// Asks the job to stop: no new items are started, the items already decoded are
    /// embedded and written (the current batch), and ``run(progressInterval:onProgress:onFailure:)``
    /// returns with `interrupted` set. Items not finished are not recorded: a rerun does them.
    public func stop() {
        stopFlag.set()
    }

    /// Runs the job to the manifest's end (or ``stop()``). Throws only systemic errors: the
    /// manifest cannot be read (``ManifestError``, before anything is done), or the store fails
    /// for longer than ``EmbeddingJobConfiguration/storeWaitLimit`` (``JobAborted``, carrying
    /// the summary of what was committed). `onProgress` is called every `progressInterval`
    /// seconds and once at the end; `onFailure` for every bad row and failed item, after its
    /// ledger row is committed.
    public func run(
        progressInterval: Double = 5,
        onProgress: @escaping @Sendable (JobProgress) -> Void = { _ in },
        onFailure: @escaping @Sendable (JobFailure) -> Void = { _ in }
    ) async throws -> JobSummary {
        let config = configuration
        let reader = try ManifestReader(
            path: config.manifestPath, rules: config.inputRules,
            baseDirectory: config.fetch.baseDirectory)
        let estimated = ManifestReader.estimateRows(path: config.manifestPath)
        let stats = JobStats()
        let clock = JobClock()
        let cache = await JobPipeline.cache(for: config, key: key, dimension: embedder.dimension, logger: logger)
        var fetch = config.fetch
        if let cache { fetch.share(through: cache.client) }
        let pipeline = JobPipeline(
            embedder: embedder, store: store, fetcher: ImageFetcher(configuration: fetch, logger: logger), stats: stats,
            stopFlag: stopFlag, concurrency: config.concurrency, preparedQueue: config.preparedQueue,
            reuse: !config.force,
            cache: cache, logger: logger)
        let ticker = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(Int(progressInterval * 1000)))
                if Task.isCancelled { break }
                onProgress(stats.progress(estimatedRows: estimated, elapsed: clock.elapsed))
            }
        }
        var systemic: (any Error)?
        do {
            try await pipeline.run(
                feed: { try await self.feed(from: reader, into: pipeline, stats: stats, onFailure: onFailure) },
                commit: { unit in try await self.commit(unit, stats: stats, onFailure: onFailure) })
        } catch {
            systemic = error
        }
        ticker.cancel()
        onProgress(stats.progress(estimatedRows: estimated, elapsed: clock.elapsed))
        await cache?.client.close()
        let summary = makeSummary(
            stats: stats, wall: clock.elapsed, error: systemic.map(Self.systemicFailure),
            hosts: pipeline.fetcher.hostTimings(), cache: cache?.statistics)
        if let systemic { throw JobAborted(summary: summary, underlying: systemic) }
        return summary
    }

    /// Manifest rows -> store lookups (a chunk of rows at a time) -> work items.
    private func feed(
        from reader: ManifestReader, into pipeline: JobPipeline, stats: JobStats,
        onFailure: @Sendable (JobFailure) -> Void
    ) async throws {
        var chunk: [ManifestRow] = []
        func flush() async throws {
            if chunk.isEmpty { return }
            for row in try await needingWork(chunk, stats: stats) {
                if !(await pipeline.send(WorkItem(row: row))) { return }
            }
            chunk.removeAll(keepingCapacity: true)
        }
        while !stopFlag.isSet, let next = reader.next() {
            stats.update { $0.rows += 1 }
            switch next {
            case .success(let row):
                chunk.append(row)
                if chunk.count >= configuration.lookupChunk { try await flush() }
            case .failure(let p):
                stats.update { $0.badRows += 1 }
                onFailure(
                    JobFailure(
                        line: p.line, productID: p.productID, imageURL: p.imageURL, errorClass: FailureClass.badRow,
                        stage: "manifest", message: p.message, httpStatus: nil, attempts: 0))
            }
        }
        if !stopFlag.isSet { try await flush() }
        let dups = reader.duplicates
        stats.update {
            $0.duplicates = dups
            $0.rows += dups
        }
    }

    /// The rows that need work (products stored, what is done skipped and counted).
    func needingWork(_ rows: [ManifestRow], stats: JobStats) async throws -> [ManifestRow] {
        try await EmbeddingJobRules(configuration: configuration, store: store, key: key, logger: logger)
            .needingWork(rows, stats: stats)
    }

    /// One unit, one transaction (waiting for the store if it stops answering).
    private func commit(
        _ unit: WriteUnit, stats: JobStats, onFailure: @Sendable (JobFailure) -> Void
    ) async throws -> WriteUnit {
        let store = self.store
        try await withStore("writing a batch", stats: stats) { try await store.write(unit.batch) }
        stats.committed(unit.outcomes.map(\.1))
        for (_, f) in unit.failures {
            stats.failed(f.errorClass)
            onFailure(f)
        }
        return unit
    }

    /// The failure as the summary states it: a stable code and the message a user acts on.
    static func systemicFailure(_ error: any Error) -> SystemicFailure {
        switch error {
        case let e as StoreError: return SystemicFailure(code: e.code.rawValue, message: e.message)
        case let e as ManifestError: return SystemicFailure(code: "manifest_unreadable", message: e.message)
        default: return SystemicFailure(code: "internal", message: "\(error)")
        }
    }

    private func makeSummary(
        stats: JobStats, wall: Double, error: SystemicFailure?, hosts: [HostTiming],
        cache: CacheStatistics?
    ) -> JobSummary {
        JobSummary(
            stats: stats, source: configuration.manifestPath, store: store.displayName, embedder: embedder, wall: wall,
            interrupted: stopFlag.isSet && error == nil, error: error, hosts: hosts, cache: cache)
    }

    func withStore<T: Sendable>(
        _ what: String, stats: JobStats,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        try await StoreWaiter(
            store: store, limit: configuration.storeWaitLimit, callTimeout: configuration.storeCallTimeout,
            logger: logger
        ).call(what, stats: stats, body)
    }
}

/// A flag set once, read from any thread.
final class StopFlag: Sendable {
    private let value = Locked(false)

    var isSet: Bool { value.withLock { $0 } }

    func set() { value.withLock { $0 = true } }
}
