import EwallML
import EwallServer
import EwallTestSupport
import Foundation
import Testing

/// What one connection may hold: the request-head deadline (slowloris), the idle timeout and
/// the cap on open connections, each against its own server with short limits.
@Suite("ewall-serve connections", .serialized)
struct ConnectionLimitTests {
    static func metric(_ s: RunningServer, _ name: String) async throws -> Double? {
        let r = try await RawHTTP.send(port: s.port, method: "GET", target: "/metrics")
        let line = r.text.split(separator: "\n").first { $0.hasPrefix(name + " ") }
        return line.flatMap { Double($0.split(separator: " ").last!) }
    }

    /// `n` connections, opened 100 at a time (more at once would overflow the listen backlog,
    /// and the kernel would retry the rest a second later).
    static func open(_ n: Int, port: Int) async throws -> [RawConnection] {
        var all: [RawConnection] = []
        while all.count < n {
            let batch = min(100, n - all.count)
            all += try await withThrowingTaskGroup(of: RawConnection.self) { group in
                for _ in 0..<batch { group.addTask { try await RawConnection.open(port: port) } }
                return try await group.reduce(into: []) { $0.append($1) }
            }
        }
        return all
    }

    static func waitForAllClosed(_ connections: [RawConnection], timeout: Duration) async -> Int {
        let deadline = ContinuousClock.now + timeout
        while connections.contains(where: \.isOpen) && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        return connections.filter { !$0.isOpen }.count
    }

    @Test(
        "300 stalled connections (silent, half a request line, slowloris): /healthz stays fast, and each is closed after the header timeout"
    )
    func stalledConnections() async throws {
        let timeout = Duration.seconds(2)
        let s = try await RunningServer.start { _, server in
            server.headerTimeout = timeout
            server.idleTimeout = .seconds(30)
        }
        defer { Task { try? await s.stop() } }
        let started = ContinuousClock.now
        let stalled = try await Self.open(300, port: s.port)
        // 0..<100 say nothing; 100..<200 send half a request line; 200..<300 drip a head.
        let partial = stalled[100..<200], slowloris = Array(stalled[200..<300])
        for c in partial { try await c.send("GET /healthz HTT") }
        let opened = ContinuousClock.now - started
        #expect(
            stalled.allSatisfy { $0.isOpen }, "stalled connections were closed \(opened) in, before the header timeout")
        // Slowloris: one more byte of a never-ending head every 250 ms.
        let drip = Task {
            let head =
                Array("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ".utf8)
                + [UInt8](repeating: UInt8(ascii: "a"), count: 1000)
            var i = 0
            while !Task.isCancelled && i < head.count {
                for c in slowloris where c.isOpen { try? await c.send([head[i]]) }
                i += 1
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
        defer { drip.cancel() }

        // While they are open, the server answers at once (blocked, it would take the header timeout).
        var times: [Duration] = []
        for _ in 0..<5 {
            let t0 = ContinuousClock.now
            let r = try await RawHTTP.send(port: s.port, method: "GET", target: "/healthz", timeout: .seconds(5))
            times.append(ContinuousClock.now - t0)
            #expect(r.status == 200)
        }
        times.sort()
        #expect(
            times[2] < .milliseconds(250) && times[4] < .seconds(1),
            "/healthz took \(times) with 300 stalled connections open")

        // Then the server closes every one of them, the slowloris ones included.
        let closed = await Self.waitForAllClosed(stalled, timeout: timeout + .seconds(3))
        let all = ContinuousClock.now - started
        #expect(closed == 300, "\(300 - closed) stalled connections still open \(all) after they were opened")
        #expect(all >= timeout - .milliseconds(100), "closed after \(all), before the header timeout of \(timeout)")
        #expect(slowloris.allSatisfy { !$0.isOpen })
        #expect(try await Self.metric(s, "ewall_http_connections_header_timeouts_total") ?? 0 >= 300)
        #expect(try await RawHTTP.send(port: s.port, method: "GET", target: "/healthz").status == 200)
    }

    @Test(
        "Keep-alive: a quiet connection between requests lasts until the idle timeout; a later head that trickles is cut after the header timeout"
    )
    func keepAliveAndLateHead() async throws {
        let s = try await RunningServer.start { _, server in
            server.headerTimeout = .seconds(1)
            server.idleTimeout = .seconds(3)
        }
        defer { Task { try? await s.stop() } }
        let request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"

        /// Sends one whole request and waits for its answer.
        func exchange(_ c: RawConnection) async throws {
            try await c.send(request)
            let deadline = ContinuousClock.now + .seconds(5)
            while !String(decoding: c.receivedBytes, as: UTF8.self).contains("\"ok\"") && ContinuousClock.now < deadline
            {
                try await Task.sleep(for: .milliseconds(10))
            }
            #expect(String(decoding: c.receivedBytes, as: UTF8.self).hasPrefix("HTTP/1.1 200"))
        }

        let quiet = try await RawConnection.open(port: s.port)
        let late = try await RawConnection.open(port: s.port)
        try await exchange(quiet)
        try await exchange(late)
        let answered = ContinuousClock.now
        // `late` starts its next head at once and never finishes it.
        let drip = Task {
            for byte in Array("GET /healthz HTTP/1.1\r\nX-Slow: ".utf8) + [UInt8](repeating: 97, count: 100) {
                guard late.isOpen, !Task.isCancelled else { return }
                try? await late.send([byte])
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        defer { drip.cancel() }
        #expect(await late.waitForClose(timeout: .milliseconds(2500)), "a trickled head outlived the header timeout")
        let lateClosed = ContinuousClock.now - answered
        #expect(lateClosed >= .milliseconds(900) && lateClosed < .milliseconds(2500), "closed after \(lateClosed)")
        // The quiet one is past the header timeout but within the idle timeout: still open, and served.
        #expect(quiet.isOpen, "a quiet keep-alive connection was closed before the idle timeout")
        try await exchange(quiet)
        let second = ContinuousClock.now
        #expect(await quiet.waitForClose(timeout: .seconds(5)), "a quiet connection outlived the idle timeout")
        let quietClosed = ContinuousClock.now - second
        #expect(quietClosed >= .milliseconds(2500) && quietClosed < .seconds(5), "closed after \(quietClosed)")
    }

    @Test("Over the connection cap, new connections are closed on arrival and counted; below it, requests are served")
    func connectionCap() async throws {
        let s = try await RunningServer.start { _, server in
            server.maxConnections = 8
            server.headerTimeout = .seconds(20)
        }
        defer { Task { try? await s.stop() } }
        let held = try await Self.open(8, port: s.port)
        try await Task.sleep(for: .milliseconds(200))
        #expect(held.allSatisfy { $0.isOpen })
        let extra = try await Self.open(5, port: s.port)
        #expect(await Self.waitForAllClosed(extra, timeout: .seconds(2)) == 5, "connections over the cap were kept")
        #expect(held.allSatisfy { $0.isOpen }, "the cap closed connections that were under it")

        // One slot freed: requests are served again, and the refusals were counted.
        await held[0].close()
        var metrics: RawHTTP.Response?
        var refusedAttempts = 0 // while the server has not yet seen held[0] go
        for _ in 0..<50 where metrics == nil {
            metrics = try? await RawHTTP.send(port: s.port, method: "GET", target: "/metrics", timeout: .seconds(2))
            if metrics == nil {
                refusedAttempts += 1
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        let text = try #require(metrics, "no request was served after a slot was freed").text
        let lines = text.split(separator: "\n").filter { $0.contains("connections") }
        let refused = lines.first { $0.hasPrefix("ewall_http_connections_refused_total ") }
        #expect(refused.flatMap { Double($0.split(separator: " ")[1]) } == Double(5 + refusedAttempts), "\(lines)")
        let open = lines.first { $0.hasPrefix("ewall_http_connections_open ") }
        #expect(
            open.flatMap { Double($0.split(separator: " ")[1]) } == 8, "7 held + the /metrics request itself: \(lines)")
        for c in held { await c.close() }
    }
}
