import EwallClassifier
import EwallCore
import EwallTestSupport
import Foundation
import Testing

@Suite("Calibration")
struct CalibrationTests {
    /// Ten products whose scores are set by construction: each is `s * e_category + sqrt(1-s^2) * e_own`
    /// with `e_own` orthogonal to everything else, so its cosine to its scored category's
    /// references (exactly `e_category`) is `s` and to the others 0.
    static func knownCase() throws -> (CategoryClassifier, [LabelledProduct]) {
        let d = 16
        func basis(_ i: Int) -> [Float] { (0..<d).map { $0 == i ? 1 : 0 } }
        let axis = ["down": 0, "coat": 1, "jeans": 2]
        var refs: [LabelledVector] = []
        for (c, i) in axis {
            for j in 0..<2 { refs.append(LabelledVector(productID: "ref-\(c)-\(j)", category: c, vector: basis(i))) }
        }
        // (truth, scored category, score, title)
        let rows: [(String, String, Float, String?)] = [
            ("down", "down", 0.88, nil), ("down", "down", 0.62, nil), ("down", "down", 0.31, "경량 패딩"),
            ("coat", "coat", 0.78, nil), ("coat", "down", 0.715, "싱글 코트"), ("coat", "coat", 0.22, "울 코트"),
            ("jeans", "jeans", 0.52, nil), ("jeans", "jeans", 0.17, "데님 자켓"), ("jeans", "coat", 0.27, nil),
            ("jeans", "jeans", 0.42, nil),
        ]
        let products = rows.enumerated().map { i, r in
            let own = basis(3 + i)
            let vector = (0..<d).map { basis(axis[r.1]!)[$0] * r.2 + own[$0] * (1 - r.2 * r.2).squareRoot() }
            return LabelledProduct(productID: "p\(i)", category: r.0, vector: vector, title: r.3)
        }
        let classifier = try CategoryClassifier(
            references: ReferenceSet(candidates: refs), rules: KeywordRulesTests.rules)
        return (classifier, products)
    }

    @Test("numbers on a case whose answer is known by hand")
    func knownAnswer() throws {
        let (classifier, products) = try Self.knownCase()
        let report = try Calibration.run(classifier, products: products, targetPrecision: 0.9)
        #expect(report.products == 10)
        #expect(
            report.rows.map(\.threshold) == [
                0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9,
            ])
        func row(_ t: Double) -> CalibrationReport.Row { report.rows.first { abs($0.threshold - t) < 1e-9 }! }

        // 0.35: accepted .88 .62 .78 .715(wrong) .52 .42; the rest: .31 패딩 (right), .22 코트 (right),
        // .17 데님자켓 -> jacket (wrong), .27 no keyword.
        let r35 = row(0.35)
        #expect(abs(r35.embeddingAccepted - 0.6) < 1e-12)
        #expect(abs(r35.embeddingAccuracy! - 5.0 / 6) < 1e-12)
        #expect(abs(r35.keywordCoverage! - 0.75) < 1e-12)
        #expect(abs(r35.keywordAccuracy! - 2.0 / 3) < 1e-12)
        #expect(abs(r35.overallAccuracy - 0.7) < 1e-12)
        #expect(abs(r35.generic - 0.1) < 1e-12)

        // 0.10: everything accepted, two wrong.
        let r10 = row(0.1)
        #expect(r10.embeddingAccepted == 1 && abs(r10.embeddingAccuracy! - 0.8) < 1e-12 && r10.keywordCoverage == nil)

        // 0.90: nothing accepted; keywords match 4 of 10, 3 rightly.
        let r90 = row(0.9)
        #expect(r90.embeddingAccepted == 0 && r90.embeddingAccuracy == nil)
        #expect(abs(r90.keywordCoverage! - 0.4) < 1e-12 && abs(r90.keywordAccuracy! - 0.75) < 1e-12)
        #expect(abs(r90.overallAccuracy - 0.3) < 1e-12 && abs(r90.generic - 0.6) < 1e-12)

        // Precision reaches 0.9 only above the wrong 0.715: from 0.72 up (accepting .88 and .78).
        #expect(report.thresholdForTarget == 0.72)
        #expect(report.acceptedAtTarget == 0.2)

        // Confusion at the classifier's 0.35.
        let conf = report.confusion
        #expect(conf.categories == ["coat", "down", "jeans"])
        #expect(conf.columns == ["coat", "down", "jacket", "jeans", "generic"])
        #expect(conf.counts == [[2, 1, 0, 0, 0], [0, 3, 0, 0, 0], [0, 0, 1, 2, 1]])
    }

    @Test("leave-one-out: a labelled product is never scored against itself")
    func leaveOneOut() throws {
        let (_, products) = try Self.knownCase()
        // Make every product a reference too: with itself excluded, its own category's
        // references are the other products, so its scores are not 1.
        let refs = products.map { LabelledVector(productID: $0.productID, category: $0.category, vector: $0.vector!) }
        let classifier = try CategoryClassifier(references: ReferenceSet(candidates: refs), rules: nil)
        let scores = try classifier.embeddingScores(
            products.map { ClassifierInput(productID: $0.productID, vector: $0.vector) })
        for s in scores { #expect(try s.get().allSatisfy { $0.score < 0.9 }) }
        let report = try Calibration.run(classifier, products: products)
        #expect(report.rows[0].embeddingAccuracy! < 1)
        // Scored anonymously (no id), each product finds itself among its category's
        // references and scores higher there: the difference is the self-match left out.
        let cheating = try classifier.embeddingScores(
            products.map { ClassifierInput(productID: nil, vector: $0.vector) })
        for i in products.indices {
            let own = { (r: Result<[CategoryScore], CategoryClassifier.SkipReason>) in
                try r.get().first { $0.category == products[i].category }?.score ?? 0
            }
            #expect(try own(cheating[i]) > own(scores[i]) + 0.1)
        }
    }
}
