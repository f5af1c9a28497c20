import EwallML
import EwallTestSupport
import Foundation
import Testing

/// `--precision auto` on the real model: measured on calibration photos, guarded by drift,
/// cached, and recorded with the vectors it lets share fp32's key. Serialized: each test runs
/// the model in up to three precisions.
@Suite("precision auto on the model", .serialized)
struct PrecisionAutoTests {
    /// Eight of the photos `make model` keeps beside the model (the guard asks 64 by default;
    /// these tests lower it to keep to seconds).
    static let calibration: String = {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ew-calibration-\(UUID())")
        try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let source = Fixtures.path("models/resnet50.calibration")
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: source)) ?? []).sorted().prefix(8)
        for n in names {
            try? FileManager.default.copyItem(atPath: "\(source)/\(n)", toPath: dir.appendingPathComponent(n).path)
        }
        return dir.path
    }()

    /// One cache for the suite: the figures do not depend on the guard, so tests that only
    /// change thresholds re-decide from them without measuring again.
    static let cache = FileManager.default.temporaryDirectory.appendingPathComponent("ew-precision-\(UUID()).json").path

    static var lowerPrecisionRuns: Bool { TorchModel.hasInt8 || TorchModel.cpuHasBF16 }

    static func configuration(
        _ precision: Precision = .auto, guard g: PrecisionGuard = PrecisionGuard(minimumPhotos: 8),
        fastJPEG: Bool? = nil, cache: String? = PrecisionAutoTests.cache
    ) -> EmbedderConfiguration {
        var c = EmbedderConfiguration(
            model: ModelOptions(
                path: Fixtures.model, precision: precision, threads: 2, batchSize: 4, precisionCachePath: cache),
            fastJPEG: fastJPEG, calibration: calibration, precisionGuard: g)
        c.model.streams = 1
        return c
    }

    /// Thresholds no drift can fail: the lower-precision paths run.
    static let permissive = PrecisionGuard(minOverlap: 0, minCenteredCosine: -1, minimumPhotos: 8)

    @Test("with the random-init stand-in, auto keeps fp32 and says why (the drift figures)")
    func randomInitKeepsFP32() throws {
        let e = try ImageEmbedder(configuration: Self.configuration())
        let d = try #require(e.precisionDecision)
        #expect(e.precision == .fp32 && d.precision == .fp32 && !e.fastJPEG)
        #expect(e.preprocessingID == "squash224")
        #expect(e.precisionAdmission(key: ModelKey(modelID: e.modelID, preprocessing: e.preprocessingID)) == nil)
        #expect(d.measured.photos == 8)
        #expect(d.measured.of(.fp32)?.imagesPerSecond ?? 0 > 0)
        // Every lower precision measured drifts beyond the guard on random weights.
        for m in d.measured.measurements where m.precision != .fp32 && !m.fastJPEG {
            let drift = try #require(m.drift)
            #expect(!d.precisionGuard.keeps(drift), "\(m.precision) kept: \(drift)")
            #expect(d.reasons.contains { $0.hasPrefix("\(m.precision) ") && $0.contains("drifts") })
        }
        #expect(d.measured.of(.bf16) != nil || d.measured.unavailable["bf16"] != nil)
        #expect(d.measured.of(.int8) != nil || d.measured.unavailable["int8"] != nil)
    }

    @Test(
        "forced thresholds: auto runs the fastest lower precision under fp32's key, with its figures",
        .enabled(if: lowerPrecisionRuns, "neither int8 (onednn) nor native bf16 runs here"))
    func admittedSharesTheKey() throws {
        let e = try ImageEmbedder(configuration: Self.configuration(guard: Self.permissive))
        let d = try #require(e.precisionDecision)
        #expect(e.precision != .fp32 && e.precision == d.precision)
        let fastest = d.measured.measurements.filter { !$0.fastJPEG }.max {
            ($0.imagesPerSecond ?? 0) < ($1.imagesPerSecond ?? 0)
        }
        #expect(e.precision == fastest?.precision)
        #expect(e.fastJPEG == d.fastJPEG)
        // Admitted: no tag in the key, and an admission that carries the figures.
        #expect(e.preprocessingID == "squash224")
        let key = ModelKey(modelID: e.modelID, preprocessing: e.preprocessingID)
        let a = try #require(e.precisionAdmission(key: key))
        #expect(a.madeWith == "\(e.precision)" + (e.fastJPEG ? "+dct" : ""))
        let figures = try JSONDecoder().decode(PrecisionDecision.self, from: Data(a.figures.utf8))
        #expect(figures.precision == e.precision && figures.measured == d.measured)
    }

    @Test(
        "a precision given by name is kept apart by its key; so is the fast decode forced",
        .enabled(if: TorchModel.hasInt8, "this libtorch has no onednn quantized engine"))
    func namedIsKeptApart() throws {
        let int8 = try ImageEmbedder(configuration: Self.configuration(.int8))
        #expect(int8.precision == .int8 && int8.precisionDecision == nil)
        #expect(int8.preprocessingID == "squash224+int8")
        #expect(
            int8.precisionAdmission(key: ModelKey(modelID: int8.modelID, preprocessing: int8.preprocessingID)) == nil)
        let fast = try ImageEmbedder(configuration: Self.configuration(.fp32, fastJPEG: true))
        #expect(fast.preprocessingID == "squash224+dct")
        let plain = try ImageEmbedder(configuration: Self.configuration(.fp32))
        #expect(plain.preprocessingID == "squash224" && !plain.fastJPEG)
    }

    @Test("too few calibration photos: auto falls back to fp32 and says so")
    func tooFewPhotos() throws {
        let e = try ImageEmbedder(configuration: Self.configuration(guard: PrecisionGuard(), cache: nil))
        let d = try #require(e.precisionDecision)
        #expect(e.precision == .fp32)
        #expect(d.reasons.first?.contains("has 8 usable photos") == true)
        #expect(d.reasons.first?.contains("at least 64") == true)
        var missing = Self.configuration(cache: nil)
        missing.calibration = "/no/such/folder"
        let m = try ImageEmbedder(configuration: missing)
        #expect(m.precision == .fp32)
        #expect(m.precisionDecision?.reasons.first?.contains("does not exist") == true)
    }

    @Test("the cache: the next start decides from cached figures; a changed file gets a new key")
    func cache() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ew-precision-\(UUID())")
        defer { try? FileManager.default.removeItem(at: dir) }
        let path = dir.appendingPathComponent("p.json").path
        let first = try #require(try ImageEmbedder(configuration: Self.configuration(cache: path)).precisionDecision)
        #expect(!first.fromCache)
        let second = try #require(try ImageEmbedder(configuration: Self.configuration(cache: path)).precisionDecision)
        #expect(second.fromCache && second.measured == first.measured)

        // Figures no measurement here would give (int8 keeps the answers and is 5x faster) are
        // what the next start decides from: cached figures are used, not re-measured.
        let advisor = PrecisionAdvisor(
            model: Self.configuration(cache: path).model, calibration: Self.calibration,
            guard: PrecisionGuard(minimumPhotos: 8))
        let key = try advisor.cacheKey()
        let planted = PrecisionMeasurements(
            measurements: [
                PrecisionMeasurement(precision: .fp32, imagesPerSecond: 10),
                PrecisionMeasurement(
                    precision: .int8, imagesPerSecond: 50, drift: Drift(overlap: 0.99, centeredCosine: 0.999, photos: 8)
                ),
            ], photos: 8, calibration: Self.calibration)
        try PrecisionCache(path: path).store(planted, for: key)
        let decided = try advisor.decide()
        #expect(decided.fromCache && decided.precision == .int8 && decided.measured == planted)
        // A stricter guard re-decides from the same figures.
        var strict = advisor
        strict.precisionGuard.minCenteredCosine = 0.9999
        #expect(try strict.decide().precision == .fp32)

        // A changed model file is another key (so it is measured again).
        let copy = dir.appendingPathComponent("m.pt").path
        try FileManager.default.copyItem(atPath: Fixtures.model, toPath: copy)
        var moved = advisor
        moved.model.path = copy
        let same = try moved.cacheKey()
        try Data("another model".utf8).write(to: URL(fileURLWithPath: copy))
        let changed = try moved.cacheKey()
        #expect(same.modelSHA256 == key.modelSHA256 && changed.modelSHA256 != key.modelSHA256)
    }

    @Test(
        "auto is never slower than fp32 end to end",
        .enabled(if: lowerPrecisionRuns, "neither int8 (onednn) nor native bf16 runs here"))
    func neverSlower() async throws {
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: Self.calibration)) ?? []).sorted().map {
            Self.calibration + "/" + $0
        }
        let inputs = Array(repeating: files, count: 4).flatMap { $0 } // 32 images
        func rate(_ c: EmbedderConfiguration) async throws -> Double {
            let e = try ImageEmbedder(configuration: c)
            _ = await e.embed(files: Array(inputs.prefix(4))) // warm
            let start = ContinuousClock.now
            let out = await e.embed(files: inputs)
            let t = ContinuousClock.now - start
            #expect(out.allSatisfy { if case .success = $0.result { true } else { false } })
            return Double(inputs.count) / (Double(t.components.seconds) + Double(t.components.attoseconds) / 1e18)
        }
        let fp32 = try await rate(Self.configuration(.fp32))
        let auto = try await rate(Self.configuration(guard: Self.permissive))
        let random = try await rate(Self.configuration())
        #expect(auto >= fp32 * 0.9, "auto \(auto) img/s, fp32 \(fp32) img/s")
        #expect(random >= fp32 * 0.8, "auto (kept fp32) \(random) img/s, fp32 \(fp32) img/s")
    }

    @Test("the store records an admission and reads it back", arguments: StoreKind.allCases)
    func admissionsInTheStore(kind: StoreKind) async throws {
        let store = try await kind.open()
        let key = ModelKey(modelID: "resnet50@abc", preprocessing: "squash224")
        #expect(try await store.precisionAdmissions(key: key).isEmpty)
        try await store.recordPrecisionAdmission(
            PrecisionAdmission(key: key, madeWith: "int8", cpu: "AMD EPYC", figures: #"{"precision":"int8"}"#))
        try await store.recordPrecisionAdmission(
            PrecisionAdmission(key: key, madeWith: "int8", cpu: "AMD EPYC", figures: #"{"precision":"int8","v":2}"#))
        try await store.recordPrecisionAdmission(
            PrecisionAdmission(key: key, madeWith: "bf16", cpu: "Intel Xeon", figures: "{}"))
        let rows = try await store.precisionAdmissions(key: key)
        #expect(rows.count == 2)
        #expect(rows.first { $0.madeWith == "int8" }?.figures == #"{"precision":"int8","v":2}"#)
        #expect(try await store.precisionAdmissions(key: ModelKey(modelID: "resnet50@abc", preprocessing: "x")).isEmpty)
        await store.close()
    }

    @Test(
        "a job whose vectors the guard admitted records the figures before its first vector",
        .enabled(if: lowerPrecisionRuns, "neither int8 (onednn) nor native bf16 runs here"))
    func jobRecordsAdmission() async throws {
        let photos = Array(try Fixtures.photos().prefix(3))
        let images = photos.map { (try? Fixtures.bytes($0)) ?? [] }
        let server = try TestHTTPServer { req in
            if let i = Int(req.path.dropFirst(5).prefix(while: \.isNumber)), i < images.count {
                return .init(headers: [("Content-Type", "image/jpeg")], body: images[i])
            }
            return .init(status: 404)
        }
        defer { server.shutdown() }
        let manifest = FileManager.default.temporaryDirectory.appendingPathComponent("m-\(UUID()).csv").path
        try (["product_id,image_url"] + (0..<3).map { "p\($0),\(server.url("/img/\($0).jpg"))" })
            .joined(separator: "\n").write(toFile: manifest, atomically: true, encoding: .utf8)
        let store = try await StoreKind.sqlite.open()
        let embedder = try ImageEmbedder(configuration: Self.configuration(guard: Self.permissive))
        let job = EmbeddingJob(
            configuration: EmbeddingJobConfiguration(manifestPath: manifest, fetch: EmbeddingJobTests.fetchConfig()),
            embedder: embedder, store: store)
        let summary = try await job.run(progressInterval: 1, onFailure: { _ in })
        #expect(summary.counts.embedded == 3)
        let rows = try await store.precisionAdmissions(key: job.key)
        #expect(rows.count == 1 && rows.first?.madeWith == embedder.madeWith)
        #expect(job.key.preprocessing == "squash224")
        #expect(try await store.embeddings(key: job.key, after: nil, limit: 10).count == 3)
        await store.close()
    }
}
