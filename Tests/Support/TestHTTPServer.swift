import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A real HTTP/1.1 server on a loopback port, started by the tests themselves, whose answers
/// are chosen per request by a closure: good images, 404, 500-then-200, 429 with Retry-After,
/// slow answers, oversized bodies, redirect loops, HTML pretending to be JPEG...
///
/// It counts requests per path and the most requests in flight at once (per-host limit tests).
public final class TestHTTPServer: Sendable {
    /// One answer.
    public struct Response: Sendable {
        public var status: Int
        public var headers: [(String, String)]
        public var body: [UInt8]
        /// Wait this long before sending the head.
        public var delay: Duration
        /// Send the body in chunks (no Content-Length).
        public var chunked: Bool

        public init(
            status: Int = 200, headers: [(String, String)] = [], body: [UInt8] = [], delay: Duration = .zero,
            chunked: Bool = false
        ) {
            self.status = status
            self.headers = headers
            self.body = body
            self.delay = delay
            self.chunked = chunked
        }

        public static func file(_ path: String, contentType: String = "image/jpeg") -> Response {
            let bytes = FileManager.default.contents(atPath: path).map { [UInt8]($0) } ?? []
            return Response(status: bytes.isEmpty ? 404 : 200, headers: [("Content-Type", contentType)], body: bytes)
        }
    }

    /// What the handler is told about a request.
    public struct Request: Sendable {
        public var path: String
        /// 1 for the first request to this path, 2 for the second...
        public var hit: Int
        public var headers: [(String, String)]
    }

    public let port: Int
    /// The address it listens on (127.0.0.1 unless a test host network gives another).
    public let host: String
    private let channel: any Channel
    private let state: NIOLockedValueBox<State>

    struct State {
        var hits: [String: Int] = [:]
        var times: [String: [ContinuousClock.Instant]] = [:]
        var inFlight = 0
        var maxInFlight = 0
        var userAgents: Set<String> = []
    }

    /// Starts the server on `host` (127.0.0.1 by default), a free port.
    public init(host: String = "127.0.0.1", handler: @escaping @Sendable (Request) -> Response) throws {
        self.host = host
        let state = NIOLockedValueBox(State())
        self.state = state
        let bootstrap = ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(ChannelOptions.backlog, value: 256)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMap {
                    channel.pipeline.addHandler(Handler(handler: handler, state: state))
                }
            }
        channel = try bootstrap.bind(host: host, port: 0).wait()
        port = channel.localAddress!.port!
    }

    public func url(_ path: String) -> String { "http://\(host):\(port)\(path.hasPrefix("/") ? path : "/" + path)" }

    public func hits(_ path: String) -> Int { state.withLockedValue { $0.hits[path, default: 0] } }
    public func times(_ path: String) -> [ContinuousClock.Instant] {
        state.withLockedValue { $0.times[path, default: []] }
    }
    public var totalHits: Int { state.withLockedValue { $0.hits.values.reduce(0, +) } }
    public var maxInFlight: Int { state.withLockedValue { $0.maxInFlight } }
    public var userAgents: Set<String> { state.withLockedValue { $0.userAgents } }

    public func shutdown() {
        try? channel.close().wait()
    }

    /// Safe because: NIO calls a handler on its channel's event loop only; shared state lives in the server, behind its own lock.
    private final class Handler: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        let handler: @Sendable (Request) -> Response
        let state: NIOLockedValueBox<State>
        var head: HTTPRequestHead?

        init(handler: @escaping @Sendable (Request) -> Response, state: NIOLockedValueBox<State>) {
            self.handler = handler
            self.state = state
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            switch unwrapInboundIn(data) {
            case .head(let h): head = h
            case .body: break
            case .end:
                guard let head else { return }
                let path = String(head.uri.split(separator: "?", maxSplits: 1).first ?? "")
                let hit: Int = state.withLockedValue { s in
                    s.hits[path, default: 0] += 1
                    s.times[path, default: []].append(.now)
                    s.inFlight += 1
                    s.maxInFlight = max(s.maxInFlight, s.inFlight)
                    if let ua = head.headers.first(name: "user-agent") { s.userAgents.insert(ua) }
                    return s.hits[path]!
                }
                let response = handler(Request(path: path, hit: hit, headers: head.headers.map { ($0.name, $0.value) }))
                let keepAlive = head.isKeepAlive
                let (secs, atto) = response.delay.components
                let delay = TimeAmount.nanoseconds(secs * 1_000_000_000 + atto / 1_000_000_000)
                let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
                context.eventLoop.scheduleTask(in: delay) {
                    self.respond(loopBound.value, response, keepAlive: keepAlive)
                }
            }
        }

        private func respond(_ context: ChannelHandlerContext, _ r: Response, keepAlive: Bool) {
            var headers = HTTPHeaders(r.headers)
            if r.chunked {
                headers.add(name: "Transfer-Encoding", value: "chunked")
            } else {
                headers.add(name: "Content-Length", value: "\(r.body.count)")
            }
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            let head = HTTPResponseHead(
                version: .http1_1, status: HTTPResponseStatus(statusCode: r.status), headers: headers)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            if r.chunked {
                for start in stride(from: 0, to: r.body.count, by: 64 << 10) {
                    let slice = r.body[start..<min(start + (64 << 10), r.body.count)]
                    context.write(
                        wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: slice)))),
                        promise: nil)
                }
            } else if !r.body.isEmpty {
                context.write(
                    wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: r.body)))), promise: nil)
            }
            // Answered once the whole answer is handed to the socket: counted after the write
            // completes, a client that had already read it and sent its next request (another
            // worker, once it gave back its per-host slot) was counted twice.
            state.withLockedValue { $0.inFlight -= 1 }
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keepAlive { channel.close(promise: nil) }
            }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}
