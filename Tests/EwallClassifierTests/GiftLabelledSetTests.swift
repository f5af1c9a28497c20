import EwallClassifier
import EwallTestSupport
import Foundation
import Testing

/// The rules measured on the labelled set kept in the repository (`data/gift_labelled.tsv`,
/// written by `data/make_gift_labelled.py`): precision of the GIFT answers and recall of the gifts.
@Suite("Gift labelled set")
struct GiftLabelledSetTests {
    struct Row {
        var title: String
        var price: Double
        var gift: Bool
        var note: String
    }

    static func rows() throws -> [Row] {
        let text = try String(contentsOfFile: Fixtures.path("data/gift_labelled.tsv"), encoding: .utf8)
        return try text.split(separator: "\n").dropFirst().map { line in
            let f = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            guard f.count == 4, let price = Double(f[1]), ["GIFT", "PRODUCT"].contains(f[2]) else {
                throw Fixtures.Missing(description: "malformed labelled row: \(line)")
            }
            return Row(title: f[0], price: price, gift: f[2] == "GIFT", note: f[3])
        }
    }

    @Test("precision of GIFT answers >= 0.99 and recall >= 0.95")
    func measure() throws {
        let rows = try Self.rows()
        #expect(rows.count >= 1_000)
        let detector = try GiftDetector(rules: GiftRules.load(path: Fixtures.path("data/gift_rules.json")))
        var tp = 0, fp = 0, fn = 0
        var wrong: [String] = []
        for r in rows {
            let d = detector.decide(GiftInput(title: r.title, price: r.price))
            switch (d.isGift, r.gift) {
            case (true, true): tp += 1
            case (true, false):
                fp += 1
                wrong.append("false GIFT: \(r.title) [\(r.note)] \(d.explanation)")
            case (false, true):
                fn += 1
                wrong.append("missed: \(r.title) [\(r.note)]")
            case (false, false): break
            }
        }
        let precision = Double(tp) / Double(max(1, tp + fp))
        let recall = Double(tp) / Double(max(1, tp + fn))
        print(
            "gift labelled set: \(rows.count) rows, \(tp + fn) gifts; precision \(String(format: "%.4f", precision)) "
                + "(\(fp) false), recall \(String(format: "%.4f", recall)) (\(fn) missed)")
        for w in wrong { print("  \(w)") }
        #expect(precision >= 0.99, "\(wrong)")
        #expect(recall >= 0.95, "\(wrong)")
    }
}
