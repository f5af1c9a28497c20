import EwallCore
import EwallFetch
import Foundation

/// One usable manifest row.
public struct ManifestRow: Sendable, Hashable {
    /// 1-based line where the row starts (the header is line 1 in CSV/TSV).
    public var line: Int
    public var product: Product
    /// As written in the manifest: the identity the store keys on.
    public var imageURL: String
    /// `imageURL` parsed once, relative paths resolved against the manifest's folder.
    public var location: ImageLocation
}

/// A manifest row that cannot be processed, with its line number. The job reports it and
/// goes on.
public struct ManifestProblem: Error, Sendable, Hashable, CustomStringConvertible {
    public var line: Int
    public var productID: String?
    public var imageURL: String?
    public var message: String
    public var description: String { "line \(line): \(message)" }

    public init(line: Int, productID: String? = nil, imageURL: String? = nil, message: String) {
        self.line = line
        self.productID = productID
        self.imageURL = imageURL
        self.message = message
    }
}

/// Streams a manifest of product images, row by row, in bounded memory: CSV or TSV with a
/// header, or JSON Lines. Columns: `product_id`, `image_url` (required), `title`,
/// `category`, `in_stock`, `brand`, `price` (optional; others are ignored).
///
/// Format: from the extension (`.csv`, `.tsv`, `.jsonl`/`.ndjson`), else sniffed (`{` starts
/// JSON Lines; a tab in the header means TSV). CSV follows RFC 4180 (quoted fields may hold
/// commas, quotes and newlines); TSV has no quoting. Relative paths in `image_url` are
/// resolved by the job against the manifest's folder.
///
/// Duplicate detection keeps 16 bytes per distinct product id (hashes of id and URL), so
/// memory grows by ~16 MB per million rows; everything else is streamed.
///
/// Safe because: a reader is used by one task at a time (the job's manifest stage);
/// `Sendable` only lets it be handed to that task.
public final class ManifestReader: @unchecked Sendable {
    public enum Format: String, Sendable { case csv, tsv, jsonl }

    public let path: String
    public let format: Format
    /// What every id, URL and text field must meet; a row that breaks a rule is a bad row.
    public let rules: InputRules
    private let handle: FileHandle
    private var buffer: [UInt8] = []
    private var position = 0
    private var eof = false
    private var line = 0
    private var columns: [String: Int] = [:]
    private var seen: [UInt64: UInt64] = [:]

    /// Rows repeated with the same product id and URL (skipped after the first).
    public private(set) var duplicates = 0

    /// Relative paths in `image_url` resolve against this (default: the manifest's folder).
    public let baseDirectory: String

    public init(path: String, rules: InputRules = InputRules(), baseDirectory: String? = nil) throws {
        self.path = path
        self.rules = rules
        self.baseDirectory = baseDirectory ?? URL(fileURLWithPath: path).deletingLastPathComponent().path
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw ManifestError("cannot open the manifest \(path): no such file or not readable")
        }
        self.handle = handle
        let ext = URL(fileURLWithPath: path).pathExtension.lowercased()
        switch ext {
        case "csv": format = .csv
        case "tsv", "tab": format = .tsv
        case "jsonl", "ndjson", "json": format = .jsonl
        default:
            let head = handle.readData(ofLength: 4096)
            try? handle.seek(toOffset: 0)
            let firstLine = head.prefix(while: { $0 != 10 })
            if firstLine.first(where: { $0 != 32 && $0 != 9 && $0 != 0xEF && $0 != 0xBB && $0 != 0xBF })
                == UInt8(ascii: "{")
            {
                format = .jsonl
            } else {
                format = firstLine.contains(9) ? .tsv : .csv
            }
        }
        if format != .jsonl { try readHeader() }
    }

    deinit { try? handle.close() }

    /// The number of data rows, estimated by counting lines (exact unless quoted CSV fields
    /// span lines). Reads the file once, quickly, for the progress display.
    public static func estimateRows(path: String) -> Int? {
        guard let h = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? h.close() }
        var lines = 0
        var last: UInt8 = 10
        while true {
            let chunk = h.readData(ofLength: 4 << 20)
            if chunk.isEmpty { break }
            chunk.withUnsafeBytes { raw in
                for b in raw where b == 10 { lines += 1 }
                last = raw.last ?? last
            }
        }
        if last != 10 { lines += 1 }
        let isJSONL = ["jsonl", "ndjson", "json"].contains(URL(fileURLWithPath: path).pathExtension.lowercased())
        return max(0, isJSONL ? lines : lines - 1)
    }

    private func readHeader() throws {
        guard let header = nextRecord() else { throw ManifestError("the manifest \(path) is empty") }
        if let (i, problem) = header.utf8Problems.first {
            throw ManifestError("the manifest \(path)'s header column \(i + 1) \(problem)")
        }
        for (i, name) in header.fields.enumerated() {
            var n = name.trimmingCharacters(in: .whitespaces).lowercased()
            if n.hasPrefix("\u{FEFF}") { n.removeFirst() }
            columns[n] = i
        }
        for required in ["product_id", "image_url"] where columns[required] == nil {
            throw ManifestError(
                "the manifest \(path) has no '\(required)' column (header: \(header.fields.joined(separator: ", ")))")
        }
    }

    /// The next row or problem; `nil` at the end of the file.
    public func next() -> Result<ManifestRow, ManifestProblem>? {
        while let record = nextRecord() {
            if record.utf8Problems.isEmpty
                && record.fields.allSatisfy({ $0.trimmingCharacters(in: .whitespaces).isEmpty })
            {
                continue
            }
            switch parse(record) {
            case .success(let row):
                // 8 bytes per id: a 64-bit hash of the id -> a hash of its URL.
                let idHash = Self.hash(row.product.id), urlHash = Self.hash(row.imageURL)
                if let previous = seen[idHash] {
                    if previous == urlHash {
                        duplicates += 1
                        continue
                    }
                    return .failure(
                        ManifestProblem(
                            line: record.line, productID: row.product.id, imageURL: row.imageURL,
                            message:
                                "duplicate product_id '\(row.product.id)' with a different image_url (the first row wins)"
                        ))
                }
                seen[idHash] = urlHash
                return .success(row)
            case .failure(let p):
                return .failure(p)
            }
        }
        return nil
    }

    private func parse(_ record: Record) -> Result<ManifestRow, ManifestProblem> {
        var get: (String) -> String?
        var bad: String?
        switch format {
        case .csv, .tsv:
            get = { name in
                guard let i = self.columns[name], i < record.fields.count else { return nil }
                if let p = record.utf8Problems[i] {
                    if bad == nil { bad = "\(name) \(p)" }
                    return nil
                }
                let v = record.fields[i].trimmingCharacters(in: .whitespaces)
                return v.isEmpty ? nil : v
            }
        case .jsonl:
            if let p = record.utf8Problems[0] {
                return .failure(
                    ManifestProblem(line: record.line, productID: nil, imageURL: nil, message: "the line \(p)"))
            }
            guard let obj = (try? JSONSerialization.jsonObject(with: Data(record.fields[0].utf8))) as? [String: Any]
            else {
                return .failure(
                    ManifestProblem(
                        line: record.line, productID: nil, imageURL: nil,
                        message: "not a JSON object"))
            }
            get = { name in
                switch obj[name] {
                case let s as String:
                    let t = s.trimmingCharacters(in: .whitespaces)
                    return t.isEmpty ? nil : t
                case let n as NSNumber: return n.stringValue // JSON true/false arrive as 1/0
                case nil, is NSNull: return nil
                default:
                    bad = "field '\(name)' has an unexpected JSON type"
                    return nil
                }
            }
        }
        let id = get("product_id"), url = get("image_url")
        func problem(_ message: String) -> Result<ManifestRow, ManifestProblem> {
            // An id or URL that breaks a rule is not echoed back as it is: it could hold
            // anything (a NUL, 10 MiB). The failure keeps a printable, bounded form of it.
            .failure(
                ManifestProblem(
                    line: record.line, productID: id.map(Self.printable), imageURL: url.map(Self.printable),
                    message: message))
        }
        if let bad { return problem(bad) }
        guard let id else { return problem("missing product_id") }
        if let p = rules.problem(id, as: .productID) { return problem(p) }
        guard let url else { return problem("missing image_url for product '\(id)'") }
        if let p = rules.problem(url, as: .imageURL) { return problem(p) }
        let location: ImageLocation
        switch ImageLocation.parse(url, baseDirectory: baseDirectory, rules: rules) {
        case .success(let l): location = l
        case .failure(let e): return problem("image_url: \(e.message)")
        }
        var product = Product(id: id, title: get("title"), category: get("category"), brand: get("brand"))
        if let p = rules.problem(product) { return problem(p) }
        if let v = get("in_stock") {
            guard let b = Self.bool(v) else { return problem("in_stock '\(v)' is not true/false/1/0/yes/no") }
            product.inStock = b
        }
        if let v = get("price") {
            guard let d = Double(v.replacingOccurrences(of: ",", with: "")), d.isFinite else {
                return problem("price '\(v)' is not a number")
            }
            product.price = d
        }
        if let bad { return problem(bad) }
        return .success(ManifestRow(line: record.line, product: product, imageURL: url, location: location))
    }

    /// `s` with control characters escaped (`\u{0}`) and cut to 200 characters: safe to put
    /// in a failure line or a log, and never mistaken for the stored value.
    package static func printable(_ s: String) -> String {
        var out = ""
        for scalar in s.unicodeScalars.prefix(200) {
            if InputRules.controlName(scalar) != nil {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return s.unicodeScalars.count > 200 ? out + "..." : out
    }

    package static func bool(_ v: String) -> Bool? {
        switch v.lowercased() {
        case "true", "t", "1", "yes", "y": return true
        case "false", "f", "0", "no", "n": return false
        default: return nil
        }
    }

    /// FNV-1a, 64-bit: stable across runs (Swift's `Hasher` is seeded per process).
    static func hash(_ s: String) -> UInt64 { FNV1a64.hash(s) }

    // MARK: Records

    private struct Record {
        var line: Int
        var fields: [String]
        /// Fields (by index) whose bytes are not valid UTF-8, with the reason. Their text in
        /// `fields` is empty: bytes are never replaced with U+FFFD and then used.
        var utf8Problems: [Int: String] = [:]

        init(line: Int) {
            self.line = line
            self.fields = []
        }

        mutating func append(_ bytes: some Collection<UInt8>) {
            if let p = InputRules.utf8Problem(bytes) {
                utf8Problems[fields.count] = p
                fields.append("")
            } else {
                fields.append(String(decoding: bytes, as: UTF8.self))
            }
        }
    }

    private func fill() -> Bool {
        if eof { return false }
        if position > 0 {
            buffer.removeFirst(position)
            position = 0
        }
        let chunk = handle.readData(ofLength: 1 << 20)
        if chunk.isEmpty {
            eof = true
            return false
        }
        buffer.append(contentsOf: chunk)
        return true
    }

    /// The next record: for JSON Lines one line as a single field; for CSV the fields of one
    /// record (which may span lines inside quotes); for TSV the tab-separated fields of a line.
    private func nextRecord() -> Record? {
        if position >= buffer.count && !fill() { return nil }
        let start = line + 1
        if format == .csv { return csvRecord(start: start) }
        var lineBytes: [UInt8] = []
        while true {
            if position >= buffer.count && !fill() { break }
            if let nl = buffer[position...].firstIndex(of: 10) {
                lineBytes += buffer[position..<nl]
                position = nl + 1
                break
            }
            lineBytes += buffer[position...]
            position = buffer.count
        }
        line += 1
        if lineBytes.last == 13 { lineBytes.removeLast() }
        var record = Record(line: start)
        if format == .jsonl {
            record.append(lineBytes)
        } else {
            for field in lineBytes.split(separator: 9, omittingEmptySubsequences: false) { record.append(field) }
        }
        return record
    }

    private func csvRecord(start: Int) -> Record? {
        var record = Record(line: start)
        var field: [UInt8] = []
        var quoted = false, inQuotes = false
        line += 1
        while true {
            if position >= buffer.count && !fill() {
                record.append(field)
                return record
            }
            let b = buffer[position]
            position += 1
            if inQuotes {
                if b == UInt8(ascii: "\"") {
                    if position >= buffer.count { _ = fill() }
                    if position < buffer.count && buffer[position] == UInt8(ascii: "\"") {
                        field.append(b)
                        position += 1
                    } else {
                        inQuotes = false
                    }
                } else {
                    if b == 10 { line += 1 }
                    field.append(b)
                }
                continue
            }
            switch b {
            case UInt8(ascii: "\""):
                if field.isEmpty && !quoted {
                    inQuotes = true
                    quoted = true
                } else {
                    field.append(b)
                }
            case UInt8(ascii: ","):
                record.append(field)
                field.removeAll(keepingCapacity: true)
                quoted = false
            case 13:
                continue
            case 10:
                record.append(field)
                return record
            default:
                field.append(b)
            }
        }
    }
}

/// The manifest itself cannot be read (a systemic error, unlike a bad row).
public struct ManifestError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

extension ManifestError: EwallFailure {
    public var failureCode: String { "invalid_manifest" }
    public var kind: FailureKind { .invalidRequest }
}
