import EwallCore
import EwallEmbedding
import EwallJob
import EwallStore
import Foundation
import Logging

/// Embeds the products a sync found with a new image. Each round takes the rows waiting and
/// is either an embedding job in this process (fetch limits, Redis, content reuse, the ledger:
/// as `ewall-embed`), or, with a ``SyncJob`` on a PostgreSQL store, a run of that shared job
/// for its workers on any machine (`ewall-embed --job NAME --worker --follow`). Either way the
/// vectors enter the change feed as they are committed (``EmbeddingStore/write(_:)``), so
/// every replica searches them. Rows that were stored but not embedded when a sync stopped are
/// found again at start (``CatalogueStore/rowsToEmbed(key:limit:)``).
public final class SyncEmbedder: Sendable {
    private let embedder: ImageEmbedder
    private let store: any CatalogueStore
    private let template: EmbeddingJobConfiguration
    private let job: SyncJob?
    private let logger: Logger
    private let waiting = Locked([String: CatalogueRow]())
    private let stopped = Locked(false)
    private let current = Locked<EmbeddingJob?>(nil)
    private let totals = Locked((embedded: 0, failed: 0))

    /// `template`: fetch, Redis and input settings for every round (its manifest path is
    /// unused). `job`: hand the rounds to that shared job's workers instead.
    public init(
        embedder: ImageEmbedder, store: any CatalogueStore, template: EmbeddingJobConfiguration, job: SyncJob? = nil,
        logger: Logger = Logger(label: "ewall.sync.embed")
    ) {
        self.embedder = embedder
        self.store = store
        self.template = template
        self.job = job
        self.logger = logger
    }

    public var key: ModelKey { ModelKey(modelID: embedder.modelID, preprocessing: embedder.preprocessingID) }
    /// The vectors' dimension (2048 for ResNet50).
    public var dimension: Int { embedder.dimension }

    /// Vectors committed and images failed so far by this process's rounds (a shared job's
    /// are in `ewall job status`).
    public var counts: (embedded: Int, failed: Int) { totals.withLock { $0 } }

    public var backlog: Int { waiting.withLock { $0.count } }

    public func enqueue(_ rows: [CatalogueRow]) {
        waiting.withLock { for r in rows where r.imageURL != nil { $0[r.product.id] = r } }
    }

    public func stop() {
        stopped.withLock { $0 = true }
        current.withLock { $0?.stop() }
    }

    /// Embeds what waits, round after round, until ``stop()`` or until its task is cancelled.
    public func run() async throws {
        enqueue(try await store.rowsToEmbed(key: key, limit: 1_000_000))
        while !stopped.withLock({ $0 }) && !Task.isCancelled {
            let batch: [CatalogueRow] = waiting.withLock { w in
                let take = Array(w.values.sorted { $0.product.id < $1.product.id }.prefix(512))
                for r in take { w[r.product.id] = nil }
                return take
            }
            if batch.isEmpty {
                try? await Task.sleep(for: .milliseconds(50))
                continue
            }
            try await round(batch)
        }
    }

    private func round(_ rows: [CatalogueRow]) async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ewall-sync-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let manifest = dir.appendingPathComponent("rows.jsonl")
        var text = ""
        for r in rows {
            let line = try JSONSerialization.data(
                withJSONObject: ["product_id": r.product.id, "image_url": r.imageURL ?? ""], options: [.sortedKeys])
            text += String(decoding: line, as: UTF8.self) + "\n"
        }
        try Data(text.utf8).write(to: manifest)
        var configuration = template
        configuration.manifestPath = manifest.path
        if let job {
            try await submit(configuration, to: job)
            return
        }
        let run = EmbeddingJob(configuration: configuration, embedder: embedder, store: store, logger: logger)
        current.withLock { $0 = run }
        let summary = try await run.run()
        current.withLock { $0 = nil }
        let states = try await store.states(productIDs: rows.map(\.product.id), key: key)
        let done = rows.filter { r in states[r.product.id]?.embeddedURL == r.imageURL }.count
        totals.withLock {
            $0.embedded += done
            $0.failed += summary.counts.failed
        }
        if summary.counts.failed > 0 {
            logger.warning(
                "\(summary.counts.failed) of \(rows.count) new images failed (ewall-embed's failure classes)")
        }
    }

    /// Submits a round as the next run of the shared job, once its current run is over (a
    /// name runs one run at a time); rows that a stop leaves unsubmitted are found again at
    /// the next start.
    private func submit(_ configuration: EmbeddingJobConfiguration, to job: SyncJob) async throws {
        var lastWarning = ContinuousClock.now
        while !stopped.withLock({ $0 }) && !Task.isCancelled {
            do {
                let r = try await JobSubmission.submit(
                    name: job.name, job: configuration, shared: job.shared, key: key, queue: job.queue,
                    submittedBy: "ewall sync", logger: logger)
                logger.info(
                    "submitted \(r.counts.queued) new images as run \(r.runID) of job \(InputRules.escaped(job.name))")
                return
            } catch let e as JobQueueError where e.code == .running {
                if ContinuousClock.now - lastWarning > .seconds(60) {
                    lastWarning = .now
                    let name = InputRules.escaped(job.name)
                    logger.warning(
                        "job \(name) is still running its last run: are its workers up? (ewall-embed --db ... --job \(name) --worker --follow)"
                    )
                }
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
    }
}

/// A sync's new images handed to a shared job on its PostgreSQL store: each round is a run of
/// job `name`, worked by `ewall-embed --job NAME --worker --follow` processes on any machine.
public struct SyncJob: Sendable {
    public var name: String
    public var queue: PostgresJobQueue
    public var shared: SharedJobConfiguration

    public init(name: String, queue: PostgresJobQueue, shared: SharedJobConfiguration = SharedJobConfiguration()) {
        self.name = name
        self.queue = queue
        self.shared = shared
    }
}
