import CImageCodec
import EwallCore
import Foundation

/// One preprocessed image: float32 CHW, 3 x 224 x 224, ImageNet-normalised RGB.
public struct ImageTensor: Sendable {
    public static let count = 3 * PreprocessingMode.side * PreprocessingMode.side
    /// ``count`` floats: the R plane, then G, then B.
    public var values: [Float]
    public init(values: [Float]) {
        precondition(values.count == Self.count, "an ImageTensor holds \(Self.count) floats")
        self.values = values
    }
}

/// Turns image bytes into the model's input, exactly as torchvision does on a PIL image
/// (see ``PreprocessingMode``). Stateless and `Sendable`: share one across tasks.
///
/// ```swift
/// let pre = Preprocessor(mode: .squash224)
/// let tensor = try pre.tensor(from: bytes)   // throws ImageError
/// ```
public struct Preprocessor: Sendable {
    public var mode: PreprocessingMode
    public var decoder: ImageDecoder

    /// - Parameter fastJPEG: decode large JPEGs with TurboJPEG's DCT-domain downscaling to
    ///   no less than the size the mode resizes to. Several times faster on big photos; the
    ///   pixels differ slightly from the exact path (docs/images.md, "The fast JPEG path"; figures in bench/README.md).
    public init(mode: PreprocessingMode = .squash224, limits: ImageLimits = ImageLimits(), fastJPEG: Bool = false) {
        self.mode = mode
        let side = PreprocessingMode.side
        let floor: (width: Int, height: Int)? =
            !fastJPEG ? nil : mode == .squash224 ? (side, side) : (256, 256)
        self.decoder = ImageDecoder(limits: limits, jpegScaleFloor: floor)
    }

    /// Decode and preprocess.
    public func tensor(from bytes: [UInt8]) throws(ImageError) -> ImageTensor {
        try tensor(from: decoder.decode(bytes))
    }

    /// Preprocess an already decoded image.
    public func tensor(from image: RGBImage) throws(ImageError) -> ImageTensor {
        let side = PreprocessingMode.side
        let (rw, rh) = Self.resizedSize(width: image.width, height: image.height, mode: mode)
        let (x0, y0) = Self.cropOrigin(width: rw, height: rh, side: side)
        var resized = [UInt8](repeating: 0, count: rw * rh * 3)
        var err = ew_img_error()
        let rc = image.pixels.withUnsafeBufferPointer { src in
            resized.withUnsafeMutableBufferPointer { dst in
                ew_img_resize_bilinear(
                    src.baseAddress, UInt32(image.width), UInt32(image.height),
                    dst.baseAddress, UInt32(rw), UInt32(rh), &err)
            }
        }
        if rc != 0 { throw ImageDecoder.error(rc, err) }
        let values = [Float](unsafeUninitializedCapacity: ImageTensor.count) { out, initialized in
            PreprocessingMode.mean.withUnsafeBufferPointer { mean in
                PreprocessingMode.std.withUnsafeBufferPointer { std in
                    _ = ew_img_normalize_chw(
                        resized, UInt32(rw), UInt32(rh), UInt32(x0), UInt32(y0),
                        UInt32(side), UInt32(side), mean.baseAddress, std.baseAddress,
                        out.baseAddress, &err)
                }
            }
            initialized = ImageTensor.count
        }
        return ImageTensor(values: values)
    }

    /// The size the image is resized to before any crop. squash224: 224 x 224.
    /// resize256-crop224: the shorter side to 256 and the longer side to
    /// `Int(256 * long / short)`, as torchvision's Resize(256) computes it.
    public static func resizedSize(width: Int, height: Int, mode: PreprocessingMode) -> (Int, Int) {
        switch mode {
        case .squash224:
            return (PreprocessingMode.side, PreprocessingMode.side)
        case .resize256Crop224:
            let short = min(width, height), long = max(width, height)
            let newLong = Int(Double(256) * Double(long) / Double(short))
            return width <= height ? (256, newLong) : (newLong, 256)
        }
    }

    /// torchvision CenterCrop's origin: `int(round((size - side) / 2))` with Python's
    /// round-half-to-even.
    public static func cropOrigin(width: Int, height: Int, side: Int) -> (Int, Int) {
        func origin(_ size: Int) -> Int { Int((Double(size - side) / 2).rounded(.toNearestOrEven)) }
        return (origin(width), origin(height))
    }
}
