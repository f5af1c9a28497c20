import EwallCore
import Foundation
import Logging

/// Collects log messages ("level: message"), to check what the library tells its user (and
/// that a promised single warning is single).
public final class CapturedLogs: Sendable {
    private let messages = Locked<[String]>([])

    public init() {}

    public func append(_ m: String) { messages.withLock { $0.append(m) } }
    public var all: [String] { messages.withLock { $0 } }

    /// The warnings logged so far that contain `text`.
    public func warnings(containing text: String) -> [String] {
        all.filter { $0.hasPrefix("warning: ") && $0.contains(text) }
    }

    /// A logger that writes here, every level.
    public var logger: Logger { Logger(label: "test") { _ in CapturingHandler(sink: self) } }
}

public struct CapturingHandler: LogHandler {
    public let sink: CapturedLogs
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .trace

    public init(sink: CapturedLogs) { self.sink = sink }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        sink.append("\(event.level): \(event.message)")
    }
}
