import EwallClassifier
import EwallCore
import EwallIndex
import EwallRedis
import EwallStore
import EwallTestSupport
import Foundation
import Testing

@testable import EwallSync

/// A source database on the tests' PostgreSQL (started with wal_level=logical), with a
/// Django-style product table.
struct SourceDB {
    let url: String
    let plain: SourceConnection

    static func make(rows: Int = 20, table: String = "shop_product") async throws -> SourceDB {
        let url = try await PostgresServer.freshDatabase()
        let c = try SourceConnection(url: url, replication: false)
        try c.query(
            """
            CREATE TABLE \(table) (id bigserial PRIMARY KEY, title text, brand text, category text, price numeric(12,2),
              in_stock boolean, image_url text, is_active boolean DEFAULT true)
            """)
        if rows > 0 {
            try c.query(
                """
                INSERT INTO \(table) (title, brand, category, price, in_stock, image_url)
                SELECT 'item ' || g, 'brand', CASE WHEN g % 2 = 0 THEN 'coat' ELSE 'down' END, 100 + g, true,
                       'http://127.0.0.1:9/p' || g || '.jpg'
                FROM generate_series(1, \(rows)) g
                """)
        }
        return SourceDB(url: url, plain: c)
    }

    func run(_ sql: String) throws { try plain.query(sql) }
}

/// Runs a sync in the background until `stop()`.
final class Running: Sendable {
    let sync: CatalogueSync
    let task: Task<Void, any Error>

    init(_ configuration: SyncConfiguration, store: any CatalogueStore) {
        let sync = CatalogueSync(configuration: configuration, store: store)
        self.sync = sync
        task = Task { try await sync.run() }
    }

    func stop() async throws {
        sync.stop()
        try await task.value
    }
}

/// Polls `check` until it holds or `limit` passes.
func eventually(within limit: Duration = .seconds(15), _ check: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if try await check() { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    return try await check()
}

/// A SQLite store fed as `ewall sync` feeds it, for the replica tests: synthetic products
/// `p<i>` (category `c<cluster>`, image `http://x/p<i>.jpg`), their vectors, an index over them.
final class SyncedCatalogue {
    let data: SyntheticVectors
    let key: ModelKey
    let dir: URL
    let store: SQLiteStore
    let folder: IndexFolder
    /// Each ``apply(_:)`` is the next source transaction (positions from 2).
    private let source: SourceTransactions

    init(_ data: SyntheticVectors, key: ModelKey) async throws {
        self.data = data
        self.key = key
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("replica-\(UUID().uuidString)")
        store = try await SQLiteStore.open(path: dir.appendingPathComponent("s.sqlite").path)
        folder = IndexFolder(path: dir.appendingPathComponent("faiss").path)
        source = SourceTransactions(store: store, position: 1)
    }

    /// Product `i`'s row; with `id`, a product of that id in product `i`'s category.
    func row(_ i: Int, id: String? = nil, inStock: Bool = true, listed: Bool? = true) -> CatalogueChange {
        let id = id ?? "p\(i)"
        return .upsert(
            CatalogueRow(
                product: Product(id: id, title: id, category: "c\(data.cluster[i])", inStock: inStock),
                imageURL: "http://x/\(id).jpg", listed: listed))
    }

    /// Applies `changes` as one source transaction.
    func apply(_ changes: [CatalogueChange]) async throws {
        try await source.apply(changes)
    }

    /// Stores products `range`'s own vectors.
    func embed(_ range: Range<Int>) async throws {
        try await store.write(
            WriteBatch(
                embeddings: range.map {
                    StoredEmbedding(
                        productID: "p\($0)", imageURL: "http://x/p\($0).jpg", key: key, vector: data.row($0))
                }))
    }

    /// Stores `vector` for product `id`.
    func embed(_ id: String, vector: [Float]) async throws {
        try await store.write(
            WriteBatch(embeddings: [
                StoredEmbedding(productID: id, imageURL: "http://x/\(id).jpg", key: key, vector: vector)
            ]))
    }

    /// Builds the index (`factory`) over what is stored and opens a search on it.
    func build(_ factory: String, recallQueries: Int, pageSize: Int) async throws -> ProductSearch {
        _ = try await IndexBuilder.build(
            store: store,
            options: IndexBuildOptions(
                folder: folder, index: factory, targetRecall: 0.95, maxMemory: 1 << 30, incremental: false,
                recallQueries: recallQueries, pageSize: pageSize, threads: 1))
        return try await ProductSearch.open(folder: folder, store: store)
    }
}

@Suite("ewall sync: the product table followed by logical decoding", .serialized)
struct SyncTests {
    func store() async throws -> any CatalogueStore {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sync-\(UUID().uuidString).sqlite")
        return try await SQLiteStore.open(path: path.path)
    }

    /// Slots are the whole server's: each test's sync has its own.
    func configuration(
        _ db: SourceDB, map: String? = "listed=is_active", slot: String = #function
    ) throws
        -> SyncConfiguration
    {
        let name = "ewall_" + slot.prefix(while: { $0.isLetter }).lowercased()
        return SyncConfiguration(
            source: db.url, table: try SourceTable(parsing: "shop_product"), map: try ColumnMap(parsing: map),
            slot: name)
    }

    @Test("the snapshot, then updates, deletes, inserts and unlistings in commit order")
    func snapshotThenStream() async throws {
        let db = try await SourceDB.make()
        let store = try await store()
        let running = Running(try configuration(db), store: store)
        #expect(try await eventually { try await store.catalogueRows(productIDs: ["20"]).count == 1 })
        #expect(running.sync.progress.snapshotRows == 20)

        try db.run("UPDATE shop_product SET in_stock = false, category = 'coat' WHERE id = 1")
        try db.run("DELETE FROM shop_product WHERE id = 2")
        try db.run(
            "INSERT INTO shop_product (title, category, in_stock, image_url) VALUES ('new', 'coat', true, 'http://x/n.jpg')"
        )
        try db.run("UPDATE shop_product SET is_active = false WHERE id = 3")
        #expect(
            try await eventually {
                let rows = try await store.catalogueRows(productIDs: ["1", "2", "3", "21"])
                return rows["1"]?.product.inStock == false && rows["2"] == nil && rows["21"]?.product.title == "new"
                    && rows["3"]?.listed == false
            })
        let rows = try await store.catalogueRows(productIDs: ["1", "21"])
        #expect(rows["1"]?.product.category == "coat")
        #expect(rows["21"]?.imageURL == "http://x/n.jpg")
        #expect(try await store.unlistedProductIDs() == ["3"])
        let feed = try await store.catalogueChanges(after: 0, limit: 1000)
        #expect(feed.suffix(4).map(\.kind) == [.attributes, .delete, .attributes, .attributes])
        #expect(feed.suffix(4).map(\.productID) == ["1", "2", "21", "3"])
        try await running.stop()

        // What was applied is confirmed to the slot: a restart resumes after it.
        let state = try #require(try await store.syncState(name: "ewall_snapshotthenstream"))
        let confirmed = try db.plain.query(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'ewall_snapshotthenstream'")
        let slotLSN = try #require(confirmed.rows.first?.first ?? nil).flatMap(LSN.init)
        #expect(
            slotLSN.map { $0.value >= state.position } == true,
            "slot \(String(describing: slotLSN)) vs \(state.position)")
        await store.close()
    }

    @Test(
        "a synced product's vector for a new current image enters the change feed in its write's transaction",
        arguments: StoreKind.allCases)
    func vectorWriteFeedsReplicas(_ kind: StoreKind) async throws {
        let store = try #require(try await kind.open() as? any CatalogueStore)
        let state = SyncState(name: "t", source: "t", slot: "t", position: 2, commitTime: Date(), updatedAt: Date())
        _ = try await store.applyCatalogue(
            [.upsert(CatalogueRow(product: Product(id: "synced"), imageURL: "http://x/s.jpg", listed: true))],
            state: state)
        let before = try await store.lastChangeSeq()
        let key = ModelKey(modelID: "m@1", preprocessing: "squash224")
        try await store.write(
            WriteBatch(embeddings: [
                StoredEmbedding(productID: "synced", imageURL: "http://x/s.jpg", key: key, vector: [1, 0]),
                // A product no sync wrote (a manifest's): no feed entry.
                StoredEmbedding(productID: "manifest-only", imageURL: "http://x/m.jpg", key: key, vector: [0, 1]),
            ]))
        let feed = try await store.catalogueChanges(after: before, limit: 10)
        #expect(feed.map(\.productID) == ["synced"])
        #expect(feed.map(\.kind) == [.vector] && feed.map(\.key) == [key])
        // The same image's vector written again (a --force rerun): nothing new to search.
        try await store.write(
            WriteBatch(embeddings: [
                StoredEmbedding(productID: "synced", imageURL: "http://x/s.jpg", key: key, vector: [1, 0])
            ]))
        // A vector for an image the catalogue no longer has: the current one's will follow.
        try await store.write(
            WriteBatch(embeddings: [
                StoredEmbedding(productID: "synced", imageURL: "http://x/old.jpg", key: key, vector: [0, 1])
            ]))
        #expect(try await store.catalogueChanges(after: before, limit: 10).count == 1)
        // Its current image's vector again, after the other: an entry.
        try await store.write(
            WriteBatch(embeddings: [
                StoredEmbedding(productID: "synced", imageURL: "http://x/s.jpg", key: key, vector: [1, 0])
            ]))
        #expect(try await store.catalogueChanges(after: before, limit: 10).count == 2)
        // Another model's vector of the same image: an entry of its own key, which is no new
        // vector for this key's index (nor drift toward its compaction).
        let other = ModelKey(modelID: "m@2", preprocessing: "squash224")
        let beforeOther = try await store.lastChangeSeq()
        try await store.write(
            WriteBatch(embeddings: [
                StoredEmbedding(productID: "synced", imageURL: "http://x/s.jpg", key: other, vector: [0, 1])
            ]))
        let last = try #require(try await store.catalogueChanges(after: before, limit: 10).last)
        #expect(last.key == other && last.bringsVector(for: other) && !last.bringsVector(for: key))
        let mine = try await store.changeCounts(after: beforeOther, key: key)
        let theirs = try await store.changeCounts(after: beforeOther, key: other)
        #expect(mine.vectors == 0 && theirs.vectors == 1)
        await store.close()
    }

    @Test(
        "a store whose feed predates model keys gains the columns on open; its old vector entries concern every key",
        arguments: StoreKind.allCases)
    func unkeyedFeedEntries(_ kind: StoreKind) async throws {
        // The feed table as stores before the keys had it, with one vector entry.
        let old = """
            CREATE TABLE catalogue_changes (seq \(kind == .sqlite ? "INTEGER PRIMARY KEY AUTOINCREMENT" : "BIGSERIAL PRIMARY KEY"),
              product_id TEXT NOT NULL, kind TEXT NOT NULL, at \(kind == .sqlite ? "REAL" : "DOUBLE PRECISION") NOT NULL,
              source_time \(kind == .sqlite ? "REAL" : "DOUBLE PRECISION"));
            INSERT INTO catalogue_changes (product_id, kind, at) VALUES ('old', 'vector', 0)
            """
        let url = try await kind.freshURL()
        switch kind {
        case .sqlite:
            let path = String(url.dropFirst("sqlite:".count))
            try FileManager.default.createDirectory(
                at: URL(fileURLWithPath: path).deletingLastPathComponent(), withIntermediateDirectories: true)
            let r = try ProcessRunner.run(path: "/usr/bin/sqlite3", [path, old])
            #expect(r.status == 0, "\(r.stderr)")
        case .postgres:
            for statement in old.split(separator: ";") {
                try SourceConnection(url: url, replication: false).query(String(statement))
            }
        }
        let store = try #require(try await StoreLocation(parsing: url).open() as? any CatalogueStore)
        let key = ModelKey(modelID: "m@1", preprocessing: "squash224")
        let entry = try #require(try await store.catalogueChanges(after: 0, limit: 10).first)
        #expect(entry.productID == "old" && entry.key == nil && entry.bringsVector(for: key))
        #expect(try await store.changeCounts(after: 0, key: key).vectors == 1)
        // New entries carry their key in the columns the open added.
        let state = SyncState(name: "t", source: "t", slot: "t", position: 2, commitTime: Date(), updatedAt: Date())
        _ = try await store.applyCatalogue(
            [.upsert(CatalogueRow(product: Product(id: "new"), imageURL: "http://x/n.jpg", listed: true))],
            state: state)
        try await store.write(
            WriteBatch(embeddings: [
                StoredEmbedding(productID: "new", imageURL: "http://x/n.jpg", key: key, vector: [1, 0])
            ]))
        let feed = try await store.catalogueChanges(after: 0, limit: 10)
        #expect(feed.last?.productID == "new" && feed.last?.key == key, "\(feed)")
        await store.close()
    }

    @Test("a restart resumes from the recorded position, with what changed while it was down")
    func resume() async throws {
        let db = try await SourceDB.make(rows: 5)
        let store = try await store()
        var running = Running(try configuration(db), store: store)
        #expect(try await eventually { try await store.catalogueRows(productIDs: ["5"]).count == 1 })
        try await running.stop()
        try db.run("UPDATE shop_product SET price = 1 WHERE id = 4")
        try db.run("DELETE FROM shop_product WHERE id = 5")
        let before = try await store.lastChangeSeq()
        running = Running(try configuration(db), store: store)
        #expect(
            try await eventually {
                let rows = try await store.catalogueRows(productIDs: ["4", "5"])
                return rows["4"]?.product.price == 1 && rows["5"] == nil
            })
        #expect(running.sync.progress.freshSnapshot == nil)
        #expect(running.sync.progress.snapshotRows == 0)
        // Only the two changes: nothing replayed twice.
        #expect(try await store.lastChangeSeq() == before + 2)
        try await running.stop()
        await store.close()
    }

    @Test("a dropped slot is reported and followed by a fresh snapshot, which removes what is gone")
    func droppedSlot() async throws {
        let db = try await SourceDB.make(rows: 6)
        let store = try await store()
        var running = Running(try configuration(db), store: store)
        #expect(try await eventually { try await store.catalogueRows(productIDs: ["6"]).count == 1 })
        try await running.stop()
        // The server's walsender may outlive our closed connection by a moment: the slot is
        // "active" until it exits.
        #expect(
            try await eventually {
                (try? db.run("SELECT pg_drop_replication_slot('ewall_droppedslot')")) != nil
            })
        try db.run("DELETE FROM shop_product WHERE id = 6")
        running = Running(try configuration(db), store: store)
        #expect(try await eventually { running.sync.progress.snapshotRows == 5 })
        #expect(running.sync.progress.freshSnapshot?.contains("gone") == true)
        #expect(try await store.catalogueRows(productIDs: ["6"]).isEmpty)
        try await running.stop()
        await store.close()
    }

    @Test("every arriving row gets its gift flag, stored before the row itself")
    func giftFlags() async throws {
        let db = try await SourceDB.make(rows: 4)
        let store = try await store()
        var c = try configuration(db)
        c.gifts = try GiftDetector(rules: try GiftRules.load(path: Fixtures.path("data/gift_rules.json")))
        let running = Running(c, store: store)
        // The snapshot's rows: flagged, none a gift.
        #expect(try await eventually { try await store.giftFlags(productIDs: ["4"]).count == 1 })
        #expect(try await store.giftFlags(productIDs: ["1", "2", "3", "4"]).values.allSatisfy { !$0.isGift })

        try db.run(
            "INSERT INTO shop_product (title, category, price, in_stock, image_url) VALUES ('사은품 파우치', 'bag', 0, true, 'http://x/g.jpg')"
        )
        try db.run("UPDATE shop_product SET title = '[증정품] 미니 파우치', price = 5000 WHERE id = 1")
        try db.run("UPDATE shop_product SET title = '롱패딩 무료배송' WHERE id = 2")
        // The flag is stored no later than the row: whenever the row is there, so is its flag
        // (the row read first, so a flag written before it is there by the second read).
        var rowWithoutFlag = false
        #expect(
            try await eventually {
                let rows = try await store.catalogueRows(productIDs: ["5"])
                let f = try await store.giftFlags(productIDs: ["1", "5"])
                if rows["5"] != nil && f["5"] == nil { rowWithoutFlag = true }
                return rows["5"] != nil && f["5"]?.isGift == true && f["1"]?.isGift == true
            })
        #expect(!rowWithoutFlag, "row 5 was stored before its gift flag")
        let flags = try await store.giftFlags(productIDs: ["1", "2", "5"])
        #expect(flags["5"]?.decidedBy == "zero_price" && flags["5"]?.giftType == "ZERO_PRICE")
        #expect(flags["1"]?.decidedBy == "keyword")
        #expect(
            try await eventually { try await store.catalogueRows(productIDs: ["2"])["2"]?.product.title == "롱패딩 무료배송" })
        #expect(try await store.giftFlags(productIDs: ["2"])["2"]?.isGift == false)
        try await running.stop()
        await store.close()
    }

    @Test(
        "a delete or an unlisting removes the product's product_embedding:{id} entry in Redis",
        .enabled(if: RedisServer.available, "needs Debian's redis-server (make deps)"))
    func productKeysFollowRemovals() async throws {
        let redis = try RedisServer()
        let db = try await SourceDB.make(rows: 4)
        let store = try await store()
        let key = ModelKey(modelID: "synthetic@sync", preprocessing: "squash224")
        let cache = EmbeddingCache(
            client: RedisClient(location: try RedisLocation(parsing: redis.url())), key: key, dimension: 4)
        let vector = CachedEmbedding(vector: [0.5, 0.5, 0.5, 0.5], imageSHA256: String(repeating: "a", count: 64))
        await cache.writeProducts(current: ["1", "2", "3"].map { ($0, vector) }, replaced: [])
        #expect(await cache.product("2") != nil)
        let sync = CatalogueSync(
            configuration: try configuration(db), store: store,
            onRowsRemoved: { ids in await cache.writeProducts(current: [], replaced: ids) })
        let task = Task { try await sync.run() }
        #expect(try await eventually { try await store.catalogueRows(productIDs: ["4"]).count == 1 })
        try db.run("DELETE FROM shop_product WHERE id = 2")
        try db.run("UPDATE shop_product SET is_active = false WHERE id = 3")
        #expect(
            try await eventually {
                let two = await cache.product("2"), three = await cache.product("3")
                return two == nil && three == nil
            })
        #expect(await cache.product("1") != nil)
        sync.stop()
        try await task.value
        await store.close()
        redis.stop()
    }

    @Test("refusals name what is missing and the fix")
    func refusals() async throws {
        let db = try await SourceDB.make(rows: 1)
        let store = try await store()
        func refusal(_ configuration: SyncConfiguration) async -> SyncError? {
            do {
                try await CatalogueSync(configuration: configuration, store: store).run()
                return nil
            } catch let e as SyncError { return e } catch { return nil }
        }
        var c = try configuration(db)
        c.table = try SourceTable(parsing: "public.no_such_table")
        let noTable = await refusal(c)
        #expect(noTable?.code == .noTable && noTable?.message.contains("no_such_table") == true)

        let noColumn = await refusal(try configuration(db, map: "image_url=main_image"))
        #expect(noColumn?.code == .noColumn, "\(String(describing: noColumn))")
        #expect(noColumn?.message.contains("main_image") == true && noColumn?.message.contains("--map") == true)

        try db.run("CREATE TABLE no_key (id bigint, title text, image_url text)")
        c = try configuration(db, map: "brand=,category=,price=,in_stock=")
        c.table = try SourceTable(parsing: "no_key")
        let identity = await refusal(c)
        #expect(identity?.code == .replicaIdentity && identity?.message.contains("REPLICA IDENTITY FULL") == true)

        let role = "ewall_norepl_\(getpid())"
        try db.run("CREATE ROLE \(role) LOGIN")
        var weak = try configuration(db)
        weak.source = db.url.replacingOccurrences(of: "postgres@", with: "\(role)@")
        let noReplication = await refusal(weak)
        #expect(noReplication?.code == .noReplication, "\(String(describing: noReplication))")
        #expect(noReplication?.message.contains("ALTER ROLE \(role) REPLICATION") == true)
        #expect(noReplication?.kind.exitStatus == 64)

        // A role that may replicate and read the table, but does not own it: PostgreSQL lets
        // only the owner (or a superuser) publish it.
        let replicator = "ewall_nopub_\(getpid())"
        try db.run("CREATE ROLE \(replicator) LOGIN REPLICATION")
        try db.run("GRANT SELECT ON shop_product TO \(replicator)")
        var notOwner = try configuration(db, slot: "notowner")
        notOwner.source = db.url.replacingOccurrences(of: "postgres@", with: "\(replicator)@")
        let noPublication = await refusal(notOwner)
        #expect(noPublication?.code == .publication, "\(String(describing: noPublication))")
        #expect(
            noPublication?.message.contains(#"CREATE PUBLICATION "ewall_notowner" FOR TABLE "public"."shop_product""#)
                == true,
            "\(String(describing: noPublication))")
        #expect(noPublication?.kind.exitStatus == 64)
        await store.close()
    }

    @Test("the column map: defaults, overrides, drops, and refusals")
    func columnMap() throws {
        let m = try ColumnMap(parsing: "product_id=pk,image_url=main_image,brand=,listed=is_active")
        #expect(m.productID == "pk")
        #expect(m.sourceColumns == ["pk", "title", "category", "price", "in_stock", "main_image", "is_active"])
        #expect(throws: SyncError.self) { try ColumnMap(parsing: "colour=c") }
        #expect(throws: SyncError.self) { try ColumnMap(parsing: "product_id=") }
        let row = m.row { ["pk": "7", "in_stock": "f", "price": "12.50", "is_active": "t", "main_image": "u"][$0] }
        #expect(row?.product.id == "7" && row?.product.inStock == false && row?.product.price == 12.5)
        #expect(row?.listed == true && row?.imageURL == "u")
    }

    @Test("pgoutput messages decode; a short message is an error, not a crash")
    func decoding() throws {
        var begin: [UInt8] = [UInt8(ascii: "B")]
        begin += ReplicationMessage.bigEndian(0x1_0000_0010) + ReplicationMessage.bigEndian(0) + [0, 0, 0, 7]
        #expect(
            try PGOutputMessage.decode(begin)
                == .begin(finalLSN: LSN(0x1_0000_0010), commitTime: PGOutputMessage.date(0), xid: 7))
        #expect(throws: SyncError.self) { try PGOutputMessage.decode(Array(begin.prefix(5))) }
        #expect(LSN("16/B374D848")?.value == 0x16_B374_D848)
        #expect(LSN(0x16_B374_D848).description == "16/B374D848")
        #expect(LSN("nonsense") == nil)
    }
}

@Suite("A replica applies the change feed to its loaded index")
struct ReplicaTests {
    static let key = ModelKey(modelID: "synthetic@sync", preprocessing: "squash224")

    /// Applies the feed after `search`'s position, as EwallService's follower does.
    static func follow(_ search: ProductSearch, _ store: any CatalogueStore) async throws -> ProductSearch {
        try await search.following(store, limit: 10_000)?.search ?? search
    }

    @Test("a stock flip, a delete and an unlisting leave the answers; a new product enters them, without a rebuild")
    func followsChanges() async throws {
        let c = try await SyncedCatalogue(
            SyntheticVectors(count: 300, dimension: 16, clusters: 6, seed: 3), key: Self.key)
        let (data, store, folder) = (c.data, c.store, c.folder)
        try await c.apply((0..<300).map { c.row($0) })
        try await c.embed(0..<300)
        var search = try await c.build("Flat", recallQueries: 50, pageSize: 500)
        // 300 rows, then their 300 vectors: the index read the feed to its end.
        #expect(search.appliedChangeSeq == 600)
        let query = SimilarQuery(k: 5, minSimilarity: 0)
        let before = try await search.similar(to: "p0", query: query).results.map(\.productID)
        #expect(before.count == 5)

        // Stock, delete, unlist: the first three neighbours leave; a near copy of p0 arrives.
        try await c.apply([c.row(Int(before[0].dropFirst())!, inStock: false)])
        try await c.apply([.delete(productID: before[1])])
        try await c.apply([c.row(Int(before[2].dropFirst())!, listed: false)])
        var near = data.row(0)
        near[0] += 0.001
        try await c.apply([
            c.row(0, id: "new")
        ])
        try await c.embed("new", vector: near)

        search = try await Self.follow(search, store)
        let after = try await search.similar(to: "p0", query: query)
        let ids = after.results.map(\.productID)
        #expect(ids.first == "new", "\(ids)")
        #expect(!ids.contains(before[0]) && !ids.contains(before[1]) && !ids.contains(before[2]), "\(before) -> \(ids)")
        #expect(ids.count == 5)
        #expect(search.deltaCount == 1)
        // The new product answers by id too, from the delta's vector; out of stock it leaves.
        #expect(try await search.similar(to: "new", query: query).results.first?.productID == "p0")
        try await c.apply([
            c.row(0, id: "new", inStock: false)
        ])
        search = try await Self.follow(search, store)
        #expect(try await !search.similar(to: "p0", query: query).results.map(\.productID).contains("new"))
        // Back in stock: in again; the same entries applied twice change nothing.
        try await c.apply([c.row(Int(before[0].dropFirst())!, inStock: true)])
        search = try await Self.follow(search, store)
        let again = try search.applying([], through: search.appliedChangeSeq)
        #expect(try await again.similar(to: "p0", query: query).results.map(\.productID).contains(before[0]))

        // Compaction: at 0.5% drift (1 new + 1 deleted of 300) a build takes them in; the new
        // index records the feed's end, and a search opened on it needs no delta.
        let compaction = Compaction(folder: folder, share: 0.005, store: store, key: Self.key)
        #expect(try await compaction.drift().map { abs($0 - 2.0 / 300) < 1e-9 } == true)
        await compaction.check()
        let deadline = ContinuousClock.now + .seconds(30)
        while compaction.completed == 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(compaction.completed == 1)
        let rebuilt = try await ProductSearch.open(folder: folder, store: store)
        #expect(rebuilt.appliedChangeSeq == (try await store.lastChangeSeq()))
        #expect(rebuilt.deltaCount == 0 && rebuilt.count == 300)
        // ("new" is out of stock by now: the stock rule is off for this look.)
        let loose = SimilarQuery(k: 5, minSimilarity: 0, inStockOnly: false)
        #expect(try await rebuilt.similar(to: "p0", query: loose).results.first?.productID == "new")
        #expect(try await compaction.drift() == 0)
        await store.close()
    }

    @Test("a second model's vectors neither enter a replica's delta nor count toward its compaction")
    func otherModelsVectors() async throws {
        let c = try await SyncedCatalogue(
            SyntheticVectors(count: 200, dimension: 16, clusters: 4, seed: 5), key: Self.key)
        try await c.apply((0..<200).map { c.row($0) })
        try await c.embed(0..<200)
        var search = try await c.build("Flat", recallQueries: 20, pageSize: 500)
        let built = search.appliedChangeSeq
        // Another model embeds the whole catalogue for the first time: 200 entries of its key.
        let other = ModelKey(modelID: "other@sync", preprocessing: "squash224")
        try await c.store.write(
            WriteBatch(
                embeddings: (0..<200).map {
                    StoredEmbedding(
                        productID: "p\($0)", imageURL: "http://x/p\($0).jpg", key: other,
                        vector: c.data.row(($0 + 1) % 200))
                }))
        #expect(try await c.store.lastChangeSeq() == built + 200)
        search = try await Self.follow(search, c.store)
        #expect(search.appliedChangeSeq == built + 200 && search.deltaCount == 0)
        let compaction = Compaction(folder: c.folder, share: 0.005, store: c.store, key: Self.key)
        #expect(try await compaction.drift() == 0)
        // This key's own new vector still enters both.
        try await c.apply([c.row(0, id: "new")])
        try await c.embed("new", vector: c.data.row(0))
        search = try await Self.follow(search, c.store)
        #expect(search.deltaCount == 1)
        #expect(try await compaction.drift() == 1.0 / 200)
        await c.store.close()
    }

    @Test("a gift flag that arrives with a row takes the product out of the answers, indexed or new")
    func followsGiftFlags() async throws {
        let c = try await SyncedCatalogue(
            SyntheticVectors(count: 120, dimension: 16, clusters: 4, seed: 5), key: Self.key)
        let (data, store) = (c.data, c.store)
        func flag(_ id: String, _ isGift: Bool) -> GiftFlag {
            GiftFlag(
                productID: id, isGift: isGift, giftType: isGift ? "KEYWORD" : nil,
                decidedBy: isGift ? "keyword" : "none",
                reason: "", explanation: "", resembles: nil, rulesVersion: "t", rulesSHA256: "t", flaggedAt: Date())
        }
        try await c.apply((0..<120).map { c.row($0) })
        try await c.embed(0..<120)
        var search = try await c.build("Flat", recallQueries: 20, pageSize: 500)
        let query = SimilarQuery(k: 5, minSimilarity: 0)
        let before = try await search.similar(to: "p0", query: query).results.map(\.productID)
        let gift = before[0]

        // The sync stores the flag, then the row: the replica leaves the product out.
        try await store.writeGiftFlags([flag(gift, true)])
        try await c.apply([c.row(Int(gift.dropFirst())!)])
        search = try await Self.follow(search, store)
        #expect(try await !search.similar(to: "p0", query: query).results.map(\.productID).contains(gift))
        var withGifts = query
        withGifts.includeGifts = true
        #expect(try await search.similar(to: "p0", query: withGifts).results.map(\.productID).contains(gift))

        // A new product (a delta vector) that is a gift stays out too.
        var near = data.row(0)
        near[0] += 0.001
        try await store.writeGiftFlags([flag("new", true)])
        try await c.apply([c.row(0, id: "new")])
        try await c.embed("new", vector: near)
        search = try await Self.follow(search, store)
        #expect(search.deltaCount == 1)
        #expect(try await !search.similar(to: "p0", query: query).results.map(\.productID).contains("new"))
        #expect(try await search.similar(to: "p0", query: withGifts).results.first?.productID == "new")

        // Unflagged (a title that no longer reads as a gift): both come back.
        try await store.writeGiftFlags([flag(gift, false), flag("new", false)])
        try await c.apply([c.row(Int(gift.dropFirst())!), c.row(0, id: "new")])
        search = try await Self.follow(search, store)
        let after = try await search.similar(to: "p0", query: query).results.map(\.productID)
        #expect(after.first == "new" && after.contains(gift), "\(after)")
        await store.close()
    }

    @Test(
        "recall@10 against exact search over the live set stays >= 0.95 after 30% deletes and 30% inserts, and after compaction"
    )
    func recallAfterChurn() async throws {
        let base = 3000, added = 900, deleted = 900
        let c = try await SyncedCatalogue(
            SyntheticVectors(count: base + added, dimension: 32, clusters: 30, seed: 11), key: Self.key)
        let (data, store, folder) = (c.data, c.store, c.folder)
        try await c.apply((0..<base).map { c.row($0) })
        try await c.embed(0..<base)
        var search = try await c.build("IVF40,Flat", recallQueries: 200, pageSize: 1000)

        // 30% of the base deleted (every third-and-a-bit product), 30% new products arrive.
        var rng = TestRNG(seed: 4)
        let gone = Set((0..<base).shuffled(using: &rng).prefix(deleted))
        try await c.apply(gone.sorted().map { .delete(productID: "p\($0)") })
        try await c.apply((base..<base + added).map { c.row($0) })
        try await c.embed(base..<base + added)
        search = try await Self.follow(search, store)
        #expect(search.deltaCount == added)

        let live = (0..<base + added).filter { !gone.contains($0) }
        let query = SimilarQuery(k: 10, minSimilarity: 0, sameCategory: false)
        func recall(_ s: ProductSearch) async throws -> Double {
            var hits = 0, total = 0
            for q in live.shuffled(using: &rng).prefix(150) {
                let v = data.row(q)
                let exact = live.filter { $0 != q }.map { i -> (Float, Int) in
                    let r = data.row(i)
                    var d: Float = 0
                    for j in 0..<v.count { d += (v[j] - r[j]) * (v[j] - r[j]) }
                    return (d, i)
                }.sorted { $0.0 < $1.0 }.prefix(10).map { "p\($0.1)" }
                let got = Set(try await s.similar(to: "p\(q)", query: query).results.map(\.productID))
                hits += exact.filter { got.contains($0) }.count
                total += exact.count
            }
            return Double(hits) / Double(total)
        }
        let churned = try await recall(search)
        #expect(churned >= 0.95, "recall after churn \(churned)")

        let compaction = Compaction(folder: folder, share: 0.2, store: store, key: Self.key)
        await compaction.check()
        let deadline = ContinuousClock.now + .seconds(60)
        while compaction.completed == 0 && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(compaction.completed == 1)
        let compacted = try await ProductSearch.open(folder: folder, store: store)
        #expect(compacted.deltaCount == 0 && compacted.count == live.count)
        let after = try await recall(compacted)
        #expect(after >= 0.95, "recall after compaction \(after)")
        await store.close()
    }
}

@Suite("ewall sync when the source goes away", .serialized)
struct SyncOutageTests {
    @Test("a source without logical decoding (wal_level=replica) is refused, naming the setting and the fix")
    func walLevelRefused() async throws {
        let server = try PostgresServer.Separate(settings: ["wal_level": "replica"])
        defer { server.shutdown() }
        let url = try server.freshDatabase()
        try SourceConnection(url: url, replication: false).query(
            "CREATE TABLE shop_product (id bigserial PRIMARY KEY, title text, brand text, category text, price numeric(12,2), in_stock boolean, image_url text)"
        )
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sync-\(UUID().uuidString).sqlite")
        let store = try await SQLiteStore.open(path: path.path)
        defer { Task { await store.close() } }
        let sync = CatalogueSync(
            configuration: SyncConfiguration(
                source: url, table: try SourceTable(parsing: "shop_product"), slot: "ewall_wallevel"),
            store: store)
        do {
            try await sync.run()
            Issue.record("a source without logical decoding was followed")
        } catch let e as SyncError {
            #expect(e.code == .walLevel, "\(e)")
            #expect(e.message.contains("wal_level = replica"), "\(e.message)")
            #expect(e.message.contains("ALTER SYSTEM SET wal_level = logical"), "\(e.message)")
            #expect(e.kind.exitStatus == 64)
        }
    }

    @Test("our store (PostgreSQL) restarted mid-stream: no change committed while it was down is lost")
    func storeRestart() async throws {
        let storeServer = try PostgresServer.Separate()
        defer { storeServer.shutdown() }
        let db = try await SourceDB.make(rows: 4)
        let opened = try await StoreLocation(parsing: try storeServer.freshDatabase()).open()
        let store = try #require(opened as? any CatalogueStore)
        let running = Running(
            SyncConfiguration(
                source: db.url, table: try SourceTable(parsing: "shop_product"), slot: "ewall_storerestart"),
            store: store)
        #expect(try await eventually { try await store.catalogueRows(productIDs: ["4"]).count == 1 })
        try db.run("UPDATE shop_product SET price = 7 WHERE id = 1")
        #expect(try await eventually { try await store.catalogueRows(productIDs: ["1"])["1"]?.product.price == 7 })

        try storeServer.halt()
        // Changes committed at the source while our store is down.
        try db.run("UPDATE shop_product SET price = 8 WHERE id = 2")
        try db.run("DELETE FROM shop_product WHERE id = 3")
        try db.run(
            "INSERT INTO shop_product (title, category, in_stock, image_url) VALUES ('while down', 'coat', true, 'http://x/5.jpg')"
        )
        try await Task.sleep(for: .seconds(1))
        try storeServer.resume()
        #expect(
            try await eventually(within: .seconds(45)) {
                let rows = try? await store.catalogueRows(productIDs: ["1", "2", "3", "5"])
                return rows?["1"]?.product.price == 7 && rows?["2"]?.product.price == 8 && rows?["3"] == nil
                    && rows?["5"]?.product.title == "while down"
            })
        // (The store's connection pool waits for its server, or the sync reconnects: either way
        // the changes committed while it was down arrive, in order.)
        try await running.stop()
        await store.close()
    }

    @Test("the source restarted mid-stream: the sync reconnects and resumes from its position")
    func sourceRestart() async throws {
        let db = try await SourceDB.make(rows: 4)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("sync-\(UUID().uuidString).sqlite")
        let store = try await SQLiteStore.open(path: path.path)
        let running = Running(
            SyncConfiguration(source: db.url, table: try SourceTable(parsing: "shop_product"), slot: "ewall_restart"),
            store: store)
        #expect(try await eventually { try await store.catalogueRows(productIDs: ["4"]).count == 1 })
        try db.run("UPDATE shop_product SET price = 7 WHERE id = 1")
        #expect(try await eventually { try await store.catalogueRows(productIDs: ["1"])["1"]?.product.price == 7 })
        try PostgresServer.halt()
        try await Task.sleep(for: .seconds(1))
        try PostgresServer.resume()
        let after = try SourceConnection(url: db.url, replication: false)
        try after.query("UPDATE shop_product SET price = 8 WHERE id = 2")
        try after.query("DELETE FROM shop_product WHERE id = 3")
        #expect(
            try await eventually(within: .seconds(30)) {
                let rows = try await store.catalogueRows(productIDs: ["2", "3"])
                return rows["2"]?.product.price == 8 && rows["3"] == nil
            })
        #expect(running.sync.progress.reconnects >= 1)
        #expect(running.sync.progress.freshSnapshot?.contains("no position") == true) // the first run's only
        try await running.stop()
        await store.close()
    }
}
