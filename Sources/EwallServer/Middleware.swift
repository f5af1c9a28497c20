import EwallML
import Foundation
import HTTPTypes
import Hummingbird
import Metrics

/// Counts requests (`ewall_http_requests_total{method,route,status}`) and times them
/// (`ewall_http_request_duration_seconds{method,route}`), by route pattern, not by URL, so
/// product ids do not multiply the series.
struct RequestMetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let factory: any MetricsFactory

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let start = ContinuousClock.now
        let response = try await next(request, context)
        let route = context.endpointPath ?? "unmatched"
        let method = request.method.rawValue
        Counter(
            label: "ewall_http_requests_total",
            dimensions: [("method", method), ("route", route), ("status", String(response.status.code))],
            factory: factory
        ).increment()
        Metrics.Timer(
            label: "ewall_http_request_duration_seconds", dimensions: [("method", method), ("route", route)],
            factory: factory
        ).recordNanoseconds((ContinuousClock.now - start).inNanoseconds)
        return response
    }
}

/// HEAD is served wherever GET is (RFC 9110 §9.3.2; ``API/register(on:)`` routes it to the
/// GET handler): this drops the body of every answer to HEAD, errors included, keeping the
/// status and headers (`Content-Length` that of the body GET would get).
struct HeadMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        guard request.method == .head else { return try await next(request, context) }
        return try await next(request, context).createHeadResponse()
    }
}

/// Refuses API requests beyond `limit` in progress with 503 `overloaded` and Retry-After, so
/// a flood queues nowhere unbounded. Health, readiness, metrics and the OpenAPI document
/// always pass.
struct InFlightLimit<Context: RequestContext>: RouterMiddleware {
    let limit: Int
    private let counter = BoundedCounter()

    init(limit: Int) { self.limit = limit }

    func handle(
        _ request: Request, context: Context, next: (Request, Context) async throws -> Response
    ) async throws -> Response {
        let path = request.uri.path
        if path == "/healthz" || path == "/readyz" || path == "/metrics" || path == "/openapi.json" {
            return try await next(request, context)
        }
        guard counter.enter(limit: limit) != nil else {
            throw APIError(
                .serviceUnavailable, "overloaded", "more than \(limit) requests are in progress; retry later",
                retryAfter: .seconds(1))
        }
        defer { _ = counter.leave() }
        return try await next(request, context)
    }
}

/// A count with a ceiling, shared across tasks and event loops: requests in progress,
/// connections open.
final class BoundedCounter: Sendable {
    private let count = Locked(0)

    /// Counts one more unless `limit` are counted already; the count after, or `nil`.
    func enter(limit: Int) -> Int? {
        count.withLock {
            guard $0 < limit else { return nil }
            $0 += 1
            return $0
        }
    }

    /// Counts one fewer; the count after.
    func leave() -> Int {
        count.withLock {
            $0 -= 1
            return $0
        }
    }
}
