import EwallCore
import EwallTestSupport
import Foundation
import Testing

/// Runs the built `ewall` binary (``tool(_:_:env:)`` in IndexCLITests.swift).
func ewall(_ args: [String], env: [String: String] = [:]) throws -> (status: Int32, stdout: String, stderr: String) {
    try tool("ewall", args, env: env)
}

@Suite("ewall embed", .serialized)
struct EmbedCLITests {
    @Test("--json: one line per input, vectors for good files, coded errors for bad ones, exit 0")
    func json() throws {
        let good = try Fixtures.photos()[0]
        let r = try ewall(["embed", "--json", good, Fixtures.image("truncated_half.jpg"), Fixtures.image("scan.tiff")])
        #expect(r.status == 0, "\(r.stderr)")
        let lines = r.stdout.split(separator: "\n").map {
            try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        #expect(lines.count == 3)
        #expect(lines[0]["ok"] as? Bool == true)
        let v = try #require(lines[0]["vector"] as? [Double])
        #expect(v.count == 2048)
        #expect(abs(v.reduce(0) { $0 + $1 * $1 } - 1) < 1e-4)
        #expect(lines[1]["ok"] as? Bool == false)
        #expect((lines[1]["error"] as? [String: Any])?["code"] as? String == "truncated")
        #expect((lines[2]["error"] as? [String: Any])?["code"] as? String == "unsupported_format")
        #expect(r.stderr.contains("1 embedded, 2 failed"))
    }

    @Test("--npy writes float32 [n, 2048] for the inputs that succeeded, rows on stdout")
    func npy() throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("ewall-cli-\(UUID()).npy")
        defer { try? FileManager.default.removeItem(at: out) }
        let photos = Array(try Fixtures.photos().prefix(3))
        let r = try ewall(["embed", "--npy", out.path, photos[0], Fixtures.image("empty.jpg"), photos[1], photos[2]])
        #expect(r.status == 0, "\(r.stderr)")
        let (shape, values) = try Npy.decode(Data(contentsOf: out))
        #expect(shape == [3, 2048])
        #expect(values.allSatisfy { $0.isFinite })
        #expect(r.stdout.contains("\"row\":2"))
        #expect(r.stdout.contains("\"code\":\"not_an_image\""))
    }

    @Test("--streams 2: batches side by side give the --streams 1 rows, in input order, around a bad file")
    func streams() throws {
        let photos = Array(try Fixtures.photos().prefix(5))
        let inputs = [photos[0], photos[1], Fixtures.image("empty.jpg"), photos[2], photos[3], photos[4]]
        func rows(_ extra: [String]) throws -> [[Float]] {
            let out = FileManager.default.temporaryDirectory.appendingPathComponent("ewall-cli-\(UUID()).npy")
            defer { try? FileManager.default.removeItem(at: out) }
            let r = try ewall(["embed", "--threads", "2", "--batch-size", "2", "--npy", out.path] + extra + inputs)
            #expect(r.status == 0, "\(r.stderr)")
            #expect(r.stdout.contains("\"code\":\"not_an_image\""))
            let (shape, values) = try Npy.decode(Data(contentsOf: out))
            #expect(shape == [5, 2048])
            return (0..<5).map { Array(values[$0 * 2048..<($0 + 1) * 2048]) }
        }
        let one = try rows(["--streams", "1"]), two = try rows(["--streams", "2"])
        for i in 0..<5 { #expect(VectorMath.cosine(one[i], two[i]) >= 0.99999, "row \(i)") }
        #expect(VectorMath.cosine(one[0], two[1]) < 0.99999, "rows 0 and 1 are different photos")
    }

    @Test("--streams above --threads is a usage error that says why")
    func tooManyStreams() throws {
        let r = try ewall(["embed", "--threads", "2", "--streams", "3", try Fixtures.photos()[0]])
        #expect(r.status != 0 && r.status != 2)
        #expect(r.stderr.contains("--streams must be 1...--threads"))
    }

    @Test("the default output is a readable table that flags a random-init model")
    func table() throws {
        let r = try ewall(["embed", try Fixtures.photos()[1], Fixtures.image("valid_16000x16000.png")])
        #expect(r.status == 0)
        #expect(r.stdout.contains("ok  dim 2048"))
        #expect(r.stdout.contains("FAILED too_many_pixels"))
        let card =
            try JSONSerialization.jsonObject(
                with: Data(contentsOf: URL(fileURLWithPath: ModelCard.path(forModel: Fixtures.model))))
            as! [String: Any]
        if card["pretrained"] as? Bool == false {
            #expect(r.stderr.contains("RANDOM-INIT"))
        }
    }

    @Test("a missing model exits 2 with what to do; $EWALL_MODEL is honoured")
    func missingModel() throws {
        let r = try ewall(["embed", try Fixtures.photos()[0]], env: ["EWALL_MODEL": "/nope/model.pt"])
        #expect(r.status == 2)
        #expect(r.stderr.contains("/nope/model.pt") && r.stderr.contains("make model"))
        #expect(r.stdout.isEmpty)
    }

    @Test("the format comes from the bytes: a PNG named .jpg and a WebP named .png both embed")
    func formatFromBytes() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ewall-sniff-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let pngAsJpg = dir.appendingPathComponent("photo.jpg"), webpAsPng = dir.appendingPathComponent("photo.png")
        try Data(Fixtures.bytes(Fixtures.image("rgb8_451x300.png"))).write(to: pngAsJpg)
        try Data(Fixtures.bytes(Fixtures.image("lossy_451x300.webp"))).write(to: webpAsPng)
        let r = try ewall(["embed", pngAsJpg.path, webpAsPng.path])
        #expect(r.status == 0)
        let rows = r.stdout.split(separator: "\n").dropFirst()
        #expect(rows.count == 2)
        #expect(rows.first?.contains("png") == true && rows.first?.contains("ok  dim 2048") == true)
        #expect(rows.last?.contains("webp") == true && rows.last?.contains("ok  dim 2048") == true)
    }

    @Test("--help documents the flags")
    func help() throws {
        let r = try ewall(["embed", "--help"])
        for flag in [
            "--model", "--precision", "--streams", "--preprocess", "--json", "--npy", "--max-pixels", "EWALL_MODEL",
            "squash224",
        ] {
            #expect(r.stdout.contains(flag), "--help lacks \(flag)")
        }
    }

    @Test("bad flags are usage errors")
    func badFlags() throws {
        let r = try ewall(["embed", "--precision", "fp8", "x.jpg"])
        #expect(r.status != 0 && r.status != 2)
        #expect(r.stderr.contains("fp8"))
    }
}
