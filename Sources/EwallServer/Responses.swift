import EwallML
import Foundation
import HTTPTypes
import Hummingbird

/// The answer of both similar-products routes.
struct SimilarResponse: Encodable {
    var productID: String?
    var category: String?
    var k: Int
    var minSimilarity: Double
    var sameCategory: Bool
    var inStockOnly: Bool
    var results: [SimilarProduct]
    var eligible: Int
    var notes: [String]
    var index: IndexInfo
    var warning: String?

    struct IndexInfo: Encodable {
        var factory: String?
        var count: Int
        var builtAt: String?
        enum CodingKeys: String, CodingKey { case factory, count, builtAt = "built_at" }
    }

    enum CodingKeys: String, CodingKey {
        case productID = "product_id", category, k, minSimilarity = "min_similarity", sameCategory = "same_category"
        case inStockOnly = "in_stock_only", results, eligible, notes, index, warning
    }

    init(_ a: SimilarAnswer, query: SimilarQuery, status: IndexStatus, warning: String?) {
        productID = a.query
        category = a.category
        k = query.k
        minSimilarity = query.minSimilarity
        sameCategory = query.sameCategory
        inStockOnly = query.inStockOnly
        results = a.results
        eligible = a.eligible
        notes = a.notes
        index = IndexInfo(factory: status.factory, count: status.count, builtAt: status.builtAt)
        self.warning = warning
    }
}

/// The answer of the classify route: the classification with its explanation.
struct ClassifyResponse: Encodable {
    var classification: Classification
    var explanation: String
    var warning: String?

    func encode(to encoder: any Encoder) throws {
        try classification.encode(to: encoder)
        var c = encoder.container(keyedBy: Keys.self)
        try c.encode(explanation, forKey: .explanation)
        try c.encodeIfPresent(warning, forKey: .warning)
    }

    enum Keys: String, CodingKey { case explanation, warning }
}

/// The answer of the embeddings route.
struct EmbeddingResponse: Encodable {
    var modelID: String
    var preprocessing: String
    var dimension: Int
    var vector: [Float]
    var image: ImageInfo
    var warning: String?

    struct ImageInfo: Encodable {
        var format: String
        var width: Int
        var height: Int
    }

    enum CodingKeys: String, CodingKey {
        case modelID = "model_id", preprocessing, dimension, vector, image, warning
    }
}

struct ReadinessResponse: Encodable {
    var ready: Bool
    var model: Bool
    var store: Bool
    var index: Bool
    var consistent: Bool
    var problems: [String]
    var indexCount: Int
    var indexBuiltAt: String?
    var modelID: String
    var pretrained: Bool

    enum CodingKeys: String, CodingKey {
        case ready, model, store, index, consistent, problems, indexCount = "index_count", indexBuiltAt = "index_built_at"
        case modelID = "model_id", pretrained
    }
}

struct ReloadResponse: Encodable {
    var reloaded: Bool
    var factory: String?
    var count: Int
    var builtAt: String?
    enum CodingKeys: String, CodingKey { case reloaded, factory, count, builtAt = "built_at" }
}

enum JSONResponse {
    static func make(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(value)
        return Response(status: status, headers: [.contentType: "application/json; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
