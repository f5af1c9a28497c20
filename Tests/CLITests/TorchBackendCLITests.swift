import EwallTestSupport
import Foundation
import Testing

/// The torch backend is loaded at run time (ew_torch.h; README, "Bring your own libtorch"):
/// no executable links libtorch, a command that never runs the model never needs it, and one
/// that does says clearly when it cannot be loaded.
@Suite("The torch backend, loaded at run time", .serialized)
struct TorchBackendCLITests {
    static let missing = "/nonexistent/ewall-test/libewall_torch.so"

    @Test(
        "no executable links libtorch (ldd)", arguments: ["ewall", "ewall-embed", "rebuild-faiss-index", "ewall-serve"])
    func noLibtorchAtLinkTime(name: String) throws {
        let exe = try executable(name)
        let r = try ProcessRunner.run(path: "/usr/bin/ldd", [exe.path])
        let text = r.stdout
        #expect(r.status == 0)
        #expect(text.contains("libc.so"), "\(text)")
        #expect(!text.contains("libtorch") && !text.contains("libc10"), "\(name) links libtorch:\n\(text)")
    }

    @Test("commands that never run the model work without a backend")
    func helpWithoutBackend() throws {
        for args in [["--help"], ["import", "--help"], ["embed", "--help"]] {
            let r = try ewall(args, env: ["EWALL_TORCH_BACKEND": Self.missing])
            #expect(r.status == 0, "ewall \(args): \(r.stderr)")
            #expect(r.stdout.contains("USAGE"))
        }
    }

    @Test("ewall embed with a backend path that does not exist exits 2 naming the path")
    func embedWithoutBackend() throws {
        let r = try ewall(["embed", try Fixtures.photos()[0]], env: ["EWALL_TORCH_BACKEND": Self.missing])
        #expect(r.status == 2, "\(r.stderr)")
        #expect(
            r.stderr.contains("torch backend") && r.stderr.contains("$EWALL_TORCH_BACKEND=\(Self.missing)"),
            "\(r.stderr)")
        #expect(r.stderr.contains("No such file"), "\(r.stderr)")
        #expect(r.stdout.isEmpty)
    }
}
