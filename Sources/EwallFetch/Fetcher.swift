import AsyncHTTPClient
import Crypto
import EwallCore
import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// Fetches image bytes over HTTP(S) (async-http-client, pooled keep-alive connections) or
/// from local files, with a per-host limit, timeouts, a streaming byte cap, retries with
/// exponential backoff and full jitter for transient failures, and one deadline per item
/// across its retries (``FetchConfiguration/itemDeadline``). Never throws: every URL gets
/// its bytes or a ``FetchError`` naming a ``FailureClass``. Keeps per-host timings
/// (``hostTimings()``) so a job can name its slowest hosts.
///
/// Safe to share between many tasks; call ``shutdown()`` once when done.
///
/// ```swift
/// let fetcher = ImageFetcher(configuration: FetchConfiguration(perHostLimit: 8))
/// switch await fetcher.fetch("https://cdn.example.com/p/123.jpg") {
/// case .success(let image): print(image.bytes.count, image.sha256)
/// case .failure(let error): print(error.code, error.message)
/// }
/// try await fetcher.shutdown()
/// ```
public final class ImageFetcher: Sendable {
    public let configuration: FetchConfiguration
    private let client: HTTPClient
    private let limiter: HostLimiter
    private let logger: Logger
    private let timings = HostTimings()
    /// Reads ``FetchConfiguration/sharedPauses`` every 250 ms into the host limiter.
    private let pausePoller: Task<Void, Never>?

    /// The class of a fetch that was cancelled (the job is stopping); such items are not
    /// recorded as failures.
    public static let cancelled = "cancelled"

    public init(configuration: FetchConfiguration = FetchConfiguration(), logger: Logger = Logger(label: "ewall.fetch"))
    {
        self.configuration = configuration
        self.logger = logger
        var pool = HTTPClient.Configuration.ConnectionPool(
            idleTimeout: .seconds(60), concurrentHTTP1ConnectionsPerHostSoftLimit: max(1, configuration.perHostLimit))
        // Our own retry policy decides; the pool must not retry connects behind its back.
        pool.retryConnectionEstablishment = false
        // With an address policy, redirects are followed here, one checked hop at a time.
        var http = HTTPClient.Configuration(
            redirectConfiguration: configuration.addressPolicy == nil
                ? .follow(max: configuration.maxRedirects, allowCycles: false) : .disallow,
            timeout: .init(
                connect: .nanoseconds(configuration.connectTimeout.inNanoseconds),
                read: .nanoseconds(configuration.requestTimeout.inNanoseconds)),
            connectionPool: pool,
            decompression: .disabled)
        http.httpVersion = .automatic
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: http)
        let limiter = HostLimiter(limit: configuration.perHostLimit)
        self.limiter = limiter
        pausePoller = configuration.sharedPauses.map(\.board).map { board in
            Task {
                while !Task.isCancelled {
                    for (host, left) in await board.current() where left > 0 {
                        await limiter.pause(host, until: .now + .milliseconds(Int(left * 1000)))
                    }
                    try? await Task.sleep(for: .milliseconds(250))
                }
            }
        }
    }

    /// How each host has answered so far, slowest first (by total seconds): requests, total
    /// and slowest seconds, timeouts. See ``HostTiming``.
    public func hostTimings() -> [HostTiming] {
        timings.snapshot
    }

    /// Closes the connection pool.
    public func shutdown() async throws {
        pausePoller?.cancel()
        try await client.shutdown()
    }

    /// Fetches `location` (a manifest's `image_url`), retrying transient failures.
    public func fetch(_ location: String) async -> Result<FetchedImage, FetchError> {
        if configuration.addressPolicy != nil {
            // Callers' URLs: http(s) only, never files or other schemes.
            let s = location.trimmingCharacters(in: .whitespaces)
            guard let url = URL(string: s), let scheme = url.scheme?.lowercased(), scheme == "http" || scheme == "https"
            else {
                let scheme = URL(string: s)?.scheme.map { "'\($0):'" } ?? "a missing scheme"
                return .failure(
                    FetchError(FailureClass.blockedURL, "refused: \(scheme) is not allowed (http and https only)"))
            }
        }
        switch ImageLocation.parse(location, baseDirectory: configuration.baseDirectory) {
        case .failure(let e): return .failure(e)
        case .success(let loc): return await fetch(loc)
        }
    }

    public func fetch(_ location: ImageLocation) async -> Result<FetchedImage, FetchError> {
        switch location {
        case .file(let path):
            guard configuration.allowFiles else {
                return .failure(FetchError(FailureClass.invalidURL, "local files are not allowed here"))
            }
            return Self.readFile(path, maxBytes: configuration.maxBytes).map {
                FetchedImage(bytes: $0, sha256: Self.sha256($0), contentType: nil, httpStatus: nil, attempts: 1)
            }
        case .http(let url):
            return await fetchHTTP(url)
        }
    }

    // MARK: HTTP

    private enum Attempt: Sendable {
        case done(FetchedImage)
        case failed(FetchError, retryAfter: Duration?)
    }

    /// Attempts until one succeeds, a failure is final, the attempts are used up, or the item
    /// deadline (``FetchConfiguration/itemDeadline``) passes: it starts with the first request,
    /// no attempt starts after it, a retry whose wait would end after it is not made, and an
    /// attempt still running at it is cut.
    private func fetchHTTP(_ url: URL) async -> Result<FetchedImage, FetchError> {
        let host = url.host?.lowercased() ?? ""
        let authority = url.port.map { "\(host):\($0)" } ?? host
        let budget = configuration.itemDeadline
        var deadline: ContinuousClock.Instant?
        var attempt = 0
        var lastError: FetchError?
        while true {
            if Task.isCancelled { return .failure(FetchError(Self.cancelled, "cancelled", attempts: attempt)) }
            await limiter.acquire(host)
            // The host's slot shared with other processes (``FetchConfiguration/sharedSlots``),
            // held for this attempt only; it expires by itself if this process dies. Like the
            // local permit, waiting for the first one does not count against the deadline.
            let slots = configuration.sharedSlots?.board
            let slot = await slots?.acquire(
                host: authority, limit: configuration.perHostLimit,
                lease: min(configuration.requestTimeout, budget) + .seconds(5))
            func releasePermits() async {
                if let slots, let slot { await slots.release(host: authority, token: slot) }
                await limiter.release(host)
            }
            let start = ContinuousClock.now
            let itemDeadline = deadline ?? start + budget
            deadline = itemDeadline
            if start >= itemDeadline {
                // Waiting for a permit (or a host-wide pause) used up what was left.
                await releasePermits()
                return .failure(deadlineError(lastError, attempts: attempt, cut: false))
            }
            attempt += 1
            let outcome = await attemptOnce(url, until: itemDeadline)
            await releasePermits()
            let seconds = (ContinuousClock.now - start).inSeconds
            guard let outcome else { // cut at the deadline
                timings.record(host: authority, seconds: seconds, timedOut: true)
                if Task.isCancelled { return .failure(FetchError(Self.cancelled, "cancelled", attempts: attempt)) }
                return .failure(deadlineError(nil, attempts: attempt, cut: true))
            }
            switch outcome {
            case .done(var image):
                timings.record(host: authority, seconds: seconds, timedOut: false)
                image.attempts = attempt
                return .success(image)
            case .failed(var error, let retryAfter):
                timings.record(host: authority, seconds: seconds, timedOut: error.code == FailureClass.timeout)
                error.attempts = attempt
                guard error.isTransient, attempt < configuration.maxAttempts, !Task.isCancelled else {
                    if Task.isCancelled { error.code = Self.cancelled }
                    return .failure(error)
                }
                let delay =
                    retryAfter.map { min($0, configuration.maxRetryAfter) }
                    ?? configuration.backoff(retry: attempt)
                // The whole host waits, not only this request (even if this item gives up now).
                if retryAfter != nil {
                    await limiter.pause(host, until: .now + delay)
                    if let board = configuration.sharedPauses?.board {
                        await board.publish(host: host, seconds: delay.inSeconds)
                    }
                }
                if ContinuousClock.now + delay >= itemDeadline {
                    return .failure(deadlineError(error, attempts: attempt, cut: false))
                }
                lastError = error
                logger.debug("retrying \(url) in \(delay): \(error)")
                do { try await Task.sleep(for: delay) } catch {
                    return .failure(FetchError(Self.cancelled, "cancelled", attempts: attempt))
                }
            }
        }
    }

    /// The failure of an item whose deadline ended its attempts. Cut in flight: `timeout`.
    /// Otherwise the last attempt's own failure, saying that the deadline left no time to retry.
    private func deadlineError(_ last: FetchError?, attempts: Int, cut: Bool) -> FetchError {
        let limit = "the item deadline of \(Self.seconds(configuration.itemDeadline))"
        let made = attempts == 1 ? "1 attempt" : "\(attempts) attempts"
        if cut || last == nil {
            return FetchError(
                FailureClass.timeout,
                cut
                    ? "no complete answer within \(limit) (\(made); the last was cut at the deadline)"
                    : "\(limit) passed before an attempt could start (\(made))",
                attempts: attempts)
        }
        var e = last!
        e.message += "; not retried: \(limit) would pass first (\(made))"
        e.attempts = attempts
        return e
    }

    /// "1.5 s", "60 s".
    static func seconds(_ d: Duration) -> String {
        let s = d.inSeconds
        return s == s.rounded() ? "\(Int(s)) s" : "\((s * 1000).rounded() / 1000) s"
    }

    /// One attempt, cut at `deadline`: `nil` when the deadline came first. The attempt's
    /// task is cancelled then, which async-http-client turns into closing the request.
    private func attemptOnce(_ url: URL, until deadline: ContinuousClock.Instant) async -> Attempt? {
        await withTaskGroup(of: Attempt?.self) { group in
            group.addTask { await self.attemptOnce(url) }
            group.addTask {
                try? await Task.sleep(until: deadline, clock: .continuous)
                return nil
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first
        }
    }

    /// One attempt. Under an address policy the URL and every redirect target are checked
    /// (and `http` pinned to the checked address) before a request is sent.
    private func attemptOnce(_ url: URL) async -> Attempt {
        guard let policy = configuration.addressPolicy else { return await send(url, pinnedTo: nil).attempt }
        var current = url
        var seen: Set<String> = [url.absoluteString]
        for _ in 0...configuration.maxRedirects {
            let pin: HostAddress?
            do throws(FetchError) { pin = try await policy.check(current) } catch {
                return .failed(error, retryAfter: nil)
            }
            let (attempt, location) = await send(current, pinnedTo: pin)
            guard let location else { return attempt }
            guard let next = URL(string: location, relativeTo: current)?.absoluteURL else {
                return .failed(
                    FetchError(FailureClass.httpOther, "a redirect to an unreadable Location '\(location)'"),
                    retryAfter: nil)
            }
            guard seen.insert(next.absoluteString).inserted else {
                return .failed(
                    FetchError(FailureClass.redirectLoop, "a redirect cycle at \(next.absoluteString)"), retryAfter: nil
                )
            }
            current = next
        }
        return .failed(
            FetchError(FailureClass.redirectLoop, "more than \(configuration.maxRedirects) redirects"), retryAfter: nil)
    }

    /// Sends one request. A 3xx with a Location comes back as `location` when redirects are
    /// followed here (under an address policy).
    private func send(_ url: URL, pinnedTo pin: HostAddress?) async -> (attempt: Attempt, location: String?) {
        var target = url.absoluteString
        var hostHeader: String?
        if let pin, url.scheme?.lowercased() == "http",
            var parts = URLComponents(url: url, resolvingAgainstBaseURL: false)
        {
            hostHeader = url.port.map { "\(url.host!):\($0)" } ?? url.host!
            parts.percentEncodedHost = pin.urlHost
            target = parts.url?.absoluteString ?? target
        }
        var request = HTTPClientRequest(url: target)
        if let hostHeader { request.headers.add(name: "Host", value: hostHeader) }
        request.headers.add(name: "User-Agent", value: configuration.userAgent)
        request.headers.add(name: "Accept", value: "image/webp,image/png,image/jpeg,image/*;q=0.8,*/*;q=0.5")
        let deadline = NIODeadline.now() + .nanoseconds(configuration.requestTimeout.inNanoseconds)
        do {
            let response = try await client.execute(request, deadline: deadline, logger: logger)
            let status = Int(response.status.code)
            let contentType = response.headers.first(name: "content-type")
            switch status {
            case 200..<300:
                let declared = response.headers.first(name: "content-length").flatMap { Int($0) }
                if let declared, declared > configuration.maxBytes {
                    return (
                        .failed(
                            FetchError(
                                FailureClass.tooLarge,
                                "the server declares \(declared) bytes, above the limit of \(configuration.maxBytes)",
                                httpStatus: status), retryAfter: nil), nil
                    )
                }
                var bytes: [UInt8] = []
                bytes.reserveCapacity(min(declared ?? 256 << 10, configuration.maxBytes))
                for try await chunk in response.body {
                    if bytes.count + chunk.readableBytes > configuration.maxBytes {
                        return (
                            .failed(
                                FetchError(
                                    FailureClass.tooLarge,
                                    "the response is larger than the limit of \(configuration.maxBytes) bytes",
                                    httpStatus: status), retryAfter: nil), nil
                        )
                    }
                    bytes.append(contentsOf: chunk.readableBytesView)
                }
                return (
                    .done(
                        FetchedImage(
                            bytes: bytes, sha256: Self.sha256(bytes), contentType: contentType,
                            httpStatus: status, attempts: 1)), nil
                )
            case 300..<400 where configuration.addressPolicy != nil:
                guard let location = response.headers.first(name: "location") else {
                    return (
                        .failed(
                            FetchError(FailureClass.httpOther, "HTTP \(status) without a Location", httpStatus: status),
                            retryAfter: nil), nil
                    )
                }
                return (
                    .failed(FetchError(FailureClass.httpOther, "redirect", httpStatus: status), retryAfter: nil),
                    location
                )
            case 429:
                let after = response.headers.first(name: "retry-after").flatMap { Self.parseRetryAfter($0) }
                return (
                    .failed(
                        FetchError(
                            FailureClass.http429,
                            "HTTP 429 Too Many Requests"
                                + (after.map { " (Retry-After \($0))" } ?? ""), httpStatus: status),
                        retryAfter: after), nil
                )
            case 400..<500:
                return (
                    .failed(
                        FetchError(
                            FailureClass.http4xx, "HTTP \(status) \(response.status.reasonPhrase)",
                            httpStatus: status), retryAfter: nil), nil
                )
            case 500..<600:
                let after = response.headers.first(name: "retry-after").flatMap { Self.parseRetryAfter($0) }
                return (
                    .failed(
                        FetchError(
                            FailureClass.http5xx, "HTTP \(status) \(response.status.reasonPhrase)",
                            httpStatus: status), retryAfter: after), nil
                )
            default:
                return (
                    .failed(
                        FetchError(
                            FailureClass.httpOther, "unexpected HTTP \(status) \(response.status.reasonPhrase)",
                            httpStatus: status), retryAfter: nil), nil
                )
            }
        } catch {
            return (.failed(Self.classify(error), retryAfter: nil), nil)
        }
    }

    /// Maps a transport error to a failure class with a message a user can act on.
    static func classify(_ error: any Error) -> FetchError {
        if error is CancellationError { return FetchError(cancelled, "cancelled") }
        if let e = error as? HTTPClientError {
            switch e {
            case .connectTimeout, .readTimeout, .writeTimeout, .deadlineExceeded, .tlsHandshakeTimeout:
                return FetchError(FailureClass.timeout, "timed out (\(e))")
            case .redirectLimitReached, .redirectCycleDetected:
                return FetchError(FailureClass.redirectLoop, "too many redirects or a redirect cycle (\(e))")
            case .invalidURL, .emptyHost, .emptyScheme:
                return FetchError(FailureClass.invalidURL, "the URL cannot be fetched (\(e))")
            case .cancelled:
                return FetchError(cancelled, "cancelled")
            default:
                return FetchError(FailureClass.connection, "connection failed (\(e))")
            }
        }
        return FetchError(FailureClass.connection, "connection failed: \(error)")
    }

    /// `Retry-After` as delta-seconds or an HTTP date.
    static func parseRetryAfter(_ value: String) -> Duration? {
        let v = value.trimmingCharacters(in: .whitespaces)
        if let s = Double(v), s >= 0 { return .milliseconds(Int(s * 1000)) }
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        guard let date = f.date(from: v) else { return nil }
        return .milliseconds(max(0, Int(date.timeIntervalSinceNow * 1000)))
    }

    // MARK: Files

    /// Reads a local image file, refusing it before reading when it is larger than `maxBytes`.
    public static func readFile(_ path: String, maxBytes: Int) -> Result<[UInt8], FetchError> {
        let attrs: [FileAttributeKey: Any]
        do {
            attrs = try FileManager.default.attributesOfItem(atPath: path)
        } catch {
            return .failure(FetchError(FailureClass.unreadable, "\(path): no such file or not readable"))
        }
        if (attrs[.type] as? FileAttributeType) == .typeDirectory {
            return .failure(FetchError(FailureClass.unreadable, "\(path) is a directory, not an image file"))
        }
        let size = (attrs[.size] as? Int) ?? 0
        if maxBytes > 0 && size > maxBytes {
            return .failure(
                FetchError(FailureClass.tooLarge, "\(path) is \(size) bytes, above the limit of \(maxBytes)"))
        }
        guard let data = FileManager.default.contents(atPath: path) else {
            return .failure(FetchError(FailureClass.unreadable, "\(path) could not be read"))
        }
        return .success([UInt8](data))
    }

    // MARK: Helpers

    /// Lower-case hex SHA-256.
    public static func sha256(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(64)
        for b in SHA256.hash(data: bytes) {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 15)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
