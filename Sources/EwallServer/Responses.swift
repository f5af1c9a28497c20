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

    /// The index block describes the snapshot that answered (``SimilarAnswer/index``), not
    /// whatever is loaded by the time the answer is written.
    init(_ a: SimilarAnswer, query: SimilarQuery, warning: String?) {
        productID = a.query
        category = a.category
        k = query.k
        minSimilarity = query.minSimilarity
        sameCategory = query.sameCategory
        inStockOnly = query.inStockOnly
        results = a.results
        eligible = a.eligible
        notes = a.notes
        index = IndexInfo(factory: a.index.factory, count: a.index.count, builtAt: a.index.builtAt)
        self.warning = warning
    }

    /// The same JSON as `JSONEncoder` with sorted keys would write (nil fields left out), made
    /// by hand: the hottest response, where Foundation's encoder took ~10% of the server's CPU.
    var jsonBytes: [UInt8] {
        var w = JSONWriter()
        w.object { o in
            if let category {
                o.key("category")
                o.w.string(category)
            }
            o.key("eligible")
            o.w.int(eligible)
            o.key("in_stock_only")
            o.w.bool(inStockOnly)
            o.key("index")
            o.w.object { i in
                if let builtAt = index.builtAt {
                    i.key("built_at")
                    i.w.string(builtAt)
                }
                i.key("count")
                i.w.int(index.count)
                if let factory = index.factory {
                    i.key("factory")
                    i.w.string(factory)
                }
            }
            o.key("k")
            o.w.int(k)
            o.key("min_similarity")
            o.w.double(minSimilarity)
            o.key("notes")
            o.w.array(notes) { w, n in w.string(n) }
            if let productID {
                o.key("product_id")
                o.w.string(productID)
            }
            o.key("results")
            o.w.array(results) { w, r in
                w.object { p in
                    if let c = r.category {
                        p.key("category")
                        p.w.string(c)
                    }
                    p.key("cosine")
                    p.w.double(r.cosine)
                    p.key("distance")
                    p.w.double(r.distance)
                    if let s = r.inStock {
                        p.key("in_stock")
                        p.w.bool(s)
                    }
                    p.key("product_id")
                    p.w.string(r.productID)
                    p.key("similarity")
                    p.w.double(r.similarity)
                    if let t = r.title {
                        p.key("title")
                        p.w.string(t)
                    }
                }
            }
            o.key("same_category")
            o.w.bool(sameCategory)
            if let warning {
                o.key("warning")
                o.w.string(warning)
            }
        }
        return w.bytes
    }
}

/// A minimal JSON writer for the hot responses: UTF-8 bytes, strings escaped as JSON requires
/// (quote, backslash, control characters; `/` left as is), numbers as Swift's shortest
/// round-trip form (integral doubles without ".0"), non-finite numbers as null.
struct JSONWriter {
    var bytes: [UInt8] = []

    init() { bytes.reserveCapacity(2048) }

    struct Object {
        var w: JSONWriter
        var first = true
        mutating func key(_ k: String) {
            if !first { w.bytes.append(UInt8(ascii: ",")) }
            first = false
            w.string(k)
            w.bytes.append(UInt8(ascii: ":"))
        }
    }

    mutating func object(_ body: (inout Object) -> Void) {
        bytes.append(UInt8(ascii: "{"))
        var o = Object(w: self)
        self = JSONWriter()
        body(&o)
        self = o.w
        bytes.append(UInt8(ascii: "}"))
    }

    mutating func array<T>(_ items: [T], _ each: (inout JSONWriter, T) -> Void) {
        bytes.append(UInt8(ascii: "["))
        for (i, item) in items.enumerated() {
            if i > 0 { bytes.append(UInt8(ascii: ",")) }
            each(&self, item)
        }
        bytes.append(UInt8(ascii: "]"))
    }

    mutating func string(_ s: String) {
        bytes.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { utf8 in
            // Runs of bytes that need no escape go in one append.
            var start = 0
            for (i, b) in utf8.enumerated() where b < 0x20 || b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") {
                bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start..<i]))
                escape(b)
                start = i + 1
            }
            bytes.append(contentsOf: UnsafeBufferPointer(rebasing: utf8[start...]))
        }
        bytes.append(UInt8(ascii: "\""))
    }

    private mutating func escape(_ b: UInt8) {
        switch b {
        case UInt8(ascii: "\""): bytes += [UInt8(ascii: "\\"), UInt8(ascii: "\"")]
        case UInt8(ascii: "\\"): bytes += [UInt8(ascii: "\\"), UInt8(ascii: "\\")]
        case 0x0A: bytes += [UInt8(ascii: "\\"), UInt8(ascii: "n")]
        case 0x0D: bytes += [UInt8(ascii: "\\"), UInt8(ascii: "r")]
        case 0x09: bytes += [UInt8(ascii: "\\"), UInt8(ascii: "t")]
        case 0..<0x20:
            let hex = Array("0123456789abcdef".utf8)
            bytes += [
                UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(b >> 4)],
                hex[Int(b & 15)],
            ]
        default: bytes.append(b)
        }
    }

    mutating func int(_ v: Int) { bytes += Array(String(v).utf8) }
    mutating func bool(_ v: Bool) { bytes += Array((v ? "true" : "false").utf8) }

    mutating func double(_ v: Double) {
        guard v.isFinite else {
            bytes += Array("null".utf8)
            return
        }
        if v == v.rounded(), abs(v) < 1e15 {
            bytes += Array(String(Int64(v)).utf8)
            return
        }
        bytes += Array(v.description.utf8)
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
        case ready, model, store, index, consistent, problems, indexCount = "index_count", indexBuiltAt =
            "index_built_at"
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
    static func make(_ value: SimilarResponse) -> Response {
        Response(
            status: .ok, headers: [.contentType: "application/json; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: value.jsonBytes)))
    }

    static func make(_ value: some Encodable, status: HTTPResponse.Status = .ok) throws -> Response {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = try encoder.encode(value)
        return Response(
            status: status, headers: [.contentType: "application/json; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// The answer of `POST /api/gifts/check`: the platform's fields (product_type, gift_type,
/// classification_reason, is_revenue), then ours.
struct GiftCheckResponse: Encodable {
    var decision: GiftDecision
    var warning: String?

    enum Keys: String, CodingKey {
        case productType = "product_type", giftType = "gift_type", classificationReason = "classification_reason"
        case isRevenue = "is_revenue", decidedBy = "decided_by", resembles, explanation, rulesVersion = "rules_version"
        case term, setAside = "set_aside", warning
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Keys.self)
        let d = decision
        try c.encode(d.productType, forKey: .productType)
        try c.encode(d.giftType, forKey: .giftType)
        try c.encode(d.classificationReason, forKey: .classificationReason)
        try c.encode(d.isRevenue, forKey: .isRevenue)
        try c.encode(d.decidedBy.rawValue, forKey: .decidedBy)
        try c.encode(d.resembles, forKey: .resembles)
        try c.encode(d.explanation, forKey: .explanation)
        try c.encode(d.rulesVersion, forKey: .rulesVersion)
        try c.encode(d.term, forKey: .term)
        try c.encode(d.setAside, forKey: .setAside)
        try c.encodeIfPresent(warning, forKey: .warning)
    }
}
