import Foundation

/// What a finished child process left: its exit status and everything it printed.
public struct ProcessOutput: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// The one way tests run a program: to its end (``run(_:_:environment:replacing:)``), or beside
/// the test (``start(_:_:prefix:environment:replacing:)``). Output goes to temporary files, not
/// pipes, so a child that fills one stream while the test reads the other cannot stall either side.
public enum ProcessRunner {
    /// A built executable of this package: beside the test bundle, else in `.build/debug`.
    public static func built(_ name: String) throws -> URL {
        let candidates = [
            Bundle.main.bundleURL.appendingPathComponent(name),
            Fixtures.root.appendingPathComponent(".build/debug/\(name)"),
        ]
        guard let exe = candidates.first(where: { FileManager.default.isExecutableFile(atPath: $0.path) }) else {
            throw Fixtures.Missing(description: "\(name) not built: run `swift build --build-tests` (make test does)")
        }
        return exe
    }

    /// The environment the tools under test run in: this process's, with `EWALL_PRECISION=fp32`
    /// unless it is set, so a tool that is not testing `--precision auto` runs the reference
    /// precision without measuring at start (tests of auto pass `--precision auto`).
    public static var childEnvironment: [String: String] {
        var env = ProcessInfo.processInfo.environment
        if env["EWALL_PRECISION"] == nil { env["EWALL_PRECISION"] = "fp32" }
        return env
    }

    /// Runs `executable` with `arguments` in the repository root and waits for it.
    /// - Parameters:
    ///   - environment: added to this process's environment (`replacing: true`: the whole environment).
    public static func run(
        _ executable: URL, _ arguments: [String], environment: [String: String] = [:], replacing: Bool = false
    ) throws -> ProcessOutput {
        let running = try start(executable, arguments, environment: environment, replacing: replacing)
        defer { running.removeOutput() }
        return running.wait()
    }

    /// Starts `executable` with `arguments` in the repository root and returns at once: for a
    /// tool that runs beside the test (a worker, a sync, a server) and is signalled, killed or
    /// waited for. `prefix` runs it through another program first (`ip netns exec NS`).
    public static func start(
        _ executable: URL, _ arguments: [String], prefix: [String] = [], environment: [String: String] = [:],
        replacing: Bool = false
    ) throws -> RunningProcess {
        try RunningProcess(
            executable, arguments, prefix: prefix,
            environment: replacing ? environment : Self.childEnvironment.merging(environment) { $1 })
    }

    /// Runs a program given by path (`/usr/bin/ldd`, `/usr/bin/python3`).
    public static func run(
        path: String, _ arguments: [String], environment: [String: String] = [:], replacing: Bool = false
    ) throws -> ProcessOutput {
        try run(URL(fileURLWithPath: path), arguments, environment: environment, replacing: replacing)
    }
}

/// A child process started by ``ProcessRunner/start(_:_:prefix:environment:replacing:)``: its
/// output goes to temporary files, readable while it runs.
public final class RunningProcess: Sendable {
    public let process: Process
    private let out: URL
    private let err: URL

    init(_ executable: URL, _ arguments: [String], prefix: [String], environment: [String: String]) throws {
        let dir = FileManager.default.temporaryDirectory
        out = dir.appendingPathComponent("run-\(UUID().uuidString).out")
        err = dir.appendingPathComponent("run-\(UUID().uuidString).err")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        let p = Process()
        if prefix.isEmpty {
            p.executableURL = executable
            p.arguments = arguments
        } else {
            p.executableURL = URL(fileURLWithPath: prefix[0])
            p.arguments = Array(prefix.dropFirst()) + [executable.path] + arguments
        }
        p.currentDirectoryURL = Fixtures.root
        p.environment = environment
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = try FileHandle(forWritingTo: out)
        p.standardError = try FileHandle(forWritingTo: err)
        try p.run()
        process = p
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }
    /// What it printed so far.
    public var stdout: String { (try? String(contentsOf: out, encoding: .utf8)) ?? "" }
    public var stderr: String { (try? String(contentsOf: err, encoding: .utf8)) ?? "" }

    public func signal(_ s: Int32) { kill(process.processIdentifier, s) }

    /// Waits for it to end.
    public func wait() -> ProcessOutput {
        process.waitUntilExit()
        return ProcessOutput(status: process.terminationStatus, stdout: stdout, stderr: stderr)
    }

    /// Waits at most `limit`; a process still running then is killed (SIGKILL), so a hang fails
    /// its test instead of holding the suite.
    public func wait(within limit: Duration) -> (output: ProcessOutput, timedOut: Bool) {
        let deadline = ContinuousClock.now + limit
        while process.isRunning && ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.05) }
        let timedOut = process.isRunning
        if timedOut { signal(SIGKILL) }
        return (wait(), timedOut)
    }

    func removeOutput() {
        try? FileManager.default.removeItem(at: out)
        try? FileManager.default.removeItem(at: err)
    }
}
