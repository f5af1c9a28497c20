import EwallML
import Foundation
import HTTPTypes
import Hummingbird
import NIOHTTP1

/// An error as the API returns it: `{"error": {"code": ..., "message": ...}}` with a status.
///
/// The codes are stable (clients branch on them); ``OpenAPIDocument`` lists every one.
struct APIError: Error, Sendable {
    var status: HTTPResponse.Status
    var code: String
    var message: String
    var retryAfter: Duration?
    /// For 405: the methods the path serves (the `Allow` header).
    var allow: [HTTPRequest.Method] = []

    init(_ status: HTTPResponse.Status, _ code: String, _ message: String, retryAfter: Duration? = nil) {
        self.status = status
        self.code = code
        self.message = message
        self.retryAfter = retryAfter
    }

    /// The library's error, at the status its kind means.
    init(_ e: EwallError) {
        self.init(
            Self.status(e.kind), e.code, e.message,
            retryAfter: e.retryAfter ?? (e.kind == .unavailable ? .seconds(5) : nil))
    }

    /// Any EwallML error at the status its kind means (``FailureKind/httpStatus``).
    init(_ e: any EwallFailure) {
        if let e = e as? EwallError {
            self.init(e)
        } else {
            self.init(Self.status(e.kind), e.failureCode, e.message)
        }
    }

    /// ``FailureKind/httpStatus`` as HTTPTypes' named status (with its reason phrase).
    static func status(_ kind: FailureKind) -> HTTPResponse.Status {
        switch kind.httpStatus {
        case 400: .badRequest
        case 404: .notFound
        case 422: .unprocessableContent
        case 503: .serviceUnavailable
        default: .internalServerError
        }
    }

    static func badRequest(_ message: String) -> APIError { APIError(.badRequest, "invalid_request", message) }

    /// A value that breaks the ``InputRules`` (an id, URL or text field): 400 `invalid_input`.
    static func invalidInput(_ reason: String) -> APIError { APIError(.badRequest, "invalid_input", reason) }

    /// 405 `method_not_allowed`, with `Allow` listing the methods `path` serves.
    static func methodNotAllowed(_ method: HTTPRequest.Method, path: String, allow: [HTTPRequest.Method]) -> APIError {
        var e = APIError(
            .methodNotAllowed, "method_not_allowed",
            "\(method) is not served on \(path); it serves \(allow.map(\.rawValue).joined(separator: ", "))")
        e.allow = allow
        return e
    }

    /// The body: `{"error": {"code": ..., "message": ...}}`.
    var jsonBody: Data {
        try! JSONSerialization.data(
            withJSONObject: ["error": ["code": code, "message": message]],
            options: [.sortedKeys, .withoutEscapingSlashes])
    }

    func response() -> Response {
        var headers: HTTPFields = [.contentType: "application/json; charset=utf-8"]
        // Every 503 says when to retry (the OpenAPI document requires it).
        if let retryAfter = retryAfter ?? (status == .serviceUnavailable ? .seconds(1) : nil) {
            let seconds = max(1, Int(retryAfter.inSeconds.rounded(.up)))
            headers[.retryAfter] = String(seconds)
        }
        if !allow.isEmpty { headers[.allow] = allow.map(\.rawValue).joined(separator: ", ") }
        // The body was not read to its end: the connection's framing is lost, so it closes.
        if status == .contentTooLarge { headers[.connection] = "close" }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: jsonBody)))
    }

    /// The codes this server can answer with, by status (for the OpenAPI document and its test).
    static let codes: [String: [String]] = [
        "400": ["invalid_request", "invalid_input", "invalid_url"],
        "403": ["forbidden"],
        "404": ["unknown_product", "no_vector", "route_not_found"],
        "405": ["method_not_allowed"],
        "413": ["body_too_large"],
        "414": ["uri_too_long"],
        "415": ["unsupported_media_type"],
        "431": ["headers_too_large"],
        "422": [
            "blocked_url", "fetch_failed", "not_an_image", "unsupported_format", "truncated", "corrupt",
            "too_many_pixels",
            "too_small", "too_large", "unreadable", "out_of_memory",
        ],
        "500": ["internal", "index_error", "classifier_error", "model_error", "invalid_vector", "bad_model_output"],
        "501": ["not_implemented"],
        "503": [
            "overloaded", "timeout", "index_unavailable", "model_mismatch", "store_unavailable", "shutting_down",
            "model_unavailable", "gift_rules_unavailable",
        ],
        "505": ["http_version_not_supported"],
    ]
}

/// Turns every error a handler throws into the JSON error shape, unknown routes into
/// `route_not_found`, and a method a known path does not serve into 405 `method_not_allowed`
/// with `Allow` (Hummingbird's router answers both with 404).
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    let routes: RouteTable

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        // The router would read `//api//embeddings` as `/api/embeddings`; no route has an
        // empty segment, so such a path is served by none.
        if request.uri.path.contains("//") {
            return APIError(.notFound, "route_not_found", "no route \(request.method) \(request.uri.path)").response()
        }
        do {
            return try await next(request, context)
        } catch let e as APIError {
            return e.response()
        } catch let e as EwallError {
            return APIError(e).response()
        } catch let e as any HTTPResponseError {
            switch e.status {
            case .notFound:
                let allow = routes.methods(serving: request.uri.path)
                if !allow.isEmpty && !allow.contains(request.method) {
                    return APIError.methodNotAllowed(request.method, path: request.uri.path, allow: allow).response()
                }
                return APIError(.notFound, "route_not_found", "no route \(request.method) \(request.uri.path)")
                    .response()
            case .contentTooLarge:
                return APIError(
                    .contentTooLarge, "body_too_large", "the request body is larger than the server accepts"
                ).response()
            case .methodNotAllowed:
                return APIError(
                    .methodNotAllowed, "method_not_allowed", "\(request.method) is not allowed on \(request.uri.path)"
                ).response()
            default:
                return APIError(e.status, e.status.code < 500 ? "invalid_request" : "internal", e.status.reasonPhrase)
                    .response()
            }
        } catch let e as HTTPParserError {
            // The body could not be parsed (a malformed chunk): the connection closes after this.
            var response = FramingGuard.answer(to: e, requestLineTooLong: false).response()
            response.headers[.connection] = "close"
            return response
        } catch is DecodingError {
            return APIError.badRequest("the request body is not the JSON this route takes").response()
        } catch {
            context.logger.error("unhandled error on \(request.method) \(request.uri.path): \(error)")
            return APIError(.internalServerError, "internal", "internal error").response()
        }
    }
}

/// The served routes' methods by path pattern, to say which methods a path serves.
struct RouteTable: Sendable {
    private let routes: [(segments: [Substring], method: HTTPRequest.Method)]

    /// HEAD is served wherever GET is (``HeadMiddleware``), so a GET route serves it too.
    init(_ routes: [(path: String, method: HTTPRequest.Method)]) {
        self.routes = routes.flatMap { route in
            (route.method == .get ? [HTTPRequest.Method.get, .head] : [route.method]).map {
                (Self.segments(route.path), $0)
            }
        }
    }

    /// The methods served on `path` (a request path; `{name}` in a pattern matches any one
    /// segment), in a stable order; empty when no route has that path.
    func methods(serving path: String) -> [HTTPRequest.Method] {
        let segments = Self.segments(path)
        var methods: [HTTPRequest.Method] = []
        for r in routes where r.segments.count == segments.count && !methods.contains(r.method) {
            let matches = zip(r.segments, segments).allSatisfy { pattern, segment in
                (pattern.first == "{" && pattern.last == "}") || pattern == segment
            }
            if matches { methods.append(r.method) }
        }
        return methods.sorted { $0.rawValue < $1.rawValue }
    }

    private static func segments(_ path: String) -> [Substring] {
        let end = path.firstIndex(where: { $0 == "?" || $0 == "#" }) ?? path.endIndex
        return path[..<end].split(separator: "/")
    }
}
