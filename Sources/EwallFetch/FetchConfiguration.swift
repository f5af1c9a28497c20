import EwallCore
import Foundation

/// How images are fetched: limits, timeouts and the retry policy, with documented defaults.
public struct FetchConfiguration: Sendable, Hashable {
    /// Requests in flight to one host at once (default 8). Outlet images come from one or two
    /// CDN hosts: this, not the overall concurrency, is what keeps a host from answering 429.
    public var perHostLimit: Int
    /// Time to establish a connection (default 5 s).
    public var connectTimeout: Duration
    /// Time for one whole attempt: connect, headers and body (default 30 s).
    public var requestTimeout: Duration
    /// Attempts per URL, the first included (default 4). Only transient failures are retried:
    /// timeouts, connection errors, 5xx and 429.
    public var maxAttempts: Int
    /// One time budget per item across all its attempts (default 60 s): from the moment its
    /// first request starts (time queued behind ``perHostLimit`` for the first permit does not
    /// count) to its last byte. No attempt starts once it has passed, a retry whose backoff or
    /// `Retry-After` would end after it is not made, and an attempt still in flight at the
    /// deadline is cut there and fails with class `timeout`, naming the deadline and the
    /// attempts made. Without it, a server that accepts connections and never answers costs
    /// `maxAttempts` x ``requestTimeout`` plus backoff per item (2 minutes by default).
    public var itemDeadline: Duration
    /// Backoff before retry `n` is a random delay in `0 ... min(backoffMax, backoffBase * 2^(n-1))`
    /// ("full jitter"), unless the server sent `Retry-After`.
    public var backoffBase: Duration
    public var backoffMax: Duration
    /// The longest `Retry-After` honoured (default 120 s); longer values count as this.
    public var maxRetryAfter: Duration
    /// Response bodies above this many bytes are refused while streaming (default 20 MiB).
    public var maxBytes: Int
    /// Redirects followed per request (default 5); a cycle or more hops is `redirect_loop`.
    public var maxRedirects: Int
    /// Sent with every request.
    public var userAgent: String
    /// Where hosts' pauses (HTTP 429 with `Retry-After`) are shared with other processes, so a
    /// pause one worker is asked for holds for every worker on every machine (`nil`: this
    /// process only). The shared job's workers share them through the PostgreSQL store.
    public var sharedPauses: SharedHostPauses?
    /// Where the per-host limit is shared with other processes, so ``perHostLimit`` holds
    /// for all workers on all machines together (`nil`: per process). See ``HostSlotBoard``.
    public var sharedSlots: SharedHostSlots?
    /// Whether `file://` URLs and plain paths may be read (the batch job: yes; a server taking
    /// URLs from callers: no).
    public var allowFiles: Bool
    /// Relative plain paths are resolved against this folder (the manifest's); `nil`: the
    /// current directory.
    public var baseDirectory: String?
    /// When set, every request and redirect hop is checked against it before it is sent (see
    /// ``AddressPolicy``): what a server fetching callers' URLs needs. `nil` (the batch job over
    /// a trusted manifest): no address check.
    public var addressPolicy: AddressPolicy?

    public init(
        perHostLimit: Int = 8, connectTimeout: Duration = .seconds(5), requestTimeout: Duration = .seconds(30),
        maxAttempts: Int = 4, backoffBase: Duration = .milliseconds(500), backoffMax: Duration = .seconds(30),
        maxRetryAfter: Duration = .seconds(120), maxBytes: Int = 20 << 20, maxRedirects: Int = 5,
        userAgent: String = FetchConfiguration.defaultUserAgent, allowFiles: Bool = true,
        baseDirectory: String? = nil, addressPolicy: AddressPolicy? = nil,
        itemDeadline: Duration = .seconds(60)
    ) {
        self.perHostLimit = perHostLimit
        self.connectTimeout = connectTimeout
        self.requestTimeout = requestTimeout
        self.maxAttempts = maxAttempts
        self.backoffBase = backoffBase
        self.backoffMax = backoffMax
        self.maxRetryAfter = maxRetryAfter
        self.maxBytes = maxBytes
        self.maxRedirects = maxRedirects
        self.userAgent = userAgent
        self.allowFiles = allowFiles
        self.baseDirectory = baseDirectory
        self.addressPolicy = addressPolicy
        self.itemDeadline = itemDeadline
    }

    public static let defaultUserAgent =
        "EwallML/0.3 (ewall-embed; product image embedding; +https://e-wall.example/bot)"

    /// The delay before retry number `retry` (1 = the first retry), with full jitter.
    public func backoff(retry: Int, random: Double = Double.random(in: 0...1)) -> Duration {
        let cap = min(backoffMax.inSeconds, backoffBase.inSeconds * pow(2, Double(max(0, retry - 1))))
        return .milliseconds(Int((cap * random * 1000).rounded()))
    }
}

/// Why an image could not be fetched. `code` is a ``FailureClass`` raw value.
public struct FetchError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: String
    public var message: String
    /// The last HTTP status received, if any.
    public var httpStatus: Int?
    /// Attempts made, the first included.
    public var attempts: Int

    public init(_ code: String, _ message: String, httpStatus: Int? = nil, attempts: Int = 1) {
        self.code = code
        self.message = message
        self.httpStatus = httpStatus
        self.attempts = attempts
    }

    /// Whether a later run should try again (`--retry-failed`).
    public var isTransient: Bool { FailureClass.isTransient(code) }
    public var description: String { "\(code): \(message)" }
}

/// The bytes of one image and how they arrived.
public struct FetchedImage: Sendable {
    public var bytes: [UInt8]
    /// SHA-256 of `bytes`, lower-case hex.
    public var sha256: String
    /// As sent by the server; recorded, never trusted (the decoder sniffs the bytes).
    public var contentType: String?
    /// 200 for HTTP, `nil` for files.
    public var httpStatus: Int?
    public var attempts: Int
}

/// A board where processes post the pauses hosts ask for (429 + `Retry-After`) and read the
/// pauses in force. Implementations must never throw or hang a fetch: a board that cannot be
/// reached is a board with no pauses.
public protocol HostPauseBoard: Sendable {
    /// Tells every process that `host` asked for no requests for `seconds`.
    func publish(host: String, seconds: Double) async
    /// The pauses in force now: host -> seconds left.
    func current() async -> [String: Double]
}

/// A ``HostPauseBoard`` as a configuration value (configurations compare by the board's identity).
public struct SharedHostPauses: Sendable, Hashable {
    public let board: any HostPauseBoard
    private let id = UUID()

    public init(_ board: any HostPauseBoard) { self.board = board }

    public static func == (a: SharedHostPauses, b: SharedHostPauses) -> Bool { a.id == b.id }
    public func hash(into hasher: inout Hasher) { hasher.combine(id) }
}

/// Slots per host shared by many processes: at most `limit` requests to one host in flight
/// across all of them. Implementations must never throw or hang a fetch, and must expire the
/// slots of a process that died: a board that cannot be reached gives `nil`, and the fetch
/// goes on under the per-process limit alone.
public protocol HostSlotBoard: Sendable {
    /// Waits for one of `limit` slots on `host` and returns its token, or `nil` when the board
    /// cannot be reached. The slot expires by itself after `lease`.
    func acquire(host: String, limit: Int, lease: Duration) async -> String?
    /// Gives the slot back.
    func release(host: String, token: String) async
}

/// A ``HostSlotBoard`` as a configuration value (configurations compare by the board's identity).
public struct SharedHostSlots: Sendable, Hashable {
    public let board: any HostSlotBoard
    private let id = UUID()

    public init(_ board: any HostSlotBoard) { self.board = board }

    public static func == (a: SharedHostSlots, b: SharedHostSlots) -> Bool { a.id == b.id }
    public func hash(into hasher: inout Hasher) { hasher.combine(id) }
}

extension FetchError: EwallFailure {
    public var failureCode: String { code }
    public var kind: FailureKind { code == FailureClass.invalidURL ? .invalidRequest : .unprocessable }
}
