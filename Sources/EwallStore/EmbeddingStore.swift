import EwallCore
import Foundation

/// Where vectors, product metadata and the ledger of outcomes live. Two implementations
/// pass the same behavioural tests: ``SQLiteStore`` (embedded default) and ``PostgresStore``
/// (several machines, one store). Open one with ``StoreLocation/open(logger:)``.
///
/// Every method may be called from many tasks at once.
public protocol EmbeddingStore: AnyObject, Sendable, GiftFlagStore, PrecisionAdmissionStore {
    /// The store's location with any password removed, for messages.
    var displayName: String { get }

    /// Inserts or updates products. A `nil` field keeps what the store has; a category set
    /// here is marked as set by a person (`category_source = 'manifest'` or `'import'`).
    func upsertProducts(_ products: [Product], source: CategorySource) async throws

    /// What the store knows about these products under `key`: the URL of the stored vector,
    /// and the ledger's last outcome. Products it knows nothing about are absent.
    func states(productIDs: [String], key: ModelKey) async throws -> [String: ItemState]

    /// Writes vectors and ledger entries in one transaction: all of it is stored, or none. A
    /// vector for the current image of a product the live catalogue holds (``CatalogueStore``,
    /// `ewall sync`) adds a `vector` entry to the change feed in the same transaction, so every
    /// replica searches it whoever wrote it (a sync, a job's worker, a manifest run), unless its
    /// model key already held that image's vector (same URL and bytes).
    func write(_ batch: WriteBatch) async throws

    /// The model keys that have vectors, with their counts.
    func modelKeys() async throws -> [ModelKeyCount]

    /// Up to `limit` vectors of `key` with product ids after `after` (keyset pagination in
    /// product-id order), with their products' metadata.
    func embeddings(key: ModelKey, after: String?, limit: Int) async throws -> [EmbeddingRow]

    /// Up to `limit` products that have a vector under `key`, with ids after `after`, in
    /// product-id order; metadata only, no vectors. What the similar-products filters and the
    /// index's staleness check read.
    func productsWithVectors(key: ModelKey, after: String?, limit: Int) async throws -> [Product]

    /// Up to `limit` products (with or without vectors), ids after `after`, in product-id order.
    func products(after: String?, limit: Int) async throws -> [Product]

    /// The vectors of these products under `key`; products without one are absent.
    func vectors(productIDs: [String], key: ModelKey) async throws -> [String: [Float]]

    /// A product by id.
    func product(id: String) async throws -> Product?

    /// One product's vector under `key`, or `nil`.
    func embedding(productID: String, key: ModelKey) async throws -> StoredEmbedding?

    /// A vector of `key` made from image bytes with this sha256 (any product's), or `nil`:
    /// identical bytes under one model key and preprocessing give one vector, so a job reuses
    /// it instead of running the model again.
    func embedding(imageSHA256: String, key: ModelKey) async throws -> StoredEmbedding?

    /// The ledger entry of one product under `key`.
    func ledgerEntry(productID: String, key: ModelKey) async throws -> LedgerEntry?

    /// Counts of ledger entries by status and error class for `key`.
    func ledgerCounts(key: ModelKey) async throws -> [String: Int]

    /// The classifier's stored answers for these products (absent: never applied).
    func classifications(productIDs: [String]) async throws -> [String: ClassificationRecord]

    /// Writes the classifier's answers in one transaction: each product's category is set with
    /// `category_source = 'classifier'` only where no person set it (no category, `generic`,
    /// or the classifier's own), and its record is stored. The check is in the `UPDATE`
    /// itself, so a person's category written meanwhile is never overwritten. Returns the ids
    /// it wrote; the others were refused.
    func applyClassifications(_ records: [ClassificationRecord]) async throws -> Set<String>

    /// Closes connections. The store is unusable afterwards.
    func close() async

    /// Why the store cannot be reached right now, in its own words, or `nil` when it can.
    /// Asked while a job waits on a store that stopped answering, for the progress line.
    func diagnose() async -> String?
}

/// What the store knows about one product under one model key.
public struct ItemState: Sendable, Hashable {
    /// The image URL of the stored vector, if there is one.
    public var embeddedURL: String?
    /// The ledger's last outcome.
    public var ledger: LedgerEntry?

    public init(embeddedURL: String? = nil, ledger: LedgerEntry? = nil) {
        self.embeddedURL = embeddedURL
        self.ledger = ledger
    }
}

/// One batch's writes: vectors for the items that succeeded, ledger entries for all.
public struct WriteBatch: Sendable {
    public var embeddings: [StoredEmbedding]
    public var ledger: [LedgerEntry]

    public init(embeddings: [StoredEmbedding] = [], ledger: [LedgerEntry] = []) {
        self.embeddings = embeddings
        self.ledger = ledger
    }

    public var isEmpty: Bool { embeddings.isEmpty && ledger.isEmpty }
}

public struct ModelKeyCount: Sendable, Hashable, Codable {
    public var key: ModelKey
    public var dimension: Int
    public var count: Int

    public init(key: ModelKey, dimension: Int, count: Int) {
        self.key = key
        self.dimension = dimension
        self.count = count
    }
}

/// A stored vector with its product's metadata (`product` is `nil` if the product row is missing).
public struct EmbeddingRow: Sendable {
    public var embedding: StoredEmbedding
    public var product: Product?
}

/// A failure of the store itself (not of one item): the job stops with a systemic error.
public struct StoreError: Error, Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The `--db` value is not a store URL this library knows.
        public static let invalidURL = Code(rawValue: "invalid_store_url")
        /// The database cannot be opened or reached.
        public static let unavailable = Code(rawValue: "store_unavailable")
        /// A statement failed.
        public static let queryFailed = Code(rawValue: "store_query_failed")
        /// The disk (or the database's quota) is full: SQLite's SQLITE_FULL, PostgreSQL's
        /// SQLSTATE 53100. Free space and rerun: nothing committed is lost.
        public static let storageFull = Code(rawValue: "store_full")
        /// The database or its folder is read-only.
        public static let readOnly = Code(rawValue: "store_read_only")
        /// Another process holds a lock longer than the busy timeout.
        public static let busy = Code(rawValue: "store_busy")
        /// The store holds data this version cannot read (schema too new, bad vector bytes).
        public static let incompatible = Code(rawValue: "store_incompatible")
        /// The request mixes model keys or names one the store does not have.
        public static let modelMismatch = Code(rawValue: "model_mismatch")
        /// A value the store cannot keep exactly (a NUL in an id, a URL or a title): refused,
        /// never truncated. Manifests, imports and the API refuse such values before this.
        public static let invalidValue = Code(rawValue: "store_invalid_value")
    }

    public var code: Code
    /// Safe to show: never contains a password.
    public var message: String
    /// The database's own words.
    public var detail: String?

    public init(_ code: Code, _ message: String, detail: String? = nil) {
        self.code = code
        self.message = message
        self.detail = detail
    }

    public var description: String { "\(code): \(message)" }
    public var debugDescription: String { detail.map { "\(description) [\($0)]" } ?? description }

    /// Worth waiting for: the server is unreachable or busy, and may come back.
    public var isTransient: Bool { code == .unavailable || code == .busy }
}

/// The check both stores make before writing: every text value must come back byte for byte.
/// PostgreSQL's `text` cannot hold U+0000 and C APIs end a string there, so a NUL would
/// otherwise truncate an id and let two products share a row.
package enum StorableText {
    static func check(_ products: [Product]) throws {
        for p in products {
            try check(p.id, "product_id", p.id)
            for (v, name) in [(p.title, "title"), (p.category, "category"), (p.brand, "brand")] {
                if let v { try check(v, name, p.id) }
            }
        }
    }

    package static func check(_ batch: WriteBatch) throws {
        for e in batch.embeddings {
            try check(e.productID, "product_id", e.productID)
            try check(e.imageURL, "image_url", e.productID)
            try check(e.key.modelID, "model_id", e.productID)
        }
        for l in batch.ledger {
            try check(l.productID, "product_id", l.productID)
            try check(l.imageURL, "image_url", l.productID)
        }
    }

    package static func check(_ value: String, _ field: String, _ id: String) throws {
        if value.utf8.contains(0) {
            let shown = id.unicodeScalars.prefix(80).map { $0.value == 0 ? "\\0" : String($0) }.joined()
            throw StoreError(
                .invalidValue,
                "\(field) of product '\(shown)' contains a NUL byte, which the store cannot keep exactly; refused")
        }
    }
}

extension EmbeddingStore {
    /// The single model key in the store, or the one asked for. Refuses to guess when the
    /// store holds vectors of several models or preprocessings: they are never mixed silently.
    public func resolveKey(modelID: String?, preprocessing: String?) async throws -> ModelKeyCount {
        let keys = try await modelKeys()
        let matching = keys.filter {
            (modelID == nil || $0.key.modelID == modelID)
                && (preprocessing == nil || $0.key.preprocessing == preprocessing)
        }
        let listed = keys.map { "\($0.key.modelID) --preprocess \($0.key.preprocessing) (\($0.count) vectors)" }
            .joined(separator: "; ")
        if matching.count == 1 { return matching[0] }
        if matching.isEmpty {
            throw StoreError(
                .modelMismatch,
                keys.isEmpty
                    ? "\(displayName) holds no vectors yet"
                    : "no vectors for that model/preprocessing in \(displayName); it has: \(listed)")
        }
        throw StoreError(
            .modelMismatch,
            "\(displayName) holds vectors of several models or preprocessings, which are never mixed: "
                + "choose one with --model-id and --preprocess. It has: \(listed)")
    }
}

/// Float32 vectors as little-endian bytes (the stored form; never JSON text).
public enum VectorBytes {
    public static func encode(_ v: [Float]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: v.count * 4)
        out.withUnsafeMutableBytes { raw in
            for (i, x) in v.enumerated() {
                raw.storeBytes(of: x.bitPattern.littleEndian, toByteOffset: i * 4, as: UInt32.self)
            }
        }
        return out
    }

    public static func decode(_ bytes: UnsafeRawBufferPointer, dimension: Int) throws -> [Float] {
        guard bytes.count == dimension * 4 else {
            throw StoreError(.incompatible, "a stored vector has \(bytes.count) bytes, expected \(dimension * 4)")
        }
        return (0..<dimension).map { i in
            Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: i * 4, as: UInt32.self)))
        }
    }
}

extension StoreError: EwallFailure {
    public var failureCode: String { code.rawValue }
    public var kind: FailureKind {
        switch code {
        case .invalidURL, .invalidValue: .invalidRequest
        default: .unavailable
        }
    }
}
