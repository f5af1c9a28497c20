import EwallCore
import EwallEmbedding
import EwallJob
import EwallStore
import Foundation
import Logging

/// Embeds the products a sync found with a new image, in this process: each round is an
/// embedding job (fetch limits, Redis, content reuse, the ledger: as `ewall-embed`) over the
/// rows waiting, after which the change feed says which vectors are new, so every replica
/// searches them. Rows that were stored but not embedded when a sync stopped are found again
/// at start (``CatalogueStore/rowsToEmbed(key:limit:)``).
public final class SyncEmbedder: Sendable {
    private let embedder: ImageEmbedder
    private let store: any CatalogueStore
    private let template: EmbeddingJobConfiguration
    private let logger: Logger
    private let waiting = Locked([String: CatalogueRow]())
    private let stopped = Locked(false)
    private let current = Locked<EmbeddingJob?>(nil)
    private let totals = Locked((embedded: 0, failed: 0))

    /// `template`: fetch, Redis and input settings for every round (its manifest path is unused).
    public init(
        embedder: ImageEmbedder, store: any CatalogueStore, template: EmbeddingJobConfiguration,
        logger: Logger = Logger(label: "ewall.sync.embed")
    ) {
        self.embedder = embedder
        self.store = store
        self.template = template
        self.logger = logger
    }

    public var key: ModelKey { ModelKey(modelID: embedder.modelID, preprocessing: embedder.preprocessingID) }
    /// The vectors' dimension (2048 for ResNet50).
    public var dimension: Int { embedder.dimension }

    /// Vectors committed and images failed so far.
    public var counts: (embedded: Int, failed: Int) { totals.withLock { $0 } }

    public var backlog: Int { waiting.withLock { $0.count } }

    public func enqueue(_ rows: [CatalogueRow]) {
        waiting.withLock { for r in rows where r.imageURL != nil { $0[r.product.id] = r } }
    }

    public func stop() {
        stopped.withLock { $0 = true }
        current.withLock { $0?.stop() }
    }

    /// Embeds what waits, round after round, until ``stop()``.
    public func run() async throws {
        enqueue(try await store.rowsToEmbed(key: key, limit: 1_000_000))
        while !stopped.withLock({ $0 }) {
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
        let job = EmbeddingJob(configuration: configuration, embedder: embedder, store: store, logger: logger)
        current.withLock { $0 = job }
        let summary = try await job.run()
        current.withLock { $0 = nil }
        let states = try await store.states(productIDs: rows.map(\.product.id), key: key)
        let done = rows.filter { r in states[r.product.id]?.embeddedURL == r.imageURL }.map(\.product.id)
        try await store.recordVectorChanges(done)
        totals.withLock {
            $0.embedded += done.count
            $0.failed += summary.counts.failed
        }
        if summary.counts.failed > 0 {
            logger.warning(
                "\(summary.counts.failed) of \(rows.count) new images failed (ewall-embed's failure classes)")
        }
    }
}
