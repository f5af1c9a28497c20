import Crypto
import EwallCore
import Foundation

/// How the embedding step scores a category.
public enum ScoringMethod: String, Sendable, Codable, CaseIterable {
    /// The platform's: the mean cosine similarity to the category's references (up to 10).
    case meanRefs = "mean-refs"
    /// Cosine similarity to the normalised mean of the category's references.
    case centroid
    /// Similarity-weighted vote of the k most similar references of all categories: a
    /// category's score is the sum of its voters' cosines divided by k.
    case knn
}

/// The classifier's settings. The defaults are the platform's.
public struct ClassifierConfiguration: Sendable, Hashable {
    public var method: ScoringMethod
    /// The embedding step answers when the best category's score is at least this.
    public var threshold: Double
    /// References per category (the platform: 10).
    public var maxReferences: Int
    /// Categories with fewer references than this are reported as thin (still used).
    public var minReferences: Int
    /// Neighbours for ``ScoringMethod/knn``.
    public var k: Int

    public init(
        method: ScoringMethod = .meanRefs, threshold: Double = 0.35, maxReferences: Int = 10,
        minReferences: Int = 3, k: Int = 10
    ) {
        self.method = method
        self.threshold = threshold
        self.maxReferences = maxReferences
        self.minReferences = minReferences
        self.k = k
    }
}

/// One product to classify: its vector (if it has one), title and brand.
public struct ClassifierInput: Sendable {
    /// When the product is itself a reference, it is left out of its own category's references.
    public var productID: String?
    public var vector: [Float]?
    public var title: String?
    public var brand: String?
    /// The price, for the gift detector's zero-price step.
    public var price: Double?

    public init(
        productID: String? = nil, vector: [Float]?, title: String? = nil, brand: String? = nil, price: Double? = nil
    ) {
        self.productID = productID
        self.vector = vector
        self.title = title
        self.brand = brand
        self.price = price
    }
}

/// A category's embedding score.
public struct CategoryScore: Sendable, Codable, Hashable {
    public var category: String
    public var score: Double
    /// References it was scored against (for knn: the voters among the k nearest).
    public var references: Int
}

/// Which step decided.
public enum DecidedBy: String, Sendable, Codable {
    /// The best category's embedding score reached the threshold.
    case embedding
    /// A keyword rule matched the title.
    case keyword
    /// Neither: the answer is `generic`.
    case none
    /// The gift detector (or a stored gift flag) found a gift or sample: the answer is `gift`,
    /// never a merchandise category.
    case gift
}

/// An answer and how it was reached.
public struct Classification: Sendable, Codable, Hashable {
    public var productID: String?
    public var category: String
    public var decidedBy: DecidedBy
    public var method: ScoringMethod
    public var threshold: Double
    /// The best category by embedding score (whether or not it reached the threshold).
    public var best: CategoryScore?
    public var runnerUp: CategoryScore?
    /// best - runner-up.
    public var margin: Double?
    /// References compared with, over all categories.
    public var referencesUsed: Int
    /// Why the embedding step did not run (no vector, no references).
    public var embeddingSkipped: String?
    /// The keyword match, when the keyword step ran and found one.
    public var keyword: KeywordMatch?
    /// The rules file's version, when the keyword step ran.
    public var rulesVersion: String?
    /// Why the product is a gift, when it is one (the category is then `gift`).
    public var gift: GiftReason?

    enum CodingKeys: String, CodingKey {
        case productID = "product_id", category, decidedBy = "decided_by", method, threshold, best
        case runnerUp = "runner_up", margin, referencesUsed = "references_used"
        case embeddingSkipped = "embedding_skipped", keyword, rulesVersion = "rules_version", gift
    }

    /// One line for people: `down by embedding (mean-refs 0.612 >= 0.35; runner-up coat 0.410, margin 0.202, 20 refs)`.
    public var explanation: String {
        var s = "\(category) by \(decidedBy.rawValue)"
        if decidedBy == .gift, let g = gift { return s + " (\(g.explanation))" }
        let scores: String? = best.map { b in
            var t = "\(method.rawValue) \(b.category) \(fmt(b.score))"
            t += decidedBy == .embedding ? " >= \(fmt(threshold))" : " < \(fmt(threshold))"
            if let r = runnerUp { t += "; runner-up \(r.category) \(fmt(r.score)), margin \(fmt(margin ?? 0))" }
            return t + ", \(referencesUsed) refs"
        }
        switch decidedBy {
        case .embedding: s += " (\(scores ?? ""))"
        case .gift: break
        case .keyword, .none:
            var parts: [String] = []
            if let k = keyword {
                parts.append("keyword '\(k.term)' in '\(k.matchedText)' (rule \(k.category), priority \(k.priority))")
            }
            if let scores { parts.append(scores) }
            if let e = embeddingSkipped { parts.append(e) }
            if decidedBy == .none && keyword == nil { parts.append("no keyword rule matched") }
            s += " (" + parts.joined(separator: "; ") + ")"
        }
        return s
    }

    private func fmt(_ x: Double) -> String { String(format: "%.3f", x) }
}

/// The hybrid classifier: embedding scores against reference products first, keyword rules on
/// the title second, `generic` otherwise.
///
/// Scoring is one BLAS matrix product of a batch of products against every reference
/// (``ReferenceSet``); the per-category means, centroid cosines or votes are read off it.
/// Immutable after construction: safe to share between tasks.
public final class CategoryClassifier: Sendable {
    public let references: ReferenceSet
    public let rules: KeywordRules?
    /// The gift detector, run before the category steps: a gift is answered `gift`.
    public let gifts: GiftDetector?
    /// Products the store flags as gifts (`gift_flags`): answered `gift` too.
    public let giftIDs: Set<String>
    public let configuration: ClassifierConfiguration
    /// The model key of the references' vectors, when known.
    public let modelKey: ModelKey?
    /// Digest of everything an answer depends on besides the product: the classifier's
    /// version, method and parameters, the model, the rules file's bytes and the references.
    /// Stored with applied answers; a different stamp means they are stale.
    public let stamp: String
    /// Centroid norms per category without exclusion.
    private let centroidNorms: [Float]

    /// Products scored per BLAS call.
    static let batchSize = 2048

    public init(
        references: ReferenceSet, rules: KeywordRules?, configuration: ClassifierConfiguration = .init(),
        modelKey: ModelKey? = nil, gifts: GiftDetector? = nil, giftIDs: Set<String> = []
    ) throws {
        guard configuration.maxReferences == references.maxReferences else {
            throw ClassifierError(
                .argument,
                "the references were chosen for \(references.maxReferences) per category, "
                    + "the configuration asks for \(configuration.maxReferences)")
        }
        guard configuration.k >= 1 else { throw ClassifierError(.argument, "k must be at least 1") }
        self.references = references
        self.rules = rules
        self.gifts = gifts
        self.giftIDs = giftIDs
        self.configuration = configuration
        self.modelKey = modelKey
        var h = SHA256()
        let c = configuration
        h.update(data: Data("ewall-classifier/1 \(c.method.rawValue) \(c.threshold) \(c.maxReferences) \(c.k)\n".utf8))
        h.update(data: Data("model \(modelKey?.modelID ?? "-") \(modelKey?.preprocessing ?? "-")\n".utf8))
        h.update(data: Data("rules \(rules?.sha256 ?? "none")\nrefs \(references.fingerprint)\n".utf8))
        if gifts != nil || !giftIDs.isEmpty {
            h.update(data: Data("gifts \(gifts?.rules.sha256 ?? "none") \(gifts?.masterIDs.sorted() ?? [])\n".utf8))
            for id in giftIDs.sorted() { h.update(data: Data("\(id)\n".utf8)) }
        }
        self.stamp = h.finalize().map { String(format: "%02x", $0) }.joined()
        self.centroidNorms = references.categories.indices.map {
            Self.norm(references, references.rows(of: $0, excludingRow: nil))
        }
    }

    /// Categories with fewer references than ``ClassifierConfiguration/minReferences``.
    public var thinCategories: [(category: String, references: Int)] {
        references.categories.filter { $0.available < configuration.minReferences }.map { ($0.name, $0.available) }
    }

    /// Classifies one product.
    public func classify(_ input: ClassifierInput) throws -> Classification {
        try classify([input])[0]
    }

    /// Classifies products, scoring them against the references a batch at a time.
    public func classify(_ inputs: [ClassifierInput]) throws -> [Classification] {
        var top: [(best: CategoryScore, runnerUp: CategoryScore?, used: Int)?] = Array(
            repeating: nil, count: inputs.count)
        let names = references.categories.map(\.name)
        try scoreAll(inputs) { i, scores, counts in
            // Best and runner-up in one scan; categories are in name order, so a tie keeps the first name.
            var b = -1, r = -1
            var used = 0
            for c in 0..<scores.count where counts[c] > 0 {
                used += Int(counts[c])
                if b < 0 || scores[c] > scores[b] {
                    r = b
                    b = c
                } else if r < 0 || scores[c] > scores[r] {
                    r = c
                }
            }
            guard b >= 0 else { return }
            top[i] = (
                CategoryScore(category: names[b], score: Double(scores[b]), references: Int(counts[b])),
                r >= 0 ? CategoryScore(category: names[r], score: Double(scores[r]), references: Int(counts[r])) : nil,
                configuration.method == .knn ? min(configuration.k, used) : used
            )
        }
        return inputs.indices.map { i in
            guard inputs[i].vector.map({ !$0.isEmpty }) ?? false else {
                return decide(inputs[i], top: nil, skipped: .noVector)
            }
            guard let t = top[i] else { return decide(inputs[i], top: nil, skipped: .noReferences) }
            return decide(inputs[i], top: t, skipped: nil)
        }
    }

    /// The embedding step alone: every category's score for each product, best first
    /// (ties by category name), or why there is none. What calibration sweeps thresholds over.
    public func embeddingScores(_ inputs: [ClassifierInput]) throws -> [Result<[CategoryScore], SkipReason>] {
        var out: [Result<[CategoryScore], SkipReason>] = inputs.map {
            $0.vector.map { $0.isEmpty ? .failure(.noVector) : .failure(.noReferences) } ?? .failure(.noVector)
        }
        let names = references.categories.map(\.name)
        try scoreAll(inputs) { i, scores, counts in
            var list: [CategoryScore] = []
            for c in 0..<scores.count where counts[c] > 0 {
                list.append(CategoryScore(category: names[c], score: Double(scores[c]), references: Int(counts[c])))
            }
            if !list.isEmpty {
                out[i] = .success(
                    list.sorted { $0.score != $1.score ? $0.score > $1.score : $0.category < $1.category })
            }
        }
        return out
    }

    /// Why a product got no embedding scores.
    public enum SkipReason: String, Error, Sendable {
        case noVector = "no vector under this model"
        case noReferences = "no reference products"
    }

    /// Scores every product that has a vector against every category, a batch at a time: one
    /// sgemm of the raw batch against the unit references, each row then divided by the
    /// product's norm (so it holds cosines), then reduced per category. `visit` gets, for each
    /// such product, one score per category and how many references it used (0: none).
    private func scoreAll(
        _ inputs: [ClassifierInput],
        visit: (Int, UnsafeMutableBufferPointer<Float>, UnsafeMutableBufferPointer<Int32>) -> Void
    ) throws {
        let refs = references
        let d = refs.dimension, n = refs.count, categories = refs.categories.count
        if n == 0 { return }
        let withVector = inputs.indices.filter { inputs[$0].vector.map { !$0.isEmpty } ?? false }
        for i in withVector where inputs[i].vector!.count != d {
            throw ClassifierError(
                .mismatch,
                "product \(inputs[i].productID ?? "#\(i)") has a \(inputs[i].vector!.count)-d vector; "
                    + "the references are \(d)-d")
        }
        var batch = [Float](repeating: 0, count: Self.batchSize * d)
        var sims = [Float](repeating: 0, count: Self.batchSize * n)
        var scores = [Float](repeating: 0, count: categories)
        var counts = [Int32](repeating: 0, count: categories)
        var pool: [(sim: Float, cat: Int)] = []
        var start = 0
        while start < withVector.count {
            let chunk = withVector[start..<min(start + Self.batchSize, withVector.count)]
            var norms: [Float] = []
            batch.withUnsafeMutableBufferPointer { b in
                for (r, i) in chunk.enumerated() {
                    inputs[i].vector!.withUnsafeBufferPointer { v in
                        (b.baseAddress! + r * d).update(from: v.baseAddress!, count: d)
                        norms.append(Matrix.norm(v))
                    }
                }
            }
            Matrix.productTransposed(batch, rows: chunk.count, refs.matrix, rows: n, dimension: d, into: &sims)
            try sims.withUnsafeMutableBufferPointer { s in
                try scores.withUnsafeMutableBufferPointer { sc in
                    try counts.withUnsafeMutableBufferPointer { ct in
                        for (r, i) in chunk.enumerated() {
                            try Task.checkCancellation()
                            let row = UnsafeMutableBufferPointer(rebasing: s[(r * n)..<((r + 1) * n)])
                            let inverse: Float = norms[r] > 0 ? 1 / norms[r] : 0
                            for j in 0..<n { row[j] *= inverse }
                            let selfRow = inputs[i].productID.flatMap { refs.rowOf[$0] }
                            reduce(row, selfRow: selfRow, scores: sc, counts: ct, pool: &pool)
                            visit(i, sc, ct)
                        }
                    }
                }
            }
            start += chunk.count
        }
    }

    /// One product's cosines to every reference -> one score per category.
    private func reduce(
        _ row: UnsafeMutableBufferPointer<Float>, selfRow: Int?, scores: UnsafeMutableBufferPointer<Float>,
        counts: UnsafeMutableBufferPointer<Int32>, pool: inout [(sim: Float, cat: Int)]
    ) {
        let refs = references
        let m = refs.maxReferences
        switch configuration.method {
        case .meanRefs, .centroid:
            for c in refs.categories.indices {
                let all = refs.categories[c].rows
                guard let first = all.first else {
                    counts[c] = 0
                    continue
                }
                // A category's rows are contiguous, in choice order.
                // The first `maxReferences`; when the product is one of them, the spare replaces it.
                let kept = min(m, all.count)
                let excluded = selfRow.map { $0 >= first && $0 < first + kept } ?? false
                var sum: Float = 0
                var used = kept
                if excluded {
                    for r in first..<(first + min(m + 1, all.count)) where r != selfRow { sum += row[r] }
                    used = min(m + 1, all.count) - 1
                } else {
                    for r in first..<(first + kept) { sum += row[r] }
                }
                counts[c] = Int32(used)
                if used == 0 { continue }
                if configuration.method == .meanRefs {
                    scores[c] = sum / Float(used)
                } else {
                    let norm = excluded ? Self.norm(refs, refs.rows(of: c, excludingRow: selfRow)) : centroidNorms[c]
                    scores[c] = norm > 0 ? sum / norm : 0
                }
            }
        case .knn:
            pool.removeAll(keepingCapacity: true)
            for c in refs.categories.indices {
                scores[c] = 0
                counts[c] = 0
                for r in refs.rows(of: c, excludingRow: selfRow) { pool.append((row[r], c)) }
            }
            pool.sort { $0.sim != $1.sim ? $0.sim > $1.sim : $0.cat < $1.cat }
            let k = Float(configuration.k)
            for p in pool.prefix(configuration.k) {
                scores[p.cat] += p.sim / k
                counts[p.cat] += 1
            }
        }
    }

    /// |sum of the rows| from the Gram matrix.
    private static func norm(_ refs: ReferenceSet, _ rows: ArraySlice<Int>) -> Float {
        var s: Float = 0
        for a in rows { for b in rows { s += refs.gram[a * refs.count + b] } }
        return max(s, 0).squareRoot()
    }

    /// Steps 2 to 4: the threshold, then the keywords, then `generic`.
    func decide(
        _ input: ClassifierInput, top: (best: CategoryScore, runnerUp: CategoryScore?, used: Int)?,
        skipped: SkipReason?
    ) -> Classification {
        var c = Classification(
            productID: input.productID, category: Product.genericCategory, decidedBy: .none,
            method: configuration.method, threshold: configuration.threshold, best: nil, runnerUp: nil,
            margin: nil, referencesUsed: 0, embeddingSkipped: skipped?.rawValue, keyword: nil, rulesVersion: nil)
        if let g = giftReason(input) {
            c.category = Self.giftCategory
            c.decidedBy = .gift
            c.gift = g
            return c
        }
        if let top {
            c.best = top.best
            c.runnerUp = top.runnerUp
            c.margin = top.runnerUp.map { top.best.score - $0.score }
            c.referencesUsed = top.used
            if top.best.score >= configuration.threshold {
                c.category = top.best.category
                c.decidedBy = .embedding
                return c
            }
        }
        if let rules {
            c.rulesVersion = rules.version
            if let title = input.title, let m = rules.match(title: title, brand: input.brand) {
                c.keyword = m
                c.category = m.category
                c.decidedBy = .keyword
            }
        }
        return c
    }

    /// The answer for gifts and samples: never a merchandise category.
    public static let giftCategory = "gift"

    /// Why a product is a gift (a stored flag, or the detector), or nil.
    func giftReason(_ input: ClassifierInput) -> GiftReason? {
        if let id = input.productID, giftIDs.contains(id) {
            return GiftReason(
                decidedBy: "stored_flag", giftType: nil, classificationReason: "사은품 (저장된 분류)",
                explanation: "flagged as a gift in the store (gift_flags)")
        }
        guard let gifts else { return nil }
        let d = gifts.decide(
            GiftInput(
                productID: input.productID, title: input.title, brand: input.brand, price: input.price,
                vector: input.vector))
        guard d.isGift else { return nil }
        return GiftReason(
            decidedBy: d.decidedBy.rawValue, giftType: d.giftType, classificationReason: d.classificationReason,
            explanation: d.explanation)
    }
}

/// Why the classifier answered `gift`.
public struct GiftReason: Sendable, Codable, Hashable {
    /// The gift detector's step (`master`, `zero_price`, `keyword`, `image`), or `stored_flag`.
    public var decidedBy: String
    /// The platform's `gift_type`, when the detector decided.
    public var giftType: String?
    /// The platform's `classification_reason`, in Korean.
    public var classificationReason: String
    public var explanation: String

    enum CodingKeys: String, CodingKey {
        case decidedBy = "decided_by", giftType = "gift_type", classificationReason = "classification_reason"
        case explanation
    }
}
