/// The rules every id, URL and text field must meet where it enters EwallML: manifests,
/// imports, the library API and the server. A value that breaks one is refused with a reason;
/// nothing is ever truncated, replaced or normalised, so the bytes a store keeps are the
/// bytes it was given.
///
/// - valid UTF-8 (checked where bytes become text: the manifest reader, the server);
/// - no control characters: C0 (U+0000...U+001F, NUL included), DEL (U+007F) and C1
///   (U+0080...U+009F). A NUL would truncate the value in C APIs; a newline or tab in an id
///   or URL would break the line-oriented outputs (CSV, TSV, logs) that carry it on. Titles,
///   brands and categories may hold tab, LF and CR (a quoted CSV title can span lines), and
///   no other control character;
/// - at most ``maxIDBytes`` UTF-8 bytes for a product id, ``maxURLBytes`` for an image URL,
///   ``maxTextBytes`` for a title, brand or category.
public struct InputRules: Sendable, Hashable {
    /// Longest product id in UTF-8 bytes (default 256).
    public var maxIDBytes: Int
    /// Longest image URL in UTF-8 bytes (default 4,096).
    public var maxURLBytes: Int
    /// Longest title, brand or category in UTF-8 bytes (default 4,096).
    public var maxTextBytes: Int

    public static let defaultMaxIDBytes = 256
    public static let defaultMaxURLBytes = 4096
    public static let defaultMaxTextBytes = 4096

    public init(
        maxIDBytes: Int = InputRules.defaultMaxIDBytes, maxURLBytes: Int = InputRules.defaultMaxURLBytes,
        maxTextBytes: Int = InputRules.defaultMaxTextBytes
    ) {
        self.maxIDBytes = maxIDBytes
        self.maxURLBytes = maxURLBytes
        self.maxTextBytes = maxTextBytes
    }

    /// What a field is, for its length limit and the reason's wording.
    public enum Field: String, Sendable {
        case productID = "product_id"
        case imageURL = "image_url"
        case title, brand, category

        var isText: Bool { self == .title || self == .brand || self == .category }
    }

    /// Why `value` cannot be used as `field`, or `nil` when it can.
    public func problem(_ value: String, as field: Field) -> String? {
        let limit: Int
        switch field {
        case .productID: limit = maxIDBytes
        case .imageURL: limit = maxURLBytes
        case .title, .brand, .category: limit = maxTextBytes
        }
        var bytes = 0
        for (offset, scalar) in value.unicodeScalars.enumerated() {
            if field.isText && (scalar == "\t" || scalar == "\n" || scalar == "\r") {
                // A title may span lines (a quoted CSV field): tab, LF and CR are text there.
            } else if let name = Self.controlName(scalar) {
                return
                    "\(field.rawValue) contains \(name) at character \(offset + 1); control characters are not allowed"
            }
            bytes += UTF8.width(scalar)
        }
        if bytes > limit {
            return "\(field.rawValue) is \(bytes) bytes long; the limit is \(limit) bytes"
        }
        if field == .productID && value.isEmpty { return "product_id is empty" }
        return nil
    }

    /// `value` checked as `field`: the value itself, or an ``InputError`` with the reason.
    public func check(_ value: String, as field: Field) throws(InputError) -> String {
        if let reason = problem(value, as: field) { throw InputError(field: field, reason: reason) }
        return value
    }

    /// Every field of `product` checked; the first problem found, or `nil`.
    public func problem(_ product: Product) -> String? {
        if let p = problem(product.id, as: .productID) { return p }
        for (value, field) in [(product.title, Field.title), (product.brand, .brand), (product.category, .category)] {
            if let value, let p = problem(value, as: field) { return p }
        }
        return nil
    }

    /// Longest job name in UTF-8 bytes (128).
    public static let maxJobNameBytes = 128

    /// Why `name` cannot name a shared job, or `nil` when it can. A job name is printed by
    /// `ewall job list` and `status`, in logs and in error messages, and is part of Redis keys,
    /// so it is printable text: not empty, not only spaces, no leading or trailing space, no
    /// control character (tab, newline, CR, ESC... included), no bidirectional or invisible
    /// format character (U+202E and its kin, zero-width spaces), at most ``maxJobNameBytes``
    /// UTF-8 bytes. The reason says which rule failed and where.
    public static func jobNameProblem(_ name: String) -> String? {
        if name.isEmpty { return "the job name is empty" }
        let bytes = name.utf8.count
        if bytes > maxJobNameBytes {
            return "the job name is \(bytes) bytes long; the limit is \(maxJobNameBytes) bytes"
        }
        for (offset, scalar) in name.unicodeScalars.enumerated() {
            if let control = controlName(scalar) {
                return "the job name contains \(control) at character \(offset + 1); it must be printable"
            }
            if isInvisibleFormat(scalar) {
                return "the job name contains the invisible format character \(hex(scalar)) at character "
                    + "\(offset + 1); it must be printable"
            }
        }
        if name.unicodeScalars.allSatisfy(\.properties.isWhitespace) { return "the job name is only spaces" }
        if name.unicodeScalars.first!.properties.isWhitespace || name.unicodeScalars.last!.properties.isWhitespace {
            return "the job name starts or ends with a space"
        }
        return nil
    }

    /// `text` made safe to print to a terminal or a log line: control characters and
    /// invisible format characters written as `\u{...}`, and cut after `maxBytes` UTF-8 bytes
    /// with the full length said. For names and ids read back from a store, which may predate
    /// the rules.
    public static func escaped(_ text: String, maxBytes: Int = 128) -> String {
        var out = ""
        var bytes = 0
        for scalar in text.unicodeScalars {
            if bytes + UTF8.width(scalar) > maxBytes {
                return out + "... (\(text.utf8.count) bytes)"
            }
            bytes += UTF8.width(scalar)
            if controlName(scalar) != nil || isInvisibleFormat(scalar) {
                out += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// Bidirectional controls and invisible format characters (general category Cf: U+200B-U+200F,
    /// U+202A-U+202E, U+2060-U+206F, U+FEFF, ...): they reorder or hide text when printed.
    static func isInvisibleFormat(_ s: Unicode.Scalar) -> Bool {
        s.properties.generalCategory == .format
    }

    private static func hex(_ s: Unicode.Scalar) -> String {
        "U+" + String(s.value, radix: 16, uppercase: true).leftPadded(to: 4)
    }

    /// A control character's printable name (`NUL`, `U+001B`...), or `nil` if `s` is not one.
    public static func controlName(_ s: Unicode.Scalar) -> String? {
        let v = s.value
        guard v < 0x20 || (0x7F...0x9F).contains(v) else { return nil }
        switch v {
        case 0: return "NUL (U+0000)"
        case 9: return "a tab (U+0009)"
        case 10: return "a line feed (U+000A)"
        case 13: return "a carriage return (U+000D)"
        default: return "the control character U+" + String(v, radix: 16, uppercase: true).leftPadded(to: 4)
        }
    }

    /// Why `bytes` are not valid UTF-8 (with the offset of the first bad byte), or `nil`.
    public static func utf8Problem<C: Collection>(_ bytes: C) -> String? where C.Element == UInt8 {
        var iterator = bytes.makeIterator()
        var decoder = UTF8()
        var offset = 0
        var consumed = 0
        while true {
            switch decoder.decode(&iterator) {
            case .scalarValue(let s):
                offset += UTF8.width(s)
                consumed = offset
            case .emptyInput:
                return nil
            case .error:
                let bad = bytes.dropFirst(consumed).first.map { "0x" + String($0, radix: 16, uppercase: true) } ?? "?"
                return "is not valid UTF-8 (byte \(bad) at offset \(consumed))"
            }
        }
    }
}

/// A value refused by ``InputRules``: which field, and why.
public struct InputError: Error, Sendable, Hashable, CustomStringConvertible {
    public var field: InputRules.Field
    /// Says what is wrong, e.g. "product_id contains NUL (U+0000) at character 2; ...".
    public var reason: String

    public init(field: InputRules.Field, reason: String) {
        self.field = field
        self.reason = reason
    }

    public var description: String { reason }
}

extension String {
    fileprivate func leftPadded(to n: Int) -> String {
        count >= n ? self : String(repeating: "0", count: n - count) + self
    }
}
