import EwallCore
import EwallStore
import Foundation

/// What `rebuild-faiss-index` is asked to do.
public struct IndexBuildOptions: Sendable {
    public var folder: IndexFolder
    /// Set by ``IndexBuilder/build(store:options:progress:)``: the store's change feed position
    /// before the vectors are read (recorded in the manifest).
    var changeSeq: Int64?
    /// `auto`, or a FAISS factory string.
    public var index: String
    public var metric: IndexMetric
    /// recall@10 an approximate index must reach against exact search.
    public var targetRecall: Double
    /// Bytes the index's vectors may take; `auto` picks a compressed kind above it.
    public var maxMemory: Int64
    /// Update the existing index in place of a full build where that is possible.
    public var incremental: Bool
    /// Which vectors (needed only when the store holds several model keys).
    public var modelID: String?
    public var preprocessing: String?
    /// Held-out queries for measuring recall.
    public var recallQueries: Int
    public var seed: UInt64
    /// Rows per store read.
    public var pageSize: Int
    public var threads: Int
    /// Compressed kinds (SQ, PQ) re-rank by exact vectors kept in `vectors.f32` beside the index.
    public var refine: Bool
    /// IVF: lists holding more than this many times the mean share of the training sample are
    /// split into lists of about the mean (``FaissIndex/train(_:maxListFactor:)``); nil: FAISS's
    /// k-means as it comes. Default 4. On clustered 2048-d data k-means leaves "hub" centroids,
    /// the mean of many clusters, near every query: at 100k one list held 5.5% of the catalogue
    /// and sat among nearly every query's two nearest (bench/README.md has the figures).
    public var maxListFactor: Double?

    public init(
        folder: IndexFolder = IndexFolder(path: IndexFolder.defaultPath), index: String = "auto",
        metric: IndexMetric = .l2, targetRecall: Double = 0.95, maxMemory: Int64 = IndexBuildOptions.defaultMaxMemory,
        incremental: Bool = false, modelID: String? = nil, preprocessing: String? = nil,
        recallQueries: Int = 1000, seed: UInt64 = 0, pageSize: Int = 2048,
        threads: Int = ProcessInfo.processInfo.activeProcessorCount, refine: Bool = true,
        maxListFactor: Double? = 4
    ) {
        self.folder = folder
        self.index = index
        self.metric = metric
        self.targetRecall = targetRecall
        self.maxMemory = maxMemory
        self.incremental = incremental
        self.modelID = modelID
        self.preprocessing = preprocessing
        self.recallQueries = recallQueries
        self.seed = seed
        self.pageSize = pageSize
        self.threads = threads
        self.refine = refine
        self.maxListFactor = maxListFactor
    }

    /// Half the machine's memory.
    public static var defaultMaxMemory: Int64 { Int64(ProcessInfo.processInfo.physicalMemory / 2) }
}

/// Where a build is, for a progress display.
public struct IndexBuildProgress: Sendable {
    public var phase: String
    public var done: Int
    public var total: Int
}

/// What a build did: the summary `rebuild-faiss-index` prints (and `--json` emits).
public struct IndexBuildSummary: Sendable, Codable {
    public var folder: String
    public var mode: String
    /// Why `--incremental` fell back to a full rebuild, when it did.
    public var fullRebuildReason: String?
    public var factory: String
    public var choice: String
    public var metric: IndexMetric
    public var modelID: String
    public var preprocessing: String
    public var dimension: Int
    public var count: Int
    public var added: Int
    public var changed: Int
    public var removed: Int
    public var unchanged: Int
    public var search: IndexManifest.Search
    public var recall: IndexManifest.Recall?
    /// IVF with categories: recall under the default filters (see ``IndexManifest/filteredRecall``).
    public var filteredRecall: IndexManifest.Recall?
    public var seconds: [String: Double]
    public var indexBytes: Int64
    public var warnings: [String]
    /// The distance kernel FAISS's hot loops ran on (``DistanceKernel/current``).
    public var kernel: String = DistanceKernel.current.rawValue
    /// OpenBLAS's name for the kernels it chose for this CPU (``DistanceKernel/blasCore``);
    /// "Prescott" means its generic ones. Nil when the BLAS is not OpenBLAS.
    public var blasCore: String? = DistanceKernel.blasCore

    enum CodingKeys: String, CodingKey {
        case folder, mode, fullRebuildReason = "full_rebuild_reason", factory, choice, metric
        case modelID = "model_id", preprocessing, dimension, count, added, changed, removed, unchanged
        case search, recall, filteredRecall = "filtered_recall", seconds, indexBytes = "index_bytes", warnings, kernel
        case blasCore = "blas_core"
    }
}

/// Builds an index folder from the store's vectors of one model key, streaming: the vectors
/// are read page by page and never all held twice (see docs/faiss-index.md, "Which index").
public enum IndexBuilder {
    public static let recallK = 10
    /// Queries for recall under the default filters, drawn of their own among the products the
    /// filters let a search start from (in stock, with a category). Per-query recall varies
    /// widely (sd about 0.15), so the estimate's standard error is about 0.0027 on 3,000 queries,
    /// against 0.006 on the ~680 eligible of the 1,000 unfiltered queries this once used, and
    /// 0.011 on 200; a point must clear the target by two of them
    /// (``IndexManifest/RecallPoint/lowerBound``).
    public static let filteredRecallQueries = 3000

    public static func build(
        store: any EmbeddingStore, options: IndexBuildOptions,
        progress: @escaping @Sendable (IndexBuildProgress) -> Void = { _ in }
    ) async throws -> IndexBuildSummary {
        FaissIndex.setThreads(options.threads)
        let lock = try IndexLock(folder: options.folder)
        defer { withExtendedLifetime(lock) {} }
        var options = options
        options.changeSeq = try await (store as? any CatalogueStore)?.lastChangeSeq()
        var reason: String?
        if options.incremental {
            if !options.folder.exists {
                reason = "there is no index at \(options.folder.path) yet"
            } else {
                switch try await Incremental.run(store: store, options: options, progress: progress) {
                case .done(let summary): return summary
                case .needsFullRebuild(let why): reason = why
                }
            }
        }
        var summary = try await full(store: store, options: options, progress: progress)
        if let reason {
            summary.fullRebuildReason = reason
            summary.warnings.append("--incremental did a full rebuild: \(reason)")
        }
        return summary
    }

    /// The store key to index: the one asked for, or the store's only one.
    static func resolveKey(_ store: any EmbeddingStore, _ options: IndexBuildOptions) async throws -> ModelKeyCount {
        try await store.resolveKey(modelID: options.modelID, preprocessing: options.preprocessing)
    }

    static func plan(_ options: IndexBuildOptions, count: Int, dimension: Int) throws -> IndexPlan {
        var plan =
            options.index == "auto"
            ? try IndexPlan.auto(count: count, dimension: dimension, maxMemory: options.maxMemory)
            : IndexPlan.explicit(options.index, count: count)
        if !options.refine { plan.refineFactor = nil }
        return plan
    }

    // MARK: Full build

    static func full(
        store: any EmbeddingStore, options: IndexBuildOptions,
        progress: @escaping @Sendable (IndexBuildProgress) -> Void
    ) async throws -> IndexBuildSummary {
        let started = Date()
        var seconds: [String: Double] = [:]
        let keyCount = try await resolveKey(store, options)
        let (key, n, d) = (keyCount.key, keyCount.count, keyCount.dimension)
        guard n > 0 else { throw IndexError(.argument, "\(store.displayName) has no vectors for \(key.modelID)") }
        let plan = try plan(options, count: n, dimension: d)
        let index = try FaissIndex(dimension: d, factory: plan.factory, metric: options.metric)
        var balanced: String?
        // Compressed kinds keep the exact vectors beside the index, for re-ranking.
        let writer = try plan.refineFactor.map { _ in
            try ExactVectorsWriter(url: options.folder.exactVectorsStaging, dimension: d)
        }
        defer { if let writer { try? FileManager.default.removeItem(at: writer.url) } }

        // Seeded choices of rows by ordinal (the store streams in product-id order).
        var rng = SplitMix64(seed: options.seed)
        let queryCount = plan.approximate ? min(options.recallQueries, n) : 0
        // Queries are drawn from the whole catalogue, training rows included at their share
        // (trainingSize / n), because similar-by-id serves the whole catalogue: held-out queries
        // alone read 0.03-0.04 below the recall served at 1M (0.927 against 0.966 at nprobe 1 +
        // hop 10x8), and the build chose settings twice as slow as needed.
        let queryOrdinals = Set(sample(n, queryCount, &rng))
        let needsTraining = !index.isTrained
        let trainOrdinals: Set<Int>? =
            needsTraining && plan.trainingSize < n
            ? Set(sample(n, plan.trainingSize, &rng)) : nil

        // Pass 1: the training sample and the recall queries.
        var queries = RecallQueries(dimension: d)
        if needsTraining || queryCount > 0 {
            let t = Date()
            var training: [Float] = []
            if needsTraining { training.reserveCapacity((trainOrdinals?.count ?? n) * d) }
            try await Stream.pages(store, key, pageSize: options.pageSize) { page in
                for r in 0..<page.count {
                    let ordinal = page.firstOrdinal + r
                    if needsTraining && (trainOrdinals?.contains(ordinal) ?? true) {
                        training.append(contentsOf: page.vector(r))
                    }
                    if queryOrdinals.contains(ordinal) { queries.append(page.vector(r), id: Int64(ordinal)) }
                }
                progress(
                    IndexBuildProgress(phase: "reading training sample", done: page.firstOrdinal + page.count, total: n)
                )
            }
            seconds["read_sample"] = Date().timeIntervalSince(t)
            if needsTraining {
                let t = Date()
                progress(
                    IndexBuildProgress(
                        phase: "training \(plan.factory) on \(training.count / d) vectors", done: 0, total: 1))
                try training.withUnsafeBufferPointer { buf in
                    if let factor = options.maxListFactor, index.kind == .ivf {
                        let (lists, split) = try index.train(buf, maxListFactor: factor)
                        if split > 0 {
                            balanced = String(
                                format: "%d lists above %g× the mean split: %d lists", split, factor, lists)
                        }
                    } else {
                        try index.train(buf)
                    }
                }
                seconds["train"] = Date().timeIntervalSince(t)
            }
        }

        // The categories and stock, for recall under the default filters (IVF: the nprobe that
        // filtered searches start at), read after training: pass 2 drops the filtered tuning if
        // a product came or went since, so the columns are read as late as they can be. The
        // vectors stream in the same product-id order.
        var columns: FilterColumns?
        if queryCount > 0 && index.kind == .ivf {
            columns = try await FilterColumns.read(store, key, count: n)
        }
        // Their queries: a draw of their own among the products the filters let a search start
        // from (after the draws above, which stay as they were), read by product id.
        var filteredQueries = RecallQueries(dimension: d)
        if let c = columns {
            let eligible = (0..<n).filter { c.category[$0] != 0 && c.inStock[$0] }
            let ordinals = sample(eligible.count, filteredRecallQueries, &rng).map { eligible[$0] }.sorted()
            let found = try await store.vectors(productIDs: ordinals.map { c.productIDs[$0] }, key: key)
            for o in ordinals {
                if let v = found[c.productIDs[o]], v.count == d { filteredQueries.append(v[...], id: Int64(o)) }
            }
        }

        var filteredTruth = columns.map {
            FilteredTruth(
                queries: filteredQueries, columns: $0, limit: filteredRecallQueries, k: recallK,
                metric: options.metric)
        }

        // Pass 2: add every vector under its ordinal as id; exact neighbours of the queries on the way.
        // IVF over flat centroids also records each vector's nearest lists (same coarse pass).
        let t = Date()
        try index.reserve(n)
        let nearest = index.probedLists > 0 ? try NearestListsWriter(url: options.folder.nearestListsStaging) : nil
        defer { if let nearest { try? FileManager.default.removeItem(at: nearest.url) } }
        var idMap = IDMap()
        var truth = GroundTruth(queries: queries, k: recallK + 1, metric: options.metric)
        var added = 0
        var faissAdd = 0.0
        try await Stream.pages(store, key, pageSize: options.pageSize) { page in
            let ids = (0..<page.count).map { Int64(page.firstOrdinal + $0) }
            try page.vectors.withUnsafeBufferPointer { buf in
                let ta = Date()
                if let nearest { try nearest.add(buf, ids: ids, to: index) } else { try index.add(buf, ids: ids) }
                faissAdd += Date().timeIntervalSince(ta)
                try writer?.append(buf, ids: ids)
                for r in 0..<page.count {
                    idMap.insert(
                        id: ids[r], productID: page.productIDs[r],
                        hash: IDMap.hash(UnsafeBufferPointer(rebasing: buf[r * d..<(r + 1) * d])))
                }
                try truth.merge(chunk: buf, ids: ids)
                if let c = columns {
                    // A product added or removed since the columns were read: no filtered tuning.
                    let aligned = zip(ids, page.productIDs).allSatisfy { id, product in
                        Int(id) < c.productIDs.count && c.productIDs[Int(id)] == product
                    }
                    if !aligned {
                        columns = nil
                        filteredTruth = nil
                    } else {
                        try filteredTruth?.merge(chunk: buf, ids: ids, columns: c)
                    }
                }
            }
            added += page.count
            progress(IndexBuildProgress(phase: "adding vectors", done: added, total: n))
        }
        seconds["add"] = Date().timeIntervalSince(t)
        seconds["faiss_add"] = faissAdd
        guard added == index.count else {
            throw IndexError(
                .mismatch, "the store changed during the build (\(added) vectors read, \(n) counted): run it again")
        }

        var refine: Refining?
        if let writer, let factor = plan.refineFactor {
            try writer.finish()
            refine = Refining(vectors: try ExactVectors(path: writer.url.path, dimension: d), factor: factor)
        }

        // The recorded lists are complete now: filtered tuning tries a second hop through them.
        var recorded: NearestLists?
        if let nearest {
            try nearest.finish(rows: Int64(n))
            recorded = try NearestLists(path: nearest.url.path)
        }

        // Tune nprobe / efSearch for the recall target.
        let tt = Date()
        var (search, recall) = try Tuning.tune(
            index: index, truth: truth, target: options.targetRecall, refine: refine,
            progress: progress)
        if queryCount > 0 { seconds["tune"] = Date().timeIntervalSince(tt) }
        var filteredRecall: IndexManifest.Recall?
        var filteredWarning: String?
        if let columns, let filteredTruth, refine == nil, let start = search.nprobe {
            let tf = Date()
            if let (nprobe, hop, r) = try Tuning.tuneFiltered(
                index: index, truth: filteredTruth, columns: columns, start: start,
                target: options.targetRecall, nearest: recorded, progress: progress)
            {
                filteredRecall = r
                if r.met {
                    search.filteredNprobe = nprobe
                    search.secondHop = hop
                } else {
                    filteredWarning = String(
                        format: "recall@10 under the default filters %.3f is below the target %.2f even at nprobe %d: "
                            + "filtered searches start at twice nprobe", r.measured, r.target, nprobe)
                }
            }
            seconds["tune_filtered"] = Date().timeIntervalSince(tf)
        }
        try index.setDefaults(nprobe: search.nprobe, efSearch: search.efSearch)
        // An automatic compressed choice that cannot reach the target is no index to serve from.
        if options.index == "auto", let recall, !recall.met, plan.refineFactor != nil {
            let next = IndexPlan.nextLarger(than: plan.factory, count: n, dimension: d)
            let raise =
                next.map {
                    "; the next larger kind, \($0.factory), needs --max-memory \(IndexPlan.sizeText($0.bytes)) (its recall not measured)"
                } ?? ""
            throw IndexError(
                .argument,
                String(
                    format: "%@ reaches recall@10 %.3f at best (nprobe %d), below the target %.2f, ",
                    plan.factory, recall.measured, search.nprobe ?? 0, recall.target)
                    + "within --max-memory \(IndexPlan.sizeText(options.maxMemory))\(raise)")
        }

        let tw = Date()
        progress(IndexBuildProgress(phase: "writing", done: 0, total: 1))
        var manifest = IndexManifest(
            factory: index.factory, metric: options.metric, distance: IndexManifest.distanceNote(options.metric),
            search: search, dimension: d, count: index.count, modelID: key.modelID, preprocessing: key.preprocessing,
            builtAt: isoNow(), buildSeconds: Date().timeIntervalSince(started), buildMode: "full",
            choice: plan.reason + (balanced.map { "; \($0)" } ?? ""), recall: recall, nextID: Int64(n), files: [:],
            refine: plan.refineFactor.map { IndexManifest.Refine(factor: $0) })
        manifest.filteredRecall = filteredRecall
        manifest.changeSeq = options.changeSeq
        if nearest != nil { manifest.nearest = IndexManifest.Nearest() }
        let written = try options.folder.publish(
            index: index, idMap: idMap, manifest: manifest, exactVectors: writer?.url,
            nearestLists: nearest?.url)
        seconds["write"] = Date().timeIntervalSince(tw)
        seconds["total"] = Date().timeIntervalSince(started)
        var warnings: [String] = filteredWarning.map { [$0] } ?? []
        if let recall, !recall.met {
            warnings.append(
                String(
                    format: "recall@10 %.3f is below the target %.2f even at the deepest setting tried: "
                        + "choose a less compressed index (--index) or raise --max-memory", recall.measured,
                    recall.target))
        }
        return IndexBuildSummary(
            folder: options.folder.path, mode: "full", fullRebuildReason: nil, factory: written.factory,
            choice: plan.reason + (balanced.map { "; \($0)" } ?? ""),
            metric: options.metric, modelID: key.modelID, preprocessing: key.preprocessing, dimension: d,
            count: written.count, added: added, changed: 0, removed: 0, unchanged: 0, search: search, recall: recall,
            filteredRecall: filteredRecall, seconds: seconds, indexBytes: written.files["index"]?.bytes ?? 0,
            warnings: warnings)
    }
}

// MARK: - Streaming from the store

/// One page of store rows as one contiguous float array.
struct Page {
    var firstOrdinal: Int
    var productIDs: [String]
    var vectors: [Float]
    var dimension: Int
    var count: Int { productIDs.count }
    func vector(_ r: Int) -> ArraySlice<Float> { vectors[r * dimension..<(r + 1) * dimension] }
}

enum Stream {
    /// Every vector of `key` in product-id order, `pageSize` at a time.
    static func pages(
        _ store: any EmbeddingStore, _ key: ModelKey, pageSize: Int,
        _ body: (Page) async throws -> Void
    ) async throws {
        var after: String?
        var ordinal = 0
        while true {
            let rows = try await store.embeddings(key: key, after: after, limit: pageSize)
            guard let last = rows.last else { return }
            let d = rows[0].embedding.vector.count
            var vectors: [Float] = []
            vectors.reserveCapacity(rows.count * d)
            for r in rows {
                guard r.embedding.vector.count == d else {
                    throw IndexError(
                        .mismatch,
                        "product \(r.embedding.productID) has a \(r.embedding.vector.count)-dim vector, the others \(d)"
                    )
                }
                vectors.append(contentsOf: r.embedding.vector)
            }
            try await body(
                Page(firstOrdinal: ordinal, productIDs: rows.map(\.embedding.productID), vectors: vectors, dimension: d)
            )
            ordinal += rows.count
            after = last.embedding.productID
            if rows.count < pageSize { return }
        }
    }
}

// MARK: - Seeded sampling

struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// `k` distinct ordinals of `0..<n`, seeded; those in `avoiding` only if there is no other way.
func sample(_ n: Int, _ k: Int, _ rng: inout SplitMix64, avoiding: Set<Int> = []) -> [Int] {
    guard k > 0 else { return [] }
    if k >= n { return Array(0..<n) }
    var chosen = Set<Int>()
    let free = n - avoiding.count
    if k <= free {
        if k * 2 > free {
            // Dense: shuffle the free ordinals.
            var all = (0..<n).filter { !avoiding.contains($0) }
            all.shuffle(using: &rng)
            return Array(all.prefix(k)).sorted()
        }
        while chosen.count < k {
            let o = Int(rng.next() % UInt64(n))
            if !avoiding.contains(o) { chosen.insert(o) }
        }
        return chosen.sorted()
    }
    var all = (0..<n).filter { !avoiding.contains($0) } + avoiding.sorted()
    all = Array(all.prefix(k))
    return all.sorted()
}
