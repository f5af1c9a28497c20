import EwallCore
import EwallStore
import Foundation

/// Which source column holds each field of a product. The defaults fit a Django product model
/// (`id`, `title`, `brand`, `category`, `price`, `in_stock`, `image_url`); `listed` (an
/// active/visible flag) is used only when mapped.
public struct ColumnMap: Sendable, Hashable {
    public static let fields = ["product_id", "title", "brand", "category", "price", "in_stock", "image_url", "listed"]
    public static let defaults: [String: String] = [
        "product_id": "id", "title": "title", "brand": "brand", "category": "category", "price": "price",
        "in_stock": "in_stock", "image_url": "image_url",
    ]

    /// Field -> source column.
    public private(set) var columns: [String: String]

    public init(_ columns: [String: String] = ColumnMap.defaults) { self.columns = columns }

    /// The defaults changed by `field=column,...` (`--map`); `field=` drops an optional field.
    public init(parsing text: String?) throws(SyncError) {
        var columns = Self.defaults
        for pair in (text ?? "").split(separator: ",") where !pair.trimmingCharacters(in: .whitespaces).isEmpty {
            let kv = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            guard kv.count == 2, Self.fields.contains(kv[0]) else {
                throw SyncError(
                    .invalidMapping,
                    "--map \(pair): expected field=column with a field among \(Self.fields.joined(separator: ", "))")
            }
            if kv[1].isEmpty {
                guard kv[0] != "product_id", kv[0] != "image_url" else {
                    throw SyncError(.invalidMapping, "--map: \(kv[0]) cannot be dropped")
                }
                columns[kv[0]] = nil
            } else {
                columns[kv[0]] = kv[1]
            }
        }
        self.columns = columns
    }

    /// Reads a JSON object `{"field": "column", ...}` (`--map-file`), over the defaults.
    public init(file: String) throws(SyncError) {
        guard let data = FileManager.default.contents(atPath: file) else {
            throw SyncError(.invalidMapping, "--map-file \(file): cannot read it")
        }
        guard let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw SyncError(.invalidMapping, "--map-file \(file): not a JSON object of field -> column")
        }
        var pairs: [String] = []
        for (k, v) in object.sorted(by: { $0.key < $1.key }) {
            switch v {
            case let s as String: pairs.append("\(k)=\(s)")
            case is NSNull: pairs.append("\(k)=")
            default: throw SyncError(.invalidMapping, "--map-file \(file): \(k) must be a column name or null")
            }
        }
        try self.init(parsing: pairs.joined(separator: ","))
    }

    public var productID: String { columns["product_id"]! }

    /// The source columns to read and publish, product id first, each once.
    public var sourceColumns: [String] {
        var out = [productID]
        for f in Self.fields.dropFirst() { if let c = columns[f], !out.contains(c) { out.append(c) } }
        return out
    }

    /// A row of the source (column -> text value) as a catalogue row; nil without an id.
    func row(_ value: (String) -> String?) -> CatalogueRow? {
        guard let id = value(productID), !id.isEmpty else { return nil }
        func field(_ f: String) -> String? { columns[f].flatMap(value) }
        let product = Product(
            id: id, title: field("title"), category: field("category"),
            inStock: field("in_stock").flatMap(Self.bool), brand: field("brand"),
            price: field("price").flatMap(Double.init))
        return CatalogueRow(product: product, imageURL: field("image_url"), listed: field("listed").flatMap(Self.bool))
    }

    /// PostgreSQL's text for booleans (`t`/`f`), and the usual spellings.
    static func bool(_ text: String) -> Bool? {
        switch text.lowercased() {
        case "t", "true", "1", "yes", "y", "on": true
        case "f", "false", "0", "no", "n", "off": false
        default: nil
        }
    }
}

/// The source table: `schema.name` (default schema `public`).
public struct SourceTable: Sendable, Hashable, CustomStringConvertible {
    public var schema: String
    public var name: String

    public init(parsing text: String) throws(SyncError) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        guard (1...2).contains(parts.count), parts.allSatisfy({ !$0.isEmpty }) else {
            throw SyncError(.invalidMapping, "--table \(text): expected SCHEMA.NAME (or NAME in public)")
        }
        schema = parts.count == 2 ? parts[0] : "public"
        name = parts.last!
    }

    public var description: String { "\(schema).\(name)" }
    var quoted: String { SourceConnection.identifier(schema) + "." + SourceConnection.identifier(name) }
}

/// What a sync needs of the source, checked before anything is created: each refusal names what
/// is missing and the statement or setting that fixes it.
enum SourceChecks {
    static func run(_ c: SourceConnection, table: SourceTable, map: ColumnMap) throws(SyncError) {
        let level = try value(c, "SHOW wal_level")
        guard level == "logical" else {
            throw SyncError(
                .walLevel,
                "\(c.shown) has wal_level = \(level ?? "?"); logical decoding needs wal_level = logical: run "
                    + "ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL (and keep max_replication_slots "
                    + "and max_wal_senders above 0)")
        }
        let canReplicate = try value(
            c, "SELECT (rolreplication OR rolsuper)::text FROM pg_roles WHERE rolname = current_user")
        guard canReplicate == "true" else {
            let role = (try? value(c, "SELECT current_user")) ?? nil
            throw SyncError(
                .noReplication,
                "role \(role ?? "?") on \(c.shown) may not replicate: run ALTER ROLE \(role ?? "name") REPLICATION; "
                    + "(as a superuser)")
        }
        let oid = try value(c, "SELECT to_regclass($1)::oid::text", [table.quoted])
        guard let oid else {
            throw SyncError(
                .noTable,
                "table \(table) does not exist on \(c.shown) (or this role cannot see it): check --table, "
                    + "or GRANT USAGE ON SCHEMA \(table.schema) and SELECT ON \(table) to the role")
        }
        let have = Set(
            try rows(
                c, "SELECT attname FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 AND NOT attisdropped",
                [oid]
            ).compactMap { $0.first ?? nil })
        for (field, column) in map.columns.sorted(by: { $0.key < $1.key }) where !have.contains(column) {
            throw SyncError(
                .noColumn,
                "table \(table) has no column \(column) (mapped to \(field)); it has: "
                    + have.sorted().joined(separator: ", ") + ". Fix it with --map \(field)=COLUMN")
        }
        // Deletes carry only the replica identity: it must be the product id (or the whole row).
        let identity = try value(c, "SELECT relreplident::text FROM pg_class WHERE oid = $1::oid", [oid])
        if identity != "f" {
            let key = try rows(
                c,
                """
                SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                WHERE i.indrelid = $1::oid AND (i.indisprimary AND $2 = 'd' OR i.indisreplident AND $2 = 'i')
                """, [oid, identity]
            ).compactMap { $0.first ?? nil }
            guard key == [map.productID] else {
                throw SyncError(
                    .replicaIdentity,
                    "a delete on \(table) sends its replica identity (\(key.isEmpty ? "nothing" : key.joined(separator: ", "))), "
                        + "not the product id column \(map.productID): make \(map.productID) the primary key, or run "
                        + "ALTER TABLE \(table) REPLICA IDENTITY FULL;")
            }
        }
    }

    /// Creates the publication (only the mapped columns; the row filter if any), or brings an
    /// existing one of that name to the same definition.
    static func publication(
        _ c: SourceConnection, name: String, table: SourceTable, map: ColumnMap, filter: String?
    ) throws(SyncError) {
        let columns = map.sourceColumns.map(SourceConnection.identifier).joined(separator: ", ")
        let target = "\(table.quoted) (\(columns))" + (filter.map { " WHERE (\($0))" } ?? "")
        let exists = try value(c, "SELECT 1::text FROM pg_publication WHERE pubname = $1", [name]) != nil
        let sql =
            exists
            ? "ALTER PUBLICATION \(SourceConnection.identifier(name)) SET TABLE \(target)"
            : "CREATE PUBLICATION \(SourceConnection.identifier(name)) FOR TABLE \(target)"
        do {
            try c.query(sql)
        } catch {
            if error.state == "42501" {
                throw SyncError(
                    .publication,
                    "this role may not \(exists ? "change" : "create") the publication on \(c.shown) "
                        + "(\(error.message)): the table's owner or a superuser runs: \(sql);")
            }
            throw SyncError(.invalidMapping, "\(sql): \(error.message)")
        }
    }

    static func value(_ c: SourceConnection, _ sql: String, _ params: [String?] = []) throws(SyncError) -> String? {
        try rows(c, sql, params).first?.first ?? nil
    }

    static func rows(_ c: SourceConnection, _ sql: String, _ params: [String?] = []) throws(SyncError) -> [[String?]] {
        do { return try c.query(sql, params).rows } catch {
            throw SyncError(error.isConnectionLost ? .sourceUnavailable : .queryFailed, "\(c.shown): \(error.message)")
        }
    }
}
