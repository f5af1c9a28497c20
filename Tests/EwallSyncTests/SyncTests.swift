import EwallCore
import EwallIndex
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
        try db.run("SELECT pg_drop_replication_slot('ewall_droppedslot')")
        try db.run("DELETE FROM shop_product WHERE id = 6")
        running = Running(try configuration(db), store: store)
        #expect(try await eventually { running.sync.progress.snapshotRows == 5 })
        #expect(running.sync.progress.freshSnapshot?.contains("gone") == true)
        #expect(try await store.catalogueRows(productIDs: ["6"]).isEmpty)
        try await running.stop()
        await store.close()
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
        let changes = try await store.catalogueChanges(after: search.appliedChangeSeq, limit: 10_000)
        guard let last = changes.last else { return search }
        let ids = Array(Set(changes.map(\.productID)))
        let rows = try await store.catalogueRows(productIDs: ids)
        let withVector = Set(changes.filter { $0.kind == .vector }.map(\.productID))
        let vectors = try await store.vectors(productIDs: Array(withVector), key: key)
        return try search.applying(
            ids.map {
                CatalogueUpdate(productID: $0, row: rows[$0], vector: withVector.contains($0) ? vectors[$0] : nil)
            },
            through: last.seq)
    }

    @Test("a stock flip, a delete and an unlisting leave the answers; a new product enters them, without a rebuild")
    func followsChanges() async throws {
        let data = SyntheticVectors(count: 300, dimension: 16, clusters: 6, seed: 3)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("replica-\(UUID().uuidString)")
        let store = try await SQLiteStore.open(path: dir.appendingPathComponent("s.sqlite").path)
        func row(_ i: Int, inStock: Bool = true, listed: Bool? = true) -> CatalogueChange {
            .upsert(
                CatalogueRow(
                    product: Product(id: "p\(i)", title: "t\(i)", category: "c\(data.cluster[i])", inStock: inStock),
                    imageURL: "http://x/\(i).jpg", listed: listed))
        }
        var position: UInt64 = 1
        func apply(_ changes: [CatalogueChange]) async throws {
            position += 1
            _ = try await store.applyCatalogue(
                changes,
                state: SyncState(
                    name: "t", source: "t", slot: "t", position: position, commitTime: Date(), updatedAt: Date()))
        }
        try await apply((0..<300).map { row($0) })
        try await store.write(
            WriteBatch(
                embeddings: (0..<300).map {
                    StoredEmbedding(
                        productID: "p\($0)", imageURL: "http://x/\($0).jpg", key: Self.key, vector: data.row($0))
                }))
        let folder = IndexFolder(path: dir.appendingPathComponent("faiss").path)
        _ = try await IndexBuilder.build(
            store: store,
            options: IndexBuildOptions(
                folder: folder, index: "Flat", targetRecall: 0.95, maxMemory: 1 << 30, incremental: false,
                recallQueries: 50, pageSize: 500, threads: 1))
        var search = try await ProductSearch.open(folder: folder, store: store)
        #expect(search.appliedChangeSeq == 300)
        let query = SimilarQuery(k: 5, minSimilarity: 0)
        let before = try await search.similar(to: "p0", query: query).results.map(\.productID)
        #expect(before.count == 5)

        // Stock, delete, unlist: the first three neighbours leave; a near copy of p0 arrives.
        try await apply([row(Int(before[0].dropFirst())!, inStock: false)])
        try await apply([.delete(productID: before[1])])
        try await apply([row(Int(before[2].dropFirst())!, listed: false)])
        var near = data.row(0)
        near[0] += 0.001
        try await apply([
            .upsert(
                CatalogueRow(
                    product: Product(id: "new", title: "new", category: "c\(data.cluster[0])", inStock: true),
                    imageURL: "http://x/new.jpg", listed: true))
        ])
        try await store.write(
            WriteBatch(embeddings: [
                StoredEmbedding(productID: "new", imageURL: "http://x/new.jpg", key: Self.key, vector: near)
            ]))
        try await store.recordVectorChanges(["new"])

        search = try await Self.follow(search, store)
        let after = try await search.similar(to: "p0", query: query)
        let ids = after.results.map(\.productID)
        #expect(ids.first == "new", "\(ids)")
        #expect(!ids.contains(before[0]) && !ids.contains(before[1]) && !ids.contains(before[2]), "\(before) -> \(ids)")
        #expect(ids.count == 5)
        #expect(search.deltaCount == 1)
        // The new product answers by id too, from the delta's vector; out of stock it leaves.
        #expect(try await search.similar(to: "new", query: query).results.first?.productID == "p0")
        try await apply([
            .upsert(
                CatalogueRow(
                    product: Product(id: "new", title: "new", category: "c\(data.cluster[0])", inStock: false),
                    imageURL: "http://x/new.jpg", listed: true))
        ])
        search = try await Self.follow(search, store)
        #expect(try await !search.similar(to: "p0", query: query).results.map(\.productID).contains("new"))
        // Back in stock: in again; the same entries applied twice change nothing.
        try await apply([row(Int(before[0].dropFirst())!, inStock: true)])
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
}

@Suite("ewall sync when the source goes away", .serialized)
struct SyncOutageTests {
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
