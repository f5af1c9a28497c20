import EwallCore
import EwallInference
import EwallTestSupport
import Foundation
import Testing

@Suite("precision auto: the guard, the decision, the cache")
struct PrecisionGuardTests {
    /// Unit vectors: `n` clusters of 3 points each around random centres, so neighbours are structured.
    static func clustered(_ n: Int, dim: Int = 16, seed: UInt64 = 1) -> [[Float]] {
        var rng = SplitMix(seed)
        var out: [[Float]] = []
        for _ in 0..<n {
            let centre = (0..<dim).map { _ in Float(rng.unit() * 2 - 1) }
            for _ in 0..<3 { out.append(unit(centre.map { $0 + Float(rng.unit() - 0.5) * 0.2 })) }
        }
        return out
    }

    static func unit(_ v: [Float]) -> [Float] {
        let n = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        return v.map { $0 / n }
    }

    @Test("identical vectors keep everything; shuffled ones keep nothing")
    func driftBounds() {
        let ref = Self.clustered(8)
        let same = PrecisionGuard.drift(reference: ref, candidate: ref, k: 2)
        #expect(same.overlap == 1 && abs(same.centeredCosine - 1) < 1e-9 && same.photos == 24)
        #expect(PrecisionGuard().keeps(same))
        // Each photo's vector replaced by another cluster's: neighbours and cosines are lost.
        let moved = Array(ref[3...] + ref[..<3])
        let d = PrecisionGuard.drift(reference: ref, candidate: moved, k: 2)
        #expect(d.centeredCosine < 0.5)
        #expect(!PrecisionGuard().keeps(d))
        #expect(PrecisionGuard().shortfall(d).contains("centered cosine"))
    }

    @Test("small noise lowers the centered cosine below 1 but keeps the cluster neighbours")
    func driftNoise() {
        let ref = Self.clustered(10)
        var rng = SplitMix(7)
        let noisy = ref.map { v in Self.unit(v.map { $0 + Float(rng.unit() - 0.5) * 0.01 }) }
        let d = PrecisionGuard.drift(reference: ref, candidate: noisy, k: 2)
        #expect(d.centeredCosine < 1 && d.centeredCosine > 0.99)
        #expect(d.overlap > 0.9)
        // Among a store's vectors too: the store is the reference set itself.
        let s = PrecisionGuard.drift(reference: ref, candidate: noisy, store: ref, k: 3)
        #expect((s.storeOverlap ?? 0) > 0.9)
        var strict = PrecisionGuard()
        strict.minOverlap = 1.01
        #expect(!strict.keeps(s))
        #expect(strict.shortfall(s).contains("among the store's vectors"))
    }

    static func measured(
        bf16: Drift?, int8: Drift?, fast: Drift? = nil, speeds: (Double, Double, Double) = (20, 40, 80)
    )
        -> PrecisionMeasurements
    {
        var m = [PrecisionMeasurement(precision: .fp32, imagesPerSecond: speeds.0)]
        if let bf16 { m.append(PrecisionMeasurement(precision: .bf16, imagesPerSecond: speeds.1, drift: bf16)) }
        if let int8 { m.append(PrecisionMeasurement(precision: .int8, imagesPerSecond: speeds.2, drift: int8)) }
        if let fast {
            for p in [Precision.fp32, .bf16, .int8] {
                m.append(PrecisionMeasurement(precision: p, fastJPEG: true, drift: fast))
            }
        }
        return PrecisionMeasurements(measurements: m, photos: 96, calibration: "cal")
    }

    static let kept = Drift(overlap: 0.97, centeredCosine: 0.995, photos: 96)
    static let drifted = Drift(overlap: 0.82, centeredCosine: 0.80, photos: 96)

    @Test("the fastest precision that keeps the answers wins; one that drifts never does")
    func decide() {
        let g = PrecisionGuard()
        #expect(PrecisionDecision.decide(Self.measured(bf16: Self.kept, int8: Self.kept), guard: g).precision == .int8)
        let d = PrecisionDecision.decide(Self.measured(bf16: Self.kept, int8: Self.drifted), guard: g)
        #expect(d.precision == .bf16)
        #expect(d.reasons.contains { $0.hasPrefix("int8 4.00x fp32's speed but drifts") })
        // The random-init stand-in's case: both drift, so fp32, saying why.
        let f = PrecisionDecision.decide(Self.measured(bf16: Self.drifted, int8: Self.drifted), guard: g)
        #expect(f.precision == .fp32 && !f.fastJPEG)
        #expect("\(f)".contains("bf16 2.00x fp32's speed but drifts (top-10 overlap 0.820 < 0.95"))
        // Forcing the thresholds down admits the drifted int8.
        let loose = PrecisionGuard(minOverlap: 0.5, minCenteredCosine: 0.5)
        #expect(
            PrecisionDecision.decide(Self.measured(bf16: Self.drifted, int8: Self.drifted), guard: loose).precision
                == .int8)
    }

    @Test(
        "a precision within the speed margin of fp32 is not worth it",
        arguments: [(21.0, Precision.fp32), (23.0, .bf16)])
    func margin(bf16Speed: Double, expected: Precision) {
        let m = Self.measured(bf16: Self.kept, int8: nil, speeds: (20, bf16Speed, 0))
        #expect(PrecisionDecision.decide(m, guard: PrecisionGuard()).precision == expected)
    }

    @Test("the fast JPEG decode is used only when its drift with the chosen precision keeps the answers")
    func fastJPEG() {
        let g = PrecisionGuard()
        #expect(PrecisionDecision.decide(Self.measured(bf16: Self.kept, int8: nil, fast: Self.kept), guard: g).fastJPEG)
        let d = PrecisionDecision.decide(Self.measured(bf16: Self.kept, int8: nil, fast: Self.drifted), guard: g)
        #expect(!d.fastJPEG && d.precision == .bf16)
        #expect(d.reasons.last?.hasPrefix("fast JPEG decode with bf16 drifts") == true)
        // Nothing measured besides fp32: fp32, exact.
        let only = PrecisionDecision.decide(Self.measured(bf16: nil, int8: nil), guard: g)
        #expect(only.precision == .fp32 && !only.fastJPEG)
    }

    @Test("the CPU model and the flags that matter come from /proc/cpuinfo")
    func cpuModel() {
        let text =
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\n"
            + "flags\t: fpu avx2 avx512f avx512_vnni sse4_2 amx_int8\nprocessor\t: 1\nmodel name\t: other\n"
        #expect(PrecisionCacheKey.cpuModelName(cpuinfo: text) == "Intel(R) Xeon(R) Platinum 8488C")
        #expect(PrecisionCacheKey.cpuFlags(cpuinfo: text) == "amx_int8,avx2,avx512_vnni,avx512f")
        #expect(PrecisionCacheKey.cpuModelName(cpuinfo: "processor : 0\n") == "unknown")
    }

    @Test("the cache keeps figures per model, int8 file, CPU, libtorch and calibration; a bad file is empty")
    func cacheRoundTrip() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ew-precision-\(UUID())")
        defer { try? FileManager.default.removeItem(at: dir) }
        let cache = PrecisionCache(path: dir.appendingPathComponent("sub/precision.json").path)
        let key = PrecisionCacheKey(
            modelSHA256: "ab12", int8SHA256: "cd34", cpuModel: "AMD EPYC", cpuFlags: "avx512_bf16",
            libtorchVersion: "1.13.1", threads: 2, batchSize: 32, calibration: "ef56")
        #expect(
            key.description
                == "ab12|int8=cd34|AMD EPYC|flags=avx512_bf16|libtorch=1.13.1|threads=2|batch=32|calibration=ef56")
        #expect(cache.lookup(key) == nil)
        let figures = Self.measured(bf16: Self.kept, int8: Self.drifted)
        try cache.store(figures, for: key)
        #expect(cache.lookup(key) == figures)
        for change in [
            { (k: inout PrecisionCacheKey) in k.modelSHA256 = "changed" }, { $0.int8SHA256 = "none" },
            { $0.cpuModel = "Intel Xeon" }, { $0.cpuFlags = "" }, { $0.libtorchVersion = "2.1.0" },
            { $0.calibration = "other photos" },
        ] {
            var other = key
            change(&other)
            #expect(cache.lookup(other) == nil)
        }
        try Data("not json".utf8).write(to: URL(fileURLWithPath: cache.path))
        #expect(cache.lookup(key) == nil)
        // The speed-only cache of earlier versions (version 1) is measured again, not misread.
        try Data(#"{"version": 1, "entries": {}}"#.utf8).write(to: URL(fileURLWithPath: cache.path))
        #expect(cache.lookup(key) == nil)
    }

    @Test("TorchModel refuses auto: it is decided from calibration photos before loading")
    func autoIsDecidedFirst() {
        #expect { _ = try TorchModel(options: tinyOptions("linear4.pt", precision: .auto)) } throws: {
            ($0 as? InferenceError)?.code == .invalidConfiguration
        }
    }

    @Test("int8 loads the file beside the model unless one is named")
    func int8File() {
        var o = ModelOptions(path: "models/resnet50.pt")
        #expect(o.file(for: .int8) == "models/resnet50_int8.pt")
        #expect(o.file(for: .bf16) == "models/resnet50.pt")
        o.int8Path = "/x/q.pt"
        #expect(o.file(for: .int8) == "/x/q.pt")
    }

    @Test(
        "decode threads take the cores the model leaves, at least one",
        arguments: [
            (2, 2, 1), (1, 2, 1), (2, 16, 14), (16, 16, 1), (4, 8, 4), (8, 2, 1),
        ])
    func decodeThreads(modelThreads: Int, cores: Int, expected: Int) {
        let o = ModelOptions(path: "m.pt", threads: modelThreads)
        #expect(o.decodeThreadsLeftOver(cores: cores) == expected)
    }

    @Test(
        "throughput streams: one per model thread (at most 4) where decode threads share the model's cores",
        arguments: [
            (2, 1, 2, 2), (1, 1, 2, 1), (2, 14, 16, 1), (16, 1, 16, 4), (4, 4, 8, 1), (3, 1, 2, 3), (1, 1, 1, 1),
        ])
    func throughputStreams(threads: Int, decodeThreads: Int, cores: Int, expected: Int) {
        #expect(
            ModelOptions.throughputStreams(threads: threads, decodeThreads: decodeThreads, cores: cores) == expected)
    }

    @Test(
        "intra-op threads per forward pass: threads shared out over the streams, at least 1",
        arguments: [
            (2, 1, 2), (2, 2, 1), (4, 2, 2), (16, 4, 4), (3, 2, 1),
        ])
    func intraOpThreads(threads: Int, streams: Int, expected: Int) {
        #expect(ModelOptions(path: "m.pt", threads: threads, streams: streams).intraOpThreads == expected)
    }
}

/// A small deterministic generator for test vectors.
struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}
