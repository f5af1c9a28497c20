import CTorchLoader
import EwallCore

/// How the model is loaded and run.
public struct ModelOptions: Sendable, Hashable {
    /// The TorchScript file.
    public var path: String
    public var precision: Precision
    /// libtorch intra-op threads in all (process-wide; applied by the first model loaded):
    /// with ``streams`` > 1 they are shared out, `threads / streams` to each forward pass.
    public var threads: Int
    /// Forward passes run at once on the CPU, each on its own thread with
    /// ``intraOpThreads`` intra-op threads (CUDA: one at a time whatever this says). 1 (the
    /// default) runs one batch at a time on all the threads; `streams == threads` runs that
    /// many single-threaded batches side by side, which suffer no thread barriers when decode
    /// threads share the cores (docs/precision.md, "Model streams").
    public var streams: Int
    /// Where the model runs (``ComputeDevice``; `auto` by default: CUDA when the loaded
    /// libtorch has it and a device is present, else the CPU).
    public var device: ComputeDevice
    /// Images per forward pass.
    public var batchSize: Int
    /// Feed channels-last tensors (oneDNN's fast layout). On by default.
    public var channelsLast: Bool
    /// Freeze the TorchScript graph after load (folds weights into constants). On by default.
    public var freeze: Bool
    /// Input shape the model expects.
    public var channels: Int, height: Int, width: Int
    /// Where `auto` caches its measurements (``PrecisionCache``); nil: measure at every
    /// load. The library reads no environment: the CLI passes `$XDG_CACHE_HOME/ewall/precision.json`.
    public var precisionCachePath: String?
    /// The int8 file `.int8` loads; nil: ``int8Sibling(of:)`` of ``path`` (`resnet50_int8.pt`
    /// beside `resnet50.pt`), or ``path`` itself when it is the int8 file.
    public var int8Path: String?

    /// fp32 by default (the reference precision); 2 threads; batches of 32.
    public init(
        path: String, precision: Precision = .fp32, threads: Int = 2, batchSize: Int = 32,
        channelsLast: Bool = true, freeze: Bool = true,
        channels: Int = 3, height: Int = PreprocessingMode.side, width: Int = PreprocessingMode.side,
        precisionCachePath: String? = nil, device: ComputeDevice = .auto, streams: Int = 1
    ) {
        self.path = path
        self.streams = streams
        self.device = device
        self.precision = precision
        self.threads = threads
        self.batchSize = batchSize
        self.channelsLast = channelsLast
        self.freeze = freeze
        self.channels = channels
        self.height = height
        self.width = width
        self.precisionCachePath = precisionCachePath
    }

    /// The int8 file of the same model beside `path`: `models/resnet50_int8.pt` for
    /// `models/resnet50.pt` (what `make model` writes).
    public static func int8Sibling(of path: String) -> String {
        (path.hasSuffix(".pt") ? String(path.dropLast(3)) : path) + "_int8.pt"
    }

    /// The file a precision loads: ``int8Path`` (or the sibling) for `.int8`, ``path`` otherwise.
    public func file(for precision: Precision) -> String {
        precision == .int8 ? int8Path ?? Self.int8Sibling(of: path) : path
    }
}

extension ModelOptions {
    /// Threads left for decoding on `cores` cores once the model's ``threads`` run: at least
    /// 1 (1 on 2 cores with 2 model threads, 14 on 16 cores with 2).
    public func decodeThreadsLeftOver(cores: Int) -> Int { max(1, cores - max(1, threads)) }

    /// The streams that keep `cores` busy without stalls, for throughput (the batch commands'
    /// default): one single-threaded stream per model thread, at most 4, when the model shares
    /// its cores with the decode threads (`threads + decodeThreads > cores`); otherwise 1. A
    /// multi-threaded forward pass waits at every barrier for a thread that a decode thread has
    /// preempted; single-threaded ones have no barriers to wait at (docs/precision.md, "Model streams").
    public static func throughputStreams(threads: Int, decodeThreads: Int, cores: Int) -> Int {
        threads + decodeThreads > cores ? max(1, min(threads, 4)) : 1
    }

    /// Intra-op threads of each forward pass: ``threads`` shared out over ``streams``, at least 1.
    public var intraOpThreads: Int { max(1, threads / max(1, streams)) }
}

/// A loaded TorchScript model (one libtorch module). Blocking calls: run them off Swift's
/// cooperative pool (``Embedder`` does).
///
/// Safe because: the handle is immutable after load; `ew_torch_forward` is reentrant on one
/// handle (ew_torch.h's threading contract); `deinit` runs only when no call can be in
/// flight, since every call holds a reference to `self`.
public final class TorchModel: @unchecked Sendable {
    private let handle: OpaquePointer
    public let options: ModelOptions
    /// Output dimension, from the warm-up forward.
    public let outputDim: Int
    /// The precision actually used (`auto` resolved).
    public let precision: Precision

    /// True when this CPU runs bfloat16 natively (AVX512_BF16 or AMX-BF16).
    public static var cpuHasBF16: Bool { ew_torch_cpu_has_bf16() != 0 }
    /// The torch backend's libtorch version ("unavailable" when no backend can be loaded).
    public static var libtorchVersion: String { String(cString: ew_torch_version()) }
    /// Where the torch backend (libewall_torch.so) was loaded from; nil while none is loaded.
    /// Never loads it.
    public static var backendPath: String? { ew_torch_backend_path().map { String(cString: $0) } }

    /// Loads the torch backend now if nothing has yet: beside the executable, or from
    /// `$EWALL_TORCH_BACKEND` (ew_torch.h). Throws ``InferenceError/Code/backendUnavailable``
    /// with the paths tried and why; the same on every later call.
    public static func loadBackend() throws(InferenceError) {
        var err = ew_torch_error()
        let rc = ew_torch_backend_load(&err)
        if rc != 0 { throw error(rc, err) }
    }
    /// GPUs the loaded libtorch can use (0 with Debian's CPU-only libtorch).
    public static var cudaDeviceCount: Int { Int(ew_torch_cuda_device_count()) }
    /// Where this model runs: `cpu`, `cuda:0`, ... (`auto` resolved).
    public var device: String { String(cString: ew_torch_device(handle)) }

    /// True when the torch backend's libtorch has the onednn quantized engine int8 files need.
    public static var hasInt8: Bool { ew_torch_has_int8() != 0 }

    /// Loads, freezes and warms up the model (two forwards of a zero batch: one image on the
    /// CPU, a full batch on CUDA; see ``warmupBatch(_:)``), checking that its output is `[n, D]`
    /// floating point. `.int8` loads ``ModelOptions/file(for:)``.
    ///
    /// `.auto` is not a precision a model runs at: it is decided before loading, by measuring
    /// on calibration photos (`PrecisionAdvisor` in EwallEmbedding); here it is refused.
    public init(options: ModelOptions) throws(InferenceError) {
        guard options.batchSize >= 1, options.threads >= 1, options.streams >= 1 else {
            throw InferenceError(.invalidConfiguration, "batch size, threads and streams must be at least 1")
        }
        guard options.precision != .auto else {
            throw InferenceError(
                .invalidConfiguration,
                "precision auto is decided from calibration photos before the model loads (PrecisionAdvisor); "
                    + "TorchModel needs fp32, bf16, fp16 or int8")
        }
        try Self.loadBackend()
        _ = ew_torch_set_threads(Int32(options.intraOpThreads), 1)
        if options.precision == .bf16 && !Self.cpuHasBF16 && !Self.runsOnCUDA(options.device) {
            throw InferenceError(
                .precisionUnavailable,
                "bf16 was requested but this CPU has no native bfloat16 (AVX512_BF16/AMX); use fp32 or auto")
        }
        let handle = try Self.load(options, options.precision)
        self.handle = handle
        self.options = options
        self.precision = options.precision
        self.outputDim = Int(ew_torch_output_dim(handle))
    }

    /// Whether `device` resolves to a GPU with the loaded libtorch.
    public static func runsOnCUDA(_ device: ComputeDevice) -> Bool {
        switch device {
        case .cpu: return false
        case .cuda: return true
        case .auto: return cudaDeviceCount > 0
        }
    }

    /// The zero batch the load runs twice. The two calls are what settle TorchScript's profiling
    /// executor (its first runs of a graph are the slow ones), and on the CPU they need not be
    /// full: oneDNN's kernels for a larger batch are made at its first call at little cost.
    /// Measured with Debian's libtorch 1.13 on a 2-core Zen 3, 2 threads: warming with 32
    /// images took 9.9 s, with 1 image 0.4 s, and the first batch of 32 after that ran 4.9 s
    /// against 4.6-4.8 s for the ones after it. On CUDA a full batch, so that cuDNN's
    /// autotuning (per input shape) happens at load, not in the first request.
    public static func warmupBatch(_ options: ModelOptions) -> Int {
        runsOnCUDA(options.device) ? options.batchSize : 1
    }

    /// Loads one precision (the shim freezes and runs two warm-up batches).
    private static func load(_ options: ModelOptions, _ precision: Precision) throws(InferenceError) -> OpaquePointer {
        let code: ew_torch_precision
        switch precision {
        case .bf16: code = EW_TORCH_BF16
        case .fp16: code = EW_TORCH_FP16
        case .int8: code = EW_TORCH_INT8
        case .fp32, .auto: code = EW_TORCH_FP32
        }
        var o = ew_torch_options(
            precision: Int32(code.rawValue),
            channels_last: options.channelsLast ? 1 : 0, optimize: options.freeze ? 1 : 0,
            channels: Int64(options.channels), height: Int64(options.height), width: Int64(options.width),
            warmup_batch: Int64(warmupBatch(options)), device_type: 0, device_index: 0)
        switch options.device {
        case .cpu: o.device_type = Int32(EW_TORCH_DEVICE_CPU)
        case .auto: o.device_type = Int32(EW_TORCH_DEVICE_AUTO)
        case .cuda(let n):
            o.device_type = Int32(EW_TORCH_DEVICE_CUDA)
            o.device_index = Int32(n)
        }
        var err = ew_torch_error()
        var model: OpaquePointer?
        let rc = ew_torch_load(options.file(for: precision), &o, &model, &err)
        guard rc == 0, let model else { throw Self.error(rc, err) }
        return model
    }

    deinit { ew_torch_free(handle) }

    /// Runs `count` images (`input`: count x C x H x W floats) and returns count x D floats.
    /// Blocks the calling thread for the whole forward pass.
    public func forward(_ input: UnsafeBufferPointer<Float>, count: Int) throws(InferenceError) -> [Float] {
        let per = options.channels * options.height * options.width
        guard count >= 1, input.count >= count * per else {
            throw InferenceError(.badInput, "a batch of \(count) needs \(count * per) floats, got \(input.count)")
        }
        let n = count * outputDim
        var err = ew_torch_error()
        var rc: Int32 = 0
        let out = [Float](unsafeUninitializedCapacity: n) { buf, initialized in
            rc = ew_torch_forward(
                handle, input.baseAddress, Int64(count), Int64(options.channels),
                Int64(options.height), Int64(options.width), buf.baseAddress, n, &err)
            initialized = rc == 0 ? n : 0
        }
        if rc != 0 { throw Self.error(rc, err) }
        return out
    }

    static func error(_ rc: Int32, _ err: ew_torch_error) -> InferenceError {
        let message = stringFromCCharArray(err.message)
        let code: InferenceError.Code
        switch Int(rc) {
        case EW_TORCH_E_NOT_FOUND: code = .modelNotFound
        case EW_TORCH_E_NOT_TORCHSCRIPT: code = .notTorchScript
        case EW_TORCH_E_UNSUPPORTED: code = .unsupportedModel
        case EW_TORCH_E_BAD_OUTPUT: code = .badOutput
        case EW_TORCH_E_BAD_INPUT: code = .badInput
        case EW_TORCH_E_PRECISION: code = .precisionUnavailable
        case EW_TORCH_E_ARGUMENT: code = .invalidConfiguration
        case EW_TORCH_E_NO_DEVICE: code = .deviceUnavailable
        case EW_TORCH_E_OUT_OF_MEMORY: code = .outOfMemory
        case EW_TORCH_E_BACKEND: code = .backendUnavailable
        default: code = .forwardFailed
        }
        return InferenceError(code, message, detail: "ew_torch status \(rc)")
    }
}
