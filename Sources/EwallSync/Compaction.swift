import EwallCore
import EwallIndex
import EwallStore
import Foundation
import Logging

/// Rebuilds the index in the background when the change feed has drifted far enough from it:
/// products with a new vector (searched exactly beside the index) plus deleted ones (still in
/// it, never answered) reach `share` of the index's count. The build is `rebuild-faiss-index
/// --incremental`'s (or a full one, as its rules choose), published atomically; servers that
/// watch the folder reload it and follow the feed from the position it records.
public final class Compaction: Sendable {
    public let folder: IndexFolder
    /// 0.2: rebuild when new plus deleted vectors reach 20% of the index.
    public let share: Double
    private let store: any CatalogueStore
    private let options: IndexBuildOptions
    private let logger: Logger
    private let running = Locked(false)
    private let builds = Locked(0)

    public init(
        folder: IndexFolder, share: Double = 0.2, store: any CatalogueStore, key: ModelKey? = nil, threads: Int = 1,
        logger: Logger = Logger(label: "ewall.sync.compaction")
    ) {
        self.folder = folder
        self.share = share
        self.store = store
        options = IndexBuildOptions(
            folder: folder, incremental: true, modelID: key?.modelID, preprocessing: key?.preprocessing,
            threads: threads)
        self.logger = logger
    }

    /// Builds completed so far.
    public var completed: Int { builds.withLock { $0 } }

    /// The drift of the index in `folder` from the feed: (new + deleted) / its count.
    public func drift() async throws -> Double? {
        guard let manifest = try? folder.manifest(), manifest.count > 0 else { return nil }
        let counts = try await store.changeCounts(after: manifest.changeSeq ?? 0, key: manifest.key)
        return Double(counts.vectors + counts.deletes) / Double(manifest.count)
    }

    /// Starts a build in the background when the drift reaches ``share`` and none runs;
    /// returns at once.
    public func check() async {
        guard let drift = try? await drift(), drift >= share else { return }
        let start = running.withLock { r -> Bool in
            if r { return false }
            r = true
            return true
        }
        guard start else { return }
        logger.info("index \(folder.path) drifted \(String(format: "%.1f%%", drift * 100)) from the feed: rebuilding")
        Task.detached { [self] in
            defer { running.withLock { $0 = false } }
            do {
                let summary = try await IndexBuilder.build(store: store, options: options)
                builds.withLock { $0 += 1 }
                logger.info("compaction: \(summary.mode) build of \(summary.count) vectors published")
            } catch {
                logger.warning("compaction build failed (the index in force stays): \(error)")
            }
        }
    }
}
