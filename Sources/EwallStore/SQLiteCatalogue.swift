import EwallCore
import Foundation

extension SQLiteStore: CatalogueStore {
    public func syncState(name: String) async throws -> SyncState? {
        try await onWorker { c in
            var out: SyncState?
            try c.query(
                "SELECT name, source, slot, position, commit_time, updated_at FROM sync_state WHERE name = ?",
                [.text(name)]
            ) { row in
                out = SyncState(
                    name: row.text(0)!, source: row.text(1) ?? "", slot: row.text(2) ?? "",
                    position: UInt64(bitPattern: Int64(row.int(3) ?? 0)),
                    commitTime: row.double(4).map { Date(timeIntervalSince1970: $0) },
                    updatedAt: Date(timeIntervalSince1970: row.double(5) ?? 0))
            }
            return out
        }
    }

    public func applyCatalogue(_ changes: [CatalogueChange], state: SyncState) async throws -> [CatalogueRow] {
        for case .upsert(let row) in changes {
            try StorableText.check([row.product])
            if let url = row.imageURL { try StorableText.check(url, "image_url", row.product.id) }
        }
        let now = Date()
        let iso = now.ISO8601Format()
        return try await onWorker { c in
            try c.transaction {
                var before: [String: String?] = [:]
                for id in Set(changes.map(\.productID)) {
                    var url: String??
                    try c.query("SELECT image_url FROM catalogue WHERE product_id = ?", [.text(id)]) {
                        url = .some($0.text(0))
                    }
                    if let url { before[id] = url }
                }
                let sourceTime: SQLValue = state.commitTime.map { .double($0.timeIntervalSince1970) } ?? .null
                for change in changes {
                    switch change {
                    case .upsert(let row):
                        let p = row.product
                        try c.query(
                            """
                            INSERT INTO products (product_id, title, category, category_source, in_stock, brand, price, created_at, updated_at)
                            VALUES (?1, ?2, ?3, CASE WHEN ?3 IS NULL THEN NULL ELSE 'manifest' END, ?4, ?5, ?6, ?7, ?7)
                            ON CONFLICT (product_id) DO UPDATE SET
                              title = excluded.title, category = excluded.category,
                              category_source = excluded.category_source, in_stock = excluded.in_stock,
                              brand = excluded.brand, price = excluded.price, updated_at = excluded.updated_at
                            """,
                            [
                                .text(p.id), p.title.map { .text($0) } ?? .null, p.category.map { .text($0) } ?? .null,
                                p.inStock.map { .int($0 ? 1 : 0) } ?? .null, p.brand.map { .text($0) } ?? .null,
                                p.price.map { .double($0) } ?? .null, .text(iso),
                            ])
                        try c.query(
                            """
                            INSERT INTO catalogue (product_id, image_url, listed, source_lsn, synced_at)
                            VALUES (?1, ?2, ?3, ?4, ?5)
                            ON CONFLICT (product_id) DO UPDATE SET
                              image_url = excluded.image_url, listed = excluded.listed,
                              source_lsn = excluded.source_lsn, synced_at = excluded.synced_at
                            """,
                            [
                                .text(p.id), row.imageURL.map { .text($0) } ?? .null,
                                row.listed.map { .int($0 ? 1 : 0) } ?? .null,
                                .int(Int64(bitPattern: state.position)), .text(iso),
                            ])
                        try c.query(
                            "INSERT INTO catalogue_changes (product_id, kind, at, source_time) VALUES (?, 'attributes', ?, ?)",
                            [.text(p.id), .double(now.timeIntervalSince1970), sourceTime])
                    case .delete(let id):
                        for table in ["products", "catalogue", "embeddings", "item_outcomes", "classifications"] {
                            try c.query("DELETE FROM \(table) WHERE product_id = ?", [.text(id)])
                        }
                        try c.query(
                            "INSERT INTO catalogue_changes (product_id, kind, at, source_time) VALUES (?, 'delete', ?, ?)",
                            [.text(id), .double(now.timeIntervalSince1970), sourceTime])
                    }
                }
                try c.query(
                    """
                    INSERT INTO sync_state (name, source, slot, position, commit_time, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                    ON CONFLICT (name) DO UPDATE SET
                      source = excluded.source, slot = excluded.slot, position = excluded.position,
                      commit_time = COALESCE(excluded.commit_time, sync_state.commit_time), updated_at = excluded.updated_at
                    """,
                    [
                        .text(state.name), .text(state.source), .text(state.slot),
                        .int(Int64(bitPattern: state.position)), sourceTime, .double(now.timeIntervalSince1970),
                    ])
                return Self.toEmbed(changes, before: before)
            }
        }
    }

    public func catalogueChanges(after seq: Int64, limit: Int) async throws -> [ChangeRecord] {
        try await onWorker { c in
            var out: [ChangeRecord] = []
            try c.query(
                """
                SELECT seq, product_id, kind, at, source_time, model_id, preprocessing FROM catalogue_changes
                WHERE seq > ? ORDER BY seq LIMIT ?
                """,
                [.int(seq), .int(Int64(limit))]
            ) { row in
                out.append(
                    ChangeRecord(
                        seq: Int64(row.int(0) ?? 0), productID: row.text(1) ?? "",
                        kind: ChangeRecord.Kind(rawValue: row.text(2) ?? "") ?? .attributes,
                        at: Date(timeIntervalSince1970: row.double(3) ?? 0),
                        sourceTime: row.double(4).map { Date(timeIntervalSince1970: $0) },
                        key: row.text(5).flatMap { m in row.text(6).map { ModelKey(modelID: m, preprocessing: $0) } }))
            }
            return out
        }
    }

    public func changeCounts(after seq: Int64, key: ModelKey) async throws -> (vectors: Int, deletes: Int) {
        try await onWorker { c in
            var out = (vectors: 0, deletes: 0)
            try c.query(
                """
                SELECT COUNT(DISTINCT CASE WHEN kind = 'vector' AND (model_id IS NULL OR (model_id = ?2 AND preprocessing = ?3))
                                           THEN product_id END),
                       COUNT(DISTINCT CASE WHEN kind = 'delete' THEN product_id END)
                FROM catalogue_changes WHERE seq > ?1
                """, [.int(seq), .text(key.modelID), .text(key.preprocessing)]
            ) { out = (vectors: $0.int(0) ?? 0, deletes: $0.int(1) ?? 0) }
            return out
        }
    }

    public func lastChangeSeq() async throws -> Int64 {
        try await onWorker { c in
            var out: Int64 = 0
            try c.query("SELECT COALESCE(MAX(seq), 0) FROM catalogue_changes") { out = Int64($0.int(0) ?? 0) }
            return out
        }
    }

    public func catalogueRows(productIDs: [String]) async throws -> [String: CatalogueRow] {
        if productIDs.isEmpty { return [:] }
        return try await onWorker { c in
            var out: [String: CatalogueRow] = [:]
            for chunk in stride(from: 0, to: productIDs.count, by: 5_000) {
                let ids = productIDs[chunk..<min(chunk + 5_000, productIDs.count)]
                let marks = Array(repeating: "?", count: ids.count).joined(separator: ",")
                try c.query(
                    """
                    SELECT p.product_id, p.title, p.category, p.in_stock, p.brand, p.price, p.category_source,
                           c.image_url, c.listed
                    FROM products p LEFT JOIN catalogue c ON c.product_id = p.product_id
                    WHERE p.product_id IN (\(marks))
                    """, ids.map { .text($0) }
                ) { row in
                    let p = Product(
                        id: row.text(0)!, title: row.text(1), category: row.text(2),
                        inStock: row.int(3).map { $0 != 0 }, brand: row.text(4), price: row.double(5),
                        categorySource: row.text(6).flatMap(CategorySource.init(rawValue:)))
                    out[p.id] = CatalogueRow(product: p, imageURL: row.text(7), listed: row.int(8).map { $0 != 0 })
                }
            }
            return out
        }
    }

    public func syncedProductIDs(after: String?, limit: Int) async throws -> [String] {
        try await onWorker { c in
            var out: [String] = []
            try c.query(
                "SELECT product_id FROM catalogue WHERE product_id > ? ORDER BY product_id LIMIT ?",
                [.text(after ?? ""), .int(Int64(limit))]
            ) { out.append($0.text(0)!) }
            return out
        }
    }

    public func rowsToEmbed(key: ModelKey, limit: Int) async throws -> [CatalogueRow] {
        try await onWorker { c in
            var out: [CatalogueRow] = []
            try c.query(
                """
                SELECT c.product_id, c.image_url FROM catalogue c
                LEFT JOIN embeddings e ON e.product_id = c.product_id AND e.model_id = ?1 AND e.preprocessing = ?2
                LEFT JOIN item_outcomes o ON o.product_id = c.product_id AND o.model_id = ?1 AND o.preprocessing = ?2
                WHERE c.image_url IS NOT NULL AND (e.image_url IS NULL OR e.image_url != c.image_url)
                  AND (o.image_url IS NULL OR o.image_url != c.image_url)
                ORDER BY c.product_id LIMIT ?3
                """, [.text(key.modelID), .text(key.preprocessing), .int(Int64(limit))]
            ) { row in
                out.append(CatalogueRow(product: Product(id: row.text(0)!), imageURL: row.text(1), listed: nil))
            }
            return out
        }
    }

    public func unlistedProductIDs() async throws -> [String] {
        try await onWorker { c in
            var out: [String] = []
            try c.query("SELECT product_id FROM catalogue WHERE listed = 0") { out.append($0.text(0)!) }
            return out
        }
    }

    public func resetSync(name: String) async throws {
        try await onWorker { c in try c.query("DELETE FROM sync_state WHERE name = ?", [.text(name)]) }
    }
}
