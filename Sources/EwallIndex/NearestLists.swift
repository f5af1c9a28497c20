import CFaissShim
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Each stored vector's nearest inverted lists, recorded when it was added, so that a search
/// *by a stored product* (similar-by-id, the server's main request) skips the coarse pass:
/// instead of its distance to every centroid (1,595 x 2,048 floats at 100k products, 4,000 at
/// 1M: a third of a busy server's CPU), our kernel computes its distance to these `count`
/// lists only. The recorded distance of the last of them bounds all the others: when it proves
/// (less the float error bound) that no other list could be among the query's nprobe nearest,
/// the search takes them; otherwise, or when nprobe exceeds `count`, the usual coarse pass. The
/// answers are the same either way (`ew_faiss_search_batch`, `nearest_lists`).
///
/// `nearest_lists.bin` in the index folder, written by full and incremental IVF builds over a
/// flat quantizer: row i = int64 id i, `count` little-endian int32 list numbers (nearest
/// first, -1 in rows of unused ids) and one float32 (the last one's distance as FAISS computed
/// it at add), no header; numpy: `np.fromfile(path, np.int32).reshape(-1, count + 1)` (the
/// last column viewed as float32). Memory-mapped read-only; 132 bytes a product at count 32.
public final class NearestLists: @unchecked Sendable {
    public static let fileName = "nearest_lists.bin"
    /// Lists recorded per vector: filtered searches that deepen past it take the coarse pass.
    public static let defaultCount = 32

    /// One vector's recorded lists, borrowed from the mapping (valid while it lives).
    public struct Row: @unchecked Sendable {
        public let lists: UnsafePointer<Int32>
        public let count: Int
        public let bound: Float
        public init(lists: UnsafePointer<Int32>, count: Int, bound: Float) {
            self.lists = lists
            self.count = count
            self.bound = bound
        }
    }

    /// Batched searches, process-wide since start, whose lists came from their recorded ones
    /// (`used`), and those that carried them but took the coarse pass (`declined`).
    public static var stats: (used: Int, declined: Int) {
        var used: Int64 = 0, declined: Int64 = 0
        ew_faiss_nearest_stats(&used, &declined)
        return (Int(used), Int(declined))
    }

    public let count: Int
    public let rows: Int
    private let base: UnsafePointer<Int32>?
    private let length: Int

    var rowBytes: Int { (count + 1) * 4 }

    /// Maps an open file (the caller keeps or closes `fd`; the mapping outlives it).
    init(fd: Int32, count: Int, path: String) throws {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw IndexError(.io, "cannot stat \(path)") }
        let size = Int(st.st_size)
        guard count > 0, size % ((count + 1) * 4) == 0 else {
            throw IndexError(.manifest, "\(path) has \(size) bytes, not whole rows of \(count) lists and a bound")
        }
        self.count = count
        rows = size / ((count + 1) * 4)
        length = size
        if size == 0 {
            base = nil
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw IndexError(.io, "cannot map \(path): \(String(cString: strerror(errno)))")
        }
        _ = madvise(p, size, MADV_RANDOM)
        base = UnsafePointer(p.assumingMemoryBound(to: Int32.self))
    }

    public convenience init(path: String, count: Int) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IndexError(.io, "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        try self.init(fd: fd, count: count, path: path)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), length) }
    }

    /// The recorded lists of `id`, or nil when it has none.
    public func row(_ id: Int64) -> Row? {
        guard let base, id >= 0, id < rows else { return nil }
        let r = base + Int(id) * (count + 1)
        guard r[0] >= 0 else { return nil }
        return Row(lists: r, count: count, bound: Float(bitPattern: UInt32(bitPattern: r[count])))
    }

    /// The raw bytes of rows 0..<n, for an incremental build that keeps them.
    func bytes(rows n: Int) -> Data {
        guard let base, n > 0 else { return Data() }
        return Data(bytes: base, count: min(n, rows) * rowBytes)
    }
}

/// Writes `nearest_lists.bin` while a build adds vectors by ascending id (gaps: rows of -1).
final class NearestListsWriter {
    let url: URL
    let count: Int
    private let handle: FileHandle
    private(set) var nextRow: Int64 = 0
    private var buffer = Data()

    init(url: URL, count: Int, keeping old: NearestLists? = nil, rows: Int = 0) throws {
        self.url = url
        self.count = count
        try? FileManager.default.removeItem(at: url)
        guard FileManager.default.createFile(atPath: url.path, contents: nil),
              let h = FileHandle(forWritingAtPath: url.path) else { throw IndexError(.io, "cannot write \(url.path)") }
        handle = h
        if let old, rows > 0 {
            precondition(old.count == count, "kept rows of another width")
            buffer = old.bytes(rows: rows)
            nextRow = Int64(buffer.count / ((count + 1) * 4))
        }
    }

    /// Adds `vectors` to `index` under `ids` (ascending, from nextRow on), recording their lists.
    func add(_ vectors: UnsafeBufferPointer<Float>, ids: [Int64], to index: FaissIndex) throws {
        let (lists, bounds) = try index.add(vectors, ids: ids, nearest: count)
        for (r, id) in ids.enumerated() {
            precondition(id >= nextRow, "ids must ascend")
            if id > nextRow { gap(Int(id - nextRow)) }
            lists.withUnsafeBufferPointer { buffer.append(UnsafeBufferPointer(rebasing: $0[r * count..<(r + 1) * count])) }
            withUnsafeBytes(of: bounds[r].bitPattern.littleEndian) { buffer.append(contentsOf: $0) }
            nextRow = id + 1
        }
        if buffer.count >= 8 << 20 { try flush() }
    }

    private func gap(_ n: Int) {
        buffer.append(Data(repeating: 0xff, count: n * (count + 1) * 4))
    }

    /// Pads to `rows` rows, flushes, syncs and closes; the file is then complete.
    func finish(rows: Int64) throws {
        if rows > nextRow { gap(Int(rows - nextRow)); nextRow = rows }
        try flush()
        try handle.synchronize()
        try handle.close()
    }

    private func flush() throws {
        try handle.write(contentsOf: buffer)
        buffer.removeAll(keepingCapacity: true)
    }
}
