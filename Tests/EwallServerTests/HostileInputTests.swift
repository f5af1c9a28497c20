import EwallML
import EwallServer
import EwallTestSupport
import Foundation
import Testing

/// Products whose ids need percent-encoding in a URL, stored beside the photo catalogue.
enum OddIDs {
    /// Id -> the photo (catalogue index) whose vector it gets.
    static let products: [(id: String, photo: Int)] = [
        ("demo 1", 1), ("데모 상품", 2), ("a/b", 3), ("demo-1", 4), ("100%", 5), ("x?y#z&k=1", 6),
    ]

    /// A private copy of the catalogue with ``products`` added (category coat, in stock) and
    /// the index rebuilt.
    static func catalogue() async throws -> URL {
        let cat = try await PhotoCatalogue.shared.value
        let dir = try cat.copy()
        let store = try await StoreLocation(parsing: "sqlite:\(dir.path)/ewall.sqlite").open()
        try await store.upsertProducts(
            products.map { Product(id: $0.id, title: "odd \($0.id)", category: "coat", inStock: true) },
            source: .manifest)
        try await store.write(
            WriteBatch(
                embeddings: products.map {
                    StoredEmbedding(
                        productID: $0.id, imageURL: "file:///odd.jpg", key: cat.key,
                        vector: cat.vectors[PhotoCatalogue.pid($0.photo)]!)
                }))
        _ = try await IndexBuilder.build(
            store: store,
            options: IndexBuildOptions(
                folder: IndexFolder(path: dir.appendingPathComponent("faiss").path), threads: 1))
        await store.close()
        return dir
    }

    /// `s` with every byte but RFC 3986's unreserved ones percent-encoded (so `/` is `%2F`).
    static func encode(_ s: String) -> String {
        var out = ""
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.append(Character(Unicode.Scalar(b)))
            default:
                out += String(format: "%%%02X", b)
            }
        }
        return out
    }
}

extension RawHTTP.Response {
    var object: [String: Any] { json as? [String: Any] ?? [:] }
    var errorCode: String? { (object["error"] as? [String: Any])?["code"] as? String }
    var errorMessage: String { (object["error"] as? [String: Any])?["message"] as? String ?? "" }
}

/// Ids and text from callers: percent-decoded path ids, the input rules at the server and in
/// the library, and 405 for a method a path does not serve.
@Suite("ewall-serve: hostile input", .serialized)
struct HostileInputTests {
    static let server = Task<RunningServer, any Error> {
        try await RunningServer.start(directory: try await OddIDs.catalogue())
    }

    static func get(_ s: RunningServer, _ target: String) async throws -> RawHTTP.Response {
        try await RawHTTP.send(port: s.port, method: "GET", target: target)
    }

    static func post(_ s: RunningServer, _ path: String, json: String) async throws -> RawHTTP.Response {
        try await RawHTTP.send(
            port: s.port, method: "POST", target: path, headers: [("Content-Type", "application/json")],
            body: Array(json.utf8))
    }

    @Test(
        "Path ids are percent-decoded: ids with spaces, Hangul, / (as %2F), % and ? are found",
        arguments: OddIDs.products)
    func percentDecodedIDs(_ product: (id: String, photo: Int)) async throws {
        let s = try await Self.server.value
        let r = try await Self.get(
            s, "/api/recommendations/similar/\(OddIDs.encode(product.id))?min_similarity=0&any_category=1")
        #expect(r.status == 200, "\(product.id): \(r.text.prefix(300))")
        #expect(r.object["product_id"] as? String == product.id)
        let ids = (r.object["results"] as? [[String: Any]] ?? []).compactMap { $0["product_id"] as? String }
        #expect(!ids.isEmpty && !ids.contains(product.id), "itself is excluded: \(ids)")
        // The same id in a JSON body needs no encoding.
        let c = try await Self.post(
            s, "/api/recommendations/classify",
            json: String(
                decoding: try JSONSerialization.data(withJSONObject: ["product_id": product.id]), as: UTF8.self))
        #expect(c.status == 200, "\(product.id): \(c.text.prefix(300))")
        #expect(c.object["product_id"] as? String == product.id)
    }

    @Test("An escaped unreserved character is the character: demo%2D1 is demo-1")
    func escapedUnreserved() async throws {
        let s = try await Self.server.value
        let plain = try await Self.get(s, "/api/recommendations/similar/demo-1?min_similarity=0")
        let escaped = try await Self.get(s, "/api/recommendations/similar/demo%2D1?min_similarity=0")
        #expect(plain.status == 200 && escaped.status == 200)
        #expect(escaped.object["product_id"] as? String == "demo-1")
        #expect((escaped.object["results"] as? [Any])?.count == (plain.object["results"] as? [Any])?.count)
    }

    @Test(
        "Bad path ids: a malformed escape is 400 invalid_request; not UTF-8, a control character or too long is 400 invalid_input",
        arguments: [
            ("%", "invalid_request", "percent-escape"), ("abc%2", "invalid_request", "percent-escape"),
            ("%G1", "invalid_request", "percent-escape"), ("%FF", "invalid_input", "UTF-8"),
            ("%C3%28", "invalid_input", "UTF-8"), ("%ED%A0%80", "invalid_input", "UTF-8"),
            ("a%00b", "invalid_input", "NUL"), ("a%0Ab", "invalid_input", "line feed"),
            ("%7F", "invalid_input", "control"),
            ("%C2%85", "invalid_input", "control"), (String(repeating: "a", count: 257), "invalid_input", "257 bytes"),
            (String(repeating: "%EB%8D%B0", count: 86), "invalid_input", "258 bytes"),
        ])
    func badPathIDs(_ raw: String, _ code: String, _ reason: String) async throws {
        let s = try await Self.server.value
        let r = try await Self.get(s, "/api/recommendations/similar/\(raw)")
        #expect(r.status == 400, "\(raw): \(r.status) \(r.text.prefix(200))")
        #expect(r.errorCode == code, "\(raw): \(r.text.prefix(200))")
        #expect(r.errorMessage.contains(reason), "\(raw): '\(r.errorMessage)' does not say \(reason)")
        #expect(r.errorMessage.contains("product_id"), "\(raw): '\(r.errorMessage)' does not name the field")
    }

    @Test("Query parameters are decoded strictly too")
    func badQuery() async throws {
        let s = try await Self.server.value
        let malformed = try await Self.get(s, "/api/recommendations/similar/p01?k=%ZZ")
        #expect(malformed.status == 400 && malformed.errorCode == "invalid_request", "\(malformed.text)")
        let notUTF8 = try await Self.get(s, "/api/recommendations/similar/p01?k=%FF")
        #expect(notUTF8.status == 400 && notUTF8.errorCode == "invalid_input", "\(notUTF8.text)")
        let encoded = try await Self.get(
            s, "/api/recommendations/similar/p01?k=%33&min_similarity=0&any%5Fcategory=true")
        #expect(encoded.status == 200)
        #expect(encoded.object["k"] as? Int == 3)
        #expect(encoded.object["same_category"] as? Bool == false)
    }

    @Test(
        "JSON and query fields break the input rules: 400 invalid_input with the reason, before any work",
        arguments: [
            ("/api/recommendations/classify", #"{"product_id": "a\u0000b"}"#, "product_id contains NUL"),
            (
                "/api/recommendations/classify", #"{"title": "down\u0001jacket"}"#,
                "title contains the control character U+0001"
            ),
            (
                "/api/recommendations/classify", #"{"title": "x", "brand": "\u001b[31m"}"#,
                "brand contains the control character U+001B"
            ),
            ("/api/recommendations/classify", #"{"product_id": ""}"#, "product_id is empty"),
            (
                "/api/recommendations/similar",
                #"{"image_url": "http://127.0.0.1/a.jpg", "exclude_product_id": "\u0007"}"#,
                "exclude_product_id: product_id contains the control character U+0007"
            ),
            (
                "/api/recommendations/similar", #"{"image_url": "http://127.0.0.1/a.jpg", "category": "\u0085"}"#,
                "category contains the control character U+0085"
            ),
            ("/api/embeddings", #"{"image_url": "http://127.0.0.1/\u0000.jpg"}"#, "image_url contains NUL"),
        ])
    func badBodyFields(_ path: String, _ json: String, _ reason: String) async throws {
        let s = try await Self.server.value
        let r = try await Self.post(s, path, json: json)
        #expect(r.status == 400, "\(json): \(r.text)")
        #expect(r.errorCode == "invalid_input", "\(json): \(r.text)")
        #expect(r.errorMessage.contains(reason), "\(json): '\(r.errorMessage)'")
    }

    @Test("Long text and raw-image query fields are checked too")
    func longAndQueryFields() async throws {
        let s = try await Self.server.value
        let long = String(repeating: "가", count: 1366) // 4,098 bytes
        let r = try await Self.post(s, "/api/recommendations/classify", json: #"{"title": "\#(long)"}"#)
        #expect(r.status == 400 && r.errorCode == "invalid_input")
        #expect(r.errorMessage.contains("title is 4098 bytes long; the limit is 4096 bytes"), "\(r.errorMessage)")
        let cat = try await PhotoCatalogue.shared.value
        let image = try await RawHTTP.send(
            port: s.port, method: "POST", target: "/api/recommendations/classify?title=a%00b",
            headers: [("Content-Type", "image/jpeg")], body: try Fixtures.bytes(cat.photos[0]))
        #expect(image.status == 400 && image.errorCode == "invalid_input", "\(image.text)")
        #expect(image.errorMessage.contains("title contains NUL"))
        // The JSON body itself must be UTF-8.
        let latin1 = try await RawHTTP.send(
            port: s.port, method: "POST", target: "/api/recommendations/classify",
            headers: [("Content-Type", "application/json")],
            body: Array(#"{"title": "caf"#.utf8) + [0xE9] + Array(#""}"#.utf8))
        #expect(latin1.status == 400 && latin1.errorCode == "invalid_request")
        #expect(latin1.errorMessage.contains("UTF-8"), "\(latin1.errorMessage)")
    }

    @Test("The library API applies the same rules (EwallConfiguration.inputRules)")
    func libraryRules() async throws {
        let s = try await Self.server.value
        func code(_ body: () async throws -> Void) async -> String? {
            do {
                try await body()
                return nil
            } catch { return (error as? EwallError)?.code ?? "\(error)" }
        }
        #expect(await code { _ = try await s.service.similar(productID: "a\u{0}b") } == "invalid_input")
        #expect(await code { _ = try await s.service.similar(productID: "") } == "invalid_input")
        #expect(
            await code { _ = try await s.service.classify(productID: String(repeating: "x", count: 257)) }
                == "invalid_input")
        #expect(await code { _ = try await s.service.classify(title: "a\u{1}b") } == "invalid_input")
        #expect(
            await code { _ = try await s.service.classify(title: "two\nlines\tand a tab") } == nil,
            "text may hold tab, LF, CR")
        #expect(await code { _ = try await s.service.classify(title: "x", brand: "\u{9F}") } == "invalid_input")
        let image = ImageSource.bytes([1, 2, 3])
        #expect(await code { _ = try await s.service.similar(image: image, category: "\u{0}") } == "invalid_input")
        #expect(await code { _ = try await s.service.similar(image: image, excluding: "\u{7F}") } == "invalid_input")
        #expect(await code { _ = try await s.service.embed(.url("http://127.0.0.1/\u{0}")) } == "invalid_input")
        // Valid odd ids pass the rules and are found.
        #expect(try await s.service.similar(productID: "데모 상품", query: SimilarQuery(minSimilarity: 0)).query == "데모 상품")
        #expect(EwallConfiguration(modelPath: "m").inputRules == InputRules())
    }

    @Test("An image query whose filters leave nothing eligible answers 200 with no results, whatever k")
    func nothingEligible() async throws {
        let s = try await Self.server.value
        let cat = try await PhotoCatalogue.shared.value
        let image = try Fixtures.bytes(cat.photos[3])
        for k in [2, 1] {
            let r = try await RawHTTP.send(
                port: s.port, method: "POST",
                target: "/api/recommendations/similar?k=\(k)&min_similarity=0&category=no-such-category",
                headers: [("Content-Type", "image/jpeg")], body: image)
            // k = 1 is the case Debian's FAISS answers with id 0 at distance +inf (see
            // Neighbours.results(of:)): it must come back empty, not as a 500.
            #expect(r.status == 200, "k=\(k): \(r.status) \(r.text.prefix(200))")
            #expect((r.object["results"] as? [Any])?.isEmpty == true, "k=\(k): \(r.text.prefix(300))")
            #expect(r.object["eligible"] as? Int == 0)
        }
    }

    @Test(
        "A method a path does not serve is 405 method_not_allowed with Allow; an unknown path stays 404",
        arguments: [
            ("DELETE", "/healthz", "GET, HEAD"), ("POST", "/readyz", "GET, HEAD"), ("PUT", "/api/embeddings", "POST"),
            ("GET", "/api/recommendations/similar", "POST"), ("POST", "/api/recommendations/similar/p01", "GET, HEAD"),
            ("PATCH", "/api/recommendations/similar/a%2Fb", "GET, HEAD"), ("GET", "/admin/reload-index", "POST"),
            ("OPTIONS", "/openapi.json", "GET, HEAD"),
        ])
    func methodNotAllowed(_ method: String, _ path: String, _ allow: String) async throws {
        let s = try await Self.server.value
        let r = try await RawHTTP.send(port: s.port, method: method, target: path)
        #expect(r.status == 405, "\(method) \(path): \(r.status)")
        #expect(r.header("allow") == allow)
        #expect(r.errorCode == "method_not_allowed")
        #expect(r.errorMessage.contains(allow))
        #expect(r.header("content-type")?.hasPrefix("application/json") == true)
    }

    @Test("Unknown paths are 404 route_not_found, whatever the method")
    func unknownPaths() async throws {
        let s = try await Self.server.value
        for (method, path) in [
            ("GET", "/nothing"), ("DELETE", "/nothing"), ("GET", "/api/recommendations/similar/a/b"),
            ("GET", "/healthz/x"), ("POST", "/api"),
        ] {
            let r = try await RawHTTP.send(port: s.port, method: method, target: path)
            #expect(r.status == 404, "\(method) \(path): \(r.status)")
            #expect(r.errorCode == "route_not_found", "\(method) \(path)")
            #expect(r.header("allow") == nil)
        }
    }
}
