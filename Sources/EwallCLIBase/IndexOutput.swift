import EwallCore
import EwallIndex
import Foundation

/// `--out` / `--index` folder: the flag, then $EWALL_INDEX, then data/faiss.
public func resolvedIndexFolder(_ flag: String?) -> IndexFolder {
    IndexFolder(path: flag ?? ProcessInfo.processInfo.environment["EWALL_INDEX"] ?? IndexFolder.defaultPath)
}

/// "512M", "8G", "1.5GiB", "1000000" -> bytes (powers of 1024).
public func parseSize(_ text: String) -> Int64? {
    let t = text.trimmingCharacters(in: .whitespaces).uppercased()
    let (k, m, g, tb) = (1024.0, 1_048_576.0, 1_073_741_824.0, 1_099_511_627_776.0)
    let units: [(String, Double)] = [
        ("TIB", tb), ("GIB", g), ("MIB", m), ("KIB", k), ("TB", tb), ("GB", g), ("MB", m),
        ("KB", k), ("T", tb), ("G", g), ("M", m), ("K", k), ("B", 1),
    ]
    for (suffix, factor) in units where t.hasSuffix(suffix) {
        guard let v = Double(t.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), v > 0 else { return nil }
        return Int64(v * factor)
    }
    return Int64(t).flatMap { $0 > 0 ? $0 : nil }
}

/// The build's phase on one live line (a terminal) or a log line every few seconds.
public final class BuildProgressDisplay: Sendable {
    private struct State: Sendable {
        var last = Date.distantPast
        var lastPhase = ""
        var shown = false
    }

    private let terminal: Bool
    private let state = Locked(State())
    private let started = Date()

    public init(terminal: Bool) { self.terminal = terminal }

    public func show(_ p: IndexBuildProgress) {
        state.withLock { s in
            let now = Date()
            let interval = terminal ? 0.25 : 5
            guard p.phase != s.lastPhase || now.timeIntervalSince(s.last) >= interval else { return }
            s.last = now
            s.lastPhase = p.phase
            let pct =
                p.total > 0
                ? String(format: " %d/%d (%.0f%%)", p.done, p.total, 100 * Double(p.done) / Double(p.total)) : ""
            let line = String(format: "[%6.1fs] ", now.timeIntervalSince(started)) + p.phase + pct
            if terminal {
                FileHandle.standardError.write(Data("\r\u{1B}[K\(line)".utf8))
                s.shown = true
            } else {
                FileHandle.standardError.write(Data("\(now.ISO8601Format()) rebuild-faiss-index: \(line)\n".utf8))
            }
        }
    }

    public func finish() {
        state.withLock { s in
            if terminal && s.shown { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
            s.shown = false
        }
    }
}

public enum IndexSummaryText {
    public static func render(_ s: IndexBuildSummary) -> String {
        var out = "rebuild-faiss-index: \(s.mode) build of \(s.folder)\n"
        out +=
            "  index        \(s.factory), metric \(s.metric.rawValue), \(s.count) vectors of \(s.dimension) dims, "
            + String(format: "%.1f MiB\n", Double(s.indexBytes) / 1_048_576)
        out += "  why          \(s.choice)\n"
        out += "  vectors      model \(s.modelID), preprocessing \(s.preprocessing)\n"
        if s.mode == "incremental" {
            out +=
                "  changes      added \(s.added), changed \(s.changed), removed \(s.removed), unchanged \(s.unchanged)\n"
        }
        var search: [String] = []
        if let p = s.search.nprobe { search.append("nprobe \(p)") }
        if let e = s.search.efSearch { search.append("efSearch \(e)") }
        if let r = s.recall {
            let curve = r.curve.map { pt in
                (pt.nprobe.map { "nprobe \($0)" } ?? pt.efSearch.map { "ef \($0)" } ?? "default")
                    + String(format: " %.3f", pt.recall)
            }.joined(separator: ", ")
            out += String(
                format: "  recall@%d    %.3f on %d queries from the catalogue (target %.2f: %@) at %@\n", r.k,
                r.measured, r.queries,
                r.target, r.met ? "met" : "NOT met",
                search.isEmpty ? "default settings" : search.joined(separator: ", "))
            out += "  tuning       \(curve)\n"
            if let f = s.filteredRecall {
                let fcurve = f.curve.map { pt in
                    (pt.nprobe.map { "nprobe \($0)" } ?? "default")
                        + (pt.secondHop.map {
                            " + hop \($0.top)x\($0.lists)" + ($0.maxList.map { " (lists <= \($0))" } ?? "")
                        } ?? "")
                        + String(format: " %.3f", pt.recall)
                        + (pt.microseconds.map { String(format: " (%.0f us)", $0) } ?? "")
                }.joined(separator: ", ")
                let start =
                    s.search.filteredNprobe.map { p in
                        "filtered searches start at nprobe \(p)"
                            + (s.search.secondHop.map {
                                ", then a second hop through the recorded lists of the best \($0.top) found (\($0.lists) each"
                                    + ($0.maxList.map { ", lists of up to \($0) entries" } ?? "") + ")"
                            } ?? "")
                    } ?? "filtered searches start at twice nprobe"
                out +=
                    String(
                        format:
                            "  filtered     recall@%d %.3f on %d queries under the default filters (same category, in stock; target %.2f: %@); ",
                        f.k, f.measured, f.queries, f.target, f.met ? "met" : "NOT met")
                    + start
                    + "\n  tuning       \(fcurve)\n"
            }
        } else {
            out += "  recall@10    1.000 (exact search)\n"
        }
        let order = ["read_sample", "train", "add", "faiss_add", "update", "tune", "tune_filtered", "write", "total"]
        let compute = DistanceKernel.summary(kernel: s.kernel, blasCore: s.blasCore, chosenOver: BLASCore.replaced)
        out += "  compute      \(compute)\n"
        out +=
            "  seconds      "
            + order.compactMap { k in s.seconds[k].map { String(format: "%@ %.1f", k, $0) } }.joined(separator: ", ")
        for w in s.warnings { out += "\n  warning      \(w)" }
        return out
    }
}
