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
    var includeGifts: Bool?
    /// `POST /api/gifts/check`: the product's price and supply price.
    var price: Double?
    var supplyPrice: Double?

    enum CodingKeys: String, CodingKey {
        case productID = "product_id", imageURL = "image_url", imageBase64 = "image_base64", title, brand, category
        case excludeProductID = "exclude_product_id", k, minSimilarity = "min_similarity", anyCategory = "any_category"
        case includeOutOfStock = "include_out_of_stock", includeGifts = "include_gifts", price
        case supplyPrice = "supply_price"
    }

    /// Every id, URL and text field present, checked against `rules`: the first that breaks
    /// one is 400 `invalid_input` with the reason. Fields a route ignores are checked too, so
    /// one body is valid or not whatever the route.
    func check(_ rules: InputRules) throws(APIError) {
        let fields: [(String?, InputRules.Field, String)] = [
            (productID, .productID, "product_id"), (excludeProductID, .productID, "exclude_product_id"),
            (imageURL, .imageURL, "image_url"), (title, .title, "title"), (brand, .brand, "brand"),
            (category, .category, "category"),
        ]
        for case (let value?, let field, let name) in fields {
            guard let reason = rules.problem(value, as: field) else { continue }
            // The reason names the rule's field; say which of the body's it was when they differ.
            throw APIError.invalidInput(name == field.rawValue ? reason : "\(name): \(reason)")
        }
    }
}

/// A `Content-Type`: its essence (`type/subtype`, lower-cased) and its charset, if given.
struct MediaType: Sendable, Equatable {
    var essence: String
    var charset: String?

    init(_ header: String) {
        let parts = header.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
        essence = parts.first?.lowercased() ?? ""
        for p in parts.dropFirst() {
            let pair = p.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if pair.count == 2 && pair[0].lowercased() == "charset" {
                charset = pair[1].trimmingCharacters(in: CharacterSet(charactersIn: "\"")).lowercased()
            }
        }
    }

    /// The image itself as the body: `image/*` or `application/octet-stream`.
    var isImage: Bool { essence.hasPrefix("image/") || essence == "application/octet-stream" }
    var isJSON: Bool { essence == "application/json" }
}

/// A POST body read as JSON (`application/json`, UTF-8), or as raw image bytes
/// (`Content-Type: image/*` or `application/octet-stream`, with the other fields as query
/// parameters). Any other type, or none, is 415 `unsupported_media_type`.
struct PostInput: Sendable {
    var body: RequestBody
    var image: ImageSource?

    static let mediaTypes = "send application/json (UTF-8), or the image itself as image/* or application/octet-stream"

    /// The body's media type, or 415 `unsupported_media_type` saying what the route takes.
    static func mediaType(of request: Request) throws(APIError) -> MediaType {
        guard let header = request.headers[.contentType] else {
            throw APIError(
                .unsupportedMediaType, "unsupported_media_type", "the request has no Content-Type: \(mediaTypes)")
        }
        let media = MediaType(header)
        guard media.isJSON || media.isImage else {
            throw APIError(
                .unsupportedMediaType, "unsupported_media_type",
                "Content-Type \(media.essence.debugDescription) is not taken here: \(mediaTypes)")
        }
        if media.isJSON, let charset = media.charset, charset != "utf-8" && charset != "utf8" {
            throw APIError(
                .unsupportedMediaType, "unsupported_media_type",
                "a JSON body must be UTF-8 (RFC 8259), not charset=\(charset.debugDescription)")
        }
        return media
    }

    static func read(_ request: Request, maxBytes: Int, rules: InputRules) async throws -> PostInput {
        var request = request
        let media = try mediaType(of: request)
        let buffer = try await request.collectBody(upTo: maxBytes)
        if media.isImage {
            var body = RequestBody()
            let q = try QueryParameters(request.uri.query)
            body.productID = q["product_id"]
            body.title = q["title"]
            body.brand = q["brand"]
            body.category = q["category"]
            body.excludeProductID = q["exclude_product_id"]
            try body.check(rules)
            let bytes = [UInt8](buffer: buffer)
            guard !bytes.isEmpty else { throw APIError.badRequest("the request body (the image) is empty") }
            return PostInput(body: body, image: .bytes(bytes))
        }
        if let problem = InputRules.utf8Problem(buffer.readableBytesView) {
            throw APIError.badRequest("the JSON body \(problem)")
        }
        let body: RequestBody
        do {
            body = try JSONDecoder().decode(RequestBody.self, from: buffer)
        } catch {
            throw APIError.badRequest("the body is not valid JSON for this route: \(Self.describe(error))")
        }
        if let key = JSONKeys.firstDuplicate(in: buffer.readableBytesView) {
            throw APIError.badRequest(
                "the JSON body gives \(key.debugDescription) more than once; give each field once")
        }
        try body.check(rules)
        if body.imageURL != nil && body.imageBase64 != nil {
            throw APIError.badRequest("give image_url or image_base64, not both")
        }
        var image: ImageSource?
        if let url = body.imageURL { image = .url(url) }
        if let b64 = body.imageBase64 {
            guard !b64.allSatisfy(\.isWhitespace) else {
                throw APIError.badRequest("image_base64 is empty: give the image's bytes, base64-encoded")
            }
            guard let data = Data(base64Encoded: b64, options: .ignoreUnknownCharacters), !data.isEmpty else {
                throw APIError.badRequest("image_base64 is not valid base64")
            }
            image = .bytes([UInt8](data))
        }
        return PostInput(body: body, image: image)
    }

    private static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c),
            DecodingError.dataCorrupted(let c):
            let path = c.codingPath.map(\.stringValue).joined(separator: ".")
            return path.isEmpty ? c.debugDescription : "\(path): \(c.debugDescription)"
        case DecodingError.keyNotFound(let key, _):
            return "\(key.stringValue) is missing"
        default:
            return "\(error)"
        }
    }
}

/// Text that arrives percent-encoded in a URL (a path segment, a query name or value),
/// decoded once and strictly: nothing is guessed, replaced or decoded twice.
enum PercentEncoding {
    /// `raw` decoded. A `%` not followed by two hex digits is 400 `invalid_request`; bytes
    /// that are not UTF-8 once decoded are 400 `invalid_input`; both say where. `what` names
    /// the value in the reason ("product_id", "the query parameter k").
    static func decode(_ raw: Substring, what: String) throws(APIError) -> String {
        guard raw.utf8.contains(UInt8(ascii: "%")) else { return String(raw) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(raw.utf8.count)
        var i = raw.utf8.startIndex
        let end = raw.utf8.endIndex
        var offset = 0
        while i < end {
            let byte = raw.utf8[i]
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                i = raw.utf8.index(after: i)
                offset += 1
                continue
            }
            let h = raw.utf8.index(after: i)
            let l = h < end ? raw.utf8.index(after: h) : end
            guard h < end, l < end, let high = hexValue(raw.utf8[h]), let low = hexValue(raw.utf8[l]) else {
                let escape = String(decoding: raw.utf8[i...].prefix(3), as: UTF8.self)
                throw APIError.badRequest(
                    "\(what) has a malformed percent-escape '\(escape)' at character \(offset + 1): "
                        + "a % must be followed by two hex digits (send a literal % as %25)")
            }
            bytes.append(high << 4 | low)
            i = raw.utf8.index(after: l)
            offset += 3
        }
        if let problem = InputRules.utf8Problem(bytes) {
            throw APIError.invalidInput("\(what), percent-decoded, \(problem)")
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}

/// Finds a key given twice in one object of a JSON text (which `JSONDecoder` would take the
/// last of, silently).
enum JSONKeys {
    /// The first key repeated in an object of `json` (valid JSON), decoded; `nil` when none is.
    static func firstDuplicate<C: Collection>(in json: C) -> String? where C.Element == UInt8 {
        // One frame per open object (its keys, and whether a key comes next) or array (nil).
        var frames: [(keys: Set<String>, expectKey: Bool)?] = []
        var i = json.startIndex
        while i < json.endIndex {
            let byte = json[i]
            switch byte {
            case UInt8(ascii: "\""):
                let start = i
                i = json.index(after: i)
                while i < json.endIndex && json[i] != UInt8(ascii: "\"") {
                    if json[i] == UInt8(ascii: "\\") { i = json.index(after: i) }
                    if i < json.endIndex { i = json.index(after: i) }
                }
                guard i < json.endIndex else { return nil }
                if let top = frames.last, var object = top, object.expectKey {
                    let literal = Data(json[start...i])
                    let key = (try? JSONDecoder().decode(String.self, from: literal)) ?? ""
                    if object.keys.contains(key) { return key }
                    object.keys.insert(key)
                    object.expectKey = false
                    frames[frames.count - 1] = object
                }
            case UInt8(ascii: "{"): frames.append(([], true))
            case UInt8(ascii: "["): frames.append(nil)
            case UInt8(ascii: "}"), UInt8(ascii: "]"): _ = frames.popLast()
            case UInt8(ascii: ","):
                if let top = frames.last, let object = top { frames[frames.count - 1] = (object.keys, true) }
            default: break
            }
            i = json.index(after: i)
        }
        return nil
    }
}

/// A query string, every name and value percent-decoded strictly (``PercentEncoding``). A
/// name given twice is 400 `invalid_request` (which one was meant cannot be known). `+`
/// stays `+` (RFC 3986 queries, not HTML forms).
struct QueryParameters: Sendable {
    private var values: [String: String] = [:]

    init(_ query: String?) throws(APIError) {
        guard let query, !query.isEmpty else { return }
        for pair in query.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = try PercentEncoding.decode(parts[0], what: "a query parameter name")
            let value = parts.count > 1 ? try PercentEncoding.decode(parts[1], what: "the query parameter \(name)") : ""
            guard values[name] == nil else {
                throw APIError.badRequest("the query parameter \(name) is given more than once; give it once")
            }
            values[name] = value
        }
    }

    subscript(name: String) -> String? { values[name] }
}

/// The similar-products parameters, from query parameters or a JSON body, validated.
enum SimilarParameters {
    /// A number from the query, or nil when absent.
    static func number(_ q: QueryParameters, _ name: String) throws(APIError) -> Double? {
        guard let v = q[name] else { return nil }
        guard let d = Double(v), d.isFinite else { throw APIError.badRequest("\(name) must be a number, not '\(v)'") }
        return d
    }

    /// The bounds and defaults the routes accept, and the OpenAPI document states.
    static let kRange = SimilarQuery.kRange
    static let minSimilarityRange = SimilarQuery.minSimilarityRange
    static let defaults = SimilarQuery()

    static func query(_ q: QueryParameters, body: RequestBody? = nil) throws -> SimilarQuery {
        func int(_ name: String) throws(APIError) -> Int? {
            guard let v = q[name] else { return nil }
            guard let i = Int(v) else { throw APIError.badRequest("\(name) must be an integer, not '\(v)'") }
            return i
        }
        func double(_ name: String) throws(APIError) -> Double? {
            guard let v = q[name] else { return nil }
            guard let d = Double(v), d.isFinite else {
                throw APIError.badRequest("\(name) must be a number, not '\(v)'")
            }
            return d
        }
        func bool(_ name: String) throws(APIError) -> Bool? {
            guard let v = q[name] else { return nil }
            switch v.lowercased() {
            case "", "1", "true", "yes": return true
            case "0", "false", "no": return false
            default: throw APIError.badRequest("\(name) must be true or false, not '\(v)'")
            }
        }
        let k = try body?.k ?? int("k") ?? defaults.k
        let minSimilarity = try body?.minSimilarity ?? double("min_similarity") ?? defaults.minSimilarity
        let anyCategory = try body?.anyCategory ?? bool("any_category") ?? !defaults.sameCategory
        let includeOutOfStock = try body?.includeOutOfStock ?? bool("include_out_of_stock") ?? !defaults.inStockOnly
        let includeGifts = try body?.includeGifts ?? bool("include_gifts") ?? defaults.includeGifts
        let query = SimilarQuery(
            k: k, minSimilarity: minSimilarity, sameCategory: !anyCategory, inStockOnly: !includeOutOfStock,
            includeGifts: includeGifts)
        if let problem = query.problem { throw APIError.badRequest(problem) }
        return query
    }
}
