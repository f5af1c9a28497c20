import ArgumentParser
import EwallCore
import EwallStore
import Foundation
import Logging

// What every command shares, the embedding ones (through EwallCLI) and rebuild-faiss-index:
// the store flag, exit codes, error output, logging, signals. It links no libtorch, so a
// command built on it alone (rebuild-faiss-index) starts small.

/// Exit codes shared by the commands.
public enum ExitCodes {
    /// Some items failed (this run, or earlier and not retried) or some manifest rows were bad.
    public static let someFailed: Int32 = 1
    /// A systemic error: model missing or unloadable, store unreachable, output not writable.
    public static let systemic: Int32 = 2
    /// Stopped by SIGINT (130) or SIGTERM (143) after writing the current batch: 128 + signal.
    public static func interrupted(by signal: Int32) -> Int32 { 128 + signal }
}

public struct DatabaseFlags: ParsableArguments {
    public init() {}

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The store: sqlite:PATH or postgres://user:password@host:port/db.",
            discussion: "Default: $EWALL_DB, then \(StoreLocation.defaultURL)."))
    public var db: String?

    public var resolvedDB: String {
        db ?? ProcessInfo.processInfo.environment["EWALL_DB"] ?? StoreLocation.defaultURL
    }

    public func validate() throws {
        do { _ = try StoreLocation(parsing: resolvedDB) } catch let e as StoreError { throw ValidationError(e.message) }
    }

    /// Opens the store, or exits with the systemic code and a clear message.
    public func open() async throws -> any EmbeddingStore {
        do {
            return try await StoreLocation(parsing: resolvedDB).open()
        } catch let e as StoreError {
            throw fail(e)
        }
    }
}

/// The limits on what a manifest or import may hold (see `InputRules`).
public struct InputFlags: ParsableArguments {
    public init() {}

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Longest product_id in UTF-8 bytes; a longer one is a bad row.",
            discussion:
                "Ids, URLs and titles must also be valid UTF-8 without control characters (NUL, tab, newline, ...)."))
    public var maxIdBytes: Int = InputRules.defaultMaxIDBytes

    @Option(name: .long, help: "Longest image_url in UTF-8 bytes; a longer one is a bad row.")
    public var maxUrlBytes: Int = InputRules.defaultMaxURLBytes

    public var rules: InputRules { InputRules(maxIDBytes: maxIdBytes, maxURLBytes: maxUrlBytes) }

    public func validate() throws {
        guard maxIdBytes >= 1, maxUrlBytes >= 1 else {
            throw ValidationError("--max-id-bytes and --max-url-bytes must be at least 1")
        }
    }
}

public func bootstrapLogging() {
    LoggingSystem.bootstrap { label in
        var h = StreamLogHandler.standardError(label: label)
        h.logLevel = .warning
        return h
    }
}

/// Prints an error the one way every command does, and the exit status of its kind
/// (``FailureKind/exitStatus``: 64 for a usage error, else 2).
public func fail(_ error: any EwallFailure) -> ExitCode {
    FileHandle.standardError.write(Data("ewall: error: \(error.message)\n".utf8))
    return ExitCode(error.kind.exitStatus)
}

public func fail(_ message: String) -> ExitCode {
    FileHandle.standardError.write(Data("ewall: error: \(message)\n".utf8))
    return ExitCode(ExitCodes.systemic)
}
