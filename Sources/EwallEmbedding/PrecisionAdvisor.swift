import Crypto
import EwallCore
import EwallImaging
import EwallInference
import Foundation

/// Decides `--precision auto` on the user's own model, once: measures each precision the
/// device runs (fp32; bf16 where the CPU or GPU has it; int8 where the int8 file of the same
/// model exists and libtorch has its engine; fp16 on CUDA) for model-only speed and for drift
/// against fp32 on calibration photos, and the fast JPEG decode's drift with the chosen
/// precision. ``PrecisionDecision/decide(_:guard:fromCache:)`` picks from the figures.
///
/// The figures are cached (``PrecisionCache``) per model file and int8 file (sha256), CPU model
/// and flags, libtorch version, threads, batch size and calibration photos: a changed model
/// file or another CPU is measured again; a changed guard re-decides from the cached figures.
///
/// ```swift
/// let advisor = PrecisionAdvisor(model: options, calibration: "models/resnet50.calibration")
/// let decision = try advisor.decide()   // e.g. fp32, exact JPEG decode (measured on 96 photos: ...)
/// ```
public struct PrecisionAdvisor: Sendable {
    /// The model (its precision is ignored; its int8 file is ``ModelOptions/file(for:)``).
    public var model: ModelOptions
    public var preprocessing: PreprocessingMode
    public var limits: ImageLimits
    /// The calibration photos' folder: at least ``PrecisionGuard/minimumPhotos`` decodable ones.
    public var calibration: String
    public var precisionGuard: PrecisionGuard
    /// fp32 vectors (L2-normalised) among which each photo's neighbours are also compared:
    /// a sample of the store's, when a store is given. Not part of the cache key.
    public var storeVectors: [[Float]]

    public init(
        model: ModelOptions, preprocessing: PreprocessingMode = .squash224, limits: ImageLimits = ImageLimits(),
        calibration: String, guard: PrecisionGuard = PrecisionGuard(), storeVectors: [[Float]] = []
    ) {
        self.model = model
        self.preprocessing = preprocessing
        self.limits = limits
        self.calibration = calibration
        self.precisionGuard = `guard`
        self.storeVectors = storeVectors
    }

    /// The calibration folder kept beside a model file: `models/resnet50.calibration` for
    /// `models/resnet50.pt` (what `make model` writes).
    public static func calibrationFolder(forModel path: String) -> String {
        (path.hasSuffix(".pt") ? String(path.dropLast(3)) : path) + ".calibration"
    }

    /// The cached figures when ``ModelOptions/precisionCachePath`` has them for this model,
    /// CPU, libtorch and calibration; else measures (and caches). Throws when the calibration
    /// photos are too few or fp32 itself cannot run. `remeasure`: ignore the cache (and
    /// replace its entry).
    public func decide(remeasure: Bool = false) throws(InferenceError) -> PrecisionDecision {
        let photos = try calibrationPhotos()
        let key = cacheKey(photos: photos)
        let cache = model.precisionCachePath.map(PrecisionCache.init(path:))
        if !remeasure, let cached = cache?.lookup(key) {
            return PrecisionDecision.decide(cached, guard: precisionGuard, fromCache: true)
        }
        let measured = try measure(photos: photos)
        try? cache?.store(measured, for: key)
        return PrecisionDecision.decide(measured, guard: precisionGuard)
    }

    /// The calibration folder's image files, sorted (hidden files and folders skipped).
    func calibrationPhotos() throws(InferenceError) -> [String] {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: calibration, isDirectory: &isDir), isDir.boolValue else {
            throw InferenceError(
                .invalidConfiguration,
                "calibration folder \(calibration) does not exist: `make model` keeps sample photos beside the "
                    + "model, or pass --calibration DIR (at least \(precisionGuard.minimumPhotos) photos)")
        }
        let names = (try? FileManager.default.contentsOfDirectory(atPath: calibration)) ?? []
        return names.filter { !$0.hasPrefix(".") }.sorted().map { calibration + "/" + $0 }.filter {
            var d: ObjCBool = false
            return FileManager.default.fileExists(atPath: $0, isDirectory: &d) && !d.boolValue
        }
    }

    /// The key this advisor's figures are cached under (hashes the model files and lists the photos).
    public func cacheKey() throws(InferenceError) -> PrecisionCacheKey { cacheKey(photos: try calibrationPhotos()) }

    func cacheKey(photos: [String]) -> PrecisionCacheKey {
        var h = SHA256()
        for p in photos {
            let size = (try? FileManager.default.attributesOfItem(atPath: p)[.size] as? Int) ?? 0
            h.update(data: Data("\((p as NSString).lastPathComponent)\t\(size)\n".utf8))
        }
        let int8 = model.file(for: .int8)
        return PrecisionCacheKey(
            modelSHA256: Self.sha256(file: model.path) ?? "unreadable",
            int8SHA256: FileManager.default.fileExists(atPath: int8) ? Self.sha256(file: int8) ?? "unreadable" : "none",
            cpuModel: PrecisionCacheKey.currentCPUModel, cpuFlags: PrecisionCacheKey.currentCPUFlags,
            libtorchVersion: TorchModel.libtorchVersion, threads: model.threads, batchSize: model.batchSize,
            calibration: h.finalize().map { String(format: "%02x", $0) }.joined())
    }

    /// A file's sha256, hex, streamed; nil when it cannot be read.
    public static func sha256(file path: String) -> String? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        var hasher = SHA256()
        while let chunk = try? handle.read(upToCount: 1 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// Decodes the photos (exact, and fast for JPEGs), then runs each precision the device
    /// has over them: images/s on full batches, and vectors for the drift.
    public func measure() throws(InferenceError) -> PrecisionMeasurements {
        try measure(photos: try calibrationPhotos())
    }

    func measure(photos: [String]) throws(InferenceError) -> PrecisionMeasurements {
        let exact = Preprocessor(mode: preprocessing, limits: limits)
        let fast = Preprocessor(mode: preprocessing, limits: limits, fastJPEG: true)
        var exactTensors: [ImageTensor] = [], fastTensors: [ImageTensor] = []
        var fastDiffers = false
        for p in photos {
            guard let data = FileManager.default.contents(atPath: p) else { continue }
            let bytes = [UInt8](data)
            guard let e = try? exact.tensor(from: bytes), let f = try? fast.tensor(from: bytes) else { continue }
            exactTensors.append(e)
            fastTensors.append(f)
            if e.values != f.values { fastDiffers = true }
        }
        guard exactTensors.count >= precisionGuard.minimumPhotos else {
            throw InferenceError(
                .invalidConfiguration,
                "calibration folder \(calibration) has \(exactTensors.count) usable photos (of \(photos.count) files); "
                    + "the precision guard needs at least \(precisionGuard.minimumPhotos): pass --calibration DIR "
                    + "with more, or choose --precision")
        }

        var options = model
        options.streams = 1
        var unavailable: [String: String] = [:]
        var candidates: [Precision] = [.fp32]
        let cuda = TorchModel.runsOnCUDA(model.device)
        if cuda {
            candidates += [.bf16, .fp16]
            unavailable["int8"] = "int8 files run on the CPU only"
        } else {
            if TorchModel.cpuHasBF16 {
                candidates.append(.bf16)
            } else {
                unavailable["bf16"] = "this CPU has no native bfloat16 (AVX512_BF16/AMX-BF16)"
            }
            let int8 = model.file(for: .int8)
            if !FileManager.default.fileExists(atPath: int8) {
                unavailable["int8"] = "no int8 file \(int8) (make model writes it: models/export_resnet50.py --int8)"
            } else if !TorchModel.hasInt8 {
                unavailable["int8"] =
                    "this libtorch \(TorchModel.libtorchVersion) has no onednn quantized engine for \(int8)"
            } else if let why = Self.int8Mismatch(fp32: model.path, int8: int8) {
                unavailable["int8"] = why
            } else {
                candidates.append(.int8)
            }
        }

        var measurements: [PrecisionMeasurement] = []
        var reference: [[Float]] = []
        for precision in candidates {
            options.precision = precision
            let torch: TorchModel
            do {
                torch = try TorchModel(options: options)
            } catch {
                if precision == .fp32 { throw error }
                unavailable[precision.rawValue] = error.message
                continue
            }
            let (vectors, speed) = try Self.run(torch, exactTensors)
            var fastVectors: [[Float]]?
            if fastDiffers { fastVectors = try Self.run(torch, fastTensors).vectors }
            if precision == .fp32 {
                reference = vectors
                measurements.append(PrecisionMeasurement(precision: .fp32, imagesPerSecond: speed))
            } else {
                measurements.append(
                    PrecisionMeasurement(precision: precision, imagesPerSecond: speed, drift: drift(vectors, reference))
                )
            }
            if let fastVectors {
                measurements.append(
                    PrecisionMeasurement(precision: precision, fastJPEG: true, drift: drift(fastVectors, reference)))
            }
        }
        return PrecisionMeasurements(
            measurements: measurements, unavailable: unavailable, photos: exactTensors.count, calibration: calibration)
    }

    func drift(_ candidate: [[Float]], _ reference: [[Float]]) -> Drift {
        PrecisionGuard.drift(
            reference: reference, candidate: candidate, store: storeVectors, k: precisionGuard.neighbours)
    }

    /// Why an int8 file is not of the same model as the fp32 file (their cards' `weights`
    /// differ), or nil when they match or either card is missing.
    static func int8Mismatch(fp32: String, int8: String) -> String? {
        guard let a = try? ModelCard.load(forModel: fp32), let b = try? ModelCard.load(forModel: int8) else {
            return nil
        }
        if a.weights != b.weights {
            return "\(int8) was made from other weights (\(b.weights)) than \(fp32) (\(a.weights)): re-export it"
        }
        return nil
    }

    /// Runs `tensors` through `torch` in batches of its batch size: the normalised vectors, and
    /// the best full batch's images/s (every batch's when none is full).
    static func run(
        _ torch: TorchModel, _ tensors: [ImageTensor]
    ) throws(InferenceError) -> (
        vectors: [[Float]], speed: Double
    ) {
        let size = torch.options.batchSize, dim = torch.outputDim
        var vectors: [[Float]] = []
        var full: [Double] = [], partial: [Double] = []
        for start in stride(from: 0, to: tensors.count, by: size) {
            let batch = tensors[start..<min(start + size, tensors.count)]
            var input: [Float] = []
            input.reserveCapacity(batch.count * ImageTensor.count)
            for t in batch { input += t.values }
            let began = ContinuousClock.now
            let out = try input.withUnsafeBufferPointer { buf throws(InferenceError) in
                try torch.forward(buf, count: batch.count)
            }
            let t = ContinuousClock.now - began
            let seconds = Double(t.components.seconds) + Double(t.components.attoseconds) / 1e18
            let rate = Double(batch.count) / max(seconds, 1e-9)
            if batch.count == size { full.append(rate) } else { partial.append(rate) }
            for i in 0..<batch.count {
                switch Embedder.normalized(out[i * dim..<(i + 1) * dim]) {
                case .success(let v): vectors.append(v)
                case .failure(let e): throw e
                }
            }
        }
        return (vectors, (full.isEmpty ? partial : full).max() ?? 0)
    }
}
