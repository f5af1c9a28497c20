import Foundation
import HTTPTypes
import HummingbirdCore
import Logging
import Metrics
import NIOCore
import NIOHTTP1

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
    /// The current request line's length in bytes once its LF is read (`nil` before): a head
    /// too large for the decoder is a target problem (414) when the line is unfinished or
    /// itself as long as the decoder's limit, else a header problem (431).
    private(set) var requestLineBytes: Int?
    private var lineBytesSoFar = 0
    /// The current request's first bytes (its head, up to ``headPrefixLimit``), kept until its
    /// head is parsed, so a parse error can say which framing fields the head gave.
    private(set) var headPrefix: [UInt8] = []
    private var headParsed = false
    static let headPrefixLimit = 16 << 10

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
        if !headParsed && headPrefix.count < Self.headPrefixLimit {
            let bytes = unwrapInboundIn(data).readableBytesView
            headPrefix += bytes.prefix(Self.headPrefixLimit - headPrefix.count)
        }
        if requestLineBytes == nil {
            let bytes = unwrapInboundIn(data).readableBytesView
            if let lf = bytes.firstIndex(of: 0x0A) {
                requestLineBytes = lineBytesSoFar + (lf - bytes.startIndex)
            } else {
                lineBytesSoFar += bytes.count
            }
        }
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
            headParsed = true
            headPrefix = []
            deadline?.cancel()
            deadline = nil
        case .requestEnd:
            bodyEnded = true
            requestLineBytes = nil
            lineBytesSoFar = 0
            headParsed = false
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

/// After the HTTP codec, where the connection's framing is kept whole:
///
/// - a request NIO's HTTP/1 decoder cannot parse (``HTTPParserError``: an unknown method, a
///   malformed or oversized request line or header, a negative `Content-Length`,
///   `Content-Length` with `Transfer-Encoding`, another protocol's bytes) is answered with the
///   API's JSON error at the status its kind means (``answer(to:requestLineTooLong:)``), with
///   `Connection: close`, and the connection is closed: what follows cannot be told apart from
///   the rest of a request, so nothing after it is read as one;
/// - a response that says `Connection: close` (a 413 whose body was not read) closes the
///   connection once written, and nothing read after it reaches the application.
///
/// Closing is lingering: the output is shut first (the client reads the answer to its end),
/// whatever the client still sends is read and dropped, and the socket is closed
/// ``lingerTime`` later, so an unread request body does not turn the close into a reset that
/// could destroy the answer before the client reads it.
final class FramingGuard: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPConnectionStateHandler.InboundIn
    typealias InboundOut = HTTPConnectionStateHandler.InboundOut
    typealias OutboundIn = HTTPConnectionStateHandler.OutboundIn
    typealias OutboundOut = HTTPConnectionStateHandler.OutboundOut

    static let lingerTime: TimeAmount = .seconds(2)

    /// Request heads read whose responses have not ended.
    private var unanswered = 0
    /// A response head is written, its end is not.
    private var responding = false
    /// The response being written says `Connection: close`.
    private var closeAfterResponse = false
    /// The connection is closing: reads are dropped.
    private var closing = false
    private var linger: Scheduled<Void>?

    func handlerRemoved(context: ChannelHandlerContext) {
        linger?.cancel()
        linger = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if closing { return }
        if case .head(let head) = unwrapInboundIn(data) {
            // CONNECT asks for a tunnel: this is no proxy, and the decoder reads what follows as
            // tunnel bytes, so the framing is lost. NIO's encoder sends no body in an answer to
            // CONNECT, so this one is a bare 405 with `Connection: close`.
            if head.method == .connect && unanswered == 0 && !responding {
                let fields: HTTPFields = [.connection: "close", .allow: "GET, HEAD, POST"]
                closeAfterResponse = true
                context.write(
                    wrapOutboundOut(.head(HTTPResponse(status: .methodNotAllowed, headerFields: fields))), promise: nil)
                write(context: context, data: wrapOutboundOut(.end(nil)), promise: nil)
                return
            }
            unanswered += 1
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head):
            responding = true
            if head.headerFields[.connection]?.lowercased().contains("close") == true { closeAfterResponse = true }
        case .body:
            break
        case .end:
            responding = false
            unanswered = max(0, unanswered - 1)
            if closeAfterResponse {
                context.writeAndFlush(data, promise: promise)
                close(context)
                return
            }
        }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let parseError = error as? HTTPParserError else {
            context.fireErrorCaught(error)
            return
        }
        if closing { return }
        guard unanswered == 0 && !responding else {
            // In a request's body, or after it while its answer is pending: the handler reading
            // the body gets the error (a 400 from ``ErrorMiddleware``), and the connection
            // closes once that answer is written.
            closeAfterResponse = true
            context.fireErrorCaught(error)
            return
        }
        let connection = try? context.pipeline.syncOperations.handler(type: ConnectionGuard.self)
        let lineTooLong =
            connection?.requestLineBytes.map {
                $0 >= HTTP1Channel.Configuration.DecoderConfiguration().maxHeaderFieldSize
            } ?? true
        let e = Self.answer(
            to: parseError, requestLineTooLong: lineTooLong,
            framing: FramingFields(head: connection?.headPrefix ?? []))
        let body = e.jsonBody
        var fields: HTTPFields = [.contentType: "application/json; charset=utf-8", .connection: "close"]
        fields[.contentLength] = String(body.count)
        closeAfterResponse = true
        context.write(wrapOutboundOut(.head(HTTPResponse(status: e.status, headerFields: fields))), promise: nil)
        context.write(wrapOutboundOut(.body(ByteBuffer(bytes: body))), promise: nil)
        write(context: context, data: wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// Shuts the output once what is written is flushed, drops what is read, and closes the
    /// socket ``lingerTime`` later (sooner when the client closes).
    private func close(_ context: ChannelHandlerContext) {
        guard linger == nil else { return }
        closing = true
        context.close(mode: .output, promise: nil)
        linger = context.eventLoop.assumeIsolated().scheduleTask(in: Self.lingerTime) {
            context.close(promise: nil)
        }
    }

    /// The API error a parse error means, by HTTP's status for its kind. `requestLineTooLong`
    /// tells a request line too long (414) from headers too large (431); `framing` says which
    /// of the body's framing fields the head gave (llhttp reports Content-Length beside
    /// Transfer-Encoding as a bad Content-Length or an unnamed error, by their order).
    static func answer(
        to error: HTTPParserError, requestLineTooLong: Bool, framing: FramingFields = FramingFields()
    ) -> APIError {
        if framing.contentLength && framing.transferEncoding {
            switch error {
            case .unexpectedContentLength, .invalidContentLength, .unknown:
                return .badRequest(
                    "Content-Length and Transfer-Encoding may not both be given (RFC 9112 §6.3): give one")
            default: break
            }
        }
        switch error {
        case .invalidMethod:
            return APIError(
                .notImplemented, "not_implemented",
                "the request method is not one this server knows (methods are case-sensitive: GET, not get)")
        case .invalidVersion, .paused:
            return APIError(
                .httpVersionNotSupported, "http_version_not_supported",
                "this server speaks HTTP/1.1 (and 1.0) in plain text only: not HTTP/2, TLS or another version")
        case .headerOverflow where requestLineTooLong:
            return APIError(
                .uriTooLong, "uri_too_long", "the request line is longer than the server accepts")
        case .headerOverflow:
            return APIError(
                .requestHeaderFieldsTooLarge, "headers_too_large",
                "the request headers are larger, or more, than the server accepts")
        case .unexpectedContentLength:
            return .badRequest("Content-Length and Transfer-Encoding may not both be given (RFC 9112 §6.3): give one")
        case .invalidContentLength:
            return .badRequest("Content-Length is not a non-negative decimal number")
        case .unknown where framing.transferEncoding:
            return .badRequest("Transfer-Encoding must end in chunked, the only transfer coding this server reads")
        case .invalidHeaderToken:
            return .badRequest("a header's name or value holds a character HTTP does not allow there")
        case .invalidURL, .invalidPath, .invalidQueryString, .invalidFragment, .invalidHost, .invalidPort:
            return .badRequest("the request target is malformed (a byte that may not appear in a URL?)")
        case .invalidChunkSize:
            return .badRequest("a chunk of the chunked body has a malformed size")
        default:
            return .badRequest("the request is not well-formed HTTP/1.1 (a malformed request line or header)")
        }
    }
}

/// Which of the fields that frame a request's body its head gives, read from the head's raw
/// bytes (names are case-insensitive; a field name ends at its colon).
struct FramingFields: Sendable, Equatable {
    var contentLength = false
    var transferEncoding = false

    init(contentLength: Bool = false, transferEncoding: Bool = false) {
        self.contentLength = contentLength
        self.transferEncoding = transferEncoding
    }

    init(head: [UInt8]) {
        self.init()
        // Each line after the request line, up to the blank line that ends the head.
        for line in head.split(separator: 0x0A, omittingEmptySubsequences: false).dropFirst() {
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else {
                if line.isEmpty || line == [0x0D] { break }
                continue
            }
            let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
            if name == "content-length" { contentLength = true }
            if name == "transfer-encoding" { transferEncoding = true }
        }
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
                        additionalChannelHandlers: [RequestHeadMarker(), FramingGuard()],
                        idleTimeout: .nanoseconds(idleTimeout.inNanoseconds))),
                limits: limits)
        }
    }
}
