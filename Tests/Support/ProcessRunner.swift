import Foundation

/// What a finished child process left: its exit status and everything it printed.
public struct ProcessOutput: Sendable {
    public var status: Int32
    public var stdout: String
    public var stderr: String
}

/// The one way tests run a program to its end. Output goes to temporary files, not pipes, so a
/// child that fills one stream while the test reads the other cannot stall either side.
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
        let dir = FileManager.default.temporaryDirectory
        let out = dir.appendingPathComponent("run-\(UUID().uuidString).out")
        let err = dir.appendingPathComponent("run-\(UUID().uuidString).err")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        defer {
            try? FileManager.default.removeItem(at: out)
            try? FileManager.default.removeItem(at: err)
        }
        let p = Process()
        p.executableURL = executable
        p.arguments = arguments
        p.currentDirectoryURL = Fixtures.root
        p.environment = replacing ? environment : Self.childEnvironment.merging(environment) { $1 }
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = try FileHandle(forWritingTo: out)
        p.standardError = try FileHandle(forWritingTo: err)
        try p.run()
        p.waitUntilExit()
        return ProcessOutput(
            status: p.terminationStatus, stdout: (try? String(contentsOf: out, encoding: .utf8)) ?? "",
            stderr: (try? String(contentsOf: err, encoding: .utf8)) ?? "")
    }

    /// Runs a program given by path (`/usr/bin/ldd`, `/usr/bin/python3`).
    public static func run(
        path: String, _ arguments: [String], environment: [String: String] = [:], replacing: Bool = false
    ) throws -> ProcessOutput {
        try run(URL(fileURLWithPath: path), arguments, environment: environment, replacing: replacing)
    }
}
