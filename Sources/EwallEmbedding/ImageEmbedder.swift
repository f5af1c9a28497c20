import Crypto
import EwallCore
import EwallFetch
import EwallImaging
import EwallInference
import Foundation
import Logging

/// Everything ``ImageEmbedder`` needs, with documented defaults.
public struct EmbedderConfiguration: Sendable {
    /// The model file, precision, threads and batch size.
    public var model: ModelOptions
    /// How images become tensors; recorded with every vector.
    public var preprocessing: PreprocessingMode
    /// Byte, pixel and side limits; decoder warnings.
    public var limits: ImageLimits
    /// JPEG DCT-domain downscaling (TurboJPEG's 1/2, 1/4, 1/8 scaling, as PIL's `draft`) for
    /// JPEGs at least twice the resize target in both dimensions: faster on big photos, pixels
    /// drift slightly (docs/images.md, "The fast JPEG path"). `true`/`false` force it; nil (the
    /// default) lets `precision: .auto`'s guard decide (off for a precision given by name).
    public var fastJPEG: Bool?
    /// Threads that read and decode images while the model runs. Default: the cores the
    /// model's threads leave over, at least 1 (``ModelOptions/decodeThreadsLeftOver(cores:)``).
    public var decodeThreads: Int
    /// `auto`'s calibration photos; nil: the folder beside the model
    /// (``PrecisionAdvisor/calibrationFolder(forModel:)``, which `make model` fills).
    public var calibration: String?
    /// `auto`'s thresholds.
    public var precisionGuard: PrecisionGuard
    /// fp32 vectors of the store (L2-normalised) among which `auto` also compares each
    /// calibration photo's neighbours; empty: the sample only.
    public var guardStoreVectors: [[Float]]

    /// - Parameter decodeThreads: nil: the cores `model.threads` leave over on this machine,
    ///   at least 1.
    public init(
        model: ModelOptions, preprocessing: PreprocessingMode = .squash224,
        limits: ImageLimits = ImageLimits(), fastJPEG: Bool? = nil, decodeThreads: Int? = nil,
        calibration: String? = nil, precisionGuard: PrecisionGuard = PrecisionGuard()
    ) {
        self.model = model
        self.preprocessing = preprocessing
        self.limits = limits
        self.fastJPEG = fastJPEG
        self.calibration = calibration
        self.precisionGuard = precisionGuard
        self.guardStoreVectors = []
        self.decodeThreads =
            decodeThreads ?? model.decodeThreadsLeftOver(cores: ProcessInfo.processInfo.activeProcessorCount)
    }
}

/// A vector and what it was made with.
public struct Embedding: Sendable {
    /// L2-normalised, ``ImageEmbedder/dimension`` floats.
    public var vector: [Float]
    /// The image as decoded (format, sizes, orientation, ...).
    public var image: ImageInfo
}

/// A decoded and preprocessed image, ready for the model (``ImageEmbedder/prepare(_:)``).
public struct PreparedImage: Sendable {
    public var tensor: ImageTensor
    public var info: ImageInfo
}

/// The outcome for one input: a vector, or why there is none.
public struct EmbeddingOutcome: Sendable {
    /// The path or label the input was given as.
    public var source: String
    public var result: Result<Embedding, ItemFailure>
}

/// Image files or bytes in, L2-normalised vectors out: decode, preprocess, batch, infer.
///
/// One corrupt image costs one failed outcome, never its batch. Decoding runs on its own
/// thread(s) and overlaps the forward pass of the previous batch.
///
/// ```swift
/// let embedder = try ImageEmbedder(configuration: .init(model: .init(path: "models/resnet50.pt")))
/// for outcome in await embedder.embed(files: ["a.jpg", "b.png"]) {
///     switch outcome.result {
///     case .success(let e): print(outcome.source, e.vector.count)
///     case .failure(let f): print(outcome.source, f.code, f.message)
///     }
/// }
/// ```
public final class ImageEmbedder: Sendable {
    public let configuration: EmbedderConfiguration
    /// The model card beside the model file, if there is one.
    public let card: ModelCard?
    /// The id stored with every vector: `name@sha256-prefix` from the card, else
    /// `unknown@<file size>` (export with models/export_resnet50.py to get a card).
    public let modelID: String
    public let embedder: Embedder
    private let preprocessor: Preprocessor
    private let decoders: [BlockingWorker]
    private let nextDecoder = RoundRobin()

    /// Loads and warms up the model. Logs a warning when the card says `pretrained: false`.
    public init(configuration: EmbedderConfiguration, logger: Logger = Logger(label: "ewall")) throws(InferenceError) {
        self.configuration = configuration
        let path = configuration.model.path
        guard FileManager.default.fileExists(atPath: path) else {
            throw InferenceError(
                .modelNotFound,
                "model file \(path) not found; run `make model` or pass --model / set EWALL_MODEL")
        }
        var card: ModelCard?
        do {
            card = try ModelCard.load(forModel: path)
        } catch {
            logger.warning("model card \(ModelCard.path(forModel: path)) is unreadable: \(error)")
        }
        self.card = card
        if let card {
            modelID = card.modelID
            if !card.pretrained { logger.warning("\(path): \(ModelCard.randomInitWarning)") }
        } else {
            let size = (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
            modelID = "unknown@\(size)"
            logger.warning("\(path) has no model card (\(ModelCard.path(forModel: path))); its provenance is unknown")
        }
        var model = configuration.model
        var fast = configuration.fastJPEG ?? false
        var decision: PrecisionDecision?
        if card?.precision == .int8 {
            // --model names the int8 file itself: it runs as int8 (its own model id keeps its vectors apart).
            if model.precision == .auto { model.precision = .int8 }
            model.int8Path = model.int8Path ?? path
        } else if model.precision == .auto {
            let advisor = PrecisionAdvisor(
                model: model, preprocessing: configuration.preprocessing, limits: configuration.limits,
                calibration: configuration.calibration ?? PrecisionAdvisor.calibrationFolder(forModel: path),
                guard: configuration.precisionGuard, storeVectors: configuration.guardStoreVectors)
            do {
                decision = try advisor.decide()
            } catch {
                decision = .fp32(
                    because: "fp32: auto could not measure (\(error.message))", guard: configuration.precisionGuard,
                    calibration: advisor.calibration)
                logger.warning("precision auto falls back to fp32: \(error.message)")
            }
            model.precision = decision!.precision
            if configuration.fastJPEG == nil { fast = decision!.fastJPEG }
            logger.notice("precision auto: \(decision!)")
        }
        self.precisionDecision = decision
        self.fastJPEG = fast
        admitted = (
            precision: decision.map { $0.precision == model.precision && model.precision != .fp32 } ?? false,
            fastJPEG: fast && configuration.fastJPEG == nil && decision?.fastJPEG == true
        )
        self.preprocessingID = Self.storedID(
            configuration.preprocessing, precision: model.precision, precisionAdmitted: admitted.precision,
            fastJPEG: fast, fastAdmitted: admitted.fastJPEG)
        embedder = try Embedder(options: model)
        preprocessor = Preprocessor(mode: configuration.preprocessing, limits: configuration.limits, fastJPEG: fast)
        decoders = (0..<max(1, configuration.decodeThreads)).map { BlockingWorker(name: "ewall-decode-\($0)") }
    }

    /// Vector dimension (2048 for ResNet50).
    public var dimension: Int { embedder.outputDim }
    /// The precision in use after resolving `auto`.
    public var precision: Precision { embedder.model.precision }
    /// Where the model runs: `cpu`, `cuda:0`, ... (``ModelOptions/device`` resolved).
    public var device: String { embedder.model.device }
    /// With `--precision auto`: what it decided and the figures it decided by (measured now
    /// or cached). Nil for a precision given by name.
    public let precisionDecision: PrecisionDecision?
    /// True when JPEGs are decoded with the fast path (forced, or admitted by the guard).
    public let fastJPEG: Bool
    /// The preprocessing stored with every vector (the store's model key): the mode, then what
    /// made the vectors when the guard did not admit it: `+dct` for the fast JPEG decode,
    /// `+bf16`/`+int8`/`+fp16` for a precision given by name (``storedID(_:precision:precisionAdmitted:fastJPEG:fastAdmitted:)``).
    public let preprocessingID: String
    /// What the guard admitted to share fp32's key: the precision, the fast decode.
    public let admitted: (precision: Bool, fastJPEG: Bool)

    /// What made the vectors, for an admission record: `bf16`, `int8+dct`, `fp32+dct`; nil for plain fp32.
    public var madeWith: String? {
        precision == .fp32 && !fastJPEG ? nil : "\(precision)" + (fastJPEG ? PreprocessingMode.fastJPEGSuffix : "")
    }

    /// The admission a job records before writing vectors the guard let share fp32's key
    /// (``PrecisionAdmission``); nil when the vectors are fp32's own or kept apart by their key.
    public func precisionAdmission(key: ModelKey) -> PrecisionAdmission? {
        guard let decision = precisionDecision, admitted.precision || admitted.fastJPEG, let madeWith else {
            return nil
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let figures = (try? encoder.encode(decision)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        return PrecisionAdmission(
            key: key, madeWith: madeWith, cpu: PrecisionCacheKey.currentCPUModel, figures: figures)
    }

    /// The stored preprocessing id: `mode`, `+dct` when the fast decode was not admitted by
    /// the guard, `+<precision>` when a precision other than fp32 was not (given by name).
    public static func storedID(
        _ mode: PreprocessingMode, precision: Precision, precisionAdmitted: Bool, fastJPEG: Bool, fastAdmitted: Bool
    ) -> String {
        mode.storedID(fastJPEG: fastJPEG && !fastAdmitted)
            + (precision == .fp32 || precisionAdmitted ? "" : "+\(precision)")
    }

    /// Embeds image files, in order. Never throws: every file gets an outcome.
    public func embed(files: [String]) async -> [EmbeddingOutcome] {
        let limits = configuration.limits
        return await run(
            files.map { path -> Input in
                (path, { () throws(ItemFailure) -> [UInt8] in try Self.read(path, limits: limits) })
            })
    }

    /// Embeds images given as bytes, labelled by `labels` (or by their index).
    public func embed(images: [[UInt8]], labels: [String]? = nil) async -> [EmbeddingOutcome] {
        await run(
            images.enumerated().map { i, bytes -> Input in
                (labels?[i] ?? "\(i)", { () throws(ItemFailure) -> [UInt8] in bytes })
            })
    }

    /// Decodes and preprocesses one image on a decode thread (round-robin over
    /// ``EmbedderConfiguration/decodeThreads``). The building block of pipelines that fetch
    /// their own bytes, such as ``EmbeddingJob``.
    public func prepare(_ bytes: [UInt8]) async -> Result<PreparedImage, ItemFailure> {
        let pre = preprocessor
        let worker = decoders[nextDecoder.next(decoders.count)]
        return await worker.run { () -> Result<PreparedImage, ItemFailure> in
            do throws(ImageError) {
                let image = try pre.decoder.decode(bytes)
                return .success(PreparedImage(tensor: try pre.tensor(from: image), info: image.info))
            } catch { return .failure(ItemFailure(error)) }
        }
    }

    /// Runs prepared images through the model, in batches of the model's batch size
    /// (``BatchFormer``), and returns one vector or failure per image, in order. Every batch
    /// runs, also in a cancelled task: a job stops by its own flag, between batches.
    public func embed(prepared: [PreparedImage]) async -> [Result<Embedding, ItemFailure>] {
        var out: [Result<Embedding, ItemFailure>] = []
        out.reserveCapacity(prepared.count)
        for batch in BatchFormer.batches(of: prepared, size: embedder.batchSize) {
            let vectors = await embedder.embedBatch(batch.map(\.tensor))
            for (p, v) in zip(batch, vectors) {
                out.append(v.map { Embedding(vector: $0, image: p.info) }.mapError { ItemFailure($0) })
            }
        }
        return out
    }

    typealias Input = (label: String, bytes: @Sendable () throws(ItemFailure) -> [UInt8])

    /// Chunks of a batch each (``BatchFormer``): one more in flight than the model has
    /// streams, so that one is always being decoded while the others run through the model.
    private func run(_ inputs: [Input]) async -> [EmbeddingOutcome] {
        let chunks = BatchFormer.batches(of: inputs, size: embedder.batchSize).map(Array.init)
        let window = embedder.streams + 1
        var done = [[EmbeddingOutcome]?](repeating: nil, count: chunks.count)
        await withTaskGroup(of: (Int, [EmbeddingOutcome]).self) { group in
            var next = 0
            func start() {
                guard next < chunks.count else { return }
                let (k, chunk) = (next, chunks[next])
                group.addTask { (k, await self.embed(chunk: chunk)) }
                next += 1
            }
            for _ in 0..<window { start() }
            for await (k, outcomes) in group {
                done[k] = outcomes
                start()
            }
        }
        return done.flatMap { $0! }
    }

    /// One chunk: decoded on the decode threads, then one forward pass.
    private func embed(chunk: [Input]) async -> [EmbeddingOutcome] {
        let prepared = await prepare(chunk)
        var tensors: [ImageTensor] = []
        for case .success(let (t, _)) in prepared { tensors.append(t) }
        var vectors = await embedder.embedBatch(tensors).makeIterator()
        return zip(chunk, prepared).map { input, p in
            switch p {
            case .failure(let f):
                return EmbeddingOutcome(source: input.label, result: .failure(f))
            case .success(let (_, info)):
                let r = vectors.next()!.map { Embedding(vector: $0, image: info) }.mapError { ItemFailure($0) }
                return EmbeddingOutcome(source: input.label, result: r)
            }
        }
    }

    /// Reads and preprocesses one chunk on the decode thread(s), round-robin.
    private func prepare(_ chunk: [Input]) async -> [Result<(ImageTensor, ImageInfo), ItemFailure>] {
        let pre = preprocessor
        return await withTaskGroup(of: (Int, Result<(ImageTensor, ImageInfo), ItemFailure>).self) { group in
            for (i, input) in chunk.enumerated() {
                let worker = decoders[i % decoders.count]
                group.addTask {
                    let r = await worker.run { () -> Result<(ImageTensor, ImageInfo), ItemFailure> in
                        let bytes: [UInt8]
                        do throws(ItemFailure) { bytes = try input.bytes() } catch { return .failure(error) }
                        do throws(ImageError) {
                            let image = try pre.decoder.decode(bytes)
                            return .success((try pre.tensor(from: image), image.info))
                        } catch { return .failure(ItemFailure(error)) }
                    }
                    return (i, r)
                }
            }
            var out = [Result<(ImageTensor, ImageInfo), ItemFailure>?](repeating: nil, count: chunk.count)
            for await (i, r) in group { out[i] = r }
            return out.map { $0! }
        }
    }

    /// Reads a file with the fetcher's file reader (byte limit checked before reading).
    static func read(_ path: String, limits: ImageLimits) throws(ItemFailure) -> [UInt8] {
        switch ImageFetcher.readFile(path, maxBytes: limits.maxBytes) {
        case .success(let bytes): return bytes
        case .failure(let e): throw ItemFailure(stage: .read, code: e.code, message: e.message)
        }
    }
}

/// A thread-safe round-robin counter.
final class RoundRobin: Sendable {
    private let value = Locked(0)

    func next(_ modulo: Int) -> Int {
        value.withLock {
            $0 = ($0 + 1) % max(1, modulo)
            return $0
        }
    }
}
