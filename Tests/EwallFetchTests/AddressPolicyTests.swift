import EwallCore
import EwallFetch
import EwallTestSupport
import Foundation
import Testing

/// Server-side request forgery: what a fetcher under an ``AddressPolicy`` refuses, and that it
/// refuses before connecting (the loopback test server counts zero hits).
@Suite("SSRF: the address policy", .serialized)
struct AddressPolicyTests {
    static func v4(_ s: String) -> HostAddress { .v4(s.split(separator: ".").map { UInt8($0)! }) }
    static func v6(_ s: String) -> HostAddress {
        var b = [UInt8](repeating: 0, count: 16)
        _ = inet_pton(AF_INET6, s, &b)
        return .v6(b)
    }

    @Test("Every non-public range is refused, with its name; public addresses pass")
    func ranges() {
        let refused: [(HostAddress, String)] = [
            (Self.v4("127.0.0.1"), "loopback"), (Self.v4("127.8.9.10"), "loopback"), (Self.v4("10.1.2.3"), "private"),
            (Self.v4("172.16.0.1"), "private"), (Self.v4("172.31.255.255"), "private"),
            (Self.v4("192.168.1.1"), "private"),
            (Self.v4("169.254.169.254"), "link-local"), (Self.v4("100.64.0.1"), "shared"),
            (Self.v4("0.0.0.0"), "unspecified"),
            (Self.v4("224.0.0.1"), "multicast"), (Self.v4("239.255.255.250"), "multicast"),
            (Self.v4("255.255.255.255"), "broadcast"),
            (Self.v4("240.0.0.1"), "reserved"), (Self.v4("198.18.0.1"), "benchmarking"),
            (Self.v4("192.0.2.1"), "documentation"),
            (Self.v6("::1"), "loopback"), (Self.v6("::"), "unspecified"), (Self.v6("fe80::1"), "link-local"),
            (Self.v6("fd00::1"), "unique-local"), (Self.v6("fc12::1"), "unique-local"),
            (Self.v6("ff02::1"), "multicast"),
            (Self.v6("::ffff:127.0.0.1"), "loopback"), (Self.v6("::ffff:169.254.169.254"), "link-local"),
            (Self.v6("64:ff9b::10.0.0.1"), "private"), (Self.v6("2002:c0a8:0101::1"), "private"),
            (Self.v6("2001:db8::1"), "documentation"),
        ]
        for (address, why) in refused {
            let reason = AddressPolicy.refusal(for: address)
            #expect(reason?.contains(why) == true, "\(address): \(reason ?? "allowed")")
        }
        for address in [
            Self.v4("8.8.8.8"), Self.v4("1.1.1.1"), Self.v4("172.32.0.1"), Self.v4("100.128.0.1"),
            Self.v4("192.169.0.1"), Self.v6("2606:4700::1111"), Self.v6("2a00:1450:4001::200e"),
        ] {
            #expect(AddressPolicy.refusal(for: address) == nil, "\(address) is public")
        }
    }

    @Test("Refused before connecting: loopback by IP, by name, in odd notations; private, link-local, multicast")
    func refusedURLs() async throws {
        let target = try TestHTTPServer { _ in .init(body: Array("secret".utf8)) }
        defer { target.shutdown() }
        let fetcher = ImageFetcher(
            configuration: FetchConfiguration(maxAttempts: 1, allowFiles: false, addressPolicy: AddressPolicy()))
        let p = target.port
        let urls = [
            "http://127.0.0.1:\(p)/a", "http://localhost:\(p)/b", "http://[::1]:\(p)/c",
            "http://[::ffff:127.0.0.1]:\(p)/d",
            "http://2130706433:\(p)/e", "http://0x7f.0.0.1:\(p)/f", "http://127.1:\(p)/g", "http://0.0.0.0:\(p)/h",
            "http://LOCALHOST.:\(p)/i", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x",
            "http://192.168.0.1/x",
            "http://172.16.5.4/x", "http://100.64.1.1/x", "http://224.0.0.251/x", "http://[fe80::1]/x",
            "http://[fd00::1]/x",
        ]
        for url in urls {
            let r = await fetcher.fetch(url)
            guard case .failure(let e) = r else {
                Issue.record("\(url) was fetched")
                continue
            }
            #expect(e.code == FailureClass.blockedURL, "\(url): \(e)")
            #expect(e.message.contains("refused"), "\(url): \(e.message)")
        }
        #expect(
            target.hits("/a") + target.hits("/b") + target.hits("/c") + target.hits("/d") + target.hits("/e")
                + target.hits("/f") + target.hits("/g") + target.hits("/h") + target.hits("/i") == 0)
        try await fetcher.shutdown()
    }

    @Test("Only http and https: file, ftp, gopher, data and scheme-less inputs are refused")
    func schemes() async throws {
        let fetcher = ImageFetcher(
            configuration: FetchConfiguration(maxAttempts: 1, allowFiles: false, addressPolicy: AddressPolicy()))
        for url in [
            "file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://example.com/", "data:image/png;base64,AAAA",
            "/etc/passwd", "dict://127.0.0.1:11211/stat",
        ] {
            let r = await fetcher.fetch(url)
            guard case .failure(let e) = r else {
                Issue.record("\(url) was fetched")
                continue
            }
            #expect(e.code == FailureClass.blockedURL, "\(url): \(e)")
        }
        try await fetcher.shutdown()
    }

    @Test("Every redirect hop is checked: an allowed host redirecting to loopback or metadata is refused at the hop")
    func redirects() async throws {
        let image = try Fixtures.bytes(Fixtures.image("baseline_600x400.jpg"))
        let box = PortBox()
        let server = try TestHTTPServer { req in
            let p = box.port
            switch req.path {
            case "/to-localhost": return .init(status: 302, headers: [("Location", "http://localhost:\(p)/secret")])
            case "/to-metadata":
                return .init(status: 301, headers: [("Location", "http://169.254.169.254/latest/meta-data/")])
            case "/to-file": return .init(status: 302, headers: [("Location", "file:///etc/passwd")])
            case "/to-self": return .init(status: 307, headers: [("Location", "/image")])
            case "/loop": return .init(status: 302, headers: [("Location", "/loop")])
            case "/image": return .init(headers: [("Content-Type", "image/jpeg")], body: image)
            default: return .init(body: Array("secret".utf8))
            }
        }
        defer { server.shutdown() }
        box.port = server.port
        // 127.0.0.1 is allowed (an internal CDN, say); `localhost` is another host and is not.
        let fetcher = ImageFetcher(
            configuration: FetchConfiguration(
                maxAttempts: 1, allowFiles: false,
                addressPolicy: AddressPolicy(allowHosts: ["127.0.0.1"])))
        for path in ["/to-localhost", "/to-metadata", "/to-file"] {
            let r = await fetcher.fetch(server.url(path))
            guard case .failure(let e) = r else {
                Issue.record("\(path) was followed")
                continue
            }
            #expect(e.code == FailureClass.blockedURL, "\(path): \(e)")
            #expect(server.hits(path) == 1)
        }
        #expect(server.hits("/secret") == 0)
        // A redirect within allowed hosts is followed.
        let ok = await fetcher.fetch(server.url("/to-self"))
        #expect((try? ok.get().bytes) == image)
        let loop = await fetcher.fetch(server.url("/loop"))
        if case .failure(let e) = loop {
            #expect(e.code == FailureClass.redirectLoop)
        } else {
            Issue.record("a loop was fetched")
        }
        try await fetcher.shutdown()
    }
}

/// The test server's own port, for redirect targets it builds.
final class PortBox: Sendable {
    private let value = Locked(0)
    var port: Int {
        get { value.withLock { $0 } }
        set { value.withLock { $0 = newValue } }
    }
}
