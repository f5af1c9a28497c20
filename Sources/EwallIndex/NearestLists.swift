import CFaissShim
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Each stored vector's nearest inverted lists, recorded when it was added, so that a search
/// *by a stored product* (similar-by-id, the server's main request) skips the coarse pass:
/// instead of its distance to every centroid (1,595 x 2,048 floats at 100k products, 4,000 at
/// 1M: a third of a busy server's CPU), our kernel computes its distance to the first few of
/// these 32 lists: 3 for nprobe up to 3, 7 up to 7, 15, 31. The recorded distance of the next
/// one (the 4th, 8th, 16th or 32nd, as FAISS computed it at add) bounds every list not
/// computed: when it proves (less the float error bound) that none of them could be among the
/// query's nprobe nearest, the search takes those; otherwise more of them, and after all 32,
/// or for nprobe 32 and up, the usual coarse pass. The answers are the same either way
/// (`ew_faiss_search_batch`, `nearest_lists`).
///
/// `nearest_lists.bin` in the index folder, written by full and incremental builds of IVF over
/// flat centroids with more than 32 lists: row i = int64 id i, 32 little-endian int32 list
/// numbers (nearest first; -1 in rows of unused ids) then 4 float32 (the distances of the 4th,
/// 8th, 16th and 32nd), no header: 144 bytes a product; numpy:
/// `np.fromfile(path, np.int32).reshape(-1, 36)` (the last 4 columns viewed as float32).
/// Memory-mapped read-only.
///
/// Safe because: the mapping is read-only and immutable after init.
public final class NearestLists: @unchecked Sendable {
    public static let fileName = "nearest_lists.bin"
    /// Lists recorded per vector (`EW_FAISS_NEAREST_LISTS`).
    public static let count = Int(EW_FAISS_NEAREST_LISTS)
    /// The ranks (1-based) whose recorded distances follow the lists in a row.
    public static let boundRanks = [4, 8, 16, 32]
    static let rowInts = count + boundRanks.count

    /// One vector's recorded lists and distances, borrowed from the mapping (valid while it lives).
    ///
    /// Safe because: the pointers point into a read-only mapping that outlives the row (see above); nothing writes through them.
    public struct Row: @unchecked Sendable {
        public let lists: UnsafePointer<Int32>
        /// The distances of the lists at ``NearestLists/boundRanks``.
        public let bounds: UnsafePointer<Float>
        public init(lists: UnsafePointer<Int32>, bounds: UnsafePointer<Float>) {
            self.lists = lists
            self.bounds = bounds
        }
    }

    /// Batched searches, process-wide since start, whose lists came from their recorded ones
    /// (`used`), and those that carried them but took the coarse pass (`declined`).
    public static var stats: (used: Int, declined: Int) {
        var used: Int64 = 0, declined: Int64 = 0
        ew_faiss_nearest_stats(&used, &declined)
        return (Int(used), Int(declined))
    }

    public var rows: Int { mapping.rows }
    private let mapping: MappedRows

    static var rowBytes: Int { rowInts * 4 }

    /// Maps an open file (the caller keeps or closes `fd`; the mapping outlives it).
    init(fd: Int32, path: String) throws {
        mapping = try MappedRows(fd: fd, path: path, rowBytes: Self.rowBytes, what: "\(Self.rowBytes) bytes")
    }

    public init(path: String) throws {
        mapping = try MappedRows(path: path, rowBytes: Self.rowBytes, what: "\(Self.rowBytes) bytes")
    }

    /// The recorded lists of `id`, or nil when it has none.
    public func row(_ id: Int64) -> Row? {
        guard let r = mapping.row(id)?.assumingMemoryBound(to: Int32.self), r[0] >= 0 else { return nil }
        return Row(lists: r, bounds: UnsafeRawPointer(r + Self.count).assumingMemoryBound(to: Float.self))
    }

    /// The whole mapping as rows of ``rowInts`` int32, by id (a second hop's table), nil when empty.
    var table: UnsafePointer<Int32>? { mapping.base?.assumingMemoryBound(to: Int32.self) }

    /// The raw bytes of rows 0..<n, for an incremental build that keeps them.
    func bytes(rows n: Int) -> Data {
        guard let base = mapping.base, n > 0 else { return Data() }
        return Data(bytes: base, count: min(n, rows) * Self.rowBytes)
    }
}

/// Writes `nearest_lists.bin` while a build adds vectors by ascending id (gaps: rows of -1).
final class NearestListsWriter {
    let url: URL
    private let handle: FileHandle
    private(set) var nextRow: Int64 = 0
    private var buffer = Data()

    /// `keeping`: the first `rows` rows of an older file come first (an incremental build).
    init(url: URL, keeping old: NearestLists? = nil, rows: Int = 0) throws {
        self.url = url
        try? FileManager.default.removeItem(at: url)
        guard FileManager.default.createFile(atPath: url.path, contents: nil),
            let h = FileHandle(forWritingAtPath: url.path)
        else { throw IndexError(.io, "cannot write \(url.path)") }
        handle = h
        if let old, rows > 0 {
            buffer = old.bytes(rows: rows)
            nextRow = Int64(buffer.count / NearestLists.rowBytes)
        }
    }

    /// Adds `vectors` to `index` under `ids` (ascending, from nextRow on), recording their lists.
    func add(_ vectors: UnsafeBufferPointer<Float>, ids: [Int64], to index: FaissIndex) throws {
        let (lists, bounds) = try index.addRecordingNearest(vectors, ids: ids)
        let (c, b) = (NearestLists.count, NearestLists.boundRanks.count)
        for (r, id) in ids.enumerated() {
            precondition(id >= nextRow, "ids must ascend")
            if id > nextRow { gap(Int(id - nextRow)) }
            lists.withUnsafeBufferPointer { buffer.append(UnsafeBufferPointer(rebasing: $0[r * c..<(r + 1) * c])) }
            bounds.withUnsafeBufferPointer { buffer.append(UnsafeBufferPointer(rebasing: $0[r * b..<(r + 1) * b])) }
            nextRow = id + 1
        }
        if buffer.count >= 8 << 20 { try flush() }
    }

    private func gap(_ n: Int) {
        buffer.append(Data(repeating: 0xff, count: n * NearestLists.rowBytes))
    }

    /// Pads to `rows` rows, flushes, syncs and closes; the file is then complete.
    func finish(rows: Int64) throws {
        if rows > nextRow {
            gap(Int(rows - nextRow))
            nextRow = rows
        }
        try flush()
        try handle.synchronize()
        try handle.close()
    }

    private func flush() throws {
        try handle.write(contentsOf: buffer)
        buffer.removeAll(keepingCapacity: true)
    }
}
