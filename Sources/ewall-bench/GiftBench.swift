// The gift detector's half of `make bench`:
//
//   ewall-bench gifts --labelled data/gift_labelled.tsv --rules data/gift_rules.json --count 100000
//       the rule steps (master list, zero price, words) over `count` products made by cycling the
//       labelled set's titles (each with its own id, a brand, and the labelled price), on one
//       thread; then precision and recall of the GIFT answers on the labelled set itself.
//       Prints {products, seconds, per_second, labelled, precision, recall, false_gifts, missed}.
import EwallML
import Foundation

enum GiftBench {
    static func run(_ args: [String]) throws {
        func opt(_ name: String, _ fallback: String) -> String {
            args.firstIndex(of: name).flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil } ?? fallback
        }
        let rules = try GiftRules.load(path: opt("--rules", "data/gift_rules.json"))
        let count = Int(opt("--count", "100000"))!
        let text = try String(contentsOfFile: opt("--labelled", "data/gift_labelled.tsv"), encoding: .utf8)
        let rows: [(title: String, price: Double, gift: Bool)] = text.split(separator: "\n").dropFirst().compactMap {
            let f = $0.split(separator: "\t", omittingEmptySubsequences: false)
            guard f.count >= 3, let p = Double(f[1]) else { return nil }
            return (String(f[0]), p, f[2] == "GIFT")
        }
        // A registered list of 500 ids, as a company's master list might hold.
        let detector = try GiftDetector(rules: rules, master: (0..<500).map { MasterGift(productID: "gift-\($0)") })
        let brands = ["나이키", "Nike", "설화수", "Kiehl's", "노스페이스", "COS"]
        let inputs = (0..<count).map { i in
            let r = rows[i % rows.count]
            return GiftInput(productID: "p\(i)", title: r.title, brand: brands[i % brands.count], price: r.price)
        }
        _ = detector.decide(Array(inputs.prefix(1000))) // warm-up
        let clock = ContinuousClock()
        var gifts = 0
        let took = clock.measure {
            for input in inputs where detector.decide(input).isGift { gifts += 1 }
        }
        let seconds = Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18
        var tp = 0, fp = 0, fn = 0
        for r in rows {
            let g = detector.decide(GiftInput(title: r.title, price: r.price)).isGift
            if g && r.gift { tp += 1 } else if g { fp += 1 } else if r.gift { fn += 1 }
        }
        let out: [String: Any] = [
            "products": count, "seconds": seconds, "per_second": Double(count) / seconds, "gifts": gifts,
            "labelled": rows.count, "precision": Double(tp) / Double(max(1, tp + fp)),
            "recall": Double(tp) / Double(max(1, tp + fn)), "false_gifts": fp, "missed": fn,
        ]
        print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
    }
}
