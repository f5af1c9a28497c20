import EwallCore
import Foundation

// Where a change is stored: the live catalogue that `ewall sync` follows from the platform's
// product table. Its rows land in `products` (title, brand, category, stock, price) and in
// `catalogue` (image URL, listed flag, the log position that last changed them); every change
// is appended to `catalogue_changes`, which every `ewall-serve` over the store follows.

/// A product row as the source has it.
public struct CatalogueRow: Sendable, Hashable {
    public var product: Product
    public var imageURL: String?
    /// `false`: unlisted (inactive, hidden): never in an answer. `nil`: the table has no such flag.
    public var listed: Bool?

    public init(product: Product, imageURL: String?, listed: Bool?) {
        self.product = product
        self.imageURL = imageURL
        self.listed = listed
    }
}

/// One change from the source, in commit order.
public enum CatalogueChange: Sendable, Hashable {
    case upsert(CatalogueRow)
    case delete(productID: String)

    public var productID: String {
        switch self {
        case .upsert(let r): r.product.id
        case .delete(let id): id
        }
    }
}

/// How far a sync has applied its source: the log position of the last applied commit.
public struct SyncState: Sendable, Hashable, Codable {
    public var name: String
    /// The source and table (password-free), for `ewall sync --status`.
    public var source: String
    public var slot: String
    /// The end of the last commit applied (an LSN as an integer); the slot is confirmed up to it.
    public var position: UInt64
    /// The source's commit time of that commit.
    public var commitTime: Date?
    public var updatedAt: Date

    public init(name: String, source: String, slot: String, position: UInt64, commitTime: Date?, updatedAt: Date) {
        self.name = name
        self.source = source
        self.slot = slot
        self.position = position
        self.commitTime = commitTime
        self.updatedAt = updatedAt
    }
}

/// One entry of the change feed replicas follow: which product changed, and how. A replica
/// reads the product's current state for it, so applying an entry twice is harmless.
public struct ChangeRecord: Sendable, Hashable {
    public enum Kind: String, Sendable {
        /// Its attributes (stock, category, title, brand, price, listed) changed, or it is new.
        case attributes
        /// Its vector was committed (a new product, or a new image).
        case vector
        /// It was deleted at the source.
        case delete
    }

    public var seq: Int64
    public var productID: String
    public var kind: Kind
    /// When the change was stored here.
    public var at: Date
    /// The source's commit time, where the change came from the source.
    public var sourceTime: Date?
    /// A `vector` entry's model key: a replica of another key has nothing new to search. nil on
    /// other entries, and on vector entries an older ewall wrote (they concern every key).
    public var key: ModelKey? = nil

    /// Whether this entry brings a new vector under `key`.
    public func bringsVector(for key: ModelKey) -> Bool {
        kind == .vector && (self.key == nil || self.key == key)
    }
}

/// A store that can hold the live catalogue (both stores).
public protocol CatalogueStore: EmbeddingStore {
    func syncState(name: String) async throws -> SyncState?

    /// Applies `changes` in order and records `state`, in one transaction. Returns the rows
    /// whose image URL is new or changed (to embed).
    func applyCatalogue(_ changes: [CatalogueChange], state: SyncState) async throws -> [CatalogueRow]

    /// The change feed after `seq`, oldest first.
    func catalogueChanges(after seq: Int64, limit: Int) async throws -> [ChangeRecord]

    /// Distinct products with a new vector under `key`, and deleted, after `seq`: how far an
    /// index of `key` built at `seq` has drifted (what compaction measures). Another model's
    /// first pass over the catalogue is no drift of this one's index.
    func changeCounts(after seq: Int64, key: ModelKey) async throws -> (vectors: Int, deletes: Int)

    /// The newest entry's seq (0 when the feed is empty).
    func lastChangeSeq() async throws -> Int64

    /// The current rows of these products (absent: deleted, or never synced).
    func catalogueRows(productIDs: [String]) async throws -> [String: CatalogueRow]

    /// Ids of the products a sync wrote (keyset pages), for a fresh snapshot's clean-up and
    /// `ewall sync --reconcile`.
    func syncedProductIDs(after: String?, limit: Int) async throws -> [String]

    /// Synced products whose image has no vector of `key` yet (new, or a new URL): what a sync
    /// that stopped before embedding them picks up again.
    func rowsToEmbed(key: ModelKey, limit: Int) async throws -> [CatalogueRow]

    /// Products the source lists as unlisted: never in an answer.
    func unlistedProductIDs() async throws -> [String]

    /// Forgets a sync's position (its slot was lost; a fresh snapshot follows).
    func resetSync(name: String) async throws
}

extension CatalogueStore {
    /// The rows to embed among `changes`, given what the store had (`before`: product id ->
    /// image URL): a row with a URL that is new or different.
    static func toEmbed(_ changes: [CatalogueChange], before: [String: String?]) -> [CatalogueRow] {
        var latest: [String: CatalogueRow] = [:]
        var order: [String] = []
        var ordered = Set<String>()
        var seen = before
        for change in changes {
            switch change {
            case .delete(let id):
                latest[id] = nil
                seen[id] = .some(nil)
            case .upsert(let row):
                let had = seen[row.product.id] ?? nil
                if let url = row.imageURL, url != had {
                    if ordered.insert(row.product.id).inserted { order.append(row.product.id) }
                    latest[row.product.id] = row
                } else if latest[row.product.id] != nil {
                    latest[row.product.id] = row // still to embed, with its newest attributes
                }
                seen[row.product.id] = .some(row.imageURL)
            }
        }
        return order.compactMap { latest[$0] }
    }
}
