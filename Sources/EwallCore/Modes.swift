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
    /// Weights and activations in bfloat16 on oneDNN; about 2x faster on CPUs with
    /// AVX512_BF16 or AMX, with vectors at cosine >= 0.999 to fp32's (after centering).
    case bf16
    /// bf16 where the CPU runs it natively, else fp32.
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
    public init(maxPixels: Int = 100_000_000, minSide: Int = 16, maxBytes: Int = 20 << 20,
                allowDecoderWarnings: Bool = false) {
        self.maxPixels = maxPixels
        self.minSide = minSide
        self.maxBytes = maxBytes
        self.allowDecoderWarnings = allowDecoderWarnings
    }
}
