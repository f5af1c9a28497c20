import Foundation
import HummingbirdCore
import Logging
import Metrics
import NIOCore

/// What one connection may hold: a deadline for each request head, and a cap on how many
/// connections are open at once. Hummingbird's own idle timeout closes connections that sit
/// silent between requests or in a body.
///
/// The head deadline runs from the connection's start, and from the first byte of each later
/// request, to the end of that request's head (Go's `ReadHeaderTimeout`). A client that never
/// finishes its head, or sends it a byte every few seconds (slowloris), is closed when it runs
/// out; a keep-alive client that is quiet between requests is the idle timeout's business.
struct ConnectionLimits: Sendable {
    var headerTimeout: Duration
    var maxConnections: Int
    let open: BoundedCounter
    let metrics: Metrics

    /// The connection metrics, made once per server.
    struct Metrics: Sendable {
        /// `ewall_http_connections_open`
        let open: Gauge
        /// `ewall_http_connections_refused_total`: closed on arrival, over the cap.
        let refused: Counter
        /// `ewall_http_connections_header_timeouts_total`: closed with a request head unfinished.
        let headerTimeouts: Counter

        init(factory: any MetricsFactory) {
            open = Gauge(label: "ewall_http_connections_open", dimensions: [], factory: factory)
            refused = Counter(label: "ewall_http_connections_refused_total", dimensions: [], factory: factory)
            headerTimeouts = Counter(
                label: "ewall_http_connections_header_timeouts_total", dimensions: [], factory: factory)
        }
    }

    init(headerTimeout: Duration, maxConnections: Int, factory: any MetricsFactory) {
        self.headerTimeout = headerTimeout
        self.maxConnections = maxConnections
        open = BoundedCounter()
        metrics = Metrics(factory: factory)
        metrics.open.record(0)
    }
}

/// What ``RequestHeadMarker`` tells ``ConnectionGuard`` about the HTTP parts it saw.
enum RequestProgress: Sendable {
    /// A request's head is complete.
    case head
    /// A request's body is complete.
    case requestEnd
    /// A response is written to its end.
    case responseEnd
}

/// First in a connection's pipeline (before the HTTP decoder, so it sees bytes, not requests):
/// refuses the connection over the cap, and closes it when a request head is late.
///
/// Not `Sendable`: like every channel handler it lives on its channel's event loop, and its
/// deadline task is scheduled there (`assumeIsolated`).
final class ConnectionGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = IOData
    typealias OutboundOut = IOData

    private let limits: ConnectionLimits
    private let logger: Logger
    private var started = false
    /// Heads seen whose responses have not ended.
    private var openRequests = 0
    /// The latest request's body has ended, so bytes now belong to the next request.
    private var bodyEnded = true
    private var deadline: Scheduled<Void>?

    init(limits: ConnectionLimits, logger: Logger) {
        self.limits = limits
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context)
        context.fireChannelActive()
    }

    private func start(_ context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        guard let count = limits.open.enter(limit: limits.maxConnections) else {
            limits.metrics.refused.increment()
            logger.debug("connection refused: \(limits.maxConnections) are open")
            context.close(promise: nil)
            return
        }
        limits.metrics.open.record(count)
        let (open, gauge) = (limits.open, limits.metrics.open)
        context.channel.closeFuture.whenComplete { _ in gauge.record(open.leave()) }
        arm(context)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // The first bytes of a request: its head is due within the header timeout.
        if deadline == nil && (openRequests == 0 || bodyEnded) { arm(context) }
        context.fireChannelRead(data)
    }

    func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        guard let progress = event as? RequestProgress else {
            context.triggerUserOutboundEvent(event, promise: promise)
            return
        }
        switch progress {
        case .head:
            openRequests += 1
            bodyEnded = false
            deadline?.cancel()
            deadline = nil
        case .requestEnd:
            bodyEnded = true
        case .responseEnd:
            openRequests = max(0, openRequests - 1)
        }
        promise?.succeed()
    }

    private func arm(_ context: ChannelHandlerContext) {
        guard deadline == nil else { return }
        let timeout = limits.headerTimeout
        deadline = context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(timeout.inNanoseconds)) {
            self.deadline = nil
            self.limits.metrics.headerTimeouts.increment()
            self.logger.debug("closing a connection whose request head took longer than \(timeout)")
            context.close(promise: nil)
        }
    }
}

/// After the HTTP codec: tells ``ConnectionGuard`` (by an outbound user event) when a request
/// head is complete, when its body ends and when its response is written.
final class RequestHeadMarker: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPConnectionStateHandler.InboundIn
    typealias InboundOut = HTTPConnectionStateHandler.InboundOut
    typealias OutboundIn = HTTPConnectionStateHandler.OutboundIn
    typealias OutboundOut = HTTPConnectionStateHandler.OutboundOut

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head: context.triggerUserOutboundEvent(RequestProgress.head, promise: nil)
        case .end: context.triggerUserOutboundEvent(RequestProgress.requestEnd, promise: nil)
        case .body: break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let isEnd = if case .end = unwrapOutboundIn(data) { true } else { false }
        context.write(data, promise: promise)
        if isEnd { context.triggerUserOutboundEvent(RequestProgress.responseEnd, promise: nil) }
    }
}

/// Hummingbird's HTTP/1 child channel with ``ConnectionGuard`` in front of it.
struct GuardedHTTP1Channel: ServerChildChannel {
    typealias Value = HTTP1Channel.Value

    let inner: HTTP1Channel
    let limits: ConnectionLimits

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        let limits = self.limits
        return channel.eventLoop.makeCompletedFuture {
            try channel.pipeline.syncOperations.addHandler(ConnectionGuard(limits: limits, logger: logger))
        }.flatMap {
            inner.setup(channel: channel, logger: logger)
        }
    }

    func handle(value: Value, logger: Logger) async {
        await inner.handle(value: value, logger: logger)
    }
}

extension HTTPServerBuilder {
    /// HTTP/1 with a request-head deadline, an idle timeout and a cap on open connections.
    static func guardedHTTP1(limits: ConnectionLimits, idleTimeout: Duration) -> HTTPServerBuilder {
        .init { responder in
            GuardedHTTP1Channel(
                inner: HTTP1Channel(
                    responder: responder,
                    configuration: .init(
                        additionalChannelHandlers: [RequestHeadMarker()],
                        idleTimeout: .nanoseconds(idleTimeout.inNanoseconds))),
                limits: limits)
        }
    }
}
