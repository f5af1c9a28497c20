/// Why one image could not be turned into a vector. A value, not a reason to stop a batch:
/// every other item in the batch still gets its own result.
///
/// `code` is stable (scripts and stores key on it); `message` is safe to show a user and
/// says what went wrong and, where there is one, what to do; `detail` keeps the native
/// library's own words for `debugDescription`.
public struct ImageError: Error, Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    /// A stable error class, written as snake_case text (`"truncated"`, `"too_many_pixels"`...).
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible, Codable {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// Empty, text, HTML, JSON or bytes of no known image format.
        public static let notAnImage = Code(rawValue: "not_an_image")
        /// A recognised image format that is not decoded (GIF, BMP, TIFF, HEIC/AVIF, SVG...).
        public static let unsupportedFormat = Code(rawValue: "unsupported_format")
        /// The data ends before the image does.
        public static let truncated = Code(rawValue: "truncated")
        /// Malformed image data, or a JPEG that decodes only with warnings.
        public static let corrupt = Code(rawValue: "corrupt")
        /// Width x height above the configured limit, refused from the header.
        public static let tooManyPixels = Code(rawValue: "too_many_pixels")
        /// A side below the configured minimum.
        public static let tooSmall = Code(rawValue: "too_small")
        /// More bytes than the configured maximum.
        public static let tooLarge = Code(rawValue: "too_large")
        /// The file could not be read (missing, permission, I/O error).
        public static let unreadable = Code(rawValue: "unreadable")
        /// The decoder ran out of memory.
        public static let outOfMemory = Code(rawValue: "out_of_memory")
        /// No torch backend (libewall_torch.so) could be loaded: the message names the paths
        /// tried and why (docs/precision.md, "Bring your own libtorch").
        public static let backendUnavailable = Code(rawValue: "torch_backend_unavailable")
    }

    public var code: Code
    public var message: String
    public var detail: String?

    public init(_ code: Code, _ message: String, detail: String? = nil) {
        self.code = code
        self.message = message
        self.detail = detail
    }

    public var description: String { "\(code): \(message)" }
    public var debugDescription: String { detail.map { "\(description) [\($0)]" } ?? description }
}

/// A failure of the model: loading it, or running it.
public struct InferenceError: Error, Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    public struct Code: RawRepresentable, Hashable, Sendable, CustomStringConvertible, Codable {
        public let rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public var description: String { rawValue }

        /// The model file is missing or unreadable.
        public static let modelNotFound = Code(rawValue: "model_not_found")
        /// The file is not a TorchScript archive.
        public static let notTorchScript = Code(rawValue: "not_torchscript")
        /// The file needs operators or a format version this libtorch lacks.
        public static let unsupportedModel = Code(rawValue: "unsupported_model")
        /// The model's output is not a `[n, D]` floating-point tensor.
        public static let badOutput = Code(rawValue: "bad_model_output")
        /// The batch given to the model has the wrong shape.
        public static let badInput = Code(rawValue: "bad_model_input")
        /// The requested precision cannot be used (bf16 with a frozen file or a CPU without bf16).
        public static let precisionUnavailable = Code(rawValue: "precision_unavailable")
        /// The forward pass failed at run time.
        public static let forwardFailed = Code(rawValue: "model_error")
        /// One output row is NaN, infinite or all zeros: that item has no usable vector.
        public static let invalidVector = Code(rawValue: "invalid_vector")
        /// Invalid configuration.
        public static let invalidConfiguration = Code(rawValue: "invalid_configuration")
        /// CUDA was asked for, but the loaded libtorch has none, or no such device is present.
        public static let deviceUnavailable = Code(rawValue: "device_unavailable")
        /// The device ran out of memory for a batch (the embedder retries it in halves first).
        public static let outOfMemory = Code(rawValue: "out_of_memory")
        /// No torch backend (libewall_torch.so) could be loaded: the message names the paths
        /// tried and why (docs/precision.md, "Bring your own libtorch").
        public static let backendUnavailable = Code(rawValue: "torch_backend_unavailable")
    }

    public var code: Code
    public var message: String
    public var detail: String?

    public init(_ code: Code, _ message: String, detail: String? = nil) {
        self.code = code
        self.message = message
        self.detail = detail
    }

    public var description: String { "\(code): \(message)" }
    public var debugDescription: String { detail.map { "\(description) [\($0)]" } ?? description }
}

/// One item's failure, with the stage it failed in. Written out and counted, never thrown
/// across a batch.
public struct ItemFailure: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Stage: String, Sendable, Codable { case read, decode, infer }
    public var stage: Stage
    /// The error class: an `ImageError.Code` or `InferenceError.Code` raw value.
    public var code: String
    public var message: String

    public init(stage: Stage, code: String, message: String) {
        self.stage = stage
        self.code = code
        self.message = message
    }

    public init(_ error: ImageError, stage: Stage = .decode) {
        self.init(stage: stage, code: error.code.rawValue, message: error.message)
    }

    public init(_ error: InferenceError) {
        self.init(stage: .infer, code: error.code.rawValue, message: error.message)
    }

    public var description: String { "\(code) (\(stage.rawValue)): \(message)" }
}

/// The text in a fixed-size C `char` array imported as a tuple (`char message[512]` in the
/// shims' error structs), up to its first NUL.
public func stringFromCCharArray<T>(_ tuple: T) -> String {
    var copy = tuple
    return withUnsafeBytes(of: &copy) { String(decoding: $0.prefix(while: { $0 != 0 }), as: UTF8.self) }
}
