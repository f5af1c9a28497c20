import EwallCore
import EwallTestSupport
import Foundation
import Testing

@testable import EwallFetch

/// The fetcher against a real loopback HTTP server: every failure class, retries, the
/// per-host limit and the host-wide pause after a 429.
@Suite("Fetching over HTTP and from files")
struct FetcherTests {
    static let jpeg = Fixtures.image("baseline_600x400.jpg")

    /// The good image's path on `server()`.
    static let ok = TestHTTPServer.imagePath(0)

    /// A host that misbehaves as a CDN might; `.slow` answers after 3 s.
    static func server() throws -> TestHTTPServer {
        try .misbehaving(images: [(try? Fixtures.bytes(jpeg)) ?? []], slowDelay: .seconds(3))
    }

    static func fetcher(_ configure: (inout FetchConfiguration) -> Void = { _ in }) -> ImageFetcher {
        // Generous timeouts: the whole test suite shares 2 cores; the timeout test sets its own.
        var c = FetchConfiguration(
            connectTimeout: .seconds(5), requestTimeout: .seconds(10), maxAttempts: 3,
            backoffBase: .milliseconds(50), backoffMax: .milliseconds(200), maxBytes: 2 << 20)
        configure(&c)
        return ImageFetcher(configuration: c)
    }

    @Test func goodImageArrivesWithItsDigestAndContentType() async throws {
        let server = try Self.server()
        defer { server.shutdown() }
        let fetcher = Self.fetcher()
        let image = try await fetcher.fetch(server.url(Self.ok)).get()
        let expected = try Fixtures.bytes(Self.jpeg)
        #expect(image.bytes == expected)
        #expect(image.sha256 == ImageFetcher.sha256(expected))
        #expect(image.sha256.count == 64)
        #expect(image.contentType == "image/jpeg")
        #expect(image.httpStatus == 200)
        #expect(image.attempts == 1)
        #expect(server.userAgents == [FetchConfiguration.defaultUserAgent])
        try await fetcher.shutdown()
    }

    @Test func sha256MatchesAKnownDigest() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        #expect(
            ImageFetcher.sha256(Array("abc".utf8)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        )
    }

    struct FailureCase: Sendable, CustomTestStringConvertible {
        var misbehaviour: Misbehaviour
        var code: String
        var status: Int?
        var attempts: Int
        var testDescription: String { "\(misbehaviour.path) -> \(code)" }
    }

    @Test(arguments: [
        FailureCase(misbehaviour: .missing, code: "http_4xx", status: 404, attempts: 1),
        FailureCase(misbehaviour: .down, code: "http_5xx", status: 503, attempts: 3),
        FailureCase(misbehaviour: .slow, code: "timeout", status: nil, attempts: 3),
        FailureCase(misbehaviour: .hugeDeclared, code: "too_large", status: 200, attempts: 1),
        FailureCase(misbehaviour: .hugeChunked, code: "too_large", status: 200, attempts: 1),
        FailureCase(misbehaviour: .redirectLoop, code: "redirect_loop", status: nil, attempts: 1),
    ])
    func eachFailureHasItsClassAndOnlyTransientOnesAreRetried(_ c: FailureCase) async throws {
        let server = try Self.server()
        defer { server.shutdown() }
        let fetcher = Self.fetcher { if c.code == "timeout" { $0.requestTimeout = .seconds(1) } }
        let result = await fetcher.fetch(server.url(c.misbehaviour))
        guard case .failure(let e) = result else {
            Issue.record("\(c.misbehaviour.path) should fail")
            return
        }
        #expect(e.code == c.code, "\(e)")
        #expect(e.httpStatus == c.status)
        #expect(e.attempts == c.attempts)
        #expect(!e.message.isEmpty)
        // The server saw exactly as many requests as attempts were reported (the redirect
        // loop's first hop included).
        if c.misbehaviour != .redirectLoop { #expect(server.hits(c.misbehaviour) == c.attempts) }
        #expect(e.isTransient == FailureClass.isTransient(c.code))
        try await fetcher.shutdown()
    }

    @Test func theItemDeadlineBoundsAllAttemptsTogether() async throws {
        let server = try Self.server()
        defer { server.shutdown() }
        // 1 s per attempt, 3 attempts: 3 s and more without a deadline; the item gets 1.5 s.
        let fetcher = Self.fetcher {
            $0.requestTimeout = .seconds(1)
            $0.itemDeadline = .milliseconds(1500)
        }
        let clock = ContinuousClock()
        let started = clock.now
        let result = await fetcher.fetch(server.url(.hang))
        let elapsed = clock.now - started
        guard case .failure(let e) = result else {
            Issue.record("a server that never answers cannot succeed")
            return
        }
        #expect(e.code == "timeout", "\(e)")
        #expect(e.attempts == 2, "attempt 1 times out at 1 s, attempt 2 is cut at 1.5 s: \(e)")
        #expect(e.message.contains("item deadline of 1.5 s") && e.message.contains("2 attempts"), "\(e.message)")
        #expect(e.isTransient)
        #expect(server.hits(.hang) == 2)
        #expect(elapsed >= .milliseconds(1400) && elapsed < .milliseconds(2500), "took \(elapsed)")
        try await fetcher.shutdown()
    }

    @Test func anAttemptLongerThanTheDeadlineIsCutAtIt() async throws {
        let server = try Self.server()
        defer { server.shutdown() }
        let fetcher = Self.fetcher {
            $0.requestTimeout = .seconds(10)
            $0.itemDeadline = .seconds(1)
        }
        let clock = ContinuousClock()
        let started = clock.now
        let result = await fetcher.fetch(server.url(.hang))
        let elapsed = clock.now - started
        guard case .failure(let e) = result else {
            Issue.record("a server that never answers cannot succeed")
            return
        }
        #expect(e.code == "timeout")
        #expect(e.attempts == 1)
        #expect(e.message.contains("item deadline of 1 s") && e.message.contains("cut at the deadline"), "\(e.message)")
        #expect(elapsed >= .milliseconds(950) && elapsed < .milliseconds(2000), "took \(elapsed)")
        // The fetcher is not stuck: the next item is fetched at once.
        #expect(try await fetcher.fetch(server.url(Self.ok)).get().attempts == 1)
        try await fetcher.shutdown()
    }

    @Test func noRetryWaitsPastTheDeadline() async throws {
        let server = try Self.server()
        defer { server.shutdown() }
        // Retry-After: 5 with a 1.5 s budget: the retry would start after the deadline.
        let fetcher = Self.fetcher { $0.itemDeadline = .milliseconds(1500) }
        let clock = ContinuousClock()
        let started = clock.now
        let result = await fetcher.fetch(server.url(.downForLong))
        let elapsed = clock.now - started
        guard case .failure(let e) = result else {
            Issue.record("a 503 cannot succeed")
            return
        }
        #expect(e.code == "http_5xx", "the last attempt's own class: \(e)")
        #expect(e.httpStatus == 503)
        #expect(e.attempts == 1)
        #expect(e.message.contains("not retried: the item deadline of 1.5 s would pass first"), "\(e.message)")
        #expect(elapsed < .seconds(1), "took \(elapsed)")
        #expect(server.hits(.downForLong) == 1)
        try await fetcher.shutdown()
    }

    @Test func theDefaultDeadlineIsSixtySeconds() {
        #expect(FetchConfiguration().itemDeadline == .seconds(60))
        #expect(ImageFetcher.seconds(.seconds(60)) == "60 s")
        #expect(ImageFetcher.seconds(.milliseconds(1500)) == "1.5 s")
    }

    @Test func hostTimingsNameTheSlowestHost() async throws {
        let fast = try Self.server()
        let slow = try Self.server()
        defer {
            fast.shutdown()
            slow.shutdown()
        }
        let fetcher = Self.fetcher {
            $0.requestTimeout = .seconds(1)
            $0.maxAttempts = 2
        }
        #expect(fetcher.hostTimings().isEmpty)
        _ = try await fetcher.fetch(fast.url(Self.ok)).get()
        _ = try await fetcher.fetch(fast.url(.tenth)).get()
        _ = try await fetcher.fetch(fast.url(.flaky)).get() // 500, then 200: 2 requests
        guard case .failure = await fetcher.fetch(slow.url(.slow)) else {
            Issue.record("/slow.jpg answers after 3 s, past the 1 s timeout")
            return
        }
        _ = await fetcher.fetch(Self.jpeg) // a file: not a host
        let timings = fetcher.hostTimings()
        #expect(timings.map(\.host) == ["127.0.0.1:\(slow.port)", "127.0.0.1:\(fast.port)"], "slowest first")
        let s = try #require(timings.first)
        #expect(s.requests == 2 && s.timeouts == 2)
        #expect(s.maxSeconds >= 0.9 && s.maxSeconds < 2, "\(s)")
        #expect(s.totalSeconds >= 1.8 && s.totalSeconds >= s.maxSeconds)
        let f = try #require(timings.last)
        #expect(f.requests == 4 && f.timeouts == 0)
        #expect(f.maxSeconds >= 0.14 && f.maxSeconds < 1, "/tenth.jpg takes 150 ms: \(f)")
        #expect(abs(f.meanSeconds - f.totalSeconds / 4) < 1e-9)
        try await fetcher.shutdown()
    }

    @Test func aServerErrorThenSuccessIsRetried() async throws {
        let server = try Self.server()
        defer { server.shutdown() }
        let fetcher = Self.fetcher()
        let image = try await fetcher.fetch(server.url(.flaky)).get()
        #expect(image.attempts == 2)
        #expect(server.hits(.flaky) == 2)
        try await fetcher.shutdown()
    }

    @Test func redirectsAreFollowedWithinTheLimit() async throws {
        let server = try Self.server()
        defer { server.shutdown() }
        let fetcher = Self.fetcher()
        let image = try await fetcher.fetch(server.url(.moved)).get()
        #expect(image.bytes == (try Fixtures.bytes(Self.jpeg)))
        try await fetcher.shutdown()
    }

    @Test func retryAfterPausesTheWholeHost() async throws {
        let server = try Self.server()
        defer { server.shutdown() }
        let fetcher = Self.fetcher { $0.requestTimeout = .seconds(5) }
        let busy = Task { await fetcher.fetch(server.url(.busy)) }
        // Let the 429 arrive, then ask the same host for something else.
        while server.hits(.busy) == 0 { try await Task.sleep(for: .milliseconds(10)) }
        try await Task.sleep(for: .milliseconds(100))
        let other = try await fetcher.fetch(server.url(Self.ok)).get()
        #expect(other.attempts == 1)
        let image = try await busy.value.get()
        #expect(image.attempts == 2)
        let refused = try #require(server.times(.busy).first)
        let retried = try #require(server.times(.busy).last)
        let otherAt = try #require(server.times(Self.ok).first)
        // Retry-After: 1 holds both the retry and the unrelated request to the same host.
        #expect(retried - refused >= .milliseconds(950))
        #expect(otherAt - refused >= .milliseconds(950))
        try await fetcher.shutdown()
    }

    @Test func thePerHostLimitHolds() async throws {
        let server = try Self.server()
        defer { server.shutdown() }
        let fetcher = Self.fetcher { $0.perHostLimit = 3 }
        let results = await withTaskGroup(of: Bool.self) { group in
            for _ in 0..<12 {
                group.addTask {
                    if case .success = await fetcher.fetch(server.url(.tenth)) { true } else { false }
                }
            }
            return await group.reduce(into: [Bool]()) { $0.append($1) }
        }
        #expect(results.allSatisfy { $0 })
        #expect(server.maxInFlight == 3)
        try await fetcher.shutdown()
    }

    @Test func aClosedPortIsAConnectionFailure() async throws {
        let fetcher = Self.fetcher { $0.maxAttempts = 2 }
        let port = PostgresServer.freePort()
        let result = await fetcher.fetch("http://127.0.0.1:\(port)/x.jpg")
        guard case .failure(let e) = result else {
            Issue.record("nothing listens there")
            return
        }
        #expect(e.code == "connection", "\(e)")
        #expect(e.attempts == 2)
        try await fetcher.shutdown()
    }

    @Test func filesAndPathsAreRead() async throws {
        let fetcher = Self.fetcher()
        let expected = try Fixtures.bytes(Self.jpeg)
        #expect(try await fetcher.fetch(Self.jpeg).get().bytes == expected)
        #expect(try await fetcher.fetch("file://" + Self.jpeg).get().bytes == expected)
        guard case .failure(let missing) = await fetcher.fetch("/nonexistent/x.jpg") else {
            Issue.record("a missing file must fail")
            return
        }
        #expect(missing.code == "unreadable")
        let strict = Self.fetcher { $0.allowFiles = false }
        guard case .failure(let refused) = await strict.fetch(Self.jpeg) else {
            Issue.record("files must be refusable")
            return
        }
        #expect(refused.code == "invalid_url")
        try await fetcher.shutdown()
        try await strict.shutdown()
    }

    @Test(arguments: ["ftp://host/x.jpg", "data:image/png;base64,AAAA", "", "http://"])
    func unusableLocationsAreInvalidURLs(_ text: String) {
        guard case .failure(let e) = ImageLocation.parse(text) else {
            Issue.record("'\(text)' must be refused")
            return
        }
        #expect(e.code == "invalid_url")
    }

    @Test func relativePathsResolveAgainstTheBaseDirectory() throws {
        #expect(try ImageLocation.parse("img/a.jpg", baseDirectory: "/data/m").get() == .file("/data/m/img/a.jpg"))
        #expect(try ImageLocation.parse("/abs/a.jpg", baseDirectory: "/data/m").get() == .file("/abs/a.jpg"))
        #expect(try ImageLocation.parse("HTTPS://Cdn.Example.com/a.jpg").get().host == "cdn.example.com")
    }

    @Test func retryAfterAcceptsSecondsAndDates() throws {
        #expect(ImageFetcher.parseRetryAfter("2") == .seconds(2))
        #expect(ImageFetcher.parseRetryAfter("soon") == nil)
        let inTenSeconds = Date().addingTimeInterval(10)
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        let parsed = try #require(ImageFetcher.parseRetryAfter(f.string(from: inTenSeconds)))
        #expect(parsed > .seconds(8) && parsed <= .seconds(10))
    }

    @Test func backoffHasFullJitterAndACap() {
        let backoff = FetchConfiguration(backoffBase: .milliseconds(500), backoffMax: .seconds(4))
        #expect(backoff.backoff(retry: 1, random: 1) == .milliseconds(500))
        #expect(backoff.backoff(retry: 3, random: 1) == .seconds(2))
        #expect(backoff.backoff(retry: 10, random: 1) == .seconds(4))
        #expect(backoff.backoff(retry: 3, random: 0) == .zero)
    }
}
