import EwallTestSupport
import Foundation
import Testing

@testable import EwallServer

/// The edges of HTTP itself: requests the decoder cannot parse, a body too large, HEAD,
/// media types, repeated parameters and keys, empty path segments.
@Suite("ewall-serve: HTTP framing, HEAD and media types", .serialized)
struct ProtocolEdgeTests {
    static let server = Task<RunningServer, any Error> { try await RunningServer.start() }

    /// Writes `bytes` on a fresh connection and waits for the server to close it.
    static func exchange(_ s: RunningServer, _ bytes: [UInt8]) async throws -> (RawHTTP.Response, closed: Bool) {
        let c = try await RawConnection.open(port: s.port)
        try? await c.send(bytes)
        let closed = await c.waitForClose(timeout: .seconds(5))
        if !closed { await c.close() }
        return (try RawHTTP.parse(c.receivedBytes), closed)
    }

    static func request(_ line: String, headers: [String] = ["Host: 127.0.0.1"]) -> [UInt8] {
        Array((([line] + headers).joined(separator: "\r\n") + "\r\n\r\n").utf8)
    }

    static let malformed: [(String, [UInt8], Int, String)] = [
        ("an unknown method", request("FOO /healthz HTTP/1.1"), 501, "not_implemented"),
        ("a lowercase method", request("get /healthz HTTP/1.1"), 501, "not_implemented"),
        (
            "a negative Content-Length",
            request("POST /api/embeddings HTTP/1.1", headers: ["Host: x", "Content-Length: -5"]), 400,
            "invalid_request"
        ),
        (
            "Content-Length with Transfer-Encoding",
            request(
                "POST /api/embeddings HTTP/1.1",
                headers: ["Host: x", "Content-Length: 5", "Transfer-Encoding: chunked"]) + Array("0\r\n\r\n".utf8), 400,
            "invalid_request"
        ),
        (
            "a raw 0xFF in the path", Array("GET /heal".utf8) + [0xFF] + Array("thz HTTP/1.1\r\nHost: x\r\n\r\n".utf8),
            400,
            "invalid_request"
        ),
        ("a 100 KB path", request("GET /" + String(repeating: "a", count: 100_000) + " HTTP/1.1"), 414, "uri_too_long"),
        (
            "a 1 MB header",
            request("GET /healthz HTTP/1.1", headers: ["Host: x", "X-Big: " + String(repeating: "b", count: 1 << 20)]),
            431, "headers_too_large"
        ),
        (
            "10k headers", request("GET /healthz HTTP/1.1", headers: ["Host: x"] + (0..<10_000).map { "X-H\($0): v" }),
            431,
            "headers_too_large"
        ),
        ("an HTTP/2 preface", Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8), 505, "http_version_not_supported"),
        ("HTTP/9.9", request("GET /healthz HTTP/9.9"), 505, "http_version_not_supported"),
        (
            "TLS bytes",
            [0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03] + [UInt8](repeating: 0x42, count: 32),
            501, "not_implemented"
        ),
    ]

    @Test(
        "Malformed HTTP answers the JSON error at its kind's status, with Connection: close, then closes",
        arguments: malformed)
    func malformedHTTP(_ what: String, _ bytes: [UInt8], _ status: Int, _ code: String) async throws {
        let s = try await Self.server.value
        let (r, closed) = try await Self.exchange(s, bytes)
        #expect(r.status == status, "\(what): \(r.status) \(r.text)")
        #expect(r.errorCode == code, "\(what): \(r.text)")
        #expect(r.header("connection")?.lowercased() == "close", "\(what)")
        #expect(r.header("content-type")?.hasPrefix("application/json") == true, "\(what)")
        #expect(closed, "\(what): the connection stayed open")
        #expect(try await HTTP.call(.GET, "\(s.base)/healthz").status == 200)
    }

    @Test(
        "Content-Length beside Transfer-Encoding is named as such in either order (llhttp reports each order apart)",
        arguments: [
            ["Content-Length: 5", "Transfer-Encoding: chunked"], ["transfer-encoding: chunked", "content-length: 5"],
        ]
    )
    func contentLengthWithTransferEncoding(_ fields: [String]) async throws {
        let s = try await Self.server.value
        let bytes =
            Self.request("POST /api/embeddings HTTP/1.1", headers: ["Host: x"] + fields) + Array("0\r\n\r\n".utf8)
        let (r, closed) = try await Self.exchange(s, bytes)
        #expect(r.status == 400 && r.errorCode == "invalid_request", "\(r.status) \(r.text)")
        #expect(r.errorMessage.contains("Content-Length and Transfer-Encoding may not both be given"), "\(r.text)")
        #expect(closed)
    }

    @Test("The framing fields are read from a head's raw bytes: any case, header lines only")
    func framingFields() {
        func fields(_ text: String) -> FramingFields { FramingFields(head: Array(text.utf8)) }
        #expect(fields("POST / HTTP/1.1\r\nCONTENT-LENGTH: 5\r\n\r\n") == FramingFields(contentLength: true))
        #expect(
            fields("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nContent-Length: 1\r\n")
                == FramingFields(contentLength: true, transferEncoding: true))
        // A field name in the target or in the body is no field.
        #expect(fields("GET /content-length: HTTP/1.1\r\nHost: x\r\n\r\ntransfer-encoding: x\r\n") == FramingFields())
        #expect(fields("") == FramingFields())
    }

    @Test("CONNECT answers 405 with Connection: close (no body: NIO sends none to CONNECT), then closes")
    func connect() async throws {
        let s = try await Self.server.value
        let (r, closed) = try await Self.exchange(
            s, Self.request("CONNECT 127.0.0.1:443 HTTP/1.1", headers: ["Host: 127.0.0.1:443"]))
        #expect(r.status == 405, "\(r.status) \(r.headers) \(r.text)")
        #expect(r.header("connection")?.lowercased() == "close")
        #expect(closed)
    }

    @Test("A body over the limit is 413 with Connection: close, and nothing after it is read as a request")
    func tooLargeCloses() async throws {
        let s = try await Self.server.value
        // Keep-alive (no Connection: close); the declared body is over the 2 MiB limit, and
        // what would follow it, were the body skipped, is a request of its own.
        let smuggled = Array("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".utf8)
        let body = [UInt8](repeating: 0xAB, count: 3 << 20)
        let head = Array(
            "POST /api/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: \(1 << 20)\r\n\r\n"
                .utf8)
        let c = try await RawConnection.open(port: s.port)
        let started = ContinuousClock.now
        try? await c.send(head + Array(body.prefix(1 << 20)))
        // The body as declared is 1 MiB; send a second, over-limit request on the same connection.
        let over = Array(
            "POST /api/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: \(3 << 20)\r\n\r\n"
                .utf8)
        try? await c.send(over + Array(body.prefix(1 << 20)) + smuggled)
        try? await c.send(Array(body.prefix(1 << 20)))
        let closed = await c.waitForClose(timeout: .seconds(10))
        #expect(closed, "the connection stayed open after the 413")
        #expect(ContinuousClock.now - started < .seconds(10))
        let text = String(decoding: c.receivedBytes, as: UTF8.self)
        let statuses = text.components(separatedBy: "HTTP/1.1 ").dropFirst().map { $0.prefix(3) }
        #expect(statuses == ["422", "413"], "\(statuses)")
        let answers = text.components(separatedBy: "HTTP/1.1 413")
        let last = try RawHTTP.parse(Array(("HTTP/1.1 413" + (answers.last ?? "")).utf8))
        #expect(last.header("connection")?.lowercased() == "close")
        #expect(last.errorCode == "body_too_large")
        if !closed { await c.close() }
    }

    @Test(
        "HEAD is served wherever GET is: GET's status and headers, Content-Length included, no body",
        arguments: ["/healthz", "/readyz", "/openapi.json", "/api/recommendations/similar/p01?k=3"])
    func head(_ target: String) async throws {
        let s = try await Self.server.value
        let get = try await RawHTTP.send(port: s.port, method: "GET", target: target)
        // RawHTTP refuses a HEAD answer with a body.
        let head = try await RawHTTP.send(port: s.port, method: "HEAD", target: target)
        #expect(head.status == get.status, "\(target)")
        #expect(head.header("content-type") == get.header("content-type"), "\(target)")
        #expect(head.header("content-length") == String(get.body.count), "\(target)")
        #expect(head.body.isEmpty)
    }

    @Test("HEAD on a path that serves no GET is 405 with the path's Allow, no body; Allow lists HEAD beside GET")
    func headElsewhere() async throws {
        let s = try await Self.server.value
        let r = try await RawHTTP.send(port: s.port, method: "HEAD", target: "/api/embeddings")
        #expect(r.status == 405 && r.header("allow") == "POST" && r.body.isEmpty)
        let unknown = try await RawHTTP.send(port: s.port, method: "HEAD", target: "/nothing")
        #expect(unknown.status == 404 && unknown.body.isEmpty)
        let metrics = try await RawHTTP.send(port: s.port, method: "HEAD", target: "/metrics")
        #expect(metrics.status == 200 && metrics.header("content-type")?.hasPrefix("text/plain") == true)
        let delete = try await RawHTTP.send(port: s.port, method: "DELETE", target: "/healthz")
        #expect(delete.status == 405 && delete.header("allow") == "GET, HEAD")
    }

    @Test(
        "A JSON body under any type but application/json (UTF-8), or none, is 415 on every POST route",
        arguments: [
            "/api/recommendations/classify", "/api/embeddings", "/api/recommendations/similar",
        ])
    func mediaTypes(_ path: String) async throws {
        let s = try await Self.server.value
        let json = Array(#"{"title": "울 코트", "image_url": "http://127.0.0.1:1/x.jpg"}"#.utf8)
        for type in [
            nil, "application/x-www-form-urlencoded", "text/plain", "application/json; charset=latin1",
            "application/json; charset=ISO-8859-1", "application/jsonx", "multipart/form-data; boundary=x",
        ] {
            let r = try await RawHTTP.send(
                port: s.port, method: "POST", target: path, headers: type.map { [("Content-Type", $0)] } ?? [],
                body: json)
            #expect(r.status == 415, "\(path) as \(type ?? "no type"): \(r.status) \(r.text)")
            #expect(r.errorCode == "unsupported_media_type", "\(path) as \(type ?? "no type")")
        }
        for type in ["application/json", "application/json; charset=utf-8", "Application/JSON; Charset=\"UTF-8\""] {
            let r = try await RawHTTP.send(
                port: s.port, method: "POST", target: path, headers: [("Content-Type", type)], body: json)
            #expect(r.status != 415, "\(path) as \(type): \(r.text)")
        }
    }

    @Test("A repeated query parameter and a repeated JSON key are refused; an empty image_base64 says so")
    func repeats() async throws {
        let s = try await Self.server.value
        let k = try await RawHTTP.send(
            port: s.port, method: "GET", target: "/api/recommendations/similar/p01?k=1&k=2000")
        #expect(k.status == 400 && k.errorCode == "invalid_request")
        #expect(k.errorMessage.contains("k is given more than once"), "\(k.text)")
        for json in [#"{"title": "a", "title": "b"}"#, #"{"title": "a", "brand": "b", "brand": "c"}"#] {
            let r = try await RawHTTP.send(
                port: s.port, method: "POST", target: "/api/recommendations/classify",
                headers: [("Content-Type", "application/json")], body: Array(json.utf8))
            #expect(r.status == 400 && r.errorMessage.contains("more than once"), "\(json): \(r.text)")
        }
        let fine = try await RawHTTP.send(
            port: s.port, method: "POST", target: "/api/recommendations/classify",
            headers: [("Content-Type", "application/json")],
            body: Array(#"{"title": "a, \"title\": b", "brand": "title"}"#.utf8))
        #expect(fine.status == 200, "\(fine.text)")
        let empty = try await RawHTTP.send(
            port: s.port, method: "POST", target: "/api/embeddings",
            headers: [("Content-Type", "application/json")], body: Array(#"{"image_base64": ""}"#.utf8))
        #expect(empty.status == 400 && empty.errorMessage.contains("image_base64 is empty"), "\(empty.text)")
    }

    @Test(
        "Empty path segments are served by no route: //api//... is 404",
        arguments: [
            "//api//recommendations/similar/p01", "/api//recommendations/similar/p01", "//healthz",
        ])
    func emptySegments(_ target: String) async throws {
        let s = try await Self.server.value
        let r = try await RawHTTP.send(port: s.port, method: "GET", target: target)
        #expect(r.status == 404 && r.errorCode == "route_not_found", "\(target): \(r.status)")
    }
}
