import EwallCore
import EwallStore
import Foundation

/// The platform's "similar products" rules, each changeable.
public struct SimilarQuery: Sendable, Hashable {
    /// Results wanted.
    public var k: Int
    /// Keep results with similarity = 1/(1+d) at least this (d: Euclidean distance).
    public var minSimilarity: Double
    /// Only products of the query product's category.
    public var sameCategory: Bool
    /// Only products in stock (a product whose stock is unknown counts as in stock).
    public var inStockOnly: Bool
    /// Gifts and samples (flagged in the store's `gift_flags`) may be answered too. Off by
    /// default: gifts are never recommended; the back office may ask for them.
    public var includeGifts: Bool

    /// The platform's rules: k 10, similarity >= 0.5, same category, in stock, no gifts.
    public init(
        k: Int = SimilarQuery.defaultK, minSimilarity: Double = SimilarQuery.defaultMinSimilarity,
        sameCategory: Bool = true, inStockOnly: Bool = true, includeGifts: Bool = false
    ) {
        self.k = k
        self.minSimilarity = minSimilarity
        self.sameCategory = sameCategory
        self.inStockOnly = inStockOnly
        self.includeGifts = includeGifts
    }

    /// The defaults and bounds every entry point applies (library, `ewall similar`, the HTTP
    /// routes and their OpenAPI document): in one place.
    public static let defaultK = 10
    public static let defaultMinSimilarity = 0.5
    public static let kRange = 1...1000
    public static let minSimilarityRange = 0.0...1.0

    /// Why this query is out of bounds (`nil`: it is within them).
    public var problem: String? {
        if !Self.kRange.contains(k) {
            return "k must be \(Self.kRange.lowerBound)...\(Self.kRange.upperBound), not \(k)"
        }
        if !Self.minSimilarityRange.contains(minSimilarity) {
            return
                "min_similarity must be between \(Self.minSimilarityRange.lowerBound) and \(Self.minSimilarityRange.upperBound), not \(minSimilarity)"
        }
        return nil
    }
}

/// One search to make: a query vector with the filters that apply to it (what
/// ``ProductSearch/similar(vector:category:excluding:query:)`` takes), for ``ProductSearch/similar(batch:)``.
public struct SimilarRequest: Sendable {
    public var vector: [Float]
    /// The same-category rule's category (`nil`: the rule is skipped, and the answer says so).
    public var category: String?
    /// A product id never returned (the query product).
    public var excluding: String?
    public var query: SimilarQuery
    /// The int64 id whose stored vector `vector` is (set by ``ProductSearch/request(for:query:)``
    /// when the vector came from the index folder): a batched search then uses the lists
    /// recorded for it at build (``NearestLists``) instead of a coarse pass.
    public var storedID: Int64?

    public init(vector: [Float], category: String?, excluding: String? = nil, query: SimilarQuery = SimilarQuery()) {
        self.vector = vector
        self.category = category
        self.excluding = excluding
        self.query = query
    }
}

/// One similar product.
public struct SimilarProduct: Sendable, Codable, Hashable {
    public var productID: String
    /// 1 / (1 + distance).
    public var similarity: Double
    /// Cosine between the two vectors (approximate for compressed indexes).
    public var cosine: Double
    /// Euclidean distance (the square root of FAISS's squared L2).
    public var distance: Double
    public var category: String?
    public var inStock: Bool?
    public var title: String?

    enum CodingKeys: String, CodingKey {
        case productID = "product_id", similarity, cosine, distance, category, inStock = "in_stock", title
    }
}

/// The index snapshot that answered a search. A reload swaps snapshots while searches run;
/// this names the one that produced the answer it comes with (not whatever is loaded later).
public struct AnsweringIndex: Sendable, Codable, Hashable {
    public var factory: String
    public var count: Int
    public var modelID: String
    public var preprocessing: String
    /// When `rebuild-faiss-index` built it (ISO 8601, from its manifest).
    public var builtAt: String
    /// sha256 of the index file (from the manifest): tells two builds apart.
    public var sha256: String?

    enum CodingKeys: String, CodingKey {
        case factory, count, modelID = "model_id", preprocessing, builtAt = "built_at", sha256
    }
}

/// An answer with what was searched, so that a short list explains itself.
public struct SimilarAnswer: Sendable, Codable {
    public var query: String?
    public var category: String?
    public var results: [SimilarProduct]
    /// Neighbours that passed the filters before the similarity threshold.
    public var candidates: Int
    /// Products the filters allowed (excluding the query).
    public var eligible: Int
    /// The nprobe / efSearch the search ended at (deeper than the index's when filters thinned it).
    public var nprobe: Int?
    public var efSearch: Int?
    /// The second hop the search took after its nprobe lists (filtered searches, where the build chose one).
    public var secondHop: IndexManifest.Hop?
    public var notes: [String]
    /// The index snapshot that answered.
    public var index: AnsweringIndex

    enum CodingKeys: String, CodingKey {
        case query, category, results, candidates, eligible, nprobe, efSearch = "ef_search", secondHop = "second_hop",
            notes, index
    }
}

/// Similar products over an index folder and the store's product metadata: the platform's
/// rules (k=10, the query product excluded by id, similarity 1/(1+d) ≥ 0.5, same category,
/// in stock), with the filters applied inside the FAISS search (an id selector), and the
/// search made deeper when the filters leave fewer than k.
///
/// Safe to use from many tasks at once: it only reads. Product metadata (category, stock) is
/// read from the store when it opens; ``open(folder:store:memoryMapped:)`` again to refresh.
public final class ProductSearch: Sendable {
    public let manifest: IndexManifest
    /// Staleness and consistency warnings found when opening (index older than the store, ...).
    public let warnings: [String]
    /// Store vectors of this model key that the index does not hold.
    public let missingFromIndex: Int
    /// The snapshot this search answers from, carried in every answer.
    public let identity: AnsweringIndex

    let index: FaissIndex
    /// Product id <-> int64 id.
    let ids: ProductIDTable
    /// Category, stock and title of each indexed product the store still has.
    let columns: ProductColumns
    /// Compressed kinds: the exact vectors answers are re-ranked by, and candidates per answer.
    let exact: ExactVectors?
    let refineFactor: Int
    /// IVF over flat centroids: each stored vector's nearest lists, recorded at build.
    let nearest: NearestLists?
    /// The second hop filtered searches take (the build's choice, through ``nearest``), or nil.
    let secondHop: SecondHop?
    let store: any EmbeddingStore
    /// Below this many eligible products, an exact search over just them (cheaper than a deep
    /// approximate search, and exact).
    public let exactBelow: Int
    /// Products with a vector the index does not hold (new since its build, or a new image),
    /// searched exactly beside it (LiveCatalogue.swift).
    let delta: DeltaVectors
    /// The change feed entries applied to this search (``applying(_:through:)``).
    let changeSeq: Int64

    init(
        loaded: IndexFolder.Loaded, store: any EmbeddingStore, columns: ProductColumns, missing: Int, storeCount: Int,
        exactBelow: Int
    ) {
        self.exactBelow = exactBelow
        delta = DeltaVectors()
        changeSeq = loaded.manifest.changeSeq ?? 0
        manifest = loaded.manifest
        index = loaded.index
        identity = AnsweringIndex(
            factory: loaded.manifest.factory, count: loaded.index.count, modelID: loaded.manifest.modelID,
            preprocessing: loaded.manifest.preprocessing, builtAt: loaded.manifest.builtAt,
            sha256: loaded.manifest.files["index"]?.sha256)
        ids = loaded.ids
        exact = loaded.exact
        nearest = loaded.nearest
        if let table = loaded.nearest, let hop = loaded.manifest.search.secondHop {
            secondHop = SecondHop(table: table, top: hop.top, lists: hop.lists, maxList: hop.maxList)
        } else {
            secondHop = nil
        }
        refineFactor = loaded.exact == nil ? 1 : max(1, loaded.manifest.refine?.factor ?? 1)
        self.columns = columns
        self.store = store
        missingFromIndex = missing
        var warnings: [String] = []
        if missing > 0 {
            warnings.append(
                "the index (built \(loaded.manifest.builtAt)) is older than the store: \(missing) of the store's "
                    + "\(storeCount) vectors are not in it; run rebuild-faiss-index --incremental")
        }
        let gone = loaded.ids.count - columns.count
        if gone > 0 {
            warnings.append("\(gone) products in the index are no longer in the store; they are never returned")
        }
        self.warnings = warnings
    }

    /// The same search with other columns and delta (a replica's changes applied).
    init(copying s: ProductSearch, columns: ProductColumns, delta: DeltaVectors, changeSeq: Int64) {
        manifest = s.manifest
        warnings = s.warnings
        missingFromIndex = s.missingFromIndex
        identity = s.identity
        index = s.index
        ids = s.ids
        exact = s.exact
        refineFactor = s.refineFactor
        nearest = s.nearest
        secondHop = s.secondHop
        store = s.store
        exactBelow = s.exactBelow
        self.columns = columns
        self.delta = delta
        self.changeSeq = changeSeq
    }

    /// Opens the index folder and reads the filter metadata for its model key from the store,
    /// a page at a time into flat columns (see ``ProductColumns``).
    /// `exactBelow`: when the filters leave fewer eligible products than this, they are
    /// searched exactly (their vectors from the index), which is both exact and faster than
    /// searching an approximate index deeply for them.
    public static func open(
        folder: IndexFolder, store: any EmbeddingStore, memoryMapped: Bool = false,
        exactBelow: Int = 2048
    ) async throws -> ProductSearch {
        let loaded = try folder.load(memoryMapped: memoryMapped)
        let m = loaded.manifest
        let keys = try await store.modelKeys()
        guard let mine = keys.first(where: { $0.key == m.key }) else {
            let has = keys.map { "\($0.key.modelID) (\($0.key.preprocessing))" }.joined(separator: ", ")
            throw IndexError(
                .mismatch,
                "the index at \(folder.path) holds vectors of model \(m.modelID) (\(m.preprocessing)), "
                    + "and \(store.displayName) has none of them (it has: \(has.isEmpty ? "nothing" : has)): "
                    + "rebuild the index from this store")
        }
        var columns = ProductColumns(capacity: max(Int(m.nextID), loaded.ids.capacity))
        var missing = 0
        var after: String?
        while true {
            let page = try await store.productsWithVectors(key: m.key, after: after, limit: 10_000)
            for p in page {
                guard let id = loaded.ids.id(of: p.id) else {
                    missing += 1
                    continue
                }
                try columns.set(id, p)
            }
            guard page.count == 10_000, let last = page.last else { break }
            after = last.id
        }
        // Gifts, a bitmap beside stock and category: left out of answers unless a query asks.
        for productID in try await store.giftProductIDs() {
            if let id = loaded.ids.id(of: productID), id < Int64(columns.present.capacity) { columns.markGift(id) }
        }
        columns.finish()
        // Products the live catalogue lists as unlisted are never answered.
        if let catalogue = store as? any CatalogueStore {
            for id in try await catalogue.unlistedProductIDs() {
                if let i = loaded.ids.id(of: id) { try columns.update(i, nil) }
            }
        }
        return ProductSearch(
            loaded: loaded, store: store, columns: columns, missing: missing, storeCount: mine.count,
            exactBelow: exactBelow)
    }

    /// Products similar to a stored product (its stored vector; itself excluded by id).
    ///
    /// A product the index holds is answered from the index alone: its category and stock as
    /// read when this search opened, its vector from the index when the index stores vectors
    /// exactly (Flat codes). Other products are read from the store.
    public func similar(to productID: String, query: SimilarQuery = SimilarQuery()) async throws -> SimilarAnswer {
        let r = try await request(for: productID, query: query)
        return try similar(vector: r.vector, category: r.category, excluding: r.excluding, query: r.query)
    }

    /// The search ``similar(to:query:)`` makes for a stored product (its vector, category and
    /// id to exclude), to answer later, alone or in a batch (``similar(batch:)``).
    public func request(for productID: String, query: SimilarQuery = SimilarQuery()) async throws -> SimilarRequest {
        if let v = delta.vector(productID, dimension: index.dimension),
            let row = delta.product(productID)
        {
            return SimilarRequest(vector: v, category: row.category, excluding: productID, query: query)
        }
        if storesExactVectors, let id = ids.id(of: productID), columns.present.contains(id) {
            var r = SimilarRequest(
                vector: try exact?.vector(id) ?? index.reconstruct(id: id), category: columns.categoryName(id),
                excluding: productID, query: query)
            r.storedID = id
            return r
        }
        guard let product = try await store.product(id: productID) else {
            throw IndexError(.unknownProduct, "unknown product \(productID)")
        }
        guard let e = try await store.embedding(productID: productID, key: manifest.key) else {
            throw IndexError(
                .noVector,
                "product \(productID) has no vector for model \(manifest.modelID) "
                    + "(\(manifest.preprocessing)): embed it with ewall-embed first")
        }
        return SimilarRequest(vector: e.vector, category: product.category, excluding: productID, query: query)
    }

    /// Products similar to a vector (e.g. an image embedded on the fly). `category` applies the
    /// same-category rule; `excluding` is a product id never returned.
    public func similar(
        vector: [Float], category: String?, excluding: String? = nil,
        query: SimilarQuery = SimilarQuery()
    ) throws -> SimilarAnswer {
        var plan = try planned(SimilarRequest(vector: vector, category: category, excluding: excluding, query: query))
        while plan.searching {
            let found = try index.search(vector, k: query.k * refineFactor, parameters: plan.params).results(of: 0)
            try advance(&plan, found: found)
        }
        return try answer(plan)
    }

    /// Several searches at once, each answered exactly as ``similar(vector:category:excluding:query:)``
    /// answers it alone (the same results, notes and depths), in order; a request that fails
    /// gets its error without failing the others. The approximate searches of each round (the
    /// first, then any made deeper because filters thinned them) run as one batched FAISS call
    /// per k: for IVF, one coarse pass for all of them (none for stored products whose nearest
    /// lists the build recorded), then each query's lists with its own filter.
    public func similar(batch: [SimilarRequest]) -> [Result<SimilarAnswer, any Error>] {
        var plans: [Result<Plan, any Error>] = batch.map { r in Result { try planned(r) } }
        while true {
            let active = plans.indices.filter { if case .success(let p) = plans[$0] { p.searching } else { false } }
            if active.isEmpty { break }
            for k in Set(active.map { batch[$0].query.k }).sorted() {
                let group = active.filter { batch[$0].query.k == k }
                let found: [Neighbours]
                do {
                    found = try index.searchBatch(
                        group.map { i in
                            guard case .success(let p) = plans[i] else { preconditionFailure() }
                            return (batch[i].vector, p.params)
                        }, k: k * refineFactor)
                } catch {
                    for i in group { plans[i] = .failure(error) }
                    continue
                }
                for (j, i) in group.enumerated() {
                    guard case .success(var p) = plans[i] else { continue }
                    do {
                        try advance(&p, found: found[j].results(of: 0))
                        plans[i] = .success(p)
                    } catch {
                        plans[i] = .failure(error)
                    }
                }
            }
        }
        return plans.map { r in r.flatMap { p in Result { try answer(p) } } }
    }

    /// One search in progress: its filters, its parameters (deepened round by round) and what
    /// it found so far.
    struct Plan {
        var request: SimilarRequest
        var notes: [String]
        var allowed: IDBitmap
        var excluded: [Int64]
        var eligible: Int
        var params: SearchParameters
        var found: [(id: Int64, distance: Float)] = []
        /// Another approximate search with `params` is due.
        var searching: Bool
    }

    private func planned(_ r: SimilarRequest) throws -> Plan {
        let (vector, category, excluding, query) = (r.vector, r.category, r.excluding, r.query)
        guard vector.count == index.dimension else {
            throw IndexError(.mismatch, "the query vector has \(vector.count) dims, the index \(index.dimension)")
        }
        guard query.k > 0 else { throw IndexError(.argument, "k must be at least 1") }
        var notes: [String] = []
        let allowed: IDBitmap
        let allowedCount: Int // allowed.count, counted once when the columns were read
        let present = columns.present
        if query.sameCategory, let category {
            if let c = columns.categoryCode(category) {
                (allowed, allowedCount) = columns.allowed(
                    category: c, inStockOnly: query.inStockOnly, includeGifts: query.includeGifts)
            } else {
                allowed = IDBitmap(capacity: present.capacity)
                allowedCount = 0
            }
        } else {
            if query.sameCategory { notes.append("the query has no category: the same-category rule was not applied") }
            (allowed, allowedCount) = columns.allowed(
                category: nil, inStockOnly: query.inStockOnly, includeGifts: query.includeGifts)
        }
        let excluded = excluding.flatMap { ids.id(of: $0) }.map { [$0] } ?? []
        let eligible = allowedCount - excluded.filter(allowed.contains).count

        // Under a filter, the allowed neighbours lie further out than the unfiltered ones the
        // build tuned for: start IVF where the build measured the default filters meet the
        // target (``IndexManifest/Search/filteredNprobe``, with its second hop where the build
        // chose one), or, without that measurement, at twice the tuned nprobe (at 100k before
        // balanced lists: 0.934 recall@10 at the tuned one).
        let filtered = eligible < columns.presentCount - excluded.count
        let start = manifest.search.nprobe.map { p in
            filtered ? min(index.listCount, manifest.search.filteredNprobe ?? p * 2) : p
        }
        var plan = Plan(
            request: r, notes: notes, allowed: allowed, excluded: excluded, eligible: eligible,
            params: SearchParameters(
                nprobe: start,
                efSearch: manifest.search.efSearch, allowed: allowed, excluded: excluded,
                nearest: r.storedID.flatMap { nearest?.row($0) },
                hop: filtered ? secondHop : nil),
            searching: true)
        if index.kind != .flat && eligible < exactBelow {
            plan.found = try exhaustive(vector, allowed: allowed, excluded: excluded, k: query.k)
            plan.params.nprobe = nil
            plan.params.efSearch = nil
            plan.params.hop = nil
            plan.searching = false
        }
        return plan
    }

    /// Takes one approximate search's results; when filters thinned them, deepens the search
    /// (another round) until k pass or the index is exhausted.
    private func advance(_ plan: inout Plan, found: [(id: Int64, distance: Float)]) throws {
        let k = plan.request.query.k
        // Compressed codes found refineFactor × k candidates; exact vectors choose the k.
        plan.found = try exact?.rerank(plan.request.vector, found, k: k, metric: manifest.metric) ?? found
        plan.searching = false
        let found = plan.found
        if found.count >= min(k, plan.eligible) { return }
        switch index.kind {
        case .ivf:
            plan.searching = plan.params.deepenIVF(listCount: index.listCount)
        case .hnsw:
            let ef = plan.params.efSearch ?? 16
            if ef < 4096 && ef < index.count {
                plan.params.efSearch = ef * 2
                plan.searching = true
                return
            }
            plan.found = try exhaustive(plan.request.vector, allowed: plan.allowed, excluded: plan.excluded, k: k)
        case .flat, .other:
            return // flat search is exhaustive already
        }
    }

    private func answer(_ plan: Plan) throws -> SimilarAnswer {
        let (vector, query, found) = (plan.request.vector, plan.request.query, plan.found)
        var notes = plan.notes
        if found.count < query.k && plan.eligible > found.count {
            notes.append("only \(found.count) of \(plan.eligible) eligible products were reachable")
        }

        // Cosine and distance from one call: the vectors stay in FAISS (for unit vectors the
        // cosine is 1 - d²/2; imported vectors need not be unit, so the norms are read too).
        let qNorm2 = vector.reduce(0) { $0 + Double($1) * Double($1) }
        let hits = found.filter { columns.present.contains($0.id) }
        let stored =
            try exact?.compare(vector, ids: hits.map(\.id), distances: false)
            ?? index.compare(vector, ids: hits.map(\.id), distances: false)
        var results: [SimilarProduct] = []
        for (i, (id, raw)) in hits.enumerated() {
            let rNorm2 = Double(stored.norm2[i])
            let squared = manifest.metric == .l2 ? Double(raw) : qNorm2 + rNorm2 - 2 * Double(raw)
            let distance = max(0, squared).squareRoot()
            let similarity = 1 / (1 + distance)
            guard similarity >= query.minSimilarity else { continue }
            results.append(
                SimilarProduct(
                    productID: ids.productID(id)!, similarity: similarity,
                    cosine: Double(stored.dot[i]) / max(1e-12, (qNorm2 * rNorm2).squareRoot()),
                    distance: distance, category: columns.categoryName(id), inStock: columns.stock(id),
                    title: columns.title(id)))
        }
        if results.count < found.count {
            notes.append("\(found.count - results.count) neighbours were below min_similarity \(query.minSimilarity)")
        }
        let category = plan.request.category
        let base = SimilarAnswer(
            query: plan.request.excluding, category: query.sameCategory ? category : nil, results: results,
            candidates: found.count, eligible: plan.eligible, nprobe: plan.params.nprobe,
            efSearch: plan.params.efSearch,
            secondHop: plan.params.hop.map { IndexManifest.Hop(top: $0.top, lists: $0.lists, maxList: $0.maxList) },
            notes: notes, index: identity)
        return mergingDelta(base, plan.request)
    }

    /// Exact search over the allowed ids' stored vectors: for very selective filters, and the
    /// last resort for graph indexes, whose traversal a selective filter starves.
    private func exhaustive(
        _ q: [Float], allowed: IDBitmap, excluded: [Int64], k: Int
    ) throws -> [(id: Int64, distance: Float)] {
        var ids: [Int64] = []
        for (i, byte) in allowed.bytes.enumerated() where byte != 0 {
            for b in 0..<8 where (byte >> b) & 1 == 1 {
                let id = Int64(i * 8 + b)
                if columns.present.contains(id) && !excluded.contains(id) { ids.append(id) }
            }
        }
        guard !ids.isEmpty else { return [] }
        // One call computes every distance inside FAISS's storage (no vector copied out).
        let c = try exact?.compare(q, ids: ids) ?? index.compare(q, ids: ids)
        let raw = manifest.metric == .l2 ? c.l2 : c.dot
        let order = ids.indices.sorted { a, b in
            manifest.metric == .l2 ? (raw[a], a) < (raw[b], b) : (raw[a], b) > (raw[b], a)
        }
        return order.prefix(k).map { (ids[$0], raw[$0]) }
    }

    /// The number of vectors in the index.
    public var count: Int { index.count }

    /// Whether the folder keeps vectors as they were added (the index itself, or the exact
    /// vectors beside compressed codes), so that a product's vector need not come from the store.
    var storesExactVectors: Bool { exact != nil || !IndexPlan.isCompressed(manifest.factory) }
}
