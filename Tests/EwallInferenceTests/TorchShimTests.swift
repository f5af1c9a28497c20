import EwallCore
import EwallImaging
import EwallInference
import EwallTestSupport
import Foundation
import Testing

/// The tiny fixtures take [n, 3, 8, 8]; see Tests/Fixtures/make_torch_fixtures.py.
func tinyOptions(_ name: String, precision: Precision = .fp32, batch: Int = 2) -> ModelOptions {
    ModelOptions(
        path: Fixtures.torch(name), precision: precision, threads: 2, batchSize: batch,
        channels: 3, height: 8, width: 8)
}

struct Expected: Decodable {
    var fills: [[Float]]
    var linear4: [[Float]]
    var special_rows: [[Float?]]
    /// Four textured images, flattened, and what Python's int8 model gave for them.
    var textured: [Float]
    var int8_conv4: [[Float]]

    static func load() throws -> Expected {
        let data = try Data(Fixtures.bytes(Fixtures.torch("expected.json")))
        return try JSONDecoder().decode(Expected.self, from: data)
    }

    /// Image i: every pixel of channel c is fills[i][c].
    func input(_ indices: [Int]) -> [Float] {
        indices.flatMap { i in (0..<3).flatMap { c in [Float](repeating: fills[i][c], count: 64) } }
    }
}

@Suite("libtorch shim: every error code")
struct TorchShimErrorTests {
    @Test(
        "load failures are distinct and actionable",
        arguments: [
            ("missing.pt", InferenceError.Code.modelNotFound, "not found"),
            ("not_torchscript.pt", .notTorchScript, "not a TorchScript file"),
            ("state_dict.pt", .notTorchScript, "torch.save"),
            ("unsupported_op.pt", .unsupportedModel, "aten::sigmoix"),
            ("output_4d.pt", .badOutput, "[1, 3, 8, 8]"),
            ("output_tuple.pt", .badOutput, "Tuple"),
            ("output_int.pt", .badOutput, "Long"),
        ])
    func loadError(name: String, code: InferenceError.Code, words: String) {
        do {
            _ = try TorchModel(options: tinyOptions(name))
            Issue.record("\(name) loaded")
        } catch {
            #expect(error.code == code, "\(name): \(error)")
            #expect(error.message.contains(words), "\(name): '\(error.message)' lacks '\(words)'")
        }
    }

    @Test(
        "bf16 on a file frozen before saving is refused with a reason",
        .enabled(if: TorchModel.cpuHasBF16, "this CPU has no native bfloat16 (AVX512_BF16/AMX)"))
    func frozenBF16() throws {
        #expect { _ = try TorchModel(options: tinyOptions("frozen_linear4.pt", precision: .bf16)) } throws: {
            ($0 as? InferenceError)?.code == .precisionUnavailable
        }
        // fp32 works with the frozen file.
        _ = try TorchModel(options: tinyOptions("frozen_linear4.pt"))
    }

    @Test(
        "an int8 file runs with the onednn engine and gives Python's numbers",
        .enabled(if: TorchModel.hasInt8, "this libtorch has no onednn quantized engine"))
    func int8Parity() throws {
        var o = tinyOptions("int8_conv4.pt", precision: .int8, batch: 4)
        o.int8Path = Fixtures.torch("int8_conv4.pt")
        let model = try TorchModel(options: o)
        #expect(model.precision == .int8 && model.outputDim == 4)
        let e = try Expected.load()
        let out = try e.textured.withUnsafeBufferPointer { try model.forward($0, count: 4) }
        for i in 0..<4 {
            for j in 0..<4 {
                #expect(abs(out[i * 4 + j] - e.int8_conv4[i][j]) <= 1e-5, "row \(i) col \(j)")
            }
        }
    }

    @Test(
        "an int8 file is refused as fp32, and an fp32 file as int8, each saying why",
        .enabled(if: TorchModel.hasInt8, "this libtorch has no onednn quantized engine"))
    func int8Mismatch() {
        #expect { _ = try TorchModel(options: tinyOptions("int8_conv4.pt")) } throws: {
            let e = $0 as? InferenceError
            return e?.code == .precisionUnavailable && e?.message.contains("is an int8 (quantized) file") == true
        }
        var o = tinyOptions("linear4.pt", precision: .int8)
        o.int8Path = Fixtures.torch("linear4.pt")
        #expect { _ = try TorchModel(options: o) } throws: {
            let e = $0 as? InferenceError
            return e?.code == .precisionUnavailable && e?.message.contains("not an int8 file") == true
        }
    }

    @Test("a batch of the wrong shape is refused, not passed to torch")
    func badInput() throws {
        let model = try TorchModel(options: tinyOptions("linear4.pt"))
        let x = [Float](repeating: 0, count: 10)
        #expect { _ = try x.withUnsafeBufferPointer { try model.forward($0, count: 2) } } throws: {
            ($0 as? InferenceError)?.code == .badInput
        }
    }
}

@Suite("libtorch shim: known outputs")
struct TorchShimOutputTests {
    @Test("linear4 reproduces Python's numbers in fp32")
    func knownOutputsFP32() throws { try knownOutputs(precision: .fp32) }

    @Test(
        "linear4 reproduces Python's numbers in bf16 (within bf16's precision)",
        .enabled(if: TorchModel.cpuHasBF16, "this CPU has no native bfloat16 (AVX512_BF16/AMX)"))
    func knownOutputsBF16() throws { try knownOutputs(precision: .bf16) }

    func knownOutputs(precision: Precision) throws {
        let e = try Expected.load()
        let model = try TorchModel(options: tinyOptions("linear4.pt", precision: precision, batch: 4))
        #expect(model.outputDim == 4)
        let out = try e.input([0, 1, 2, 3]).withUnsafeBufferPointer { try model.forward($0, count: 4) }
        let tolerance: Float = precision == .fp32 ? 1e-5 : 0.05
        for i in 0..<4 {
            for j in 0..<4 {
                #expect(abs(out[i * 4 + j] - e.linear4[i][j]) <= tolerance, "row \(i) col \(j) \(precision)")
            }
        }
    }

    @Test("after the one-image warm-up, a full batch and then a short tail batch give the known outputs")
    func tailBatch() throws {
        let e = try Expected.load()
        let options = tinyOptions("linear4.pt", batch: 4)
        #expect(TorchModel.warmupBatch(options) == 1)
        var cuda = options
        cuda.device = .cuda(0)
        #expect(TorchModel.warmupBatch(cuda) == 4, "on CUDA the warm-up is a full batch (cuDNN tunes per shape)")
        let model = try TorchModel(options: options)
        let full = try e.input([0, 1, 2, 3]).withUnsafeBufferPointer { try model.forward($0, count: 4) }
        #expect(full.count == 16)
        for i in 0..<4 {
            for j in 0..<4 { #expect(abs(full[i * 4 + j] - e.linear4[i][j]) < 1e-5, "row \(i) col \(j)") }
        }
        let out = try e.input([3]).withUnsafeBufferPointer { try model.forward($0, count: 1) }
        #expect(out.count == 4)
        #expect(abs(out[0] - e.linear4[3][0]) < 1e-5)
    }
}

@Suite("Embedder")
struct EmbedderTests {
    @Test("NaN and all-zero rows are item errors; their neighbours still get vectors")
    func invalidRows() throws {
        let e = try Expected.load()
        let model = try TorchModel(options: tinyOptions("special_rows.pt", batch: 5))
        let raw = try e.input([0, 1, 2, 3, 4]).withUnsafeBufferPointer { try model.forward($0, count: 5) }
        let results = (0..<5).map { Embedder.normalized(raw[$0 * 3..<($0 + 1) * 3]) }
        for i in [0, 1, 3] {
            let v = try results[i].get()
            #expect(abs(VectorMath.norm(v) - 1) < 1e-6)
            let want = e.special_rows[i].map { $0! }
            #expect(VectorMath.cosine(v, want) > 0.99999)
        }
        for i in [2, 4] { // row 2 is all zeros, row 4 is NaN
            #expect(throws: InferenceError.self) { try results[i].get() }
            if case .failure(let err) = results[i] { #expect(err.code == .invalidVector) }
        }
    }
}
