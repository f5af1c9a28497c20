import EwallML
import EwallTestSupport
import Foundation
import Testing

@testable import EwallIndex
@testable import EwallServer

/// The hand-written JSON of the similar-products answer says what JSONEncoder would.
@Suite("Similar-products JSON")
struct ResponseJSONTests {
    static func object(_ bytes: [UInt8]) throws -> NSDictionary {
        try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? NSDictionary)
    }

    @Test("random answers, odd strings and numbers, missing fields: the same object as JSONEncoder's")
    func sameAsEncoder() throws {
        var rng = TestRNG(seed: 11)
        let strings = [
            "", "plain", "quote \" and \\ backslash", "tab\tline\nreturn\r", "\u{01}\u{1f}ctl", "한글 패딩 점퍼",
            "emoji 🧥", "slash/in/id", "ünïcødé", "a\u{7f}b",
        ]
        let doubles: [Double] = [0, 1, 0.5, -0.25, 1e-7, 123456.789, 0.1 + 0.2, 2.0 / 3.0, 1e15, 1e22, -0.0]
        for round in 0..<200 {
            func s() -> String { strings[Int(rng.next() % UInt64(strings.count))] }
            func d() -> Double {
                doubles[Int(rng.next() % UInt64(doubles.count))] * (round % 2 == 0 ? 1 : Double(rng.uniform()))
            }
            func maybe<T>(_ v: T) -> T? { rng.next() % 3 == 0 ? nil : v }
            let results = (0..<Int(rng.next() % 12)).map { _ in
                SimilarProduct(
                    productID: s(), similarity: d(), cosine: d(), distance: d(), category: maybe(s()),
                    inStock: maybe(rng.next() % 2 == 0), title: maybe(s()))
            }
            let answer = SimilarAnswer(
                query: maybe(s()), category: maybe(s()), results: results, candidates: 5,
                eligible: Int(rng.next() % 100), nprobe: nil, efSearch: nil,
                notes: (0..<Int(rng.next() % 3)).map { _ in s() },
                index: AnsweringIndex(
                    factory: s(), count: Int(rng.next() % 1000), modelID: "m",
                    preprocessing: "squash224", builtAt: s(), sha256: nil))
            let response = SimilarResponse(
                answer, query: SimilarQuery(k: Int(rng.next() % 50) + 1, minSimilarity: d()),
                warning: maybe(s()))
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            let expected = try Self.object(Array(try encoder.encode(response)))
            let ours = try Self.object(response.jsonBytes)
            #expect(ours == expected, "round \(round): \(String(decoding: response.jsonBytes, as: UTF8.self))")
        }
    }
}
