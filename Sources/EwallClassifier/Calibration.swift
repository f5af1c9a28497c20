import EwallCore
import Foundation

/// A product whose category is trusted (a person set it), for calibration.
public struct LabelledProduct: Sendable {
    public var productID: String
    public var category: String
    public var vector: [Float]?
    public var title: String?
    public var brand: String?

    public init(productID: String, category: String, vector: [Float]?, title: String? = nil, brand: String? = nil) {
        self.productID = productID
        self.category = category
        self.vector = vector
        self.title = title
        self.brand = brand
    }
}

/// How the classifier does on products whose category is known, threshold by threshold.
///
/// Leave-one-out: each product is classified with the classifier's references, and when it is
/// itself a reference it is left out of them (the next reference in order takes its place), so
/// no product is ever scored against itself.
public struct CalibrationReport: Sendable, Codable {
    /// One threshold's outcome.
    public struct Row: Sendable, Codable, Hashable {
        public var threshold: Double
        /// Share of products whose best embedding score reaches the threshold.
        public var embeddingAccepted: Double
        /// Share of those whose best category is right (the embedding step's precision).
        public var embeddingAccuracy: Double?
        /// Share of the rest that a keyword rule matches.
        public var keywordCoverage: Double?
        /// Share of those matches that are right.
        public var keywordAccuracy: Double?
        /// Share of all products answered right by the whole classifier (`generic` is never right).
        public var overallAccuracy: Double
        /// Share of all products left `generic`.
        public var generic: Double

        enum CodingKeys: String, CodingKey {
            case threshold, generic
            case embeddingAccepted = "embedding_accepted", embeddingAccuracy = "embedding_accuracy"
            case keywordCoverage = "keyword_coverage", keywordAccuracy = "keyword_accuracy"
            case overallAccuracy = "overall_accuracy"
        }
    }

    /// Rows: the true category; columns: the classifier's answer (with `generic` last).
    public struct Confusion: Sendable, Codable, Hashable {
        public var threshold: Double
        public var categories: [String]
        public var columns: [String]
        public var counts: [[Int]]
    }

    public var products: Int
    /// Products with no vector under the model (scored by keywords only).
    public var withoutVector: Int
    public var method: ScoringMethod
    public var maxReferences: Int
    public var rulesVersion: String?
    public var rows: [Row]
    public var confusion: Confusion
    public var targetPrecision: Double
    /// The lowest threshold (in steps of 0.01) from which the embedding step's precision stays
    /// at or above the target; `nil` when none does.
    public var thresholdForTarget: Double?
    /// The share of products the embedding step accepts at that threshold.
    public var acceptedAtTarget: Double?
    public var seconds: Double

    enum CodingKeys: String, CodingKey {
        case products, method, rows, confusion, seconds
        case withoutVector = "without_vector", maxReferences = "max_references", rulesVersion = "rules_version"
        case targetPrecision = "target_precision", thresholdForTarget = "threshold_for_target"
        case acceptedAtTarget = "accepted_at_target"
    }
}

public enum Calibration {
    /// The thresholds of the table: 0.10 to 0.90 in steps of 0.05.
    public static let tableThresholds: [Double] = (2...18).map { Double($0) * 0.05 }

    /// Classifies every labelled product once (leave-one-out), then sweeps the thresholds.
    /// `classifier`'s own threshold is the one the confusion table is drawn at.
    public static func run(
        _ classifier: CategoryClassifier, products: [LabelledProduct],
        thresholds: [Double] = tableThresholds, targetPrecision: Double = 0.9
    ) throws -> CalibrationReport {
        let started = ContinuousClock.now
        let inputs = products.map {
            ClassifierInput(productID: $0.productID, vector: $0.vector, title: $0.title, brand: $0.brand)
        }
        let scores = try classifier.embeddingScores(inputs)
        let best: [CategoryScore?] = scores.map { (try? $0.get())?.first }
        let keyword: [String?] = inputs.map { i in
            i.title.flatMap { classifier.rules?.match(title: $0, brand: i.brand)?.category }
        }
        let truth = products.map(\.category)

        func outcome(_ t: Double) -> (row: CalibrationReport.Row, answers: [String]) {
            var accepted = 0, accRight = 0, rest = 0, kwMatched = 0, kwRight = 0
            var answers: [String] = []
            answers.reserveCapacity(products.count)
            for i in products.indices {
                if let b = best[i], b.score >= t {
                    accepted += 1
                    if b.category == truth[i] { accRight += 1 }
                    answers.append(b.category)
                } else {
                    rest += 1
                    if let k = keyword[i] {
                        kwMatched += 1
                        if k == truth[i] { kwRight += 1 }
                        answers.append(k)
                    } else {
                        answers.append(Product.genericCategory)
                    }
                }
            }
            let n = Double(max(products.count, 1))
            let row = CalibrationReport.Row(
                threshold: (t * 100).rounded() / 100, embeddingAccepted: Double(accepted) / n,
                embeddingAccuracy: accepted > 0 ? Double(accRight) / Double(accepted) : nil,
                keywordCoverage: rest > 0 ? Double(kwMatched) / Double(rest) : nil,
                keywordAccuracy: kwMatched > 0 ? Double(kwRight) / Double(kwMatched) : nil,
                overallAccuracy: Double(accRight + kwRight) / n,
                generic: Double(rest - kwMatched) / n)
            return (row, answers)
        }

        let rows = thresholds.map { outcome($0).row }

        // The target: the lowest threshold from which precision never drops below it.
        var thresholdForTarget: Double?
        var acceptedAtTarget: Double?
        for step in stride(from: 100, through: 0, by: -1) {
            let r = outcome(Double(step) / 100).row
            guard let p = r.embeddingAccuracy else { continue }
            if p >= targetPrecision {
                thresholdForTarget = r.threshold
                acceptedAtTarget = r.embeddingAccepted
            } else {
                break
            }
        }

        let t = classifier.configuration.threshold
        let answers = outcome(t).answers
        let categories = Array(Set(truth)).sorted()
        let columns =
            Array(Set(answers).union(categories).subtracting([Product.genericCategory])).sorted() + [
                Product.genericCategory
            ]
        let col = Dictionary(uniqueKeysWithValues: columns.enumerated().map { ($1, $0) })
        let rowOf = Dictionary(uniqueKeysWithValues: categories.enumerated().map { ($1, $0) })
        var counts = Array(repeating: Array(repeating: 0, count: columns.count), count: categories.count)
        for i in products.indices { counts[rowOf[truth[i]]!][col[answers[i]]!] += 1 }

        let elapsed = ContinuousClock.now - started
        return CalibrationReport(
            products: products.count, withoutVector: products.filter { $0.vector == nil }.count,
            method: classifier.configuration.method, maxReferences: classifier.configuration.maxReferences,
            rulesVersion: classifier.rules?.version, rows: rows,
            confusion: .init(threshold: t, categories: categories, columns: columns, counts: counts),
            targetPrecision: targetPrecision, thresholdForTarget: thresholdForTarget,
            acceptedAtTarget: acceptedAtTarget,
            seconds: elapsed.inSeconds)
    }
}
