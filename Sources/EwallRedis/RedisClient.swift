import CHiredis
import EwallCore
import Foundation
import Logging

/// One Redis reply, binary-safe.
public enum RedisReply: Sendable, Hashable {
    case string([UInt8])
    case status(String)
    case integer(Int64)
    case array([RedisReply])
    case null
    /// An error reply (`-ERR ...`, `-WRONGTYPE ...`): the command ran and was refused.
    case error(String)

    public var bytes: [UInt8]? { if case .string(let b) = self { return b } else { return nil } }
    public var integer: Int64? { if case .integer(let i) = self { return i } else { return nil } }
    public var array: [RedisReply]? { if case .array(let a) = self { return a } else { return nil } }
}

/// Why a command got no reply. Callers treat every case as "no cache": EwallML never fails a
/// request or an item because of Redis.
public enum RedisFailure: Error, Sendable, Hashable, CustomStringConvertible {
    /// Not connected and not retrying yet (down, or the reconnect back-off has not passed).
    case unavailable(String)
    /// The connection failed or timed out during the command (the connection is dropped).
    case io(String)
    /// The server refused the password or user: the client stays off for good.
    case disabled(String)

    public var description: String {
        switch self {
        case .unavailable(let m), .io(let m), .disabled(let m): return m
        }
    }
}

/// A Redis client made for caching beside a job or a server: hiredis's synchronous API on
/// `connections` threads of its own (never on Swift's cooperative pool), millisecond timeouts
/// on connect, send and receive, binary-safe arguments and replies, pipelining.
///
/// It never hangs and never throws: a command that cannot be answered within ``timeout``
/// returns a ``RedisFailure``, and the connection is dropped and retried at most once per
/// ``retryInterval``, so a dead Redis costs each call a few microseconds, not a timeout. It
/// logs one warning when Redis stops answering and one line when it is back. A refused
/// password (or user) logs one warning and turns the client off for the life of the process.
///
/// Safe because: each `Connection`'s context is only touched on that connection's own thread;
/// shared state is behind ``Locked``.
public final class RedisClient: @unchecked Sendable {
    public let location: RedisLocation
    /// Connect, send and receive timeout, each.
    public let timeout: Duration
    /// Time between reconnect attempts while Redis is down (default 1 s).
    public let retryInterval: Duration
    private let connections: [Connection]
    private let next = Locked(0)
    private let health = Locked(Health())
    private let logger: Logger

    private struct Health {
        var down = false
        var disabled: String?
        var failures = 0
        var lastError: String?
    }

    public init(
        location: RedisLocation, timeout: Duration = .milliseconds(100), connections: Int = 2,
        retryInterval: Duration = .seconds(1), logger: Logger = Logger(label: "ewall.redis")
    ) {
        self.location = location
        self.timeout = timeout
        self.retryInterval = retryInterval
        self.logger = logger
        self.connections = (0..<max(1, connections)).map {
            Connection(index: $0, location: location, timeout: timeout, retryInterval: retryInterval)
        }
    }

    /// Commands that got no reply so far (down, timed out, refused).
    public var failures: Int { health.withLock { $0.failures } }
    /// Whether the password was refused (the client is off).
    public var isDisabled: Bool { health.withLock { $0.disabled != nil } }
    /// The last failure seen, for status output.
    public var lastError: String? { health.withLock { $0.lastError } }

    /// Asks Redis once (`PING`), so that a refused password or a Redis that is down is
    /// reported (one warning) at start rather than at the first lookup. `true` when it answered.
    @discardableResult
    public func ping() async -> Bool {
        if case .success(.status("PONG")) = await send(["PING"]) { return true }
        return false
    }

    /// Runs one command: `["SET", key, value, "PX", "1000"]`.
    public func send(_ command: [RedisArgument]) async -> Result<RedisReply, RedisFailure> {
        switch await pipeline([command]) {
        case .success(let replies): return .success(replies[0])
        case .failure(let f): return .failure(f)
        }
    }

    /// Sends the commands in one write and reads their replies in order (one round trip).
    public func pipeline(_ commands: [[RedisArgument]]) async -> Result<[RedisReply], RedisFailure> {
        if commands.isEmpty { return .success([]) }
        if let off = health.withLock({ $0.disabled }) { return .failure(.disabled(off)) }
        let connection = next.withLock { n -> Connection in
            n = (n + 1) % connections.count
            return connections[n]
        }
        let args = commands.map { $0.map(\.bytes) }
        let result = await withCheckedContinuation { cont in
            connection.enqueue(args, cont)
        }
        note(result)
        return result
    }

    /// Logs the transitions (down once, back once, password refused once) and counts failures.
    private func note(_ result: Result<[RedisReply], RedisFailure>) {
        enum Event { case none, down(String), back, disabled(String) }
        let event = health.withLock { h -> Event in
            switch result {
            case .success:
                if h.down {
                    h.down = false
                    return .back
                }
                return .none
            case .failure(let f):
                h.failures += 1
                h.lastError = f.description
                if case .disabled(let m) = f, h.disabled == nil {
                    h.disabled = m
                    return .disabled(m)
                }
                if !h.down, h.disabled == nil {
                    h.down = true
                    return .down(f.description)
                }
                return .none
            }
        }
        switch event {
        case .none: break
        case .down(let why):
            logger.warning(
                "redis \(location) is not answering (\(why)): running without the cache until it is back; nothing else is affected"
            )
        case .back:
            logger.info("redis \(location) is answering again: the cache is back")
        case .disabled(let why):
            logger.warning("redis \(location) refused our credentials (\(why)): running without the cache")
        }
    }

    /// Closes the connections and ends their threads once the calls queued are answered.
    public func close() async {
        for c in connections { c.stop() }
    }

    deinit {
        for c in connections { c.stop() }
    }

    /// One connection and the thread it is used on. The thread takes every call queued while
    /// it was busy and sends them as one pipeline (one write, one read): under concurrent load
    /// calls share round trips instead of waiting for one another's.
    ///
    /// Safe because: `context` and `retryAt` are only touched on the connection's thread;
    /// `queue` and `stopped` only under `condition`.
    final class Connection: @unchecked Sendable {
        typealias Call = (commands: [[[UInt8]]], reply: CheckedContinuation<Result<[RedisReply], RedisFailure>, Never>)
        private let condition = NSCondition()
        private var queue: [Call] = []
        private var stopped = false
        private var context: UnsafeMutablePointer<redisContext>?
        private var retryAt: ContinuousClock.Instant?
        private let location: RedisLocation
        private let timeout: Duration
        private let retryInterval: Duration

        init(index: Int, location: RedisLocation, timeout: Duration, retryInterval: Duration) {
            self.location = location
            self.timeout = timeout
            self.retryInterval = retryInterval
            let t = Thread { [self] in loop() }
            t.name = "ewall-redis-\(index)"
            t.start()
        }

        func enqueue(_ commands: [[[UInt8]]], _ reply: CheckedContinuation<Result<[RedisReply], RedisFailure>, Never>) {
            condition.lock()
            if stopped {
                condition.unlock()
                reply.resume(returning: .failure(.unavailable("the client is closed")))
                return
            }
            queue.append((commands, reply))
            condition.signal()
            condition.unlock()
        }

        func stop() {
            condition.lock()
            stopped = true
            condition.signal()
            condition.unlock()
        }

        private func loop() {
            while true {
                condition.lock()
                while queue.isEmpty && !stopped { condition.wait() }
                let calls = queue
                queue.removeAll(keepingCapacity: true)
                let done = stopped && calls.isEmpty
                condition.unlock()
                if done {
                    disconnect()
                    return
                }
                // All calls waiting now, as one pipeline (bounded so one write stays small).
                var start = 0
                while start < calls.count {
                    var end = start, commands = 0
                    while end < calls.count && (commands == 0 || commands + calls[end].commands.count <= 512) {
                        commands += calls[end].commands.count
                        end += 1
                    }
                    let batch = calls[start..<end]
                    let result = execute(
                        batch.flatMap(\.commands), location: location, timeout: timeout, retryInterval: retryInterval)
                    var offset = 0
                    for call in batch {
                        switch result {
                        case .success(let replies):
                            call.reply.resume(
                                returning: .success(Array(replies[offset..<(offset + call.commands.count)])))
                        case .failure(let f):
                            call.reply.resume(returning: .failure(f))
                        }
                        offset += call.commands.count
                    }
                    start = end
                }
            }
        }

        private func disconnect() {
            if let context { redisFree(context) }
            context = nil
        }

        func execute(
            _ commands: [[[UInt8]]], location: RedisLocation, timeout: Duration,
            retryInterval: Duration
        ) -> Result<[RedisReply], RedisFailure> {
            if context == nil {
                if let retryAt, ContinuousClock.now < retryAt {
                    return .failure(.unavailable("not connected (retrying every \(retryInterval))"))
                }
                switch connect(location, timeout: timeout) {
                case .success(let c):
                    context = c
                    retryAt = nil
                case .failure(let f):
                    retryAt = .now + retryInterval
                    return .failure(f)
                }
            }
            guard let c = context else { return .failure(.unavailable("not connected")) }
            for command in commands { append(c, command) }
            var replies: [RedisReply] = []
            replies.reserveCapacity(commands.count)
            for _ in commands {
                var raw: UnsafeMutableRawPointer?
                if redisGetReply(c, &raw) != REDIS_OK || raw == nil {
                    let why = Self.errorText(c)
                    disconnect()
                    retryAt = nil // reconnect on the next call: a timeout or a restart
                    return .failure(.io(why))
                }
                let reply = raw!.assumingMemoryBound(to: redisReply.self)
                replies.append(Self.convert(reply))
                freeReplyObject(raw)
            }
            return .success(replies)
        }

        private func append(_ c: UnsafeMutablePointer<redisContext>, _ command: [[UInt8]]) {
            // hiredis copies the arguments into its output buffer before returning.
            var pointers: [UnsafePointer<CChar>?] = []
            var lengths: [Int] = []
            var buffers: [UnsafeMutableBufferPointer<CChar>] = []
            for arg in command {
                let b = UnsafeMutableBufferPointer<CChar>.allocate(capacity: max(1, arg.count))
                arg.withUnsafeBytes { raw in
                    if let base = raw.baseAddress { memcpy(b.baseAddress!, base, arg.count) }
                }
                buffers.append(b)
                pointers.append(UnsafePointer(b.baseAddress))
                lengths.append(arg.count)
            }
            pointers.withUnsafeMutableBufferPointer { p in
                lengths.withUnsafeBufferPointer { l in
                    _ = redisAppendCommandArgv(c, Int32(command.count), p.baseAddress, l.baseAddress)
                }
            }
            for b in buffers { b.deallocate() }
        }

        private func connect(
            _ location: RedisLocation, timeout: Duration
        ) -> Result<UnsafeMutablePointer<redisContext>, RedisFailure> {
            let tv = Self.timeval(timeout)
            guard let c = redisConnectWithTimeout(location.host, Int32(location.port), tv) else {
                return .failure(.unavailable("cannot allocate a connection"))
            }
            if c.pointee.err != 0 {
                let why = Self.errorText(c)
                redisFree(c)
                return .failure(.unavailable("cannot connect to \(location.host):\(location.port): \(why)"))
            }
            _ = redisSetTimeout(c, tv)
            var setup: [[[UInt8]]] = []
            if let password = location.password {
                setup.append(
                    location.username.map { ["AUTH", $0, password].map { Array($0.utf8) } }
                        ?? [Array("AUTH".utf8), Array(password.utf8)])
            }
            if location.database != 0 { setup.append([Array("SELECT".utf8), Array("\(location.database)".utf8)]) }
            for command in setup {
                append(c, command)
                var raw: UnsafeMutableRawPointer?
                if redisGetReply(c, &raw) != REDIS_OK || raw == nil {
                    let why = Self.errorText(c)
                    redisFree(c)
                    return .failure(.io("connecting: \(why)"))
                }
                let reply = Self.convert(raw!.assumingMemoryBound(to: redisReply.self))
                freeReplyObject(raw)
                if case .error(let message) = reply {
                    redisFree(c)
                    if command[0] == Array("AUTH".utf8) { return .failure(.disabled(message)) }
                    return .failure(.disabled("SELECT \(location.database): \(message)"))
                }
            }
            return .success(c)
        }

        static func timeval(_ d: Duration) -> Glibc.timeval {
            let us = max(1000, Int(d.inSeconds * 1_000_000))
            return Glibc.timeval(tv_sec: us / 1_000_000, tv_usec: us % 1_000_000)
        }

        static func errorText(_ c: UnsafeMutablePointer<redisContext>) -> String {
            let text = withUnsafeBytes(of: c.pointee.errstr) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            if c.pointee.err == REDIS_ERR_IO && (text.contains("temporarily unavailable") || text.contains("timed out"))
            {
                return "timed out"
            }
            return text.isEmpty ? "connection error \(c.pointee.err)" : text
        }

        static func convert(_ r: UnsafeMutablePointer<redisReply>) -> RedisReply {
            let reply = r.pointee
            switch reply.type {
            case REDIS_REPLY_STRING:
                return .string(
                    reply.len == 0 ? [] : Array(UnsafeRawBufferPointer(start: reply.str, count: Int(reply.len))))
            case REDIS_REPLY_STATUS:
                return .status(
                    String(decoding: UnsafeRawBufferPointer(start: reply.str, count: Int(reply.len)), as: UTF8.self))
            case REDIS_REPLY_ERROR:
                return .error(
                    String(decoding: UnsafeRawBufferPointer(start: reply.str, count: Int(reply.len)), as: UTF8.self))
            case REDIS_REPLY_INTEGER:
                return .integer(Int64(reply.integer))
            case REDIS_REPLY_ARRAY:
                return .array((0..<Int(reply.elements)).map { convert(reply.element[$0]!) })
            default:
                return .null
            }
        }
    }
}

/// One argument of a command: text or bytes.
public struct RedisArgument: Sendable, ExpressibleByStringLiteral {
    public var bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public init(_ text: String) { self.bytes = Array(text.utf8) }
    public init(_ n: Int) { self.bytes = Array(String(n).utf8) }
    public init(stringLiteral value: String) { self.bytes = Array(value.utf8) }
}

extension RedisFailure: EwallFailure {
    public var failureCode: String {
        switch self {
        case .unavailable: "redis_unavailable"
        case .io: "redis_io"
        case .disabled: "redis_disabled"
        }
    }
    public var message: String { description }
    public var kind: FailureKind { .unavailable }
}
