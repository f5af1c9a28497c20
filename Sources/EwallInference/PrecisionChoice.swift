import EwallCore
import Foundation

/// What `--precision auto` chose, and the speeds it chose by.
///
/// `auto` times full batches of each candidate precision right after load (interleaved, best
/// of ``rounds`` per precision, so a burst of noise hits both) and keeps bf16 only when it
/// beats fp32 by more than ``margin``: a CPU flag says whether bf16 runs natively, not whether
/// it is faster (bf16 ran at 0.75x fp32 on an Intel Xeon with AVX512_BF16, ~2x on AMD Zen 5).
/// The choice is cached (``PrecisionCache``) so the next start does not re-measure.
///
/// ```swift
/// let model = try TorchModel(options: ModelOptions(path: "models/resnet50.pt", precision: .auto,
///                                                  precisionCachePath: "/tmp/precision.json"),
///                            cacheKey: key)
/// print(model.precisionChoice!)   // "bf16 (measured: fp32 27.9 img/s, bf16 52.1 img/s)"
/// ```
public struct PrecisionChoice: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The precision in use: `.fp32` or `.bf16`.
    public var precision: Precision
    /// Measured images/s of each precision timed, model only, at the configured batch size
    /// and threads. bf16 is absent where the CPU has no native bfloat16 (emulated bf16 is
    /// several times slower, so it is not worth the load).
    public var imagesPerSecond: [Precision: Double]
    /// True when the choice came from the cache rather than from timing this start.
    public var fromCache: Bool

    /// bf16 must beat fp32 by this fraction (10%) to be chosen, so `auto` is never slower
    /// than fp32 by more than the noise of one interleaved measurement.
    public static let margin = 0.10
    /// Timed batches per precision (after the load's two warm-up batches).
    public static let rounds = 2

    public init(precision: Precision, imagesPerSecond: [Precision: Double], fromCache: Bool = false) {
        self.precision = precision
        self.imagesPerSecond = imagesPerSecond
        self.fromCache = fromCache
    }

    /// The faster precision, fp32 unless bf16 is faster by more than `margin`.
    public static func decide(_ imagesPerSecond: [Precision: Double], margin: Double = Self.margin) -> Precision {
        guard let fp32 = imagesPerSecond[.fp32], let bf16 = imagesPerSecond[.bf16] else { return .fp32 }
        return bf16 > fp32 * (1 + margin) ? .bf16 : .fp32
    }

    /// Times each candidate `rounds` times, interleaved (fp32, bf16, fp32, bf16, ...), keeps
    /// the best images/s of each and decides. `time` returns one batch's images/s.
    public static func measure(
        candidates: [Precision], rounds: Int = Self.rounds,
        time: (Precision) throws(InferenceError) -> Double
    ) throws(InferenceError) -> PrecisionChoice {
        var best: [Precision: Double] = [:]
        for _ in 0..<max(1, rounds) {
            for p in candidates {
                let v = try time(p)
                best[p] = max(best[p] ?? 0, v)
            }
        }
        return PrecisionChoice(precision: decide(best), imagesPerSecond: best)
    }

    /// E.g. `bf16 (measured: fp32 27.9 img/s, bf16 52.1 img/s)`, or `(cached: ...)`.
    public var description: String {
        let speeds = [Precision.fp32, .bf16].compactMap { p in
            imagesPerSecond[p].map { "\(p) " + String(format: "%.1f", $0) + " img/s" }
        }
        return "\(precision) (\(fromCache ? "cached" : "measured"): \(speeds.joined(separator: ", ")))"
    }

    enum CodingKeys: String, CodingKey { case precision, fp32 = "fp32_images_per_s", bf16 = "bf16_images_per_s" }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        precision = try c.decode(Precision.self, forKey: .precision)
        imagesPerSecond = [:]
        imagesPerSecond[.fp32] = try c.decodeIfPresent(Double.self, forKey: .fp32)
        imagesPerSecond[.bf16] = try c.decodeIfPresent(Double.self, forKey: .bf16)
        fromCache = true
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(precision, forKey: .precision)
        try c.encodeIfPresent(imagesPerSecond[.fp32], forKey: .fp32)
        try c.encodeIfPresent(imagesPerSecond[.bf16], forKey: .bf16)
    }
}

/// What a cached ``PrecisionChoice`` is valid for: the same model file, the same CPU model,
/// the same thread count, streams and batch size. Anything else is measured again.
public struct PrecisionCacheKey: Sendable, Hashable, CustomStringConvertible {
    /// The model file's sha256 (hex).
    public var modelSHA256: String
    /// `model name` from /proc/cpuinfo (``cpuModelName(cpuinfo:)``).
    public var cpuModel: String
    public var threads: Int
    public var batchSize: Int
    /// ``ModelOptions/streams`` (speeds are measured over all of them at once).
    public var streams: Int

    public init(modelSHA256: String, cpuModel: String, threads: Int, batchSize: Int, streams: Int = 1) {
        self.modelSHA256 = modelSHA256
        self.cpuModel = cpuModel
        self.threads = threads
        self.batchSize = batchSize
        self.streams = streams
    }

    /// The key in the cache file: `sha256|cpu model|threads=T|batch=B`, then `|streams=S`
    /// when S > 1 (so one-stream entries written before streams existed still match).
    public var description: String {
        "\(modelSHA256)|\(cpuModel)|threads=\(threads)|batch=\(batchSize)" + (streams > 1 ? "|streams=\(streams)" : "")
    }

    /// The first `model name` line of a /proc/cpuinfo text, else `"unknown"`.
    public static func cpuModelName(cpuinfo: String) -> String {
        for line in cpuinfo.split(separator: "\n") where line.hasPrefix("model name") {
            if let colon = line.firstIndex(of: ":") {
                let name = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                if !name.isEmpty { return name }
            }
        }
        return "unknown"
    }

    /// This machine's CPU model, from /proc/cpuinfo.
    public static var currentCPUModel: String {
        cpuModelName(cpuinfo: (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? "")
    }
}

/// A small JSON file of ``PrecisionChoice``s by ``PrecisionCacheKey``. Unreadable or
/// malformed files count as empty (the choice is measured again and the file rewritten);
/// writes go to a temporary file renamed into place, so readers never see half a file.
public struct PrecisionCache: Sendable {
    /// The JSON file (the CLI passes `$XDG_CACHE_HOME/ewall/precision.json`).
    public var path: String

    public init(path: String) { self.path = path }

    struct File: Codable {
        var version = 1
        var entries: [String: PrecisionChoice] = [:]
    }

    private func read() -> File {
        guard let data = FileManager.default.contents(atPath: path),
            let file = try? JSONDecoder().decode(File.self, from: data), file.version == 1
        else { return File() }
        return file
    }

    /// The cached choice for `key`, marked ``PrecisionChoice/fromCache``.
    public func lookup(_ key: PrecisionCacheKey) -> PrecisionChoice? {
        read().entries[key.description]
    }

    /// Records `choice` for `key`, keeping the other entries.
    public func store(_ choice: PrecisionChoice, for key: PrecisionCacheKey) throws {
        var file = read()
        file.entries[key.description] = choice
        let url = URL(fileURLWithPath: path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(getpid()).tmp")
        try encoder.encode(file).write(to: tmp)
        if rename(tmp.path, url.path) != 0 {
            try? FileManager.default.removeItem(at: tmp)
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path])
        }
    }
}
