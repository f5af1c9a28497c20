import EwallCore
import Foundation

/// One precision (with the exact or the fast JPEG decode) as measured on the calibration photos.
public struct PrecisionMeasurement: Sendable, Hashable, Codable {
    public var precision: Precision
    /// True: the photos were decoded with the fast JPEG path (DCT-domain downscale).
    public var fastJPEG: Bool
    /// Model-only images/s on full batches (best batch); nil where only drift was measured.
    public var imagesPerSecond: Double?
    /// Against fp32 with the exact decode; nil for that reference itself.
    public var drift: Drift?

    public init(precision: Precision, fastJPEG: Bool = false, imagesPerSecond: Double? = nil, drift: Drift? = nil) {
        self.precision = precision
        self.fastJPEG = fastJPEG
        self.imagesPerSecond = imagesPerSecond
        self.drift = drift
    }

    enum CodingKeys: String, CodingKey {
        case precision, fastJPEG = "fast_jpeg", imagesPerSecond = "images_per_s", drift
    }
}

/// What `--precision auto` measured: the figures a decision is made from. Cached as they are,
/// so a changed guard re-decides from them without measuring again.
public struct PrecisionMeasurements: Sendable, Hashable, Codable {
    public var measurements: [PrecisionMeasurement]
    /// Precisions not measured, and why (`"bf16": "this CPU has no native bfloat16 ..."`).
    public var unavailable: [String: String]
    /// Decodable calibration photos measured, and the folder they came from.
    public var photos: Int
    public var calibration: String
    /// When, ISO 8601.
    public var measuredAt: String

    public init(
        measurements: [PrecisionMeasurement], unavailable: [String: String] = [:], photos: Int, calibration: String,
        measuredAt: String = Date().ISO8601Format()
    ) {
        self.measurements = measurements
        self.unavailable = unavailable
        self.photos = photos
        self.calibration = calibration
        self.measuredAt = measuredAt
    }

    enum CodingKeys: String, CodingKey {
        case measurements, unavailable, photos, calibration, measuredAt = "measured_at"
    }

    /// The measurement of `precision` with or without the fast decode.
    public func of(_ precision: Precision, fastJPEG: Bool = false) -> PrecisionMeasurement? {
        measurements.first { $0.precision == precision && $0.fastJPEG == fastJPEG }
    }
}

/// What `--precision auto` decided and why: the fastest precision whose vectors keep the
/// answers (``PrecisionGuard``), and whether the fast JPEG decode keeps them too.
///
/// ```swift
/// let d = PrecisionDecision.decide(measured, guard: PrecisionGuard())
/// print(d)   // "fp32, exact JPEG decode: bf16 1.9x faster but drifts (top-10 overlap 0.91 < 0.95, ...)"
/// ```
public struct PrecisionDecision: Sendable, Hashable, Codable, CustomStringConvertible {
    /// The precision to run.
    public var precision: Precision
    /// True: decode JPEGs with the fast path (its drift with ``precision`` kept the answers).
    public var fastJPEG: Bool
    /// One line per candidate: speed ratio to fp32 and the verdict.
    public var reasons: [String]
    public var measured: PrecisionMeasurements
    /// The thresholds it was decided by.
    public var precisionGuard: PrecisionGuard
    /// True when the measurements came from the cache rather than from this start.
    public var fromCache: Bool

    public init(
        precision: Precision, fastJPEG: Bool, reasons: [String], measured: PrecisionMeasurements,
        guard: PrecisionGuard, fromCache: Bool = false
    ) {
        self.precision = precision
        self.fastJPEG = fastJPEG
        self.reasons = reasons
        self.measured = measured
        self.precisionGuard = `guard`
        self.fromCache = fromCache
    }

    enum CodingKeys: String, CodingKey {
        case precision, fastJPEG = "fast_jpeg", reasons, measured, precisionGuard = "guard", fromCache = "from_cache"
    }

    /// fp32 when nothing else was measured or cannot run.
    public static func fp32(because reason: String, guard: PrecisionGuard, calibration: String) -> PrecisionDecision {
        PrecisionDecision(
            precision: .fp32, fastJPEG: false, reasons: [reason],
            measured: PrecisionMeasurements(measurements: [], photos: 0, calibration: calibration), guard: `guard`)
    }

    /// Decides from `measured`: the fastest precision faster than fp32 by more than the guard's
    /// speed margin whose drift the guard keeps, else fp32; then the fast JPEG decode when its
    /// drift with that precision is kept too.
    public static func decide(
        _ measured: PrecisionMeasurements, guard g: PrecisionGuard, fromCache: Bool = false
    )
        -> PrecisionDecision
    {
        guard let fp32 = measured.of(.fp32)?.imagesPerSecond, fp32 > 0 else {
            return PrecisionDecision(
                precision: .fp32, fastJPEG: false, reasons: ["fp32: nothing else was measured"], measured: measured,
                guard: g, fromCache: fromCache)
        }
        var reasons: [String] = []
        var best: (Precision, Double)?
        for m in measured.measurements where !m.fastJPEG && m.precision != .fp32 {
            guard let speed = m.imagesPerSecond, let drift = m.drift else { continue }
            let ratio = speed / fp32
            let r = String(format: "%.2fx", ratio)
            if !g.keeps(drift) {
                reasons.append("\(m.precision) \(r) fp32's speed but drifts (\(g.shortfall(drift)))")
            } else if ratio <= 1 + g.speedMargin {
                reasons.append(
                    "\(m.precision) keeps the answers but is \(r) fp32's speed (needs > \(String(format: "%.2f", 1 + g.speedMargin))x)"
                )
            } else {
                reasons.append(
                    "\(m.precision) \(r) fp32's speed and keeps the answers (top-\(g.neighbours) overlap "
                        + "\(PrecisionGuard.f3(drift.overlap)), centered cosine \(PrecisionGuard.f3(drift.centeredCosine)))"
                )
                if best.map({ speed > $0.1 }) ?? true { best = (m.precision, speed) }
            }
        }
        for (p, why) in measured.unavailable.sorted(by: { $0.key < $1.key }) {
            reasons.append("\(p) not measured: \(why)")
        }
        let precision = best?.0 ?? .fp32
        var fast = false
        if let m = measured.of(precision, fastJPEG: true), let drift = m.drift {
            if g.keeps(drift) {
                fast = true
                reasons.append(
                    "fast JPEG decode with \(precision) keeps the answers (top-\(g.neighbours) overlap "
                        + "\(PrecisionGuard.f3(drift.overlap)), centered cosine \(PrecisionGuard.f3(drift.centeredCosine)))"
                )
            } else {
                reasons.append("fast JPEG decode with \(precision) drifts (\(g.shortfall(drift))): exact decode")
            }
        }
        return PrecisionDecision(
            precision: precision, fastJPEG: fast, reasons: reasons, measured: measured, guard: g, fromCache: fromCache)
    }

    /// One line: `fp32, exact decode (measured on 96 photos: bf16 1.93x fp32's speed but drifts (...); ...)`.
    public var description: String {
        "\(precision), \(fastJPEG ? "fast" : "exact") JPEG decode (\(fromCache ? "cached" : "measured") on "
            + "\(measured.photos) photos: \(reasons.joined(separator: "; ")))"
    }
}

/// What a cached measurement is valid for: the same model file (and int8 file), the same CPU
/// model and flags, the same libtorch, threads and batch size, and the same calibration
/// photos. Anything else is measured again.
public struct PrecisionCacheKey: Sendable, Hashable, CustomStringConvertible {
    /// The model file's sha256 (hex), and the int8 file's ("none" without one).
    public var modelSHA256: String
    public var int8SHA256: String
    /// `model name` from /proc/cpuinfo, and the flags that decide which precision is fast.
    public var cpuModel: String
    public var cpuFlags: String
    public var libtorchVersion: String
    public var threads: Int
    public var batchSize: Int
    /// sha256 over the calibration photos' names and sizes.
    public var calibration: String

    public init(
        modelSHA256: String, int8SHA256: String = "none", cpuModel: String, cpuFlags: String = "",
        libtorchVersion: String = "", threads: Int, batchSize: Int, calibration: String = ""
    ) {
        self.modelSHA256 = modelSHA256
        self.int8SHA256 = int8SHA256
        self.cpuModel = cpuModel
        self.cpuFlags = cpuFlags
        self.libtorchVersion = libtorchVersion
        self.threads = threads
        self.batchSize = batchSize
        self.calibration = calibration
    }

    public var description: String {
        "\(modelSHA256)|int8=\(int8SHA256)|\(cpuModel)|flags=\(cpuFlags)|libtorch=\(libtorchVersion)"
            + "|threads=\(threads)|batch=\(batchSize)|calibration=\(calibration)"
    }

    /// The flags of /proc/cpuinfo that decide which precision is fast, sorted, comma-joined.
    public static let relevantFlags: Set<String> = [
        "avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile", "avx512_fp16",
    ]

    /// The first `model name` line of a /proc/cpuinfo text, else `"unknown"`.
    public static func cpuModelName(cpuinfo: String) -> String {
        field("model name", cpuinfo: cpuinfo) ?? "unknown"
    }

    /// ``relevantFlags`` present in the first `flags` line of a /proc/cpuinfo text.
    public static func cpuFlags(cpuinfo: String) -> String {
        let flags = Set((field("flags", cpuinfo: cpuinfo) ?? "").split(separator: " ").map(String.init))
        return flags.intersection(relevantFlags).sorted().joined(separator: ",")
    }

    static func field(_ name: String, cpuinfo: String) -> String? {
        for line in cpuinfo.split(separator: "\n") where line.hasPrefix(name) {
            if let colon = line.firstIndex(of: ":") {
                let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                if !value.isEmpty { return value }
            }
        }
        return nil
    }

    static var cpuinfo: String { (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? "" }
    /// This machine's CPU model and relevant flags, from /proc/cpuinfo.
    public static var currentCPUModel: String { cpuModelName(cpuinfo: cpuinfo) }
    public static var currentCPUFlags: String { cpuFlags(cpuinfo: cpuinfo) }
}

/// A small JSON file of ``PrecisionMeasurements`` by ``PrecisionCacheKey``. Unreadable or
/// malformed files count as empty (measured again and rewritten); writes go to a temporary
/// file renamed into place, so readers never see half a file.
public struct PrecisionCache: Sendable {
    /// The JSON file (the CLI passes `$XDG_CACHE_HOME/ewall/precision.json`).
    public var path: String

    public init(path: String) { self.path = path }

    struct File: Codable {
        var version = 2
        var entries: [String: PrecisionMeasurements] = [:]
    }

    private func read() -> File {
        guard let data = FileManager.default.contents(atPath: path),
            let file = try? JSONDecoder().decode(File.self, from: data), file.version == 2
        else { return File() }
        return file
    }

    /// The cached measurements for `key`.
    public func lookup(_ key: PrecisionCacheKey) -> PrecisionMeasurements? {
        read().entries[key.description]
    }

    /// Records `measured` for `key`, keeping the other entries.
    public func store(_ measured: PrecisionMeasurements, for key: PrecisionCacheKey) throws {
        var file = read()
        file.entries[key.description] = measured
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
