import CTorchShim
import EwallCore

/// How the model is loaded and run.
public struct ModelOptions: Sendable, Hashable {
    /// The TorchScript file.
    public var path: String
    public var precision: Precision
    /// libtorch intra-op threads (process-wide; applied by the first model loaded).
    public var threads: Int
    /// Images per forward pass.
    public var batchSize: Int
    /// Feed channels-last tensors (oneDNN's fast layout). On by default.
    public var channelsLast: Bool
    /// Freeze the TorchScript graph after load (folds weights into constants). On by default.
    public var freeze: Bool
    /// Input shape the model expects.
    public var channels: Int, height: Int, width: Int

    /// fp32 by default (the reference precision); 2 threads; batches of 32.
    public init(path: String, precision: Precision = .fp32, threads: Int = 2, batchSize: Int = 32,
                channelsLast: Bool = true, freeze: Bool = true,
                channels: Int = 3, height: Int = PreprocessingMode.side, width: Int = PreprocessingMode.side) {
        self.path = path
        self.precision = precision
        self.threads = threads
        self.batchSize = batchSize
        self.channelsLast = channelsLast
        self.freeze = freeze
        self.channels = channels
        self.height = height
        self.width = width
    }

    /// The precision `auto` resolves to on this CPU.
    public var resolvedPrecision: Precision {
        switch precision {
        case .auto: return TorchModel.cpuHasBF16 ? .bf16 : .fp32
        default: return precision
        }
    }
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
    /// The precision actually used.
    public let precision: Precision

    /// True when this CPU runs bfloat16 natively (AVX512_BF16 or AMX-BF16).
    public static var cpuHasBF16: Bool { ew_torch_cpu_has_bf16() != 0 }
    /// libtorch's version.
    public static var libtorchVersion: String { String(cString: ew_torch_version()) }

    /// Loads, freezes and warms up the model (two forwards of a full zero batch), checking
    /// that its output is `[n, D]` floating point.
    public init(options: ModelOptions) throws(InferenceError) {
        guard options.batchSize >= 1, options.threads >= 1 else {
            throw InferenceError(.invalidConfiguration, "batch size and threads must be at least 1")
        }
        let precision = options.resolvedPrecision
        if precision == .bf16 && !Self.cpuHasBF16 {
            throw InferenceError(.precisionUnavailable,
                                 "bf16 was requested but this CPU has no native bfloat16 (AVX512_BF16/AMX); use fp32 or auto")
        }
        _ = ew_torch_set_threads(Int32(options.threads), 1)
        var o = ew_torch_options(
            precision: Int32(precision == .bf16 ? EW_TORCH_BF16.rawValue : EW_TORCH_FP32.rawValue),
            channels_last: options.channelsLast ? 1 : 0, optimize: options.freeze ? 1 : 0,
            channels: Int64(options.channels), height: Int64(options.height), width: Int64(options.width),
            warmup_batch: Int64(options.batchSize))
        var err = ew_torch_error()
        var model: OpaquePointer?
        let rc = ew_torch_load(options.path, &o, &model, &err)
        guard rc == 0, let model else { throw Self.error(rc, err) }
        self.handle = model
        self.options = options
        self.precision = precision
        self.outputDim = Int(ew_torch_output_dim(model))
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
            rc = ew_torch_forward(handle, input.baseAddress, Int64(count), Int64(options.channels),
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
        default: code = .forwardFailed
        }
        return InferenceError(code, message, detail: "ew_torch status \(rc)")
    }
}
