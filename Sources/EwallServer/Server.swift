import EwallCore
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
    /// (default 512; health, readiness, metrics and the OpenAPI document are never refused).
    public var maxInFlight: Int
    /// Serve `POST /admin/reload-index`, to callers on loopback only (default on).
    public var adminRoutes: Bool
    /// How long a client has to finish a request head (request line and headers): from the
    /// connection's start, and from the first byte of each later request on it (default 10 s).
    /// A connection that runs out is closed, so a client that never finishes its head, or
    /// sends it a byte every few seconds, holds no socket for long.
    public var headerTimeout: Duration
    /// How long a connection may sit with nothing read while no response is being written:
    /// between keep-alive requests, or in a stalled body (default 60 s). Then it is closed.
    public var idleTimeout: Duration
    /// Connections open at once beyond which a new one is closed on arrival, and counted in
    /// `ewall_http_connections_refused_total` (default 4096). Keep it below the process's
    /// open-file limit, less what the store, the model and the index hold.
    public var maxConnections: Int

    /// 10 s: ``headerTimeout``'s default.
    public static let defaultHeaderTimeout: Duration = .seconds(10)
    /// 60 s: ``idleTimeout``'s default.
    public static let defaultIdleTimeout: Duration = .seconds(60)
    /// 4096: ``maxConnections``' default.
    public static let defaultMaxConnections = 4096

    public init(
        host: String = "127.0.0.1", port: Int = 8080, maxBodyBytes: Int = 16 << 20,
        requestTimeout: Duration = .seconds(30), maxInFlight: Int = 512, adminRoutes: Bool = true,
        headerTimeout: Duration = ServerConfiguration.defaultHeaderTimeout,
        idleTimeout: Duration = ServerConfiguration.defaultIdleTimeout,
        maxConnections: Int = ServerConfiguration.defaultMaxConnections
    ) {
        self.host = host
        self.port = port
        self.maxBodyBytes = maxBodyBytes
        self.requestTimeout = requestTimeout
        self.maxInFlight = maxInFlight
        self.adminRoutes = adminRoutes
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
        self.maxConnections = maxConnections
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
        // Outside the error middleware, so error answers to HEAD lose their bodies too.
        router.middlewares.add(HeadMiddleware<ServerContext>())
        let routes = API.routes(adminRoutes: configuration.adminRoutes)
        router.middlewares.add(ErrorMiddleware<ServerContext>(routes: RouteTable(routes.map { ($0.path, $0.method) })))
        router.middlewares.add(InFlightLimit<ServerContext>(limit: configuration.maxInFlight))
        let api = API(service: service, configuration: configuration, registry: registry)
        api.register(on: router)
        let limits = ConnectionLimits(
            headerTimeout: configuration.headerTimeout, maxConnections: configuration.maxConnections,
            factory: metrics)
        return Application(
            router: router,
            server: .guardedHTTP1(limits: limits, idleTimeout: configuration.idleTimeout),
            configuration: .init(
                address: .hostname(configuration.host, port: configuration.port), serverName: "ewall-serve"),
            services: [service],
            onServerRunning: { channel in await onRunning(channel.localAddress) },
            logger: logger)
    }

    /// The OpenAPI document of the routes `application` serves, with the default limits.
    public static func openAPIDocument(adminRoutes: Bool = true) -> [String: Any] {
        openAPIDocument(
            server: ServerConfiguration(adminRoutes: adminRoutes), limits: .init(), inputRules: InputRules())
    }

    /// The OpenAPI document of the routes `application` serves, stating the limits of `server`
    /// and of the service (`limits`, `inputRules`: an ``EwallConfiguration``'s).
    public static func openAPIDocument(
        server: ServerConfiguration, limits: EwallConfiguration.Limits,
        inputRules: InputRules
    ) -> [String: Any] {
        let documented = DocumentedLimits(server: server, limits: limits, rules: inputRules)
        return OpenAPIDocument.make(
            routes: API.routes(adminRoutes: server.adminRoutes, limits: documented), limits: documented)
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
            let handler = self.handler(for: route.operation)
            let timed = route.timed
            let limit = configuration.requestTimeout
            // HEAD wherever GET is: the same handler; ``HeadMiddleware`` drops the body.
            for method in route.method == .get ? [HTTPRequest.Method.get, .head] : [route.method] {
                router.on(RouterPath(route.path), method: method) { request, context in
                    if !timed { return try await handler(request, context) }
                    return try await withTimeout(limit) { try await handler(request, context) }
                }
            }
        }
    }

    typealias Handler = @Sendable (Request, ServerContext) async throws -> Response

    private func handler(for operation: Operation) -> Handler {
        let service = self.service
        let maxBody = configuration.maxBodyBytes
        let registry = self.registry
        let rules = service.configuration.inputRules
        switch operation {
        case .similarByProduct:
            return { request, context in
                // The router hands over the raw segment: `a%2Fb` is the id `a/b`.
                let id = try PercentEncoding.decode(
                    try context.parameters.require("product_id")[...], what: "product_id")
                let query = try SimilarParameters.query(QueryParameters(request.uri.query))
                let answer = try await service.similar(productID: id, query: query)
                return JSONResponse.make(SimilarResponse(answer, query: query, warning: service.modelWarning))
            }
        case .similarByImage:
            return { request, _ in
                let input = try await PostInput.read(request, maxBytes: maxBody, rules: rules)
                guard let image = input.image else {
                    throw APIError.badRequest("give image_url or image_base64 (or send the image bytes as the body)")
                }
                let query = try SimilarParameters.query(QueryParameters(request.uri.query), body: input.body)
                let answer = try await service.similar(
                    image: image, category: input.body.category,
                    excluding: input.body.excludeProductID, query: query)
                return JSONResponse.make(SimilarResponse(answer, query: query, warning: service.modelWarning))
            }
        case .classify:
            return { request, _ in
                let input = try await PostInput.read(request, maxBytes: maxBody, rules: rules)
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
                return try JSONResponse.make(
                    ClassifyResponse(classification: c, explanation: c.explanation, warning: warning))
            }
        case .giftCheck:
            return { request, _ in
                let input = try await PostInput.read(request, maxBytes: maxBody, rules: rules)
                guard input.body.productID == nil else {
                    throw APIError.badRequest("give a title, a price and/or an image, not product_id")
                }
                let price =
                    try input.body.price ?? SimilarParameters.number(QueryParameters(request.uri.query), "price")
                let d = try await service.checkGift(
                    title: input.body.title, brand: input.body.brand, price: price,
                    supplyPrice: input.body.supplyPrice, image: input.image)
                let warning = d.decidedBy == .image ? service.modelWarning : nil
                return try JSONResponse.make(GiftCheckResponse(decision: d, warning: warning))
            }
        case .embed:
            return { request, _ in
                let input = try await PostInput.read(request, maxBytes: maxBody, rules: rules)
                guard let image = input.image else {
                    throw APIError.badRequest("give image_url or image_base64 (or send the image bytes as the body)")
                }
                let e = try await service.embed(image)
                // JSON has no NaN or infinity: a vector that is not finite is never encoded.
                guard e.vector.allSatisfy(\.isFinite) else {
                    throw APIError(.internalServerError, "invalid_vector", "the image's vector is not finite")
                }
                return try JSONResponse.make(
                    EmbeddingResponse(
                        modelID: e.modelID, preprocessing: e.preprocessing, dimension: e.vector.count, vector: e.vector,
                        image: .init(format: e.format, width: e.width, height: e.height), warning: service.modelWarning)
                )
            }
        case .healthz:
            return { _, _ in try JSONResponse.make(["status": "ok"]) }
        case .readyz:
            return { _, _ in
                let r = await service.readiness()
                let status = service.indexStatus
                return try JSONResponse.make(
                    ReadinessResponse(
                        ready: r.ready, model: r.model, store: r.store, index: r.index, consistent: r.consistent,
                        problems: r.problems, indexCount: status.count, indexBuiltAt: status.builtAt,
                        modelID: service.modelID, pretrained: service.pretrained),
                    status: r.ready ? .ok : .serviceUnavailable)
            }
        case .metrics:
            return { _, _ in
                service.recordIndexGauges()
                var bytes: [UInt8] = []
                registry.emit(into: &bytes)
                return Response(
                    status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                    body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
            }
        case .openapi:
            // Made once: it depends on the configuration only.
            let document = EwallHTTPServer.openAPIDocument(
                server: configuration, limits: service.configuration.limits,
                inputRules: service.configuration.inputRules)
            let data = try! JSONSerialization.data(
                withJSONObject: document, options: [.sortedKeys, .withoutEscapingSlashes])
            return { _, _ in
                Response(
                    status: .ok, headers: [.contentType: "application/json; charset=utf-8"],
                    body: .init(byteBuffer: ByteBuffer(bytes: data)))
            }
        case .reloadIndex:
            return { _, context in
                guard Self.isLoopback(context.remoteAddress) else {
                    throw APIError(.forbidden, "forbidden", "admin routes answer callers on loopback only")
                }
                let status = try await service.reloadIndex()
                return try JSONResponse.make(
                    ReloadResponse(
                        reloaded: true, factory: status.factory, count: status.count,
                        builtAt: status.builtAt))
            }
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
        f.valueHistogramBuckets["ewall_similar_batch_size"] = [1, 2, 4, 8, 16, 32, 64]
        let latency: [Duration] = [1, 2, 5, 10, 20, 50, 100, 250, 500, 1000, 2500, 5000, 10000].map {
            .milliseconds($0)
        }
        f.defaultDurationHistogramBuckets = latency
        // Redis lookups are sub-millisecond on a LAN.
        f.durationHistogramBuckets["ewall_redis_lookup_seconds"] =
            [50, 100, 200, 500, 1000, 2000, 5000, 20000, 100_000].map { .microseconds($0) }
        return f
    }
}

/// Runs `body`, or throws 503 `timeout` when it takes longer than `limit` (the body is then
/// cancelled, a queued embed leaving the queue, and not awaited: a handler stuck in a call that
/// ignores cancellation cannot hold its connection past the timeout).
func withTimeout<T: Sendable>(_ limit: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withDeadline(
        limit,
        timedOut: {
            APIError(
                .serviceUnavailable, "timeout", "the request took longer than \(limit) and was abandoned",
                retryAfter: .seconds(1))
        }, body)
}
