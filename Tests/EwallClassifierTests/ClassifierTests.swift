import EwallClassifier
import EwallCore
import EwallTestSupport
import Foundation
import Testing

/// Seeded labelled catalogue: each category a direction in space, products at varying
/// distance from it (so scores straddle the threshold), titles with and without keywords.
struct Catalogue {
    static let categories = ["bag", "coat", "down", "fleece", "jeans", "shoes"]
    static let titleWords = [
        "bag": "토트백", "coat": "울 코트", "down": "구스다운 패딩", "fleece": "후리스", "jeans": "청바지", "shoes": "스니커즈",
    ]

    var labelled: [LabelledVector] = []
    var products: [ClassifierInput] = []
    var truth: [String] = []

    init(dimension d: Int = 128, labelledPerCategory: Int = 14, products n: Int = 400, seed: UInt64 = 7) {
        var rng = TestRNG(seed: seed)
        let centres = Self.categories.map { _ in (0..<d).map { _ in rng.gaussian() } }
        func around(_ c: Int, strength: Float) -> [Float] {
            (0..<d).map { centres[c][$0] * strength + rng.gaussian() }
        }
        for (c, name) in Self.categories.enumerated() {
            for j in 0..<labelledPerCategory {
                labelled.append(
                    LabelledVector(productID: "\(name)-ref-\(j)", category: name, vector: around(c, strength: 1.2)))
            }
        }
        for i in 0..<n {
            let c = Int(rng.next() % UInt64(Self.categories.count))
            let strength = Float(i % 10) * 0.12 // 0 (noise) to 1.08 (clear)
            let titled = i % 3
            let title =
                titled == 0
                ? "상품 \(i) \(Self.titleWords[Self.categories[c]]!)"
                : titled == 1 ? "product \(i) \(Self.titleWords[Self.categories[(c + 1) % 6]]!)" : "product \(i)"
            products.append(ClassifierInput(productID: "p-\(i)", vector: around(c, strength: strength), title: title))
            truth.append(Self.categories[c])
        }
        // Some references are classified too: they must never be scored against themselves.
        for r in labelled.prefix(20) {
            products.append(ClassifierInput(productID: r.productID, vector: r.vector, title: nil))
            truth.append(r.category)
        }
    }
}

/// The platform's four steps written out plainly, in Double, one dot product at a time.
enum PlatformReference {
    static func references(
        _ labelled: [LabelledVector], category: String, excluding id: String?, max: Int
    ) -> [LabelledVector] {
        labelled.filter { $0.category == category && $0.productID != id }
            .sorted { (FNV1a64.hash($0.productID), $0.productID) < (FNV1a64.hash($1.productID), $1.productID) }
            .prefix(max).map { $0 }
    }

    static func cosine(_ a: [Float], _ b: [Float]) -> Double {
        var dot = 0.0, na = 0.0, nb = 0.0
        for i in a.indices {
            dot += Double(a[i]) * Double(b[i])
            na += Double(a[i] * a[i])
            nb += Double(b[i] * b[i])
        }
        return dot / (na.squareRoot() * nb.squareRoot())
    }

    static func meanRefScores(_ p: ClassifierInput, _ labelled: [LabelledVector]) -> [(String, Double)] {
        Set(labelled.map(\.category)).sorted().compactMap { c in
            let refs = references(labelled, category: c, excluding: p.productID, max: 10)
            if refs.isEmpty { return nil }
            return (c, refs.map { cosine(p.vector!, $0.vector) }.reduce(0, +) / Double(refs.count))
        }
    }

    static func classify(
        _ p: ClassifierInput, _ labelled: [LabelledVector], rules: KeywordRules,
        threshold: Double = 0.35
    ) -> (category: String, by: DecidedBy, score: Double) {
        let scores = meanRefScores(p, labelled) // 1
        let best = scores.max { $0.1 != $1.1 ? $0.1 < $1.1 : $0.0 > $1.0 }!
        if best.1 >= threshold { return (best.0, .embedding, best.1) } // 2
        if let t = p.title, let m = rules.match(title: t) { return (m.category, .keyword, best.1) } // 3
        return ("generic", .none, best.1) // 4
    }
}

/// The same answer, up to float rounding (BLAS blocks a batch of one differently).
func sameAnswer(_ a: Classification, _ b: Classification) -> Bool {
    a.category == b.category && a.decidedBy == b.decidedBy && a.best?.category == b.best?.category
        && a.runnerUp?.category == b.runnerUp?.category && abs((a.best?.score ?? 0) - (b.best?.score ?? 0)) < 1e-5
        && a.keyword == b.keyword && a.referencesUsed == b.referencesUsed
}

@Suite("Category classifier")
struct ClassifierTests {
    static let rules = KeywordRulesTests.rules

    @Test("the default method agrees exactly with a plain re-implementation of the platform's four steps")
    func agreesWithPlatform() throws {
        let cat = Catalogue()
        let classifier = try CategoryClassifier(references: ReferenceSet(candidates: cat.labelled), rules: Self.rules)
        let ours = try classifier.classify(cat.products)
        var decided: [DecidedBy: Int] = [:]
        for (i, p) in cat.products.enumerated() {
            let ref = PlatformReference.classify(p, cat.labelled, rules: Self.rules)
            #expect(abs(ref.score - 0.35) > 1e-4, "a score this close to the threshold makes the comparison fragile")
            #expect(ours[i].category == ref.category, "\(p.productID!)")
            #expect(ours[i].decidedBy == ref.by, "\(p.productID!)")
            #expect(abs(ours[i].best!.score - ref.score) < 1e-5, "\(p.productID!)")
            decided[ours[i].decidedBy, default: 0] += 1
        }
        // All four steps are exercised.
        #expect(decided[.embedding, default: 0] > 50)
        #expect(decided[.keyword, default: 0] > 20)
        #expect(decided[.none, default: 0] > 10)
        // And one product at a time gives the same as the batch.
        for i in [0, 7, 399, 405] { #expect(sameAnswer(try classifier.classify(cat.products[i]), ours[i])) }
    }

    @Test("a product is never its own reference; choice is deterministic")
    func leaveOneOut() throws {
        let cat = Catalogue()
        let refs = try ReferenceSet(candidates: cat.labelled)
        let again = try ReferenceSet(candidates: cat.labelled.reversed())
        #expect(refs.fingerprint == again.fingerprint)
        let chosen = refs.referenceIDs(category: "coat")
        #expect(chosen.count == 10)
        let me = chosen[3]
        let without = refs.referenceIDs(category: "coat", excluding: me)
        #expect(without.count == 10)
        #expect(!without.contains(me))
        #expect(Array(without.prefix(3)) == Array(chosen.prefix(3)))
        #expect(refs.referenceIDs(category: "coat", excluding: "p-1") == chosen)
        // A category with one reference has none for that reference itself.
        let lone = try ReferenceSet(candidates: [
            cat.labelled[0], LabelledVector(productID: "solo", category: "hat", vector: cat.labelled[1].vector),
        ])
        let c = try CategoryClassifier(references: lone, rules: nil)
        let answer = try c.classify(ClassifierInput(productID: "solo", vector: cat.labelled[1].vector))
        #expect(answer.best?.category == "bag")
        #expect(answer.runnerUp == nil)
        #expect(c.thinCategories.map(\.category) == ["bag", "hat"])
    }

    @Test("centroid and knn match their definitions")
    func otherMethods() throws {
        let cat = Catalogue(products: 60)
        let refs = try ReferenceSet(candidates: cat.labelled)
        let centroid = try CategoryClassifier(references: refs, rules: nil, configuration: .init(method: .centroid))
        let knn = try CategoryClassifier(references: refs, rules: nil, configuration: .init(method: .knn, k: 7))
        for p in cat.products {
            // centroid: cosine to the sum of the references
            let c = try centroid.classify(p)
            for s in [c.best!, c.runnerUp!] {
                let rs = PlatformReference.references(
                    cat.labelled, category: s.category, excluding: p.productID, max: 10)
                var sum = [Float](repeating: 0, count: p.vector!.count)
                for r in rs {
                    let n = Float(VectorMath.norm(r.vector))
                    for j in sum.indices { sum[j] += r.vector[j] / n }
                }
                #expect(abs(PlatformReference.cosine(p.vector!, sum) - s.score) < 1e-5)
            }
            // knn: the 7 nearest references of all categories vote with their cosines
            let all = Catalogue.categories.flatMap {
                PlatformReference.references(cat.labelled, category: $0, excluding: p.productID, max: 10)
            }
            let top = all.map { ($0.category, PlatformReference.cosine(p.vector!, $0.vector)) }.sorted { $0.1 > $1.1 }
                .prefix(7)
            var votes: [String: Double] = [:]
            for (category, sim) in top { votes[category, default: 0] += sim / 7 }
            let best = votes.max { $0.value < $1.value }!
            let k = try knn.classify(p)
            #expect(k.best!.category == best.key)
            #expect(abs(k.best!.score - best.value) < 1e-5)
            #expect(k.referencesUsed == 7)
        }
    }

    @Test("explanations: scores, runner-up, margin, references, keyword")
    func explanations() throws {
        let cat = Catalogue(products: 30)
        let c = try CategoryClassifier(
            references: ReferenceSet(candidates: cat.labelled), rules: Self.rules,
            configuration: .init(threshold: 0.99))
        let a = try c.classify(ClassifierInput(productID: "x", vector: cat.labelled[0].vector, title: "MLB 롱패딩"))
        #expect(a.decidedBy == .keyword)
        #expect(a.category == "down")
        #expect(a.keyword?.term == "롱패딩")
        #expect(a.rulesVersion == Self.rules.version)
        #expect(a.best!.category == "bag" && a.runnerUp != nil)
        #expect(abs(a.margin! - (a.best!.score - a.runnerUp!.score)) < 1e-12)
        #expect(a.referencesUsed == 60)
        #expect(a.explanation.contains("keyword '롱패딩'") && a.explanation.contains("< 0.990"))
        let json = String(decoding: try JSONEncoder().encode(a), as: UTF8.self)
        for key in [
            "\"decided_by\":\"keyword\"", "\"runner_up\"", "\"margin\"", "\"references_used\":60",
            "\"matched_text\":\"롱패딩\"",
        ] {
            #expect(json.contains(key), "\(key)")
        }
        let noVector = try c.classify(ClassifierInput(productID: "y", vector: nil, title: "무지 기본 상품"))
        #expect(noVector.decidedBy == .none && noVector.category == "generic")
        #expect(noVector.embeddingSkipped == "no vector under this model")
        #expect { try c.classify(ClassifierInput(vector: [1, 2, 3])) } throws: {
            ($0 as? ClassifierError)?.code == .mismatch
        }
    }

    @Test("the stamp changes with the rules, references, model, method and threshold, and only then")
    func stamp() throws {
        let cat = Catalogue(products: 1)
        let refs = try ReferenceSet(candidates: cat.labelled)
        let key = ModelKey(modelID: "m@1", preprocessing: "squash224")
        let base = try CategoryClassifier(references: refs, rules: Self.rules, modelKey: key).stamp
        #expect(
            try CategoryClassifier(references: ReferenceSet(candidates: cat.labelled), rules: Self.rules, modelKey: key)
                .stamp == base)
        let otherRules = try KeywordRules(rules: [.init(category: "down", priority: 1, ko: ["패딩"])])
        var moved = cat.labelled
        moved[0].vector[0] += 0.5
        let variants = [
            try CategoryClassifier(references: refs, rules: otherRules, modelKey: key),
            try CategoryClassifier(references: refs, rules: nil, modelKey: key),
            try CategoryClassifier(references: ReferenceSet(candidates: moved), rules: Self.rules, modelKey: key),
            try CategoryClassifier(
                references: ReferenceSet(candidates: Array(cat.labelled.dropLast())), rules: Self.rules, modelKey: key),
            try CategoryClassifier(
                references: refs, rules: Self.rules, modelKey: ModelKey(modelID: "m@2", preprocessing: "squash224")),
            try CategoryClassifier(
                references: refs, rules: Self.rules, configuration: .init(method: .centroid), modelKey: key),
            try CategoryClassifier(
                references: refs, rules: Self.rules, configuration: .init(threshold: 0.4), modelKey: key),
        ]
        #expect(Set(variants.map(\.stamp)).count == variants.count)
        #expect(!variants.map(\.stamp).contains(base))
    }
}
