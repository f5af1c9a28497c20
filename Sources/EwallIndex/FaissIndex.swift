import CFaissShim
import EwallCore
import Foundation

/// The distance an index ranks by. `l2` is the platform's (FAISS returns it squared);
/// `ip` is the inner product, the cosine for L2-normalised vectors.
public enum IndexMetric: String, Sendable, Codable, CaseIterable {
    case l2, ip

    var raw: Int32 { self == .l2 ? Int32(EW_FAISS_METRIC_L2) : Int32(EW_FAISS_METRIC_IP) }
}

/// A FAISS failure, with the shim's code and FAISS's own message.
public struct IndexError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case argument, factory, notTrained = "not_trained", unsupported, io, notFound = "not_found", memory, faiss
        // Above the shim: the index folder and the similar-products search.
        case manifest, locked, mismatch, unknownProduct = "unknown_product", noVector = "no_vector"
    }
    public var code: Code
    public var message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }

    init(_ e: ew_faiss_error) {
        let message = withUnsafeBytes(of: e.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let code: Code =
            switch e.code {
            case Int32(EW_FAISS_E_ARGUMENT): .argument
            case Int32(EW_FAISS_E_FACTORY): .factory
            case Int32(EW_FAISS_E_NOT_TRAINED): .notTrained
            case Int32(EW_FAISS_E_UNSUPPORTED): .unsupported
            case Int32(EW_FAISS_E_IO): .io
            case Int32(EW_FAISS_E_NOT_FOUND): .notFound
            case Int32(EW_FAISS_E_MEMORY): .memory
            default: .faiss
            }
        self.init(code, message)
    }
}

/// Which ids a search may return: a bitmap over the int64 ids (bit set = allowed).
public struct IDBitmap: Sendable, Hashable {
    public private(set) var bytes: [UInt8]
    public let capacity: Int

    public init(capacity: Int) {
        self.capacity = capacity
        bytes = [UInt8](repeating: 0, count: (capacity + 7) / 8)
    }

    public mutating func insert(_ id: Int64) {
        precondition(id >= 0 && id < capacity, "id \(id) outside the bitmap")
        bytes[Int(id >> 3)] |= 1 << UInt8(id & 7)
    }

    public func contains(_ id: Int64) -> Bool {
        id >= 0 && id < capacity && (bytes[Int(id >> 3)] >> UInt8(id & 7)) & 1 == 1
    }

    public mutating func remove(_ id: Int64) {
        precondition(id >= 0 && id < capacity, "id \(id) outside the bitmap")
        bytes[Int(id >> 3)] &= ~(1 << UInt8(id & 7))
    }

    /// The ids in both.
    public func intersection(_ other: IDBitmap) -> IDBitmap {
        var out = IDBitmap(capacity: min(capacity, other.capacity))
        for i in out.bytes.indices { out.bytes[i] = bytes[i] & other.bytes[i] }
        return out
    }

    /// The ids in this one and not in `other`.
    public func subtracting(_ other: IDBitmap) -> IDBitmap {
        var out = self
        for i in 0..<min(bytes.count, other.bytes.count) { out.bytes[i] = bytes[i] & ~other.bytes[i] }
        return out
    }

    public var count: Int {
        // Eight bytes per popcount (a byte at a time took ~4% of a busy server's CPU at 100k:
        // every similar request counts its filter).
        bytes.withUnsafeBytes { raw in
            let words = raw.count / 8
            var n = 0
            for w in 0..<words { n += raw.loadUnaligned(fromByteOffset: w * 8, as: UInt64.self).nonzeroBitCount }
            for b in (words * 8)..<raw.count { n += raw[b].nonzeroBitCount }
            return n
        }
    }
}

/// Per-call search settings; `nil` keeps the index's own.
public struct SearchParameters: Sendable {
    /// IVF: inverted lists to visit.
    public var nprobe: Int?
    /// HNSW: size of the candidate list.
    public var efSearch: Int?
    /// Only these ids may be returned.
    public var allowed: IDBitmap?
    /// These ids are never returned (e.g. the query product).
    public var excluded: [Int64]
    /// ``FaissIndex/searchBatch(_:k:)`` with an IVF index: the query is this stored vector,
    /// with its nearest lists as recorded at add (``NearestLists``); the coarse pass then reads
    /// only those where they prove enough. The same answers either way.
    public var nearest: NearestLists.Row?
    /// IVF: after the nprobe lists, a second hop through the recorded lists of the best found
    /// (``SecondHop``); nil: a stock FAISS search.
    public var hop: SecondHop?

    public init(
        nprobe: Int? = nil, efSearch: Int? = nil, allowed: IDBitmap? = nil, excluded: [Int64] = [],
        nearest: NearestLists.Row? = nil, hop: SecondHop? = nil
    ) {
        self.nprobe = nprobe
        self.efSearch = efSearch
        self.allowed = allowed
        self.excluded = excluded
        self.nearest = nearest
        self.hop = hop
    }

    /// IVF, when a filter left fewer than k: doubles nprobe (at most `listCount`) for the next
    /// search and says whether there is one. The one rule ``ProductSearch`` serves and the
    /// build's filtered recall measures, so both count the same searches.
    public mutating func deepenIVF(listCount: Int) -> Bool {
        let p = nprobe ?? 1
        guard p < listCount else { return false }
        nprobe = min(listCount, p * 2)
        return true
    }
}

/// The second hop of an IVF search: once the first nprobe lists are scanned, the first `lists`
/// recorded lists (``NearestLists``) of each of the `top` best vectors found, not visited yet,
/// are scanned too, with the same filter, and the k best of both passes kept. A product's
/// neighbours lie in lists near its other neighbours, also where a hub list (the mean of many
/// clusters) ranks first for the query and the lists that hold its neighbours rank far down;
/// this reaches them without a deeper nprobe (`ew_faiss_search_params.hop_*`).
/// `maxList`: lists of more entries are left out of the hop (hubs: costly to scan, seldom
/// where the missing neighbours are); nil: none left out.
public struct SecondHop: Sendable {
    public let table: NearestLists
    public var top: Int
    public var lists: Int
    public var maxList: Int?

    public init(table: NearestLists, top: Int, lists: Int, maxList: Int? = nil) {
        self.table = table
        self.top = top
        self.lists = lists
        self.maxList = maxList
    }
}

/// The answer to a search of `queries` queries: `k` (distance, id) pairs each, nearest first.
/// Missing results have id -1. Distances are FAISS's: squared L2 for `l2`, inner product for `ip`.
public struct Neighbours: Sendable {
    public let k: Int
    public var distances: [Float]
    public var ids: [Int64]

    public var queries: Int { k == 0 ? 0 : ids.count / k }

    /// The results of one query, without the missing ones: FAISS marks a missing result with
    /// id -1, but Debian's 1.7.3 answers a filtered search that allows nothing with id 0 at
    /// distance +inf when k = 1, so a result must also have a finite distance.
    public func results(of query: Int) -> [(id: Int64, distance: Float)] {
        (query * k..<(query + 1) * k).compactMap {
            ids[$0] >= 0 && distances[$0].isFinite ? (ids[$0], distances[$0]) : nil
        }
    }
}

/// A FAISS index behind the CFaissShim header. Every kind takes caller-chosen int64 ids.
///
/// Thread safety (the shim's contract): `search`, `reconstruct`, `write` and the getters may run
/// from many tasks at once; `train`, `add` and `remove` need the index to themselves. The
/// index builder owns an index while it changes it; a searcher only reads.
///
/// Safe because: the handle is immutable; the shim allows concurrent reads, and the builder that mutates an index owns it alone (above).
public final class FaissIndex: @unchecked Sendable {
    public enum Kind: String, Sendable, Codable { case flat, ivf, hnsw, other }

    private let handle: OpaquePointer

    /// An empty index from a FAISS `index_factory` string ("Flat", "IVF1024,Flat", "HNSW32",
    /// "IVF4096,PQ64x8np", ...). Kinds without their own ids are wrapped in IDMap2.
    public init(dimension: Int, factory: String, metric: IndexMetric) throws {
        var out: OpaquePointer?
        var err = ew_faiss_error()
        guard ew_faiss_new(Int64(dimension), factory, metric.raw, &out, &err) == 0, let out else {
            throw IndexError(err)
        }
        handle = out
    }

    /// Reads an index file. `memoryMapped` maps IVF inverted lists read-only instead of loading them.
    public init(contentsOf path: String, memoryMapped: Bool = false) throws {
        var out: OpaquePointer?
        var err = ew_faiss_error()
        guard ew_faiss_read(path, memoryMapped ? 1 : 0, &out, &err) == 0, let out else { throw IndexError(err) }
        handle = out
    }

    deinit { ew_faiss_free(handle) }

    /// Sets FAISS's OpenMP thread count (process-wide); returns the count in force.
    @discardableResult
    public static func setThreads(_ n: Int) -> Int { Int(ew_faiss_set_threads(Int32(n))) }

    /// Sets OpenBLAS's thread count (process-wide; FAISS's batched work and our batched coarse
    /// pass call it); returns the count in force, or 0 when the BLAS is not OpenBLAS. With 1,
    /// each call runs on its caller's thread, so several search threads run theirs side by side.
    @discardableResult
    public static func setBLASThreads(_ n: Int) -> Int { Int(ew_faiss_set_blas_threads(Int32(n))) }

    public var count: Int { Int(ew_faiss_ntotal(handle)) }
    public var dimension: Int { Int(ew_faiss_dim(handle)) }
    public var metric: IndexMetric { ew_faiss_metric(handle) == Int32(EW_FAISS_METRIC_IP) ? .ip : .l2 }
    public var isTrained: Bool { ew_faiss_is_trained(handle) != 0 }
    public var canRemove: Bool { ew_faiss_can_remove(handle) != 0 }
    /// IVF: the number of inverted lists; 0 otherwise.
    public var listCount: Int { Int(ew_faiss_nlist(handle)) }
    /// IVF: the entries of the longest inverted list (0 for other kinds).
    public var largestList: Int { Int(ew_faiss_largest_list(handle)) }
    /// The factory string, with any IDMap2 wrapping explicit.
    public var factory: String { String(cString: ew_faiss_factory(handle)) }
    public var kind: Kind {
        switch ew_faiss_kind(handle) {
        case Int32(EW_FAISS_KIND_FLAT): .flat
        case Int32(EW_FAISS_KIND_IVF): .ivf
        case Int32(EW_FAISS_KIND_HNSW): .hnsw
        default: .other
        }
    }

    /// Makes room for `count` vectors in flat kinds, so the build does not copy the array as it grows.
    public func reserve(_ count: Int) throws {
        var err = ew_faiss_error()
        guard ew_faiss_reserve(handle, Int64(count), &err) == 0 else { throw IndexError(err) }
    }

    /// The search settings the index keeps and writes to its file (Python's `read_index` then
    /// searches the same way).
    public func setDefaults(nprobe: Int?, efSearch: Int?) throws {
        var err = ew_faiss_error()
        guard ew_faiss_set_defaults(handle, Int64(nprobe ?? 0), Int64(efSearch ?? 0), &err) == 0 else {
            throw IndexError(err)
        }
    }

    public func train(_ vectors: UnsafeBufferPointer<Float>) throws {
        precondition(vectors.count % dimension == 0)
        var err = ew_faiss_error()
        guard ew_faiss_train(handle, Int64(vectors.count / dimension), vectors.baseAddress, &err) == 0 else {
            throw IndexError(err)
        }
    }

    /// Trains an IVF index and splits the lists that hold more than `maxListFactor` times the
    /// mean share of the training vectors (hub centroids) into lists of about the mean; other
    /// kinds train as ``train(_:)`` does. Returns the list count and how many were split; the
    /// index then reports its real list count in ``factory`` and ``listCount``.
    @discardableResult
    public func train(_ vectors: UnsafeBufferPointer<Float>, maxListFactor: Double) throws -> (lists: Int, split: Int) {
        precondition(vectors.count % dimension == 0)
        var err = ew_faiss_error()
        var lists: Int64 = 0, split: Int64 = 0
        guard
            ew_faiss_train_balanced(
                handle, Int64(vectors.count / dimension), vectors.baseAddress, maxListFactor,
                &lists, &split, &err) == 0
        else {
            throw IndexError(err)
        }
        return (Int(lists), Int(split))
    }

    public func add(_ vectors: UnsafeBufferPointer<Float>, ids: [Int64]) throws {
        precondition(vectors.count == ids.count * dimension, "vectors and ids disagree")
        var err = ew_faiss_error()
        guard ew_faiss_add(handle, Int64(ids.count), vectors.baseAddress, ids, &err) == 0 else { throw IndexError(err) }
    }

    public func add(_ vectors: [Float], ids: [Int64]) throws {
        try vectors.withUnsafeBufferPointer { try add($0, ids: ids) }
    }

    /// IVF over a flat quantizer of more than 32 lists: the lists ``NearestLists`` can be
    /// recorded for (nlist), else 0.
    public var probedLists: Int { Int(ew_faiss_probed_lists(handle)) }

    /// Adds as ``add(_:ids:)`` and returns each vector's 32 nearest lists (nearest first, 32 per
    /// vector) and the distances of its 4th, 8th, 16th and 32nd (4 per vector), from the same
    /// coarse pass.
    public func addRecordingNearest(
        _ vectors: UnsafeBufferPointer<Float>, ids: [Int64]
    ) throws -> (lists: [Int32], bounds: [Float]) {
        precondition(vectors.count == ids.count * dimension, "vectors and ids disagree")
        var lists = [Int32](repeating: -1, count: ids.count * NearestLists.count)
        var bounds = [Float](repeating: 0, count: ids.count * NearestLists.boundRanks.count)
        var err = ew_faiss_error()
        guard ew_faiss_add_probed(handle, Int64(ids.count), vectors.baseAddress, ids, &lists, &bounds, &err) == 0 else {
            throw IndexError(err)
        }
        return (lists, bounds)
    }

    /// Removes these ids; returns how many were present.
    @discardableResult
    public func remove(ids: [Int64]) throws -> Int {
        var removed: Int64 = 0
        var err = ew_faiss_error()
        guard ew_faiss_remove(handle, Int64(ids.count), ids, &removed, &err) == 0 else { throw IndexError(err) }
        return Int(removed)
    }

    /// The `k` nearest neighbours of each query (`queries.count / dimension` of them).
    public func search(
        _ queries: [Float], k: Int, parameters: SearchParameters = SearchParameters()
    ) throws -> Neighbours {
        precondition(queries.count % dimension == 0)
        let n = queries.count / dimension
        var distances = [Float](repeating: 0, count: n * k)
        var ids = [Int64](repeating: -1, count: n * k)
        var err = ew_faiss_error()
        let rc: Int32 = parameters.excluded.withUnsafeBufferPointer { excluded in
            withBitmap(parameters.allowed) { bitmap, bits in
                var p = ew_faiss_search_params(
                    nprobe: Int64(parameters.nprobe ?? 0), ef_search: Int64(parameters.efSearch ?? 0),
                    allow_bitmap: bitmap, allow_bits: bits,
                    exclude: excluded.baseAddress, n_exclude: excluded.count,
                    nearest_lists: nil, nearest_bounds: nil,
                    hop_table: parameters.hop?.table.table, hop_rows: Int64(parameters.hop?.table.rows ?? 0),
                    hop_top: Int32(clamping: parameters.hop?.top ?? 0),
                    hop_lists: Int32(clamping: parameters.hop?.lists ?? 0),
                    hop_max_list: Int64(parameters.hop?.maxList ?? 0))
                return withExtendedLifetime(parameters.hop?.table) {
                    ew_faiss_search(handle, Int64(n), queries, Int64(k), &p, &distances, &ids, &err)
                }
            }
        }
        guard rc == 0 else { throw IndexError(err) }
        return Neighbours(k: k, distances: distances, ids: ids)
    }

    /// The `k` nearest neighbours of several queries at once, each with its own parameters
    /// (nprobe, filter): the same answers as one `search` per query, cheaper together (IVF: one
    /// coarse pass for all, one product of all queries with all centroids from 4 queries on,
    /// and none for queries with their ``SearchParameters/nearest`` lists; see `ew_faiss_search_batch`).
    public func searchBatch(_ queries: [(vector: [Float], parameters: SearchParameters)], k: Int) throws -> [Neighbours]
    {
        let n = queries.count
        guard n > 0 else { return [] }
        let d = dimension
        var flat = [Float]()
        flat.reserveCapacity(n * d)
        for q in queries {
            precondition(q.vector.count == d, "a query has \(q.vector.count) dims, the index \(d)")
            flat += q.vector
        }
        var distances = [Float](repeating: 0, count: n * k)
        var ids = [Int64](repeating: -1, count: n * k)
        var err = ew_faiss_error()
        // The filters' buffers must stay valid through the call: pin each in turn, then call.
        func pinned(_ i: Int, _ params: inout [ew_faiss_search_params]) -> Int32 {
            if i == n {
                return ew_faiss_search_batch(handle, Int64(n), flat, Int64(k), params, &distances, &ids, &err)
            }
            let p = queries[i].parameters
            return p.excluded.withUnsafeBufferPointer { excluded in
                withBitmap(p.allowed) { bitmap, bits in
                    params.append(
                        ew_faiss_search_params(
                            nprobe: Int64(p.nprobe ?? 0), ef_search: Int64(p.efSearch ?? 0),
                            allow_bitmap: bitmap, allow_bits: bits,
                            exclude: excluded.baseAddress, n_exclude: excluded.count,
                            nearest_lists: p.nearest?.lists, nearest_bounds: p.nearest?.bounds,
                            hop_table: p.hop?.table.table, hop_rows: Int64(p.hop?.table.rows ?? 0),
                            hop_top: Int32(clamping: p.hop?.top ?? 0), hop_lists: Int32(clamping: p.hop?.lists ?? 0),
                            hop_max_list: Int64(p.hop?.maxList ?? 0)))
                    return pinned(i + 1, &params)
                }
            }
        }
        var params: [ew_faiss_search_params] = []
        params.reserveCapacity(n)
        guard pinned(0, &params) == 0 else { throw IndexError(err) }
        return (0..<n).map { i in
            Neighbours(k: k, distances: Array(distances[i * k..<(i + 1) * k]), ids: Array(ids[i * k..<(i + 1) * k]))
        }
    }

    /// The stored vector of `id` (approximate for compressed kinds such as PQ).
    public func reconstruct(id: Int64) throws -> [Float] {
        var out = [Float](repeating: 0, count: dimension)
        var err = ew_faiss_error()
        guard ew_faiss_reconstruct(handle, id, &out, &err) == 0 else { throw IndexError(err) }
        return out
    }

    /// For each id, against the vector the index stores for it (approximate for compressed kinds):
    /// the inner product with `query`, that vector's squared norm, and the squared L2 distance.
    /// One call for all ids; the vectors stay in FAISS. Throws `.notFound` for an id it does not hold.
    /// `distances: false` leaves `l2` empty (an answer's cosine needs only the dots and norms).
    public func compare(
        _ query: [Float], ids: [Int64], distances: Bool = true
    ) throws -> (dot: [Float], norm2: [Float], l2: [Float]) {
        precondition(query.count == dimension, "the query has \(query.count) dims, the index \(dimension)")
        var dot = [Float](repeating: 0, count: ids.count), norm2 = dot
        var l2 = distances ? dot : []
        var err = ew_faiss_error()
        let rc = l2.withUnsafeMutableBufferPointer { l2 in
            ew_faiss_compare_ids(
                handle, query, Int64(ids.count), ids, &dot, &norm2, distances ? l2.baseAddress : nil, &err)
        }
        guard rc == 0 else { throw IndexError(err) }
        return (dot, norm2, l2)
    }

    public func write(to path: String) throws {
        var err = ew_faiss_error()
        guard ew_faiss_write(handle, path, &err) == 0 else { throw IndexError(err) }
    }

    /// Exact k-NN of `queries` among `vectors` (row numbers as ids), with FAISS's BLAS kernels.
    public static func exactNeighbours(
        queries: UnsafeBufferPointer<Float>, vectors: UnsafeBufferPointer<Float>,
        dimension: Int, k: Int, metric: IndexMetric
    ) throws -> Neighbours {
        let nq = queries.count / dimension, ny = vectors.count / dimension
        var distances = [Float](repeating: 0, count: nq * k)
        var ids = [Int64](repeating: -1, count: nq * k)
        var err = ew_faiss_error()
        guard
            ew_faiss_knn_exact(
                queries.baseAddress, Int64(nq), vectors.baseAddress, Int64(ny), Int64(dimension),
                Int64(k), metric.raw, &distances, &ids, &err) == 0
        else { throw IndexError(err) }
        return Neighbours(k: k, distances: distances, ids: ids)
    }
}

private func withBitmap<R>(_ b: IDBitmap?, _ body: (UnsafePointer<UInt8>?, Int64) -> R) -> R {
    guard let b else { return body(nil, 0) }
    return b.bytes.withUnsafeBufferPointer { body($0.baseAddress, Int64(b.capacity)) }
}

/// The distance kernels FAISS's hot loops run on in this process (the lists of IVF-Flat, the
/// coarse quantizer of any IVF, Flat, HNSW-Flat storage). Debian's libfaiss is built for
/// baseline x86-64 and computes distances one float at a time; the shim replaces those loops
/// with its own, chosen at run time, and files stay plain FAISS files.
public enum DistanceKernel: String, Sendable, CaseIterable, Codable {
    /// The best this CPU runs: `avx512`, else `avx2`, else `scalar`. The default.
    case auto
    /// AVX-512F.
    case avx512
    /// AVX2 with FMA.
    case avx2
    /// Portable C++ for any x86-64.
    case scalar
    /// FAISS's own code paths, unchanged (for comparison and benchmarks).
    case faiss

    /// The kernel in force, process-wide (never `auto`).
    public static var current: DistanceKernel {
        DistanceKernel(rawValue: String(cString: ew_faiss_kernel())) ?? .scalar
    }

    /// Whether this CPU (and OS) can run it.
    public var isSupported: Bool { ew_faiss_kernel_supported(rawValue) != 0 }

    /// Puts `kernel` in force for the whole process and returns the one in force. A kernel
    /// this CPU cannot run leaves the portable one in force and says so in one line to `log`
    /// (standard error by default); it is never an error. Safe to call at any time: a search
    /// already running may finish on either kernel, and every kernel gives FAISS's answers.
    @discardableResult
    public static func use(
        _ kernel: DistanceKernel,
        log: (String) -> Void = { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }
    ) -> DistanceKernel {
        let inForce =
            ew_faiss_set_kernel(kernel.rawValue).map { DistanceKernel(rawValue: String(cString: $0)) ?? .scalar }
            ?? current
        if kernel != .auto && inForce != kernel {
            log("distance kernel \(kernel.rawValue) is not supported by this CPU; using \(inForce.rawValue)")
        }
        return inForce
    }

    /// The name OpenBLAS gave the kernels it chose for this CPU ("Prescott" means its generic
    /// ones), or nil when the BLAS FAISS links is not OpenBLAS.
    public static var blasCore: String? {
        let s = String(cString: ew_faiss_blas_core())
        return s.isEmpty ? nil : s
    }

    /// One line for the tools' status output, e.g. "distance kernel avx512 (run-time dispatch);
    /// BLAS OpenBLAS Prescott (its generic kernels: ...)". The current ones by default; `chosenOver`:
    /// the core that the executable replaced at start-up (`BLASCore.replaced`), if any.
    public static func summary(
        kernel: String = current.rawValue, blasCore: String? = blasCore,
        chosenOver: String? = nil
    ) -> String {
        let blas: String =
            switch blasCore {
            case nil: "not OpenBLAS"
            case let core? where genericBLASCores.contains(core):
                "OpenBLAS \(core) (its generic kernels, not this CPU's: batched work such as training is slower than it could be)"
            case let core?:
                "OpenBLAS \(core)"
                    + (chosenOver.map {
                        " (chosen by EwallML over OpenBLAS's own \($0); EWALL_BLAS_CORE=keep keeps that)"
                    } ?? "")
            }
        return "distance kernel \(kernel) (run-time dispatch); BLAS \(blas)"
    }

    /// OpenBLAS core names that mean "a CPU it did not recognise": Debian's 0.3.21 names
    /// AVX-512 Zen 4 and newer Xeons "Prescott" and runs SSE3 kernels there.
    static let genericBLASCores: Set<String> = [
        "Prescott", "Core2", "Katmai", "Coppermine", "Northwood", "Banias", "Atom",
    ]

    /// Inner products of every row of `queries` with every row of `vectors` (both row-major,
    /// `dimension` wide), as the batched coarse pass computes them: row i of the answer holds
    /// query i's products with every vector. With `avx2` or `avx512` in force, the shim's
    /// many-dots kernel; otherwise OpenBLAS's sgemm.
    public static func dots(_ queries: [Float], _ vectors: [Float], dimension d: Int) throws -> [Float] {
        precondition(d > 0 && queries.count % d == 0 && vectors.count % d == 0, "rows are not \(d) wide")
        let n = queries.count / d, ny = vectors.count / d
        var out = [Float](repeating: 0, count: n * ny)
        var err = ew_faiss_error()
        guard ew_faiss_dots(queries, Int64(n), vectors, Int64(ny), Int64(d), &out, &err) == 0 else {
            throw IndexError(err)
        }
        return out
    }

    /// Distances from `query` to each of the `vectors` (row-major, `query.count` wide) with the
    /// kernel in force: squared L2 or inner product, as FAISS computes them.
    public static func distances(from query: [Float], to vectors: [Float], metric: IndexMetric) throws -> [Float] {
        let d = query.count
        precondition(d > 0 && vectors.count % d == 0, "vectors are not rows of the query's width")
        let n = vectors.count / d
        var out = [Float](repeating: 0, count: n)
        var err = ew_faiss_error()
        guard ew_faiss_distances(metric.raw, query, vectors, Int64(n), Int64(d), &out, &err) == 0 else {
            throw IndexError(err)
        }
        return out
    }
}

/// OpenBLAS's kernels for this CPU. Debian's OpenBLAS 0.3.21 does not recognise some AVX-512
/// CPUs (newer Xeons, Zen 4 on some hypervisors) and runs its generic SSE3 kernels there
/// ("Prescott"): on an Intel Xeon, a BLAS flat search over 50k x 2048 took 19.3 ms per query,
/// 8.4 ms with `OPENBLAS_CORETYPE=SkylakeX`. OpenBLAS reads that variable once, when it loads,
/// so the executables choose before any BLAS work (EwallCLIBase's `BLASCore.selectAtStartup()`
/// re-executes the process with it set; the library itself never reads or sets the
/// environment). Only the families our tests check against the generic kernels' results
/// (SkylakeX, Haswell) are chosen; older OpenBLAS builds computed wrong results or crashed on
/// some processors with others.
public enum BLASCore {
    /// The core to use instead of `current` (OpenBLAS's own choice) on a CPU of family `cpu`
    /// (``forThisCPU``), or nil to keep it.
    public static func better(current: String?, cpu: String) -> String? {
        guard let current, DistanceKernel.genericBLASCores.contains(current), !cpu.isEmpty else { return nil }
        return cpu
    }

    /// The family this CPU's kernels belong to ("SkylakeX", "Haswell"; "" for neither).
    public static var forThisCPU: String { String(cString: ew_faiss_blas_core_for_cpu()) }

    /// What `EWALL_BLAS_CORE` may say: `auto` (choose only when OpenBLAS fell back to generic
    /// kernels and `OPENBLAS_CORETYPE` is not set), `keep` (never), or a core name (always).
    /// Returns the core to switch to, or nil to keep `current`.
    public static func wanted(setting: String?, openBLASCoreType: String?, current: String) -> String? {
        let wanted: String?
        switch setting ?? "auto" {
        case "keep": wanted = nil
        case "auto", "": wanted = openBLASCoreType == nil ? better(current: current, cpu: forThisCPU) : nil
        case let name: wanted = name
        }
        guard let wanted, wanted.lowercased() != current.lowercased() else { return nil }
        return wanted
    }
}

extension IndexError: EwallFailure {
    public var failureCode: String { code.rawValue }
    public var kind: FailureKind {
        switch code {
        case .unknownProduct, .noVector, .notFound: .notFound
        case .argument: .invalidRequest
        case .manifest, .locked, .mismatch, .io: .unavailable
        default: .internal
        }
    }
}
