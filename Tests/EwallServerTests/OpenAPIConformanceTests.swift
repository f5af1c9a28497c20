import EwallML
import EwallServer
import EwallTestSupport
import Foundation
import Testing

/// The server driven from its own OpenAPI document: for every operation, requests generated
/// from what the document says (and from what it forbids: out-of-bounds numbers, wrong types,
/// junk ids and bodies, wrong content types), each answer checked against the document.
///
/// Seeded: a failure prints its seed; `EWALL_FUZZ_SEED=<seed>` replays it.
@Suite("ewall-serve: the OpenAPI document, checked by driving the server", .serialized)
struct OpenAPIConformanceTests {
    static let requestsPerOperation = 50
    static let seed: UInt64 =
        ProcessInfo.processInfo.environment["EWALL_FUZZ_SEED"].flatMap { UInt64($0) } ?? 18_2026_1129

    /// A server with odd ids stored and a tighter id limit than the default, so the document
    /// must state the configured rules, not the defaults.
    static let server = Task<RunningServer, any Error> {
        try await RunningServer.start(directory: try await OddIDs.catalogue()) { config, server in
            config.inputRules = InputRules(maxIDBytes: 64)
            server.maxBodyBytes = 512 << 10
        }
    }

    static func document(_ s: RunningServer) async throws -> Document {
        let r = try await RawHTTP.send(port: s.port, method: "GET", target: "/openapi.json")
        return Document(try #require(r.json as? [String: Any]))
    }

    @Test(
        "Every operation, driven with generated valid and invalid requests, answers only statuses and shapes its document lists"
    )
    func generatedRequests() async throws {
        let s = try await Self.server.value
        let doc = try await Self.document(s)
        let images = try FuzzImages()
        var rng = SplitMix64(seed: Self.seed)
        var seen: [String: [Int: Int]] = [:]
        let started = ContinuousClock.now
        for op in doc.operations {
            var generator = RequestGenerator(operation: op, document: doc, images: images)
            for i in 0..<Self.requestsPerOperation {
                // The first few stay inside what the document allows, so the 200s are checked too.
                let request = generator.make(&rng, valid: i < 5)
                let context = "seed \(Self.seed), \(op.method) \(op.path) #\(i): \(request.summary)"
                let r: RawHTTP.Response
                do {
                    r = try await RawHTTP.send(
                        port: s.port, method: request.method, target: request.target,
                        headers: request.headers, body: request.body)
                } catch {
                    Issue.record("\(context): no answer: \(error)")
                    continue
                }
                seen[op.id, default: [:]][r.status, default: 0] += 1
                for problem in doc.problems(with: r, for: op) { Issue.record("\(context): \(problem)") }
            }
        }
        let took = ContinuousClock.now - started
        // The generator reached both the happy path and the errors the document promises.
        let expected: [String: Set<Int>] = [
            "similarByProduct": [200, 400, 404], "similarByImage": [200, 400, 413, 415, 422],
            "classify": [200, 400, 413, 415, 422], "embed": [200, 400, 413, 415, 422],
        ]
        for op in doc.operations {
            let statuses = Set(seen[op.id]?.keys.map { $0 } ?? [])
            #expect(
                statuses.isSuperset(of: expected[op.id] ?? [200]),
                "\(op.id) saw \(seen[op.id] ?? [:]) (seed \(Self.seed))")
        }
        #expect(took < .seconds(60), "\(took) for \(doc.operations.count * Self.requestsPerOperation) requests")
    }

    @Test("Each path answers every method it does not list with 405 and an Allow header naming the ones it does")
    func otherMethods() async throws {
        let s = try await Self.server.value
        let doc = try await Self.document(s)
        var rng = SplitMix64(seed: Self.seed)
        for (path, methods) in doc.methodsByPath {
            for method in ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"] where !methods.contains(method) {
                let target = RequestGenerator.concrete(path, &rng)
                let r = try await RawHTTP.send(port: s.port, method: method, target: target)
                #expect(r.status == 405, "\(method) \(target): \(r.status)")
                let allow = Set(
                    (r.header("allow") ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) })
                #expect(allow == methods, "\(method) \(target): Allow \(allow), the document lists \(methods)")
                #expect(r.errorCode == "method_not_allowed")
                #expect(doc.problems(errorBody: r).isEmpty, "\(doc.problems(errorBody: r))")
            }
        }
        #expect(
            doc.raw["components"].flatMap { ($0 as? [String: Any])?["responses"] as? [String: Any] }?[
                "MethodNotAllowed"] != nil)
    }

    @Test("The bounds the document states are the bounds the server applies")
    func statedBounds() async throws {
        let s = try await Self.server.value
        let doc = try await Self.document(s)
        let op = try #require(doc.operations.first { $0.id == "similarByProduct" })
        var checked = 0
        for p in op.parameters where p.location == "query" {
            guard let min = p.minimum, let max = p.maximum else { continue }
            let isInteger = p.type == "integer"
            let step = isInteger ? 1.0 : 0.001
            for (value, ok) in [(min, true), (max, true), (min - step, false), (max + step, false)] {
                let text = isInteger ? String(Int(value)) : String(value)
                let r = try await RawHTTP.send(
                    port: s.port, method: "GET",
                    target: "/api/recommendations/similar/p01?\(p.name)=\(text)")
                #expect(
                    (r.status == 200) == ok && (r.status == 400) == !ok,
                    "\(p.name)=\(text): \(r.status) \(r.text.prefix(200))")
            }
            checked += 1
        }
        #expect(checked == 2, "k and min_similarity must state minimum and maximum")
        // The image fields: one of image_url / image_base64 (or the image as the body) is required.
        let embed = try #require(doc.operations.first { $0.id == "embed" })
        #expect(embed.bodyRequired)
        #expect(Set(embed.contentTypes) == ["application/json", "image/*", "application/octet-stream"])
        let schema = try #require(doc.schema(embed.jsonSchema))
        let alternatives = (schema["oneOf"] as? [[String: Any]] ?? []).compactMap { $0["required"] as? [String] }
        #expect(Set(alternatives) == [["image_url"], ["image_base64"]])
        let missing = try await RawHTTP.send(
            port: s.port, method: "POST", target: "/api/embeddings",
            headers: [("Content-Type", "application/json")], body: Array(#"{"title": "x"}"#.utf8))
        #expect(missing.status == 400 && missing.errorCode == "invalid_request")
        // The id limit stated is the configured one (64 bytes here, not the default 256).
        let productID = try #require(op.parameters.first { $0.name == "product_id" })
        #expect(productID.description.contains("at most 64 UTF-8 bytes"), "\(productID.description)")
        let long = try await RawHTTP.send(
            port: s.port, method: "GET",
            target: "/api/recommendations/similar/\(String(repeating: "a", count: 65))")
        #expect(long.status == 400 && long.errorCode == "invalid_input")
        // The smallest image side is stated, and a 1x1 PNG is refused as the document says.
        #expect((doc.raw["paths"] as? [String: Any]).map { "\($0)" }?.contains("at least 16 px on each side") == true)
        let pixel = try await RawHTTP.send(
            port: s.port, method: "POST", target: "/api/embeddings",
            headers: [("Content-Type", "image/png")], body: FuzzImages.onePixelPNG)
        #expect(pixel.status == 422 && pixel.errorCode == "too_small", "\(pixel.text)")
    }
}

// MARK: The document, read

/// The parts of the OpenAPI document the driver needs, read from its JSON.
struct Document {
    struct Parameter {
        var name: String
        var location: String
        var required: Bool
        var type: String
        var minimum: Double?
        var maximum: Double?
        var description: String
    }

    struct Operation {
        var id: String
        var method: String
        var path: String
        var parameters: [Parameter]
        var bodyRequired: Bool
        var contentTypes: [String]
        /// The JSON body's schema name (`#/components/schemas/<name>`).
        var jsonSchema: String?
        /// Status -> its response object.
        var responses: [String: [String: Any]]
    }

    let raw: [String: Any]
    let operations: [Operation]
    let schemas: [String: Any]

    init(_ raw: [String: Any]) {
        self.raw = raw
        schemas = ((raw["components"] as? [String: Any])?["schemas"] as? [String: Any]) ?? [:]
        var ops: [Operation] = []
        for (path, item) in (raw["paths"] as? [String: Any] ?? [:]).sorted(by: { $0.key < $1.key }) {
            for (method, value) in (item as? [String: Any] ?? [:]).sorted(by: { $0.key < $1.key }) {
                guard let op = value as? [String: Any] else { continue }
                let parameters = (op["parameters"] as? [[String: Any]] ?? []).map { p -> Parameter in
                    let schema = p["schema"] as? [String: Any] ?? [:]
                    return Parameter(
                        name: p["name"] as? String ?? "", location: p["in"] as? String ?? "",
                        required: p["required"] as? Bool ?? false, type: schema["type"] as? String ?? "string",
                        minimum: (schema["minimum"] as? NSNumber)?.doubleValue,
                        maximum: (schema["maximum"] as? NSNumber)?.doubleValue,
                        description: p["description"] as? String ?? "")
                }
                let body = op["requestBody"] as? [String: Any]
                let content = body?["content"] as? [String: Any] ?? [:]
                let jsonRef =
                    ((content["application/json"] as? [String: Any])?["schema"] as? [String: Any])?["$ref"] as? String
                ops.append(
                    Operation(
                        id: op["operationId"] as? String ?? "", method: method.uppercased(), path: path,
                        parameters: parameters,
                        bodyRequired: body?["required"] as? Bool ?? false, contentTypes: content.keys.sorted(),
                        jsonSchema: jsonRef.map { String($0.split(separator: "/").last!) },
                        responses: (op["responses"] as? [String: [String: Any]]) ?? [:]))
            }
        }
        operations = ops
    }

    var methodsByPath: [String: Set<String>] {
        operations.reduce(into: [:]) { $0[$1.path, default: []].insert($1.method) }
    }

    func schema(_ name: String?) -> [String: Any]? { name.flatMap { schemas[$0] as? [String: Any] } }

    /// What is wrong with `r` as an answer of `op`, by the document.
    func problems(with r: RawHTTP.Response, for op: Operation) -> [String] {
        guard let response = op.responses[String(r.status)] else {
            return [
                "answered \(r.status), which the document does not list for \(op.id) "
                    + "(\(op.responses.keys.sorted().joined(separator: ", "))): \(r.text.prefix(300))"
            ]
        }
        var problems: [String] = []
        if r.status >= 500 && r.status != 503 { problems.append("answered \(r.status): \(r.text.prefix(300))") }
        for (name, header) in response["headers"] as? [String: [String: Any]] ?? [:]
        where header["required"] as? Bool == true {
            if r.header(name) == nil { problems.append("\(r.status) without the \(name) header the document requires") }
        }
        if op.method == "HEAD" {
            // No body (RawHTTP checks), the headers of the GET: its Content-Type and length.
            if r.header("content-length") == nil { problems.append("HEAD \(r.status) without Content-Length") }
            return problems
        }
        let content = response["content"] as? [String: Any] ?? [:]
        let type = r.header("content-type") ?? ""
        guard let (mediaType, media) = content.first(where: { type.hasPrefix($0.key) }) else {
            return problems + ["\(r.status) with Content-Type '\(type)', the document says \(content.keys.sorted())"]
        }
        if mediaType == "application/json", let schema = (media as? [String: Any])?["schema"] as? [String: Any] {
            guard let json = r.json else {
                return problems + ["\(r.status): the body is not JSON: \(r.text.prefix(200))"]
            }
            problems += validate(json, against: schema, at: "body").map { "\(r.status): \($0)" }
        }
        return problems
    }

    /// What is wrong with `r`'s body as the document's `Error`.
    func problems(errorBody r: RawHTTP.Response) -> [String] {
        guard let json = r.json else { return ["the error body is not JSON"] }
        return validate(json, against: ["$ref": "#/components/schemas/Error"], at: "body")
    }

    /// A small JSON Schema check: `$ref`, `type`, `required`, `properties`, `items`, `enum`,
    /// `minimum`, `maximum`, `allOf`: what the response schemas use.
    func validate(_ value: Any, against schema: [String: Any], at path: String) -> [String] {
        if let ref = schema["$ref"] as? String {
            guard let target = self.schema(String(ref.split(separator: "/").last!)) else {
                return ["\(path): unknown \(ref)"]
            }
            return validate(value, against: target, at: path)
        }
        var problems: [String] = []
        for sub in schema["allOf"] as? [[String: Any]] ?? [] { problems += validate(value, against: sub, at: path) }
        let kind = JSONKind.of(value)
        if let types = (schema["type"] as? [String]) ?? (schema["type"] as? String).map({ [$0] }) {
            let ok = types.contains(kind) || (kind == "integer" && types.contains("number"))
            if !ok { return problems + ["\(path) is \(kind), the document says \(types)"] }
        }
        if let options = schema["enum"] as? [Any], !options.contains(where: { "\($0)" == "\(value)" }) {
            problems.append("\(path) = \(value) is not one of the document's \(options.count) values")
        }
        if let n = value as? NSNumber, kind == "integer" || kind == "number" {
            if let min = (schema["minimum"] as? NSNumber)?.doubleValue, n.doubleValue < min {
                problems.append("\(path) < \(min)")
            }
            if let max = (schema["maximum"] as? NSNumber)?.doubleValue, n.doubleValue > max {
                problems.append("\(path) > \(max)")
            }
        }
        if let object = value as? [String: Any] {
            for name in schema["required"] as? [String] ?? [] where object[name] == nil {
                problems.append("\(path).\(name) is missing")
            }
            for (name, sub) in schema["properties"] as? [String: [String: Any]] ?? [:] {
                if let v = object[name] { problems += validate(v, against: sub, at: "\(path).\(name)") }
            }
        }
        if let array = value as? [Any], let items = schema["items"] as? [String: Any] {
            for (i, v) in array.enumerated() { problems += validate(v, against: items, at: "\(path)[\(i)]") }
        }
        return problems
    }
}

/// JSON Schema's name for what JSONSerialization made of a value.
enum JSONKind {
    static func of(_ value: Any) -> String {
        switch value {
        case is NSNull: return "null"
        case is String: return "string"
        case is [Any]: return "array"
        case is [String: Any]: return "object"
        case let n as NSNumber:
            let type = String(cString: n.objCType)
            if type == "c" || type == "B" { return "boolean" }
            return n.doubleValue.rounded() == n.doubleValue && !["f", "d"].contains(type) ? "integer" : "number"
        case is Bool: return "boolean"
        default: return "\(type(of: value))"
        }
    }
}

// MARK: Generation

/// The shared seeded generator (``TestRNG``, SplitMix64): the same seed, the same requests.
typealias SplitMix64 = TestRNG

extension TestRNG {
    mutating func chance(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &self) < p }
    mutating func pick<T>(_ options: [T]) -> T { options.randomElement(using: &self)! }
}

/// The images the generator sends: real ones the model embeds, ones the decoder refuses.
struct FuzzImages {
    /// A valid 1x1 RGBA PNG (67 bytes): decodes, but is below the smallest side.
    static let onePixelPNG = [UInt8](
        Data(
            base64Encoded:
                "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")!)

    let good: [[UInt8]]
    let bad: [[UInt8]]

    init() throws {
        good = try ["exif_orientation_1.jpg", "lossy_451x300.webp"].map { try Fixtures.bytes(Fixtures.image($0)) }
        bad =
            try [
                "tiny_8x8.png", "truncated_in_header.jpg", "text.txt", "drawing.svg", "animation.gif",
                "html_pretending_to_be.jpg", "header_60000x60000.jpg",
            ].map { try Fixtures.bytes(Fixtures.image($0)) }
            + [Self.onePixelPNG, [0xFF, 0xD8, 0xFF], Array("not an image".utf8)]
    }
}

/// One generated request, and a line that says what it was.
struct FuzzRequest {
    var method: String
    var target: String
    var headers: [(String, String)] = []
    var body: [UInt8]?
    var summary: String
}

/// Requests for one operation: inside and outside what its document allows.
struct RequestGenerator {
    let operation: Document.Operation
    let document: Document
    let images: FuzzImages
    /// Bodies made so far: the kinds take turns, so every kind reaches every route.
    private var bodies = 0

    init(operation: Document.Operation, document: Document, images: FuzzImages) {
        self.operation = operation
        self.document = document
        self.images = images
    }

    /// A request; with `valid`, one the document allows (a stored id, parameters in their
    /// bounds, a real image as the body).
    mutating func make(_ rng: inout SplitMix64, valid: Bool = false) -> FuzzRequest {
        var notes: [String] = valid ? ["valid"] : []
        var target = ""
        for segment in operation.path.split(separator: "/") {
            if segment.hasPrefix("{") {
                let id =
                    valid
                    ? rng.pick(["p01", "p07", "demo%201", "a%2Fb", "%EB%8D%B0%EB%AA%A8%20%EC%83%81%ED%92%88"])
                    : Self.pathID(&rng)
                notes.append("id=\(id.prefix(60))")
                target += "/" + id
            } else {
                target += "/" + segment
            }
        }
        var query: [String] = []
        for p in operation.parameters where p.location == "query" && rng.chance(0.5) {
            query.append("\(p.name)=\(valid ? Self.validQueryValue(p, &rng) : Self.queryValue(p, &rng))")
        }
        if !valid && rng.chance(0.1) {
            query.append(rng.pick(["zzz=1", "k=3&k=abc", "=x", "&&", "any_category", "k"]))
        }
        if !query.isEmpty { target += "?" + query.joined(separator: "&") }
        notes.append(query.isEmpty ? "no query" : "query \(query.joined(separator: "&").prefix(120))")
        var request = FuzzRequest(method: operation.method, target: target, summary: "")
        if valid && !operation.contentTypes.isEmpty {
            request.headers.append(("Content-Type", rng.pick(["image/jpeg", "application/octet-stream"])))
            request.body = rng.pick(images.good)
            notes.append("a real image as the body")
        } else if !operation.contentTypes.isEmpty {
            body(&request, &notes, &rng)
            bodies += 1
        } else if rng.chance(0.1) {
            request.headers.append(("Content-Type", "application/json"))
            request.body = Array(#"{"ignored": true}"#.utf8)
            notes.append("a body it ignores")
        }
        request.summary = notes.joined(separator: "; ")
        return request
    }

    /// A body: JSON from the schema (valid, wrong types, missing fields), JSON-ish garbage, an
    /// image or junk as the body, a body over the limit, or a content type the route refuses.
    private func body(_ request: inout FuzzRequest, _ notes: inout [String], _ rng: inout SplitMix64) {
        enum Kind: CaseIterable { case json, json2, junk, image, image2, oversized, wrongType }
        switch Kind.allCases[bodies % Kind.allCases.count] {
        case .json, .json2:
            let properties = properties(of: operation.jsonSchema)
            var object: [String: Any] = [:]
            for (name, schema) in properties.sorted(by: { $0.key < $1.key }) where rng.chance(0.3) {
                object[name] = value(name: name, schema: schema, &rng)
            }
            let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
            request.headers.append(("Content-Type", rng.pick(["application/json", "application/json; charset=utf-8"])))
            request.body = [UInt8](data)
            notes.append("JSON \(String(decoding: data.prefix(160), as: UTF8.self))")
        case .junk:
            let junk: [[UInt8]] = [
                [], Array("{".utf8), Array("[]".utf8), Array("null".utf8), Array("\"x\"".utf8), Array(#"{"k": }"#.utf8),
                Array(#"{"title": "a\u0000b"}"#.utf8), Array(#"{"k": 1e400}"#.utf8),
                Array(#"{"title": "x", "title": 3}"#.utf8),
                Array(String(repeating: "[", count: 200).utf8),
                Array(#"{"title": ""#.utf8) + [0xFF, 0xFE] + Array(#""}"#.utf8),
                (0..<64).map { _ in UInt8.random(in: 0...255, using: &rng) },
            ]
            let body = rng.pick(junk)
            if rng.chance(0.8) { request.headers.append(("Content-Type", "application/json")) }
            request.body = body
            notes.append("JSON-ish junk \(String(decoding: body.prefix(60), as: UTF8.self).debugDescription)")
        case .image, .image2:
            let type = rng.pick(["image/jpeg", "image/png", "image/webp", "application/octet-stream", "IMAGE/PNG"])
            let which = Double.random(in: 0..<1, using: &rng)
            let body = which < 0.35 ? rng.pick(images.good) : which < 0.9 ? rng.pick(images.bad) : []
            request.headers.append(("Content-Type", type))
            request.body = body
            notes.append("\(type) body of \(body.count) bytes")
        case .oversized:
            request.headers.append(("Content-Type", "image/jpeg"))
            request.body = [UInt8](repeating: 0xAB, count: (512 << 10) + 1)
            notes.append("a body over the limit")
        case .wrongType:
            let type = rng.pick([
                "text/plain", "multipart/form-data; boundary=x", "application/xml",
                "application/x-www-form-urlencoded", "application/jsonx", "*/*",
            ])
            request.headers.append(("Content-Type", type))
            request.body = Array(rng.pick(["a=b", "<x/>", #"{"title": "x"}"#, "--x--"]).utf8)
            notes.append("Content-Type \(type)")
        }
    }

    /// The properties of a (possibly `allOf`-composed) schema.
    private func properties(of name: String?) -> [String: [String: Any]] {
        guard let schema = document.schema(name) else { return [:] }
        var out = schema["properties"] as? [String: [String: Any]] ?? [:]
        for sub in schema["allOf"] as? [[String: Any]] ?? [] {
            if let ref = sub["$ref"] as? String {
                out.merge(properties(of: String(ref.split(separator: "/").last!))) { a, _ in a }
            }
        }
        return out
    }

    /// A JSON value for a property: mostly of its type (in or out of its bounds), sometimes not.
    private func value(name: String, schema: [String: Any], _ rng: inout SplitMix64) -> Any {
        if rng.chance(0.12) { return rng.pick([NSNull(), 7, "x", [1, 2], ["a": 1], true, -1.5] as [Any]) }
        switch name {
        case "image_url":
            return rng.pick([
                "http://127.0.0.1:1/a.jpg", "http://10.0.0.1/a.jpg", "http://169.254.169.254/latest/",
                "file:///etc/passwd", "ftp://127.0.0.1/a.jpg", "not a url", "", "http://[::1]/x.png",
                "http://127.0.0.1/\u{0}.jpg", "http://" + String(repeating: "a", count: 5000),
            ])
        case "image_base64":
            let which = Double.random(in: 0..<1, using: &rng)
            if which < 0.3 { return Data(rng.pick(images.good)).base64EncodedString() }
            if which < 0.7 { return Data(rng.pick(images.bad)).base64EncodedString() }
            return rng.pick(["!!!", "", "====", "QUJD", "a b c"])
        case "product_id", "exclude_product_id":
            return Self.text(&rng, ids: true)
        default:
            break
        }
        let type = (schema["type"] as? String) ?? "string"
        let min = (schema["minimum"] as? NSNumber)?.doubleValue, max = (schema["maximum"] as? NSNumber)?.doubleValue
        switch type {
        case "integer":
            let lo = Int(min ?? -5), hi = Int(max ?? 100)
            return rng.pick([
                lo, hi, Int.random(in: lo...Swift.min(hi, lo + 30), using: &rng), lo - 1, hi + 1, 0, -1, Int.max,
            ])
        case "number":
            let lo = min ?? -1, hi = max ?? 2
            return rng.pick([lo, hi, Double.random(in: lo...hi, using: &rng), lo - 0.01, hi + 0.01, -1e300, 1e300])
        case "boolean":
            return rng.chance(0.5)
        default:
            return Self.text(&rng, ids: false)
        }
    }

    /// A string for an id or text field: valid, odd but valid, or breaking the input rules.
    static func text(_ rng: inout SplitMix64, ids: Bool) -> String {
        let stored = ["p01", "p07", "p19", "demo 1", "데모 상품", "a/b", "100%"]
        let options: [String] =
            stored + [
                "no-such-product", "", " ", "x\u{0}y", "tab\there", "line\nfeed", "\u{7F}", "\u{85}", "\u{1B}[31m",
                String(repeating: "a", count: 65), String(repeating: "가", count: 1400), "코트", "down jacket", "🧥",
                "'; DROP TABLE products; --", "../../etc/passwd", "%00", "\u{FEFF}bom", "\u{202E}rtl",
            ]
        return ids && rng.chance(0.4) ? rng.pick(stored) : rng.pick(options)
    }

    /// A path segment: encoded stored ids, unknown ids, and junk (bad escapes, not UTF-8,
    /// control characters, too long).
    static func pathID(_ rng: inout SplitMix64) -> String {
        let which = Double.random(in: 0..<1, using: &rng)
        // Never empty: `/similar/` is another path (the POST route), not this one.
        if which < 0.55 { return OddIDs.encode(text(&rng, ids: true)).nonEmpty ?? "%20" }
        if which < 0.65 {
            let scalars = (0..<Int.random(in: 1...12, using: &rng)).map { _ in
                Unicode.Scalar(UInt32.random(in: 0x20...0xD7FF, using: &rng)) ?? "x"
            }
            return OddIDs.encode(String(String.UnicodeScalarView(scalars)))
        }
        return rng.pick([
            "%", "%G1", "abc%2", "%%", "%FF", "%C3%28", "%ED%A0%80", "%F8%88%80%80%80", "%00", "a%0Ab",
            "%7F", "%C2%80", "%2E%2E", "..", ".", String(repeating: "a", count: 65),
            String(repeating: "%EB%8D%B0", count: 22), "p01;x=1", "p01%3Fk%3D1", "~!$&'()*+,;=:@",
        ])
    }

    /// A query value: in the parameter's bounds, on them, past them, of the wrong type, or junk.
    static func queryValue(_ p: Document.Parameter, _ rng: inout SplitMix64) -> String {
        let junk = [
            "", "abc", "%ZZ", "%FF", "%00", "1.5", "1e3", "0x10", "true", "-0", "NaN", "inf", "%20",
            "999999999999999999999",
        ]
        if rng.chance(0.25) { return rng.pick(junk) }
        switch p.type {
        case "integer":
            let lo = Int(p.minimum ?? 0), hi = Int(p.maximum ?? 100)
            return String(rng.pick([lo, hi, Int.random(in: lo...Swift.min(hi, lo + 30), using: &rng), lo - 1, hi + 1]))
        case "number":
            let lo = p.minimum ?? 0, hi = p.maximum ?? 1
            return String(rng.pick([lo, hi, Double.random(in: lo...hi, using: &rng), lo - 0.01, hi + 0.01]))
        case "boolean":
            return rng.pick(["true", "false", "1", "0", "yes", "no", "TRUE", "maybe"])
        default:
            return OddIDs.encode(text(&rng, ids: false))
        }
    }

    /// A query value inside what the document allows.
    static func validQueryValue(_ p: Document.Parameter, _ rng: inout SplitMix64) -> String {
        switch p.type {
        case "integer":
            let lo = Int(p.minimum ?? 1), hi = Int(p.maximum ?? 100)
            return String(rng.pick([lo, hi, Int.random(in: lo...Swift.min(hi, lo + 30), using: &rng)]))
        case "number":
            let lo = p.minimum ?? 0, hi = p.maximum ?? 1
            return String(rng.pick([lo, hi, Double.random(in: lo...hi, using: &rng)]))
        case "boolean":
            return rng.pick(["true", "false"])
        default:
            return rng.pick(["coat", "down", "p03", "%EC%BD%94%ED%8A%B8"])
        }
    }

    /// `path` with each `{parameter}` replaced by a stored id.
    static func concrete(_ path: String, _ rng: inout SplitMix64) -> String {
        path.split(separator: "/").map { $0.hasPrefix("{") ? rng.pick(["p01", "demo%201", "a%2Fb"]) : String($0) }
            .reduce("") { $0 + "/" + $1 }
    }
}

extension String {
    var nonEmpty: String? { isEmpty ? nil : self }
}
