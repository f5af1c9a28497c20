import EwallCore
import Foundation

/// Where Redis is: `redis://[[user]:password@]host[:port][/db]` (the form `$EWALL_REDIS` and
/// `--redis` take). The password never appears in ``description``.
public struct RedisLocation: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    /// ACL user name (Redis 6+); `nil` authenticates as the default user.
    public var username: String?
    public var password: String?
    /// The logical database (`SELECT`), 0 by default.
    public var database: Int

    public init(
        host: String = "127.0.0.1", port: Int = 6379, username: String? = nil, password: String? = nil,
        database: Int = 0
    ) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
    }

    /// A malformed URL, with what is wrong with it.
    public struct Malformed: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Parses a `redis://` URL; throws ``Malformed`` naming what is wrong (the password is
    /// never repeated in the message).
    public init(parsing text: String) throws(Malformed) {
        let shown = Self.redacted(text)
        func bad(_ why: String) -> Malformed {
            Malformed(description: "--redis \(shown): \(why) (expected redis://[:password@]host:port/db)")
        }
        guard text.hasPrefix("redis://") else {
            if text.hasPrefix("rediss://") { throw bad("TLS (rediss://) is not supported") }
            throw bad("the scheme must be redis://")
        }
        var rest = Substring(text.dropFirst("redis://".count))
        var path = ""
        if let slash = rest.firstIndex(of: "/") {
            path = String(rest[rest.index(after: slash)...])
            rest = rest[..<slash]
        }
        guard !rest.contains("?"), !path.contains("?") else { throw bad("query parameters are not supported") }
        var userinfo: Substring?
        if let at = rest.lastIndex(of: "@") {
            userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
        }
        var host = String(rest)
        var port = 6379
        if host.hasPrefix("[") { // [::1]:6379
            guard let close = host.firstIndex(of: "]") else { throw bad("an IPv6 address needs its closing ]") }
            let after = host[host.index(after: close)...]
            let inside = String(host[host.index(after: host.startIndex)..<close])
            if after.hasPrefix(":") {
                guard let p = Int(after.dropFirst()) else { throw bad("the port is not a number") }
                port = p
            } else if !after.isEmpty {
                throw bad("unexpected text after the IPv6 address")
            }
            host = inside
        } else if let colon = host.lastIndex(of: ":") {
            guard let p = Int(host[host.index(after: colon)...]) else { throw bad("the port is not a number") }
            port = p
            host = String(host[..<colon])
        }
        guard !host.isEmpty else { throw bad("the host is missing") }
        guard (1...65535).contains(port) else { throw bad("the port \(port) is out of range") }
        var database = 0
        if !path.isEmpty {
            guard let db = Int(path), db >= 0 else { throw bad("the database '\(path)' is not a number") }
            database = db
        }
        var username: String?
        var password: String?
        if let userinfo {
            let parts = userinfo.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
            let user = parts[0].removingPercentEncoding ?? String(parts[0])
            if parts.count == 2 {
                password = parts[1].removingPercentEncoding ?? String(parts[1])
                username = user.isEmpty ? nil : user
            } else {
                // redis://secret@host: a lone word is the password (as redis-cli -u reads it).
                password = user
            }
            if password?.isEmpty == true { password = nil }
        }
        self.init(host: host, port: port, username: username, password: password, database: database)
    }

    public var description: String {
        let auth = password == nil ? "" : "\(username ?? ""):***@"
        let h = host.contains(":") ? "[\(host)]" : host
        return "redis://\(auth)\(h):\(port)/\(database)"
    }

    /// The URL with any password replaced by `***`.
    static func redacted(_ text: String) -> String {
        guard let scheme = text.range(of: "://"), let at = text[scheme.upperBound...].lastIndex(of: "@") else {
            return text
        }
        let info = text[scheme.upperBound..<at]
        if let colon = info.firstIndex(of: ":") {
            return String(text[..<colon]) + ":***" + String(text[at...])
        }
        return String(text[..<scheme.upperBound]) + "***" + String(text[at...])
    }
}

extension RedisLocation.Malformed: EwallFailure {
    public var failureCode: String { "invalid_redis_url" }
    public var message: String { description }
    public var kind: FailureKind { .invalidRequest }
}
