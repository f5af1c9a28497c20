import EwallCore
import EwallFetch
import EwallTestSupport
import Foundation
import Testing

@testable import EwallJob
@testable import EwallML

/// Manifests and imports written to break things: every such row is a bad row with its line and
/// the reason, and nothing is truncated, replaced or merged with another row.
@Suite("Hostile manifest rows")
struct HostileInputTests {
    static func write(_ bytes: [UInt8], ext: String) throws -> String {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("hostile-\(UUID().uuidString).\(ext)")
            .path
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    static func lines(_ lines: [[UInt8]]) -> [UInt8] {
        Array(lines.joined(separator: [10]))
    }

    static func readAll(_ path: String, rules: InputRules = InputRules()) throws -> ([ManifestRow], [ManifestProblem]) {
        let reader = try ManifestReader(path: path, rules: rules)
        var rows: [ManifestRow] = [], problems: [ManifestProblem] = []
        while let r = reader.next() {
            switch r {
            case .success(let row): rows.append(row)
            case .failure(let p): problems.append(p)
            }
        }
        return (rows, problems)
    }

    static func b(_ s: String) -> [UInt8] { Array(s.utf8) }

    @Test("a NUL in product_id is a bad row: a\\0x and a\\0y are never both stored as 'a'", arguments: ["csv", "tsv"])
    func nulInIDs(_ ext: String) throws {
        let sep: UInt8 = ext == "csv" ? 44 : 9
        let path = try Self.write(
            Self.lines([
                Self.b("product_id") + [sep] + Self.b("image_url"),
                Self.b("a") + [0] + Self.b("x") + [sep] + Self.b("http://cdn/x.jpg"),
                Self.b("a") + [0] + Self.b("y") + [sep] + Self.b("http://cdn/y.jpg"),
                Self.b("a") + [sep] + Self.b("http://cdn/a.jpg"),
            ]), ext: ext)
        let (rows, problems) = try Self.readAll(path)
        #expect(rows.map(\.product.id) == ["a"])
        #expect(problems.map(\.line) == [2, 3])
        for p in problems {
            #expect(p.message.contains("product_id contains NUL"), "\(p.message)")
            #expect(p.productID?.utf8.contains(0) == false, "the failure line must not carry the NUL itself")
        }
    }

    @Test("invalid UTF-8 is a bad row with the byte and its offset, never replaced with U+FFFD")
    func invalidUTF8() throws {
        let path = try Self.write(
            Self.lines([
                Self.b("product_id,image_url,title"),
                Self.b("c") + [0xFF] + Self.b(",http://cdn/1.jpg,t"),
                Self.b("c") + [0xFE] + Self.b(",http://cdn/2.jpg,t"),
                Self.b("d,http://cdn/3.jpg,caf") + [0xC3], // a title cut inside a character
                Self.b("e,http://cdn/") + [0xE9] + Self.b(".jpg,t"),
                Self.b("ok,http://cdn/ok.jpg,t"),
            ]), ext: "csv")
        let (rows, problems) = try Self.readAll(path)
        #expect(rows.map(\.product.id) == ["ok"])
        #expect(problems.map(\.line) == [2, 3, 4, 5])
        #expect(problems[0].message == "product_id is not valid UTF-8 (byte 0xFF at offset 1)")
        #expect(problems[1].message == "product_id is not valid UTF-8 (byte 0xFE at offset 1)")
        #expect(problems[2].message.hasPrefix("title is not valid UTF-8"))
        #expect(problems[3].message.hasPrefix("image_url is not valid UTF-8"))
        #expect(!problems.contains { $0.message.contains("duplicate") })
    }

    @Test("JSON Lines: invalid UTF-8 and \\u0000 escapes are bad rows")
    func jsonLines() throws {
        let path = try Self.write(
            Self.lines([
                Self.b(#"{"product_id": "j"#) + [0xFF] + Self.b(#"", "image_url": "http://cdn/1.jpg"}"#),
                Self.b(#"{"product_id": "a\u0000b", "image_url": "http://cdn/2.jpg"}"#),
                Self.b(#"{"product_id": "ok", "image_url": "http://cdn/3.jpg\u0000.png"}"#),
                Self.b(#"{"product_id": "fine", "image_url": "http://cdn/4.jpg", "title": "line\none"}"#),
            ]), ext: "jsonl")
        let (rows, problems) = try Self.readAll(path)
        #expect(rows.map(\.product.id) == ["fine"])
        #expect(rows.first?.product.title == "line\none")
        #expect(problems.map(\.line) == [1, 2, 3])
        #expect(problems[0].message.hasPrefix("the line is not valid UTF-8"))
        #expect(problems[1].message.contains("product_id contains NUL"))
        #expect(problems[2].message.contains("image_url contains NUL"))
    }

    @Test("a NUL or other control character in image_url is invalid_url before any fetch")
    func controlCharactersInURLs() throws {
        for url in ["http://cdn/a\u{0}.jpg", "http://cdn/a\u{1B}.jpg", "http://cdn/a\n.jpg", "http://cdn/\u{85}.jpg"] {
            guard case .failure(let e) = ImageLocation.parse(url) else {
                Issue.record("\(url.debugDescription) was accepted")
                continue
            }
            #expect(e.code == FailureClass.invalidURL)
            #expect(e.message.contains("image_url contains"), "\(e.message)")
        }
        #expect(throws: Never.self) { try ImageLocation.parse("http://cdn/정상.jpg").get() }
    }

    @Test("ids have a length limit in bytes (default 256): 256 passes, 257 and 10 MiB are bad rows; configurable")
    func idLength() throws {
        let id256 = String(repeating: "가", count: 85) + "a" // 85 x 3 bytes + 1 = 256 bytes
        let id257 = id256 + "b"
        let huge = String(repeating: "x", count: 10 << 20)
        let path = try Self.write(
            Self.lines([
                Self.b("product_id,image_url"),
                Self.b("\(id256),http://cdn/1.jpg"),
                Self.b("\(id257),http://cdn/2.jpg"),
                Self.b("\(huge),http://cdn/3.jpg"),
                Self.b("short,http://cdn/" + String(repeating: "u", count: 5000)),
            ]), ext: "csv")
        let (rows, problems) = try Self.readAll(path)
        #expect(rows.map(\.product.id) == [id256])
        #expect(problems.map(\.line) == [3, 4, 5])
        #expect(problems[0].message == "product_id is 257 bytes long; the limit is 256 bytes")
        #expect(problems[1].message == "product_id is \(10 << 20) bytes long; the limit is 256 bytes")
        #expect(problems[1].productID.map { $0.utf8.count <= 210 } == true, "a failure never carries 10 MiB")
        #expect(problems[2].message.contains("image_url is 5011 bytes long; the limit is 4096 bytes"))

        let (loose, _) = try Self.readAll(path, rules: InputRules(maxIDBytes: 300))
        #expect(loose.map(\.product.id) == [id256, id257])
    }

    @Test("titles may span lines but hold no other control character")
    func titles() throws {
        let path = try Self.write(
            Self.lines([
                Self.b("product_id,image_url,title,brand"),
                Self.b("p1,http://cdn/1.jpg,\"two\nlines\",b"),
                Self.b("p2,http://cdn/2.jpg,bell") + [7] + Self.b(",b"),
                Self.b("p3,http://cdn/3.jpg,t,nul") + [0] + Self.b("brand"),
            ]), ext: "csv")
        let (rows, problems) = try Self.readAll(path)
        #expect(rows.map(\.product.id) == ["p1"])
        #expect(
            problems.map(\.message) == [
                "title contains the control character U+0007 at character 5; control characters are not allowed",
                "brand contains NUL (U+0000) at character 4; control characters are not allowed",
            ])
    }

    @Test("Korean, emoji and mixed-case ids are read byte for byte")
    func exactIDs() throws {
        let ids = ["구스다운-롱패딩_01", "👟🧥-2", "MixedCase-ID", "mixedcase-id", "spaces in id", "a/b?c#d%2F"]
        let path = try Self.write(
            Self.lines(
                [Self.b("product_id,image_url")]
                    + ids.enumerated().map { Self.b("\"\($0.element)\",http://cdn/\($0.offset).jpg") }),
            ext: "csv")
        let (rows, problems) = try Self.readAll(path)
        #expect(problems.isEmpty)
        #expect(rows.map { Array($0.product.id.utf8) } == ids.map { Array($0.utf8) })
    }

    @Test("imports apply the same rules: bad lines with their reason, the rest imported")
    func importRules() throws {
        func line(_ id: String) -> [UInt8] {
            Self.b(#"{"product_id": ""#) + Self.b(id)
                + Self.b(#"", "image_url": "http://cdn/1.jpg", "model_version": "m", "embedding_vector": [1, 0]}"#)
        }
        let cases: [([UInt8], String?)] = [
            (line(#"a\u0000b"#), "product_id contains NUL"),
            (
                Self.b(#"{"product_id": "c"#) + [0xFF]
                    + Self.b(#"", "image_url": "u", "model_version": "m", "embedding_vector": [1]}"#),
                "the line is not valid UTF-8"
            ),
            (line(String(repeating: "z", count: 300)), "product_id is 300 bytes long"),
            (line("좋은-id"), nil),
        ]
        for (bytes, expected) in cases {
            switch VectorTransfer.parseSeedLine(bytes, line: 1) {
            case .success(let (product, _)):
                #expect(expected == nil, "accepted \(product.id.debugDescription)")
            case .failure(let p):
                #expect(expected.map { p.message.contains($0) } == true, "\(p.message)")
            }
        }
    }
}

/// Job names (`ewall-embed --job`, `ewall job ...`, ``PostgresJobQueue/submit``) are printable,
/// bounded text, and anything that prints a stored one escapes it.
@Suite("Job names")
struct JobNameTests {
    @Test(
        "Unprintable, empty, space-only, padded and over-long names are refused, saying which rule failed",
        arguments: [
            ("", "is empty"), ("   ", "only spaces"), ("a\nb", "line feed"), ("a\rb", "carriage return"),
            ("a\tb", "tab"), ("\u{1B}[31mred", "U+001B"), ("evil\u{202E}gnp.exe", "U+202E"),
            ("zero\u{200B}width", "U+200B"),
            (" lead", "starts or ends"), ("trail ", "starts or ends"),
            (String(repeating: "x", count: 10_000), "10000 bytes long"),
        ])
    func refused(_ name: String, _ reason: String) {
        let problem = InputRules.jobNameProblem(name)
        #expect(problem?.contains(reason) == true, "\(name.debugDescription): \(problem ?? "accepted")")
    }

    @Test("Ordinary names are accepted", arguments: ["nightly", "구스다운 2026-12", "shop/feed#3", "a b c"])
    func accepted(_ name: String) {
        #expect(InputRules.jobNameProblem(name) == nil)
    }

    @Test("Escaped for a terminal: control and bidi characters written out, long names cut with their length")
    func escaped() {
        #expect(InputRules.escaped("\u{1B}[31mred\nfake log line") == "\\u{1B}[31mred\\u{A}fake log line")
        #expect(InputRules.escaped("x\u{202E}y") == "x\\u{202E}y")
        let long = InputRules.escaped(String(repeating: "n", count: 10_000))
        #expect(long.utf8.count < 200 && long.hasSuffix("... (10000 bytes)"))
        #expect(InputRules.escaped("구스다운") == "구스다운")
    }
}
