import EwallCore
import EwallStore
import Foundation

// Where a change is applied on a replica: the change feed of the store (`catalogue_changes`,
// written by `ewall sync`) over the loaded index, with no index work. Attribute changes and
// deletes flip the filter bitmaps beside the index (copy-on-write, swapped in atomically); a
// product with a new vector is searched exactly in a small delta beside the index, and merged
// into the same answer, until the next build takes it in.

/// Products searched beside the index: new since its build, or with a new vector.
struct DeltaVectors: Sendable {
    private(set) var ids: [String] = []
    private(set) var products: [Product] = []
    /// Row i's vector is `vectors[i*d..<(i+1)*d]`.
    private(set) var vectors: [Float] = []
    private var rowOf: [String: Int] = [:]
    /// Delta products flagged as gifts (left out unless a query includes gifts).
    private(set) var gifts: Set<String> = []

    var count: Int { ids.count }

    mutating func setGift(_ id: String, _ isGift: Bool) {
        if isGift { gifts.insert(id) } else { gifts.remove(id) }
    }

    mutating func upsert(_ product: Product, vector: [Float]?, dimension: Int) {
        if let row = rowOf[product.id] {
            products[row] = product
            if let vector, vector.count == dimension {
                vectors.replaceSubrange(row * dimension..<(row + 1) * dimension, with: vector)
            }
            return
        }
        guard let vector, vector.count == dimension else { return }
        rowOf[product.id] = ids.count
        ids.append(product.id)
        products.append(product)
        vectors += vector
    }

    mutating func remove(_ id: String, dimension: Int) {
        gifts.remove(id)
        guard let row = rowOf.removeValue(forKey: id) else { return }
        let last = ids.count - 1
        if row != last {
            ids[row] = ids[last]
            products[row] = products[last]
            vectors.replaceSubrange(
                row * dimension..<(row + 1) * dimension, with: vectors[last * dimension..<(last + 1) * dimension])
            rowOf[ids[row]] = row
        }
        ids.removeLast()
        products.removeLast()
        vectors.removeLast(dimension)
    }

    func contains(_ id: String) -> Bool { rowOf[id] != nil }

    func product(_ id: String) -> Product? { rowOf[id].map { products[$0] } }

    func vector(_ id: String, dimension: Int) -> [Float]? {
        rowOf[id].map { Array(vectors[$0 * dimension..<($0 + 1) * dimension]) }
    }

    /// The rows a query's filters allow (same category, in stock, not a gift, not excluded).
    func eligible(category: String?, query: SimilarQuery, excluding: String?) -> [Int] {
        products.indices.filter { i in
            let p = products[i]
            if p.id == excluding { return false }
            if !query.includeGifts, gifts.contains(p.id) { return false }
            if query.sameCategory, let category, p.category != category { return false }
            if query.inStockOnly, p.inStock == false { return false }
            return true
        }
    }
}

/// What a replica learned of one product from the change feed.
public struct CatalogueUpdate: Sendable {
    public var productID: String
    /// Its current row (`nil`: deleted at the source).
    public var row: CatalogueRow?
    /// Its vector, when the feed said it has a new one.
    public var vector: [Float]?
    /// Whether it is flagged as a gift now (`gift_flags`); nil: leave its flag as it is.
    public var isGift: Bool?

    public init(productID: String, row: CatalogueRow?, vector: [Float]?, isGift: Bool? = nil) {
        self.productID = productID
        self.row = row
        self.vector = vector
        self.isGift = isGift
    }
}

extension ProductSearch {
    /// This search with `updates` applied, at change feed position `seq`: a new value (the
    /// index, id map and vectors are shared; the filter columns are copied where they change).
    public func applying(_ updates: [CatalogueUpdate], through seq: Int64) throws -> ProductSearch {
        var columns = self.columns
        var delta = self.delta
        let d = index.dimension
        for u in updates {
            let listed = u.row.map { $0.listed != false } ?? false
            let product = listed ? u.row?.product : nil
            let indexed = ids.id(of: u.productID)
            if let vector = u.vector, product != nil {
                // A new vector: searched in the delta; the index's older one is left out.
                if let indexed { try columns.update(indexed, nil) }
                delta.upsert(product!, vector: vector, dimension: d)
            } else if delta.contains(u.productID) {
                if let product {
                    delta.upsert(product, vector: nil, dimension: d)
                } else {
                    delta.remove(u.productID, dimension: d)
                }
            } else if let indexed {
                try columns.update(indexed, product)
            }
            if let isGift = u.isGift {
                if delta.contains(u.productID) { delta.setGift(u.productID, isGift) }
                if let indexed { columns.setGift(indexed, isGift) }
            }
        }
        if !updates.isEmpty { columns.refreshWithoutGifts() }
        return ProductSearch(copying: self, columns: columns, delta: delta, changeSeq: seq)
    }

    /// This search with the next entries of `store`'s change feed applied (at most `limit`):
    /// each changed product's current row and gift flag, and the vector of those with a new one
    /// (under this index's model key). nil when the feed has nothing after ``appliedChangeSeq``;
    /// else the new search, the last entry's time (the source's commit time where known) and
    /// whether a full page was read (more may follow).
    public func following(
        _ store: any CatalogueStore, limit: Int = 5_000
    ) async throws -> (
        search: ProductSearch, lastAt: Date, full: Bool
    )? {
        let changes = try await store.catalogueChanges(after: appliedChangeSeq, limit: limit)
        guard let last = changes.last else { return nil }
        let ids = Array(Set(changes.map(\.productID)))
        let rows = try await store.catalogueRows(productIDs: ids)
        let flags = try await store.giftFlags(productIDs: ids)
        let withVector = Set(changes.filter { $0.bringsVector(for: manifest.key) }.map(\.productID))
        let vectors = try await store.vectors(productIDs: Array(withVector), key: manifest.key)
        let updates = ids.map { id in
            CatalogueUpdate(
                productID: id, row: rows[id], vector: withVector.contains(id) ? vectors[id] : nil,
                isGift: flags[id]?.isGift ?? false)
        }
        return (try applying(updates, through: last.seq), last.sourceTime ?? last.at, changes.count == limit)
    }

    /// Entries of the change feed this search has applied (from the manifest's build point on).
    public var appliedChangeSeq: Int64 { changeSeq }

    /// Products searched beside the index (new vectors since its build).
    public var deltaCount: Int { delta.count }

    /// The delta's answers to one request: (product row, squared L2) of the eligible ones, nearest first.
    func deltaCandidates(_ request: SimilarRequest) -> [(row: Int, distance: Float)] {
        guard delta.count > 0 else { return [] }
        let rows = delta.eligible(category: request.category, query: request.query, excluding: request.excluding)
        if rows.isEmpty { return [] }
        let d = index.dimension
        var block: [Float] = []
        block.reserveCapacity(rows.count * d)
        for r in rows { block += delta.vectors[r * d..<(r + 1) * d] }
        let distances = (try? DistanceKernel.distances(from: request.vector, to: block, metric: .l2)) ?? []
        return zip(rows, distances).sorted { $0.1 < $1.1 }.prefix(request.query.k).map { ($0.0, $0.1) }
    }

    /// Merges the delta's candidates into an answer from the index: one list, nearest first, k at most.
    func mergingDelta(_ answer: SimilarAnswer, _ request: SimilarRequest) -> SimilarAnswer {
        let found = deltaCandidates(request)
        guard !found.isEmpty || delta.count > 0 else { return answer }
        var out = answer
        let qNorm2 = request.vector.reduce(0) { $0 + Double($1) * Double($1) }
        let d = index.dimension
        var extra: [SimilarProduct] = []
        for (row, squared) in found {
            let distance = Double(max(0, squared)).squareRoot()
            let similarity = 1 / (1 + distance)
            guard similarity >= request.query.minSimilarity else { continue }
            let v = delta.vectors[row * d..<(row + 1) * d]
            var dot = 0.0
            var norm2 = 0.0
            for (a, b) in zip(request.vector, v) {
                dot += Double(a) * Double(b)
                norm2 += Double(b) * Double(b)
            }
            let p = delta.products[row]
            extra.append(
                SimilarProduct(
                    productID: p.id, similarity: similarity, cosine: dot / max(1e-12, (qNorm2 * norm2).squareRoot()),
                    distance: distance, category: p.category, inStock: p.inStock, title: p.title))
        }
        out.eligible +=
            delta.eligible(category: request.category, query: request.query, excluding: request.excluding)
            .count
        out.candidates += found.count
        out.results = Array((answer.results + extra).sorted { $0.distance < $1.distance }.prefix(request.query.k))
        return out
    }
}
