import CFaissShim
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// The exact vectors beside a compressed index (IVF-SQ8, IVF-PQ), for re-ranking: the index
/// finds `factor × k` candidates by their codes, and their exact distances, read from this
/// file, choose the k answered. `vectors.f32` in the index folder: raw little-endian float32,
/// row i = the vector of int64 id i (zeros where an id is unused), no header; numpy reads it
/// with `np.fromfile(path, np.float32).reshape(-1, dimension)`.
///
/// The file is memory-mapped read-only, with `MADV_RANDOM`: only the rows that re-ranking
/// touches (about `factor × k` per query) are paged in, and the kernel may drop them again
/// under memory pressure, so `--max-memory` counts the codes, not these 8 KiB rows.
///
/// Safe because: the mapping is read-only and immutable after init; rows are only read.
public final class ExactVectors: @unchecked Sendable {
    public static let fileName = "vectors.f32"

    public let dimension: Int
    public var rows: Int { mapping.rows }
    private let mapping: MappedRows

    /// Maps an open file (the caller keeps or closes `fd`; the mapping outlives it).
    init(fd: Int32, dimension: Int, path: String) throws {
        self.dimension = dimension
        mapping = try MappedRows(fd: fd, path: path, rowBytes: dimension * 4, what: "\(dimension) float32")
    }

    /// Maps the file at `path`.
    public init(path: String, dimension: Int) throws {
        self.dimension = dimension
        mapping = try MappedRows(path: path, rowBytes: dimension * 4, what: "\(dimension) float32")
    }

    /// The row of `id` (borrowed from the mapping; valid while this object lives).
    func row(_ id: Int64) -> UnsafePointer<Float>? {
        mapping.row(id).map { $0.assumingMemoryBound(to: Float.self) }
    }

    /// A copy of the vector of `id`.
    public func vector(_ id: Int64) -> [Float]? {
        guard let r = row(id) else { return nil }
        return Array(UnsafeBufferPointer(start: r, count: dimension))
    }

    /// For each id, against `query`: the inner product, the stored vector's squared norm and
    /// the squared L2 distance, with the distance kernel in force (as ``FaissIndex/compare(_:ids:)``
    /// does from the index's own storage, but exact). `distances: false` leaves `l2` empty (an
    /// answer's cosine needs only the dots and norms).
    public func compare(
        _ query: [Float], ids: [Int64], distances: Bool = true
    ) throws -> (dot: [Float], norm2: [Float], l2: [Float]) {
        precondition(query.count == dimension)
        var dot = [Float](repeating: 0, count: ids.count), norm2 = dot
        var l2 = distances ? dot : []
        var err = ew_faiss_error()
        for (i, id) in ids.enumerated() {
            guard let r = row(id) else { throw IndexError(.notFound, "\(Self.fileName) has no row for id \(id)") }
            // Calls of the kernel in force: q·r, r·r and, when asked, |q - r|².
            guard ew_faiss_distances(Int32(EW_FAISS_METRIC_IP), query, r, 1, Int64(dimension), &dot[i], &err) == 0,
                ew_faiss_distances(Int32(EW_FAISS_METRIC_IP), r, r, 1, Int64(dimension), &norm2[i], &err) == 0,
                !distances
                    || ew_faiss_distances(Int32(EW_FAISS_METRIC_L2), query, r, 1, Int64(dimension), &l2[i], &err) == 0
            else {
                throw IndexError(err)
            }
        }
        return (dot, norm2, l2)
    }

    /// Re-ranks `candidates` (FAISS's, by their codes) by exact distance to `query` and keeps
    /// the best `k`, nearest first (ties by id).
    public func rerank(
        _ query: [Float], _ candidates: [(id: Int64, distance: Float)], k: Int,
        metric: IndexMetric
    ) throws -> [(id: Int64, distance: Float)] {
        var exact: [(id: Int64, distance: Float)] = []
        exact.reserveCapacity(candidates.count)
        var err = ew_faiss_error()
        for c in candidates {
            guard let r = row(c.id) else { throw IndexError(.notFound, "\(Self.fileName) has no row for id \(c.id)") }
            var d: Float = 0
            guard ew_faiss_distances(metric.raw, query, r, 1, Int64(dimension), &d, &err) == 0 else {
                throw IndexError(err)
            }
            exact.append((c.id, d))
        }
        exact.sort { a, b in
            a.distance != b.distance ? (metric == .l2 ? a.distance < b.distance : a.distance > b.distance) : a.id < b.id
        }
        return Array(exact.prefix(k))
    }
}

/// Writes `vectors.f32` while a build streams vectors by ascending id (gaps become zero rows).
final class ExactVectorsWriter {
    let url: URL
    let dimension: Int
    private let handle: FileHandle
    private var nextRow: Int64 = 0
    private var buffer = Data()

    init(url: URL, dimension: Int) throws {
        self.url = url
        self.dimension = dimension
        try? FileManager.default.removeItem(at: url)
        guard FileManager.default.createFile(atPath: url.path, contents: nil),
            let h = FileHandle(forWritingAtPath: url.path)
        else { throw IndexError(.io, "cannot write \(url.path)") }
        handle = h
    }

    func append(_ vectors: UnsafeBufferPointer<Float>, ids: [Int64]) throws {
        for (r, id) in ids.enumerated() {
            precondition(id >= nextRow, "ids must ascend")
            if id > nextRow { buffer.append(Data(count: Int(id - nextRow) * dimension * 4)) }
            buffer.append(UnsafeBufferPointer(rebasing: vectors[r * dimension..<(r + 1) * dimension]))
            nextRow = id + 1
            if buffer.count >= 8 << 20 { try flush() }
        }
    }

    private func flush() throws {
        try handle.write(contentsOf: buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    /// Flushes, syncs and closes; the file is then complete.
    func finish() throws {
        try flush()
        try handle.synchronize()
        try handle.close()
    }
}
