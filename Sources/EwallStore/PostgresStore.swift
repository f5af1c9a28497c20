import EwallCore
import Foundation
import Logging
import NIOCore
import NIOPosix
import PostgresNIO

/// The shared store: PostgreSQL through postgres-nio's connection pool, the same schema and
/// behaviour as ``SQLiteStore`` (vectors as `BYTEA`, one transaction per batch). Several
/// machines may write to one database; rows are keyed by (model id, preprocessing, product).
public final class PostgresStore: EmbeddingStore {
    package let client: PostgresClient
    private let runner: Task<Void, Never>
    package let logger: Logger
    public let displayName: String

    private let probe: Probe

    private init(client: PostgresClient, runner: Task<Void, Never>, displayName: String, logger: Logger, probe: Probe) {
        self.client = client
        self.runner = runner
        self.displayName = displayName
        self.logger = logger
        self.probe = probe
    }

    /// Why the server cannot be reached right now, from one direct connection attempt
    /// (the pool's own errors say little while it retries), or `nil` when it answers.
    public func diagnose() async -> String? { await probe.run() }

    /// One connection, opened and closed, to learn whether and why the server refuses.
    struct Probe: Sendable {
        var host: String, port: Int, user: String, password: String?, database: String
        var timeout: Duration
        var logger: Logger

        func run() async -> String? {
            var config = PostgresConnection.Configuration(
                host: host, port: port, username: user, password: password,
                database: database, tls: .disable)
            config.options.connectTimeout = .nanoseconds(timeout.inNanoseconds)
            do {
                let conn = try await PostgresConnection.connect(
                    on: MultiThreadedEventLoopGroup.singleton.next(), configuration: config, id: 0, logger: logger
                ).get()
                try? await conn.close()
                return nil
            } catch let e as PSQLError {
                if let message = e.serverInfo?[.message] {
                    let code = e.serverInfo?[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
                    return "PostgreSQL refused: \(message)\(code)"
                }
                if let underlying = e.underlying { return Self.describe(underlying) }
                return "\(e.code)"
            } catch {
                return Self.describe(error)
            }
        }

        static func describe(_ error: any Error) -> String {
            if let e = error as? IOError { return e.description }
            if let e = error as? ChannelError, case .connectTimeout(let t) = e {
                return "no answer within \(t.nanoseconds / 1_000_000) ms"
            }
            return "\(error)"
        }
    }

    /// Connects (failing within `connectTimeout` with a clear error when the server is not
    /// there) and creates the schema under an advisory lock, so machines starting together
    /// do not race.
    public static func open(
        host: String, port: Int, user: String, password: String?, database: String,
        connectTimeout: Duration = .seconds(10), logger: Logger
    ) async throws -> PostgresStore {
        let name = "postgres://\(user)@\(host):\(port)/\(database)"
        // One direct connection first: the pool retries a refused connection in the
        // background and reports nothing until its own timeout, while a single connection
        // fails at once with PostgreSQL's words ("database \"x\" does not exist", "password
        // authentication failed for user ...") or the socket's ("connection refused").
        let probe = Probe(
            host: host, port: port, user: user, password: password, database: database,
            timeout: connectTimeout, logger: logger)
        if let problem = await probe.run() {
            throw StoreError(.unavailable, "cannot open \(name): \(problem)")
        }
        var config = PostgresClient.Configuration(
            host: host, port: port, username: user, password: password,
            database: database, tls: .disable)
        config.options.connectTimeout = connectTimeout
        config.options.maximumConnections = 8
        let client = PostgresClient(configuration: config, backgroundLogger: logger)
        let runner = Task { await client.run() }
        let store = PostgresStore(client: client, runner: runner, displayName: name, logger: logger, probe: probe)
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await store.migrate() }
                group.addTask {
                    try await Task.sleep(for: connectTimeout)
                    throw StoreError(.unavailable, "no answer from \(name) within \(connectTimeout)")
                }
                try await group.next()
                group.cancelAll()
            }
        } catch {
            runner.cancel()
            throw Self.wrap(error, "cannot open \(name)")
        }
        return store
    }

    /// Runs the `;`-separated `CREATE ... IF NOT EXISTS` statements of a module's own tables
    /// (the job queue's) under the lock that the store's schema is created under, so that many
    /// processes starting at once do not race on the same catalog rows.
    package func ensureSchema(_ sql: String) async throws {
        try await client.withConnection { conn in
            try await conn.query("SELECT pg_advisory_lock(7270113)", logger: logger)
            do {
                try await Self.run(sql, on: conn, logger: logger)
            } catch {
                _ = try? await conn.query("SELECT pg_advisory_unlock(7270113)", logger: logger)
                throw error
            }
            try await conn.query("SELECT pg_advisory_unlock(7270113)", logger: logger)
        }
    }

    private static func run(_ sql: String, on conn: PostgresConnection, logger: Logger) async throws {
        for statement in sql.split(separator: ";")
        where !statement.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
            try await conn.query(PostgresQuery(unsafeSQL: String(statement)), logger: logger)
        }
    }

    private func migrate() async throws {
        try await client.withConnection { conn in
            try await conn.query("SELECT pg_advisory_lock(7270113)", logger: logger)
            do {
                try await Self.run(Schema.postgres, on: conn, logger: logger)
                // Only where missing: ALTER TABLE takes the table's exclusive lock even with IF NOT EXISTS.
                for (table, column, type) in Schema.addedColumns {
                    let rows = try await conn.query(
                        """
                        SELECT 1 FROM information_schema.columns
                        WHERE table_schema = current_schema() AND table_name = \(table) AND column_name = \(column)
                        """, logger: logger)
                    var present = false
                    for try await _ in rows { present = true }
                    if !present {
                        try await conn.query(
                            PostgresQuery(unsafeSQL: "ALTER TABLE \(table) ADD COLUMN IF NOT EXISTS \(column) \(type)"),
                            logger: logger)
                    }
                }
                var version: Int?
                for try await (v) in try await conn.query(
                    "SELECT value FROM ewall_meta WHERE key = 'schema_version'",
                    logger: logger
                ).decode(String.self) {
                    version = Int(v)
                }
                if let version, version > Schema.version {
                    throw StoreError(
                        .incompatible,
                        "the database has schema version \(version); this ewall reads up to \(Schema.version)")
                }
                try await conn.query(
                    "INSERT INTO ewall_meta (key, value) VALUES ('schema_version', \(String(Schema.version))) ON CONFLICT DO NOTHING",
                    logger: logger)
            } catch {
                _ = try? await conn.query("SELECT pg_advisory_unlock(7270113)", logger: logger)
                throw error
            }
            try await conn.query("SELECT pg_advisory_unlock(7270113)", logger: logger)
        }
    }

    package static func wrap(_ error: any Error, _ context: String) -> StoreError {
        if let e = error as? StoreError { return e }
        if let e = error as? PSQLError {
            // With the server's answer: its message and SQLSTATE. Without one, the connection
            // itself failed (refused, closed, the pool gave up): the server may come back.
            guard let server = e.serverInfo?[.message] else {
                let cause = e.underlying.map { Probe.describe($0) } ?? "\(e.code)"
                return StoreError(
                    .unavailable, "\(context): the connection failed (\(cause))", detail: String(reflecting: e))
            }
            let state = e.serverInfo?[.sqlState]
            let kind: StoreError.Code
            switch state {
            case "53100": kind = .storageFull
            case "25006": kind = .readOnly
            // shutting down, connection lost
            case "57P01", "57P02", "57P03", "08000", "08003", "08006": kind = .unavailable
            default: kind = .queryFailed
            }
            return StoreError(
                kind, "\(context): PostgreSQL: \(server)\(state.map { " (SQLSTATE \($0))" } ?? "")",
                detail: String(reflecting: e))
        }
        return StoreError(.unavailable, "\(context): \(error)")
    }

    func run<T>(_ what: String, _ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch { throw Self.wrap(error, "\(what) on \(displayName)") }
    }

    public func upsertProducts(_ products: [Product], source: CategorySource) async throws {
        if products.isEmpty { return }
        try StorableText.check(products)
        let now = Date()
        try await run("storing products") {
            try await client.withTransaction(logger: logger) { conn in
                for p in products {
                    let src: String? = p.category == nil ? nil : source.rawValue
                    try await conn.query(
                        """
                        INSERT INTO products (product_id, title, category, category_source, in_stock, brand, price, created_at, updated_at)
                        VALUES (\(p.id), \(p.title), \(p.category), \(src), \(p.inStock), \(p.brand), \(p.price), \(now), \(now))
                        \(unescaped: Schema.productUpdate)
                        """, logger: logger)
                }
            }
        }
    }

    public func states(productIDs: [String], key: ModelKey) async throws -> [String: ItemState] {
        if productIDs.isEmpty { return [:] }
        return try await run("reading states") {
            var out: [String: ItemState] = [:]
            let rows = try await client.query(
                """
                SELECT product_id, image_url FROM embeddings
                WHERE model_id = \(key.modelID) AND preprocessing = \(key.preprocessing) AND product_id = ANY(\(productIDs))
                """, logger: logger)
            for try await (id, url) in rows.decode((String, String).self) {
                out[id, default: ItemState()].embeddedURL = url
            }
            let ledger = try await client.query(
                """
                SELECT product_id, image_url, status, error_class, http_status, attempts, last_error, last_tried
                FROM item_outcomes
                WHERE model_id = \(key.modelID) AND preprocessing = \(key.preprocessing) AND product_id = ANY(\(productIDs))
                """, logger: logger)
            for try await (id, url, status, cls, http, attempts, last, tried)
                in ledger.decode((String, String, String, String?, Int32?, Int32, String?, Date).self)
            {
                out[id, default: ItemState()].ledger = LedgerEntry(
                    productID: id, imageURL: url, key: key, status: LedgerEntry.Status(rawValue: status) ?? .failed,
                    errorClass: cls, httpStatus: http.map(Int.init), attempts: Int(attempts), lastError: last,
                    lastTried: tried)
            }
            return out
        }
    }

    public func write(_ batch: WriteBatch) async throws {
        if batch.isEmpty { return }
        try StorableText.check(batch)
        let now = Date()
        try await run("writing a batch") {
            try await client.withTransaction(logger: logger) { conn in
                // A synced product's vector for its current image enters the change feed with it
                // (Schema: catalogue), unless its key already holds that image's vector: decided
                // before the writes, in one statement (a store with no catalogue joins nothing).
                let es = batch.embeddings
                if !es.isEmpty {
                    try await conn.query(
                        """
                        INSERT INTO catalogue_changes (product_id, kind, at, model_id, preprocessing)
                        SELECT c.product_id, 'vector', \(now.timeIntervalSince1970), u.model, u.pre
                        FROM unnest(\(es.map(\.productID))::text[], \(es.map(\.imageURL))::text[], \(es.map(\.key.modelID))::text[],
                                    \(es.map(\.key.preprocessing))::text[], \(es.map { $0.imageSHA256 ?? "" })::text[])
                             AS u(id, url, model, pre, sha)
                        JOIN catalogue c ON c.product_id = u.id AND c.image_url = u.url
                        WHERE NOT EXISTS (
                            SELECT 1 FROM embeddings e
                            WHERE e.model_id = u.model AND e.preprocessing = u.pre AND e.product_id = u.id
                              AND e.image_url = u.url AND e.image_sha256 IS NOT DISTINCT FROM NULLIF(u.sha, ''))
                        """, logger: logger)
                }
                for e in batch.embeddings {
                    let vector = ByteBuffer(bytes: VectorBytes.encode(e.vector))
                    try await conn.query(
                        """
                        INSERT INTO embeddings (product_id, model_id, preprocessing, image_url, dim, vector, image_sha256,
                                                width, height, bytes, content_type, created_at, updated_at)
                        VALUES (\(e.productID), \(e.key.modelID), \(e.key.preprocessing), \(e.imageURL), \(Int32(e.vector.count)),
                                \(vector), \(e.imageSHA256), \(e.width.map { Int32($0) }), \(e.height.map { Int32($0) }),
                                \(e.bytes.map { Int64($0) }), \(e.contentType), \(now), \(now))
                        \(unescaped: Schema.embeddingUpdate)
                        """, logger: logger)
                }
                for l in batch.ledger {
                    try await conn.query(
                        """
                        INSERT INTO item_outcomes (product_id, model_id, preprocessing, image_url, status, error_class,
                                                   http_status, attempts, last_error, last_tried)
                        VALUES (\(l.productID), \(l.key.modelID), \(l.key.preprocessing), \(l.imageURL), \(l.status.rawValue),
                                \(l.errorClass), \(l.httpStatus.map { Int32($0) }), \(Int32(l.attempts)), \(l.lastError), \(l.lastTried))
                        \(unescaped: Schema.ledgerUpdate)
                        """, logger: logger)
                }
            }
        }
    }

    public func modelKeys() async throws -> [ModelKeyCount] {
        try await run("listing models") {
            var out: [ModelKeyCount] = []
            let rows = try await client.query(
                """
                SELECT model_id, preprocessing, MIN(dim), COUNT(*) FROM embeddings
                GROUP BY model_id, preprocessing ORDER BY model_id, preprocessing
                """, logger: logger)
            for try await (m, p, dim, n) in rows.decode((String, String, Int32, Int64).self) {
                out.append(
                    ModelKeyCount(key: ModelKey(modelID: m, preprocessing: p), dimension: Int(dim), count: Int(n)))
            }
            return out
        }
    }

    public func embeddings(key: ModelKey, after: String?, limit: Int) async throws -> [EmbeddingRow] {
        try await run("reading vectors") {
            var out: [EmbeddingRow] = []
            let rows = try await client.query(
                """
                SELECT e.product_id, e.image_url, e.dim, e.vector, e.image_sha256, e.width, e.height, e.bytes, e.content_type,
                       p.product_id, p.title, p.category, p.in_stock, p.brand, p.price, p.category_source
                FROM embeddings e LEFT JOIN products p ON p.product_id = e.product_id
                WHERE e.model_id = \(key.modelID) AND e.preprocessing = \(key.preprocessing) AND e.product_id > \(after ?? "")
                ORDER BY e.product_id LIMIT \(Int64(limit))
                """, logger: logger)
            for try await (
                id, url, dim, vec, sha, w, h, bytes, ctype, pid, title, category, inStock, brand, price, source
            ) in rows.decode(
                (
                    String, String, Int32, ByteBuffer, String?, Int32?, Int32?, Int64?, String?,
                    String?, String?, String?, Bool?, String?, Double?, String?
                ).self)
            {
                let vector = try vec.withUnsafeReadableBytes { try VectorBytes.decode($0, dimension: Int(dim)) }
                let e = StoredEmbedding(
                    productID: id, imageURL: url, key: key, vector: vector, imageSHA256: sha,
                    width: w.map(Int.init), height: h.map(Int.init), bytes: bytes.map(Int.init),
                    contentType: ctype)
                let p = pid.map {
                    Product(
                        id: $0, title: title, category: category, inStock: inStock, brand: brand, price: price,
                        categorySource: source.flatMap(CategorySource.init(rawValue:)))
                }
                out.append(EmbeddingRow(embedding: e, product: p))
            }
            return out
        }
    }

    public func productsWithVectors(key: ModelKey, after: String?, limit: Int) async throws -> [Product] {
        try await run("reading products") {
            var out: [Product] = []
            let rows = try await client.query(
                """
                SELECT e.product_id, p.title, p.category, p.in_stock, p.brand, p.price, p.category_source
                FROM embeddings e LEFT JOIN products p ON p.product_id = e.product_id
                WHERE e.model_id = \(key.modelID) AND e.preprocessing = \(key.preprocessing) AND e.product_id > \(after ?? "")
                ORDER BY e.product_id LIMIT \(Int64(limit))
                """, logger: logger)
            for try await (pid, title, category, inStock, brand, price, source)
                in rows.decode((String, String?, String?, Bool?, String?, Double?, String?).self)
            {
                out.append(
                    Product(
                        id: pid, title: title, category: category, inStock: inStock, brand: brand, price: price,
                        categorySource: source.flatMap(CategorySource.init(rawValue:))))
            }
            return out
        }
    }

    public func products(after: String?, limit: Int) async throws -> [Product] {
        try await run("reading products") {
            var out: [Product] = []
            let rows = try await client.query(
                """
                SELECT product_id, title, category, in_stock, brand, price, category_source FROM products
                WHERE product_id > \(after ?? "") ORDER BY product_id LIMIT \(Int64(limit))
                """, logger: logger)
            for try await (pid, title, category, inStock, brand, price, source)
                in rows.decode((String, String?, String?, Bool?, String?, Double?, String?).self)
            {
                out.append(
                    Product(
                        id: pid, title: title, category: category, inStock: inStock, brand: brand, price: price,
                        categorySource: source.flatMap(CategorySource.init(rawValue:))))
            }
            return out
        }
    }

    public func vectors(productIDs: [String], key: ModelKey) async throws -> [String: [Float]] {
        if productIDs.isEmpty { return [:] }
        return try await run("reading vectors") {
            var out: [String: [Float]] = [:]
            let rows = try await client.query(
                """
                SELECT product_id, dim, vector FROM embeddings
                WHERE model_id = \(key.modelID) AND preprocessing = \(key.preprocessing) AND product_id = ANY(\(productIDs))
                """, logger: logger)
            for try await (id, dim, vec) in rows.decode((String, Int32, ByteBuffer).self) {
                out[id] = try vec.withUnsafeReadableBytes { try VectorBytes.decode($0, dimension: Int(dim)) }
            }
            return out
        }
    }

    public func product(id: String) async throws -> Product? {
        try await run("reading a product") {
            let rows = try await client.query(
                "SELECT product_id, title, category, in_stock, brand, price, category_source FROM products WHERE product_id = \(id)",
                logger: logger)
            for try await (pid, title, category, inStock, brand, price, source)
                in rows.decode((String, String?, String?, Bool?, String?, Double?, String?).self)
            {
                return Product(
                    id: pid, title: title, category: category, inStock: inStock, brand: brand, price: price,
                    categorySource: source.flatMap(CategorySource.init(rawValue:)))
            }
            return nil
        }
    }

    public func embedding(productID: String, key: ModelKey) async throws -> StoredEmbedding? {
        try await run("reading a vector") {
            let rows = try await client.query(
                """
                SELECT image_url, dim, vector, image_sha256, width, height, bytes, content_type FROM embeddings
                WHERE model_id = \(key.modelID) AND preprocessing = \(key.preprocessing) AND product_id = \(productID)
                """, logger: logger)
            for try await (url, dim, vec, sha, w, h, bytes, ctype) in rows.decode(
                (String, Int32, ByteBuffer, String?, Int32?, Int32?, Int64?, String?).self)
            {
                let vector = try vec.withUnsafeReadableBytes { try VectorBytes.decode($0, dimension: Int(dim)) }
                return StoredEmbedding(
                    productID: productID, imageURL: url, key: key, vector: vector, imageSHA256: sha,
                    width: w.map(Int.init), height: h.map(Int.init), bytes: bytes.map(Int.init),
                    contentType: ctype)
            }
            return nil
        }
    }

    public func embedding(imageSHA256 sha: String, key: ModelKey) async throws -> StoredEmbedding? {
        try await run("looking up a vector by image sha256") {
            let rows = try await client.query(
                """
                SELECT product_id, image_url, dim, vector, width, height, bytes, content_type FROM embeddings
                WHERE model_id = \(key.modelID) AND preprocessing = \(key.preprocessing) AND image_sha256 = \(sha) LIMIT 1
                """, logger: logger)
            for try await (id, url, dim, vec, w, h, bytes, ctype) in rows.decode(
                (String, String, Int32, ByteBuffer, Int32?, Int32?, Int64?, String?).self)
            {
                let vector = try vec.withUnsafeReadableBytes { try VectorBytes.decode($0, dimension: Int(dim)) }
                return StoredEmbedding(
                    productID: id, imageURL: url, key: key, vector: vector, imageSHA256: sha,
                    width: w.map(Int.init), height: h.map(Int.init), bytes: bytes.map(Int.init),
                    contentType: ctype)
            }
            return nil
        }
    }

    public func ledgerEntry(productID: String, key: ModelKey) async throws -> LedgerEntry? {
        try await states(productIDs: [productID], key: key)[productID]?.ledger
    }

    public func ledgerCounts(key: ModelKey) async throws -> [String: Int] {
        try await run("counting outcomes") {
            var out: [String: Int] = [:]
            let rows = try await client.query(
                """
                SELECT status, COALESCE(error_class, ''), COUNT(*) FROM item_outcomes
                WHERE model_id = \(key.modelID) AND preprocessing = \(key.preprocessing) GROUP BY 1, 2
                """, logger: logger)
            for try await (status, cls, n) in rows.decode((String, String, Int64).self) {
                out[cls.isEmpty ? status : "\(status):\(cls)"] = Int(n)
            }
            return out
        }
    }

    public func classifications(productIDs: [String]) async throws -> [String: ClassificationRecord] {
        if productIDs.isEmpty { return [:] }
        return try await run("reading classifications") {
            var out: [String: ClassificationRecord] = [:]
            let rows = try await client.query(
                """
                SELECT product_id, category, decided_by, method, score, stamp, input_hash, explanation, classified_at
                FROM classifications WHERE product_id = ANY(\(productIDs))
                """, logger: logger)
            for try await (id, category, decidedBy, method, score, stamp, inputHash, explanation, at)
                in rows.decode((String, String, String, String, Double?, String, String, String, Date).self)
            {
                out[id] = ClassificationRecord(
                    productID: id, category: category, decidedBy: decidedBy, method: method,
                    score: score, stamp: stamp, inputHash: inputHash,
                    explanation: explanation, classifiedAt: at)
            }
            return out
        }
    }

    public func applyClassifications(_ records: [ClassificationRecord]) async throws -> Set<String> {
        if records.isEmpty { return [] }
        return try await run("applying categories") {
            try await client.withTransaction(logger: logger) { conn in
                var written = Set<String>()
                for r in records {
                    let rows = try await conn.query(
                        """
                        INSERT INTO products (product_id, category, category_source, created_at, updated_at)
                        VALUES (\(r.productID), \(r.category), 'classifier', \(r.classifiedAt), \(r.classifiedAt))
                        \(unescaped: Schema.classifierUpdate)
                        """, logger: logger)
                    var applied = false
                    for try await _ in rows.decode(String.self) { applied = true }
                    guard applied else { continue }
                    written.insert(r.productID)
                    try await conn.query(
                        """
                        INSERT INTO classifications (product_id, category, decided_by, method, score, stamp, input_hash,
                                                     explanation, classified_at)
                        VALUES (\(r.productID), \(r.category), \(r.decidedBy), \(r.method), \(r.score), \(r.stamp),
                                \(r.inputHash), \(r.explanation), \(r.classifiedAt))
                        \(unescaped: Schema.classificationUpdate)
                        """, logger: logger)
                }
                return written
            }
        }
    }

    public func close() async {
        runner.cancel()
        _ = await runner.value
    }
}

// The gift flags (`gift_flags`; see GiftFlags.swift).
extension PostgresStore {
    public func writeGiftFlags(_ flags: [GiftFlag]) async throws {
        if flags.isEmpty { return }
        for f in flags { try StorableText.check(f.productID, "product_id", f.productID) }
        try await run("storing gift flags") {
            try await client.withTransaction(logger: logger) { conn in
                for f in flags {
                    try await conn.query(
                        """
                        INSERT INTO gift_flags (product_id, is_gift, gift_type, decided_by, reason, explanation,
                                                resembles, rules_version, rules_sha256, flagged_at)
                        VALUES (\(f.productID), \(f.isGift), \(f.giftType), \(f.decidedBy), \(f.reason),
                                \(f.explanation), \(f.resembles), \(f.rulesVersion), \(f.rulesSHA256), \(f.flaggedAt))
                        \(unescaped: Schema.giftFlagUpdate)
                        """, logger: logger)
                }
            }
        }
    }

    public func giftFlags(productIDs: [String]) async throws -> [String: GiftFlag] {
        if productIDs.isEmpty { return [:] }
        return try await run("reading gift flags") {
            var out: [String: GiftFlag] = [:]
            let rows = try await client.query(
                """
                SELECT product_id, is_gift, gift_type, decided_by, reason, explanation, resembles, rules_version,
                       rules_sha256, flagged_at
                FROM gift_flags WHERE product_id = ANY(\(productIDs))
                """, logger: logger)
            for try await (id, isGift, giftType, decidedBy, reason, explanation, resembles, version, sha, at)
                in rows.decode((String, Bool, String?, String, String, String, String?, String, String, Date).self)
            {
                out[id] = GiftFlag(
                    productID: id, isGift: isGift, giftType: giftType, decidedBy: decidedBy, reason: reason,
                    explanation: explanation, resembles: resembles, rulesVersion: version, rulesSHA256: sha,
                    flaggedAt: at)
            }
            return out
        }
    }

    public func giftProductIDs() async throws -> Set<String> {
        try await run("reading gift flags") {
            var out = Set<String>()
            let rows = try await client.query("SELECT product_id FROM gift_flags WHERE is_gift", logger: logger)
            for try await id in rows.decode(String.self) { out.insert(id) }
            return out
        }
    }
}
