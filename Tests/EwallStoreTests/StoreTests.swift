import EwallCore
import EwallStore
import EwallTestSupport
import Foundation
import Testing

/// The same behaviour from both stores.
@Suite("Embedding store behaviour (SQLite and PostgreSQL)")
struct StoreBehaviourTests {
    static let keyA = ModelKey(modelID: "resnet50@aaaaaaaaaaaa", preprocessing: "squash224")
    static let keyB = ModelKey(modelID: "resnet50@bbbbbbbbbbbb", preprocessing: "squash224")

    static func vector(_ seed: Int, dim: Int = 2048) -> [Float] {
        var g = UInt64(seed &+ 1) &* 0x9E37_79B9_7F4A_7C15
        return (0..<dim).map { _ in
            g = g &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: g >> 11) % 2001 - 1000) / 997
        }
    }

    static func embedding(_ id: String, _ url: String, key: ModelKey = keyA, seed: Int = 0) -> StoredEmbedding {
        StoredEmbedding(
            productID: id, imageURL: url, key: key, vector: vector(seed),
            imageSHA256: String(repeating: "a", count: 64),
            width: 640, height: 480, bytes: 12345, contentType: "image/jpeg")
    }

    @Test(arguments: StoreKind.allCases)
    func vectorsRoundTripBitForBitWithTheirMetadata(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        let e = Self.embedding("p1", "http://cdn/p1.jpg", seed: 7)
        try await store.write(
            WriteBatch(
                embeddings: [e],
                ledger: [
                    LedgerEntry(
                        productID: "p1", imageURL: "http://cdn/p1.jpg", key: Self.keyA, status: .embedded,
                        httpStatus: 200, attempts: 2)
                ]))
        let rows = try await store.embeddings(key: Self.keyA, after: nil, limit: 10)
        #expect(rows.count == 1)
        let got = try #require(rows.first?.embedding)
        #expect(got == e)
        #expect(got.vector.map(\.bitPattern) == e.vector.map(\.bitPattern))
        let state = try #require(try await store.states(productIDs: ["p1", "nope"], key: Self.keyA)["p1"])
        #expect(state.embeddedURL == "http://cdn/p1.jpg")
        #expect(state.ledger?.status == .embedded)
        #expect(state.ledger?.attempts == 2)
        #expect(state.ledger?.httpStatus == 200)
        #expect(try await store.states(productIDs: ["nope"], key: Self.keyA).isEmpty)
        await store.close()
    }

    @Test(arguments: StoreKind.allCases)
    func productsKeepWhatANewRowDoesNotSay(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        try await store.upsertProducts(
            [Product(id: "p1", title: "구스 다운 패딩", category: "down", inStock: true, brand: "B", price: 129000)],
            source: .manifest)
        try await store.upsertProducts([Product(id: "p1", inStock: false)], source: .manifest)
        let p = try #require(try await store.product(id: "p1"))
        #expect(
            p
                == Product(
                    id: "p1", title: "구스 다운 패딩", category: "down", inStock: false, brand: "B", price: 129000,
                    categorySource: .manifest))
        // Who set the category is kept with it: an import's category is the import's.
        try await store.upsertProducts([Product(id: "p1", category: "coat")], source: .import)
        #expect(try await store.product(id: "p1")?.categorySource == .import)
        try await store.upsertProducts([Product(id: "p1", title: "new title")], source: .classifier)
        #expect(try await store.product(id: "p1")?.categorySource == .import)
        #expect(try await store.product(id: "p2") == nil)
        await store.close()
    }

    @Test(arguments: StoreKind.allCases)
    func aNewerVectorReplacesTheOldOneAndModelKeysNeverMix(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        try await store.write(
            WriteBatch(embeddings: [Self.embedding("p1", "u1", seed: 1), Self.embedding("p2", "u2", seed: 2)]))
        try await store.write(WriteBatch(embeddings: [Self.embedding("p1", "u1-new", seed: 3)]))
        try await store.write(WriteBatch(embeddings: [Self.embedding("p1", "u1", key: Self.keyB, seed: 4)]))
        let a = try await store.embeddings(key: Self.keyA, after: nil, limit: 10)
        #expect(a.map(\.embedding.productID) == ["p1", "p2"])
        #expect(a[0].embedding.imageURL == "u1-new")
        #expect(a[0].embedding.vector == Self.vector(3))
        let b = try await store.embeddings(key: Self.keyB, after: nil, limit: 10)
        #expect(b.map(\.embedding.vector) == [Self.vector(4)])
        let keys = try await store.modelKeys()
        #expect(
            keys == [
                ModelKeyCount(key: Self.keyA, dimension: 2048, count: 2),
                ModelKeyCount(key: Self.keyB, dimension: 2048, count: 1),
            ])
        // Two models in the store: exporting or indexing must name one.
        await #expect(throws: StoreError.self) { try await store.resolveKey(modelID: nil, preprocessing: nil) }
        #expect(try await store.resolveKey(modelID: Self.keyB.modelID, preprocessing: nil).key == Self.keyB)
        do {
            _ = try await store.resolveKey(modelID: nil, preprocessing: nil)
        } catch let e as StoreError {
            #expect(e.code == .modelMismatch)
            #expect(e.message.contains(Self.keyA.modelID) && e.message.contains(Self.keyB.modelID))
        }
        await store.close()
    }

    @Test(arguments: StoreKind.allCases)
    func theLedgerKeepsTheLastOutcome(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        let failed = LedgerEntry(
            productID: "p1", imageURL: "u1", key: Self.keyA, status: .failed, errorClass: "http_5xx",
            httpStatus: 503, attempts: 4, lastError: "HTTP 503 Service Unavailable")
        try await store.write(
            WriteBatch(ledger: [
                failed,
                LedgerEntry(
                    productID: "p2", imageURL: "u2", key: Self.keyA, status: .failed, errorClass: "truncated",
                    attempts: 1),
            ]))
        let got = try #require(try await store.ledgerEntry(productID: "p1", key: Self.keyA))
        #expect(got.status == .failed && got.errorClass == "http_5xx" && got.httpStatus == 503 && got.attempts == 4)
        #expect(got.lastError == "HTTP 503 Service Unavailable")
        #expect(abs(got.lastTried.timeIntervalSince(failed.lastTried)) < 2)
        #expect(try await store.ledgerCounts(key: Self.keyA) == ["failed:http_5xx": 1, "failed:truncated": 1])
        try await store.write(
            WriteBatch(
                embeddings: [Self.embedding("p1", "u1")],
                ledger: [
                    LedgerEntry(
                        productID: "p1", imageURL: "u1", key: Self.keyA, status: .embedded, httpStatus: 200, attempts: 1
                    )
                ]))
        let now = try #require(try await store.ledgerEntry(productID: "p1", key: Self.keyA))
        #expect(now.status == .embedded && now.errorClass == nil && now.lastError == nil)
        #expect(try await store.ledgerCounts(key: Self.keyA) == ["embedded": 1, "failed:truncated": 1])
        #expect(try await store.ledgerEntry(productID: "p1", key: Self.keyB) == nil)
        await store.close()
    }

    @Test(arguments: StoreKind.allCases)
    func paginationVisitsEveryVectorOnceInByteOrder(_ kind: StoreKind) async throws {
        let store = try await kind.open()
        let ids = (0..<250).map { "P-\($0)" } + ["a", "B", "ä", "패딩-1", "Z_9", "z"]
        try await store.write(
            WriteBatch(embeddings: ids.enumerated().map { i, id in Self.embedding(id, "u\(i)", seed: i) }))
        var seen: [String] = []
        var after: String?
        while true {
            let page = try await store.embeddings(key: Self.keyA, after: after, limit: 64)
            if page.isEmpty { break }
            seen += page.map(\.embedding.productID)
            after = page.last?.embedding.productID
        }
        #expect(seen == ids.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) })
        await store.close()
    }

    @Test(arguments: StoreKind.allCases)
    func reopeningKeepsEverything(_ kind: StoreKind) async throws {
        let url = try await kind.freshURL()
        let first = try await StoreLocation(parsing: url).open()
        try await first.write(WriteBatch(embeddings: [Self.embedding("p1", "u1", seed: 9)]))
        await first.close()
        let second = try await StoreLocation(parsing: url).open()
        #expect(
            try await second.embeddings(key: Self.keyA, after: nil, limit: 5).map(\.embedding.vector) == [
                Self.vector(9)
            ])
        await second.close()
    }
}

@Suite("Store URLs")
struct StoreLocationTests {
    @Test func parsesBothKindsAndNeverShowsThePassword() throws {
        #expect(try StoreLocation(parsing: "sqlite:data/ewall.sqlite") == .sqlite(path: "data/ewall.sqlite"))
        #expect(try StoreLocation(parsing: "sqlite:///tmp/x.sqlite") == .sqlite(path: "/tmp/x.sqlite"))
        let pg = try StoreLocation(parsing: "postgres://ewall:s3cret@db.internal:6543/vectors")
        #expect(
            pg == .postgres(host: "db.internal", port: 6543, user: "ewall", password: "s3cret", database: "vectors"))
        #expect(!pg.description.contains("s3cret"))
        #expect(
            try StoreLocation(parsing: "postgresql://u@h/d")
                == .postgres(host: "h", port: 5432, user: "u", password: nil, database: "d"))
    }

    @Test(arguments: ["mysql://u@h/d", "sqlite:", "data/ewall.sqlite", "postgres://:pw@/d"])
    func refusesWhatItDoesNotKnow(_ text: String) {
        #expect(throws: StoreError.self) { try StoreLocation(parsing: text) }
        do { _ = try StoreLocation(parsing: text) } catch let e as StoreError {
            #expect(e.code == .invalidURL)
            #expect(!e.message.contains("pw"))
        } catch { Issue.record("unexpected \(error)") }
    }

    @Test func anUnreachablePostgresIsAClearSystemicError() async throws {
        let port = PostgresServer.freePort()
        do {
            _ = try await StoreLocation(parsing: "postgres://u:pw@127.0.0.1:\(port)/d").open(
                connectTimeout: .seconds(2))
            Issue.record("nothing listens there")
        } catch let e as StoreError {
            #expect(e.code == .unavailable)
            #expect(e.message.contains("127.0.0.1:\(port)"))
            #expect(!e.message.contains("pw"))
        }
    }
}
