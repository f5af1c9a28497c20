import Crypto
import EwallCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// What `rebuild-faiss-index` writes beside the index: `manifest.json`. Plain JSON, readable
/// from any language; the id map is the `id_map.tsv` it names.
public struct IndexManifest: Codable, Sendable, Hashable {
    public static let formatName = "ewall-faiss-index"
    public static let currentVersion = 1

    public struct FileEntry: Codable, Sendable, Hashable {
        public var name: String
        public var bytes: Int64
        public var sha256: String
    }

    public struct Search: Codable, Sendable, Hashable {
        public var nprobe: Int?
        public var efSearch: Int?
        /// IVF: the nprobe a filtered search starts at, measured at build under the platform's
        /// default filters (same category, in stock; see ``IndexManifest/filteredRecall``). Absent
        /// (an older folder, a store without categories): twice ``nprobe``.
        public var filteredNprobe: Int?
        /// IVF with recorded nearest lists: filtered searches add this second hop to their
        /// ``filteredNprobe`` lists (see ``SecondHop``), chosen at build where it met the
        /// target faster than a deeper nprobe did. Absent: no second hop.
        public var secondHop: Hop?
        public init(nprobe: Int? = nil, efSearch: Int? = nil, filteredNprobe: Int? = nil, secondHop: Hop? = nil) {
            self.nprobe = nprobe
            self.efSearch = efSearch
            self.filteredNprobe = filteredNprobe
            self.secondHop = secondHop
        }
        enum CodingKeys: String, CodingKey {
            case nprobe, efSearch = "ef_search", filteredNprobe = "filtered_nprobe", secondHop = "second_hop"
        }
    }

    /// A second hop: the first `lists` recorded lists of each of the `top` best found, less
    /// those of more than `maxList` entries (hubs), when set.
    public struct Hop: Codable, Sendable, Hashable {
        public var top: Int
        public var lists: Int
        public var maxList: Int?
        public init(top: Int, lists: Int, maxList: Int? = nil) {
            self.top = top
            self.lists = lists
            self.maxList = maxList
        }
        enum CodingKeys: String, CodingKey { case top, lists, maxList = "max_list" }
    }

    public struct RecallPoint: Codable, Sendable, Hashable {
        public var nprobe: Int?
        public var efSearch: Int?
        public var recall: Double
        /// Filtered points: the second hop this point searched with, if any.
        public var secondHop: Hop?
        /// Filtered points: the mean time of one search at build, in microseconds.
        public var microseconds: Double?
        /// Filtered points: the standard error of `recall` over the queries.
        public var standardError: Double?
        public init(
            nprobe: Int? = nil, efSearch: Int? = nil, recall: Double, secondHop: Hop? = nil,
            microseconds: Double? = nil,
            standardError: Double? = nil
        ) {
            self.nprobe = nprobe
            self.efSearch = efSearch
            self.recall = recall
            self.secondHop = secondHop
            self.microseconds = microseconds
            self.standardError = standardError
        }
        enum CodingKeys: String, CodingKey {
            case nprobe, efSearch = "ef_search", recall, secondHop = "second_hop", microseconds
            case standardError = "standard_error"
        }

        /// What a filtered point is held to: recall less two standard errors of the estimate
        /// (``marginErrors``), so that a point chosen on the build's queries still meets the
        /// target on the queries a server answers (a one-sided bound of about 98%); `recall`
        /// where no error was measured.
        public var lowerBound: Double { recall - Self.marginErrors * (standardError ?? 0) }

        /// One error on 1,000 queries (680 eligible, 0.006) chose 2 + hop 10x4 at 1M at 0.958,
        /// a margin that builds on other CPUs can land either side of; 1.645 errors on them chose
        /// 4 + 10x4 (served p99 86 ms against 45). Two errors on 3,000 eligible queries (0.0027
        /// each) ask for a margin of 0.0055 that is itself measured 5x more precisely.
        public static let marginErrors = 2.0
    }

    /// Re-ranking for compressed kinds: the index finds `factor × k` candidates by their codes,
    /// and exact distances from `file` (see ``ExactVectors``) choose the k answered.
    public struct Refine: Codable, Sendable, Hashable {
        public var file: String
        public var factor: Int
        public init(file: String = ExactVectors.fileName, factor: Int) {
            self.file = file
            self.factor = factor
        }
    }

    /// Each stored vector's nearest lists, recorded at add (see ``NearestLists``).
    public struct Nearest: Codable, Sendable, Hashable {
        public var file: String
        /// Lists per vector.
        public var count: Int
        /// The ranks whose distances each row keeps after its lists.
        public var boundRanks: [Int]
        public init(
            file: String = NearestLists.fileName, count: Int = NearestLists.count,
            boundRanks: [Int] = NearestLists.boundRanks
        ) {
            self.file = file
            self.count = count
            self.boundRanks = boundRanks
        }
        enum CodingKeys: String, CodingKey { case file, count, boundRanks = "bound_ranks" }
        public init(from decoder: any Decoder) throws {
            let c = try decoder.container(keyedBy: CodingKeys.self)
            file = try c.decode(String.self, forKey: .file)
            count = try c.decode(Int.self, forKey: .count)
            // Rows without ranks (one bound at the last list) are a layout this version does not use.
            boundRanks = try c.decodeIfPresent([Int].self, forKey: .boundRanks) ?? []
        }
    }

    public struct Recall: Codable, Sendable, Hashable {
        /// recall@k against exact search, excluding each query's own vector.
        public var k: Int
        public var measured: Double
        public var target: Double
        public var met: Bool
        public var queries: Int
        public var curve: [RecallPoint]
    }

    public var format = IndexManifest.formatName
    public var formatVersion = IndexManifest.currentVersion
    public var factory: String
    public var metric: IndexMetric
    /// What the distances mean, for readers: FAISS L2 distances are squared.
    public var distance: String
    public var search: Search
    public var dimension: Int
    public var count: Int
    public var modelID: String
    public var preprocessing: String
    public var builtAt: String
    public var buildSeconds: Double
    public var buildMode: String
    public var choice: String
    /// Present for approximate indexes.
    public var recall: Recall?
    /// IVF with categories in the store: recall@10 under the default filters (same category, in
    /// stock, the query itself excluded) against exact search among the products they allow,
    /// by nprobe from ``Search/nprobe`` up; ``Search/filteredNprobe`` is where it met the target.
    public var filteredRecall: Recall?
    /// The next int64 id an incremental build gives a new product.
    public var nextID: Int64
    public var files: [String: FileEntry]
    /// Present when answers are re-ranked by exact vectors (compressed kinds).
    public var refine: Refine?
    /// Present when the folder records each vector's nearest lists (IVF over a flat quantizer).
    public var nearest: Nearest?
    /// The store's change feed (``CatalogueStore``) as of the build: the last entry read before
    /// the vectors were. A replica over this index applies the entries after it.
    public var changeSeq: Int64?

    public init(
        factory: String, metric: IndexMetric, distance: String, search: Search, dimension: Int, count: Int,
        modelID: String, preprocessing: String, builtAt: String, buildSeconds: Double, buildMode: String,
        choice: String, recall: Recall?, nextID: Int64, files: [String: FileEntry], refine: Refine? = nil
    ) {
        self.factory = factory
        self.metric = metric
        self.distance = distance
        self.search = search
        self.dimension = dimension
        self.count = count
        self.modelID = modelID
        self.preprocessing = preprocessing
        self.builtAt = builtAt
        self.buildSeconds = buildSeconds
        self.buildMode = buildMode
        self.choice = choice
        self.recall = recall
        self.nextID = nextID
        self.files = files
        self.refine = refine
    }

    enum CodingKeys: String, CodingKey {
        case format, formatVersion = "format_version", factory, metric, distance, search, dimension, count
        case modelID = "model_id", preprocessing, builtAt = "built_at", buildSeconds = "build_seconds"
        case buildMode = "build_mode", choice, recall, filteredRecall = "filtered_recall", nextID = "next_id", files,
            refine
        case nearest = "nearest_lists"
        case changeSeq = "change_seq"
    }

    public var key: ModelKey { ModelKey(modelID: modelID, preprocessing: preprocessing) }

    static func distanceNote(_ metric: IndexMetric) -> String {
        metric == .l2
            ? "FAISS returns squared L2; EwallML's similarity is 1/(1+d) with d the Euclidean (square-rooted) distance"
            : "FAISS returns the inner product; EwallML's distance is the Euclidean one derived from it"
    }
}

/// The id map: int64 ids in the index <-> product ids, with a hash of each vector so that an
/// incremental build sees which vectors changed. `id_map.tsv`, one line per vector:
/// `id <TAB> vector_fnv1a64 (hex) <TAB> product id as a JSON string`.
public struct IDMap: Sendable {
    public private(set) var productIDs: [Int64: String] = [:]
    public private(set) var ids: [String: Int64] = [:]
    public private(set) var hashes: [Int64: UInt64] = [:]

    public init() {}

    public var count: Int { ids.count }

    public mutating func insert(id: Int64, productID: String, hash: UInt64) {
        productIDs[id] = productID
        ids[productID] = id
        hashes[id] = hash
    }

    public mutating func remove(id: Int64) {
        if let p = productIDs.removeValue(forKey: id) { ids.removeValue(forKey: p) }
        hashes.removeValue(forKey: id)
    }

    static let header = "id\tvector_fnv1a64\tproduct_id"

    func write(to url: URL) throws {
        guard
            let out = FileHandle(forWritingAtPath: url.path)
                ?? {
                    _ = FileManager.default.createFile(atPath: url.path, contents: nil)
                    return FileHandle(forWritingAtPath: url.path)
                }()
        else { throw IndexError(.io, "cannot write \(url.path)") }
        defer { try? out.close() }
        var buffer = Data(Self.header.utf8) + Data([0x0A])
        let encoder = JSONEncoder()
        for id in productIDs.keys.sorted() {
            let pid = productIDs[id]!
            let quoted = try encoder.encode(pid)
            buffer.append(contentsOf: Array("\(id)\t\(String(hashes[id] ?? 0, radix: 16))\t".utf8))
            buffer.append(quoted)
            buffer.append(0x0A)
            if buffer.count >= 1 << 20 {
                try out.write(contentsOf: buffer)
                buffer.removeAll(keepingCapacity: true)
            }
        }
        try out.write(contentsOf: buffer)
        try out.synchronize()
    }

    /// FNV-1a over the vector's float32 bytes.
    public static func hash(_ v: UnsafeBufferPointer<Float>) -> UInt64 { FNV1a64.hash(v) }
}

/// An index folder (default `data/faiss/`): `image_index.faiss`, `manifest.json`, `id_map.tsv`.
///
/// A rebuild writes a complete new folder beside the old one (`faiss.tmp-PID`), fsyncs it,
/// and swaps the two with one `renameat2(RENAME_EXCHANGE)`: a reader sees the old folder or
/// the new one, never a mix. ``load(memoryMapped:)`` opens the folder once and reads all three
/// files through that handle, so it cannot straddle a swap either. A lock file beside the
/// folder (`faiss.lock`) stops two rebuilds at once and names its holder.
public struct IndexFolder: Sendable {
    public static let indexFile = "image_index.faiss"
    public static let manifestFile = "manifest.json"
    public static let idMapFile = "id_map.tsv"
    public static let defaultPath = "data/faiss"

    public let url: URL

    public init(path: String) {
        url = URL(fileURLWithPath: path).standardizedFileURL
    }

    public var path: String { url.path }
    public var lockURL: URL { url.deletingLastPathComponent().appendingPathComponent(url.lastPathComponent + ".lock") }
    public var exists: Bool {
        FileManager.default.fileExists(atPath: url.appendingPathComponent(Self.manifestFile).path)
    }

    /// A loaded folder: the three files as they were at one moment.
    ///
    /// Safe because: every member is immutable and Sendable or read-only (FaissIndex, ExactVectors, NearestLists are safe to share).
    public struct Loaded: @unchecked Sendable {
        public let manifest: IndexManifest
        /// Product id <-> int64 id, in flat arrays.
        public let ids: ProductIDTable
        public let index: FaissIndex
        /// The exact vectors compressed kinds re-rank with (``IndexManifest/refine``).
        public let exact: ExactVectors?
        /// Each stored vector's nearest lists (``IndexManifest/nearest``).
        public let nearest: NearestLists?
    }

    /// Reads the manifest only.
    public func manifest() throws -> IndexManifest {
        let data: Data
        do { data = try Data(contentsOf: url.appendingPathComponent(Self.manifestFile)) } catch {
            throw IndexError(
                .manifest, "no index at \(path) (\(Self.manifestFile) is missing): run rebuild-faiss-index")
        }
        return try Self.decodeManifest(data, path: path)
    }

    static func decodeManifest(_ data: Data, path: String) throws -> IndexManifest {
        let m: IndexManifest
        do { m = try JSONDecoder().decode(IndexManifest.self, from: data) } catch {
            throw IndexError(.manifest, "\(path)/\(manifestFile) is not a valid manifest: \(error)")
        }
        guard m.format == IndexManifest.formatName, m.formatVersion <= IndexManifest.currentVersion else {
            throw IndexError(
                .manifest,
                "\(path)/\(manifestFile): format \(m.format) v\(m.formatVersion) is not one this version reads")
        }
        return m
    }

    /// Loads the folder consistently (see the type's comment). `verifyChecksums` hashes the
    /// files against the manifest (slow for big indexes); sizes and counts are always checked.
    /// `vectorHashes` keeps the id map's vector hashes (an incremental build compares them).
    public func load(
        memoryMapped: Bool = false, verifyChecksums: Bool = false, vectorHashes: Bool = false
    ) throws -> Loaded {
        // A rebuild that swaps the folder between our opening it and opening its files leaves
        // us the old, now deleted, folder: then we start again and get the new one.
        var attempt = 0
        while true {
            do {
                return try loadOnce(
                    memoryMapped: memoryMapped, verifyChecksums: verifyChecksums, vectorHashes: vectorHashes)
            } catch let e as Swapped {
                attempt += 1
                if attempt >= 10 { throw IndexError(.manifest, "\(path) kept changing while it was read: \(e.file)") }
            }
        }
    }

    private struct Swapped: Error { var file: String }

    private func loadOnce(memoryMapped: Bool, verifyChecksums: Bool, vectorHashes: Bool) throws -> Loaded {
        let dirFD = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dirFD >= 0 else {
            throw IndexError(
                .manifest, "no index at \(path): run rebuild-faiss-index (\(String(cString: strerror(errno))))")
        }
        defer { close(dirFD) }
        // Open the three files through the one directory handle, so they are of one build; once
        // open, a later swap and delete cannot take them away.
        var fds: [String: Int32] = [:]
        defer { for fd in fds.values { close(fd) } }
        for name in [Self.manifestFile, Self.idMapFile, Self.indexFile, ExactVectors.fileName, NearestLists.fileName] {
            let fd = openat(dirFD, name, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else {
                // Only compressed kinds have exact vectors; only IVF over flat centroids nearest lists.
                if errno == ENOENT && (name == ExactVectors.fileName || name == NearestLists.fileName) { continue }
                if errno == ENOENT && fds.isEmpty == false { throw Swapped(file: name) }
                if errno == ENOENT && name == Self.manifestFile {
                    // The folder itself may have been swapped out and deleted under us.
                    if fstatLinks(dirFD) == 0 { throw Swapped(file: name) }
                    throw IndexError(.manifest, "no index at \(path) (\(name) is missing): run rebuild-faiss-index")
                }
                throw IndexError(.manifest, "cannot open \(path)/\(name): \(String(cString: strerror(errno)))")
            }
            fds[name] = fd
        }
        let manifest = try Self.decodeManifest(
            try readAll(fd: fds[Self.manifestFile]!, name: Self.manifestFile), path: path)
        let mapData = try readAll(fd: fds[Self.idMapFile]!, name: Self.idMapFile)
        if let entry = manifest.files["id_map"] {
            guard Int64(mapData.count) == entry.bytes else {
                throw IndexError(
                    .manifest, "\(path)/\(Self.idMapFile) has \(mapData.count) bytes, the manifest says \(entry.bytes)")
            }
            if verifyChecksums, sha256Hex(mapData) != entry.sha256 {
                throw IndexError(.manifest, "\(path)/\(Self.idMapFile) does not match its checksum")
            }
        }
        // FAISS reads by path: the open descriptor's /proc path stays valid after a delete.
        let indexPath = "/proc/self/fd/\(fds[Self.indexFile]!)"
        if let entry = manifest.files["index"] {
            var st = stat()
            let size = fstat(fds[Self.indexFile]!, &st) == 0 ? Int64(st.st_size) : -1
            guard size == entry.bytes else {
                throw IndexError(
                    .manifest, "\(path)/\(Self.indexFile) has \(size) bytes, the manifest says \(entry.bytes)")
            }
            if verifyChecksums, try sha256Hex(file: indexPath) != entry.sha256 {
                throw IndexError(.manifest, "\(path)/\(Self.indexFile) does not match its checksum")
            }
        }
        let ids = try ProductIDTable.read(mapData, keepVectorHashes: vectorHashes)
        let index = try FaissIndex(contentsOf: indexPath, memoryMapped: memoryMapped)
        guard index.count == manifest.count, ids.count == manifest.count, index.dimension == manifest.dimension else {
            throw IndexError(
                .manifest,
                "\(path): the index holds \(index.count) vectors of \(index.dimension) dims and "
                    + "the id map \(ids.count), the manifest says \(manifest.count) of \(manifest.dimension)")
        }
        // A file of rows beside the index: its bytes against the manifest's entry, its checksum,
        // and a row for every id the id map uses.
        func checkRows(_ file: String, entry key: String, fd: Int32, bytes: Int, rows: Int) throws {
            if let entry = manifest.files[key] {
                guard entry.bytes == Int64(bytes) else {
                    throw IndexError(.manifest, "\(path)/\(file) has \(bytes) bytes, the manifest says \(entry.bytes)")
                }
                if verifyChecksums, try sha256Hex(file: "/proc/self/fd/\(fd)") != entry.sha256 {
                    throw IndexError(.manifest, "\(path)/\(file) does not match its checksum")
                }
            }
            guard rows >= ids.capacity else {
                throw IndexError(
                    .manifest, "\(path)/\(file) has \(rows) rows; the id map uses ids up to \(ids.capacity - 1)")
            }
        }
        var exact: ExactVectors?
        if let refine = manifest.refine {
            guard let fd = fds[ExactVectors.fileName], refine.file == ExactVectors.fileName else {
                throw IndexError(.manifest, "\(path): the manifest re-ranks from \(refine.file), which is missing")
            }
            let e = try ExactVectors(fd: fd, dimension: manifest.dimension, path: "\(path)/\(refine.file)")
            try checkRows(refine.file, entry: "vectors", fd: fd, bytes: e.rows * e.dimension * 4, rows: e.rows)
            exact = e
        }
        var nearest: NearestLists?
        // Rows of another layout (a later version's) are not used: searches take the coarse pass.
        if let n = manifest.nearest, n.count == NearestLists.count, n.boundRanks == NearestLists.boundRanks {
            guard let fd = fds[NearestLists.fileName], n.file == NearestLists.fileName else {
                throw IndexError(
                    .manifest, "\(path): the manifest records nearest lists in \(n.file), which is missing")
            }
            let lists = try NearestLists(fd: fd, path: "\(path)/\(n.file)")
            try checkRows(
                n.file, entry: "nearest_lists", fd: fd, bytes: lists.rows * NearestLists.rowBytes, rows: lists.rows)
            nearest = lists
        }
        return Loaded(manifest: manifest, ids: ids, index: index, exact: exact, nearest: nearest)
    }

    /// Writes `index`, `idMap` and `manifest` (its file entries filled in here) as the new
    /// content of the folder, atomically. `exactVectors`: a complete `vectors.f32` written
    /// beside the folder, moved into it.
    public func publish(
        index: FaissIndex, idMap: IDMap, manifest: IndexManifest, exactVectors: URL? = nil,
        nearestLists: URL? = nil
    ) throws -> IndexManifest {
        let fm = FileManager.default
        let parent = url.deletingLastPathComponent()
        try fm.createDirectory(at: parent, withIntermediateDirectories: true)
        // Leftovers of interrupted builds (the caller holds the lock, so none is in progress).
        let prefix = ".\(url.lastPathComponent).tmp-"
        let own = [exactVectorsStaging.lastPathComponent, nearestListsStaging.lastPathComponent]
        for name in (try? fm.contentsOfDirectory(atPath: parent.path)) ?? []
        where name.hasPrefix(prefix)
            || ((name.hasPrefix(".\(url.lastPathComponent).vectors-")
                || name.hasPrefix(".\(url.lastPathComponent).nearest-")) && !own.contains(name))
        {
            try? fm.removeItem(at: parent.appendingPathComponent(name))
        }
        let staging = parent.appendingPathComponent(prefix + "\(getpid())")
        try fm.createDirectory(at: staging, withIntermediateDirectories: false)
        do {
            var manifest = manifest
            let indexURL = staging.appendingPathComponent(Self.indexFile)
            try index.write(to: indexURL.path)
            try fsyncPath(indexURL.path)
            let mapURL = staging.appendingPathComponent(Self.idMapFile)
            try idMap.write(to: mapURL)
            manifest.files = [
                "index": try entry(indexURL),
                "id_map": try entry(mapURL),
            ]
            if let exactVectors {
                let target = staging.appendingPathComponent(ExactVectors.fileName)
                try fm.moveItem(at: exactVectors, to: target)
                manifest.files["vectors"] = try entry(target)
            }
            if let nearestLists {
                let target = staging.appendingPathComponent(NearestLists.fileName)
                try fm.moveItem(at: nearestLists, to: target)
                manifest.files["nearest_lists"] = try entry(target)
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
            let manifestURL = staging.appendingPathComponent(Self.manifestFile)
            try encoder.encode(manifest).write(to: manifestURL)
            try fsyncPath(manifestURL.path)
            try fsyncPath(staging.path)
            if fm.fileExists(atPath: url.path) {
                try exchange(staging.path, url.path)
                try fm.removeItem(at: staging) // the old folder, now under the staging name
            } else {
                guard rename(staging.path, url.path) == 0 else {
                    throw IndexError(
                        .io, "cannot rename \(staging.path) to \(path): \(String(cString: strerror(errno)))")
                }
            }
            try fsyncPath(parent.path)
            return manifest
        } catch {
            try? fm.removeItem(at: staging)
            throw error
        }
    }

    /// Where a build writes `vectors.f32` before ``publish(index:idMap:manifest:exactVectors:)``
    /// moves it into the folder: beside it, on the same file system.
    public var exactVectorsStaging: URL {
        url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).vectors-\(getpid()).f32")
    }

    /// Where a build writes `nearest_lists.bin` before publishing it (as for the exact vectors).
    public var nearestListsStaging: URL {
        url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).nearest-\(getpid()).bin")
    }

    private func entry(_ url: URL) throws -> IndexManifest.FileEntry {
        let size = try FileManager.default.attributesOfItem(atPath: url.path)[.size] as? Int64 ?? 0
        return .init(name: url.lastPathComponent, bytes: size, sha256: try sha256Hex(file: url.path))
    }
}

// MARK: - The rebuild lock

/// An exclusive lock on an index folder, held by one rebuild: `flock` on `faiss.lock` beside the
/// folder, which the kernel releases if the process dies. The file says who holds it.
///
/// Safe because: `fd` and `url` are immutable; the descriptor is only closed in deinit.
public final class IndexLock: @unchecked Sendable {
    private let fd: Int32
    public let url: URL

    public struct Holder: Codable, Sendable {
        public var pid: Int32
        public var host: String
        public var started: String
        public var command: String
    }

    public init(folder: IndexFolder) throws {
        url = folder.lockURL
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        fd = open(url.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw IndexError(.io, "cannot open \(url.path): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? Data(contentsOf: url)).flatMap { try? JSONDecoder().decode(Holder.self, from: $0) }
            close(fd)
            let who =
                holder.map { "pid \($0.pid) on \($0.host) since \($0.started) (\($0.command))" } ?? "another process"
            throw IndexError(.locked, "another rebuild of \(folder.path) is running: \(who); lock file \(url.path)")
        }
        let me = Holder(
            pid: getpid(), host: ProcessInfo.processInfo.hostName, started: isoNow(),
            command: CommandLine.arguments.joined(separator: " "))
        let data = (try? JSONEncoder().encode(me)) ?? Data()
        _ = ftruncate(fd, 0)
        _ = data.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, 0) }
    }

    deinit {
        _ = ftruncate(fd, 0)
        flock(fd, LOCK_UN)
        close(fd)
    }
}

// MARK: - File helpers

func isoNow() -> String { builtAtFormatter().string(from: Date()) }

/// The format of ``IndexManifest/builtAt``: ISO 8601 with milliseconds.
private func builtAtFormatter() -> ISO8601DateFormatter {
    let f = ISO8601DateFormatter()
    f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return f
}

extension IndexManifest {
    /// ``builtAt`` as a date (`nil` if a hand-edited manifest holds something else).
    public var builtDate: Date? { builtAtFormatter().date(from: builtAt) }
}

private func readAll(fd: Int32, name: String) throws -> Data {
    var out = Data()
    var buffer = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n < 0 { throw IndexError(.io, "cannot read \(name): \(String(cString: strerror(errno)))") }
        if n == 0 { return out }
        out.append(contentsOf: buffer[0..<n])
    }
}

/// The link count of an open directory: 0 once it has been deleted.
private func fstatLinks(_ fd: Int32) -> Int {
    var st = stat()
    return fstat(fd, &st) == 0 ? Int(st.st_nlink) : 0
}

private func fsyncPath(_ path: String) throws {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw IndexError(.io, "cannot open \(path) to sync it") }
    defer { close(fd) }
    guard fsync(fd) == 0 else { throw IndexError(.io, "fsync \(path): \(String(cString: strerror(errno)))") }
}

func sha256Hex(_ data: Data) -> String {
    SHA256.hash(data: data).map { String(format: "%02x", $0) }.joined()
}

func sha256Hex(file path: String) throws -> String {
    guard let h = FileHandle(forReadingAtPath: path) else { throw IndexError(.io, "cannot read \(path)") }
    defer { try? h.close() }
    var hasher = SHA256()
    while let chunk = try h.read(upToCount: 4 << 20), !chunk.isEmpty { hasher.update(data: chunk) }
    return hasher.finalize().map { String(format: "%02x", $0) }.joined()
}

/// Swaps two paths atomically (Linux renameat2 with RENAME_EXCHANGE, looked up at run time
/// because Swift's Glibc module does not declare it). Where the file system cannot exchange,
/// falls back to two renames; a reader retrying a failed open then sees the new folder.
private func exchange(_ a: String, _ b: String) throws {
    typealias RenameAt2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) -> Int32
    let renameExchange: UInt32 = 2
    if let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "renameat2") {
        let renameat2 = unsafeBitCast(sym, to: RenameAt2.self)
        if renameat2(AT_FDCWD, a, AT_FDCWD, b, renameExchange) == 0 { return }
        guard errno == EINVAL || errno == ENOSYS else {
            throw IndexError(.io, "cannot swap \(a) and \(b): \(String(cString: strerror(errno)))")
        }
    }
    let aside = b + ".old-\(getpid())"
    guard rename(b, aside) == 0, rename(a, b) == 0, rename(aside, a) == 0 else {
        throw IndexError(.io, "cannot replace \(b): \(String(cString: strerror(errno)))")
    }
}
