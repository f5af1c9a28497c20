import EwallCore
import Foundation
import PostgresNIO

extension PostgresStore: CatalogueStore {
    public func syncState(name: String) async throws -> SyncState? {
        try await run("reading the sync state") {
            let rows = try await client.query(
                "SELECT name, source, slot, position, commit_time, updated_at FROM sync_state WHERE name = \(name)",
                logger: logger)
            for try await (n, source, slot, position, commitTime, updatedAt)
                in rows.decode((String, String, String, Int64, Double?, Double).self)
            {
                return SyncState(
                    name: n, source: source, slot: slot, position: UInt64(bitPattern: position),
                    commitTime: commitTime.map { Date(timeIntervalSince1970: $0) },
                    updatedAt: Date(timeIntervalSince1970: updatedAt))
            }
            return nil
        }
    }

    public func applyCatalogue(_ changes: [CatalogueChange], state: SyncState) async throws -> [CatalogueRow] {
        for case .upsert(let row) in changes {
            try StorableText.check([row.product])
            if let url = row.imageURL { try StorableText.check(url, "image_url", row.product.id) }
        }
        let now = Date()
        let at = now.timeIntervalSince1970
        let sourceTime = state.commitTime?.timeIntervalSince1970
        let lsn = Int64(bitPattern: state.position)
        return try await run("applying catalogue changes") {
            try await client.withTransaction(logger: logger) { conn in
                var before: [String: String?] = [:]
                let ids = Array(Set(changes.map(\.productID)))
                let rows = try await conn.query(
                    "SELECT product_id, image_url FROM catalogue WHERE product_id = ANY(\(ids))", logger: logger)
                for try await (id, url) in rows.decode((String, String?).self) { before[id] = url }
                for change in changes {
                    switch change {
                    case .upsert(let row):
                        let p = row.product
                        let source: String? = p.category == nil ? nil : "manifest"
                        try await conn.query(
                            """
                            INSERT INTO products (product_id, title, category, category_source, in_stock, brand, price, created_at, updated_at)
                            VALUES (\(p.id), \(p.title), \(p.category), \(source), \(p.inStock), \(p.brand), \(p.price), \(now), \(now))
                            ON CONFLICT (product_id) DO UPDATE SET
                              title = excluded.title, category = excluded.category,
                              category_source = excluded.category_source, in_stock = excluded.in_stock,
                              brand = excluded.brand, price = excluded.price, updated_at = excluded.updated_at
                            """, logger: logger)
                        try await conn.query(
                            """
                            INSERT INTO catalogue (product_id, image_url, listed, source_lsn, synced_at)
                            VALUES (\(p.id), \(row.imageURL), \(row.listed), \(lsn), \(now))
                            ON CONFLICT (product_id) DO UPDATE SET
                              image_url = excluded.image_url, listed = excluded.listed,
                              source_lsn = excluded.source_lsn, synced_at = excluded.synced_at
                            """, logger: logger)
                        try await conn.query(
                            """
                            INSERT INTO catalogue_changes (product_id, kind, at, source_time)
                            VALUES (\(p.id), 'attributes', \(at), \(sourceTime))
                            """, logger: logger)
                    case .delete(let id):
                        try await conn.query("DELETE FROM products WHERE product_id = \(id)", logger: logger)
                        try await conn.query("DELETE FROM catalogue WHERE product_id = \(id)", logger: logger)
                        try await conn.query("DELETE FROM embeddings WHERE product_id = \(id)", logger: logger)
                        try await conn.query("DELETE FROM item_outcomes WHERE product_id = \(id)", logger: logger)
                        try await conn.query("DELETE FROM classifications WHERE product_id = \(id)", logger: logger)
                        try await conn.query(
                            """
                            INSERT INTO catalogue_changes (product_id, kind, at, source_time)
                            VALUES (\(id), 'delete', \(at), \(sourceTime))
                            """, logger: logger)
                    }
                }
                try await conn.query(
                    """
                    INSERT INTO sync_state (name, source, slot, position, commit_time, updated_at)
                    VALUES (\(state.name), \(state.source), \(state.slot), \(lsn), \(sourceTime), \(at))
                    ON CONFLICT (name) DO UPDATE SET
                      source = excluded.source, slot = excluded.slot, position = excluded.position,
                      commit_time = COALESCE(excluded.commit_time, sync_state.commit_time),
                      updated_at = excluded.updated_at
                    """, logger: logger)
                return Self.toEmbed(changes, before: before)
            }
        }
    }

    public func catalogueChanges(after seq: Int64, limit: Int) async throws -> [ChangeRecord] {
        try await run("reading the change feed") {
            let rows = try await client.query(
                """
                SELECT seq, product_id, kind, at, source_time, model_id, preprocessing FROM catalogue_changes
                WHERE seq > \(seq) ORDER BY seq LIMIT \(Int64(limit))
                """, logger: logger)
            var out: [ChangeRecord] = []
            for try await (s, id, kind, at, sourceTime, model, pre) in rows.decode(
                (Int64, String, String, Double, Double?, String?, String?).self)
            {
                out.append(
                    ChangeRecord(
                        seq: s, productID: id, kind: ChangeRecord.Kind(rawValue: kind) ?? .attributes,
                        at: Date(timeIntervalSince1970: at),
                        sourceTime: sourceTime.map { Date(timeIntervalSince1970: $0) },
                        key: model.flatMap { m in pre.map { ModelKey(modelID: m, preprocessing: $0) } }
                    ))
            }
            return out
        }
    }

    public func changeCounts(after seq: Int64, key: ModelKey) async throws -> (vectors: Int, deletes: Int) {
        try await run("counting changes") {
            let rows = try await client.query(
                """
                SELECT COUNT(DISTINCT CASE WHEN kind = 'vector' AND (model_id IS NULL
                                                 OR (model_id = \(key.modelID) AND preprocessing = \(key.preprocessing)))
                                           THEN product_id END)::BIGINT,
                       COUNT(DISTINCT CASE WHEN kind = 'delete' THEN product_id END)::BIGINT
                FROM catalogue_changes WHERE seq > \(seq)
                """, logger: logger)
            for try await (v, d) in rows.decode((Int64, Int64).self) { return (vectors: Int(v), deletes: Int(d)) }
            return (vectors: 0, deletes: 0)
        }
    }

    public func lastChangeSeq() async throws -> Int64 {
        try await run("reading the change feed") {
            let rows = try await client.query(
                "SELECT COALESCE(MAX(seq), 0)::BIGINT FROM catalogue_changes", logger: logger)
            for try await (s) in rows.decode(Int64.self) { return s }
            return 0
        }
    }

    public func catalogueRows(productIDs: [String]) async throws -> [String: CatalogueRow] {
        if productIDs.isEmpty { return [:] }
        return try await run("reading catalogue rows") {
            let rows = try await client.query(
                """
                SELECT p.product_id, p.title, p.category, p.in_stock, p.brand, p.price, p.category_source,
                       c.image_url, c.listed
                FROM products p LEFT JOIN catalogue c ON c.product_id = p.product_id
                WHERE p.product_id = ANY(\(productIDs))
                """, logger: logger)
            var out: [String: CatalogueRow] = [:]
            for try await (id, title, category, inStock, brand, price, source, url, listed)
                in rows.decode((String, String?, String?, Bool?, String?, Double?, String?, String?, Bool?).self)
            {
                let p = Product(
                    id: id, title: title, category: category, inStock: inStock, brand: brand, price: price,
                    categorySource: source.flatMap(CategorySource.init(rawValue:)))
                out[id] = CatalogueRow(product: p, imageURL: url, listed: listed)
            }
            return out
        }
    }

    public func syncedProductIDs(after: String?, limit: Int) async throws -> [String] {
        try await run("reading synced products") {
            let rows = try await client.query(
                """
                SELECT product_id FROM catalogue WHERE product_id > \(after ?? "")
                ORDER BY product_id LIMIT \(Int64(limit))
                """, logger: logger)
            var out: [String] = []
            for try await (id) in rows.decode(String.self) { out.append(id) }
            return out
        }
    }

    public func rowsToEmbed(key: ModelKey, limit: Int) async throws -> [CatalogueRow] {
        try await run("reading rows to embed") {
            let rows = try await client.query(
                """
                SELECT c.product_id, c.image_url FROM catalogue c
                LEFT JOIN embeddings e ON e.product_id = c.product_id AND e.model_id = \(key.modelID)
                  AND e.preprocessing = \(key.preprocessing)
                LEFT JOIN item_outcomes o ON o.product_id = c.product_id AND o.model_id = \(key.modelID)
                  AND o.preprocessing = \(key.preprocessing)
                WHERE c.image_url IS NOT NULL AND (e.image_url IS NULL OR e.image_url != c.image_url)
                  AND (o.image_url IS NULL OR o.image_url != c.image_url)
                ORDER BY c.product_id LIMIT \(Int64(limit))
                """, logger: logger)
            var out: [CatalogueRow] = []
            for try await (id, url) in rows.decode((String, String?).self) {
                out.append(CatalogueRow(product: Product(id: id), imageURL: url, listed: nil))
            }
            return out
        }
    }

    public func unlistedProductIDs() async throws -> [String] {
        try await run("reading unlisted products") {
            let rows = try await client.query("SELECT product_id FROM catalogue WHERE listed = false", logger: logger)
            var out: [String] = []
            for try await (id) in rows.decode(String.self) { out.append(id) }
            return out
        }
    }

    public func resetSync(name: String) async throws {
        try await run("resetting the sync state") {
            _ = try await client.query("DELETE FROM sync_state WHERE name = \(name)", logger: logger)
        }
    }
}
