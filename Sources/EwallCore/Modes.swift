/// How an image becomes the model's 3 x 224 x 224 input. Recorded with every vector:
/// vectors made with different modes are not comparable (only ~70% of each photo's 10
/// nearest neighbours agree between the two modes).
public enum PreprocessingMode: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// The platform's original: Resize((224, 224)) with PIL's antialiased bilinear filter,
    /// aspect ratio not kept; ToTensor; ImageNet mean/std.
    case squash224 = "squash224"
    /// torchvision's standard: Resize(256) on the shorter side, CenterCrop(224); ToTensor;
    /// ImageNet mean/std.
    case resize256Crop224 = "resize256-crop224"

    public var description: String { rawValue }

    /// The preprocessing stored with a vector (part of the store's model key): the mode's
    /// name, plus `+dct` when JPEGs at least twice the resize target were decoded with
    /// DCT-domain downscaling (the fast path), e.g. `squash224+dct`. Vectors of the exact and
    /// the fast path are never mixed in one index.
    public func storedID(fastJPEG: Bool) -> String { rawValue + (fastJPEG ? Self.fastJPEGSuffix : "") }

    /// The suffix of ``storedID(fastJPEG:)`` for the JPEG fast path: `+dct`.
    public static let fastJPEGSuffix = "+dct"

    /// The input side of the model: 224.
    public static let side = 224
    /// ImageNet channel means (RGB), as torchvision's models expect.
    public static let mean: [Float] = [0.485, 0.456, 0.406]
    /// ImageNet channel standard deviations (RGB).
    public static let std: [Float] = [0.229, 0.224, 0.225]
}

/// The numeric precision of the forward pass.
public enum Precision: String, Sendable, Codable, CaseIterable, CustomStringConvertible {
    /// float32 everywhere.
    case fp32
    /// Weights and activations in bfloat16 on oneDNN. Faster than fp32 on some CPUs with
    /// AVX512_BF16 or AMX (about 2x on AMD Zen 5), slower on others (0.75x on an Intel Xeon
    /// with AVX512_BF16); vectors drift from fp32's (docs/precision.md, "Precision").
    case bf16
    /// float16 weights and activations: CUDA only (the CPU refuses it with a clear error).
    case fp16
    /// The int8 file of the same model (`models/export_resnet50.py --int8`: per-channel int8
    /// weights, onednn engine), CPU only: the int8 file beside the model (`resnet50_int8.pt`
    /// for `resnet50.pt`), or the `--model` file itself when its card says int8.
    case int8
    /// Decided once per model file, CPU and libtorch by measuring: each precision the device
    /// runs, for speed and for drift against fp32 on calibration photos; the fastest whose
    /// vectors keep the answers (`PrecisionGuard`) wins, fp32 otherwise, and the decision is
    /// cached (docs/precision.md). Never chosen from CPU flags alone.
    case auto

    public var description: String { rawValue }
}

/// Limits applied to every image before and while it is decoded.
public struct ImageLimits: Sendable, Hashable {
    /// Refuse images whose stored width x height exceeds this, from the header alone.
    public var maxPixels: Int
    /// Refuse images with a side shorter than this (placeholders, tracking pixels).
    public var minSide: Int
    /// Refuse inputs larger than this many bytes.
    public var maxBytes: Int
    /// Accept JPEGs that libjpeg decodes only with warnings (damaged data recovered as grey).
    public var allowDecoderWarnings: Bool

    /// 100 megapixels, 16 px minimum side, 20 MiB, warnings refused.
    public init(
        maxPixels: Int = 100_000_000, minSide: Int = 16, maxBytes: Int = 20 << 20,
        allowDecoderWarnings: Bool = false
    ) {
        self.maxPixels = maxPixels
        self.minSide = minSide
        self.maxBytes = maxBytes
        self.allowDecoderWarnings = allowDecoderWarnings
    }
}

/// Where the model runs: `cpu`, `cuda` (= `cuda:0`), `cuda:N`, or `auto` (CUDA device 0 when
/// the loaded libtorch has CUDA and a device is present, else the CPU).
public enum ComputeDevice: Sendable, Hashable, Codable, CustomStringConvertible {
    case cpu
    case cuda(Int)
    case auto

    /// Parses `cpu`, `cuda`, `cuda:N` or `auto`; `nil` for anything else.
    public init?(parsing text: String) {
        switch text.lowercased() {
        case "cpu": self = .cpu
        case "auto": self = .auto
        case "cuda", "gpu": self = .cuda(0)
        case let t where t.hasPrefix("cuda:"):
            guard let n = Int(t.dropFirst(5)), n >= 0 else { return nil }
            self = .cuda(n)
        default: return nil
        }
    }

    public var description: String {
        switch self {
        case .cpu: return "cpu"
        case .auto: return "auto"
        case .cuda(let n): return "cuda:\(n)"
        }
    }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let d = ComputeDevice(parsing: text) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: decoder.codingPath, debugDescription: "not a device: \(text)"))
        }
        self = d
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(description)
    }
}
