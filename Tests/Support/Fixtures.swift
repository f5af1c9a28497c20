import EwallCore
import Foundation

/// Where the test data lives. Everything under `.fixtures/` and `data/samples/` is made by
/// committed scripts (`make fixtures`, `make samples`); `make test` makes it first.
public enum Fixtures {
    /// The repository root, found from this file's path.
    public static let root: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    public static func path(_ relative: String) -> String { root.appendingPathComponent(relative).path }

    public static func image(_ name: String) -> String { path(".fixtures/images/\(name)") }
    public static func torch(_ name: String) -> String { path(".fixtures/torch/\(name)") }
    public static var model: String { path("models/resnet50.pt") }

    public struct Missing: Error, CustomStringConvertible {
        public var description: String
        public init(description: String) { self.description = description }
    }

    /// The bytes of a fixture file; a clear error naming `make fixtures` when it is missing.
    public static func bytes(_ path: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Missing(description: "fixture \(path) is missing: run `make fixtures` (make test does)")
        }
        return [UInt8](data)
    }

    /// The files the Python reference processed, in order (`.fixtures/reference/files.txt`).
    public static func referenceFiles() throws -> [String] {
        let list = path(".fixtures/reference/files.txt")
        guard let text = try? String(contentsOfFile: list, encoding: .utf8) else {
            throw Missing(description: "\(list) is missing: run `make fixtures` (make test does)")
        }
        return text.split(separator: "\n").map { path(String($0)) }
    }

    /// A reference `.npy` array from `.fixtures/reference/`.
    public static func reference(_ name: String) throws -> (shape: [Int], values: [Float]) {
        let p = path(".fixtures/reference/\(name)")
        guard let data = FileManager.default.contents(atPath: p) else {
            throw Missing(description: "\(p) is missing: run `make fixtures` (make test does)")
        }
        return try Npy.decode(data)
    }

    /// The sample photos (`data/samples/photos`), sorted.
    public static func photos() throws -> [String] {
        let dir = path("data/samples/photos")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        guard names.count >= 20 else {
            throw Missing(description: "\(dir) has \(names.count) photos: run `make samples` (make test does)")
        }
        return names.sorted().map { "\(dir)/\($0)" }
    }
}

/// Vector maths for comparing embeddings.
public enum VectorMath {
    public static func dot(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Double {
        zip(a, b).reduce(0) { $0 + Double($1.0) * Double($1.1) }
    }

    public static func cosine(_ a: [Float], _ b: [Float]) -> Double {
        let d = dot(a[...], b[...])
        return d / (dot(a[...], a[...]).squareRoot() * dot(b[...], b[...]).squareRoot())
    }

    public static func norm(_ a: [Float]) -> Double { dot(a[...], a[...]).squareRoot() }

    /// The element-wise mean of equally long vectors.
    public static func mean(_ rows: [[Float]]) -> [Float] {
        var m = [Double](repeating: 0, count: rows[0].count)
        for r in rows { for (i, v) in r.enumerated() { m[i] += Double(v) } }
        return m.map { Float($0 / Double(rows.count)) }
    }

    /// Cosine after subtracting `center` from both: raw cosine says little when all vectors
    /// point nearly the same way, as ResNet features (non-negative) do.
    public static func centeredCosine(_ a: [Float], _ b: [Float], center: [Float]) -> Double {
        cosine(zip(a, center).map { $0 - $1 }, zip(b, center).map { $0 - $1 })
    }

    /// Indices of the k nearest rows to row i by cosine (i itself excluded).
    public static func neighbours(_ rows: [[Float]], of i: Int, k: Int) -> Set<Int> {
        let scored = rows.indices.filter { $0 != i }.map { ($0, cosine(rows[i], rows[$0])) }
        return Set(scored.sorted { $0.1 > $1.1 }.prefix(k).map { $0.0 })
    }

    /// Mean over rows of |kNN(a) ∩ kNN(b)| / k.
    public static func knnOverlap(_ a: [[Float]], _ b: [[Float]], k: Int) -> Double {
        let total = a.indices.reduce(0.0) { acc, i in
            acc + Double(neighbours(a, of: i, k: k).intersection(neighbours(b, of: i, k: k)).count) / Double(k)
        }
        return total / Double(a.count)
    }

    /// Splits a flat [n, d] array into rows.
    public static func rows(_ flat: [Float], dim: Int) -> [[Float]] {
        stride(from: 0, to: flat.count, by: dim).map { Array(flat[$0..<$0 + dim]) }
    }
}
