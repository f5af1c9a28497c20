import Crypto
import EwallCore
import Foundation

/// The gift detector's rules, read from JSON (`data/gift_rules.json` by default; one file per
/// company beside it, `gift_rules.<company>.json`; or the platform's Redis key
/// `gift:rules:{company_id}` holding the same JSON). See docs/gifts.md for the format.
///
/// A malformed file or value is refused with the field and the reason
/// (`field 'words.ko[2]': must be a non-empty string`); whoever holds the rules in force keeps
/// them (``GiftRuleBook``).
public struct GiftRules: Sendable {
    /// The format this version reads.
    public static let format = 1

    /// Where the rules came from (a path, a Redis key, or `inline`).
    public let source: String
    /// The file's `version`.
    public let version: String
    /// The company the rules are for (`nil`: the default rules).
    public let companyID: Int?
    /// SHA-256 of the bytes, hex: results made under other rules are stale.
    public let sha256: String
    /// The zero-price step runs.
    public let zeroPrice: Bool
    /// Gifts are left out of revenue (`is_revenue: false`).
    public let excludeFromRevenue: Bool
    /// Product ids (or codes) of the registered gift products, when the rules list them.
    public let master: [String]
    /// The image step: the cosine to the nearest master gift's image at or above which a
    /// product is flagged `IMAGE`.
    public let imageThreshold: Double
    /// Whether the size evasions (`미니`, `꼬마`) count as gift words.
    public let evasionsEnabled: Bool

    let terms: [GiftPattern]
    /// Every pattern the words step looks for (terms, give words, and evasions when enabled),
    /// by its first letter: one dictionary probe per letter of a title finds the candidates.
    let byFirstLetter: [UInt32: [GiftTerm]]
    /// The exception phrases by their first letter.
    let exceptionsByFirstLetter: [UInt32: [GiftPattern]]
    /// One bit per BMP letter that starts a pattern of ``byFirstLetter``: most letters of a title
    /// start none, and a bit test is cheaper than a dictionary probe.
    let startsTerm: LetterSet
    let giveWords: [GiftPattern]
    let evasions: [GiftPattern]
    let exceptions: [GiftPattern]
    let names: [GiftPattern]
    let before: [GiftPattern]
    let after: [GiftPattern]

    /// Loads a rules file.
    public static func load(path: String) throws -> GiftRules {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw ClassifierError(.rules, "cannot read the gift rules file \(path): \(error.localizedDescription)")
        }
        return try GiftRules(data: data, source: path)
    }

    /// The rules file for a company: `gift_rules.<company>.json` beside the default file when
    /// there is one, else the default file itself.
    public static func path(default defaultPath: String, company: Int?) -> String {
        guard let company else { return defaultPath }
        let url = URL(fileURLWithPath: defaultPath)
        let base = url.deletingPathExtension().lastPathComponent
        let own = url.deletingLastPathComponent().appendingPathComponent("\(base).\(company).json").path
        return FileManager.default.fileExists(atPath: own) ? own : defaultPath
    }

    /// Parses and checks rules from JSON bytes.
    public init(data: Data, source: String = "inline") throws {
        func refuse(_ field: String, _ reason: String) -> ClassifierError {
            ClassifierError(.rules, "\(source): field '\(field)': \(reason); the rules in force stay in force")
        }
        let top: [String: JSONValue]
        do {
            guard case .object(let object) = try JSONDecoder().decode(JSONValue.self, from: data) else {
                throw refuse("(top level)", "must be a JSON object")
            }
            top = object
        } catch let e as ClassifierError {
            throw e
        } catch {
            throw ClassifierError(.rules, "\(source) is not JSON (\(error)); the rules in force stay in force")
        }
        let known: Set<String> = [
            "format", "version", "about", "company_id", "zero_price", "exclude_from_revenue", "master", "words",
            "give_words", "exceptions", "comes_with", "evasions", "image",
        ]
        if let unknown = top.keys.filter({ !known.contains($0) }).sorted().first {
            throw refuse(unknown, "unknown field (known: \(known.sorted().joined(separator: ", ")))")
        }
        guard case .number(let format) = top["format"] else {
            throw refuse("format", "must be the integer \(Self.format)")
        }
        guard format == Double(Self.format) else {
            throw refuse("format", "is \(format); this ewall reads format \(Self.format)")
        }
        guard case .string(let version) = top["version"], !version.isEmpty else {
            throw refuse("version", "must be a non-empty string")
        }
        var company: Int?
        switch top["company_id"] {
        case nil, .null?: break
        case .number(let n)? where n >= 0 && n == n.rounded() && n < 1e15: company = Int(n)
        default: throw refuse("company_id", "must be a non-negative integer or null")
        }
        func bool(_ key: String, _ fallback: Bool, in dict: [String: JSONValue], path: String) throws -> Bool {
            switch dict[key] {
            case nil: return fallback
            case .bool(let b)?: return b
            default: throw refuse(path, "must be true or false")
            }
        }
        func object(_ key: String) throws -> [String: JSONValue] {
            switch top[key] {
            case nil: return [:]
            case .object(let d)?: return d
            default: throw refuse(key, "must be an object")
            }
        }
        func strings(_ v: JSONValue?, _ path: String) throws -> [String] {
            guard let v else { return [] }
            guard case .array(let list) = v else { throw refuse(path, "must be a list of strings") }
            return try list.enumerated().map { i, e in
                guard case .string(let s) = e, !s.trimmingCharacters(in: .whitespaces).isEmpty else {
                    throw refuse("\(path)[\(i)]", "must be a non-empty string")
                }
                return s
            }
        }
        func patterns(_ v: JSONValue?, _ path: String) throws -> [GiftPattern] {
            try strings(v, path).enumerated().map { i, s in
                guard let p = GiftPattern(s) else {
                    throw refuse("\(path)[\(i)]", "'\(s)' has no letters or digits")
                }
                return p
            }
        }
        func checkKeys(_ d: [String: JSONValue], _ allowed: Set<String>, _ path: String) throws {
            if let k = d.keys.filter({ !allowed.contains($0) }).sorted().first {
                throw refuse("\(path).\(k)", "unknown field (known: \(allowed.sorted().joined(separator: ", ")))")
            }
        }

        let words = try object("words")
        try checkKeys(words, ["ko", "en"], "words")
        let give = try object("give_words")
        try checkKeys(give, ["ko", "en"], "give_words")
        let exceptions = try object("exceptions")
        try checkKeys(exceptions, ["phrases", "names"], "exceptions")
        let comesWith = try object("comes_with")
        try checkKeys(comesWith, ["before", "after"], "comes_with")
        let evasions = try object("evasions")
        try checkKeys(evasions, ["enabled", "ko", "en"], "evasions")
        let image = try object("image")
        try checkKeys(image, ["threshold"], "image")

        let terms = try patterns(words["ko"], "words.ko") + patterns(words["en"], "words.en")
        guard !terms.isEmpty else { throw refuse("words", "must list at least one term in ko or en") }
        var threshold = 0.9
        if let t = image["threshold"] {
            guard case .number(let x) = t, (0.0...1.0).contains(x) else {
                throw refuse("image.threshold", "must be a number between 0 and 1")
            }
            threshold = x
        }
        let master = try strings(top["master"], "master")

        self.source = source
        self.version = version
        self.companyID = company
        self.sha256 = SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
        self.zeroPrice = try bool("zero_price", true, in: top, path: "zero_price")
        self.excludeFromRevenue = try bool("exclude_from_revenue", true, in: top, path: "exclude_from_revenue")
        self.master = master
        self.imageThreshold = threshold
        self.evasionsEnabled = try bool("enabled", false, in: evasions, path: "evasions.enabled")
        self.terms = terms
        self.giveWords = try patterns(give["ko"], "give_words.ko") + patterns(give["en"], "give_words.en")
        self.evasions = try patterns(evasions["ko"], "evasions.ko") + patterns(evasions["en"], "evasions.en")
        var index: [UInt32: [GiftTerm]] = [:]
        let enabled = self.evasionsEnabled
        for (list, kind) in [(self.terms, GiftTerm.Kind.gift), (self.giveWords, .give), (self.evasions, .evasion)]
        where kind != .evasion || enabled {
            for p in list { index[p.letters[0], default: []].append(GiftTerm(pattern: p, kind: kind)) }
        }
        self.byFirstLetter = index
        self.startsTerm = LetterSet(index.keys)
        var exceptionIndex: [UInt32: [GiftPattern]] = [:]
        self.exceptions = try patterns(exceptions["phrases"], "exceptions.phrases")
        for p in self.exceptions { exceptionIndex[p.letters[0], default: []].append(p) }
        self.exceptionsByFirstLetter = exceptionIndex
        self.names = try patterns(exceptions["names"], "exceptions.names")
        self.before = try patterns(comesWith["before"], "comes_with.before")
        self.after = try patterns(comesWith["after"], "comes_with.after")
    }
}

/// A set of letters (Unicode scalar values) as a bitmap over the BMP; letters above it are
/// always "maybe".
struct LetterSet: Sendable {
    private var bits = [UInt64](repeating: 0, count: 1024)

    init<S: Sequence>(_ letters: S) where S.Element == UInt32 {
        for v in letters where v < 0x10000 { bits[Int(v >> 6)] |= 1 << UInt64(v & 63) }
    }

    @inline(__always) func mayContain(_ v: UInt32) -> Bool {
        v >= 0x10000 || bits[Int(v >> 6)] & (1 << UInt64(v & 63)) != 0
    }
}

/// A pattern of the words step and what kind of word it is.
struct GiftTerm: Sendable {
    enum Kind: Sendable { case gift, give, evasion }
    let pattern: GiftPattern
    let kind: Kind
}

/// The rules in force, replaced only by rules that parse: a bad file or Redis value is refused
/// and the previous rules stay. Safe to share between tasks.
public final class GiftRuleBook: Sendable {
    private let state: Locked<GiftRules>

    public init(_ rules: GiftRules) { state = Locked(rules) }

    /// The rules in force.
    public var current: GiftRules { state.withLock { $0 } }

    /// Parses new rules and puts them in force; on a malformed value throws (naming the field
    /// and the reason) and keeps the rules in force. Returns whether the rules changed.
    @discardableResult
    public func replace(data: Data, source: String) throws -> Bool {
        let new = try GiftRules(data: data, source: source)
        return state.withLock { rules in
            guard rules.sha256 != new.sha256 else { return false }
            rules = new
            return true
        }
    }
}

/// Any JSON value, keeping booleans apart from numbers: what the rules are checked against.
enum JSONValue: Decodable, Sendable {
    case null, bool(Bool), number(Double), string(String), array([JSONValue]), object([String: JSONValue])

    init(from decoder: any Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() {
            self = .null
        } else if let b = try? c.decode(Bool.self) {
            self = .bool(b)
        } else if let n = try? c.decode(Double.self) {
            self = .number(n)
        } else if let s = try? c.decode(String.self) {
            self = .string(s)
        } else if let a = try? c.decode([JSONValue].self) {
            self = .array(a)
        } else {
            self = .object(try c.decode([String: JSONValue].self))
        }
    }
}
