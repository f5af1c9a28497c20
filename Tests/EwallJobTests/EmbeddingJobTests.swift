import EwallML
import EwallTestSupport
import Foundation
import Testing

/// The batch job end to end: a real loopback HTTP server that misbehaves in every way the
/// issue lists, the real model, a real store. Serialized: each test runs the model.
@Suite("ewall-embed job", .serialized)
struct EmbeddingJobTests {
    /// Loaded once: loading and warming up ResNet50 takes seconds.
    nonisolated(unsafe) static var shared: [PreprocessingMode: ImageEmbedder] = [:]

    static func embedder(_ mode: PreprocessingMode = .squash224) throws -> ImageEmbedder {
        if let e = shared[mode] { return e }
        let e = try ImageEmbedder(
            configuration: EmbedderConfiguration(
                model: ModelOptions(path: Fixtures.model, threads: 2, batchSize: 4), preprocessing: mode))
        shared[mode] = e
        return e
    }

    /// The CDN: the photos and every misbehaviour; `.slow` answers after 8 s. Flaky, busy and slow
    /// serve photos 0, 1 and 2, so the job's content dedup keeps them apart.
    static func server(photos: [String]) throws -> TestHTTPServer {
        try .misbehaving(images: photos.map { (try? Fixtures.bytes($0)) ?? [] }, slowDelay: .seconds(8))
    }

    static func manifest(_ server: TestHTTPServer, override: [String: String] = [:]) throws -> String {
        var lines = ["product_id,image_url,title,category,in_stock"]
        for i in 0..<6 {
            lines.append("good\(i),\(override["good\(i)"] ?? server.url(image: i)),Product \(i),coat,true")
        }
        for (id, misbehaviour) in [
            ("flaky", .flaky), ("busy", .busy), ("down", .down), ("slow", .slow), ("huge", .hugeChunked),
            ("loop", .redirectLoop), ("fake", .fake), ("truncated", .truncated), ("missing", .missing),
        ] as [(String, Misbehaviour)] {
            lines.append("\(id),\(server.url(misbehaviour)),,,")
        }
        lines += [
            ",\(server.url(image: 0)),,,", "bad-scheme,ftp://x/y.jpg,,,",
            "good0,\(server.url(image: 5)),,,", "good1,\(override["good1"] ?? server.url(image: 1)),,,",
        ]
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("m-\(UUID().uuidString).csv").path
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }

    static func fetchConfig() -> FetchConfiguration {
        // 2 s per attempt: well above a loaded 2-core machine's answer time, well below `.slow`'s 8 s.
        FetchConfiguration(
            perHostLimit: 4, connectTimeout: .seconds(5), requestTimeout: .seconds(2), maxAttempts: 2,
            backoffBase: .milliseconds(20), backoffMax: .milliseconds(50), maxBytes: 2 << 20)
    }

    static func run(
        _ manifest: String, store: any EmbeddingStore, embedder: ImageEmbedder, retryFailed: Bool = false,
        force: Bool = false
    ) async throws -> (JobSummary, [JobFailure]) {
        let job = EmbeddingJob(
            configuration: EmbeddingJobConfiguration(
                manifestPath: manifest, fetch: fetchConfig(), concurrency: 8, retryFailed: retryFailed, force: force),
            embedder: embedder, store: store)
        let failures = Locked<[JobFailure]>([])
        let summary = try await job.run(progressInterval: 0.2, onFailure: { f in failures.withLock { $0.append(f) } })
        return (summary, failures.withLock { $0 })
    }

    static let expectedFailures = [
        "http_5xx": 1, "timeout": 1, "too_large": 1, "redirect_loop": 1, "not_an_image": 1,
        "truncated": 1, "http_4xx": 1,
    ]

    func everyFailureIsAccountedForAndNothingElseIsLost(kind: StoreKind) async throws {
        let photos = Array(try Fixtures.photos().prefix(6))
        let server = try Self.server(photos: photos)
        defer { server.shutdown() }
        let embedder = try Self.embedder()
        let store = try await kind.open()
        let manifest = try Self.manifest(server)

        let (first, failures) = try await Self.run(manifest, store: store, embedder: embedder)
        #expect(first.counts.embedded == 8) // six photos, the 500-then-200 and the 429-then-200
        #expect(first.counts.failed == 7)
        #expect(first.counts.badRows == 3)
        #expect(first.counts.duplicates == 1)
        #expect(first.failuresByClass == Self.expectedFailures.merging(["bad_row": 3]) { $1 })
        #expect(!first.interrupted)
        #expect(
            Set(failures.compactMap(\.productID)) == [
                "down", "slow", "huge", "loop", "fake", "truncated", "missing",
                "bad-scheme", "good0",
            ])
        let badLines = failures.filter { $0.errorClass == "bad_row" }.compactMap(\.line).sorted()
        #expect(badLines == [17, 18, 19])
        let down = try #require(failures.first { $0.productID == "down" })
        #expect(down.httpStatus == 503 && down.attempts == 2 && down.stage == "fetch")
        let fake = try #require(failures.first { $0.productID == "fake" })
        #expect(fake.stage == "decode" && fake.httpStatus == 200)

        // The store: vectors equal to embedding the same files directly; a ledger row per item.
        let key = ModelKey(modelID: embedder.modelID, preprocessing: "squash224")
        let rows = try await store.embeddings(key: key, after: nil, limit: 100)
        #expect(
            rows.map(\.embedding.productID).sorted() == [
                "busy", "flaky", "good0", "good1", "good2", "good3", "good4", "good5",
            ])
        let direct = await embedder.embed(files: photos)
        for row in rows where row.embedding.productID.hasPrefix("good") {
            let i = Int(row.embedding.productID.dropFirst(4))!
            let expected = try direct[i].result.get().vector
            #expect(VectorMath.cosine(row.embedding.vector, expected) > 0.99999)
            #expect(row.embedding.imageSHA256 == ImageFetcher.sha256(try Fixtures.bytes(photos[i])))
            #expect(row.embedding.contentType == "image/jpeg")
            #expect(
                row.product?.title == "Product \(i)" && row.product?.category == "coat" && row.product?.inStock == true)
        }
        let counts = try await store.ledgerCounts(key: key)
        #expect(counts["embedded"] == 8)
        #expect(counts["failed:http_4xx"] == 1 && counts["failed:truncated"] == 1 && counts["failed:timeout"] == 1)
        let busy = try #require(try await store.ledgerEntry(productID: "busy", key: key))
        #expect(busy.status == .embedded && busy.attempts == 2)

        // A rerun touches nothing: no request reaches the server.
        let hits = server.totalHits
        let (second, _) = try await Self.run(manifest, store: store, embedder: embedder)
        #expect(second.counts.embedded == 0 && second.counts.failed == 0)
        #expect(second.counts.skipped == 8 && second.counts.skippedFailed == 7)
        #expect(second.skippedFailedByClass == Self.expectedFailures)
        #expect(server.totalHits == hits)

        // --retry-failed: only the transient classes (timeout, 5xx) are tried again.
        let (third, _) = try await Self.run(manifest, store: store, embedder: embedder, retryFailed: true)
        #expect(third.counts.failed == 2 && third.counts.skippedFailed == 5)
        #expect(server.hits(.down) == 4 && server.hits(.slow) == 4)
        #expect(server.hits(.missing) == 1 && server.hits(.truncated) == 1 && server.hits(.hugeChunked) == 1)
        await store.close()
    }

    @Test func everyFailureIsAccountedForOnSQLite() async throws {
        try await everyFailureIsAccountedForAndNothingElseIsLost(kind: .sqlite)
    }

    @Test func everyFailureIsAccountedForOnPostgres() async throws {
        try await everyFailureIsAccountedForAndNothingElseIsLost(kind: .postgres)
    }

    @Test func aChangedURLOrPreprocessingIsEmbeddedAgainAndForceRedoesAll() async throws {
        let photos = Array(try Fixtures.photos().prefix(6))
        let server = try Self.server(photos: photos)
        defer { server.shutdown() }
        let store = try await StoreKind.sqlite.open()
        let embedder = try Self.embedder()
        _ = try await Self.run(try Self.manifest(server), store: store, embedder: embedder)

        // good1 now points at another image: only it is fetched and embedded again.
        let moved = try Self.manifest(server, override: ["good1": server.url(image: 4) + "?v=2"])
        let (changed, _) = try await Self.run(moved, store: store, embedder: embedder)
        #expect(changed.counts.embedded == 1 && changed.counts.skipped == 7)
        let key = ModelKey(modelID: embedder.modelID, preprocessing: "squash224")
        let good1 = try await store.embeddings(key: key, after: "good0", limit: 1)
        #expect(good1.first?.embedding.imageURL == server.url(image: 4) + "?v=2")

        // Another preprocessing is another key: everything is embedded again, beside the first.
        let crop = try Self.embedder(.resize256Crop224)
        let (other, _) = try await Self.run(moved, store: store, embedder: crop)
        #expect(other.counts.embedded == 8 && other.counts.skipped == 0)
        #expect(try await store.modelKeys().map(\.count) == [8, 8])

        let (forced, _) = try await Self.run(moved, store: store, embedder: embedder, force: true)
        #expect(forced.counts.embedded == 8 && forced.counts.failed == 7 && forced.counts.skipped == 0)
        await store.close()
    }

    @Test func stoppingWritesWhatIsDoneAndARerunFinishesTheRest() async throws {
        let photos = Array(try Fixtures.photos().prefix(8))
        let images = try photos.map { try Fixtures.bytes($0) }
        let server = try TestHTTPServer { req in
            let i = Int(req.path.dropFirst(5).prefix(while: \.isNumber)) ?? 0
            return .init(body: images[i % images.count], delay: .milliseconds(30))
        }
        defer { server.shutdown() }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("m-\(UUID().uuidString).csv").path
        try (["product_id,image_url"] + (0..<120).map { "p\($0),\(server.url("/img/\($0).jpg"))" })
            .joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
        let store = try await StoreKind.sqlite.open()
        let embedder = try Self.embedder()
        let key = ModelKey(modelID: embedder.modelID, preprocessing: "squash224")
        let job = EmbeddingJob(
            configuration: EmbeddingJobConfiguration(manifestPath: path, fetch: Self.fetchConfig(), concurrency: 4),
            embedder: embedder, store: store)
        let run = Task { try await job.run(progressInterval: 0.1) }
        while try await store.ledgerCounts(key: key)["embedded", default: 0] == 0 {
            try await Task.sleep(for: .milliseconds(20))
        }
        job.stop()
        let stopped = try await run.value
        #expect(stopped.interrupted)
        let stored = try await store.ledgerCounts(key: key)["embedded", default: 0]
        #expect(stopped.counts.embedded == stored)
        #expect(stored > 0 && stored < 120)
        #expect(stopped.counts.failed == 0) // requests cut short are not failures

        let (rest, failures) = try await Self.run(path, store: store, embedder: embedder)
        #expect(failures.isEmpty)
        #expect(rest.counts.skipped == stored && rest.counts.embedded == 120 - stored)
        #expect(try await store.modelKeys().first?.count == 120)
        await store.close()
    }
}
