import Foundation

/// A title as the gift rules read it: Unicode scalars, lowercased, with every run of spaces and
/// punctuation removed ("compact"), and where each word starts and ends in the compact letters.
///
/// What it takes care of, without a trip through Foundation for the usual titles:
/// - full-width Latin letters and digits (`ＳＡＭＰＬＥ` is `sample`) and the ideographic space;
/// - Hangul written as conjoining jamo (NFD: `사은품` typed on some systems) is composed into
///   syllables (NFC), so both forms of the same word read the same;
/// - spacing inside a Korean word does not matter (`사 은 품`): Korean terms match the compact
///   letters; a run of three or more single Latin letters (`s a m p l e`) is read as one word;
/// - a space is put between Hangul and other scripts (`GWP사은품` is `gwp 사은품`);
/// - `+` and `&` are kept as words of their own: they say a gift comes *with* a product.
/// Titles with other characters (ligatures, circled digits, compatibility forms) go through NFKC
/// first.
struct GiftText {
    /// The letters, digits, `+` and `&`, without spaces.
    private(set) var compact: [UInt32] = []
    /// Words as ranges of ``compact``.
    private(set) var words: [Range<Int>] = []
    /// The word each compact position belongs to.
    private(set) var wordOf: [Int32] = []

    /// Never equal to a letter of a term: what blanked-out letters become.
    static let blank: UInt32 = 0

    init(_ raw: String) {
        compact.reserveCapacity(raw.utf8.count)
        words.reserveCapacity(16)
        // One pass; a title with a character outside the fast set is read again after NFKC.
        if !read(raw, fastOnly: true) {
            compact.removeAll(keepingCapacity: true)
            words.removeAll(keepingCapacity: true)
            _ = read(raw.precomposedStringWithCompatibilityMapping, fastOnly: false)
        }
        mergeSpelledOut()
        wordOf = [Int32](repeating: -1, count: compact.count)
        for (w, r) in words.enumerated() { for i in r { wordOf[i] = Int32(w) } }
    }

    /// Reads `text` into ``compact`` and ``words``; with `fastOnly`, stops and returns false at
    /// the first character that needs NFKC.
    private mutating func read(_ text: String, fastOnly: Bool) -> Bool {
        // Word state: the class of the current word (0 none, 1 Hangul, 2 other letters).
        var currentClass = 0
        var wordStartAt = 0
        // A pending leading jamo (NFD Hangul), with its vowel when one came.
        var lead: UInt32?
        var vowel: UInt32?

        func endWord(_ t: inout GiftText) {
            if t.compact.count > wordStartAt { t.words.append(wordStartAt..<t.compact.count) }
            wordStartAt = t.compact.count
            currentClass = 0
        }
        func emit(_ t: inout GiftText, _ v: UInt32, hangul: Bool) {
            let cls = hangul ? 1 : 2
            if currentClass != 0 && currentClass != cls { endWord(&t) }
            currentClass = cls
            t.compact.append(v)
        }
        func flushJamo(_ t: inout GiftText) {
            guard let l = lead else { return }
            if let v = vowel {
                emit(&t, 0xAC00 + ((l - 0x1100) * 21 + (v - 0x1161)) * 28, hangul: true)
            } else {
                emit(&t, l, hangul: true)
            }
            lead = nil
            vowel = nil
        }

        for scalar in text.unicodeScalars {
            var v = scalar.value
            if v < 0x80 {
                if lead != nil { flushJamo(&self) }
                switch v {
                case 0x41...0x5A: emit(&self, v + 0x20, hangul: false)
                case 0x61...0x7A, 0x30...0x39: emit(&self, v, hangul: false)
                case 0x2B, 0x26: // + &: a word of their own
                    endWord(&self)
                    compact.append(v)
                    endWord(&self)
                default: endWord(&self)
                }
                continue
            }
            if fastOnly && !Self.isFast(v) { return false }
            // Conjoining jamo: L (+ V (+ T)) -> one syllable.
            if (0x1100...0x1112).contains(v) {
                flushJamo(&self)
                lead = v
                continue
            }
            if (0x1161...0x1175).contains(v), lead != nil, vowel == nil {
                vowel = v
                continue
            }
            if (0x11A8...0x11C2).contains(v), let l = lead, let vw = vowel {
                emit(&self, 0xAC00 + ((l - 0x1100) * 21 + (vw - 0x1161)) * 28 + (v - 0x11A7), hangul: true)
                lead = nil
                vowel = nil
                continue
            }
            flushJamo(&self)
            if (0xFF01...0xFF5E).contains(v) { // full-width ASCII
                v -= 0xFEE0
                switch v {
                case 0x41...0x5A: emit(&self, v + 0x20, hangul: false)
                case 0x61...0x7A, 0x30...0x39: emit(&self, v, hangul: false)
                case 0x2B, 0x26:
                    endWord(&self)
                    compact.append(v)
                    endWord(&self)
                default: endWord(&self)
                }
                continue
            }
            if (0xAC00...0xD7A3).contains(v) || (0x3131...0x318E).contains(v) || (0x1100...0x11FF).contains(v) {
                emit(&self, v, hangul: true)
                continue
            }
            let p = scalar.properties
            if p.isAlphabetic || p.numericType != nil {
                let lower = p.lowercaseMapping.unicodeScalars
                emit(&self, lower.count == 1 ? lower.first!.value : v, hangul: false)
            } else {
                endWord(&self)
            }
        }
        flushJamo(&self)
        endWord(&self)
        return true
    }

    /// Scalars read without NFKC: ASCII, Hangul, jamo, full-width ASCII, the ideographic space and
    /// the punctuation and symbols titles are full of (which only ever separate words).
    private static func isFast(_ v: UInt32) -> Bool {
        v < 0x80 || (0xAC00...0xD7A3).contains(v) || (0x1100...0x11FF).contains(v)
            || (0xFF01...0xFF5E).contains(v) || (0x3000...0x303F).contains(v) || (0x2000...0x206F).contains(v)
            || (0x2190...0x27BF).contains(v) || (0x3131...0x318E).contains(v) || v == 0xB7 || v == 0xD7
    }

    /// `s a m p l e` -> `sample`: runs of three or more one-letter Latin words become one word.
    private mutating func mergeSpelledOut() {
        // Most titles have no run of three one-letter words: nothing to copy.
        var run = 0, longest = 0
        for w in words {
            run = w.count == 1 && Self.isLatinLetter(compact[w.lowerBound]) ? run + 1 : 0
            longest = max(longest, run)
        }
        if longest < 3 { return }
        var out: [Range<Int>] = []
        var i = 0
        while i < words.count {
            var j = i
            while j < words.count, words[j].count == 1, Self.isLatinLetter(compact[words[j].lowerBound]) { j += 1 }
            if j - i >= 3 {
                out.append(words[i].lowerBound..<words[j - 1].upperBound)
                i = j
            } else {
                out.append(words[i])
                i += 1
            }
        }
        words = out
    }

    static func isLatinLetter(_ v: UInt32) -> Bool { (0x61...0x7A).contains(v) }

    static func isHangul(_ v: UInt32) -> Bool {
        (0xAC00...0xD7A3).contains(v) || (0x1100...0x11FF).contains(v) || (0x3131...0x318E).contains(v)
    }

    /// Blanks a span out: it can no longer match anything.
    mutating func blank(_ span: Range<Int>) {
        for i in span { compact[i] = Self.blank }
    }

    /// The compact letters of a span, as text.
    func text(_ span: Range<Int>) -> String {
        var s = String.UnicodeScalarView()
        for v in compact[span] { if let u = Unicode.Scalar(v) { s.append(u) } }
        return String(s)
    }

    /// Whether `pos` begins a word.
    func isWordStart(_ pos: Int) -> Bool {
        pos < compact.count && (pos == 0 || wordOf[pos] != wordOf[pos - 1])
    }

    /// Whether `pos` ends a word (the position after its last letter).
    func isWordEnd(_ pos: Int) -> Bool {
        pos == compact.count || (pos > 0 && wordOf[pos] != wordOf[pos - 1])
    }
}

/// A phrase of the gift rules, compiled: phrases with Hangul (or only symbols) match the compact
/// letters anywhere; Latin ones match whole words, with an optional plural `s`/`es` at the end.
struct GiftPattern: Sendable {
    /// The phrase as written in the rules.
    let text: String
    let letters: [UInt32]
    let korean: Bool

    init?(_ text: String) {
        let t = GiftText(text)
        guard !t.compact.isEmpty else { return nil }
        self.text = text
        letters = t.compact
        korean = t.compact.contains(where: GiftText.isHangul) || !t.compact.contains(where: GiftText.isLatinLetter)
    }

    /// Every place the phrase occurs in `t`.
    func spans(in t: GiftText) -> [Range<Int>] {
        let hay = t.compact
        let n = letters.count
        guard hay.count >= n else { return [] }
        var out: [Range<Int>] = []
        let first = letters[0]
        var i = 0
        while i <= hay.count - n {
            if hay[i] == first, equal(hay, at: i) {
                if korean {
                    out.append(i..<(i + n))
                } else if t.isWordStart(i) {
                    if let end = wordEnd(t, i + n) { out.append(i..<end) }
                }
            }
            i += 1
        }
        return out
    }

    /// The span of the phrase starting at `pos`, as ``spans(in:)`` would find it, or nil.
    func span(in t: GiftText, at pos: Int) -> Range<Int>? {
        let n = letters.count
        guard pos + n <= t.compact.count, equal(t.compact, at: pos) else { return nil }
        if korean { return pos..<(pos + n) }
        guard t.isWordStart(pos), let end = wordEnd(t, pos + n) else { return nil }
        return pos..<end
    }

    /// Whether the phrase occurs starting exactly at `pos` (for the comes-with markers); the end
    /// of the match, or nil.
    func match(in t: GiftText, at pos: Int) -> Int? {
        let n = letters.count
        guard pos >= 0, pos + n <= t.compact.count, equal(t.compact, at: pos) else { return nil }
        if korean { return pos + n }
        guard t.isWordStart(pos) else { return nil }
        return wordEnd(t, pos + n)
    }

    /// Whether the phrase occurs ending exactly at `pos`.
    func matchEnding(in t: GiftText, at pos: Int) -> Bool {
        let n = letters.count
        guard pos - n >= 0, pos <= t.compact.count, equal(t.compact, at: pos - n) else { return false }
        return korean || (t.isWordStart(pos - n) && t.isWordEnd(pos))
    }

    private func equal(_ hay: [UInt32], at i: Int) -> Bool {
        for j in 0..<letters.count where hay[i + j] != letters[j] { return false }
        return true
    }

    /// A Latin phrase must end a word, or be followed by `s`/`es` that end it.
    private func wordEnd(_ t: GiftText, _ end: Int) -> Int? {
        if t.isWordEnd(end) { return end }
        let c = t.compact
        if end < c.count, c[end] == 0x73, t.isWordEnd(end + 1) { return end + 1 }
        if end + 1 < c.count, c[end] == 0x65, c[end + 1] == 0x73, t.isWordEnd(end + 2) { return end + 2 }
        return nil
    }
}
