import ArgumentParser
@_exported import EwallCLIBase
import EwallML
@_exported import EwallRedis
import Foundation
import Logging

// The model and image flags of the commands that embed (`ewall`, `ewall-embed`): each
// parses flags into the library's configuration structs and calls EwallML. The flags every
// command shares (store, exit codes, errors) are in EwallCLIBase.

public struct ModelFlags: ParsableArguments {
    public init() {}

    @Option(
        name: .long,
        help: ArgumentHelp("TorchScript model file.", discussion: "Default: $EWALL_MODEL, then models/resnet50.pt."))
    public var model: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Precision: auto, fp32, bf16, int8 (the int8 file beside the model), fp16 (CUDA only).",
            discussion:
                "Default: $EWALL_PRECISION, then auto. auto measures each precision this machine runs (fp32; bf16 where the CPU or GPU has it; int8 where models/NAME_int8.pt exists) for speed and for drift against fp32 on --calibration's photos, and runs the fastest whose vectors keep fp32's answers (--min-overlap, --min-centered-cosine); else fp32. Measured once per model file, CPU and libtorch, cached in --precision-cache; `ewall precision` shows the decision. A precision given by name is stored under its own model key (e.g. squash224+int8); one auto admitted shares fp32's key, with its figures recorded in the store (docs/precision.md)."
        ))
    public var precision: Precision?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Photos --precision auto measures drift on (at least 64).",
            discussion:
                "Default: the folder beside the model, models/resnet50.calibration for models/resnet50.pt (make model writes it)."
        ))
    public var calibration: String?

    @Option(name: .long, help: "--precision auto: minimum mean top-10 neighbour overlap with fp32 (0...1).")
    public var minOverlap: Double = PrecisionGuard().minOverlap

    @Option(name: .long, help: "--precision auto: minimum median centered cosine to fp32 (0...1).")
    public var minCenteredCosine: Double = PrecisionGuard().minCenteredCosine

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Where --precision auto caches its measurements.",
            discussion: "Default: $XDG_CACHE_HOME/ewall/precision.json, else ~/.cache/ewall/precision.json."))
    public var precisionCache: String?

    @Option(name: .long, help: "libtorch intra-op threads.")
    public var threads: Int = max(1, ProcessInfo.processInfo.activeProcessorCount)

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Forward passes run at once on the CPU, sharing --threads between them.",
            discussion:
                "1: one batch at a time on all --threads. --streams equal to --threads: that many single-threaded batches side by side, which decode threads sharing the cores cannot stall; each stream holds its own batch (about 0.4 GB more). Default: for ewall embed and ewall-embed, one stream per model thread (at most 4) where the model shares its cores with the decode threads (--threads + decode threads > cores), else 1; for ewall-serve and ewall similar, 1 (a lone request's latency). docs/precision.md, \"Model streams\"."
        ))
    public var streams: Int?

    @Option(name: .long, help: "Images per forward pass.")
    public var batchSize: Int = 32

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Where the model runs: cpu, cuda, cuda:N, or auto.",
            discussion:
                "auto: CUDA device 0 when the torch backend's libtorch has CUDA and a device is present, else the CPU. The backend (libewall_torch.so) is loaded with the model, from beside this executable or $EWALL_TORCH_BACKEND; the default one is built against Debian's CPU-only libtorch, `make build LIBTORCH=/path` builds one against a CUDA libtorch (docs/precision.md, \"Bring your own libtorch\")."
        ))
    public var device: ComputeDevice = .auto

    public var resolvedModel: String {
        model ?? ProcessInfo.processInfo.environment["EWALL_MODEL"] ?? "models/resnet50.pt"
    }

    /// `--precision-cache`, else `$XDG_CACHE_HOME/ewall/precision.json`, else
    /// `$HOME/.cache/ewall/precision.json`; nil without either variable.
    public var resolvedPrecisionCache: String? {
        if let precisionCache { return precisionCache }
        let env = ProcessInfo.processInfo.environment
        if let xdg = env["XDG_CACHE_HOME"], !xdg.isEmpty { return xdg + "/ewall/precision.json" }
        if let home = env["HOME"], !home.isEmpty { return home + "/.cache/ewall/precision.json" }
        return nil
    }

    /// `--precision`, else `$EWALL_PRECISION` (when it names one), else `auto`.
    public var resolvedPrecision: Precision {
        precision ?? ProcessInfo.processInfo.environment["EWALL_PRECISION"].flatMap(Precision.init(rawValue:)) ?? .auto
    }

    public func options() -> ModelOptions {
        ModelOptions(
            path: resolvedModel, precision: resolvedPrecision, threads: threads, batchSize: batchSize,
            precisionCachePath: resolvedPrecisionCache, device: device, streams: streams ?? 1)
    }

    /// The guard's thresholds these flags set.
    public var precisionGuard: PrecisionGuard {
        PrecisionGuard(minOverlap: minOverlap, minCenteredCosine: minCenteredCosine)
    }

    public func validate() throws {
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        if precision == nil, let env = ProcessInfo.processInfo.environment["EWALL_PRECISION"], !env.isEmpty,
            Precision(rawValue: env) == nil
        {
            throw ValidationError(
                "$EWALL_PRECISION is \(env.debugDescription); it must be auto, fp32, bf16, int8 or fp16")
        }
        guard (0...1).contains(minOverlap), (0...1).contains(minCenteredCosine) else {
            throw ValidationError("--min-overlap and --min-centered-cosine are between 0 and 1")
        }
        if let streams, streams < 1 || streams > threads {
            throw ValidationError("--streams must be 1...--threads (\(threads)): each stream needs a thread of its own")
        }
        guard batchSize >= 1 && batchSize <= 1024 else { throw ValidationError("--batch-size must be 1...1024") }
    }
}

public struct ImageFlags: ParsableArguments {
    public init() {}

    @Option(name: .long, help: "Preprocessing: squash224 (Resize((224,224)), the platform's) or resize256-crop224.")
    public var preprocess: PreprocessingMode = .squash224

    @Option(name: .long, help: "Refuse images above this many pixels (checked from the header).")
    public var maxPixels: Int = ImageLimits().maxPixels

    @Option(name: .long, help: "Refuse images with a side shorter than this.")
    public var minSide: Int = ImageLimits().minSide

    @Option(name: .long, help: "Refuse files larger than this many bytes.")
    public var maxBytes: Int = ImageLimits().maxBytes

    @Flag(name: .long, help: "Accept JPEGs that decode only with libjpeg warnings (damaged data shows as grey).")
    public var allowDecoderWarnings = false

    @Flag(
        inversion: .prefixedNo,
        help: ArgumentHelp(
            "JPEG fast path: DCT-domain downscaling of JPEGs at least twice the target size; faster, pixels drift slightly.",
            discussion:
                "Default: decided by --precision auto's guard (on only when its drift keeps fp32's answers; then its vectors share the exact path's key, with the figures recorded); off with a precision given by name. --fast-jpeg forced: vectors are stored under their own preprocessing id (e.g. squash224+dct), never mixed with the exact path's."
        ))
    public var fastJpeg: Bool?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Threads that decode images.",
            discussion: "Default: the cores left over by --threads, at least 1."))
    public var decodeThreads: Int?

    /// The embedder's configuration these flags and `model` imply. `streams`: the
    /// `--streams` given; nil: ``ModelOptions/throughputStreams(threads:decodeThreads:cores:)``
    /// (the batch commands' default).
    public func configuration(
        model: ModelOptions, streams: Int? = nil, modelFlags: ModelFlags? = nil
    )
        -> EmbedderConfiguration
    {
        var config = EmbedderConfiguration(
            model: model, preprocessing: preprocess, limits: limits, fastJPEG: fastJpeg,
            decodeThreads: decodeThreads, calibration: modelFlags?.calibration,
            precisionGuard: modelFlags?.precisionGuard ?? PrecisionGuard())
        config.model.streams =
            streams
            ?? ModelOptions.throughputStreams(
                threads: model.threads, decodeThreads: config.decodeThreads,
                cores: ProcessInfo.processInfo.activeProcessorCount)
        return config
    }

    public func validate() throws {
        if let decodeThreads, decodeThreads < 1 { throw ValidationError("--decode-threads must be at least 1") }
    }

    public var limits: ImageLimits {
        ImageLimits(
            maxPixels: maxPixels, minSide: minSide, maxBytes: maxBytes, allowDecoderWarnings: allowDecoderWarnings)
    }
}

extension Precision: ExpressibleByArgument {}
extension ComputeDevice: ExpressibleByArgument {
    public init?(argument: String) { self.init(parsing: argument) }
}
extension PreprocessingMode: ExpressibleByArgument {}

/// `--redis` and its settings, on every command that embeds or serves (`ewall similar --image`,
/// `ewall-embed`, `ewall-serve`).
public struct RedisFlags: ParsableArguments {
    public init() {}

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The platform's Redis: redis://[[user]:password@]host:port/db. Default: $EWALL_REDIS; neither: no Redis.",
            discussion: """
                Embedding cache (model + preprocessing + sha256 of the image bytes), the per-product view \
                product_embedding:{id}, the per-host limit and 429 pauses shared by every worker, and a shared job's \
                status under batch:*. Redis down or slow is a cache miss, one warning and a metric, never an error.
                """))
    public var redis: String?

    @Option(name: .customLong("redis-ttl"), help: "Seconds a cached vector (and a per-product entry) lives in Redis.")
    public var redisTTL: Int = 3600

    @Option(
        name: .customLong("redis-timeout-ms"),
        help: "Milliseconds one Redis command may take before it counts as a miss.")
    public var redisTimeoutMs: Int = 100

    /// The configuration these flags (or `$EWALL_REDIS`) imply; `nil` without Redis.
    public func configuration() throws -> RedisConfiguration? {
        do {
            let environment = ProcessInfo.processInfo.environment
            guard let location = try RedisConfiguration.location(flag: redis, environment: environment) else {
                return nil
            }
            return RedisConfiguration(
                location: location, cacheTTL: .seconds(redisTTL), timeout: .milliseconds(redisTimeoutMs))
        } catch {
            throw ValidationError(error.description)
        }
    }

    public func validate() throws {
        guard redisTTL >= 1 else { throw ValidationError("--redis-ttl must be at least 1 second") }
        guard redisTimeoutMs >= 1 else { throw ValidationError("--redis-timeout-ms must be at least 1") }
        _ = try configuration()
    }
}
