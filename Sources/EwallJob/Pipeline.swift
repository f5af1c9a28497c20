import EwallCore
import EwallEmbedding
import EwallFetch
import EwallInference
import EwallRedis
import EwallStore
import Foundation
import Logging

/// One item on its way through the pipeline: a manifest row, and the lease it was claimed
/// under when it came from a shared job (``JobWorker``).
struct WorkItem: Sendable {
    var row: ManifestRow
    var lease: ChunkLease?
    /// Set when the item fails before any fetch (its URL is refused): it is never fetched.
    var refused: JobFailure?

    func failure(
        _ errorClass: String, stage: String, _ message: String, httpStatus: Int? = nil, attempts: Int = 0
    ) -> JobFailure {
        JobFailure(
            line: row.line, productID: row.product.id, imageURL: row.imageURL, errorClass: errorClass, stage: stage,
            message: message, httpStatus: httpStatus, attempts: attempts)
    }
}

/// What the write stage commits at once: the vectors and ledger rows of one batch (plus the
/// failures that came through since the last one), with each item's outcome.
struct WriteUnit: Sendable {
    var batch = WriteBatch()
    var failures: [(WorkItem, JobFailure)] = []
    var outcomes: [(WorkItem, ItemOutcome.Status)] = []
}

/// The stages every job runs, whatever feeds it (a manifest, or chunks claimed from a shared
/// job) and wherever it commits (the store, or the store under leases):
///
/// ```
/// feed ─▶ fetch (N tasks, per-host limited) ─▶ decode + reuse ─▶ batch of 32 ─▶ model (S streams) ─▶ commit (1 transaction)
/// ```
///
/// Each stage is one method, joined to the next by a bounded queue, so memory stays flat
/// however long the job is. A batch ships when it is full, or when nothing more is on its way
/// (``pending`` is 0): a feed that waits for commits (a shared job holding its chunks) never
/// waits on a batch that waits for it. A failed item is a value that travels on to the commit, never
/// its batch's problem. Images whose bytes (sha256) were embedded before under the same model
/// key take that vector instead of a forward pass (``VectorReuse``).
final class JobPipeline: Sendable {
    let embedder: ImageEmbedder
    let store: any EmbeddingStore
    let fetcher: ImageFetcher
    let stats: JobStats
    let stopFlag: StopFlag
    let key: ModelKey
    let reuse: VectorReuse?
    /// The embedding cache in Redis (``EmbeddingJobConfiguration/redis``): asked before the
    /// store for known bytes, filled with every vector the model makes, and the per-product
    /// view written through after each commit.
    let cache: EmbeddingCache?
    private let logger: Logger

    private let fetchQueue: BoundedQueue<WorkItem>
    /// Items sent by the feed that have not reached the batch stage yet (in a queue, a fetch
    /// or a decode). While it is above 0 a partial batch waits for them; at 0 it ships.
    private let pending = Locked(0)
    private let fetchedQueue = BoundedQueue<Fetched>(capacity: 16)
    private let preparedQueue: BoundedQueue<Prepared>
    /// Units waiting for the store. When the store lags, the write stage commits the waiting
    /// units together (up to ``maxCommitItems``): commits grow with the load instead of queueing.
    private let writeQueue = BoundedQueue<WriteUnit>(capacity: 8)
    /// Batches formed, waiting for a model stream: as many as there are streams, so each
    /// stream has the next one ready when it finishes its own.
    private let formedQueue: BoundedQueue<Formed>
    /// Model streams: tasks that each run one batch at a time through the model
    /// (``ModelOptions/streams``; the model runs that many forward passes at once).
    private let streams: Int
    /// The most items one commit carries when units are waiting.
    static let maxCommitItems = 256

    private enum Fetched: Sendable {
        case bytes(WorkItem, FetchedImage)
        case failed(WorkItem, JobFailure)
    }

    private enum Prepared: Sendable {
        case ready(WorkItem, FetchedImage, PreparedImage)
        case reused(WorkItem, FetchedImage, StoredEmbedding)
        case failed(WorkItem, JobFailure)
    }

    /// A batch for the model and the unit its vectors go into (which already holds the
    /// reused vectors and failures that came through with it).
    private struct Formed: Sendable {
        var ready: [(WorkItem, FetchedImage, PreparedImage)]
        var unit: WriteUnit
    }

    init(
        embedder: ImageEmbedder, store: any EmbeddingStore, fetcher: ImageFetcher, stats: JobStats, stopFlag: StopFlag,
        concurrency: Int, preparedQueue: Int, reuse: Bool, cache: EmbeddingCache?, logger: Logger
    ) {
        self.embedder = embedder
        self.store = store
        self.fetcher = fetcher
        self.stats = stats
        self.stopFlag = stopFlag
        self.key = ModelKey(modelID: embedder.modelID, preprocessing: embedder.preprocessingID)
        self.cache = cache
        self.reuse = reuse ? VectorReuse(store: store, key: key, cache: cache) : nil
        self.logger = logger
        self.fetchQueue = BoundedQueue(capacity: max(8, concurrency * 2))
        self.preparedQueue = BoundedQueue(capacity: preparedQueue)
        self.concurrency = concurrency
        self.streams = max(1, embedder.embedder.streams)
        self.formedQueue = BoundedQueue(capacity: self.streams)
    }

    private let concurrency: Int

    /// Cancels every queue: the stages drain and return.
    func cancelQueues() {
        fetchQueue.cancel()
        fetchedQueue.cancel()
        preparedQueue.cancel()
        formedQueue.cancel()
        writeQueue.cancel()
    }

    /// Sends one item into the pipeline (the feed's only way in), waiting for room. Returns
    /// `false` when the pipeline is stopping and took nothing.
    func send(_ item: WorkItem) async -> Bool {
        pending.withLock { $0 += 1 }
        if await fetchQueue.send(item) { return true }
        arrived()
        return false
    }

    /// One item of ``pending`` has reached the batch stage, or was dropped on the way.
    private func arrived() { pending.withLock { $0 -= 1 } }

    /// Runs `feed` (which sends work with ``send(_:)`` and returns when there is no more)
    /// and the stages, committing each unit with `commit`. Returns when everything fed is
    /// committed, or throws the first systemic error (the feed's or the commit's).
    func run(
        feed: @escaping @Sendable () async throws -> Void,
        commit: @escaping @Sendable (WriteUnit) async throws -> WriteUnit
    ) async throws {
        // Vectors the precision guard let share fp32's key go in only with the figures that allowed it.
        if let admission = embedder.precisionAdmission(key: key) { try await store.recordPrecisionAdmission(admission) }
        let fetchStage = Task { await self.fetchStage() }
        let stopWatcher = Task {
            while !Task.isCancelled && !stopFlag.isSet { try? await Task.sleep(for: .milliseconds(100)) }
            if stopFlag.isSet {
                fetchQueue.cancel()
                fetchStage.cancel()
            }
        }
        defer { stopWatcher.cancel() }
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    defer { self.fetchQueue.finish() }
                    try await feed()
                }
                group.addTask { await fetchStage.value }
                group.addTask { await self.decodeStage() }
                group.addTask { await self.batchStage() }
                group.addTask { await self.modelStage() }
                group.addTask { try await self.writeStage(commit: commit) }
                do {
                    try await group.waitForAll()
                } catch {
                    cancelQueues()
                    fetchStage.cancel()
                    throw error
                }
            }
        } catch {
            try? await fetcher.shutdown()
            throw error
        }
        try? await fetcher.shutdown()
    }

    /// Fetch: `concurrency` tasks, each host limited by the fetcher. Stopping cancels the
    /// requests in flight; their items are not failures (a rerun does them).
    private func fetchStage() async {
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<max(1, concurrency) {
                group.addTask {
                    while let item = await self.fetchQueue.next() {
                        if self.stopFlag.isSet || Task.isCancelled {
                            self.arrived()
                            continue
                        }
                        if let failure = item.refused {
                            await self.fetchedQueue.send(.failed(item, failure))
                            continue
                        }
                        let t0 = ContinuousClock.now
                        let result = await self.fetcher.fetch(item.row.location)
                        self.stats.time(\.fetch, (ContinuousClock.now - t0).inSeconds)
                        switch result {
                        case .success(let image):
                            await self.fetchedQueue.send(.bytes(item, image))
                        case .failure(let e) where e.code == ImageFetcher.cancelled:
                            self.arrived()
                            continue
                        case .failure(let e):
                            await self.fetchedQueue.send(
                                .failed(
                                    item,
                                    item.failure(
                                        e.code, stage: "fetch", e.message, httpStatus: e.httpStatus,
                                        attempts: e.attempts)))
                        }
                    }
                }
            }
        }
        fetchedQueue.finish()
    }

    /// Decode and preprocess on the embedder's decode threads, unless the same bytes were
    /// embedded before under this model key: then the stored vector is taken as it is.
    private func decodeStage() async {
        await withTaskGroup(of: Void.self) { decoders in
            for _ in 0..<max(1, embedder.configuration.decodeThreads) {
                decoders.addTask {
                    while let f = await self.fetchedQueue.next() {
                        await self.preparedQueue.send(await self.prepare(f))
                    }
                }
            }
        }
        preparedQueue.finish()
    }

    private func prepare(_ f: Fetched) async -> Prepared {
        switch f {
        case .failed(let item, let failure):
            return .failed(item, failure)
        case .bytes(let item, let image):
            if let reuse, let known = await reuse.lookup(image.sha256) {
                return .reused(item, image, known)
            }
            let t0 = ContinuousClock.now
            let r = await embedder.prepare(image.bytes)
            stats.time(\.decode, (ContinuousClock.now - t0).inSeconds)
            switch r {
            case .success(let p):
                if p.info.decoderWarning?.kind == .harmless { stats.update { $0.decoderWarnings += 1 } }
                return .ready(item, image, p)
            case .failure(let e):
                return .failed(
                    item,
                    item.failure(
                        e.code, stage: e.stage.rawValue, e.message, httpStatus: image.httpStatus,
                        attempts: image.attempts))
            }
        }
    }

    /// Batches of the model's size, formed by a ``BatchFormer`` (one forward pass each;
    /// identical bytes within a batch run once), handed to the model streams. Failures and
    /// reused vectors ride along with the next batch. A partial batch ships as soon as nothing
    /// more is on its way.
    private func batchStage() async {
        defer { formedQueue.finish() }
        let size = embedder.embedder.batchSize
        var former = BatchFormer<(WorkItem, FetchedImage, PreparedImage)>(size: size)
        var unit = WriteUnit()
        func ship(_ ready: [(WorkItem, FetchedImage, PreparedImage)]?) async {
            let ready = ready ?? []
            if !unit.outcomes.isEmpty || !ready.isEmpty { await formedQueue.send(Formed(ready: ready, unit: unit)) }
            unit = WriteUnit()
        }
        while let p = await preparedQueue.next() {
            arrived()
            switch p {
            case .ready(let item, let image, let prepared):
                if let full = former.add((item, image, prepared)) {
                    await ship(full)
                    continue
                }
            case .reused(let item, let image, let known):
                add(
                    item, image, vector: known.vector, width: known.width, height: known.height, status: .reused,
                    to: &unit)
            case .failed(let item, let failure):
                fail(item, failure, in: &unit)
            }
            let idle = pending.withLock { $0 == 0 }
            if unit.outcomes.count >= 2 * size || idle { await ship(former.flush()) }
        }
        await ship(former.flush())
    }

    /// The model streams: each takes the next formed batch, runs it, and sends its unit on to
    /// the commit (units may commit in another order than formed; each carries its own
    /// items, and a job never has two items of one product).
    private func modelStage() async {
        defer { writeQueue.finish() }
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<streams {
                group.addTask {
                    while var f = await self.formedQueue.next() {
                        if !f.ready.isEmpty { await self.embed(f.ready, into: &f.unit) }
                        await self.writeQueue.send(f.unit)
                    }
                }
            }
        }
    }

    private func embed(_ ready: [(WorkItem, FetchedImage, PreparedImage)], into unit: inout WriteUnit) async {
        // One forward pass per distinct image: the first of identical bytes runs the model.
        var first: [String: Int] = [:]
        var unique: [Int] = []
        for (i, r) in ready.enumerated() where first[r.1.sha256] == nil {
            first[r.1.sha256] = unique.count
            unique.append(i)
        }
        let t0 = ContinuousClock.now
        let vectors = await embedder.embed(prepared: unique.map { ready[$0].2 })
        stats.time(\.infer, (ContinuousClock.now - t0).inSeconds)
        var made: [CachedEmbedding] = []
        for (i, (item, image, _)) in ready.enumerated() {
            let slot = first[image.sha256]!
            switch vectors[slot] {
            case .success(let e):
                let reused = unique[slot] != i
                add(
                    item, image, vector: e.vector, width: e.image.width, height: e.image.height,
                    status: reused ? .reused : .embedded, to: &unit)
                if !reused, cache != nil {
                    made.append(
                        CachedEmbedding(
                            vector: e.vector, imageSHA256: image.sha256, format: e.image.format,
                            width: e.image.width, height: e.image.height))
                }
                if !reused {
                    reuse?.remember(
                        image.sha256,
                        StoredEmbedding(
                            productID: item.row.product.id, imageURL: item.row.imageURL, key: key, vector: e.vector,
                            imageSHA256: image.sha256, width: e.image.width, height: e.image.height))
                }
            case .failure(let f):
                fail(
                    item,
                    item.failure(
                        f.code, stage: f.stage.rawValue, f.message, httpStatus: image.httpStatus,
                        attempts: image.attempts), in: &unit)
            }
        }
        // Filled in one round trip per batch (about 0.1 ms on a LAN; a Redis that is down
        // answers at once, a slow one within its timeout).
        if let cache, !made.isEmpty { await cache.store(made) }
    }

    private func add(
        _ item: WorkItem, _ image: FetchedImage, vector: [Float], width: Int?, height: Int?,
        status: ItemOutcome.Status, to unit: inout WriteUnit
    ) {
        unit.batch.embeddings.append(
            StoredEmbedding(
                productID: item.row.product.id, imageURL: item.row.imageURL, key: key, vector: vector,
                imageSHA256: image.sha256,
                width: width, height: height, bytes: image.bytes.count, contentType: image.contentType))
        unit.batch.ledger.append(
            LedgerEntry(
                productID: item.row.product.id, imageURL: item.row.imageURL, key: key, status: .embedded,
                httpStatus: image.httpStatus, attempts: image.attempts))
        unit.outcomes.append((item, status))
    }

    private func fail(_ item: WorkItem, _ f: JobFailure, in unit: inout WriteUnit) {
        unit.batch.ledger.append(
            LedgerEntry(
                productID: item.row.product.id, imageURL: item.row.imageURL, key: key, status: .failed,
                errorClass: f.errorClass, httpStatus: f.httpStatus, attempts: f.attempts, lastError: f.message))
        unit.failures.append((item, f))
        unit.outcomes.append((item, .failed))
    }

    /// One transaction per unit, in order; units already waiting are merged into it (group
    /// commit), so a store that lags gets fewer, larger transactions.
    private func writeStage(commit: @Sendable (WriteUnit) async throws -> WriteUnit) async throws {
        while var unit = await writeQueue.next() {
            while unit.outcomes.count < Self.maxCommitItems, let more = writeQueue.tryNext() {
                unit.batch.embeddings += more.batch.embeddings
                unit.batch.ledger += more.batch.ledger
                unit.failures += more.failures
                unit.outcomes += more.outcomes
            }
            let t0 = ContinuousClock.now
            let committed: WriteUnit
            do {
                committed = try await commit(unit)
            } catch {
                cancelQueues()
                stopFlag.set()
                throw error
            }
            stats.time(\.write, (ContinuousClock.now - t0).inSeconds)
            await writeThrough(committed)
        }
    }
}

extension JobPipeline {
    /// The per-product view in Redis after a commit: each stored product's current vector
    /// replaces the last, and a product whose item failed loses its entry (its photo changed,
    /// or it never had one), so no reader gets the vector of a photo that was replaced.
    func writeThrough(_ committed: WriteUnit) async {
        guard let cache else { return }
        let current = committed.batch.embeddings.map { e in
            (
                productID: e.productID,
                embedding: CachedEmbedding(
                    vector: e.vector, imageSHA256: e.imageSHA256 ?? "",
                    width: e.width ?? 0, height: e.height ?? 0)
            )
        }
        await cache.writeProducts(current: current, replaced: committed.failures.map(\.0.row.product.id))
    }

    /// Makes the embedding cache a job asks when its configuration names a Redis.
    static func cache(
        for configuration: EmbeddingJobConfiguration, key: ModelKey, dimension: Int,
        logger: Logger
    ) async -> EmbeddingCache? {
        guard let r = configuration.redis else { return nil }
        let cache = EmbeddingCache(
            client: RedisClient(
                location: r.location, timeout: r.timeout, connections: r.connections,
                logger: logger),
            key: key, dimension: dimension, ttl: r.cacheTTL)
        await cache.client.ping() // a refused password or a Redis that is down: one warning now
        return cache
    }
}

/// Vectors already made from the same image bytes under this model key: the last few made
/// by this process, then the store (any product's, any job's, any worker's). Identical bytes
/// under one model key and preprocessing give the same vector, so reusing it is exact.
final class VectorReuse: Sendable {
    private let store: any EmbeddingStore
    private let key: ModelKey
    private let cache: EmbeddingCache?
    private let recent = Locked(RecentVectors(capacity: 256))

    init(store: any EmbeddingStore, key: ModelKey, cache: EmbeddingCache?) {
        self.store = store
        self.key = key
        self.cache = cache
    }

    /// This process's recent vectors, then the Redis cache, then the store (whose find also
    /// fills the cache).
    func lookup(_ sha: String) async -> StoredEmbedding? {
        if let hit = recent.withLock({ $0.get(sha) }) { return hit }
        if let cache, let hit = await cache.lookup(sha256: sha) {
            let found = StoredEmbedding(
                productID: "", imageURL: "", key: key, vector: hit.vector, imageSHA256: sha,
                width: hit.width, height: hit.height)
            remember(sha, found)
            return found
        }
        // A failed lookup is a miss, never the item's failure: the model makes the vector.
        guard let found = try? await store.embedding(imageSHA256: sha, key: key) else { return nil }
        remember(sha, found)
        if let cache {
            await cache.store([
                CachedEmbedding(
                    vector: found.vector, imageSHA256: sha, width: found.width ?? 0,
                    height: found.height ?? 0)
            ])
        }
        return found
    }

    func remember(_ sha: String, _ e: StoredEmbedding) {
        recent.withLock { $0.put(sha, e) }
    }

    struct RecentVectors: Sendable {
        let capacity: Int
        var entries: [String: StoredEmbedding] = [:]
        var order: [String] = []

        func get(_ sha: String) -> StoredEmbedding? { entries[sha] }

        mutating func put(_ sha: String, _ e: StoredEmbedding) {
            if entries.updateValue(e, forKey: sha) == nil { order.append(sha) }
            if order.count > capacity {
                entries[order.removeFirst()] = nil
            }
        }
    }
}
