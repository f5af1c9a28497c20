import EwallCore
import Foundation
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Which addresses a fetcher may connect to when the URLs come from callers it does not trust
/// (a server's API), against server-side request forgery.
///
/// With a policy set on ``FetchConfiguration/addressPolicy``, every request and every redirect
/// hop is checked before it is sent:
/// - the scheme must be `http` or `https`;
/// - the host is resolved (DNS), and **every** address it resolves to must be public: loopback,
///   private (RFC 1918, unique-local), link-local (including the cloud metadata address
///   169.254.169.254), shared (CGNAT), multicast, broadcast, unspecified, documentation and
///   reserved ranges are refused, also when written as an IPv4-mapped or NAT64 IPv6 address;
/// - for `http`, the connection is pinned to the address that was checked, so a second DNS
///   answer cannot swap in a private one (DNS rebinding). For `https` the TLS name must match
///   the host, so the client resolves again; the window is the time between two lookups.
///
/// Hosts in ``allowHosts`` skip the address check (an internal image CDN, a test server).
public struct AddressPolicy: Sendable, Hashable {
    /// Host names or IP literals, compared case-insensitively with the URL's host, that may be
    /// fetched whatever they resolve to.
    public var allowHosts: Set<String>

    public init(allowHosts: some Sequence<String> = []) {
        self.allowHosts = Set(allowHosts.map { Self.normalised(host: $0) })
    }

    /// Whether `host` (as written in a URL) is on the allow-list.
    public func allows(host: String) -> Bool { allowHosts.contains(Self.normalised(host: host)) }

    static func normalised(host: String) -> String {
        var h = host.lowercased()
        if h.hasPrefix("["), h.hasSuffix("]") { h = String(h.dropFirst().dropLast()) }
        if h.hasSuffix(".") { h.removeLast() }
        return h
    }

    /// Why an address must not be fetched, or `nil` when it is a public unicast address.
    public static func refusal(for address: HostAddress) -> String? {
        switch address {
        case .v4(let b): return refusal(v4: b)
        case .v6(let b): return refusal(v6: b)
        }
    }

    private static func refusal(v4 b: [UInt8]) -> String? {
        let (a, c) = (b[0], b[1])
        switch a {
        case 0: return "unspecified (0.0.0.0/8)"
        case 10: return "private (10.0.0.0/8)"
        case 127: return "loopback (127.0.0.0/8)"
        case 100 where (64...127).contains(c): return "shared address space (100.64.0.0/10)"
        case 169 where c == 254: return "link-local (169.254.0.0/16, cloud metadata)"
        case 172 where (16...31).contains(c): return "private (172.16.0.0/12)"
        case 192 where c == 168: return "private (192.168.0.0/16)"
        case 192 where c == 0 && b[2] == 0: return "IETF protocol assignments (192.0.0.0/24)"
        case 192 where c == 0 && b[2] == 2: return "documentation (192.0.2.0/24)"
        case 198 where c == 18 || c == 19: return "benchmarking (198.18.0.0/15)"
        case 198 where c == 51 && b[2] == 100: return "documentation (198.51.100.0/24)"
        case 203 where c == 0 && b[2] == 113: return "documentation (203.0.113.0/24)"
        case 224...239: return "multicast (224.0.0.0/4)"
        case 240...255: return b == [255, 255, 255, 255] ? "broadcast" : "reserved (240.0.0.0/4)"
        default: return nil
        }
    }

    private static func refusal(v6 b: [UInt8]) -> String? {
        if b.allSatisfy({ $0 == 0 }) { return "unspecified (::)" }
        if b[0..<15].allSatisfy({ $0 == 0 }) && b[15] == 1 { return "loopback (::1)" }
        // IPv4-mapped ::ffff:a.b.c.d and IPv4-compatible ::a.b.c.d carry an IPv4 address.
        if b[0..<10].allSatisfy({ $0 == 0 }) && ((b[10] == 0xff && b[11] == 0xff) || (b[10] == 0 && b[11] == 0)) {
            return refusal(v4: Array(b[12..<16])).map { "IPv4 inside IPv6: \($0)" }
        }
        // NAT64 64:ff9b::/96 and 6to4 2002::/16 reach an embedded IPv4 address.
        if b[0] == 0x00 && b[1] == 0x64 && b[2] == 0xff && b[3] == 0x9b && b[4..<12].allSatisfy({ $0 == 0 }) {
            return refusal(v4: Array(b[12..<16])).map { "NAT64: \($0)" }
        }
        if b[0] == 0x20 && b[1] == 0x02 {
            return refusal(v4: Array(b[2..<6])).map { "6to4: \($0)" }
        }
        if b[0] & 0xfe == 0xfc { return "unique-local (fc00::/7)" }
        if b[0] == 0xfe && b[1] & 0xc0 == 0x80 { return "link-local (fe80::/10)" }
        if b[0] == 0xfe && b[1] & 0xc0 == 0xc0 { return "site-local (fec0::/10)" }
        if b[0] == 0xff { return "multicast (ff00::/8)" }
        if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0x0d && b[3] == 0xb8 { return "documentation (2001:db8::/32)" }
        return nil
    }

    /// Resolves `host` (a name or an IP literal in any form `getaddrinfo` accepts, such as
    /// `2130706433` or `0x7f.1`) on NIO's blocking thread pool.
    public static func resolve(host: String, port: Int) async throws(FetchError) -> [HostAddress] {
        let name = normalised(host: host)
        let result: Result<[HostAddress], FetchError>
        do {
            result = try await NIOThreadPool.singleton.runIfActive { Self.getaddrinfo(name, port: port) }
        } catch {
            result = .failure(FetchError(FailureClass.connection, "cannot resolve \(name): \(error)"))
        }
        return try result.get()
    }

    private static func getaddrinfo(_ host: String, port: Int) -> Result<[HostAddress], FetchError> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let rc = Glibc.getaddrinfo(host, String(port), &hints, &list)
        guard rc == 0, let first = list else {
            let why = String(cString: gai_strerror(rc))
            return .failure(FetchError(FailureClass.connection, "cannot resolve \(host): \(why)"))
        }
        defer { freeaddrinfo(first) }
        var out: [HostAddress] = []
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let ai = p {
            if let sa = ai.pointee.ai_addr {
                switch ai.pointee.ai_family {
                case AF_INET:
                    var a = sa.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_addr }
                    out.append(.v4(withUnsafeBytes(of: &a) { Array($0) }))
                case AF_INET6:
                    var a = sa.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_addr }
                    out.append(.v6(withUnsafeBytes(of: &a) { Array($0) }))
                default: break
                }
            }
            p = ai.pointee.ai_next
        }
        if out.isEmpty { return .failure(FetchError(FailureClass.connection, "\(host) has no IPv4 or IPv6 address")) }
        return .success(out)
    }

    /// Checks one URL (a request or a redirect target): scheme, then the host's addresses.
    /// Returns the address to pin `http` connections to, or `nil` for an allow-listed host.
    public func check(_ url: URL) async throws(FetchError) -> HostAddress? {
        let scheme = url.scheme?.lowercased() ?? ""
        guard scheme == "http" || scheme == "https" else {
            throw FetchError(FailureClass.blockedURL, "the scheme '\(scheme):' is not allowed (http and https only)")
        }
        guard let host = url.host, !host.isEmpty else {
            throw FetchError(FailureClass.invalidURL, "'\(url.absoluteString)' has no host")
        }
        if allows(host: host) { return nil }
        let addresses = try await Self.resolve(host: host, port: url.port ?? (scheme == "https" ? 443 : 80))
        for a in addresses {
            if let why = Self.refusal(for: a) {
                let shown = Self.normalised(host: host) == a.description ? a.description : "\(host) resolves to \(a)"
                throw FetchError(
                    FailureClass.blockedURL,
                    "refused: \(shown), a \(why) address; only public addresses may be fetched "
                        + "(allow a host explicitly with --allow-host)")
            }
        }
        return addresses[0]
    }
}

/// An IPv4 or IPv6 address as bytes in network order.
public enum HostAddress: Sendable, Hashable, CustomStringConvertible {
    case v4([UInt8])
    case v6([UInt8])

    public var description: String {
        switch self {
        case .v4(let b): return b.map(String.init).joined(separator: ".")
        case .v6(let b):
            var buf = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            b.withUnsafeBytes { _ = inet_ntop(AF_INET6, $0.baseAddress, &buf, socklen_t(buf.count)) }
            return String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// The address as a URL host (`[...]` around IPv6).
    public var urlHost: String {
        if case .v6 = self { return "[\(description)]" }
        return description
    }
}
