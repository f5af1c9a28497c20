import Crypto
import Foundation

/// The keyword step of the classifier: Korean and English terms per category, read from a
/// rules file (`data/category_rules.json` by default; a user may point at their own).
///
/// How a title is matched:
/// 1. It is normalised: NFKC (full-width `ＣＯＡＴ` is `coat`), lowercased, every character that
///    is not a letter or a digit becomes a space, and a space is put between Hangul and other
///    scripts (`MLB패딩` is `mlb 패딩`).
/// 2. `ignore` phrases and the product's own brand are blanked out, so `Canada Goose` and
///    `골든구스` do not make a product `down`.
/// 3. Korean terms (any term with Hangul) match anywhere in the title with spaces removed, so
///    `다운 자켓` and `다운자켓` read the same. Other terms match whole words, with an optional
///    plural `s`/`es` on the last word: `coat` matches `coats`, never `coating`.
/// 4. Conflicts are settled deterministically: a match lying inside a longer match is dropped
///    (`데님자켓` beats `데님` and `자켓`; `t shirt` beats `shirt`); of the rest, the higher
///    category `priority` wins, then the longer term, then the category earlier in the file.
public struct KeywordRules: Sendable {
    /// One category's rule, as in the file.
    public struct Rule: Sendable, Codable, Hashable {
        public var category: String
        /// Higher wins when two categories' terms both match.
        public var priority: Int
        public var ko: [String]
        public var en: [String]

        public init(category: String, priority: Int, ko: [String] = [], en: [String] = []) {
            self.category = category
            self.priority = priority
            self.ko = ko
            self.en = en
        }
    }

    /// The file's layout.
    public struct File: Sendable, Codable {
        public struct Ignore: Sendable, Codable {
            public var phrases: [String]
        }

        public var format: Int
        public var version: String
        public var categories: [Rule]
        public var ignore: Ignore?
    }

    /// Where the rules came from (a path, or `inline`).
    public let source: String
    /// The file's `version` field.
    public let version: String
    /// SHA-256 of the file's bytes, hex: part of the classifier's cache stamp.
    public let sha256: String
    public let rules: [Rule]

    private let terms: [Term]
    private let ignore: [Pattern]

    /// Loads and checks a rules file.
    public static func load(path: String) throws -> KeywordRules {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ClassifierError(.rules, "cannot read the rules file \(path): \(error.localizedDescription)")
        }
        return try KeywordRules(data: data, source: path)
    }

    /// Parses rules from the bytes of a rules file.
    public init(data: Data, source: String = "inline") throws {
        let file: File
        do { file = try JSONDecoder().decode(File.self, from: data) } catch {
            throw ClassifierError(.rules, "\(source) is not a valid rules file: \(error)")
        }
        guard file.format == 1 else {
            throw ClassifierError(.rules, "\(source) has rules format \(file.format); this ewall reads format 1")
        }
        try self.init(
            file: file, source: source, sha256: SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined())
    }

    /// Rules built in code (tests, or a server that keeps rules elsewhere).
    public init(rules: [Rule], ignore: [String] = [], version: String = "inline") throws {
        let file = File(format: 1, version: version, categories: rules, ignore: .init(phrases: ignore))
        // Sorted keys: the digest (part of the cache stamp) must not depend on encoder key order.
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let data = try encoder.encode(file)
        try self.init(
            file: file, source: "inline",
            sha256: SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined())
    }

    private init(file: File, source: String, sha256: String) throws {
        var seen = Set<String>()
        var terms: [Term] = []
        for (order, rule) in file.categories.enumerated() {
            guard !rule.category.isEmpty, seen.insert(rule.category).inserted else {
                throw ClassifierError(.rules, "\(source): category '\(rule.category)' is empty or listed twice")
            }
            for text in rule.ko + rule.en {
                guard let pattern = Pattern(text) else {
                    throw ClassifierError(.rules, "\(source): the term '\(text)' of '\(rule.category)' has no letters")
                }
                terms.append(
                    Term(text: text, pattern: pattern, category: rule.category, priority: rule.priority, order: order))
            }
        }
        self.source = source
        self.version = file.version
        self.sha256 = sha256
        self.rules = file.categories
        self.terms = terms
        self.ignore = (file.ignore?.phrases ?? []).compactMap(Pattern.init)
    }

    /// The categories the rules know, in file order.
    public var categories: [String] { rules.map(\.category) }

    /// The best keyword match in a title, or `nil`. `brand`, when given, is blanked out too.
    public func match(title: String, brand: String? = nil) -> KeywordMatch? {
        var text = NormalisedTitle(title)
        for p in ignore + [brand.flatMap(Pattern.init)].compactMap({ $0 }) {
            for span in p.spans(in: text) { text.blank(span) }
        }
        var found: [(term: Term, span: Range<Int>)] = []
        for t in terms {
            for span in t.pattern.spans(in: text) { found.append((t, span)) }
        }
        if found.isEmpty { return nil }
        // Drop matches that lie inside a longer match (of any category).
        let kept = found.filter { a in
            !found.contains { b in
                b.span.count > a.span.count && b.span.lowerBound <= a.span.lowerBound
                    && a.span.upperBound <= b.span.upperBound
            }
        }
        let best = kept.min { a, b in
            if a.term.priority != b.term.priority { return a.term.priority > b.term.priority }
            if a.span.count != b.span.count { return a.span.count > b.span.count }
            if a.term.order != b.term.order { return a.term.order < b.term.order }
            return a.span.lowerBound < b.span.lowerBound
        }!
        let others = Set(kept.map(\.term.category)).subtracting([best.term.category]).sorted()
        return KeywordMatch(
            category: best.term.category, term: best.term.text, priority: best.term.priority,
            matchedText: text.original(best.span), otherCategories: others)
    }

    /// A term of a rule, compiled.
    private struct Term: Sendable {
        var text: String
        var pattern: Pattern
        var category: String
        var priority: Int
        var order: Int
    }
}

/// What the keyword step found.
public struct KeywordMatch: Sendable, Codable, Hashable {
    public var category: String
    /// The rule's term that matched, as written in the rules file.
    public var term: String
    /// The winning rule's priority.
    public var priority: Int
    /// The part of the normalised title it matched (spaces removed).
    public var matchedText: String
    /// Other categories whose terms matched too and lost on priority.
    public var otherCategories: [String]

    enum CodingKeys: String, CodingKey {
        case category, term, priority
        case matchedText = "matched_text"
        case otherCategories = "other_categories"
    }
}

/// A title after normalisation: its words, and the same letters with spaces removed
/// ("compact"), with each compact position mapped to its word. Spans are compact positions.
struct NormalisedTitle {
    private(set) var words: [[Character]] = []
    /// Start of each word in `compact`.
    private(set) var wordStart: [Int] = []
    private(set) var compact: [Character] = []

    /// The blank: never equal to a letter of a term.
    static let blank: Character = "\u{0}"

    init(_ raw: String) {
        var current: [Character] = []
        var lastWasHangul: Bool?
        func flush() {
            if !current.isEmpty {
                wordStart.append(compact.count)
                compact += current
                words.append(current)
                current = []
            }
            lastWasHangul = nil
        }
        for ch in raw.precomposedStringWithCompatibilityMapping.lowercased() {
            guard ch.isLetter || ch.isNumber else {
                flush()
                continue
            }
            let hangul = ch.unicodeScalars.contains { Self.isHangul($0) }
            if let last = lastWasHangul, last != hangul { flush() }
            current.append(ch)
            lastWasHangul = hangul
        }
        flush()
    }

    static func isHangul(_ s: Unicode.Scalar) -> Bool {
        (0xAC00...0xD7A3).contains(s.value) || (0x1100...0x11FF).contains(s.value)
            || (0x3130...0x318F).contains(s.value)
    }

    var hasHangul: Bool { compact.contains { $0.unicodeScalars.contains { Self.isHangul($0) } } }

    /// Blanks a span out, in the words and in the compact letters.
    mutating func blank(_ span: Range<Int>) {
        for i in span { compact[i] = Self.blank }
        for (w, start) in wordStart.enumerated() {
            for j in words[w].indices where span.contains(start + j) { words[w][j] = Self.blank }
        }
    }

    func original(_ span: Range<Int>) -> String { String(compact[span]) }
}

/// A term or an ignore phrase, compiled: Korean ones match the compact letters, others whole words.
struct Pattern: Sendable {
    private let korean: Bool
    private let letters: [Character]
    private let words: [[Character]]

    init?(_ text: String) {
        let n = NormalisedTitle(text)
        guard !n.compact.isEmpty else { return nil }
        korean = n.hasHangul
        letters = n.compact
        words = n.words
    }

    func spans(in t: NormalisedTitle) -> [Range<Int>] {
        korean ? compactSpans(t) : wordSpans(t)
    }

    private func compactSpans(_ t: NormalisedTitle) -> [Range<Int>] {
        let hay = t.compact
        guard hay.count >= letters.count else { return [] }
        var out: [Range<Int>] = []
        for i in 0...(hay.count - letters.count) where hay[i] == letters[0] {
            if hay[i..<(i + letters.count)].elementsEqual(letters) { out.append(i..<(i + letters.count)) }
        }
        return out
    }

    private func wordSpans(_ t: NormalisedTitle) -> [Range<Int>] {
        guard t.words.count >= words.count else { return [] }
        var out: [Range<Int>] = []
        for i in 0...(t.words.count - words.count) {
            var ok = true
            for j in 0..<words.count {
                let w = t.words[i + j]
                let last = j == words.count - 1
                if w == words[j] { continue }
                if last, w.count == words[j].count + 1, w.last == "s", w.dropLast().elementsEqual(words[j]) { continue }
                if last, w.count == words[j].count + 2, w.suffix(2).elementsEqual("es"),
                    w.dropLast(2).elementsEqual(words[j])
                {
                    continue
                }
                ok = false
                break
            }
            if ok {
                let end = i + words.count - 1
                out.append(t.wordStart[i]..<(t.wordStart[end] + t.words[end].count))
            }
        }
        return out
    }
}
