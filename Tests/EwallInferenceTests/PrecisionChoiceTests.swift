import EwallCore
import EwallInference
import EwallTestSupport
import Foundation
import Testing

@Suite("precision auto: measured, cached")
struct PrecisionChoiceTests {
    @Test(
        "the faster precision wins only by more than the noise margin",
        arguments: [
            // (fp32, bf16, expected): Intel Xeon's figures (bf16 slower), Zen 5's (bf16 ~2x), a tie
            // within the margin, bf16 not timed.
            (22.2, 16.7 as Double?, Precision.fp32),
            (27.9, 52.1, .bf16),
            (27.0, 29.0, .fp32),
            (27.0, 30.0, .bf16),
            (27.0, nil, .fp32),
        ])
    func decide(fp32: Double, bf16: Double?, expected: Precision) {
        var speeds: [Precision: Double] = [.fp32: fp32]
        speeds[.bf16] = bf16
        #expect(PrecisionChoice.decide(speeds) == expected)
    }

    @Test("measure times the candidates interleaved and keeps the best of each")
    func measureInterleaves() throws {
        var calls: [Precision] = []
        var timings: [Precision: [Double]] = [.fp32: [20, 25], .bf16: [40, 30]]
        let choice = try PrecisionChoice.measure(candidates: [.fp32, .bf16], rounds: 2) { p in
            calls.append(p)
            return timings[p]!.removeFirst()
        }
        #expect(calls == [.fp32, .bf16, .fp32, .bf16])
        #expect(choice.imagesPerSecond == [.fp32: 25, .bf16: 40])
        #expect(choice.precision == .bf16)
        #expect(!choice.fromCache)
        #expect(choice.description == "bf16 (measured: fp32 25.0 img/s, bf16 40.0 img/s)")
    }

    @Test("the CPU model comes from /proc/cpuinfo's first model name line")
    func cpuModel() {
        let text =
            "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8488C\nflags\t: fpu\n"
            + "processor\t: 1\nmodel name\t: other\n"
        #expect(PrecisionCacheKey.cpuModelName(cpuinfo: text) == "Intel(R) Xeon(R) Platinum 8488C")
        #expect(PrecisionCacheKey.cpuModelName(cpuinfo: "processor : 0\n") == "unknown")
    }

    @Test("the cache keeps one choice per model, CPU, threads and batch size; a bad file is empty")
    func cacheRoundTrip() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ew-precision-\(UUID())")
        defer { try? FileManager.default.removeItem(at: dir) }
        let cache = PrecisionCache(path: dir.appendingPathComponent("sub/precision.json").path)
        let key = PrecisionCacheKey(modelSHA256: "ab12", cpuModel: "AMD EPYC", threads: 2, batchSize: 32)
        var other = key
        other.threads = 4
        #expect(key.description == "ab12|AMD EPYC|threads=2|batch=32")
        var streams = key
        streams.streams = 2
        #expect(streams.description == "ab12|AMD EPYC|threads=2|batch=32|streams=2")
        #expect(cache.lookup(key) == nil)
        try cache.store(PrecisionChoice(precision: .bf16, imagesPerSecond: [.fp32: 27, .bf16: 52]), for: key)
        try cache.store(PrecisionChoice(precision: .fp32, imagesPerSecond: [.fp32: 40, .bf16: 30]), for: other)
        let hit = try #require(cache.lookup(key))
        #expect(hit.precision == .bf16 && hit.fromCache && hit.imagesPerSecond == [.fp32: 27, .bf16: 52])
        #expect(cache.lookup(other)?.precision == .fp32)
        var otherCPU = key
        otherCPU.cpuModel = "Intel Xeon"
        #expect(cache.lookup(otherCPU) == nil)
        try Data("not json".utf8).write(to: URL(fileURLWithPath: cache.path))
        #expect(cache.lookup(key) == nil)
        try cache.store(PrecisionChoice(precision: .fp32, imagesPerSecond: [.fp32: 1]), for: key)
        #expect(cache.lookup(key)?.precision == .fp32)
    }

    @Test("auto measures at load, stores the choice, and the next load uses the cache without timing")
    func autoLoad() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ew-precision-\(UUID())")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("precision.json").path
        var options = tinyOptions("linear4.pt", precision: .auto, batch: 4)
        options.precisionCachePath = path
        let key = PrecisionCacheKey(modelSHA256: "linear4", cpuModel: "test cpu", threads: 2, batchSize: 4)

        let measured = try TorchModel(options: options, cacheKey: key)
        let choice = try #require(measured.precisionChoice)
        #expect(!choice.fromCache)
        #expect((choice.imagesPerSecond[.fp32] ?? 0) > 0)
        #expect((choice.imagesPerSecond[.bf16] != nil) == TorchModel.cpuHasBF16)
        #expect(measured.precision == PrecisionChoice.decide(choice.imagesPerSecond))
        #expect(PrecisionCache(path: path).lookup(key)?.imagesPerSecond == choice.imagesPerSecond)

        // A cached entry wins over timing: speeds no measurement would produce come back as is.
        let planted = PrecisionChoice(precision: .fp32, imagesPerSecond: [.fp32: 1.5, .bf16: 0.5])
        try PrecisionCache(path: path).store(planted, for: key)
        let cached = try TorchModel(options: options, cacheKey: key)
        #expect(
            cached.precisionChoice
                == PrecisionChoice(
                    precision: .fp32, imagesPerSecond: [.fp32: 1.5, .bf16: 0.5],
                    fromCache: true))
        #expect(cached.precision == .fp32)
        let e = try Expected.load()
        let out = try e.input([0, 1, 2, 3]).withUnsafeBufferPointer { try cached.forward($0, count: 4) }
        #expect(abs(out[0] - e.linear4[0][0]) <= 1e-5)
    }

    @Test("fp32 and bf16 asked by name are not measured")
    func namedPrecisionHasNoChoice() throws {
        #expect(try TorchModel(options: tinyOptions("linear4.pt")).precisionChoice == nil)
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
