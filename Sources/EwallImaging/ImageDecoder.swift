import CImageCodec
import EwallCore

/// What the header of an image says. Cheap to get: see ``ImageDecoder/probe(_:)``.
public struct ImageInfo: Sendable, Hashable {
    /// `"jpeg"`, `"png"`, `"webp"`, or the name of a recognised unsupported format.
    public var format: String
    /// Upright size, after EXIF orientation (and after DCT scaling on the JPEG fast path).
    public var width: Int
    public var height: Int
    /// Size as stored in the file.
    public var storedWidth: Int
    public var storedHeight: Int
    /// EXIF orientation 1...8 (1 when absent).
    public var orientation: Int
    public var hasAlpha: Bool
    public var isCMYK: Bool
    public var bitDepth: Int
    public var progressive: Bool
    /// JPEG fast path: 1 (full decode), 2, 4 or 8.
    public var scaleDenominator: Int
    /// The decoder warning that was accepted, if any: a harmless one always, a damaging one
    /// only under ``EwallCore/ImageLimits/allowDecoderWarnings``. See ``DecoderWarning``.
    public var decoderWarning: DecoderWarning?
    /// The accepted warning's text (`decoderWarning?.message`).
    public var warning: String? { decoderWarning?.message }

    init(_ i: ew_img_info) {
        format = String(cString: ew_img_format_name(i.format))
        width = Int(i.width)
        height = Int(i.height)
        storedWidth = Int(i.stored_width)
        storedHeight = Int(i.stored_height)
        orientation = Int(i.orientation)
        hasAlpha = i.has_alpha != 0
        isCMYK = i.is_cmyk != 0
        bitDepth = Int(i.bit_depth)
        progressive = i.progressive != 0
        scaleDenominator = Int(i.scale_denom)
        let text = stringFromCCharArray(i.warning)
        decoderWarning =
            text.isEmpty
            ? nil
            : DecoderWarning(
                kind: Int(i.warning_kind) == Int(EW_IMG_WARNING_DAMAGING.rawValue) ? .damaging : .harmless,
                message: text)
    }
}

/// A JPEG warning from libjpeg that the decoder accepted: the file decoded, and this is what
/// libjpeg said about it. Jobs count these (a summary line such as "3 images decoded with
/// harmless warnings").
///
/// - ``Kind-swift.enum/harmless``: a fault in the marker segments before the image data that
///   libjpeg reads past, such as junk bytes before a marker ("Corrupt JPEG data: 5 extraneous
///   bytes before marker 0xdb"), an unknown JFIF revision or an unknown Adobe colour transform.
///   The pixels are those of the same file without the fault, as PIL and browsers show it.
///   Always accepted.
/// - ``Kind-swift.enum/damaging``: the image data itself is truncated or corrupt, so parts of
///   the picture are grey or garbled. Without
///   ``EwallCore/ImageLimits/allowDecoderWarnings`` such a file fails with
///   ``EwallCore/ImageError/Code/truncated`` or ``EwallCore/ImageError/Code/corrupt`` instead.
///
/// ```swift
/// let image = try ImageDecoder().decode(bytes)
/// if let w = image.decoderWarning { harmlessWarnings += w.kind == .harmless ? 1 : 0 }
/// ```
public struct DecoderWarning: Sendable, Hashable, CustomStringConvertible {
    /// Whether the warning says the pixels are damaged.
    public enum Kind: String, Sendable, Hashable {
        /// A header fault; the pixels are intact.
        case harmless
        /// Damaged image data, accepted only because decoder warnings were allowed.
        case damaging
    }
    public var kind: Kind
    /// libjpeg's text, e.g. `"Corrupt JPEG data: 5 extraneous bytes before marker 0xdb"`.
    public var message: String

    public init(kind: Kind, message: String) {
        self.kind = kind
        self.message = message
    }

    public var description: String { "\(kind.rawValue) decoder warning: \(message)" }
}

/// An upright 8-bit RGB image, row-major, tightly packed.
public struct RGBImage: Sendable {
    public var width: Int
    public var height: Int
    /// `width * height * 3` bytes.
    public var pixels: [UInt8]
    public var info: ImageInfo

    public init(width: Int, height: Int, pixels: [UInt8], info: ImageInfo) {
        precondition(pixels.count == width * height * 3, "RGBImage needs width * height * 3 bytes")
        self.width = width
        self.height = height
        self.pixels = pixels
        self.info = info
    }

    /// The decoder warning accepted for this image, if any (``ImageInfo/decoderWarning``).
    public var decoderWarning: DecoderWarning? { info.decoderWarning }

    /// The RGB value at (x, y).
    public subscript(x: Int, y: Int) -> (UInt8, UInt8, UInt8) {
        let i = (y * width + x) * 3
        return (pixels[i], pixels[i + 1], pixels[i + 2])
    }
}

/// Decodes JPEG, PNG and WebP bytes to upright RGB. The format comes from the magic bytes,
/// never from a file name or a content type. See `ew_image.h` for the conversions applied.
///
/// ```swift
/// let decoder = ImageDecoder(limits: ImageLimits(maxPixels: 50_000_000))
/// let image = try decoder.decode(bytes)   // throws ImageError
/// ```
public struct ImageDecoder: Sendable {
    public var limits: ImageLimits
    /// JPEG fast path: decode with DCT-domain downscaling to no smaller than this size (the
    /// smallest 1/2, 1/4 or 1/8 scale that still covers it). Nil: the exact full decode.
    public var jpegScaleFloor: (width: Int, height: Int)?

    public init(limits: ImageLimits = ImageLimits(), jpegScaleFloor: (width: Int, height: Int)? = nil) {
        self.limits = limits
        self.jpegScaleFloor = jpegScaleFloor
    }

    private var cLimits: ew_img_limits {
        ew_img_limits(
            max_pixels: UInt64(max(0, limits.maxPixels)), min_side: UInt32(clamping: max(0, limits.minSide)),
            allow_warnings: limits.allowDecoderWarnings ? 1 : 0,
            scale_min_width: UInt32(clamping: jpegScaleFloor?.width ?? 0),
            scale_min_height: UInt32(clamping: jpegScaleFloor?.height ?? 0))
    }

    /// Reads the header only (microseconds, whatever the size) and applies the limits.
    public func probe(_ bytes: [UInt8]) throws(ImageError) -> ImageInfo {
        try checkSize(bytes.count)
        var lim = cLimits
        var info = ew_img_info()
        var err = ew_img_error()
        let rc = bytes.withUnsafeBufferPointer { ew_img_probe($0.baseAddress, $0.count, &lim, &info, &err) }
        if rc != 0 { throw Self.error(rc, err) }
        return ImageInfo(info)
    }

    /// Decodes to upright RGB, or throws the specific ``ImageError`` for this input.
    public func decode(_ bytes: [UInt8]) throws(ImageError) -> RGBImage {
        let info = try probe(bytes)
        var lim = cLimits
        var cinfo = ew_img_info()
        var err = ew_img_error()
        let count = info.width * info.height * 3
        var rc: Int32 = 0
        let pixels = [UInt8](unsafeUninitializedCapacity: count) { buf, initialized in
            rc = bytes.withUnsafeBufferPointer {
                ew_img_decode_rgb($0.baseAddress, $0.count, &lim, buf.baseAddress, count, &cinfo, &err)
            }
            initialized = rc == 0 ? count : 0
        }
        if rc != 0 { throw Self.error(rc, err) }
        return RGBImage(width: info.width, height: info.height, pixels: pixels, info: ImageInfo(cinfo))
    }

    private func checkSize(_ count: Int) throws(ImageError) {
        if limits.maxBytes > 0 && count > limits.maxBytes {
            throw ImageError(.tooLarge, "the image is \(count) bytes, above the limit of \(limits.maxBytes) bytes")
        }
    }

    static func error(_ rc: Int32, _ err: ew_img_error) -> ImageError {
        let message = stringFromCCharArray(err.message)
        let code: ImageError.Code
        switch Int(rc) {
        case EW_IMG_E_NOT_AN_IMAGE: code = .notAnImage
        case EW_IMG_E_UNSUPPORTED: code = .unsupportedFormat
        case EW_IMG_E_TRUNCATED: code = .truncated
        case EW_IMG_E_CORRUPT: code = .corrupt
        case EW_IMG_E_TOO_MANY_PIXELS: code = .tooManyPixels
        case EW_IMG_E_TOO_SMALL: code = .tooSmall
        case EW_IMG_E_NO_MEMORY: code = .outOfMemory
        default: code = .corrupt
        }
        return ImageError(code, message, detail: "ew_img status \(rc)")
    }
}
