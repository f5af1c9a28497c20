import EwallCore
import Foundation

/// Which step of the gift detector decided.
public enum GiftStep: String, Sendable, Codable, CaseIterable {
    /// The product is on the company's registered gift list.
    case master
    /// A price or supply price of 0.
    case zeroPrice = "zero_price"
    /// A gift word in the title that no exception took back.
    case keyword
    /// The image is close to a registered gift's image.
    case image
    /// No step found a gift: a product.
    case none

    /// The platform's `gift_type` (`nil` for a product).
    public var giftType: String? {
        switch self {
        case .master: "MASTER"
        case .zeroPrice: "ZERO_PRICE"
        case .keyword: "KEYWORD"
        case .image: "IMAGE"
        case .none: nil
        }
    }
}

/// One product for the gift detector.
public struct GiftInput: Sendable {
    public var productID: String?
    /// The platform's product code, when it differs from the id (the master list may use either).
    public var productCode: String?
    public var title: String?
    /// The product's brand: blanked out of the title, so a brand with a gift word in it is not one.
    public var brand: String?
    public var price: Double?
    public var supplyPrice: Double?
    /// The image vector, for the image step.
    public var vector: [Float]?

    public init(
        productID: String? = nil, productCode: String? = nil, title: String?, brand: String? = nil,
        price: Double? = nil, supplyPrice: Double? = nil, vector: [Float]? = nil
    ) {
        self.productID = productID
        self.productCode = productCode
        self.title = title
        self.brand = brand
        self.price = price
        self.supplyPrice = supplyPrice
        self.vector = vector
    }
}

/// A registered gift, for the master list and the image step.
public struct MasterGift: Sendable, Hashable {
    public var productID: String
    /// Its image vector, when it has one (the image step compares against these).
    public var vector: [Float]?

    public init(productID: String, vector: [Float]? = nil) {
        self.productID = productID
        self.vector = vector
    }
}

/// The registered gift the image step found a product to resemble.
public struct GiftResemblance: Sendable, Codable, Hashable {
    public var productID: String
    public var cosine: Double

    enum CodingKeys: String, CodingKey { case productID = "product_id", cosine }
}

/// A gift word the words step found and set aside, and why (an exception, a brand, or a gift
/// that comes *with* the product).
public struct GiftSetAside: Sendable, Codable, Hashable {
    public var term: String
    public var why: String
}

/// The detector's answer and how it was reached.
public struct GiftDecision: Sendable, Codable, Hashable {
    public var productID: String?
    public var isGift: Bool
    public var decidedBy: GiftStep
    /// The rule's term that matched (keyword step).
    public var term: String?
    /// The title's letters it matched, spaces removed (keyword step).
    public var matchedText: String?
    /// Whether the term is a size evasion (`미니`, `꼬마`), counted only when the rules enable them.
    public var evasion: Bool
    /// Gift words found and set aside, with why.
    public var setAside: [GiftSetAside]
    /// The image step: the nearest registered gift (always, when the step ran).
    public var resembles: GiftResemblance?
    /// The rules' version.
    public var rulesVersion: String
    /// Whether the product counts as revenue (gifts do not, when the rules exclude them).
    public var isRevenue: Bool

    enum CodingKeys: String, CodingKey {
        case productID = "product_id", isGift = "is_gift", decidedBy = "decided_by", term
        case matchedText = "matched_text", evasion, setAside = "set_aside", resembles
        case rulesVersion = "rules_version", isRevenue = "is_revenue"
    }

    /// `GIFT` or `PRODUCT`, as the platform writes `product_type`.
    public var productType: String { isGift ? "GIFT" : "PRODUCT" }

    /// The platform's `gift_type`: `ZERO_PRICE`, `MASTER`, `KEYWORD`, `IMAGE`, or `nil`.
    public var giftType: String? { isGift ? decidedBy.giftType : nil }

    /// Why, in Korean, as the platform writes `classification_reason`.
    public var classificationReason: String {
        switch decidedBy {
        case .master: return "사은품 마스터 등록 상품"
        case .zeroPrice: return zeroPriceField == "supply" ? "공급가 0원 (자동분류)" : "판매가 0원 (자동분류)"
        case .keyword:
            return evasion ? "회피 표현 '\(term ?? "")' 포함 (자동분류)" : "키워드 '\(term ?? "")' 포함 (자동분류)"
        case .image:
            let r = resembles.map { "\($0.productID), 유사도 \(String(format: "%.3f", $0.cosine))" } ?? ""
            return "사은품 이미지 유사 (\(r)) (자동분류)"
        case .none: return "일반 상품"
        }
    }

    /// Which price was 0 (`price` or `supply`), for the zero-price step.
    public var zeroPriceField: String?

    /// One line for people: `GIFT by keyword ('사은품' in '사은품파우치'; rules 2026.12.1)`.
    public var explanation: String {
        var parts: [String] = []
        switch decidedBy {
        case .master: parts.append("on the registered gift list")
        case .zeroPrice: parts.append(zeroPriceField == "supply" ? "supply price is 0" : "price is 0")
        case .keyword:
            parts.append(
                "\(evasion ? "size evasion" : "gift word") '\(term ?? "")' in '\(matchedText ?? "")'")
        case .image:
            if let r = resembles {
                parts.append("image resembles gift \(r.productID) (cosine \(String(format: "%.3f", r.cosine)))")
            }
        case .none:
            parts.append("no rule found a gift")
            if let r = resembles {
                parts.append("nearest gift image \(r.productID) at cosine \(String(format: "%.3f", r.cosine))")
            }
        }
        for s in setAside { parts.append("'\(s.term)' set aside: \(s.why)") }
        parts.append("rules \(rulesVersion)")
        return "\(productType) by \(decidedBy.rawValue) (\(parts.joined(separator: "; ")))"
    }
}

/// Finds gifts and samples among products: the registered gift list, a zero price, gift words
/// in the title (with the exceptions that are not gifts: free shipping, free returns, a product
/// that comes *with* a gift, brand and model names), then the image's resemblance to a
/// registered gift. The first step that finds a gift decides, and the answer says which.
///
/// Immutable: safe to share between tasks.
public struct GiftDetector: Sendable {
    public let rules: GiftRules
    /// Registered gift ids (the rules' `master` plus those given).
    public let masterIDs: Set<String>
    /// Master gifts with vectors, unit length, row-major.
    private let masterVectors: [Float]
    private let masterVectorIDs: [String]
    private let dimension: Int

    /// `master`: the registered gifts (with vectors for the image step), in addition to any the
    /// rules list.
    public init(rules: GiftRules, master: [MasterGift] = []) throws {
        self.rules = rules
        masterIDs = Set(rules.master).union(master.map(\.productID))
        let withVectors = master.filter { ($0.vector?.isEmpty == false) }
        let dims = Set(withVectors.map { $0.vector!.count })
        guard dims.count <= 1 else {
            throw ClassifierError(.mismatch, "master gift vectors have several dimensions: \(dims.sorted())")
        }
        dimension = dims.first ?? 0
        masterVectorIDs = withVectors.map(\.productID)
        masterVectors = withVectors.flatMap { Vectors.normalised($0.vector!) }
    }

    /// Whether any registered gift has a vector (the image step can run).
    public var hasMasterVectors: Bool { !masterVectorIDs.isEmpty }

    /// The vector dimension the image step compares (0: no registered gift has a vector).
    public var vectorDimension: Int { dimension }

    /// Registered gifts with a vector.
    public var masterVectorCount: Int { masterVectorIDs.count }

    /// Decides one product.
    public func decide(_ input: GiftInput) -> GiftDecision {
        var d = GiftDecision(
            productID: input.productID, isGift: true, decidedBy: .none, term: nil, matchedText: nil, evasion: false,
            setAside: [], resembles: nil, rulesVersion: rules.version, isRevenue: !rules.excludeFromRevenue,
            zeroPriceField: nil)
        if let id = input.productID, masterIDs.contains(id) {
            d.decidedBy = .master
            return d
        }
        if let code = input.productCode, masterIDs.contains(code) {
            d.decidedBy = .master
            return d
        }
        if rules.zeroPrice {
            if input.supplyPrice == 0 {
                d.decidedBy = .zeroPrice
                d.zeroPriceField = "supply"
                return d
            }
            if input.price == 0 {
                d.decidedBy = .zeroPrice
                d.zeroPriceField = "price"
                return d
            }
        }
        if let title = input.title {
            let w = words(title: title, brand: input.brand)
            d.setAside = w.setAside
            if let hit = w.hit {
                d.decidedBy = .keyword
                d.term = hit.term
                d.matchedText = hit.matched
                d.evasion = hit.evasion
                return d
            }
        }
        if let v = input.vector, !v.isEmpty, v.count == dimension, !masterVectorIDs.isEmpty {
            let best = nearest(v)
            d.resembles = best
            if best.cosine >= rules.imageThreshold {
                d.decidedBy = .image
                return d
            }
        }
        d.isGift = false
        d.isRevenue = true
        return d
    }

    /// Decides many products.
    public func decide(_ inputs: [GiftInput]) -> [GiftDecision] { inputs.map(decide) }

    /// The nearest registered gift by cosine.
    func nearest(_ v: [Float]) -> GiftResemblance {
        let q = Vectors.normalised(v)
        var best = -Float.infinity
        var at = 0
        masterVectors.withUnsafeBufferPointer { m in
            q.withUnsafeBufferPointer { q in
                for r in 0..<masterVectorIDs.count {
                    var s: Float = 0
                    let row = m.baseAddress! + r * dimension
                    for j in 0..<dimension { s += row[j] * q[j] }
                    if s > best {
                        best = s
                        at = r
                    }
                }
            }
        }
        return GiftResemblance(productID: masterVectorIDs[at], cosine: Double(best))
    }

    /// The words step on its own: the gift word that decides, and the words set aside.
    func words(
        title: String, brand: String?
    ) -> (hit: (term: String, matched: String, evasion: Bool)?, setAside: [GiftSetAside]) {
        var text = GiftText(title)
        var setAside: [GiftSetAside] = []
        struct Found {
            var pattern: GiftPattern
            var span: Range<Int>
            var give: Bool
            var evasion: Bool
        }
        // Every gift word, by one probe per letter; most titles have none and end here.
        func find(_ text: GiftText) -> [Found] {
            var found: [Found] = []
            let c = text.compact
            let starts = rules.startsTerm
            let index = rules.byFirstLetter
            for i in c.indices where starts.mayContain(c[i]) {
                guard let candidates = index[c[i]] else { continue }
                for t in candidates {
                    if let span = t.pattern.span(in: text, at: i) {
                        found.append(
                            Found(pattern: t.pattern, span: span, give: t.kind == .give, evasion: t.kind == .evasion))
                    }
                }
            }
            return found
        }
        var found = find(text)
        if found.isEmpty { return (nil, []) }
        // Brand and model names that contain a gift word, and the product's own brand.
        var names = rules.names
        if let b = brand, let p = GiftPattern(b) { names.append(p) }
        var blanked = false
        for p in names {
            for span in p.spans(in: text) {
                if found.contains(where: { $0.span.overlaps(span) }) {
                    setAside.append(.init(term: text.text(span), why: "a brand or model name"))
                }
                text.blank(span)
                blanked = true
            }
        }
        if blanked { found = find(text) }
        if found.isEmpty { return (nil, setAside) }
        // Exceptions (free shipping, free returns, ...): a gift word inside one is not a gift.
        var exceptionSpans: [(String, Range<Int>)] = []
        for i in text.compact.indices {
            guard let candidates = rules.exceptionsByFirstLetter[text.compact[i]] else { continue }
            for p in candidates { if let s = p.span(in: text, at: i) { exceptionSpans.append((p.text, s)) } }
        }
        found.removeAll { f in
            guard let e = exceptionSpans.first(where: { $0.1.overlaps(f.span) }) else { return false }
            setAside.append(.init(term: f.pattern.text, why: "part of '\(e.0)', an exception"))
            return true
        }
        // A match inside a longer one is dropped (증정품 beats 증정).
        found = found.filter { a in
            !found.contains { b in
                b.span.count > a.span.count && b.span.lowerBound <= a.span.lowerBound
                    && a.span.upperBound <= b.span.upperBound
            }
        }
        found.sort { ($0.span.lowerBound, -$0.span.count) < ($1.span.lowerBound, -$1.span.count) }
        // Runs of adjacent gift words are one phrase (`무료 사은품 증정`); a phrase that says the
        // gift comes with the product (`+사은품`, `사은품 증정`, `(사은품 포함)`, `with free gift`)
        // is set aside.
        var i = 0
        var hit: (term: String, matched: String, evasion: Bool)?
        var lastSetAsideWord: Int?
        while i < found.count {
            var j = i + 1
            var end = found[i].span.upperBound
            while j < found.count, found[j].span.lowerBound <= end {
                end = max(end, found[j].span.upperBound)
                j += 1
            }
            let run = found[i..<j]
            let start = run.first!.span.lowerBound
            let phrase = text.text(start..<end)
            let giveOnly = run.allSatisfy(\.give)
            if let why = comesWith(text, start, end, run.map(\.give)) {
                setAside.append(.init(term: phrase, why: why))
                lastSetAsideWord = Int(text.wordOf[end - 1])
            } else if giveOnly, let w = lastSetAsideWord, Int(text.wordOf[start]) - w <= Self.markerReach + 1 {
                // `샘플 3종 증정`: the give word of a gift set aside just before.
                setAside.append(.init(term: phrase, why: "gives the gift set aside before it"))
            } else if hit == nil {
                let decisive = run.first { !$0.give && !$0.evasion } ?? run.first { !$0.give } ?? run.first!
                hit = (decisive.pattern.text, phrase, decisive.evasion)
            }
            i = j
        }
        return (hit, setAside)
    }

    /// Why a phrase of gift words says the gift comes *with* the product, or nil. A marker may
    /// stand up to ``markerReach`` words away (`w/ deluxe sample`, `(샘플 3종 포함)`).
    private func comesWith(_ text: GiftText, _ start: Int, _ end: Int, _ give: [Bool]) -> String? {
        // Where a `before` marker may end: right before the phrase, or the end of one of the
        // few words before it; where an `after` marker may start: right after, or a word start.
        var ends = [start]
        var starts = [end]
        if !text.wordOf.isEmpty {
            let first = Int(text.wordOf[start]), last = Int(text.wordOf[end - 1])
            for g in 1...(Self.markerReach + 1) where first - g >= 0 { ends.append(text.words[first - g].upperBound) }
            for g in 1...(Self.markerReach + 1) where last + g < text.words.count {
                starts.append(text.words[last + g].lowerBound)
            }
        }
        for p in rules.before {
            if ends.contains(where: { p.matchEnding(in: text, at: $0) }) {
                return "comes with the product ('\(p.text)' before it)"
            }
        }
        for p in rules.after {
            for at in starts {
                if let e = p.match(in: text, at: at), !followedByFor(text, e) {
                    return "comes with the product ('\(p.text)' after it)"
                }
            }
        }
        // `사은품 증정`: a gift noun, then a give word ending the phrase (but `증정용`: for giving).
        if give.count >= 2, give.last == true, give.contains(false), !followedByFor(text, end) {
            return "comes with the product (a gift, then a give word)"
        }
        return nil
    }

    /// Words that may stand between a comes-with marker and the gift words.
    static let markerReach = 2

    /// `용` ("for") right after: `증정용` is something to give away, not a promise of a gift.
    private func followedByFor(_ text: GiftText, _ pos: Int) -> Bool {
        pos < text.compact.count && text.compact[pos] == 0xC6A9
    }
}
