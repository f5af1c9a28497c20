import EwallCore
import Foundation

/// The embedded default store: one SQLite file in WAL mode (readers never block the writer),
/// one transaction per batch, `synchronous=NORMAL` (a committed batch survives the process
/// being killed; a power cut may lose the last batches, never corrupt the file).
///
/// Safe because: the connection is touched only on the store's own ``BlockingWorker``
/// thread, one call at a time.
public final class SQLiteStore: EmbeddingStore, @unchecked Sendable {
    private let connection: SQLiteConnection
    private let worker: BlockingWorker
    public let displayName: String

    private init(connection: SQLiteConnection, worker: BlockingWorker) {
        self.connection = connection
        self.worker = worker
        self.displayName = "sqlite:\(connection.path)"
    }

    /// Opens or creates the database file (and its folder), and creates the schema.
    public static func open(path: String) async throws -> SQLiteStore {
        let folder = URL(fileURLWithPath: path).deletingLastPathComponent().path
        if !folder.isEmpty {
            try? FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        }
        let worker = BlockingWorker(name: "ewall-sqlite")
        let connection = try await worker.run { () throws -> SQLiteConnection in
            let c = try SQLiteConnection(path: path)
            try c.exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=OFF;")
            try c.transaction {
                try c.exec(Schema.sqlite)
                for (table, column, type) in Schema.addedColumns {
                    var present = false
                    try c.query("SELECT 1 FROM pragma_table_info(?) WHERE name = ?", [.text(table), .text(column)]) {
                        _ in present = true
                    }
                    if !present { try c.exec("ALTER TABLE \(table) ADD COLUMN \(column) \(type)") }
                }
                var version: Int?
                try c.query("SELECT value FROM ewall_meta WHERE key = 'schema_version'") {
                    version = $0.text(0).flatMap { Int($0) }
                }
                if let version, version > Schema.version {
                    throw StoreError(
                        .incompatible, "\(path) has schema version \(version); this ewall reads up to \(Schema.version)"
                    )
                }
                try c.query(
                    "INSERT OR IGNORE INTO ewall_meta (key, value) VALUES ('schema_version', ?)",
                    [.text("\(Schema.version)")])
            }
            return c
        }
        return SQLiteStore(connection: connection, worker: worker)
    }

    func onWorker<T: Sendable>(_ body: @escaping @Sendable (SQLiteConnection) throws -> T) async throws -> T {
        let c = connection
        return try await worker.run { () throws -> T in try body(c) }
    }

    /// SQLite is a file in this process: it has nothing to diagnose beyond its errors.
    public func diagnose() async -> String? { nil }

    public func upsertProducts(_ products: [Product], source: CategorySource) async throws {
        if products.isEmpty { return }
        try StorableText.check(products)
        let now = Date().ISO8601Format()
        try await onWorker { c in
            try c.transaction {
                for p in products {
                    try c.query(
                        """
                        INSERT INTO products (product_id, title, category, category_source, in_stock, brand, price, created_at, updated_at)
                        VALUES (?1, ?2, ?3, CASE WHEN ?3 IS NULL THEN NULL ELSE ?4 END, ?5, ?6, ?7, ?8, ?8)
                        \(Schema.productUpdate)
                        """,
                        [
                            .text(p.id), p.title.map { .text($0) } ?? .null, p.category.map { .text($0) } ?? .null,
                            .text(source.rawValue), p.inStock.map { .int($0 ? 1 : 0) } ?? .null,
                            p.brand.map { .text($0) } ?? .null, p.price.map { .double($0) } ?? .null, .text(now),
                        ])
                }
            }
        }
    }

    public func states(productIDs: [String], key: ModelKey) async throws -> [String: ItemState] {
        if productIDs.isEmpty { return [:] }
        return try await onWorker { c in
            var out: [String: ItemState] = [:]
            let marks = Array(repeating: "?", count: productIDs.count).joined(separator: ",")
            let binds: [SQLValue] = [.text(key.modelID), .text(key.preprocessing)] + productIDs.map { .text($0) }
            try c.query(
                "SELECT product_id, image_url FROM embeddings WHERE model_id = ? AND preprocessing = ? AND product_id IN (\(marks))",
                binds
            ) { row in
                out[row.text(0)!, default: ItemState()].embeddedURL = row.text(1)
            }
            try c.query(
                """
                SELECT product_id, image_url, status, error_class, http_status, attempts, last_error, last_tried
                FROM item_outcomes WHERE model_id = ? AND preprocessing = ? AND product_id IN (\(marks))
                """, binds
            ) { row in
                out[row.text(0)!, default: ItemState()].ledger = Self.ledger(row, key: key)
            }
            return out
        }
    }

    static func ledger(_ row: SQLiteConnection.Row, key: ModelKey) -> LedgerEntry {
        LedgerEntry(
            productID: row.text(0) ?? "", imageURL: row.text(1) ?? "", key: key,
            status: LedgerEntry.Status(rawValue: row.text(2) ?? "") ?? .failed, errorClass: row.text(3),
            httpStatus: row.int(4), attempts: row.int(5) ?? 0, lastError: row.text(6),
            lastTried: row.text(7).flatMap { try? Date($0, strategy: .iso8601) } ?? Date(timeIntervalSince1970: 0))
    }

    public func write(_ batch: WriteBatch) async throws {
        if batch.isEmpty { return }
        try StorableText.check(batch)
        let now = Date().ISO8601Format()
        let at = Date().timeIntervalSince1970
        try await onWorker { c in
            try c.transaction {
                for e in batch.embeddings {
                    // A synced product's vector for its current image enters the change feed with it
                    // (Schema: catalogue), unless the key already holds that image's vector: decided
                    // before the write, in one statement that a store with no catalogue answers from
                    // the catalogue's primary key alone.
                    try c.query(
                        """
                        INSERT INTO catalogue_changes (product_id, kind, at, model_id, preprocessing)
                        SELECT c.product_id, 'vector', ?1, ?4, ?5 FROM catalogue c
                        WHERE c.product_id = ?2 AND c.image_url = ?3
                          AND NOT EXISTS (
                            SELECT 1 FROM embeddings e
                            WHERE e.model_id = ?4 AND e.preprocessing = ?5 AND e.product_id = ?2 AND e.image_url = ?3
                              AND e.image_sha256 IS ?6)
                        """,
                        [
                            .double(at), .text(e.productID), .text(e.imageURL), .text(e.key.modelID),
                            .text(e.key.preprocessing), e.imageSHA256.map { .text($0) } ?? .null,
                        ])
                    try c.query(
                        """
                        INSERT INTO embeddings (product_id, model_id, preprocessing, image_url, dim, vector, image_sha256,
                                                width, height, bytes, content_type, created_at, updated_at)
                        VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?12)
                        \(Schema.embeddingUpdate)
                        """,
                        [
                            .text(e.productID), .text(e.key.modelID), .text(e.key.preprocessing), .text(e.imageURL),
                            .int(Int64(e.vector.count)), .blob(VectorBytes.encode(e.vector)),
                            e.imageSHA256.map { .text($0) } ?? .null, e.width.map { .int(Int64($0)) } ?? .null,
                            e.height.map { .int(Int64($0)) } ?? .null, e.bytes.map { .int(Int64($0)) } ?? .null,
                            e.contentType.map { .text($0) } ?? .null, .text(now),
                        ])
                }
                for l in batch.ledger {
                    try c.query(
                        """
                        INSERT INTO item_outcomes (product_id, model_id, preprocessing, image_url, status, error_class,
                                                   http_status, attempts, last_error, last_tried)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        \(Schema.ledgerUpdate)
                        """,
                        [
                            .text(l.productID), .text(l.key.modelID), .text(l.key.preprocessing), .text(l.imageURL),
                            .text(l.status.rawValue), l.errorClass.map { .text($0) } ?? .null,
                            l.httpStatus.map { .int(Int64($0)) } ?? .null, .int(Int64(l.attempts)),
                            l.lastError.map { .text($0) } ?? .null, .text(l.lastTried.ISO8601Format()),
                        ])
                }
            }
        }
    }

    public func modelKeys() async throws -> [ModelKeyCount] {
        try await onWorker { c in
            var out: [ModelKeyCount] = []
            try c.query(
                """
                SELECT model_id, preprocessing, MIN(dim), COUNT(*) FROM embeddings
                GROUP BY model_id, preprocessing ORDER BY model_id, preprocessing
                """
            ) { row in
                out.append(
                    ModelKeyCount(
                        key: ModelKey(modelID: row.text(0)!, preprocessing: row.text(1)!),
                        dimension: row.int(2) ?? 0, count: row.int(3) ?? 0))
            }
            return out
        }
    }

    public func embeddings(key: ModelKey, after: String?, limit: Int) async throws -> [EmbeddingRow] {
        try await onWorker { c in
            var out: [EmbeddingRow] = []
            var failure: (any Error)?
            try c.query(
                """
                SELECT e.product_id, e.image_url, e.dim, e.vector, e.image_sha256, e.width, e.height, e.bytes, e.content_type,
                       p.product_id, p.title, p.category, p.in_stock, p.brand, p.price, p.category_source
                FROM embeddings e LEFT JOIN products p ON p.product_id = e.product_id
                WHERE e.model_id = ? AND e.preprocessing = ? AND e.product_id > ?
                ORDER BY e.product_id LIMIT ?
                """, [.text(key.modelID), .text(key.preprocessing), .text(after ?? ""), .int(Int64(limit))]
            ) { row in
                do {
                    let vector = try row.blob(3) { try VectorBytes.decode($0, dimension: row.int(2) ?? 0) }
                    let e = StoredEmbedding(
                        productID: row.text(0)!, imageURL: row.text(1) ?? "", key: key, vector: vector,
                        imageSHA256: row.text(4), width: row.int(5), height: row.int(6),
                        bytes: row.int(7), contentType: row.text(8))
                    let p =
                        row.isNull(9)
                        ? nil
                        : Product(
                            id: row.text(9)!, title: row.text(10), category: row.text(11),
                            inStock: row.int(12).map { $0 != 0 }, brand: row.text(13),
                            price: row.double(14),
                            categorySource: row.text(15).flatMap(CategorySource.init(rawValue:)))
                    out.append(EmbeddingRow(embedding: e, product: p))
                } catch { failure = error }
            }
            if let failure { throw failure }
            return out
        }
    }

    public func productsWithVectors(key: ModelKey, after: String?, limit: Int) async throws -> [Product] {
        try await onWorker { c in
            var out: [Product] = []
            try c.query(
                """
                SELECT e.product_id, p.title, p.category, p.in_stock, p.brand, p.price, p.category_source
                FROM embeddings e LEFT JOIN products p ON p.product_id = e.product_id
                WHERE e.model_id = ? AND e.preprocessing = ? AND e.product_id > ?
                ORDER BY e.product_id LIMIT ?
                """, [.text(key.modelID), .text(key.preprocessing), .text(after ?? ""), .int(Int64(limit))]
            ) { row in
                out.append(
                    Product(
                        id: row.text(0)!, title: row.text(1), category: row.text(2),
                        inStock: row.int(3).map { $0 != 0 }, brand: row.text(4), price: row.double(5),
                        categorySource: row.text(6).flatMap(CategorySource.init(rawValue:))))
            }
            return out
        }
    }

    public func products(after: String?, limit: Int) async throws -> [Product] {
        try await onWorker { c in
            var out: [Product] = []
            try c.query(
                """
                SELECT product_id, title, category, in_stock, brand, price, category_source FROM products
                WHERE product_id > ? ORDER BY product_id LIMIT ?
                """, [.text(after ?? ""), .int(Int64(limit))]
            ) { row in
                out.append(
                    Product(
                        id: row.text(0)!, title: row.text(1), category: row.text(2),
                        inStock: row.int(3).map { $0 != 0 }, brand: row.text(4), price: row.double(5),
                        categorySource: row.text(6).flatMap(CategorySource.init(rawValue:))))
            }
            return out
        }
    }

    public func vectors(productIDs: [String], key: ModelKey) async throws -> [String: [Float]] {
        if productIDs.isEmpty { return [:] }
        return try await onWorker { c in
            var out: [String: [Float]] = [:]
            var failure: (any Error)?
            for chunk in stride(from: 0, to: productIDs.count, by: 10_000) {
                let ids = productIDs[chunk..<min(chunk + 10_000, productIDs.count)]
                let marks = Array(repeating: "?", count: ids.count).joined(separator: ",")
                try c.query(
                    """
                    SELECT product_id, dim, vector FROM embeddings
                    WHERE model_id = ? AND preprocessing = ? AND product_id IN (\(marks))
                    """, [.text(key.modelID), .text(key.preprocessing)] + ids.map { .text($0) }
                ) { row in
                    do {
                        out[row.text(0)!] = try row.blob(2) { try VectorBytes.decode($0, dimension: row.int(1) ?? 0) }
                    } catch {
                        failure = error
                    }
                }
            }
            if let failure { throw failure }
            return out
        }
    }

    public func product(id: String) async throws -> Product? {
        try await onWorker { c in
            var out: Product?
            try c.query(
                "SELECT product_id, title, category, in_stock, brand, price, category_source FROM products WHERE product_id = ?",
                [.text(id)]
            ) { row in
                out = Product(
                    id: row.text(0)!, title: row.text(1), category: row.text(2),
                    inStock: row.int(3).map { $0 != 0 }, brand: row.text(4), price: row.double(5),
                    categorySource: row.text(6).flatMap(CategorySource.init(rawValue:)))
            }
            return out
        }
    }

    public func embedding(productID: String, key: ModelKey) async throws -> StoredEmbedding? {
        try await onWorker { c in
            var out: StoredEmbedding?
            var failure: (any Error)?
            try c.query(
                """
                SELECT image_url, dim, vector, image_sha256, width, height, bytes, content_type FROM embeddings
                WHERE model_id = ? AND preprocessing = ? AND product_id = ?
                """, [.text(key.modelID), .text(key.preprocessing), .text(productID)]
            ) { row in
                do {
                    let vector = try row.blob(2) { try VectorBytes.decode($0, dimension: row.int(1) ?? 0) }
                    out = StoredEmbedding(
                        productID: productID, imageURL: row.text(0) ?? "", key: key, vector: vector,
                        imageSHA256: row.text(3), width: row.int(4), height: row.int(5),
                        bytes: row.int(6), contentType: row.text(7))
                } catch { failure = error }
            }
            if let failure { throw failure }
            return out
        }
    }

    public func embedding(imageSHA256 sha: String, key: ModelKey) async throws -> StoredEmbedding? {
        try await onWorker { c in
            var out: StoredEmbedding?
            var failure: (any Error)?
            try c.query(
                """
                SELECT product_id, image_url, dim, vector, width, height, bytes, content_type FROM embeddings
                WHERE model_id = ? AND preprocessing = ? AND image_sha256 = ? LIMIT 1
                """, [.text(key.modelID), .text(key.preprocessing), .text(sha)]
            ) { row in
                do {
                    let vector = try row.blob(3) { try VectorBytes.decode($0, dimension: row.int(2) ?? 0) }
                    out = StoredEmbedding(
                        productID: row.text(0) ?? "", imageURL: row.text(1) ?? "", key: key, vector: vector,
                        imageSHA256: sha, width: row.int(4), height: row.int(5),
                        bytes: row.int(6), contentType: row.text(7))
                } catch { failure = error }
            }
            if let failure { throw failure }
            return out
        }
    }

    public func ledgerEntry(productID: String, key: ModelKey) async throws -> LedgerEntry? {
        try await states(productIDs: [productID], key: key)[productID]?.ledger
    }

    public func ledgerCounts(key: ModelKey) async throws -> [String: Int] {
        try await onWorker { c in
            var out: [String: Int] = [:]
            try c.query(
                """
                SELECT status, COALESCE(error_class, ''), COUNT(*) FROM item_outcomes
                WHERE model_id = ? AND preprocessing = ? GROUP BY 1, 2
                """, [.text(key.modelID), .text(key.preprocessing)]
            ) { row in
                let cls = row.text(1) ?? ""
                out[cls.isEmpty ? row.text(0)! : "\(row.text(0)!):\(cls)"] = row.int(2) ?? 0
            }
            return out
        }
    }

    public func classifications(productIDs: [String]) async throws -> [String: ClassificationRecord] {
        if productIDs.isEmpty { return [:] }
        return try await onWorker { c in
            var out: [String: ClassificationRecord] = [:]
            // SQLite's default limit on bound parameters is 32,766.
            for chunk in stride(from: 0, to: productIDs.count, by: 10_000) {
                let ids = productIDs[chunk..<min(chunk + 10_000, productIDs.count)]
                let marks = Array(repeating: "?", count: ids.count).joined(separator: ",")
                try c.query(
                    """
                    SELECT product_id, category, decided_by, method, score, stamp, input_hash, explanation, classified_at
                    FROM classifications WHERE product_id IN (\(marks))
                    """, ids.map { .text($0) }
                ) { row in
                    let r = ClassificationRecord(
                        productID: row.text(0)!, category: row.text(1) ?? "", decidedBy: row.text(2) ?? "",
                        method: row.text(3) ?? "", score: row.double(4), stamp: row.text(5) ?? "",
                        inputHash: row.text(6) ?? "", explanation: row.text(7) ?? "{}",
                        classifiedAt: row.text(8).flatMap { try? Date($0, strategy: .iso8601) }
                            ?? Date(timeIntervalSince1970: 0))
                    out[r.productID] = r
                }
            }
            return out
        }
    }

    public func applyClassifications(_ records: [ClassificationRecord]) async throws -> Set<String> {
        if records.isEmpty { return [] }
        return try await onWorker { c in
            try c.transaction {
                var written = Set<String>()
                for r in records {
                    let now = r.classifiedAt.ISO8601Format()
                    var applied = false
                    try c.query(
                        """
                        INSERT INTO products (product_id, category, category_source, created_at, updated_at)
                        VALUES (?1, ?2, 'classifier', ?3, ?3)
                        \(Schema.classifierUpdate)
                        """, [.text(r.productID), .text(r.category), .text(now)]
                    ) { _ in applied = true }
                    guard applied else { continue }
                    written.insert(r.productID)
                    try c.query(
                        """
                        INSERT INTO classifications (product_id, category, decided_by, method, score, stamp, input_hash,
                                                     explanation, classified_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                        \(Schema.classificationUpdate)
                        """,
                        [
                            .text(r.productID), .text(r.category), .text(r.decidedBy), .text(r.method),
                            r.score.map { .double($0) } ?? .null, .text(r.stamp), .text(r.inputHash),
                            .text(r.explanation), .text(now),
                        ])
                }
                return written
            }
        }
    }

    public func close() async {}
}

// The gift flags (`gift_flags`; see GiftFlags.swift).
extension SQLiteStore {
    public func writeGiftFlags(_ flags: [GiftFlag]) async throws {
        if flags.isEmpty { return }
        for f in flags { try StorableText.check(f.productID, "product_id", f.productID) }
        try await onWorker { c in
            try c.transaction {
                for f in flags {
                    try c.query(
                        """
                        INSERT INTO gift_flags (product_id, is_gift, gift_type, decided_by, reason, explanation,
                                                resembles, rules_version, rules_sha256, flagged_at)
                        VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
                        \(Schema.giftFlagUpdate)
                        """,
                        [
                            .text(f.productID), .int(f.isGift ? 1 : 0), f.giftType.map { .text($0) } ?? .null,
                            .text(f.decidedBy), .text(f.reason), .text(f.explanation),
                            f.resembles.map { .text($0) } ?? .null, .text(f.rulesVersion), .text(f.rulesSHA256),
                            .text(f.flaggedAt.ISO8601Format()),
                        ])
                }
            }
        }
    }

    public func giftFlags(productIDs: [String]) async throws -> [String: GiftFlag] {
        if productIDs.isEmpty { return [:] }
        return try await onWorker { c in
            var out: [String: GiftFlag] = [:]
            for chunk in stride(from: 0, to: productIDs.count, by: 10_000) {
                let ids = productIDs[chunk..<min(chunk + 10_000, productIDs.count)]
                let marks = Array(repeating: "?", count: ids.count).joined(separator: ",")
                try c.query(
                    """
                    SELECT product_id, is_gift, gift_type, decided_by, reason, explanation, resembles, rules_version,
                           rules_sha256, flagged_at
                    FROM gift_flags WHERE product_id IN (\(marks))
                    """, ids.map { .text($0) }
                ) { row in
                    let at: Date =
                        row.text(9).flatMap { try? Date($0, strategy: .iso8601) } ?? Date(timeIntervalSince1970: 0)
                    let decidedBy: String = row.text(3) ?? ""
                    let reason: String = row.text(4) ?? ""
                    let explanation: String = row.text(5) ?? ""
                    let version: String = row.text(7) ?? ""
                    let sha: String = row.text(8) ?? ""
                    let f = GiftFlag(
                        productID: row.text(0) ?? "", isGift: row.int(1) == 1, giftType: row.text(2),
                        decidedBy: decidedBy, reason: reason, explanation: explanation, resembles: row.text(6),
                        rulesVersion: version, rulesSHA256: sha, flaggedAt: at)
                    out[f.productID] = f
                }
            }
            return out
        }
    }

    public func giftProductIDs() async throws -> Set<String> {
        try await onWorker { c in
            var out = Set<String>()
            try c.query("SELECT product_id FROM gift_flags WHERE is_gift = 1") { row in
                if let id = row.text(0) { out.insert(id) }
            }
            return out
        }
    }
}
