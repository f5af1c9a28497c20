import EwallCore
import EwallImaging
import EwallTestSupport
import Foundation
import Testing

@Suite("Preprocessing: parity with PIL + torchvision")
struct PreprocessorParityTests {
    @Test("tensors match the Python reference", arguments: PreprocessingMode.allCases)
    func parity(mode: PreprocessingMode) throws {
        let files = try Fixtures.referenceFiles()
        let ref = try Fixtures.reference("\(mode.rawValue).npy")
        #expect(ref.shape == [files.count, 3, 224, 224])
        #expect(files.count >= 40)
        let pre = Preprocessor(mode: mode)
        var worstMax: Float = 0
        for (i, file) in files.enumerated() {
            let ours = try pre.tensor(from: Fixtures.bytes(file)).values
            let theirs = ref.values[i * ImageTensor.count..<(i + 1) * ImageTensor.count]
            var maxDiff: Float = 0, sum: Double = 0
            for (a, b) in zip(ours, theirs) {
                let d = abs(a - b)
                maxDiff = max(maxDiff, d)
                sum += Double(d)
            }
            let mean = sum / Double(ImageTensor.count)
            #expect(maxDiff <= 0.05, "\(file): max |diff| \(maxDiff)")
            #expect(mean <= 0.005, "\(file): mean |diff| \(mean)")
            worstMax = max(worstMax, maxDiff)
        }
        // The decoders and the resize are bit-exact with PIL; record what this run saw.
        print("preprocess parity \(mode): worst max |diff| over \(files.count) files = \(worstMax)")
    }

    @Test("resize256-crop224 sizes and crop origin follow torchvision (round half to even)")
    func cropArithmetic() {
        #expect(Preprocessor.resizedSize(width: 600, height: 400, mode: .resize256Crop224) == (384, 256))
        #expect(Preprocessor.resizedSize(width: 300, height: 451, mode: .resize256Crop224) == (256, 384))
        #expect(Preprocessor.resizedSize(width: 451, height: 300, mode: .resize256Crop224) == (384, 256))
        #expect(Preprocessor.resizedSize(width: 451, height: 300, mode: .squash224) == (224, 224))
        #expect(Preprocessor.cropOrigin(width: 257, height: 256, side: 224) == (16, 16)) // 16.5 -> 16
        #expect(Preprocessor.cropOrigin(width: 259, height: 256, side: 224) == (18, 16)) // 17.5 -> 18
    }

    @Test("normalisation: white and black map to ImageNet's bounds")
    func normalisation() throws {
        let white = RGBImage(
            width: 224, height: 224, pixels: [UInt8](repeating: 255, count: 224 * 224 * 3),
            info: try ImageDecoder().probe(Fixtures.bytes(Fixtures.image("baseline_600x400.jpg"))))
        let t = try Preprocessor().tensor(from: white).values
        for c in 0..<3 {
            let expected = (1 - PreprocessingMode.mean[c]) / PreprocessingMode.std[c]
            #expect(abs(t[c * 224 * 224] - expected) < 1e-6)
        }
    }

    @Test("the JPEG fast path scales in the DCT domain and stays close to the exact path")
    func fastJPEG() throws {
        let exact = Preprocessor(mode: .squash224)
        let fast = Preprocessor(mode: .squash224, fastJPEG: true)
        let photos = try Fixtures.photos().filter { $0.hasSuffix(".jpg") }
        var scaled = 0
        var worstMean = 0.0
        for p in photos {
            let bytes = try Fixtures.bytes(p)
            if try fast.decoder.probe(bytes).scaleDenominator > 1 { scaled += 1 }
            let a = try exact.tensor(from: bytes).values, b = try fast.tensor(from: bytes).values
            let mean = zip(a, b).reduce(0.0) { $0 + Double(abs($1.0 - $1.1)) } / Double(a.count)
            worstMean = max(worstMean, mean)
        }
        #expect(scaled >= 5, "the fast path should downscale most photos larger than 448 px")
        #expect(worstMean < 0.05, "fast-path drift \(worstMean)")
        print("fast JPEG path: \(scaled)/\(photos.count) photos DCT-scaled, worst mean |diff| \(worstMean)")
    }

    @Test("a preprocessor is shared safely by concurrent tasks")
    func concurrent() async throws {
        let pre = Preprocessor()
        let files = Array(try Fixtures.photos().prefix(8))
        let sequential = try files.map { try pre.tensor(from: Fixtures.bytes($0)).values }
        let parallel = try await withThrowingTaskGroup(of: (Int, [Float]).self) { group in
            for (i, f) in files.enumerated() {
                group.addTask { (i, try pre.tensor(from: Fixtures.bytes(f)).values) }
            }
            var out = [[Float]](repeating: [], count: files.count)
            for try await (i, v) in group { out[i] = v }
            return out
        }
        #expect(parallel == sequential)
    }
}

@Suite("JPEG fast path: recorded with every vector")
struct FastJPEGPathTests {
    @Test("the stored preprocessing names the fast path, so the two paths are never mixed")
    func storedID() {
        #expect(PreprocessingMode.squash224.storedID(fastJPEG: false) == "squash224")
        #expect(PreprocessingMode.squash224.storedID(fastJPEG: true) == "squash224+dct")
        #expect(PreprocessingMode.resize256Crop224.storedID(fastJPEG: true) == "resize256-crop224+dct")
        let all = PreprocessingMode.allCases.flatMap { [$0.storedID(fastJPEG: false), $0.storedID(fastJPEG: true)] }
        #expect(Set(all).count == all.count)
    }
}
