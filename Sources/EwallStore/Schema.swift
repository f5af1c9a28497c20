/// The store's tables, the same in both databases (types differ only where the dialects do).
///
/// - `products`: one row per product; `category_source` says who set the category.
/// - `embeddings`: one vector per (model id, preprocessing, product), float32 bytes.
/// - `item_outcomes`: the ledger, the last outcome per (model id, preprocessing, product).
/// - `classifications`: the classifier's last applied answer per product, with the stamp and
///   input hash that say whether it still holds.
/// - `catalogue`, `catalogue_changes`, `sync_state`: the live catalogue `ewall sync` follows
///   (Catalogue.swift): each synced product's image URL, listed flag and log position; the
///   change feed replicas follow; each sync's applied position.
/// - `gift_flags`: the gift detector's applied answer per product (`ewall gifts --apply`), a table
///   of its own beside `products` (see ``giftFlagsSQLite``).
/// - `precision_admissions`: the precision guard's figures that let bf16/int8/fast-decode vectors
///   share fp32's model key (PrecisionAdmissions.swift).
///
/// Product ids compare byte-wise in both (SQLite's BINARY, PostgreSQL's "C" collation), so
/// keyset pagination and export order agree between the two.
package enum Schema {
    static let version = 1

    /// Columns added to a table after stores existed with it (nullable, so the schema version
    /// stays: an older ewall names its columns and never reads them): (table, column, type).
    /// `catalogue_changes.model_id/preprocessing`: the model key of a `vector` entry (NULL on
    /// other entries, and on vector entries an older ewall wrote: those count for every key).
    static let addedColumns: [(table: String, column: String, type: String)] = [
        ("catalogue_changes", "model_id", "TEXT"), ("catalogue_changes", "preprocessing", "TEXT"),
    ]

    // The upserts' update clauses, the same text in both dialects.

    /// A product row keeps what a new row leaves `NULL`.
    static let productUpdate = """
        ON CONFLICT (product_id) DO UPDATE SET
          title = COALESCE(excluded.title, products.title),
          category = COALESCE(excluded.category, products.category),
          category_source = CASE WHEN excluded.category IS NULL THEN products.category_source
                                 ELSE excluded.category_source END,
          in_stock = COALESCE(excluded.in_stock, products.in_stock),
          brand = COALESCE(excluded.brand, products.brand),
          price = COALESCE(excluded.price, products.price),
          updated_at = excluded.updated_at
        """

    /// A newer vector replaces the older one of the same key; `created_at` stays.
    package static let embeddingUpdate = """
        ON CONFLICT (model_id, preprocessing, product_id) DO UPDATE SET
          image_url = excluded.image_url, dim = excluded.dim, vector = excluded.vector,
          image_sha256 = excluded.image_sha256, width = excluded.width, height = excluded.height,
          bytes = excluded.bytes, content_type = excluded.content_type, updated_at = excluded.updated_at
        """

    /// The ledger keeps the last outcome.
    package static let ledgerUpdate = """
        ON CONFLICT (model_id, preprocessing, product_id) DO UPDATE SET
          image_url = excluded.image_url, status = excluded.status, error_class = excluded.error_class,
          http_status = excluded.http_status, attempts = excluded.attempts,
          last_error = excluded.last_error, last_tried = excluded.last_tried
        """

    /// The classifier writes a category only where no person set one. Shared by both dialects.
    static let classifierUpdate = """
        ON CONFLICT (product_id) DO UPDATE SET
          category = excluded.category, category_source = 'classifier', updated_at = excluded.updated_at
        WHERE products.category IS NULL OR products.category = '' OR products.category = 'generic'
           OR products.category_source = 'classifier'
        RETURNING product_id
        """

    static let classificationUpdate = """
        ON CONFLICT (product_id) DO UPDATE SET
          category = excluded.category, decided_by = excluded.decided_by, method = excluded.method,
          score = excluded.score, stamp = excluded.stamp, input_hash = excluded.input_hash,
          explanation = excluded.explanation, classified_at = excluded.classified_at
        """

    static let sqlite = """
        CREATE TABLE IF NOT EXISTS ewall_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS products (
            product_id      TEXT PRIMARY KEY,
            title           TEXT,
            category        TEXT,
            category_source TEXT,
            in_stock        INTEGER,
            brand           TEXT,
            price           REAL,
            created_at      TEXT NOT NULL,
            updated_at      TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS embeddings (
            product_id    TEXT NOT NULL,
            model_id      TEXT NOT NULL,
            preprocessing TEXT NOT NULL,
            image_url     TEXT NOT NULL,
            dim           INTEGER NOT NULL,
            vector        BLOB NOT NULL,
            image_sha256  TEXT,
            width         INTEGER,
            height        INTEGER,
            bytes         INTEGER,
            content_type  TEXT,
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL,
            PRIMARY KEY (model_id, preprocessing, product_id)
        );
        CREATE TABLE IF NOT EXISTS item_outcomes (
            product_id    TEXT NOT NULL,
            model_id      TEXT NOT NULL,
            preprocessing TEXT NOT NULL,
            image_url     TEXT NOT NULL,
            status        TEXT NOT NULL,
            error_class   TEXT,
            http_status   INTEGER,
            attempts      INTEGER NOT NULL,
            last_error    TEXT,
            last_tried    TEXT NOT NULL,
            PRIMARY KEY (model_id, preprocessing, product_id)
        );
        CREATE TABLE IF NOT EXISTS classifications (
            product_id    TEXT PRIMARY KEY,
            category      TEXT NOT NULL,
            decided_by    TEXT NOT NULL,
            method        TEXT NOT NULL,
            score         REAL,
            stamp         TEXT NOT NULL,
            input_hash    TEXT NOT NULL,
            explanation   TEXT NOT NULL,
            classified_at TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS catalogue (
            product_id  TEXT PRIMARY KEY,
            image_url   TEXT,
            listed      INTEGER,
            source_lsn  INTEGER NOT NULL,
            synced_at   TEXT NOT NULL
        );
        CREATE TABLE IF NOT EXISTS catalogue_changes (
            seq           INTEGER PRIMARY KEY AUTOINCREMENT,
            product_id    TEXT NOT NULL,
            kind          TEXT NOT NULL,
            at            REAL NOT NULL,
            source_time   REAL,
            model_id      TEXT,
            preprocessing TEXT
        );
        CREATE TABLE IF NOT EXISTS sync_state (
            name        TEXT PRIMARY KEY,
            source      TEXT NOT NULL,
            slot        TEXT NOT NULL,
            position    INTEGER NOT NULL,
            commit_time REAL,
            updated_at  REAL NOT NULL
        );
        CREATE INDEX IF NOT EXISTS embeddings_by_image ON embeddings (model_id, preprocessing, image_sha256);
        """ + giftFlagsSQLite + precisionAdmissionsSQLite

    static let postgres = """
        CREATE TABLE IF NOT EXISTS ewall_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS products (
            product_id      TEXT COLLATE "C" PRIMARY KEY,
            title           TEXT,
            category        TEXT,
            category_source TEXT,
            in_stock        BOOLEAN,
            brand           TEXT,
            price           DOUBLE PRECISION,
            created_at      TIMESTAMPTZ NOT NULL,
            updated_at      TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE IF NOT EXISTS embeddings (
            product_id    TEXT COLLATE "C" NOT NULL,
            model_id      TEXT NOT NULL,
            preprocessing TEXT NOT NULL,
            image_url     TEXT NOT NULL,
            dim           INTEGER NOT NULL,
            vector        BYTEA NOT NULL,
            image_sha256  TEXT,
            width         INTEGER,
            height        INTEGER,
            bytes         BIGINT,
            content_type  TEXT,
            created_at    TIMESTAMPTZ NOT NULL,
            updated_at    TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (model_id, preprocessing, product_id)
        );
        CREATE TABLE IF NOT EXISTS item_outcomes (
            product_id    TEXT COLLATE "C" NOT NULL,
            model_id      TEXT NOT NULL,
            preprocessing TEXT NOT NULL,
            image_url     TEXT NOT NULL,
            status        TEXT NOT NULL,
            error_class   TEXT,
            http_status   INTEGER,
            attempts      INTEGER NOT NULL,
            last_error    TEXT,
            last_tried    TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (model_id, preprocessing, product_id)
        );
        CREATE TABLE IF NOT EXISTS classifications (
            product_id    TEXT COLLATE "C" PRIMARY KEY,
            category      TEXT NOT NULL,
            decided_by    TEXT NOT NULL,
            method        TEXT NOT NULL,
            score         DOUBLE PRECISION,
            stamp         TEXT NOT NULL,
            input_hash    TEXT NOT NULL,
            explanation   TEXT NOT NULL,
            classified_at TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE IF NOT EXISTS catalogue (
            product_id  TEXT COLLATE "C" PRIMARY KEY,
            image_url   TEXT,
            listed      BOOLEAN,
            source_lsn  BIGINT NOT NULL,
            synced_at   TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE IF NOT EXISTS catalogue_changes (
            seq           BIGSERIAL PRIMARY KEY,
            product_id    TEXT COLLATE "C" NOT NULL,
            kind          TEXT NOT NULL,
            at            DOUBLE PRECISION NOT NULL,
            source_time   DOUBLE PRECISION,
            model_id      TEXT,
            preprocessing TEXT
        );
        CREATE TABLE IF NOT EXISTS sync_state (
            name        TEXT PRIMARY KEY,
            source      TEXT NOT NULL,
            slot        TEXT NOT NULL,
            position    BIGINT NOT NULL,
            commit_time DOUBLE PRECISION,
            updated_at  DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX IF NOT EXISTS embeddings_by_image ON embeddings (model_id, preprocessing, image_sha256);
        """ + giftFlagsPostgres + precisionAdmissionsPostgres

    /// The gift detector's applied answers (`ewall gifts --apply`): one row per product, gift or
    /// not, with the step that decided, the platform's `gift_type` and Korean reason, and the
    /// rules that produced it. Appended to both dialects' schema.
    static let giftFlagsSQLite = """

        CREATE TABLE IF NOT EXISTS gift_flags (
            product_id    TEXT PRIMARY KEY,
            is_gift       INTEGER NOT NULL,
            gift_type     TEXT,
            decided_by    TEXT NOT NULL,
            reason        TEXT NOT NULL,
            explanation   TEXT NOT NULL,
            resembles     TEXT,
            rules_version TEXT NOT NULL,
            rules_sha256  TEXT NOT NULL,
            flagged_at    TEXT NOT NULL
        );
        CREATE INDEX IF NOT EXISTS gift_flags_gifts ON gift_flags (is_gift, product_id);
        """

    static let giftFlagsPostgres = """

        CREATE TABLE IF NOT EXISTS gift_flags (
            product_id    TEXT COLLATE "C" PRIMARY KEY,
            is_gift       BOOLEAN NOT NULL,
            gift_type     TEXT,
            decided_by    TEXT NOT NULL,
            reason        TEXT NOT NULL,
            explanation   TEXT NOT NULL,
            resembles     TEXT,
            rules_version TEXT NOT NULL,
            rules_sha256  TEXT NOT NULL,
            flagged_at    TIMESTAMPTZ NOT NULL
        );
        CREATE INDEX IF NOT EXISTS gift_flags_gifts ON gift_flags (is_gift, product_id);
        """

    /// The upsert of a gift flag: the newer answer replaces the older.
    static let giftFlagUpdate = """
        ON CONFLICT (product_id) DO UPDATE SET
          is_gift = excluded.is_gift, gift_type = excluded.gift_type, decided_by = excluded.decided_by,
          reason = excluded.reason, explanation = excluded.explanation, resembles = excluded.resembles,
          rules_version = excluded.rules_version, rules_sha256 = excluded.rules_sha256, flagged_at = excluded.flagged_at
        """
}
