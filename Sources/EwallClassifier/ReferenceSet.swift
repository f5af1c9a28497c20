import Crypto
import EwallCore
import Foundation

/// Why the classifier could not answer, or could not start.
public struct ClassifierError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, Codable {
        /// The rules file is missing or malformed.
        case rules
        /// No category has a reference product (nothing set by a person has a vector).
        case noReferences = "no_references"
        case unknownProduct = "unknown_product"
        /// Vectors of different dimensions, or of another model than the references.
        case mismatch
        case argument
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// A product whose category a person set, with its vector: a candidate reference.
public struct LabelledVector: Sendable {
    public var productID: String
    public var category: String
    public var vector: [Float]

    public init(productID: String, category: String, vector: [Float]) {
        self.productID = productID
        self.category = category
        self.vector = vector
    }
}

/// The reference products of every category, as one matrix for BLAS.
///
/// Choice: for each category, its candidates (products a person filed under it) ordered by the
/// FNV-1a 64 hash of the product id, then the id; the first `maxReferences + 1` are kept.
/// The order is deterministic and spread across the id space (not the oldest or the
/// alphabetically first). A product is never its own reference: when it is one of the first
/// `maxReferences`, the next one in order takes its place, which is why one more is kept.
///
/// Rows are L2-normalised copies, so a dot product is the cosine.
public struct ReferenceSet: Sendable {
    /// One category's references.
    public struct Category: Sendable, Codable, Hashable {
        public var name: String
        /// Rows of ``ReferenceSet/matrix``, in choice order (up to `maxReferences + 1`).
        public var rows: [Int]
        /// All products a person filed under it that have a vector.
        public var available: Int
    }

    public let maxReferences: Int
    public let dimension: Int
    /// Categories by name.
    public let categories: [Category]
    /// `rows x dimension` floats, row-major, each row unit length.
    public let matrix: [Float]
    public let rowIDs: [String]
    public let rowCategory: [Int]
    /// Row of a reference product.
    public let rowOf: [String: Int]
    /// `rows x rows` Gram matrix of the references (for the centroid method's norms).
    let gram: [Float]
    /// SHA-256 over every chosen reference: its category, id and vector bytes.
    public let fingerprint: String

    public var count: Int { rowIDs.count }

    /// Chooses references from the candidates (every product a person filed, with its vector).
    public init(candidates: [LabelledVector], maxReferences: Int = 10) throws {
        let byCategory = Dictionary(grouping: candidates, by: \.category)
        var chosen: [LabelledVector] = []
        for (_, list) in byCategory {
            let byID = Dictionary(list.map { ($0.productID, $0) }, uniquingKeysWith: { a, _ in a })
            chosen += Self.choose(Array(byID.keys), count: maxReferences + 1).map { byID[$0]! }
        }
        try self.init(chosen: chosen, available: byCategory.mapValues(\.count), maxReferences: maxReferences)
    }

    /// References already chosen with ``choose(_:count:)`` (up to `maxReferences + 1` per
    /// category), and how many candidates each category had: what a store-backed build passes,
    /// having read only the chosen vectors.
    public init(chosen: [LabelledVector], available: [String: Int], maxReferences: Int) throws {
        guard maxReferences >= 1 else { throw ClassifierError(.argument, "max references must be at least 1") }
        let byCategory = Dictionary(grouping: chosen, by: \.category)
        var dims = Set(chosen.map(\.vector.count))
        dims.remove(0)
        guard dims.count <= 1 else {
            throw ClassifierError(.mismatch, "reference vectors have several dimensions: \(dims.sorted())")
        }
        let d = dims.first ?? 0
        var categories: [Category] = []
        var matrix: [Float] = []
        var rowIDs: [String] = []
        var rowCategory: [Int] = []
        var hasher = SHA256()
        for name in byCategory.keys.sorted() {
            let order = Self.choose(byCategory[name]!.map(\.productID), count: maxReferences + 1)
            let byID = Dictionary(byCategory[name]!.map { ($0.productID, $0) }, uniquingKeysWith: { a, _ in a })
            var rows: [Int] = []
            for c in order.map({ byID[$0]! }) {
                rows.append(rowIDs.count)
                rowIDs.append(c.productID)
                rowCategory.append(categories.count)
                matrix += Vectors.normalised(c.vector)
                hasher.update(data: Data("\(name)\u{0}\(c.productID)\u{0}".utf8))
                c.vector.withUnsafeBytes { hasher.update(bufferPointer: $0) }
            }
            categories.append(Category(name: name, rows: rows, available: available[name] ?? rows.count))
        }
        self.maxReferences = maxReferences
        self.dimension = d
        self.categories = categories
        self.matrix = matrix
        self.rowIDs = rowIDs
        self.rowCategory = rowCategory
        self.rowOf = Dictionary(rowIDs.enumerated().map { ($1, $0) }, uniquingKeysWith: { a, _ in a })
        self.gram =
            rowIDs.isEmpty
            ? [] : Matrix.productTransposed(matrix, rows: rowIDs.count, matrix, rows: rowIDs.count, dimension: d)
        self.fingerprint = hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }

    /// The documented choice order: FNV-1a 64 of the product id, then the id's bytes.
    public static func choose(_ productIDs: [String], count: Int) -> [String] {
        Array(
            productIDs.map { (FNV1a64.hash($0), $0) }
                .sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1.utf8.lexicographicallyPrecedes($1.1.utf8) }
                .prefix(count).map(\.1))
    }

    /// The rows a product is scored against in one category: the first `maxReferences` that
    /// are not the product itself.
    public func rows(of category: Int, excludingRow selfRow: Int?) -> ArraySlice<Int> {
        let rows = categories[category].rows
        guard let selfRow, let at = rows.prefix(maxReferences).firstIndex(of: selfRow) else {
            return rows.prefix(maxReferences)
        }
        var out = Array(rows.prefix(maxReferences + 1))
        out.remove(at: at)
        return ArraySlice(out.prefix(maxReferences))
    }

    /// The ids of those references (for explanations and tests).
    public func referenceIDs(category: String, excluding productID: String? = nil) -> [String] {
        guard let c = categories.firstIndex(where: { $0.name == category }) else { return [] }
        return rows(of: c, excludingRow: productID.flatMap { rowOf[$0] }).map { rowIDs[$0] }
    }
}

/// Small vector helpers.
enum Vectors {
    static func normalised(_ v: [Float]) -> [Float] {
        var s: Float = 0
        for x in v { s += x * x }
        let n = s.squareRoot()
        return n > 0 ? v.map { $0 / n } : v
    }
}

extension ClassifierError: EwallFailure {
    public var failureCode: String { code.rawValue }
    public var kind: FailureKind {
        switch code {
        case .rules, .argument: .invalidRequest
        case .unknownProduct: .notFound
        case .noReferences, .mismatch: .unavailable
        }
    }
}
