import EwallML
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import Metrics
import NIOCore
import Prometheus
import ServiceLifecycle

/// How `ewall-serve` listens and what one request may cost.
public struct ServerConfiguration: Sendable {
    public var host: String
    /// 0 picks a free port (printed when listening).
    public var port: Int
    /// Request bodies above this are refused with 413 `body_too_large` (default 16 MiB: a
    /// 10 MiB image as base64 JSON fits).
    public var maxBodyBytes: Int
    /// Requests still running after this answer 503 `timeout` (default 30 s).
    public var requestTimeout: Duration
    /// API requests in progress beyond which new ones answer 503 `overloaded` at once
    /// (default 512; health, readiness and metrics are never refused).
    public var maxInFlight: Int
    /// Serve `POST /admin/reload-index`, to callers on loopback only (default on).
    public var adminRoutes: Bool

    public init(host: String = "127.0.0.1", port: Int = 8080, maxBodyBytes: Int = 16 << 20,
                requestTimeout: Duration = .seconds(30), maxInFlight: Int = 512, adminRoutes: Bool = true) {
        self.host = host
        self.port = port
        self.maxBodyBytes = maxBodyBytes
        self.requestTimeout = requestTimeout
        self.maxInFlight = maxInFlight
        self.adminRoutes = adminRoutes
    }
}

/// The request context: Hummingbird's, plus the caller's address (admin routes are loopback-only).
public struct ServerContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

/// `ewall-serve`'s HTTP API over an ``EwallService``, built only on EwallML's public API.
///
/// ```swift
/// let registry = PrometheusCollectorRegistry()
/// let service = try await EwallService(configuration: config, metrics: PrometheusMetricsFactory(registry: registry))
/// let app = EwallHTTPServer.application(service: service, configuration: ServerConfiguration(port: 8080), registry: registry)
/// try await app.runService()   // SIGTERM/SIGINT: stop accepting, finish in-flight requests, drain the batcher
/// ```
public enum EwallHTTPServer {
    /// The Hummingbird application: routes, limits, metrics and the OpenAPI document, with
    /// `service` run (and shut down last) by the application's service group.
    public static func application(
        service: EwallService, configuration: ServerConfiguration, registry: PrometheusCollectorRegistry,
        logger: Logger = Logger(label: "ewall-serve"),
        onRunning: @escaping @Sendable (SocketAddress?) async -> Void = { _ in }
    ) -> some ApplicationProtocol {
        let metrics = PrometheusMetricsFactory.forEwall(registry: registry)
        let router = Router(context: ServerContext.self)
        router.middlewares.add(RequestMetricsMiddleware<ServerContext>(factory: metrics))
        router.middlewares.add(ErrorMiddleware<ServerContext>())
        router.middlewares.add(InFlightLimit<ServerContext>(limit: configuration.maxInFlight))
        let api = API(service: service, configuration: configuration, registry: registry)
        api.register(on: router)
        return Application(
            router: router,
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "ewall-serve"),
            services: [service],
            onServerRunning: { channel in await onRunning(channel.localAddress) },
            logger: logger)
    }

    /// The OpenAPI document of the routes `application` serves.
    public static func openAPIDocument(adminRoutes: Bool = true) -> [String: Any] {
        OpenAPIDocument.make(routes: API.routes(adminRoutes: adminRoutes))
    }
}

/// The routes. Each is declared once, in ``routes(adminRoutes:)``, which both registers it and
/// describes it in the OpenAPI document, so the two cannot disagree.
struct API: Sendable {
    let service: EwallService
    let configuration: ServerConfiguration
    let registry: PrometheusCollectorRegistry

    func register(on router: Router<ServerContext>) {
        for route in Self.routes(adminRoutes: configuration.adminRoutes) {
            let handler = self.handler(for: route.operationID)
            let timed = route.timed
            let limit = configuration.requestTimeout
            router.on(RouterPath(route.path), method: route.method) { request, context in
                if !timed { return try await handler(request, context) }
                return try await withTimeout(limit) { try await handler(request, context) }
            }
        }
    }

    typealias Handler = @Sendable (Request, ServerContext) async throws -> Response

    private func handler(for operation: String) -> Handler {
        let service = self.service
        let maxBody = configuration.maxBodyBytes
        let registry = self.registry
        switch operation {
        case "similarByProduct":
            return { request, context in
                let id = try context.parameters.require("product_id")
                let query = try SimilarParameters.query(request.uri.queryParameters)
                let answer = try await service.similar(productID: id, query: query)
                return try JSONResponse.make(SimilarResponse(answer, query: query, status: service.indexStatus,
                                                             warning: service.modelWarning))
            }
        case "similarByImage":
            return { request, _ in
                let input = try await PostInput.read(request, maxBytes: maxBody)
                guard let image = input.image else {
                    throw APIError.badRequest("give image_url or image_base64 (or send the image bytes as the body)")
                }
                let query = try SimilarParameters.query(request.uri.queryParameters, body: input.body)
                let answer = try await service.similar(image: image, category: input.body.category,
                                                       excluding: input.body.excludeProductID, query: query)
                return try JSONResponse.make(SimilarResponse(answer, query: query, status: service.indexStatus,
                                                             warning: service.modelWarning))
            }
        case "classify":
            return { request, _ in
                let input = try await PostInput.read(request, maxBytes: maxBody)
                let c: Classification
                if let id = input.body.productID {
                    guard input.image == nil && input.body.title == nil else {
                        throw APIError.badRequest("give product_id alone, or a title and/or an image")
                    }
                    c = try await service.classify(productID: id)
                } else {
                    c = try await service.classify(title: input.body.title, brand: input.body.brand, image: input.image)
                }
                let warning = c.decidedBy == .embedding ? service.modelWarning : nil
                return try JSONResponse.make(ClassifyResponse(classification: c, explanation: c.explanation, warning: warning))
            }
        case "embed":
            return { request, _ in
                let input = try await PostInput.read(request, maxBytes: maxBody)
                guard let image = input.image else {
                    throw APIError.badRequest("give image_url or image_base64 (or send the image bytes as the body)")
                }
                let e = try await service.embed(image)
                return try JSONResponse.make(EmbeddingResponse(
                    modelID: e.modelID, preprocessing: e.preprocessing, dimension: e.vector.count, vector: e.vector,
                    image: .init(format: e.format, width: e.width, height: e.height), warning: service.modelWarning))
            }
        case "healthz":
            return { _, _ in try JSONResponse.make(["status": "ok"]) }
        case "readyz":
            return { _, _ in
                let r = await service.readiness()
                let status = service.indexStatus
                return try JSONResponse.make(
                    ReadinessResponse(ready: r.ready, model: r.model, store: r.store, index: r.index, consistent: r.consistent,
                                      problems: r.problems, indexCount: status.count, indexBuiltAt: status.builtAt,
                                      modelID: service.modelID, pretrained: service.pretrained),
                    status: r.ready ? .ok : .serviceUnavailable)
            }
        case "metrics":
            return { _, _ in
                service.recordIndexGauges()
                var bytes: [UInt8] = []
                registry.emit(into: &bytes)
                return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                                body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
            }
        case "openapi":
            let adminRoutes = configuration.adminRoutes
            return { _, _ in
                let data = try JSONSerialization.data(withJSONObject: EwallHTTPServer.openAPIDocument(adminRoutes: adminRoutes),
                                                      options: [.sortedKeys, .withoutEscapingSlashes])
                return Response(status: .ok, headers: [.contentType: "application/json; charset=utf-8"],
                                body: .init(byteBuffer: ByteBuffer(bytes: data)))
            }
        case "reloadIndex":
            return { _, context in
                guard Self.isLoopback(context.remoteAddress) else {
                    throw APIError(.forbidden, "forbidden", "admin routes answer callers on loopback only")
                }
                let status = try await service.reloadIndex()
                return try JSONResponse.make(ReloadResponse(reloaded: true, factory: status.factory, count: status.count,
                                                            builtAt: status.builtAt))
            }
        default:
            preconditionFailure("no handler for \(operation)")
        }
    }

    static func isLoopback(_ address: SocketAddress?) -> Bool {
        switch address {
        case .v4(let a)?: return a.host.hasPrefix("127.")
        case .v6(let a)?: return a.host == "::1" || a.host.hasPrefix("::ffff:127.")
        case .unixDomainSocket?: return true
        default: return false
        }
    }
}

extension PrometheusMetricsFactory {
    /// A factory with buckets that suit EwallML's metrics (batch sizes 1...32, latencies from
    /// 1 ms). Give the same one to ``EwallService`` and the server.
    public static func forEwall(registry: PrometheusCollectorRegistry) -> PrometheusMetricsFactory {
        var f = PrometheusMetricsFactory(registry: registry)
        f.valueHistogramBuckets["ewall_embed_batch_size"] = [1, 2, 4, 8, 12, 16, 24, 32, 64]
        let latency: [Duration] = [1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 2500, 5000, 10000].map { .milliseconds($0) }
        f.defaultDurationHistogramBuckets = latency
        return f
    }
}

/// Runs `body`, or throws 503 `timeout` when it takes longer than `limit` (the body is then
/// cancelled: a queued embed leaves the queue).
func withTimeout<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            throw APIError(.serviceUnavailable, "timeout", "the request took longer than \(limit) and was abandoned",
                           retryAfter: .seconds(1))
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}
