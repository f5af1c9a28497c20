import EwallCore
import EwallImaging
import EwallTestSupport
import Foundation
import Testing

@Suite("Decoding: every supported format and variant")
struct DecoderFormatTests {
    let decoder = ImageDecoder()

    @Test(
        "good files decode to upright RGB of the right size",
        arguments: [
            ("baseline_600x400.jpg", "jpeg", 600, 400),
            ("progressive_600x400.jpg", "jpeg", 600, 400),
            ("grayscale_600x400.jpg", "jpeg", 600, 400),
            ("cmyk_adobe_600x400.jpg", "jpeg", 600, 400),
            ("ycck_adobe_600x400.jpg", "jpeg", 600, 400),
            ("rgb8_451x300.png", "png", 451, 300),
            ("interlaced_451x300.png", "png", 451, 300),
            ("rgba_cutout_451x300.png", "png", 451, 300),
            ("gray_alpha_451x300.png", "png", 451, 300),
            ("palette_451x300.png", "png", 451, 300),
            ("palette_transparent_451x300.png", "png", 451, 300),
            ("gray16_451x300.png", "png", 451, 300),
            ("lossy_451x300.webp", "webp", 451, 300),
            ("lossless_451x300.webp", "webp", 451, 300),
            ("alpha_451x300.webp", "webp", 451, 300),
        ])
    func decodes(name: String, format: String, width: Int, height: Int) throws {
        let image = try decoder.decode(Fixtures.bytes(Fixtures.image(name)))
        #expect(image.info.format == format)
        #expect(image.width == width && image.height == height)
        #expect(image.pixels.count == width * height * 3)
        // Not a flat field: a real photo has spread.
        let lo = image.pixels.min()!, hi = image.pixels.max()!
        #expect(Int(hi) - Int(lo) > 100)
    }

    @Test("header flags: progressive, interlaced, CMYK, alpha, 16-bit")
    func headerFlags() throws {
        func info(_ n: String) throws -> ImageInfo { try decoder.probe(Fixtures.bytes(Fixtures.image(n))) }
        #expect(try info("progressive_600x400.jpg").progressive)
        #expect(try !info("baseline_600x400.jpg").progressive)
        #expect(try info("interlaced_451x300.png").progressive)
        #expect(try info("cmyk_adobe_600x400.jpg").isCMYK)
        #expect(try info("ycck_adobe_600x400.jpg").isCMYK)
        #expect(try info("rgba_cutout_451x300.png").hasAlpha)
        #expect(try info("palette_transparent_451x300.png").hasAlpha)
        #expect(try info("alpha_451x300.webp").hasAlpha)
        #expect(try !info("lossy_451x300.webp").hasAlpha)
        #expect(try info("gray16_451x300.png").bitDepth == 16)
    }

    @Test("interlaced PNG, lossless WebP and plain PNG give identical pixels")
    func losslessAgree() throws {
        let a = try decoder.decode(Fixtures.bytes(Fixtures.image("rgb8_451x300.png")))
        let b = try decoder.decode(Fixtures.bytes(Fixtures.image("interlaced_451x300.png")))
        let c = try decoder.decode(Fixtures.bytes(Fixtures.image("lossless_451x300.webp")))
        #expect(a.pixels == b.pixels)
        #expect(a.pixels == c.pixels)
    }

    @Test(
        "CMYK and YCCK JPEGs (Adobe-inverted) come back in the source's colours",
        arguments: ["cmyk_adobe_600x400.jpg", "ycck_adobe_600x400.jpg"])
    func cmykColours(name: String) throws {
        let source = try decoder.decode(Fixtures.bytes(Fixtures.image("source_600x400.png")))
        let cmyk = try decoder.decode(Fixtures.bytes(Fixtures.image(name)))
        let diff = meanAbsDiff(source.pixels, cmyk.pixels)
        #expect(diff < 4, "mean |diff| \(diff) levels: colours are wrong (inverted CMYK not handled?)")
    }

    @Test("alpha is composited onto white, not onto what lies under transparent pixels")
    func alphaOverWhite() throws {
        for name in ["rgba_cutout_451x300.png", "gray_alpha_451x300.png", "alpha_451x300.webp"] {
            let image = try decoder.decode(Fixtures.bytes(Fixtures.image(name)))
            // The corners are fully transparent over black RGB in the file.
            for (x, y) in [(0, 0), (450, 0), (0, 299), (450, 299)] {
                let (r, g, b) = image[x, y]
                #expect(r == 255 && g == 255 && b == 255, "\(name) (\(x),\(y)) = \(r),\(g),\(b)")
            }
            // The centre is opaque photo, not white.
            let (r, g, b) = image[225, 150]
            #expect(Int(r) + Int(g) + Int(b) < 700)
        }
    }

    @Test("16-bit grayscale is scaled to 8 bits, not clipped to white")
    func gray16() throws {
        let g16 = try decoder.decode(Fixtures.bytes(Fixtures.image("gray16_451x300.png")))
        let mean = Double(g16.pixels.reduce(0) { $0 + Int($1) }) / Double(g16.pixels.count)
        #expect(mean > 40 && mean < 200, "mean \(mean): 16-bit samples were not scaled")
        let (r, g, b) = g16[100, 100]
        #expect(r == g && g == b)
    }

    @Test("EXIF orientation 1...8 all decode to the same upright image", arguments: 1...8)
    func orientation(o: Int) throws {
        let upright = try decoder.decode(Fixtures.bytes(Fixtures.image("exif_orientation_1.jpg")))
        let image = try decoder.decode(Fixtures.bytes(Fixtures.image("exif_orientation_\(o).jpg")))
        #expect(image.info.orientation == o)
        #expect(image.width == 451 && image.height == 300)
        #expect(meanAbsDiff(upright.pixels, image.pixels) < 3)
    }

}

@Suite("Decoding: every bad file gets its own specific error")
struct DecoderErrorTests {
    let decoder = ImageDecoder()

    @Test(
        "error code and message",
        arguments: [
            ("truncated_half.jpg", ImageError.Code.truncated, "Premature end"),
            ("truncated_in_header.jpg", .truncated, "truncated"),
            ("corrupt_scan_data.jpg", .corrupt, "Corrupt JPEG data"),
            ("header_60000x60000.jpg", .tooManyPixels, "60000x60000"),
            ("valid_16000x16000.png", .tooManyPixels, "16000x16000"),
            ("truncated.png", .truncated, "ends before"),
            ("bad_crc.png", .corrupt, "PNG is corrupt"),
            ("truncated.webp", .truncated, "ends before"),
            ("tiny_8x8.png", .tooSmall, "8x8"),
            ("animation.gif", .unsupportedFormat, "gif"),
            ("bitmap.bmp", .unsupportedFormat, "bmp"),
            ("scan.tiff", .unsupportedFormat, "tiff"),
            ("drawing.svg", .unsupportedFormat, "svg"),
            ("heic_header.heic", .unsupportedFormat, "heif"),
            ("html_pretending_to_be.jpg", .notAnImage, "HTML"),
            ("json_error.jpg", .notAnImage, "JSON"),
            ("text.txt", .notAnImage, "text"),
            ("empty.jpg", .notAnImage, "empty"),
        ])
    func badFile(name: String, code: ImageError.Code, words: String) throws {
        let bytes = try Fixtures.bytes(Fixtures.image(name))
        do {
            _ = try decoder.decode(bytes)
            Issue.record("\(name) decoded without an error")
        } catch {
            #expect(error.code == code, "\(name): \(error)")
            #expect(error.message.contains(words), "\(name): message '\(error.message)' lacks '\(words)'")
        }
    }

    @Test("a 60000x60000 header is refused from the header, without decoding")
    func hugeHeaderIsFast() throws {
        let bytes = try Fixtures.bytes(Fixtures.image("header_60000x60000.jpg"))
        let clock = ContinuousClock()
        let elapsed = clock.measure { _ = try? decoder.decode(bytes) }
        // A decode of 3.6 gigapixels would allocate ~10 GB and take minutes.
        #expect(elapsed < .milliseconds(100), "took \(elapsed)")
    }

    @Test("decoder warnings can be accepted explicitly")
    func allowWarnings() throws {
        let lenient = ImageDecoder(limits: ImageLimits(allowDecoderWarnings: true))
        let image = try lenient.decode(Fixtures.bytes(Fixtures.image("corrupt_scan_data.jpg")))
        #expect(image.width == 600)
        #expect(image.info.warning?.isEmpty == false, "an accepted warning is still reported")
        let cut = try lenient.decode(Fixtures.bytes(Fixtures.image("truncated_half.jpg")))
        #expect(cut.info.warning?.isEmpty == false)
        // Without the opt-in, a clean file reports no warning.
        #expect(try ImageDecoder().decode(Fixtures.bytes(Fixtures.image("baseline_600x400.jpg"))).info.warning == nil)
    }

    @Test("limits are configuration")
    func limits() throws {
        let bytes = try Fixtures.bytes(Fixtures.image("baseline_600x400.jpg"))
        #expect { _ = try ImageDecoder(limits: ImageLimits(maxPixels: 1000)).decode(bytes) } throws: {
            ($0 as? ImageError)?.code == .tooManyPixels
        }
        #expect { _ = try ImageDecoder(limits: ImageLimits(minSide: 500)).decode(bytes) } throws: {
            ($0 as? ImageError)?.code == .tooSmall
        }
        #expect { _ = try ImageDecoder(limits: ImageLimits(maxBytes: 1000)).decode(bytes) } throws: {
            ($0 as? ImageError)?.code == .tooLarge
        }
        let big = try Fixtures.bytes(Fixtures.image("valid_16000x16000.png"))
        let info = try ImageDecoder(limits: ImageLimits(maxPixels: 300_000_000)).probe(big)
        #expect(info.width == 16000)
    }
}

func meanAbsDiff(_ a: [UInt8], _ b: [UInt8]) -> Double {
    precondition(a.count == b.count)
    return Double(zip(a, b).reduce(0) { $0 + abs(Int($1.0) - Int($1.1)) }) / Double(a.count)
}

/// libjpeg warnings by kind (ew_image.h): harmless header faults decode, with the warning
/// reported; damaged scan data fails unless warnings are allowed, even behind a harmless fault.
@Suite("Decoding: JPEG warnings, harmless and damaging")
struct DecoderWarningTests {
    let decoder = ImageDecoder()

    struct Harmless: Sendable, CustomTestStringConvertible {
        var name: String
        var words: String
        var width: Int
        var height: Int
        var testDescription: String { name }
    }

    @Test(
        "a harmless header fault decodes, and its warning is reported",
        arguments: [
            Harmless(
                name: "junk_before_dqt_600x400.jpg", words: "Corrupt JPEG data: 5 extraneous bytes before marker 0xdb",
                width: 600, height: 400),
            Harmless(
                name: "junk_before_exif6_451x300.jpg", words: "3 extraneous bytes before marker 0xe1",
                width: 451, height: 300),
            Harmless(
                name: "jfif_revision_2_600x400.jpg", words: "unknown JFIF revision number 2.01",
                width: 600, height: 400),
            Harmless(
                name: "adobe_transform_7_600x400.jpg", words: "Unknown Adobe color transform code 7",
                width: 600, height: 400),
        ])
    func harmless(_ c: Harmless) throws {
        let bytes = try Fixtures.bytes(Fixtures.image(c.name))
        let image = try decoder.decode(bytes)
        #expect(image.width == c.width && image.height == c.height)
        let warning = try #require(image.decoderWarning, "\(c.name): the warning is not reported")
        #expect(warning.kind == .harmless)
        #expect(warning.message.contains(c.words), "\(warning)")
        #expect(image.info.warning == warning.message)
        // The JPEG fast path (DCT scaling) takes the same route.
        let fast = try ImageDecoder(jpegScaleFloor: (100, 100)).decode(bytes)
        #expect(fast.decoderWarning?.kind == .harmless)
        #expect(fast.info.scaleDenominator > 1)
    }

    @Test(
        "header faults change no pixel: equal to PIL's decode of the same file",
        arguments: [
            "junk_before_dqt_600x400.jpg", "jfif_revision_2_600x400.jpg", "adobe_transform_7_600x400.jpg",
            "unknown_app_segments_600x400.jpg", "bad_icc_chunk_600x400.jpg",
        ])
    func pixelsEqualPIL(name: String) throws {
        let ours = try decoder.decode(Fixtures.bytes(Fixtures.image(name)))
        let pil = try decoder.decode(Fixtures.bytes(Fixtures.image(name + ".pil.png")))
        #expect(ours.width == pil.width && ours.height == pil.height)
        #expect(ours.pixels == pil.pixels, "\(name): mean |diff| \(meanAbsDiff(ours.pixels, pil.pixels))")
    }

    @Test("junk before a marker: the same pixels as the file without it")
    func junkChangesNothing() throws {
        let clean = try decoder.decode(Fixtures.bytes(Fixtures.image("baseline_600x400.jpg")))
        let junk = try decoder.decode(Fixtures.bytes(Fixtures.image("junk_before_dqt_600x400.jpg")))
        #expect(junk.pixels == clean.pixels)
        #expect(clean.decoderWarning == nil)
        // The EXIF orientation behind junk is still applied.
        let upright = try decoder.decode(Fixtures.bytes(Fixtures.image("exif_orientation_6.jpg")))
        let behindJunk = try decoder.decode(Fixtures.bytes(Fixtures.image("junk_before_exif6_451x300.jpg")))
        #expect(behindJunk.info.orientation == 6)
        #expect(behindJunk.pixels == upright.pixels)
    }

    @Test(
        "unknown or malformed APPn segments and a bad ICC chunk: libjpeg says nothing, nor do we",
        arguments: ["unknown_app_segments_600x400.jpg", "bad_icc_chunk_600x400.jpg"])
    func silentSegments(name: String) throws {
        let image = try decoder.decode(Fixtures.bytes(Fixtures.image(name)))
        #expect(image.width == 600 && image.height == 400)
        #expect(image.decoderWarning == nil)
        #expect(image.info.orientation == 1, "a malformed EXIF segment means no orientation")
    }

    struct Damaging: Sendable, CustomTestStringConvertible {
        var name: String
        var code: ImageError.Code
        var words: [String]
        var testDescription: String { "\(name) -> \(code)" }
    }

    static let damaging = [
        Damaging(name: "truncated_half.jpg", code: .truncated, words: ["Premature end of JPEG file"]),
        Damaging(name: "corrupt_scan_data.jpg", code: .corrupt, words: ["premature end of data segment"]),
        // All blocks decode with bytes left over: a desynchronised scan, not padding.
        Damaging(
            name: "corrupt_entropy_data_600x400.jpg", code: .corrupt,
            words: ["extraneous bytes before marker 0xd9"]),
        Damaging(name: "bad_sos_parameters_600x400.jpg", code: .corrupt, words: ["Invalid SOS parameters"]),
        // Behind a harmless header fault, the damage is still found and named.
        Damaging(
            name: "junk_then_corrupt_scan_600x400.jpg", code: .corrupt,
            words: [
                "premature end of data segment", "after the harmless warning",
                "5 extraneous bytes before marker 0xdb",
            ]),
        Damaging(name: "junk_then_truncated_600x400.jpg", code: .truncated, words: ["Premature end of JPEG file"]),
    ]

    @Test("damaged scan data fails with its class, and the message says what to do", arguments: damaging)
    func damagingFails(_ c: Damaging) throws {
        let bytes = try Fixtures.bytes(Fixtures.image(c.name))
        do {
            let image = try decoder.decode(bytes)
            Issue.record("\(c.name) decoded (warning: \(String(describing: image.decoderWarning)))")
        } catch {
            #expect(error.code == c.code, "\(c.name): \(error)")
            for w in c.words { #expect(error.message.contains(w), "\(c.name): '\(error.message)' lacks '\(w)'") }
            #expect(error.message.contains("allow decoder warnings"))
        }
    }

    @Test("allowing decoder warnings accepts damaged scans, reported as damaging", arguments: damaging)
    func damagingAllowed(_ c: Damaging) throws {
        let lenient = ImageDecoder(limits: ImageLimits(allowDecoderWarnings: true))
        let image = try lenient.decode(Fixtures.bytes(Fixtures.image(c.name)))
        #expect(image.width == 600 && image.height == 400)
        let warning = try #require(image.decoderWarning)
        #expect(warning.kind == .damaging)
        #expect(warning.message.contains(c.words[0]), "\(warning)")
    }

    @Test("allowing decoder warnings keeps a harmless warning harmless")
    func harmlessAllowed() throws {
        let lenient = ImageDecoder(limits: ImageLimits(allowDecoderWarnings: true))
        let image = try lenient.decode(Fixtures.bytes(Fixtures.image("junk_before_dqt_600x400.jpg")))
        #expect(image.decoderWarning?.kind == .harmless)
    }
}

/// Orientation comes from EXIF only; XMP's tiff:Orientation is ignored, as browsers ignore it
/// (ew_image.h). The fixtures are stored so that ignoring XMP gives the upright 451x300 photo.
@Suite("Decoding: EXIF orientation wins, XMP orientation is ignored")
struct XMPOrientationTests {
    let decoder = ImageDecoder()

    @Test("XMP-only orientation (PNG): stored pixels, not rotated")
    func xmpOnlyPNG() throws {
        let image = try decoder.decode(Fixtures.bytes(Fixtures.image("xmp_orientation_6_451x300.png")))
        let plain = try decoder.decode(Fixtures.bytes(Fixtures.image("rgb8_451x300.png")))
        #expect(image.info.orientation == 1)
        #expect(image.width == 451 && image.height == 300)
        #expect(image.pixels == plain.pixels)
    }

    @Test("XMP-only orientation (JPEG): stored pixels, not rotated")
    func xmpOnlyJPEG() throws {
        let image = try decoder.decode(Fixtures.bytes(Fixtures.image("xmp_orientation_6_451x300.jpg")))
        let plain = try decoder.decode(Fixtures.bytes(Fixtures.image("exif_orientation_1.jpg")))
        #expect(image.info.orientation == 1)
        #expect(image.width == 451 && image.height == 300)
        #expect(image.pixels == plain.pixels)
        #expect(image.decoderWarning == nil)
    }

    @Test("EXIF 6 and XMP 8 disagree: EXIF wins", arguments: ["exif6_xmp8_451x300.jpg", "exif6_xmp8_451x300.png"])
    func exifWins(name: String) throws {
        let image = try decoder.decode(Fixtures.bytes(Fixtures.image(name)))
        #expect(image.info.orientation == 6)
        #expect(image.info.storedWidth == 300 && image.info.storedHeight == 451)
        #expect(image.width == 451 && image.height == 300)
        let upright = try decoder.decode(
            Fixtures.bytes(
                Fixtures.image(
                    name.hasSuffix(".png") ? "rgb8_451x300.png" : "exif_orientation_6.jpg")))
        #expect(image.pixels == upright.pixels, "mean |diff| \(meanAbsDiff(image.pixels, upright.pixels))")
    }
}
