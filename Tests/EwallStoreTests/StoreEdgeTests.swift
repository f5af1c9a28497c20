import EwallCore
import EwallStore
import EwallTestSupport
import Foundation
import Testing

/// Values at the edge of what a store can keep, and failures that must say what broke.
@Suite("Store edges: exact ids, refusals in the database's own words")
struct StoreEdgeTests {
    static let key = ModelKey(modelID: "resnet50@edge", preprocessing: "squash224")
    /// Korean, emoji, mixed case (two ids that differ only in case), spaces, '/', and an id of
    /// exactly 256 bytes.
    static let ids = [
        "구스다운-롱패딩_01", "👟🧥-2", "MixedCase-ID", "mixedcase-id", "with space", "a/b%2Fc",
        String(repeating: "가", count: 85) + "z",
    ]

    @Test("every stored id comes back byte for byte", arguments: StoreKind.allCases)
    func idsComeBackExactly(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        defer { Task { await store.close() } }
        #expect(Self.ids.last!.utf8.count == 256)
        try await store.upsertProducts(Self.ids.map { Product(id: $0, title: "제목 \($0)") }, source: .manifest)
        let embeddings = Self.ids.enumerated().map { i, id in
            StoredEmbedding(productID: id, imageURL: "http://cdn/\(i).jpg", key: Self.key, vector: [Float(i), 1])
        }
        try await store.write(
            WriteBatch(
                embeddings: embeddings,
                ledger: embeddings.map {
                    LedgerEntry(
                        productID: $0.productID, imageURL: $0.imageURL, key: Self.key, status: .embedded, attempts: 1)
                }))
        let products = try await store.products(after: nil, limit: 100)
        #expect(Set(products.map { Array($0.id.utf8) }) == Set(Self.ids.map { Array($0.utf8) }))
        let rows = try await store.embeddings(key: Self.key, after: nil, limit: 100)
        #expect(rows.count == Self.ids.count)
        for row in rows {
            let i = try #require(Self.ids.firstIndex(of: row.embedding.productID))
            #expect(row.embedding.vector == [Float(i), 1], "\(row.embedding.productID) got another product's vector")
        }
        for id in Self.ids {
            #expect(try await store.product(id: id)?.title == "제목 \(id)")
        }
    }

    @Test("a NUL in an id, URL or title is refused by the store, never truncated", arguments: StoreKind.allCases)
    func nulIsRefused(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        defer { Task { await store.close() } }
        try await store.upsertProducts([Product(id: "a")], source: .manifest)
        for products in [[Product(id: "a\u{0}x")], [Product(id: "b", title: "t\u{0}")]] {
            let e = await #expect(throws: StoreError.self) {
                try await store.upsertProducts(products, source: .manifest)
            }
            #expect(e?.code == .invalidValue)
            #expect(e?.message.contains("NUL") == true)
        }
        let bad = StoredEmbedding(productID: "a\u{0}y", imageURL: "http://cdn/y.jpg", key: Self.key, vector: [1])
        let e = await #expect(throws: StoreError.self) { try await store.write(WriteBatch(embeddings: [bad])) }
        #expect(e?.code == .invalidValue)
        #expect(try await store.products(after: nil, limit: 10).map(\.id) == ["a"])
        #expect(try await store.modelKeys().isEmpty)
    }

    @Test("PostgreSQL's own refusal is reported at once, in its words, without the password")
    func postgresRefusals() async throws {
        let port = try PostgresServer.port()
        for (url, words) in [
            ("postgres://postgres:s3cret-pw@127.0.0.1:\(port)/nodb", #"database "nodb" does not exist"#),
            ("postgres://nobody:s3cret-pw@127.0.0.1:\(port)/postgres", #"role "nobody" does not exist"#),
            ("postgres://postgres:s3cret-pw@127.0.0.1:\(PostgresServer.freePort())/postgres", "onnection refused"),
        ] {
            let start = ContinuousClock.now
            let e = await #expect(throws: StoreError.self) { try await StoreLocation(parsing: url).open() }
            let took = ContinuousClock.now - start
            #expect(took < .seconds(3), "\(url): reported after \(took)")
            #expect(e?.code == .unavailable)
            #expect(e?.message.contains(words) == true, "\(e?.message ?? "nil")")
            #expect(e?.message.contains("s3cret-pw") == false)
            #expect(e?.debugDescription.contains("s3cret-pw") == false)
        }
    }

    /// A 256 KiB tmpfs of our own (root can mount; elsewhere the test is disabled, visibly).
    static let smallDisk: String? = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ewall-full-\(getpid())").path
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let (status, _) = PostgresServer.run(
            "/bin/mount", ["-t", "tmpfs", "-o", "size=256k", "tmpfs", dir], asPostgres: false)
        guard status == 0 else { return nil }
        atexit {
            _ = PostgresServer.run(
                "/bin/umount",
                ["-l", FileManager.default.temporaryDirectory.appendingPathComponent("ewall-full-\(getpid())").path],
                asPostgres: false)
        }
        return dir
    }()

    @Test(
        "a full disk is reported as store_full with SQLite's own words, and what was committed stays",
        .enabled(if: smallDisk != nil, "needs to mount a small tmpfs (root)"))
    func diskFull() async throws {
        let path = try #require(Self.smallDisk) + "/e-\(UUID().uuidString).sqlite"
        let store = try await StoreLocation(parsing: "sqlite:\(path)").open()
        defer { Task { await store.close() } }
        var written = 0
        var failure: StoreError?
        for batch in 0..<200 {
            let e = (0..<8).map { i in
                StoredEmbedding(
                    productID: "p\(batch)-\(i)", imageURL: "http://cdn/\(batch)/\(i).jpg", key: Self.key,
                    vector: [Float](repeating: Float(batch), count: 2048))
            }
            do {
                try await store.write(WriteBatch(embeddings: e))
                written += e.count
            } catch let error as StoreError {
                failure = error
                break
            }
        }
        let e = try #require(failure, "256 KiB never filled up")
        #expect(e.code == .storageFull)
        #expect(e.message.contains("database or disk is full"), "\(e.message)")
        #expect(written > 0)
        #expect(try await store.modelKeys().first?.count == written)
    }
}
