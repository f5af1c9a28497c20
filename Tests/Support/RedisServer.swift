import EwallCore
import Foundation

/// A throwaway `redis-server` (Debian's `redis-server` package, installed by `make deps`) on a
/// free loopback port, persistence off, for one test: ``stop()`` kills it (as a crash would),
/// ``start()`` brings it back on the same port, empty. Tests that need it are enabled with
/// `.enabled(if: RedisServer.available)`, so a machine without the package shows them skipped.
public final class RedisServer: Sendable {
    public static let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }
    public static var available: Bool { binary != nil }

    public let port: Int
    public let password: String?
    private let process = Locked<RunningProcess?>(nil)

    /// Starts a server; `password` sets `requirepass`.
    public init(password: String? = nil) throws {
        self.port = PostgresServer.freePort()
        self.password = password
        try start()
    }

    deinit { stop() }

    /// `redis://[:password@]127.0.0.1:port/db`
    public func url(db: Int = 0, password: String? = nil) -> String {
        let p = password ?? self.password
        return "redis://\(p.map { ":\($0)@" } ?? "")127.0.0.1:\(port)/\(db)"
    }

    public func start() throws {
        try process.withLock { process in
            guard process == nil, let binary = Self.binary else { return }
            var args = [
                "--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--loglevel", "warning", "--dir", NSTemporaryDirectory(), "--protected-mode", "no",
            ]
            if let password { args += ["--requirepass", password] }
            let p = try ProcessRunner.start(URL(fileURLWithPath: binary), args)
            process = p
            // Ready when it accepts a connection.
            let deadline = Date().addingTimeInterval(10)
            while Date() < deadline {
                if Self.accepts(port: port) { return }
                usleep(10_000)
            }
            throw NSError(
                domain: "RedisServer", code: 1,
                userInfo: [NSLocalizedDescriptionKey: "redis-server did not start on \(port)"])
        }
    }

    /// Kills the server at once (SIGKILL: no goodbye to the clients).
    public func stop() {
        process.withLock { process in
            guard let p = process else { return }
            p.signal(SIGKILL)
            _ = p.wait()
            p.removeOutput()
            process = nil
        }
    }

    /// Runs `redis-cli` against this server and returns its output (for checks a test makes
    /// from the outside, as the platform would).
    public func cli(_ args: [String]) -> String {
        let r = try? ProcessRunner.run(
            path: "/usr/bin/redis-cli",
            ["-p", "\(port)"] + (password.map { ["-a", $0, "--no-auth-warning"] } ?? []) + args)
        return (r?.stdout ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }
}
