/// The store's tables, the same in both databases (types differ only where the dialects do).
///
/// - `products`: one row per product; `category_source` says who set the category.
/// - `embeddings`: one vector per (model id, preprocessing, product), float32 bytes.
/// - `item_outcomes`: the ledger, the last outcome per (model id, preprocessing, product).
///
/// Product ids compare byte-wise in both (SQLite's BINARY, PostgreSQL's "C" collation), so
/// keyset pagination and export order agree between the two.
enum Schema {
    static let version = 1

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
        """

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
        """
}
