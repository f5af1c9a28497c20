import CImageCodec
import EwallTestSupport
import Foundation
import Testing

/// The resize's AVX2 kernels against the portable ones: the same bytes, always (both are PIL's
/// integer arithmetic in the same order). Serialized: the kernel choice is process-wide.
@Suite("Resize kernels: AVX2 equals portable", .serialized)
struct ResizeKernelTests {
    /// Asking for AVX2 (the default) answers whether this CPU runs it.
    static let hasAVX2 = ew_img_set_resize_kernel(1) == 1

    static func resize(_ src: [UInt8], _ sw: Int, _ sh: Int, _ dw: Int, _ dh: Int, simd: Int32) -> [UInt8] {
        _ = ew_img_set_resize_kernel(simd)
        var out = [UInt8](repeating: 0, count: dw * dh * 3)
        var err = ew_img_error()
        let rc = ew_img_resize_bilinear(src, UInt32(sw), UInt32(sh), &out, UInt32(dw), UInt32(dh), &err)
        #expect(rc == 0)
        return out
    }

    @Test(
        "random images, down- and upscales, odd and tiny sizes: identical bytes",
        .enabled(if: hasAVX2, "this CPU has no AVX2: only the portable kernels run"))
    func identical() {
        var rng = TestRNG(seed: 42)
        let sizes: [(Int, Int, Int, Int)] = [
            (720, 960, 224, 224), (4000, 3000, 224, 224), (451, 300, 224, 224), (225, 224, 224, 224),
            (224, 225, 224, 224),
            (1, 1, 224, 224), (2, 3, 224, 224), (224, 224, 224, 224), (100, 57, 224, 224), (3, 1000, 224, 224),
            (1000, 3, 224, 224), (601, 401, 384, 256), (97, 89, 31, 17), (256, 256, 1, 1),
        ]
        for (sw, sh, dw, dh) in sizes {
            var src = [UInt8](repeating: 0, count: sw * sh * 3)
            for i in src.indices { src[i] = UInt8(truncatingIfNeeded: rng.next()) }
            // Extremes too: flat black, flat white, a hard edge.
            if sw == 451 { for i in src.indices { src[i] = i % 2 == 0 ? 255 : 0 } }
            let scalar = Self.resize(src, sw, sh, dw, dh, simd: 0)
            let simd = Self.resize(src, sw, sh, dw, dh, simd: 1)
            #expect(scalar == simd, "\(sw)x\(sh) -> \(dw)x\(dh)")
        }
        _ = ew_img_set_resize_kernel(1)
    }
}
