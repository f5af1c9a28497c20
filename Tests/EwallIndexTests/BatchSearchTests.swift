import EwallCore
import EwallIndex
import EwallStore
import EwallTestSupport
import Foundation
import Testing

extension KernelSwitching {
    /// Coalesced queries: `ew_faiss_search_batch` (FaissIndex.searchBatch) and
    /// ProductSearch.similar(batch:) give exactly what one query at a time gives. Serialized with
    /// the other suites that switch the process-wide distance kernel (see KernelSwitching).
    @Suite("Batched search (coalesced queries)", .serialized)
    struct BatchSearchTests {
        static let data = SyntheticVectors(count: 4000, dimension: 48, clusters: 80, seed: 31)

        static func filled(
            _ factory: String, metric: IndexMetric = .l2, data: SyntheticVectors = data
        ) throws -> FaissIndex {
            let index = try FaissIndex(dimension: data.dimension, factory: factory, metric: metric)
            if !index.isTrained { try data.values.withUnsafeBufferPointer { try index.train($0) } }
            try index.add(data.values, ids: (0..<data.count).map { 5 + 3 * Int64($0) })
            return index
        }

        /// n queries (rows of the data, and a few off-data points), each with its own nprobe,
        /// allowed bitmap and excluded ids, some with none.
        static func queries(
            _ n: Int, data: SyntheticVectors = data, seed: UInt64
        ) -> [(vector: [Float], parameters: SearchParameters)] {
            var rng = TestRNG(seed: seed)
            let capacity = 5 + 3 * data.count
            return (0..<n).map { i in
                var v = data.row(Int(rng.next() % UInt64(data.count)))
                if i % 7 == 3 { v = (0..<data.dimension).map { _ in rng.gaussian() } }
                var p = SearchParameters()
                switch i % 4 {
                case 0: break
                case 1: p.nprobe = 1 + Int(rng.next() % 12)
                case 2:
                    var b = IDBitmap(capacity: capacity)
                    let mod = 2 + Int(rng.next() % 5)
                    for r in 0..<data.count where r % mod == i % mod { b.insert(5 + 3 * Int64(r)) }
                    p.allowed = b
                    p.nprobe = 4 + Int(rng.next() % 30)
                default:
                    p.excluded = (0..<3).map { _ in 5 + 3 * Int64(rng.next() % UInt64(data.count)) }
                    p.nprobe = i % 8 == 3 ? 64 : 2
                }
                return (v, p)
            }
        }

        static func expectSame(
            _ index: FaissIndex, _ qs: [(vector: [Float], parameters: SearchParameters)], k: Int,
            _ comment: Comment
        ) throws {
            let batched = try index.searchBatch(qs, k: k)
            #expect(batched.count == qs.count)
            var same = 0
            for (i, q) in qs.enumerated() {
                let one = try index.search(q.vector, k: k, parameters: q.parameters)
                if one.ids == batched[i].ids && one.distances == batched[i].distances {
                    same += 1
                } else {
                    Issue.record("\(comment): query \(i) differs: \(one.ids) vs \(batched[i].ids)")
                }
            }
            #expect(same == qs.count, comment)
        }

        @Test(
            "The batch C call equals one ew_faiss_search per query (same ids, same distances, bit for bit) for every kind, kernel and batch size",
            arguments: ["IVF40,Flat", "IVF256,Flat", "IVF40,SQ8", "IVF256,SQ8", "Flat", "HNSW16"])
        func batchEqualsSingles(factory: String) throws {
            defer { DistanceKernel.use(.auto) }
            let index = try Self.filled(factory)
            for kernel in DistanceKernel.allCases where kernel.isSupported {
                DistanceKernel.use(kernel)
                for (n, k) in [(1, 10), (2, 5), (19, 10), (20, 10), (64, 10), (100, 1), (64, 50)] {
                    try Self.expectSame(
                        index, Self.queries(n, seed: UInt64(n * 100 + k)), k: k, "\(factory) \(kernel) n=\(n) k=\(k)")
                }
            }
        }

        @Test("Inner-product IVF and a wide (512-d) IVF-Flat: batch equals singles")
        func innerProductAndWide() throws {
            defer { DistanceKernel.use(.auto) }
            let ip = try Self.filled("IVF200,Flat", metric: .ip)
            try Self.expectSame(ip, Self.queries(64, seed: 9), k: 10, "IP")
            let wideData = SyntheticVectors(count: 1500, dimension: 512, clusters: 30, seed: 4)
            let wide = try Self.filled("IVF100,Flat", data: wideData)
            for kernel in DistanceKernel.allCases where kernel.isSupported {
                DistanceKernel.use(kernel)
                try Self.expectSame(wide, Self.queries(48, data: wideData, seed: 11), k: 10, "512-d \(kernel)")
            }
        }

        @Test(
            "Degenerate queries (zeros, duplicates of one point, huge values) and every list probed: batch equals singles"
        )
        func degenerate() throws {
            // 256 lists: the coarse pass keeps only candidates (2p+32 of them), so both the proof
            // and its fallback run (huge values make the error bound too wide to prove anything).
            let index = try Self.filled("IVF256,Flat")
            let d = Self.data.dimension
            var qs = Self.queries(30, seed: 77)
            qs += (0..<10).map { _ in ([Float](repeating: 0, count: d), SearchParameters(nprobe: 3)) }
            qs += (0..<10).map { _ in (Self.data.row(17), SearchParameters()) }
            qs += (0..<5).map { i in (Self.data.row(i).map { $0 * 1e15 }, SearchParameters(nprobe: 2)) }
            qs += (0..<5).map { i in (Self.data.row(i), SearchParameters(nprobe: 256)) }
            // Far from everything: the centroids' distances differ by less than the error bound.
            qs += (0..<5).map { i in
                ([Float](repeating: -1e4 * Float(i + 1), count: d), SearchParameters(nprobe: 2 + i))
            }
            try Self.expectSame(index, qs, k: 10, "degenerate")
            #expect(try index.searchBatch([], k: 10).isEmpty)
        }

        // MARK: ProductSearch

        static func category(_ r: Int) -> String? { r % 300 == 7 ? "rare" : "c\(data.cluster[r] % 10)" }
        static func inStock(_ r: Int) -> Bool? { r % 3 == 0 ? false : (r % 3 == 1 ? true : nil) }

        static func sameAnswer(_ a: SimilarAnswer, _ b: SimilarAnswer) -> Bool {
            a.query == b.query && a.category == b.category && a.results == b.results && a.candidates == b.candidates
                && a.eligible == b.eligible && a.nprobe == b.nprobe && a.efSearch == b.efSearch && a.notes == b.notes
                && a.index == b.index
        }

        @Test(
            "ProductSearch.similar(batch:) answers each request exactly as similar(vector:) alone: categories, stock, exclusions, k, deepening, errors",
            arguments: ["IVF40,Flat", "HNSW16"])
        func productSearchBatch(factory: String) async throws {
            let (store, _) = try await Catalogue.store(Self.data, category: Self.category, inStock: Self.inStock)
            defer { Task { await store.close() } }
            let folder = Catalogue.folder()
            _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, index: factory))
            let search = try await ProductSearch.open(folder: folder, store: store, exactBelow: 50)
            var rng = TestRNG(seed: 5)
            var requests: [SimilarRequest] = []
            for i in 0..<90 {
                let row = Int(rng.next() % UInt64(Self.data.count))
                var q = SimilarQuery(
                    k: [10, 10, 5, 30][i % 4], minSimilarity: i % 5 == 0 ? 0 : 0.5,
                    sameCategory: i % 3 != 2, inStockOnly: i % 4 != 1)
                if i % 11 == 0 { q.k = 1 }
                let category: String? = i % 13 == 0 ? "rare" : (i % 17 == 0 ? nil : Self.category(row))
                let excluding: String? = i % 6 == 5 ? nil : Catalogue.pid(row)
                var vector = Self.data.row(row)
                if i == 40 { vector = [1, 2, 3] } // wrong dimension: an error for this one only
                requests.append(SimilarRequest(vector: vector, category: category, excluding: excluding, query: q))
            }
            for n in [1, 7, 90] {
                let part = Array(requests.prefix(n))
                let batched = search.similar(batch: part)
                #expect(batched.count == part.count)
                for (r, b) in zip(part, batched) {
                    let alone = Result {
                        try search.similar(
                            vector: r.vector, category: r.category, excluding: r.excluding, query: r.query)
                    }
                    switch (alone, b) {
                    case (.success(let x), .success(let y)):
                        #expect(Self.sameAnswer(x, y), "\(factory) n=\(n) \(r.category ?? "-") k=\(r.query.k)")
                    case (.failure, .failure): break
                    default: Issue.record("\(factory): one failed, the other did not: \(alone) vs \(b)")
                    }
                }
            }
            // And through the stored-product path.
            let r = try await search.request(for: Catalogue.pid(12))
            let a = try await search.similar(to: Catalogue.pid(12))
            guard case .success(let b) = search.similar(batch: [r]).first else {
                Issue.record("batch of one failed")
                return
            }
            #expect(Self.sameAnswer(a, b))
        }

        // MARK: Nearest lists recorded at add

        /// An IVF index filled through `addRecordingNearest`, and each row's recorded lists and bounds.
        static func probed(_ factory: String, metric: IndexMetric = .l2) throws -> (FaissIndex, [Int32], [Float]) {
            let index = try FaissIndex(dimension: data.dimension, factory: factory, metric: metric)
            try data.values.withUnsafeBufferPointer { try index.train($0) }
            #expect(index.probedLists == index.listCount)
            var lists: [Int32] = [], bounds: [Float] = []
            let d = data.dimension
            // Pages of 700 (FAISS's BLAS path), then 487 and 13 (below 20: our kernel's path).
            for (start, end) in [
                (0, 700), (700, 1400), (1400, 2100), (2100, 2800), (2800, 3500), (3500, 3987), (3987, 4000),
            ] {
                try data.values[start * d..<end * d].withUnsafeBufferPointer { buf in
                    let (l, b) = try index.addRecordingNearest(buf, ids: (start..<end).map { 5 + 3 * Int64($0) })
                    lists += l
                    bounds += b
                }
            }
            #expect(index.count == data.count && lists.count == data.count * 32 && bounds.count == data.count * 4)
            return (index, lists, bounds)
        }

        @Test(
            "Stored vectors searched with their nearest lists recorded at add: the same answers as the coarse pass, bit for bit; most take the lists; nprobe of 32 and up, or bad lists, take the coarse pass",
            arguments: [("IVF256,Flat", IndexMetric.l2), ("IVF256,SQ8", .l2), ("IVF200,Flat", .ip)])
        func nearestListsEqualCoarse(factory: String, metric: IndexMetric) throws {
            defer { DistanceKernel.use(.auto) }
            let (index, lists, bounds) = try Self.probed(factory, metric: metric)
            var rng = TestRNG(seed: 404)
            let base = Self.queries(80, seed: 3)
            // Rows of the data with their own lists; nprobe over every step (3, 7, 15, 31) and past them.
            var rows: [Int] = []
            var qs: [(vector: [Float], parameters: SearchParameters)] = []
            for (i, q) in base.enumerated() {
                let row = Int(rng.next() % UInt64(Self.data.count))
                var p = q.parameters
                p.nprobe = [1, 2, 3, 4, 7, 8, 12, 15, 16, 31, 32, 40][i % 12]
                rows.append(row)
                qs.append((Self.data.row(row), p))
            }
            try lists.withUnsafeBufferPointer { l in
                try bounds.withUnsafeBufferPointer { b in
                    func hinted(
                        _ qs: [(vector: [Float], parameters: SearchParameters)]
                    ) -> [(vector: [Float], parameters: SearchParameters)] {
                        qs.enumerated().map { j, q in
                            var p = q.parameters
                            p.nearest = NearestLists.Row(
                                lists: l.baseAddress! + rows[j] * 32, bounds: b.baseAddress! + rows[j] * 4)
                            return (q.vector, p)
                        }
                    }
                    for kernel in DistanceKernel.allCases where kernel.isSupported {
                        DistanceKernel.use(kernel)
                        let before = NearestLists.stats
                        let plain = try index.searchBatch(qs, k: 10)
                        let withLists = try index.searchBatch(hinted(qs), k: 10)
                        let after = NearestLists.stats
                        for j in qs.indices {
                            #expect(
                                plain[j].ids == withLists[j].ids && plain[j].distances == withLists[j].distances,
                                "\(factory) \(kernel) query \(j) nprobe \(qs[j].parameters.nprobe ?? 0)")
                        }
                        let single = try index.searchBatch(hinted(Array(qs.prefix(1))), k: 10)
                        #expect(single[0].ids == plain[0].ids && single[0].distances == plain[0].distances)
                        if kernel == .faiss {
                            #expect(after.used == before.used, "FAISS's own code paths never take recorded lists")
                        } else {
                            let deep = qs.filter { ($0.parameters.nprobe ?? 0) >= 32 }.count
                            #expect(
                                after.used - before.used >= (qs.count - deep) * 9 / 10,
                                "\(kernel): \(after.used - before.used) of \(qs.count - deep) took their lists")
                            #expect(after.declined - before.declined >= deep)
                        }
                    }
                }
            }
            // Lists out of range or repeated: declined, answers unchanged.
            DistanceKernel.use(.auto)
            var bad = (0..<32).map { Int32($0) }
            bad[3] = Int32(index.listCount + 5)
            var dup = (0..<32).map { Int32($0) }
            dup[9] = 4
            let huge = [Float](repeating: 1e30, count: 4)
            for broken in [bad, dup] {
                try broken.withUnsafeBufferPointer { l in
                    try huge.withUnsafeBufferPointer { b in
                        var p = SearchParameters(nprobe: 4)
                        p.nearest = NearestLists.Row(lists: l.baseAddress!, bounds: b.baseAddress!)
                        let before = NearestLists.stats
                        let got = try index.searchBatch([(Self.data.row(10), p)], k: 10)
                        let want = try index.search(Self.data.row(10), k: 10, parameters: SearchParameters(nprobe: 4))
                        #expect(got[0].ids == want.ids && got[0].distances == want.distances)
                        #expect(NearestLists.stats.declined == before.declined + 1)
                    }
                }
            }
            // Flat, and IVF of 32 lists or fewer, have none to record.
            for small in ["Flat", "IVF32,Flat"] {
                let other = try FaissIndex(dimension: 8, factory: small, metric: .l2)
                #expect(other.probedLists == 0)
            }
            let flat = try FaissIndex(dimension: 8, factory: "Flat", metric: .l2)
            #expect(throws: IndexError.self) {
                _ = try [Float](repeating: 0, count: 8).withUnsafeBufferPointer {
                    try flat.addRecordingNearest($0, ids: [0])
                }
            }
        }

        @Test(
            "A build records every product's nearest lists; similar-by-id in a batch takes them and answers as similar(to:) alone; an incremental build keeps and extends them"
        )
        func buildRecordsNearestLists() async throws {
            let (store, _) = try await Catalogue.store(Self.data, category: Self.category, inStock: Self.inStock)
            defer { Task { await store.close() } }
            let folder = Catalogue.folder()
            _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, index: "IVF40,Flat"))
            let m = try folder.manifest()
            #expect(m.nearest?.count == 32 && m.nearest?.boundRanks == [4, 8, 16, 32])
            #expect(m.files["nearest_lists"]?.bytes == Int64(Self.data.count * 36 * 4))
            let ask = { (search: ProductSearch, rows: [Int]) async throws in
                var requests: [SimilarRequest] = []
                for row in rows { requests.append(try await search.request(for: Catalogue.pid(row))) }
                #expect(requests.allSatisfy { $0.storedID != nil })
                let before = NearestLists.stats
                let batched = search.similar(batch: requests)
                #expect(
                    NearestLists.stats.used - before.used >= requests.count / 2, "few stored products took their lists")
                for (row, b) in zip(rows, batched) {
                    let alone = try await search.similar(to: Catalogue.pid(row))
                    guard case .success(let y) = b else {
                        Issue.record("row \(row) failed in the batch: \(b)")
                        continue
                    }
                    #expect(Self.sameAnswer(alone, y), "row \(row)")
                }
            }
            let search = try await ProductSearch.open(folder: folder, store: store, exactBelow: 50)
            try await ask(search, Array(stride(from: 3, to: Self.data.count, by: 97)))

            // 40 more products: an incremental build adds their rows after the kept ones.
            let more = SyntheticVectors(count: 40, dimension: Self.data.dimension, clusters: 8, seed: 32)
            try await Catalogue.put(
                more, rows: Array(0..<40), into: store, ids: { Catalogue.pid(Self.data.count + $0) },
                category: { "c\($0 % 10)" })
            let summary = try await IndexBuilder.build(
                store: store, options: Catalogue.options(folder, index: "IVF40,Flat", incremental: true))
            #expect(summary.mode == "incremental" && summary.added == 40)
            let m2 = try folder.manifest()
            #expect(m2.nearest?.count == 32 && m2.files["nearest_lists"]?.bytes == m2.nextID * 36 * 4)
            let again = try await ProductSearch.open(folder: folder, store: store, exactBelow: 50)
            try await ask(
                again, Array(stride(from: 5, to: Self.data.count, by: 211)) + (0..<40).map { Self.data.count + $0 })
        }

        // MARK: Second hop through the recorded lists

        /// An IVF index over the data under ids 0..<count (a second hop's table is by id), and its
        /// recorded lists as a NearestLists file (mapped; the file itself is removed at once).
        static func hopIndex(_ factory: String, metric: IndexMetric) throws -> (FaissIndex, NearestLists, [Int32]) {
            let index = try FaissIndex(dimension: data.dimension, factory: factory, metric: metric)
            try data.values.withUnsafeBufferPointer { try index.train($0) }
            let (lists, bounds) = try data.values.withUnsafeBufferPointer {
                try index.addRecordingNearest($0, ids: (0..<data.count).map(Int64.init))
            }
            var file = Data()
            for r in 0..<data.count {
                lists[r * 32..<(r + 1) * 32].withUnsafeBytes { file.append(contentsOf: $0) }
                bounds[r * 4..<(r + 1) * 4].withUnsafeBytes { file.append(contentsOf: $0) }
            }
            let url = FileManager.default.temporaryDirectory.appendingPathComponent("hop-\(UUID().uuidString).bin")
            try file.write(to: url)
            defer { try? FileManager.default.removeItem(at: url) }
            let table = try NearestLists(path: url.path)
            #expect(table.rows == data.count)
            return (index, table, lists)
        }

        @Test(
            "Second hop: the k best of the query's nprobe lists and the unvisited recorded lists of the best it found, checked against an exact search over exactly those lists; batch equals singles through every kernel; recall at nprobe 1 goes up",
            arguments: [("IVF256,Flat", IndexMetric.l2), ("IVF200,Flat", .ip), ("IVF256,SQ8", .l2)])
        func secondHop(factory: String, metric: IndexMetric) throws {
            defer { DistanceKernel.use(.auto) }
            let (index, table, lists) = try Self.hopIndex(factory, metric: metric)
            let d = Self.data.dimension, n = Self.data.count, k = 10
            let exactCodes = factory.hasSuffix(",Flat")
            func distance(_ a: Int, _ b: Int) -> Double {
                var s = 0.0
                for j in 0..<d {
                    let (x, y) = (Double(Self.data.values[a * d + j]), Double(Self.data.values[b * d + j]))
                    s += metric == .l2 ? (x - y) * (x - y) : x * y
                }
                return s
            }
            func better(_ a: Double, _ b: Double) -> Bool { metric == .l2 ? a < b : a > b }
            var sizes = [Int](repeating: 0, count: index.listCount)
            for r in 0..<n { sizes[Int(lists[r * 32])] += 1 }
            #expect(
                sizes.contains { $0 > n * 3 / 2 / index.listCount }
                    && sizes.contains { $0 > 0 && $0 <= n * 3 / 2 / index.listCount })
            var rng = TestRNG(seed: 77)
            var cases: [(row: Int, params: SearchParameters)] = []
            for i in 0..<60 {
                let row = Int(rng.next() % UInt64(n))
                var p = SearchParameters(nprobe: [1, 2, 3, 4, 8][i % 5], excluded: [Int64(row)])
                // Every third without the lists above 1.5x the mean (some lists fall on each side).
                p.hop = SecondHop(
                    table: table, top: [1, 3, 5, 10][i % 4], lists: [1, 2, 4, 32][(i / 4) % 4],
                    maxList: i % 3 == 2 ? n * 3 / 2 / index.listCount : nil)
                if i % 3 == 1 {
                    var b = IDBitmap(capacity: n)
                    let mod = 2 + i % 4
                    for r in 0..<n where r % mod == row % mod { b.insert(Int64(r)) }
                    p.allowed = b
                }
                cases.append((row, p))
            }
            // Edge cases: a filter that allows nothing; every list probed (nothing left to hop to).
            var none = SearchParameters(nprobe: 2, allowed: IDBitmap(capacity: n))
            none.hop = SecondHop(table: table, top: 3, lists: 4)
            cases.append((11, none))
            var all = SearchParameters(nprobe: index.listCount)
            all.hop = SecondHop(table: table, top: 5, lists: 4)
            cases.append((12, all))

            var plainRecall = 0.0, hopRecall = 0.0
            for kernel in DistanceKernel.allCases where kernel.isSupported {
                DistanceKernel.use(kernel)
                let qs = cases.map { (Self.data.row($0.row), $0.params) }
                // Half the queries carry their recorded lists too (the server's similar-by-id).
                let batched = try index.searchBatch(
                    qs.enumerated().map { j, q in
                        var p = q.1
                        if j % 2 == 0 { p.nearest = table.row(Int64(cases[j].row)) }
                        return (q.0, p)
                    }, k: k)
                for (j, c) in cases.enumerated() {
                    let got = try index.search(Self.data.row(c.row), k: k, parameters: c.params)
                    #expect(
                        got.ids == batched[j].ids && got.distances == batched[j].distances,
                        "\(factory) \(kernel) case \(j): batch differs")
                    var plainParams = c.params
                    plainParams.hop = nil
                    let first = try index.search(Self.data.row(c.row), k: k, parameters: plainParams)
                    let hop = got.results(of: 0), firstPass = first.results(of: 0)
                    // It contains every first-pass result that ranks within its k.
                    if let last = hop.last, hop.count == k {
                        for r in firstPass where metric == .l2 ? r.distance < last.distance : r.distance > last.distance
                        {
                            #expect(
                                hop.contains { $0.id == r.id },
                                "\(factory) \(kernel) case \(j): lost \(r.id) of the first pass")
                        }
                    } else {
                        #expect(hop.count >= firstPass.count)
                    }
                    #expect(Set(hop.map(\.id)).count == hop.count, "repeated ids")
                    for (a, b) in zip(hop, hop.dropFirst()) { #expect(!better(Double(b.distance), Double(a.distance))) }
                    guard exactCodes, kernel == .auto else { continue }
                    // Exactly: the lists a second hop visits, and the k best among their allowed vectors.
                    let p = c.params, h = p.hop!
                    let np = min(p.nprobe!, index.listCount)
                    var visit = Set(lists[c.row * 32..<c.row * 32 + min(np, 32)])
                    if np > 32 { visit = Set((0..<index.listCount).map(Int32.init)) }
                    for r in firstPass.prefix(h.top) {
                        for l in lists[Int(r.id) * 32..<Int(r.id) * 32 + min(h.lists, 32)] where !visit.contains(l) {
                            if let bound = h.maxList, sizes[Int(l)] > bound { continue }
                            visit.insert(l)
                        }
                    }
                    var candidates: [(id: Int, distance: Double)] = []
                    for r in 0..<n
                    where visit.contains(lists[r * 32]) && !p.excluded.contains(Int64(r))
                        && (p.allowed?.contains(Int64(r)) ?? true)
                    {
                        candidates.append((r, distance(c.row, r)))
                    }
                    candidates.sort {
                        better($0.distance, $1.distance) || ($0.distance == $1.distance && $0.id < $1.id)
                    }
                    let want = Array(candidates.prefix(k))
                    #expect(hop.count == want.count, "\(factory) case \(j): \(hop.count) results, want \(want.count)")
                    for (g, w) in zip(hop, want) {
                        #expect(
                            abs(Double(g.distance) - w.distance) <= 1e-4 * max(1, abs(w.distance)),
                            "\(factory) case \(j): \(g) vs \(w)")
                    }
                    let boundaryTie =
                        candidates.count > k && abs(candidates[k].distance - candidates[k - 1].distance) < 1e-5
                    if !boundaryTie {
                        #expect(Set(hop.map(\.id)) == Set(want.map { Int64($0.id) }), "\(factory) case \(j)")
                    }
                    // Recall against the exact k best the filter allows, at nprobe 1 with and without the hop.
                    if p.nprobe == 1 {
                        var truth: [(id: Int, distance: Double)] = []
                        for r in 0..<n where !p.excluded.contains(Int64(r)) && (p.allowed?.contains(Int64(r)) ?? true) {
                            truth.append((r, distance(c.row, r)))
                        }
                        truth.sort { better($0.distance, $1.distance) }
                        let exact = Set(truth.prefix(k).map { Int64($0.id) })
                        plainRecall += Double(firstPass.filter { exact.contains($0.id) }.count) / Double(exact.count)
                        hopRecall += Double(hop.filter { exact.contains($0.id) }.count) / Double(exact.count)
                    }
                }
            }
            if exactCodes {
                print(
                    "second hop \(factory): recall at nprobe 1, summed over its queries: plain \(plainRecall), with the hop \(hopRecall)"
                )
                #expect(
                    hopRecall > plainRecall + 1,
                    "the hop found no more true neighbours at nprobe 1: \(plainRecall) -> \(hopRecall)")
            }
        }
    }
}
