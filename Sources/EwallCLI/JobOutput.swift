import Dispatch
import EwallML
import Foundation

/// `--failures FILE`: one JSON object per failure, flushed as it comes.
public final class FailureLog: Sendable {
    /// Held while a line is written, so lines never interleave.
    private let handle: Locked<FileHandle>
    private let encoder = JSONEncoder()

    public init(path: String) throws {
        guard FileManager.default.createFile(atPath: path, contents: nil) else {
            throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path])
        }
        handle = try Locked(FileHandle(forWritingTo: URL(fileURLWithPath: path)))
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    }

    public func write(_ failure: JobFailure) {
        guard let data = try? encoder.encode(failure) else { return }
        handle.withLock { $0.write(data + Data("\n".utf8)) }
    }

    public func close() {
        handle.withLock { try? $0.close() }
    }
}

/// The live line on a terminal, or a plain log line when stderr is not one.
public final class ProgressDisplay: Sendable {
    public let terminal: Bool
    /// Says whose progress it is (`job NAME worker HOST:PID`) in front of every line.
    public let label: String?
    /// Whether the live line is showing; held while a line is written, so lines never interleave.
    private let shown = Locked(false)

    public init(terminal: Bool, label: String? = nil) {
        self.terminal = terminal
        self.label = label
    }

    public func show(_ p: JobProgress) {
        let c = p.counts
        let total = p.estimatedRows.map { "/~\($0)" } ?? ""
        var line =
            (label.map { "\($0): " } ?? "")
            + "\(c.done)\(total) \(label == nil ? "rows" : "items")  ok \(c.embedded)"
            + (c.reused > 0 ? " (reused \(c.reused))" : "") + "  skipped \(c.skipped + c.duplicates)  "
            + "failed \(c.failed + c.skippedFailed + c.badRows)  " + String(format: "%.1f img/s", p.imagesPerSecond)
        if c.refused > 0 { line += "  lease lost on \(c.refused)" }
        if let eta = p.eta { line += "  ETA " + Self.duration(eta) }
        if let w = p.storeProblem {
            line +=
                String(format: "  STORE NOT ANSWERING for %.0f s (gives up at %.0f s): ", w.waited, w.limit) + w.reason
        }
        shown.withLock { shown in
            if terminal {
                FileHandle.standardError.write(Data("\r\u{1B}[K\(line)".utf8))
                shown = true
            } else {
                let stamp = Date().ISO8601Format()
                FileHandle.standardError.write(Data("\(stamp) ewall-embed: \(line)\n".utf8))
            }
        }
    }

    public func finish() {
        shown.withLock { shown in
            if terminal && shown { FileHandle.standardError.write(Data("\n".utf8)) }
            shown = false
        }
    }

    static func duration(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600
            ? String(format: "%dh%02dm", t / 3600, (t % 3600) / 60) : String(format: "%dm%02ds", t / 60, t % 60)
    }
}

/// The human-readable end-of-run summary.
public enum SummaryText {
    public static func render(_ s: JobSummary, failuresPath: String?) -> String {
        let c = s.counts
        var out = """
            ewall-embed: \(s.manifest) -> \(s.store)
              model \(s.modelID) (\(s.precision), \(s.preprocessing)\(s.streams > 1 ? ", \(s.streams) streams" : ""))\(s.precisionChoice.map { "; precision auto: \($0)" } ?? "")
              rows \(c.rows): embedded \(c.embedded) (\(c.reused) reused from identical image bytes), skipped \(c.skipped) (already embedded), \
            duplicates \(c.duplicates), failed \(c.failed), failed earlier and not retried \(c.skippedFailed), \
            bad rows \(c.badRows)

            """
        if !s.failuresByClass.isEmpty {
            out +=
                "  failures by class: "
                + s.failuresByClass.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }
                .joined(separator: ", ") + "\n"
        }
        if !s.skippedFailedByClass.isEmpty {
            out +=
                "  earlier failures skipped: "
                + s.skippedFailedByClass.sorted { $0.key < $1.key }
                .map { "\($0.key) \($0.value)" }.joined(separator: ", ")
                + " (--retry-failed retries timeout/connection/http_5xx/http_429; --force all)\n"
        }
        let st = s.stageSeconds
        out += String(
            format:
                "  %.1f s, %.1f images/s; busy seconds: fetch %.1f, decode %.1f, model %.1f, write %.1f; model busy %.0f%%\n",
            s.seconds, s.imagesPerSecond, st.fetch, st.decode, st.infer, st.write, s.modelBusy * 100)
        if c.decoderWarnings > 0 {
            out +=
                "  \(c.decoderWarnings) images decoded with a harmless decoder warning (e.g. junk bytes before a JPEG marker)\n"
        }
        if let c = s.cache {
            out +=
                "  redis cache: \(c.hits) hits, \(c.misses) misses, \(c.errors) errors, \(c.writes) vectors written"
                + (c.foreign > 0 ? ", \(c.foreign) values not ours ignored" : "") + "\n"
        }
        if let slow = s.slowestHosts.first, slow.totalSeconds > 0 {
            out +=
                "  slowest hosts: "
                + s.slowestHosts.prefix(3).map {
                    String(
                        format: "%@ %.1f s in %d requests (max %.1f s, %d timeouts)", $0.host as NSString,
                        $0.totalSeconds,
                        $0.requests, $0.maxSeconds, $0.timeouts)
                }.joined(separator: "; ") + "\n"
        }
        if let failuresPath, c.failed + c.badRows > 0 { out += "  failures written to \(failuresPath)\n" }
        if let job = s.job {
            out +=
                "  job \(job), worker \(s.worker ?? "?")"
                + (c.refused > 0
                    ? "; \(c.refused) items not committed because another worker took over their lease" : "") + "\n"
        }
        if s.interrupted { out += "  INTERRUPTED: the current batch was written; run again to continue\n" }
        if let e = s.error {
            out += "  STOPPED (\(e.code)): \(e.message)\n  what is counted above is committed; run again to continue\n"
        }
        if s.randomInitModel { out += "  RANDOM-INIT MODEL: these vectors carry no meaning (tests and demos only)\n" }
        return out
    }
}
