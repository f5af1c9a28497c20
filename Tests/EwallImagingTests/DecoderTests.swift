import EwallCore
import EwallImaging
import EwallTestSupport
import Foundation
import Testing

@Suite("Decoding: every supported format and variant")
struct DecoderFormatTests {
    let decoder = ImageDecoder()

    @Test("good files decode to upright RGB of the right size", arguments: [
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

    @Test("CMYK and YCCK JPEGs (Adobe-inverted) come back in the source's colours",
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

    @Test("error code and message", arguments: [
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
