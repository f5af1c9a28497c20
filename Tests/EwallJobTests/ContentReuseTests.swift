import EwallML
import EwallTestSupport
import Foundation
import Testing

/// Identical image bytes under one model key run the model once; changed bytes always mean a
/// new vector.
@Suite("Content reuse: one forward pass per distinct image", .serialized)
struct ContentReuseTests {
    @Test(
        "two products with the same bytes: one forward pass, the same vector; changed bytes: a new one",
        arguments: StoreKind.allCases)
    func sameBytesOnePass(_ kind: StoreKind) async throws {
        let photos = try Fixtures.photos()
        let a = try Fixtures.bytes(photos[0]), b = try Fixtures.bytes(photos[1])
        let server = try TestHTTPServer { req in
            switch req.path {
            case "/a.jpg", "/a-copy.jpg": return .init(headers: [("Content-Type", "image/jpeg")], body: a)
            case "/b.jpg": return .init(headers: [("Content-Type", "image/jpeg")], body: b)
            default: return .init(status: 404)
            }
        }
        defer { server.shutdown() }
        let embedder = try EmbeddingJobTests.embedder()
        let store = try await kind.open()
        defer { Task { await store.close() } }
        func manifest(_ rows: [(String, String)]) throws -> String {
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("reuse-\(UUID().uuidString).csv")
                .path
            try (["product_id,image_url"] + rows.map { "\($0.0),\(server.url($0.1))" }).joined(separator: "\n")
                .write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }
        let key = ModelKey(modelID: embedder.modelID, preprocessing: "squash224")
        func vector(_ id: String) async throws -> [Float] {
            try #require(try await store.embedding(productID: id, key: key)).vector
        }

        // Same batch: the copy takes the first one's vector.
        let (first, _) = try await EmbeddingJobTests.run(
            try manifest([("p1", "/a.jpg"), ("p2", "/a-copy.jpg")]),
            store: store, embedder: embedder)
        #expect(first.counts.embedded == 2 && first.counts.reused == 1)
        #expect(try await vector("p1").map(\.bitPattern) == (try await vector("p2")).map(\.bitPattern))

        // A later run: the stored vector is reused (another product, an earlier job).
        let (later, _) = try await EmbeddingJobTests.run(
            try manifest([("p3", "/a-copy.jpg")]), store: store, embedder: embedder)
        #expect(later.counts.embedded == 1 && later.counts.reused == 1 && later.stageSeconds.infer == 0)
        #expect(try await vector("p3").map(\.bitPattern) == (try await vector("p1")).map(\.bitPattern))

        // p2's photo changes: new bytes, a new vector from the model.
        let (changed, _) = try await EmbeddingJobTests.run(
            try manifest([("p2", "/b.jpg")]), store: store, embedder: embedder)
        #expect(changed.counts.embedded == 1 && changed.counts.reused == 0 && changed.stageSeconds.infer > 0)
        let p2 = try await vector("p2")
        #expect(p2 != (try await vector("p1")))
        let direct = try await embedder.embed(files: [photos[1]])[0].result.get().vector
        #expect(VectorMath.cosine(p2, direct) > 0.99999)
    }
}
