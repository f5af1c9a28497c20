import EwallClassifier
import EwallCore
import EwallFetch
import EwallImaging
import EwallIndex
import EwallInference
import EwallRedis
import EwallStore
import Foundation
import Logging
import Metrics
import ServiceLifecycle

/// An image to embed: a URL the service fetches (checked against ``EwallConfiguration/urlPolicy``),
/// or the encoded bytes (JPEG, PNG, WebP).
public enum ImageSource: Sendable, Hashable {
    case url(String)
    case bytes([UInt8])
}

/// One embedded image: the vector and what made it.
public struct ImageEmbedding: Sendable, Hashable {
    /// L2-normalised, ``EwallService/dimension`` floats.
    public var vector: [Float]
    /// The model that made it (`name@sha256-prefix`).
    public var modelID: String
    /// The preprocessing it was made with (`squash224`, ...).
    public var preprocessing: String
    /// The image as decoded: format and upright size.
    public var format: String
    public var width: Int
    public var height: Int
}

/// What is loaded from the index folder.
public struct IndexStatus: Sendable, Hashable {
    /// Whether an index is loaded and answering.
    public var loaded: Bool
    public var path: String
    /// The FAISS factory string, vector count and model of the loaded index.
    public var factory: String?
    public var count: Int
    public var modelID: String?
    /// When `rebuild-faiss-index` built it (ISO 8601) and when this service loaded it.
    public var builtAt: String?
    public var loadedAt: Date?
    /// Seconds since it was built.
    public var ageSeconds: Double?
    /// Staleness notes (store vectors not in the index, ...).
    public var warnings: [String]
    /// Why no index is loaded, or why the last reload failed (the previous index stays).
    public var problem: String?
}

/// Whether the service can answer every kind of request.
/// How far a replica's index trails the store's change feed (``EwallService/catalogueLag``).
public struct CatalogueLag: Sendable, Hashable {
    /// Feed entries not yet applied.
    public var changes: Int64 = 0
    /// Seconds between the oldest unapplied entry's commit at the source and now (0: caught up).
    public var seconds: Double = 0
    /// Entries applied since the index loaded (the feed's position it is at).
    public var appliedSeq: Int64 = 0
    /// Products searched beside the index (new vectors since its build).
    public var deltaVectors = 0
    /// The feed was read to its end at least once since the index loaded.
    public var caughtUp = false
    /// The last error reading the feed, if the last read failed.
    public var problem: String?
}

public struct Readiness: Sendable, Hashable {
    public var model: Bool
    public var store: Bool
    public var index: Bool
    /// The index was built from this model (and preprocessing), so image queries can use it.
    public var consistent: Bool
    /// What is wrong, one line each.
    public var problems: [String]
    public var ready: Bool { model && store && index && consistent }
}

/// How the dynamic batcher has coalesced embeds so far.
public struct BatchingStatistics: Sendable, Hashable {
    public var images: Int
    public var batches: Int
    /// Embeds refused as overloaded.
    public var refused: Int
    /// Batches by number of images.
    public var sizes: [Int: Int]
    /// Images per forward pass on average.
    public var meanBatchSize: Double
    /// Images waiting for the model now.
    public var queueDepth: Int
}

/// The entry point a server links: embeddings, similar products and classification, with the
/// model loaded once, concurrent embeds coalesced into batches, and the index reloaded in place.
///
/// Safe to call from many tasks at once. Build one per process from an ``EwallConfiguration``;
/// run it under swift-service-lifecycle (it is a `Service`: ``run()`` returns on graceful
/// shutdown after the queued embeds are done), or call ``shutdown()`` yourself.
///
/// ```swift
/// let ewall = try await EwallService(configuration: EwallConfiguration(modelPath: "models/resnet50.pt"))
/// let answer = try await ewall.similar(productID: "P123")
/// for r in answer.results { print(r.productID, r.similarity) }
/// await ewall.shutdown()
/// ```
public final class EwallService: Service, Sendable {
    public let configuration: EwallConfiguration
    /// The model's id, as stored with every vector it makes.
    public let modelID: String
    /// The model and preprocessing: the key vectors are stored and indexed under.
    public let modelKey: ModelKey
    /// `false` when the model card says the weights are random-init (the offline test model):
    /// then every vector, neighbour and embedding score is meaningless.
    public let pretrained: Bool
    /// The warning to show wherever a user sees model output, or `nil` for a pretrained model.
    public var modelWarning: String? {
        pretrained
            ? nil
            : "vectors from the random-init model \(modelID) carry no meaning (test model; export pretrained weights)"
    }

    let embedder: ImageEmbedder
    let batcher: EmbedBatcher
    let fetcher: ImageFetcher
    let store: any EmbeddingStore
    let rules: KeywordRules?
    /// The gift rules, when configured.
    let giftRules: GiftRules?
    let logger: Logger
    /// The embedding cache in Redis, when ``EwallConfiguration/redis`` is set.
    let cache: EmbeddingCache?
    private let state: Locked<State>
    /// Concurrent similar-products searches run together (see ``SimilarCoalescer``).
    let coalescer: SimilarCoalescer
    /// OpenBLAS set to one thread, once per process, by the first service with several search
    /// threads, before it searches: OpenBLAS's thread count must not change while another
    /// thread is inside a BLAS call.
    private static let blasOnCallersThread: Int = FaissIndex.setBLASThreads(1)
    private let runner: Task<Void, Never>
    private let indexVectors: Recorder
    private let indexAge: Recorder
    private let nearestUsed: Recorder
    private let nearestDeclined: Recorder
    private let catalogueChanges: Recorder
    private let catalogueDelta: Recorder
    private let reloads: Counter
    private let reloadFailures: Counter

    /// What a reload replaces, as one value: requests take it once and finish on it.
    struct Snapshot: Sendable {
        var search: ProductSearch?
        var classifier: CategoryClassifier
        /// The gift detector, with the registered gifts' vectors read when the snapshot was made.
        var gifts: GiftDetector? = nil
        var loadedAt: Date?
        /// The manifest's build time, parsed once per load.
        var builtAt: Date? = nil
        var problem: String?
    }

    private struct State: Sendable {
        var snapshot: Snapshot
        var watcher: Task<Void, Never>?
        var follower: Task<Void, Never>?
        var shutDown = false
        /// The change feed as last read: entries behind, seconds behind, and whether the loaded
        /// index has caught up with the feed since it loaded.
        var catalogue = CatalogueLag()
    }

    /// Loads the model (and warms it up), opens the store, loads the index when the folder has
    /// one, and builds the classifier's references from the store.
    ///
    /// - Parameter metrics: where the service's metrics go (batch sizes, queue depth, index size
    ///   and age, reloads); the process-wide `MetricsSystem` by default.
    public init(
        configuration: EwallConfiguration, logger: Logger = Logger(label: "ewall"),
        metrics: any MetricsFactory = MetricsSystem.factory
    ) async throws(EwallError) {
        self.configuration = configuration
        self.logger = logger
        let limits = configuration.limits
        guard limits.maxBatchSize >= 1, limits.maxQueuedImages >= 1, limits.maxImageBytes > 0, limits.maxImagePixels > 0
        else {
            throw EwallError.invalid("limits must be positive: \(limits)")
        }
        do {
            embedder = try ImageEmbedder(configuration: configuration.embedder, logger: logger)
        } catch {
            throw EwallError(.unavailable, "model_unavailable", error.message)
        }
        modelID = embedder.modelID
        modelKey = ModelKey(modelID: embedder.modelID, preprocessing: embedder.preprocessingID)
        pretrained = embedder.card?.pretrained ?? false
        do {
            rules = try configuration.rulesPath.map { try KeywordRules.load(path: $0) }
        } catch {
            throw EwallError.invalid("the keyword rules \(configuration.rulesPath ?? ""): \(error)")
        }
        do {
            giftRules = try configuration.giftRulesPath.map { try GiftRules.load(path: $0) }
        } catch {
            throw EwallError.invalid("the gift rules \(configuration.giftRulesPath ?? ""): \(error)")
        }
        do {
            store = try await StoreLocation(parsing: configuration.storeURL).open()
        } catch let e as StoreError {
            throw EwallError(e)
        } catch {
            throw EwallError(.unavailable, "store_unavailable", "\(configuration.storeURL): \(error)")
        }
        batcher = EmbedBatcher(
            embedder: embedder.embedder,
            options: .init(
                maxBatch: limits.maxBatchSize, maxWait: limits.maxBatchWait,
                maxQueue: limits.maxQueuedImages),
            metrics: metrics)
        fetcher = ImageFetcher(configuration: configuration.fetch, logger: logger)
        let (key, dimension) = (modelKey, embedder.dimension)
        cache = configuration.redis.map { r in
            EmbeddingCache(
                client: RedisClient(
                    location: r.location, timeout: r.timeout, connections: r.connections, logger: logger),
                key: key, dimension: dimension, ttl: r.cacheTTL, metrics: metrics)
        }
        indexVectors = Recorder(label: "ewall_index_vectors", dimensions: [], aggregate: false, factory: metrics)
        indexAge = Recorder(label: "ewall_index_age_seconds", dimensions: [], aggregate: false, factory: metrics)
        nearestUsed = Recorder(
            label: "ewall_similar_nearest_lists_used", dimensions: [], aggregate: false, factory: metrics)
        nearestDeclined = Recorder(
            label: "ewall_similar_nearest_lists_declined", dimensions: [], aggregate: false, factory: metrics)
        reloads = Counter(label: "ewall_index_reloads_total", dimensions: [], factory: metrics)
        catalogueChanges = Recorder(
            label: "ewall_catalogue_lag_changes", dimensions: [], aggregate: false, factory: metrics)
        catalogueDelta = Recorder(
            label: "ewall_catalogue_delta_vectors", dimensions: [], aggregate: false, factory: metrics)
        reloadFailures = Counter(label: "ewall_index_reload_failures_total", dimensions: [], factory: metrics)
        let searchThreads = max(1, configuration.searchThreads)
        if searchThreads > 1 { _ = Self.blasOnCallersThread }
        coalescer = SimilarCoalescer(maxBatch: 64, lanes: searchThreads, metrics: metrics)
        let classifier: CategoryClassifier
        let gifts: GiftDetector?
        do {
            (classifier, gifts) = try await Self.openClassifier(
                store: store, key: modelKey, rules: rules, giftRules: giftRules, configuration: configuration)
        } catch {
            try? await fetcher.shutdown()
            await store.close()
            throw error
        }
        if let cache { await cache.client.ping() }
        let batcher = self.batcher
        runner = Task { await batcher.run() }
        state = Locked(
            State(
                snapshot: Snapshot(
                    search: nil, classifier: classifier, gifts: gifts, loadedAt: nil, problem: "not loaded yet")))
        do {
            _ = try await reloadIndex()
        } catch {
            logger.warning(
                "no index loaded from \(configuration.indexPath): \(error.message); similar products answer index_unavailable until one is"
            )
        }
        if let interval = configuration.indexWatchInterval {
            let watcher = Task { [weak self] in
                while !Task.isCancelled {
                    try? await Task.sleep(for: interval)
                    guard let self, !Task.isCancelled else { return }
                    await self.reloadIfChanged()
                }
            }
            state.withLock { $0.watcher = watcher }
        }
        if let interval = configuration.catalogueFollowInterval, let catalogue = store as? any CatalogueStore {
            let follower = Task { [weak self] in
                while !Task.isCancelled {
                    guard let self else { return }
                    await self.followCatalogue(catalogue)
                    try? await Task.sleep(for: interval)
                }
            }
            state.withLock { $0.follower = follower }
        }
    }

    // MARK: The live catalogue

    /// Where the loaded index stands against the store's change feed.
    public var catalogueLag: CatalogueLag { state.withLock { $0.catalogue } }

    /// Reads the change feed after the loaded index's position and applies it (one swap per
    /// read): the products' current rows and gift flags, and the vectors of those with a new one
    /// (``ProductSearch/following(_:limit:)``).
    func followCatalogue(_ catalogue: any CatalogueStore) async {
        guard let search = state.withLock({ $0.snapshot.search }) else { return }
        do {
            var current = search
            var lastAt: Date?
            while let next = try await current.following(catalogue) {
                current = next.search
                lastAt = next.lastAt
                if !next.full { break }
            }
            let applied = current
            let swapped = state.withLock { s -> Bool in
                // A reload meanwhile: the next read applies the feed to the new index instead.
                guard s.snapshot.search === search else { return false }
                s.snapshot.search = applied
                return true
            }
            guard swapped else { return }
            let newest = try await catalogue.lastChangeSeq()
            let behind = max(0, newest - applied.appliedChangeSeq)
            state.withLock {
                $0.catalogue = CatalogueLag(
                    changes: behind, seconds: behind == 0 ? 0 : Date().timeIntervalSince(lastAt ?? Date()),
                    appliedSeq: applied.appliedChangeSeq, deltaVectors: applied.deltaCount,
                    caughtUp: $0.catalogue.caughtUp || behind == 0, problem: nil)
            }
            catalogueChanges.record(behind)
            catalogueDelta.record(applied.deltaCount)
        } catch {
            state.withLock { $0.catalogue.problem = "\(error)" }
            logger.warning("the change feed could not be applied (it is read again): \(error)")
        }
    }

    /// The vector dimension (2048 for ResNet50).
    public var dimension: Int { embedder.dimension }

    // MARK: Embeddings

    /// Embeds one image. Concurrent calls share forward passes (up to
    /// ``EwallConfiguration/Limits/maxBatchSize`` images each).
    ///
    /// With Redis configured, the embedding cache is asked first (the same bytes under the same
    /// model key and preprocessing give the same vector, bit for bit), and a vector the model
    /// made is written to it without delaying the answer.
    public func embed(_ image: ImageSource) async throws(EwallError) -> ImageEmbedding {
        let (bytes, fetchedSHA) = try await self.bytes(of: image)
        let sha = cache == nil ? "" : fetchedSHA ?? ImageFetcher.sha256(bytes)
        if let cache, let hit = await cache.lookup(sha256: sha) {
            return ImageEmbedding(
                vector: hit.vector, modelID: modelID, preprocessing: modelKey.preprocessing,
                format: hit.format, width: hit.width, height: hit.height)
        }
        let prepared: PreparedImage
        switch await embedder.prepare(bytes) {
        case .success(let p): prepared = p
        case .failure(let f): throw EwallError(f)
        }
        switch try await batcher.submit(prepared.tensor) {
        case .success(let vector):
            let info = prepared.info
            if let cache {
                let entry = CachedEmbedding(
                    vector: vector, imageSHA256: sha, format: info.format, width: info.width, height: info.height)
                Task { await cache.store([entry]) }
            }
            return ImageEmbedding(
                vector: vector, modelID: modelID, preprocessing: modelKey.preprocessing,
                format: info.format, width: info.width, height: info.height)
        case .failure(let e):
            throw EwallError(ItemFailure(e))
        }
    }

    /// What the embedding cache has done so far (`nil` without Redis).
    public var cacheStatistics: CacheStatistics? { cache?.statistics }

    /// The image's bytes, and their sha256 when the fetcher computed it.
    private func bytes(of image: ImageSource) async throws(EwallError) -> ([UInt8], String?) {
        switch image {
        case .bytes(let b):
            guard !b.isEmpty else { throw EwallError.invalid("the image is empty") }
            guard b.count <= configuration.limits.maxImageBytes else {
                throw EwallError(
                    .unprocessable, FailureClass.tooLarge,
                    "the image has \(b.count) bytes, above the limit of \(configuration.limits.maxImageBytes)")
            }
            return (b, nil)
        case .url(let u):
            try checked(u, as: .imageURL)
            switch await fetcher.fetch(u) {
            case .success(let f): return (f.bytes, f.sha256)
            case .failure(let e): throw EwallError(fetching: u, e)
            }
        }
    }

    // MARK: Similar products

    /// Products similar to a stored product: its stored vector, itself excluded, the
    /// platform's rules by default (k 10, similarity 1/(1+L2) ≥ 0.5, same category, in stock).
    /// An id that breaks ``EwallConfiguration/inputRules`` is refused with `invalid_input`.
    /// Concurrent calls (and ``similar(image:category:excluding:query:)``) are searched
    /// together, each answered as it would be alone; a lone call runs at once.
    public func similar(
        productID: String, query: SimilarQuery = SimilarQuery()
    ) async throws(EwallError) -> SimilarAnswer {
        try checked(productID, as: .productID)
        let search = try currentSearch()
        do {
            let request = try await search.request(for: productID, query: query)
            return try await coalescer.answer(request, on: search).get()
        } catch {
            throw Self.mapped(error)
        }
    }

    /// Products similar to an image, embedded on the fly. `category` applies the same-category
    /// rule (without one, the rule is skipped and the answer says so); `excluding` is never returned.
    /// A category, excluded id or image URL that breaks ``EwallConfiguration/inputRules`` is
    /// refused with `invalid_input` before any work.
    public func similar(
        image: ImageSource, category: String? = nil, excluding: String? = nil,
        query: SimilarQuery = SimilarQuery()
    ) async throws(EwallError) -> SimilarAnswer {
        if let category { try checked(category, as: .category) }
        if let excluding { try checked(excluding, as: .productID) }
        let search = try currentSearch()
        guard search.manifest.key == modelKey else {
            throw EwallError(
                .unavailable, "model_mismatch",
                "the index holds vectors of \(search.manifest.modelID) (\(search.manifest.preprocessing)), "
                    + "this service embeds with \(modelID) (\(modelKey.preprocessing)): rebuild the index from this model's vectors"
            )
        }
        let e = try await embed(image)
        do {
            let request = SimilarRequest(vector: e.vector, category: category, excluding: excluding, query: query)
            return try await coalescer.answer(request, on: search).get()
        } catch {
            throw Self.mapped(error)
        }
    }

    private func currentSearch() throws(EwallError) -> ProductSearch {
        let snapshot = state.withLock { $0.snapshot }
        guard let search = snapshot.search else {
            throw EwallError(
                .unavailable, "index_unavailable",
                "no index is loaded from \(configuration.indexPath)"
                    + (snapshot.problem.map { ": \($0)" } ?? "") + "; run rebuild-faiss-index")
        }
        return search
    }

    // MARK: Classification

    /// The category of a stored product: its stored vector against the references, then its
    /// title's keywords, then `generic`. The answer explains which step decided.
    /// An id that breaks ``EwallConfiguration/inputRules`` is refused with `invalid_input`.
    public func classify(productID: String) async throws(EwallError) -> Classification {
        try checked(productID, as: .productID)
        let classifier = state.withLock { $0.snapshot.classifier }
        do {
            guard let product = try await store.product(id: productID) else {
                throw EwallError.unknownProduct(productID)
            }
            let vector = try await store.embedding(productID: productID, key: modelKey)?.vector
            return try classifier.classify(
                ClassifierInput(
                    productID: productID, vector: vector, title: product.title,
                    brand: product.brand, price: product.price))
        } catch {
            throw Self.mapped(error)
        }
    }

    /// The category of a product that is not stored: a title (and brand) and/or an image.
    /// A title, brand or image URL that breaks ``EwallConfiguration/inputRules`` is refused with
    /// `invalid_input`.
    public func classify(
        title: String?, brand: String? = nil, image: ImageSource? = nil
    ) async throws(EwallError) -> Classification {
        if let title { try checked(title, as: .title) }
        if let brand { try checked(brand, as: .brand) }
        guard title?.isEmpty == false || image != nil else {
            throw EwallError.invalid("give a title, an image, or both")
        }
        let classifier = state.withLock { $0.snapshot.classifier }
        var vector: [Float]?
        if let image { vector = try await embed(image).vector }
        do {
            return try classifier.classify(ClassifierInput(productID: nil, vector: vector, title: title, brand: brand))
        } catch {
            throw Self.mapped(error)
        }
    }

    // MARK: Gifts

    /// Whether one product is a gift or sample, by the gift rules: the registered list is not
    /// consulted (no id), then a zero price or supply price, the title's words, and, with an
    /// image, its resemblance to a registered gift. Unavailable without gift rules.
    public func checkGift(
        title: String?, brand: String? = nil, price: Double? = nil, supplyPrice: Double? = nil,
        image: ImageSource? = nil
    ) async throws(EwallError) -> GiftDecision {
        if let title { try checked(title, as: .title) }
        if let brand { try checked(brand, as: .brand) }
        guard title?.isEmpty == false || price != nil || supplyPrice != nil || image != nil else {
            throw EwallError.invalid("give a title, a price, an image, or some of them")
        }
        for (name, v) in [("price", price), ("supply_price", supplyPrice)] {
            if let v, !(v.isFinite && v >= 0) { throw EwallError.invalid("\(name) must be a number >= 0") }
        }
        guard let gifts = state.withLock({ $0.snapshot.gifts }) else {
            throw EwallError(.unavailable, "gift_rules_unavailable", "no gift rules are configured")
        }
        var vector: [Float]?
        if let image, gifts.hasMasterVectors { vector = try await embed(image).vector }
        return gifts.decide(
            GiftInput(title: title, brand: brand, price: price, supplyPrice: supplyPrice, vector: vector))
    }

    // MARK: The index

    /// Loads the index folder again and swaps it in atomically, with fresh product metadata
    /// (category, stock) and classifier references: requests in flight finish on the old
    /// index, new ones use the new. On failure the old index stays and the error is thrown.
    @discardableResult
    public func reloadIndex() async throws(EwallError) -> IndexStatus {
        let folder = IndexFolder(path: configuration.indexPath)
        let search: ProductSearch
        do {
            search = try await Self.openConsistently(
                folder: folder, store: store, memoryMapped: configuration.indexMemoryMapped)
        } catch {
            reloadFailures.increment()
            let e = Self.mapped(error)
            let message = folder.exists ? e.message : "\(folder.path) holds no index"
            state.withLock {
                if $0.snapshot.search == nil { $0.snapshot.problem = message }
            }
            throw EwallError(.unavailable, "index_unavailable", message)
        }
        let classifier: CategoryClassifier
        let gifts: GiftDetector?
        do {
            (classifier, gifts) = try await Self.openClassifier(
                store: store, key: modelKey, rules: rules, giftRules: giftRules, configuration: configuration)
        } catch {
            (classifier, gifts) = state.withLock { ($0.snapshot.classifier, $0.snapshot.gifts) }
            logger.warning("classifier references not refreshed: \(error.message)")
        }
        state.withLock {
            $0.snapshot = Snapshot(
                search: search, classifier: classifier, gifts: gifts, loadedAt: Date(),
                builtAt: search.manifest.builtDate, problem: nil)
            $0.catalogue.caughtUp = false
        }
        if let catalogue = store as? any CatalogueStore, configuration.catalogueFollowInterval != nil {
            await followCatalogue(catalogue)
        }
        reloads.increment()
        for w in search.warnings { logger.warning("index: \(w)") }
        logger.info(
            "index loaded: \(search.manifest.factory), \(search.count) vectors of \(search.manifest.modelID), built \(search.manifest.builtAt)"
        )
        recordIndexGauges()
        return indexStatus
    }

    /// Opens the folder, then checks that its manifest did not change while the files were read
    /// (a rebuild publishing at that moment); if it did, reads again.
    private static func openConsistently(
        folder: IndexFolder, store: any EmbeddingStore, memoryMapped: Bool
    ) async throws -> ProductSearch {
        var attempt = 0
        while true {
            attempt += 1
            let search = try await ProductSearch.open(folder: folder, store: store, memoryMapped: memoryMapped)
            if attempt >= 3 || (try? folder.manifest()) == search.manifest { return search }
        }
    }

    private func reloadIfChanged() async {
        let onDisk = try? IndexFolder(path: configuration.indexPath).manifest()
        let loaded = state.withLock { $0.snapshot.search?.manifest }
        recordIndexGauges()
        guard let onDisk, onDisk != loaded else { return }
        do {
            try await reloadIndex()
        } catch {
            logger.warning("index reload failed (the previous index stays): \(error.message)")
        }
    }

    /// The loaded index: what, how big, how old.
    public var indexStatus: IndexStatus {
        let snapshot = state.withLock { $0.snapshot }
        guard let s = snapshot.search else {
            return IndexStatus(
                loaded: false, path: configuration.indexPath, factory: nil, count: 0, modelID: nil, builtAt: nil,
                loadedAt: nil, ageSeconds: nil, warnings: [], problem: snapshot.problem)
        }
        return IndexStatus(
            loaded: true, path: configuration.indexPath, factory: s.manifest.factory, count: s.count,
            modelID: s.manifest.modelID, builtAt: s.manifest.builtAt, loadedAt: snapshot.loadedAt,
            ageSeconds: snapshot.builtAt.map { Date().timeIntervalSince($0) }, warnings: s.warnings,
            problem: snapshot.problem)
    }

    /// Records the index size and age gauges (`ewall_index_vectors`, `ewall_index_age_seconds`);
    /// the index watch does so every tick. Call it before rendering metrics.
    public func recordIndexGauges() {
        let status = indexStatus
        indexVectors.record(status.count)
        indexAge.record(status.ageSeconds ?? 0)
        // Process totals: similar-by-id searches that took their recorded nearest lists, and
        // those that took the coarse pass instead (see NearestLists).
        let nearest = NearestLists.stats
        nearestUsed.record(nearest.used)
        nearestDeclined.record(nearest.declined)
    }

    // MARK: Health

    /// Model, store and index loaded and consistent. Asks the store a one-row question.
    public func readiness() async -> Readiness {
        var problems: [String] = []
        var storeOK = true
        do {
            _ = try await store.product(id: "")
        } catch {
            storeOK = false
            problems.append("store \(store.displayName): \(error)")
        }
        let (search, problem, isShutDown) = state.withLock { ($0.snapshot.search, $0.snapshot.problem, $0.shutDown) }
        if isShutDown { problems.append("shutting down") }
        let lag = catalogueLag
        let following = store is any CatalogueStore && configuration.catalogueFollowInterval != nil
        if following, search != nil, !lag.caughtUp {
            problems.append("catching up with the change feed: \(lag.changes) changes behind")
        }
        if search == nil { problems.append("no index: \(problem ?? "not loaded")") }
        var consistent = search != nil
        if let search, search.manifest.key != modelKey {
            consistent = false
            problems.append(
                "the index holds vectors of \(search.manifest.modelID) (\(search.manifest.preprocessing)), "
                    + "the model is \(modelID) (\(modelKey.preprocessing))")
        }
        return Readiness(
            model: !isShutDown, store: storeOK, index: search != nil,
            consistent: consistent && (!following || search == nil || lag.caughtUp),
            problems: problems)
    }

    /// What the dynamic batcher has done so far.
    public var batching: BatchingStatistics {
        let s = batcher.snapshot
        return BatchingStatistics(
            images: s.images, batches: s.batches, refused: s.refused, sizes: s.sizes,
            meanBatchSize: s.meanBatch, queueDepth: batcher.depth)
    }

    // MARK: Lifecycle

    /// Runs until graceful shutdown (swift-service-lifecycle), then shuts the service down:
    /// queued embeds finish, the index watch stops, connections close.
    public func run() async throws {
        try? await gracefulShutdown()
        await shutdown()
    }

    /// Stops accepting embeds, finishes the queued ones, stops the index watch and closes the
    /// fetcher and the store. Calls after the first do nothing.
    public func shutdown() async {
        let (first, watcher, follower) = state.withLock { s -> (Bool, Task<Void, Never>?, Task<Void, Never>?) in
            defer {
                s.shutDown = true
                s.watcher = nil
                s.follower = nil
            }
            return (!s.shutDown, s.watcher, s.follower)
        }
        guard first else { return }
        watcher?.cancel()
        follower?.cancel()
        batcher.finish()
        await runner.value
        try? await fetcher.shutdown()
        await store.close()
        await cache?.client.close()
    }

    // MARK: Helpers

    /// Throws `invalid_input` with the reason when `value` breaks the configured input rules.
    private func checked(_ value: String, as field: InputRules.Field) throws(EwallError) {
        if let reason = configuration.inputRules.problem(value, as: field) {
            throw EwallError(InputError(field: field, reason: reason))
        }
    }

    private static func openClassifier(
        store: any EmbeddingStore, key: ModelKey, rules: KeywordRules?, giftRules: GiftRules?,
        configuration: EwallConfiguration
    ) async throws(EwallError) -> (CategoryClassifier, GiftDetector?) {
        do {
            var gifts: GiftDetector?
            if let giftRules { gifts = try await GiftDetector.open(store: store, rules: giftRules, key: key) }
            let classifier = try await CategoryClassifier.open(
                store: store, key: key, rules: rules, configuration: configuration.classifier, gifts: gifts)
            return (classifier, gifts)
        } catch {
            throw mapped(error)
        }
    }

    static func mapped(_ error: any Error) -> EwallError {
        switch error {
        case let e as EwallError: return e
        case let e as IndexError: return EwallError(e)
        case let e as StoreError: return EwallError(e)
        case let e as ClassifierError: return EwallError(.internal, "classifier_error", e.message)
        default: return EwallError(.internal, "internal", "\(error)")
        }
    }
}
