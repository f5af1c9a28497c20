import EwallML
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore

/// The JSON body the POST routes take. Each route uses the fields it documents.
struct RequestBody: Decodable, Sendable {
    var productID: String?
    var imageURL: String?
    var imageBase64: String?
    var title: String?
    var brand: String?
    var category: String?
    var excludeProductID: String?
    var k: Int?
    var minSimilarity: Double?
    var anyCategory: Bool?
    var includeOutOfStock: Bool?

    enum CodingKeys: String, CodingKey {
        case productID = "product_id", imageURL = "image_url", imageBase64 = "image_base64", title, brand, category
        case excludeProductID = "exclude_product_id", k, minSimilarity = "min_similarity", anyCategory = "any_category"
        case includeOutOfStock = "include_out_of_stock"
    }
}

/// A POST body read as JSON, or as raw image bytes (`Content-Type: image/*` or
/// `application/octet-stream`, with the other fields as query parameters).
struct PostInput: Sendable {
    var body: RequestBody
    var image: ImageSource?

    static func read(_ request: Request, maxBytes: Int) async throws -> PostInput {
        var request = request
        let type = request.headers[.contentType]?.lowercased() ?? ""
        let buffer = try await request.collectBody(upTo: maxBytes)
        if type.hasPrefix("image/") || type.hasPrefix("application/octet-stream") {
            var body = RequestBody()
            let q = request.uri.queryParameters
            body.productID = q["product_id"].map(String.init)
            body.title = q["title"].map(String.init)
            body.brand = q["brand"].map(String.init)
            body.category = q["category"].map(String.init)
            body.excludeProductID = q["exclude_product_id"].map(String.init)
            let bytes = [UInt8](buffer: buffer)
            guard !bytes.isEmpty else { throw APIError.badRequest("the request body (the image) is empty") }
            return PostInput(body: body, image: .bytes(bytes))
        }
        // `curl -d '{...}'` labels JSON as a form; a body that opens with `{` is read as JSON.
        let looksLikeJSON = buffer.readableBytesView.first(where: { $0 != 0x20 && $0 != 0x0a && $0 != 0x0d && $0 != 0x09 }) == UInt8(ascii: "{")
        guard type.isEmpty || type.hasPrefix("application/json")
              || (type.hasPrefix("application/x-www-form-urlencoded") && looksLikeJSON) else {
            throw APIError(.unsupportedMediaType, "unsupported_media_type",
                           "send application/json, or the image itself as image/* or application/octet-stream")
        }
        let body: RequestBody
        do {
            body = try JSONDecoder().decode(RequestBody.self, from: buffer)
        } catch {
            throw APIError.badRequest("the body is not valid JSON for this route: \(Self.describe(error))")
        }
        if body.imageURL != nil && body.imageBase64 != nil {
            throw APIError.badRequest("give image_url or image_base64, not both")
        }
        var image: ImageSource?
        if let url = body.imageURL { image = .url(url) }
        if let b64 = body.imageBase64 {
            guard let data = Data(base64Encoded: b64, options: .ignoreUnknownCharacters), !data.isEmpty else {
                throw APIError.badRequest("image_base64 is not valid base64")
            }
            image = .bytes([UInt8](data))
        }
        return PostInput(body: body, image: image)
    }

    private static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c), DecodingError.dataCorrupted(let c):
            let path = c.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? c.debugDescription : "\(path): \(c.debugDescription)"
        case DecodingError.keyNotFound(let key, _):
            return "\(key.stringValue) is missing"
        default:
            return "\(error)"
        }
    }
}

/// The similar-products parameters, from query parameters or a JSON body, validated.
enum SimilarParameters {
    static func query(_ q: FlatDictionary<Substring, Substring>, body: RequestBody? = nil) throws -> SimilarQuery {
        func int(_ name: String) throws -> Int? {
            guard let v = q[Substring(name)] else { return nil }
            guard let i = Int(v) else { throw APIError.badRequest("\(name) must be an integer, not '\(v)'") }
            return i
        }
        func double(_ name: String) throws -> Double? {
            guard let v = q[Substring(name)] else { return nil }
            guard let d = Double(v), d.isFinite else { throw APIError.badRequest("\(name) must be a number, not '\(v)'") }
            return d
        }
        func bool(_ name: String) throws -> Bool? {
            guard let v = q[Substring(name)] else { return nil }
            switch v.lowercased() {
            case "", "1", "true", "yes": return true
            case "0", "false", "no": return false
            default: throw APIError.badRequest("\(name) must be true or false, not '\(v)'")
            }
        }
        let k = try body?.k ?? int("k") ?? 10
        let minSimilarity = try body?.minSimilarity ?? double("min_similarity") ?? 0.5
        let anyCategory = try body?.anyCategory ?? bool("any_category") ?? false
        let includeOutOfStock = try body?.includeOutOfStock ?? bool("include_out_of_stock") ?? false
        guard (1...1000).contains(k) else { throw APIError.badRequest("k must be 1...1000, not \(k)") }
        guard (0...1).contains(minSimilarity) else {
            throw APIError.badRequest("min_similarity must be between 0 and 1, not \(minSimilarity)")
        }
        return SimilarQuery(k: k, minSimilarity: minSimilarity, sameCategory: !anyCategory, inStockOnly: !includeOutOfStock)
    }
}
