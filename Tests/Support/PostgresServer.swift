import EwallCore
import Foundation

/// A throwaway PostgreSQL server for the tests: `initdb` into a temporary folder, `pg_ctl
/// start` on a free loopback port, trust authentication, stopped when the test process exits.
/// Debian's server binaries (`postgresql` package, installed by `make deps`) are required:
/// without them the tests fail and say so, they are not skipped.
///
/// PostgreSQL refuses to run as root; when the tests run as root the server runs as the
/// `postgres` user (created by the Debian package) via `runuser`.
public enum PostgresServer {
    public struct Unavailable: Error, CustomStringConvertible {
        public var description: String
    }

    private struct State: Sendable {
        /// One server per test process, started on first use.
        var started: Result<Int, Unavailable>?
        /// Numbers the fresh databases.
        var counter = 0
    }

    private static let state = Locked(State())
    nonisolated(unsafe) private static var dataDirectory: String?

    /// The port of the running server, starting it if needed.
    public static func port() throws -> Int {
        try state.withLock { s in
            if s.started == nil { s.started = start() }
            return try s.started!.get()
        }
    }

    /// A fresh, empty database on the shared server; returns its `postgres://` URL. Runs the
    /// blocking work (initdb, pg_ctl, psql) on a thread of its own, never on Swift's
    /// cooperative pool, which the tests under way need.
    public static func freshDatabase() async throws -> String {
        try await withCheckedThrowingContinuation { cont in
            Thread { cont.resume(with: Result { try freshDatabaseBlocking() }) }.start()
        }
    }

    static func freshDatabaseBlocking() throws -> String {
        let port = try port()
        let name = state.withLock { s in
            s.counter += 1
            return "ewall_test_\(getpid())_\(s.counter)"
        }
        let (status, output) = run(
            psql(),
            [
                "-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "-d", "postgres",
                "-v", "ON_ERROR_STOP=1", "-q", "-c", "CREATE DATABASE \(name)",
            ], asPostgres: false)
        guard status == 0 else { throw Unavailable(description: "CREATE DATABASE failed: \(output)") }
        return "postgres://postgres@127.0.0.1:\(port)/\(name)"
    }

    private static func bin(_ name: String) -> String? {
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            .compactMap { Int($0) }.sorted(by: >)
        for v in versions where FileManager.default.isExecutableFile(atPath: "\(root)/\(v)/bin/\(name)") {
            return "\(root)/\(v)/bin/\(name)"
        }
        return nil
    }

    private static func psql() -> String { bin("psql") ?? "/usr/bin/psql" }

    private static func start() -> Result<Int, Unavailable> {
        guard let initdb = bin("initdb"), let pgctl = bin("pg_ctl") else {
            return .failure(
                Unavailable(
                    description:
                        "PostgreSQL server binaries not found under /usr/lib/postgresql: run `make deps` (apt-get install postgresql)"
                ))
        }
        let root = geteuid() == 0
        stopStaleServers(pgctl: pgctl, asPostgres: root)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ewall-pg-\(getpid())").path
        try? FileManager.default.removeItem(atPath: dir)
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if root {
            _ = run("/bin/chown", ["-R", "postgres:postgres", dir], asPostgres: false)
        }
        let data = dir + "/data"
        var (status, output) = run(
            initdb, ["-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"],
            asPostgres: root)
        guard status == 0 else { return .failure(Unavailable(description: "initdb failed: \(output)")) }
        let port = freePort()
        (status, output) = run(
            pgctl,
            [
                "-D", data, "-l", dir + "/log", "-w", "-t", "60", "-o",
                "-p \(port) -k \(dir) -c listen_addresses=127.0.0.1 -F -c max_connections=200 -c wal_level=logical -c max_replication_slots=64 -c max_wal_senders=64",
                "start",
            ], asPostgres: root)
        guard status == 0 else {
            let log = (try? String(contentsOfFile: dir + "/log", encoding: .utf8)) ?? ""
            return .failure(Unavailable(description: "pg_ctl start failed: \(output) \(log)"))
        }
        dataDirectory = data
        startCommand = [
            pgctl, "-D", data, "-l", dir + "/log", "-w", "-t", "60", "-o",
            "-p \(port) -k \(dir) -c listen_addresses=127.0.0.1 -F -c max_connections=200 -c wal_level=logical -c max_replication_slots=64 -c max_wal_senders=64",
            "start",
        ]
        stopCommand = [pgctl, "-D", data, "-m", "immediate", "stop"]
        stopAsPostgres = root
        atexit {
            if let cmd = PostgresServer.stopCommand {
                _ = PostgresServer.run(cmd[0], Array(cmd.dropFirst()), asPostgres: PostgresServer.stopAsPostgres)
                if let data = PostgresServer.dataDirectory {
                    try? FileManager.default.removeItem(
                        atPath: URL(fileURLWithPath: data).deletingLastPathComponent().path)
                }
            }
        }
        return .success(port)
    }

    /// Servers left by test processes that were killed before their exit handler ran.
    private static func stopStaleServers(pgctl: String, asPostgres: Bool) {
        let tmp = FileManager.default.temporaryDirectory.path
        for name in (try? FileManager.default.contentsOfDirectory(atPath: tmp)) ?? [] where name.hasPrefix("ewall-pg-")
        {
            guard let pid = Int32(name.dropFirst("ewall-pg-".count)), kill(pid, 0) != 0 else { continue }
            run(pgctl, ["-D", "\(tmp)/\(name)/data", "-m", "immediate", "stop"], asPostgres: asPostgres)
            try? FileManager.default.removeItem(atPath: "\(tmp)/\(name)")
        }
    }

    nonisolated(unsafe) static var stopCommand: [String]?
    nonisolated(unsafe) static var startCommand: [String]?

    /// Stops the shared server at once (`-m immediate`, as a crash or a pulled cable would),
    /// for tests of a store that goes away mid-job. ``resume()`` starts it again on the same
    /// port with the same data; the suites run one at a time, so no other test sees it down.
    public static func halt() throws {
        _ = try port()
        guard let cmd = stopCommand else { return }
        let (status, output) = run(cmd[0], Array(cmd.dropFirst()), asPostgres: stopAsPostgres)
        guard status == 0 else { throw Unavailable(description: "pg_ctl stop failed: \(output)") }
    }

    /// Makes the shared server listen on `address` too and trust connections from `cidr`
    /// (test hosts in network namespaces reach it there), by restarting it on the same port.
    public static func listenAlso(_ address: String, trusting cidr: String) throws {
        _ = try port()
        guard var cmd = startCommand, let data = dataDirectory, let i = cmd.firstIndex(of: "-o") else { return }
        if cmd[i + 1].contains(address) { return }
        let hba = "\nhost all all \(cidr) trust\n"
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: data + "/pg_hba.conf"))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(hba.utf8))
        try handle.close()
        cmd[i + 1] = cmd[i + 1].replacingOccurrences(
            of: "listen_addresses=127.0.0.1", with: "listen_addresses=127.0.0.1,\(address)")
        try halt()
        startCommand = cmd
        try resume()
    }

    /// Starts the server that ``halt()`` stopped.
    public static func resume() throws {
        guard let cmd = startCommand else { return }
        let (status, output) = run(cmd[0], Array(cmd.dropFirst()), asPostgres: stopAsPostgres)
        guard status == 0 else { throw Unavailable(description: "pg_ctl start failed: \(output)") }
    }
    nonisolated(unsafe) static var stopAsPostgres = false

    /// Runs a command and waits for it with `posix_spawn` + `waitpid`. Not Foundation's
    /// `Process`: it learns of a child's exit through a descriptor the child inherits, and the
    /// server that `pg_ctl start` leaves running keeps that descriptor open forever.
    @discardableResult
    public static func run(_ exe: String, _ args: [String], asPostgres: Bool) -> (Int32, String) {
        let argv = asPostgres ? ["/usr/sbin/runuser", "-u", "postgres", "--", exe] + args : [exe] + args
        let log = FileManager.default.temporaryDirectory.appendingPathComponent("ewall-pgrun-\(UUID().uuidString).log")
            .path
        defer { try? FileManager.default.removeItem(atPath: log) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, &cargs, environ)
        guard rc == 0 else { return (-1, "cannot start \(argv[0]): \(String(cString: strerror(rc)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let output = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        let exited = (status & 0x7f) == 0
        return (exited ? (status >> 8) & 0xff : -1, output)
    }

    /// A port nothing listens on right now (bind to 0, read it, close).
    public static func freePort() -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

extension PostgresServer {
    /// A server of its own beside the shared one, for a test that needs another setting
    /// (`wal_level=replica`) or a store to restart while the source stays up. Stopped by
    /// ``shutdown()``, and at the test process's exit.
    public final class Separate: Sendable {
        public let port: Int
        private let directory: String
        private let start: [String]
        private let stop: [String]
        private let asPostgres: Bool

        /// `initdb` and `pg_ctl start` in a folder of its own, on a free loopback port, with
        /// `settings` (`-c name=value`) over the tests' usual ones.
        public init(settings: [String: String] = [:]) throws {
            guard let initdb = PostgresServer.bin("initdb"), let pgctl = PostgresServer.bin("pg_ctl") else {
                throw Unavailable(description: "PostgreSQL server binaries not found: run `make deps`")
            }
            asPostgres = geteuid() == 0
            directory =
                FileManager.default.temporaryDirectory.appendingPathComponent(
                    "ewall-pg-\(getpid())-\(UUID().uuidString.prefix(8))"
                ).path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            if asPostgres {
                _ = PostgresServer.run("/bin/chown", ["-R", "postgres:postgres", directory], asPostgres: false)
            }
            let data = directory + "/data"
            let (status, output) = PostgresServer.run(
                initdb, ["-D", data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"], asPostgres: asPostgres
            )
            guard status == 0 else { throw Unavailable(description: "initdb failed: \(output)") }
            port = PostgresServer.freePort()
            var options = [
                "listen_addresses": "127.0.0.1", "max_connections": "100", "wal_level": "logical",
                "max_replication_slots": "16", "max_wal_senders": "16",
            ]
            options.merge(settings) { $1 }
            let flags = options.sorted { $0.key < $1.key }.map { "-c \($0.key)=\($0.value)" }.joined(separator: " ")
            start = [
                pgctl, "-D", data, "-l", directory + "/log", "-w", "-t", "60", "-o",
                "-p \(port) -k \(directory) -F \(flags)", "start",
            ]
            stop = [pgctl, "-D", data, "-m", "immediate", "stop"]
            try resume()
            let (stopCommand, dir, root) = (stop, directory, asPostgres)
            Separate.atExit.withLock { $0.append((stopCommand, dir, root)) }
            Separate.installExitHandler()
        }

        /// `postgres://` URL of a new, empty database on this server.
        public func freshDatabase() throws -> String {
            let name = "ewall_separate_\(UUID().uuidString.prefix(8).lowercased())"
            let (status, output) = PostgresServer.run(
                PostgresServer.psql(),
                [
                    "-h", "127.0.0.1", "-p", "\(port)", "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
                    "-q",
                    "-c", "CREATE DATABASE \(name)",
                ], asPostgres: false)
            guard status == 0 else { throw Unavailable(description: "CREATE DATABASE failed: \(output)") }
            return "postgres://postgres@127.0.0.1:\(port)/\(name)"
        }

        /// Stops it at once (`-m immediate`, as a crash would); ``resume()`` starts it again.
        public func halt() throws {
            let (status, output) = PostgresServer.run(stop[0], Array(stop.dropFirst()), asPostgres: asPostgres)
            guard status == 0 else { throw Unavailable(description: "pg_ctl stop failed: \(output)") }
        }

        public func resume() throws {
            let (status, output) = PostgresServer.run(start[0], Array(start.dropFirst()), asPostgres: asPostgres)
            guard status == 0 else {
                let log = (try? String(contentsOfFile: directory + "/log", encoding: .utf8)) ?? ""
                throw Unavailable(description: "pg_ctl start failed: \(output) \(log)")
            }
        }

        /// Stops it and removes its folder.
        public func shutdown() {
            _ = PostgresServer.run(stop[0], Array(stop.dropFirst()), asPostgres: asPostgres)
            try? FileManager.default.removeItem(atPath: directory)
        }

        private static let atExit = Locked<[(stop: [String], directory: String, asPostgres: Bool)]>([])
        private static let handlerInstalled = Locked(false)

        private static func installExitHandler() {
            guard
                handlerInstalled.withLock({ installed in
                    defer { installed = true }
                    return !installed
                })
            else {
                return
            }
            atexit {
                for s in Separate.atExit.withLock({ $0 }) {
                    _ = PostgresServer.run(s.stop[0], Array(s.stop.dropFirst()), asPostgres: s.asPostgres)
                    try? FileManager.default.removeItem(atPath: s.directory)
                }
            }
        }
    }
}
