import EwallCore
import EwallInference
import EwallTestSupport
import Foundation
import Testing

/// `--device`: what a CPU-only libtorch (Debian's, and CI's) must say and do. The CUDA side
/// runs on a GPU machine through bench/gpu/run.sh.
@Suite("Device selection")
struct DeviceTests {
    @Test("cpu, cuda, cuda:N and auto parse; anything else does not")
    func parsing() {
        #expect(ComputeDevice(parsing: "cpu") == .cpu)
        #expect(ComputeDevice(parsing: "CUDA") == .cuda(0))
        #expect(ComputeDevice(parsing: "cuda:3") == .cuda(3))
        #expect(ComputeDevice(parsing: "auto") == .auto)
        for bad in ["cuda:", "cuda:-1", "cuda:x", "tpu", "", "mps"] {
            #expect(ComputeDevice(parsing: bad) == nil, "\(bad)")
        }
        #expect(ComputeDevice.cuda(2).description == "cuda:2")
    }

    @Test(
        "CUDA asked for where this libtorch has none: a clear error naming the fix",
        .enabled(if: TorchModel.cudaDeviceCount == 0, "this libtorch sees a GPU"), arguments: [0, 3])
    func cudaUnavailable(index: Int) {
        var options = tinyOptions("linear4.pt")
        options.device = .cuda(index)
        do {
            _ = try TorchModel(options: options)
            Issue.record("cuda:\(index) loaded without a GPU")
        } catch {
            #expect(error.code == .deviceUnavailable, "\(error)")
            #expect(
                error.message.contains("cuda:\(index)") && error.message.contains("--device cpu"), "\(error.message)")
            #expect(
                error.message.contains("without CUDA") || error.message.contains("no CUDA device"), "\(error.message)")
        }
    }

    @Test(
        "auto runs on the CPU here, with the same outputs as cpu",
        .enabled(if: TorchModel.cudaDeviceCount == 0, "this libtorch sees a GPU"))
    func autoIsCPU() throws {
        var a = tinyOptions("linear4.pt"), c = tinyOptions("linear4.pt")
        a.device = .auto
        c.device = .cpu
        let auto = try TorchModel(options: a), cpu = try TorchModel(options: c)
        #expect(auto.device == "cpu" && cpu.device == "cpu")
        let x: [Float] = (0..<(2 * 3 * 8 * 8)).map { (i: Int) -> Float in Float(i % 17) / 17 }
        let ya = try x.withUnsafeBufferPointer { try auto.forward($0, count: 2) }
        let yc = try x.withUnsafeBufferPointer { try cpu.forward($0, count: 2) }
        #expect(ya == yc)
    }

    @Test("the torch backend is loaded at run time: from beside the test runner, or $EWALL_TORCH_BACKEND")
    func backendLoaded() throws {
        try TorchModel.loadBackend()
        let path = try #require(TorchModel.backendPath)
        #expect(path.hasSuffix(".so"), "\(path)")
        if let wanted = ProcessInfo.processInfo.environment["EWALL_TORCH_BACKEND"], !wanted.isEmpty {
            #expect(path == wanted)
        } else {
            #expect(path.hasSuffix("/libewall_torch.so"), "\(path)")
        }
        #expect(TorchModel.libtorchVersion.first?.isNumber == true, "\(TorchModel.libtorchVersion)")
    }

    @Test("fp16 is refused on the CPU with the reason")
    func fp16OnCPU() {
        var options = tinyOptions("linear4.pt", precision: .fp16)
        options.device = .cpu
        #expect { _ = try TorchModel(options: options) } throws: {
            let e = $0 as? InferenceError
            return e?.code == .precisionUnavailable && e?.message.contains("CUDA only") == true
        }
    }
}

/// Runs only where the loaded libtorch sees a GPU (never in CI: Debian's libtorch is CPU-only;
/// bench/gpu/run.sh covers the GPU machine without Swift).
@Suite("Device selection on a GPU", .enabled(if: TorchModel.cudaDeviceCount > 0, "needs a CUDA libtorch and a GPU"))
struct CUDADeviceTests {
    @Test("cuda:0 fp32 gives the CPU's outputs within float tolerance; auto picks cuda:0")
    func cudaMatchesCPU() throws {
        var g = tinyOptions("linear4.pt"), c = tinyOptions("linear4.pt"), a = tinyOptions("linear4.pt")
        g.device = .cuda(0)
        c.device = .cpu
        a.device = .auto
        let gpu = try TorchModel(options: g), cpu = try TorchModel(options: c)
        #expect(gpu.device == "cuda:0")
        #expect(try TorchModel(options: a).device == "cuda:0")
        let x: [Float] = (0..<(2 * 3 * 8 * 8)).map { (i: Int) -> Float in Float(i % 13) / 13 }
        let yg = try x.withUnsafeBufferPointer { try gpu.forward($0, count: 2) }
        let yc = try x.withUnsafeBufferPointer { try cpu.forward($0, count: 2) }
        for (u, v) in zip(yg, yc) { #expect(abs(u - v) <= 1e-4 * max(1, abs(v))) }
    }
}
