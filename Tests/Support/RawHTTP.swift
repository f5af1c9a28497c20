import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A bare TCP connection to a server on loopback: it writes exactly the bytes it is given and
/// keeps what comes back, so a test can send what no HTTP client would (a malformed escape, an
/// odd method, a request head that never ends) and see when the server closes it.
public final class RawConnection: Sendable {
    private let channel: any Channel
    private let received: NIOLockedValueBox<[UInt8]>

    private init(channel: any Channel, received: NIOLockedValueBox<[UInt8]>) {
        self.channel = channel
        self.received = received
    }

    /// Connects to `host:port`.
    public static func open(host: String = "127.0.0.1", port: Int) async throws -> RawConnection {
        let received = NIOLockedValueBox<[UInt8]>([])
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Collector(received: received))
                }
            }
            .connect(host: host, port: port).get()
        return RawConnection(channel: channel, received: received)
    }

    /// Writes `bytes` as they are.
    public func send(_ bytes: [UInt8]) async throws {
        try await channel.writeAndFlush(ByteBuffer(bytes: bytes)).get()
    }

    public func send(_ text: String) async throws { try await send(Array(text.utf8)) }

    /// Whether the connection is still open (the server has not closed it).
    public var isOpen: Bool { channel.isActive }

    /// Everything the server has sent so far.
    public var receivedBytes: [UInt8] { received.withLockedValue { $0 } }

    /// Waits until the server closes the connection or `timeout` passes; whether it closed.
    public func waitForClose(timeout: Duration) async -> Bool {
        let deadline = ContinuousClock.now + timeout
        while channel.isActive && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(10))
        }
        return !channel.isActive
    }

    /// Closes it from this side.
    public func close() async {
        try? await channel.close().get()
    }

    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = ByteBuffer
        let received: NIOLockedValueBox<[UInt8]>

        init(received: NIOLockedValueBox<[UInt8]>) { self.received = received }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let buffer = unwrapInboundIn(data)
            received.withLockedValue { $0 += buffer.readableBytesView }
        }

        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            context.close(promise: nil)
        }
    }
}

/// One HTTP/1.1 exchange over a ``RawConnection``: the request written byte for byte (with
/// `Connection: close`), the answer read until the server closes, then parsed.
public enum RawHTTP {
    /// An answer: status, headers in order, and the body (de-chunked).
    public struct Response: Sendable {
        public var status: Int
        public var headers: [(String, String)]
        public var body: [UInt8]

        public func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
        public var text: String { String(decoding: body, as: UTF8.self) }
        /// The body as JSON, or `nil` when it is not JSON.
        public var json: Any? { try? JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed]) }
    }

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    /// Sends `method target` with `headers` and `body` (Content-Length added when there is a
    /// body) and returns the answer. `target` goes on the request line exactly as given.
    public static func send(
        port: Int, method: String, target: String, headers: [(String, String)] = [],
        body: [UInt8]? = nil, timeout: Duration = .seconds(30)
    ) async throws -> Response {
        var head = "\(method) \(target) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nConnection: close\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        if let body { head += "Content-Length: \(body.count)\r\n" }
        head += "\r\n"
        let connection = try await RawConnection.open(port: port)
        try await connection.send(Array(head.utf8) + (body ?? []))
        guard await connection.waitForClose(timeout: timeout) else {
            await connection.close()
            throw Failure(description: "\(method) \(target): no complete answer within \(timeout)")
        }
        return try parse(connection.receivedBytes, head: method == "HEAD")
    }

    /// Parses one HTTP/1.1 response (Content-Length, chunked, or read to the end). With `head`
    /// (the answer to a HEAD), the headers describe a body that is not sent: the body must be
    /// empty.
    public static func parse(_ bytes: [UInt8], head: Bool = false) throws -> Response {
        guard let end = find([13, 10, 13, 10], in: bytes, from: 0) else {
            throw Failure(
                description:
                    "no response head in \(bytes.count) bytes: \(String(decoding: bytes.prefix(200), as: UTF8.self))")
        }
        let lines = String(decoding: bytes[..<end], as: UTF8.self).components(separatedBy: "\r\n")
        let statusParts = lines[0].split(separator: " ")
        guard statusParts.count >= 2, statusParts[0].hasPrefix("HTTP/1."), let status = Int(statusParts[1]) else {
            throw Failure(description: "bad status line '\(lines[0])'")
        }
        let headers: [(String, String)] = lines.dropFirst().compactMap { line in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (String(line[..<colon]), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        var rest = Array(bytes[(end + 4)...])
        let field = { (name: String) in headers.first { $0.0.lowercased() == name }?.1 }
        if head {
            guard rest.isEmpty else { throw Failure(description: "a HEAD answer with \(rest.count) body bytes") }
        } else if field("transfer-encoding")?.lowercased().contains("chunked") == true {
            rest = try dechunk(rest)
        } else if let length = field("content-length").flatMap(Int.init) {
            guard rest.count >= length else { throw Failure(description: "body has \(rest.count) of \(length) bytes") }
            rest = Array(rest.prefix(length))
        }
        return Response(status: status, headers: headers, body: rest)
    }

    /// Where `needle` first starts in `bytes` at or after `from`.
    private static func find(_ needle: [UInt8], in bytes: [UInt8], from: Int) -> Int? {
        guard bytes.count >= needle.count, from <= bytes.count - needle.count else { return nil }
        return (from...(bytes.count - needle.count)).first { bytes[$0..<($0 + needle.count)].elementsEqual(needle) }
    }

    private static func dechunk(_ bytes: [UInt8]) throws -> [UInt8] {
        var out: [UInt8] = []
        var i = 0
        while true {
            guard let lineEnd = find([13, 10], in: bytes, from: i),
                let size = Int(String(decoding: bytes[i..<lineEnd], as: UTF8.self).prefix { $0 != ";" }, radix: 16)
            else {
                throw Failure(description: "bad chunk at byte \(i)")
            }
            i = lineEnd + 2
            if size == 0 { return out }
            guard i + size <= bytes.count else { throw Failure(description: "chunk runs past the end") }
            out += bytes[i..<(i + size)]
            i += size + 2
        }
    }
}
