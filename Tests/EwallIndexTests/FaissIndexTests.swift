import EwallIndex
import EwallTestSupport
import Foundation
import Testing

/// The shim and its Swift wrapper, checked against ``ExactSearch`` on seeded clustered data.
@Suite("FAISS index (CFaissShim)")
struct FaissIndexTests {
    static let data = SyntheticVectors(count: 3000, dimension: 64, clusters: 60, seed: 7)
    /// Ids that are not row numbers, to prove the id layer maps them.
    static func id(_ row: Int) -> Int64 { 10_000 + 7 * Int64(row) }

    func filled(_ factory: String) throws -> FaissIndex {
        let d = Self.data
        let index = try FaissIndex(dimension: d.dimension, factory: factory, metric: .l2)
        if !index.isTrained { try d.values.withUnsafeBufferPointer { try index.train($0) } }
        try index.add(d.values, ids: (0..<d.count).map(Self.id))
        return index
    }

    @Test("Flat matches the exact search written in Swift: same ids in the same order, same distances")
    func flatIsExact() throws {
        let index = try filled("Flat")
        #expect(index.factory == "IDMap2,Flat")
        #expect(index.count == Self.data.count)
        for q in stride(from: 0, to: 3000, by: 97) {
            let exact = ExactSearch.nearest(Self.data.row(q), in: Self.data, k: 10)
            let got = try index.search(Self.data.row(q), k: 10).results(of: 0)
            #expect(got.map(\.id) == exact.map { Self.id($0.row) })
            for (g, e) in zip(got, exact) { #expect(abs(g.distance - e.distance) < 1e-4) }
        }
    }

    @Test(
        "Approximate kinds reach recall@10 >= 0.95 against the Swift exact search at a tuned setting",
        arguments: [("IVF40,Flat", 16, 0), ("HNSW16", 0, 64), ("IVF40,SQ8", 16, 0)])
    func approximateRecall(factory: String, nprobe: Int, efSearch: Int) throws {
        let index = try filled(factory)
        let params = SearchParameters(nprobe: nprobe == 0 ? nil : nprobe, efSearch: efSearch == 0 ? nil : efSearch)
        var sum = 0.0
        let queries = Array(stride(from: 1, to: 3000, by: 30))
        for q in queries {
            let exact = Set(ExactSearch.nearest(Self.data.row(q), in: Self.data, k: 10).map { Self.id($0.row) })
            let got = try index.search(Self.data.row(q), k: 10, parameters: params).results(of: 0).map(\.id)
            sum += Double(got.filter(exact.contains).count) / 10
        }
        let recall = sum / Double(queries.count)
        #expect(recall >= 0.95, "\(factory): recall@10 \(recall)")
        // nprobe 1 must be measurably worse for IVF: the parameter really reaches FAISS.
        if nprobe > 0 {
            var low = 0.0
            for q in queries {
                let exact = Set(ExactSearch.nearest(Self.data.row(q), in: Self.data, k: 10).map { Self.id($0.row) })
                let got = try index.search(Self.data.row(q), k: 10, parameters: SearchParameters(nprobe: 1)).results(
                    of: 0
                ).map(\.id)
                low += Double(got.filter(exact.contains).count) / 10
            }
            #expect(low / Double(queries.count) < recall)
        }
    }

    @Test(
        "IDBitmap.count counts every member, across word boundaries and a tail shorter than a word",
        arguments: [0, 1, 7, 8, 9, 63, 64, 65, 1_001])
    func bitmapCount(capacity: Int) {
        var rng = SystemRandomNumberGenerator()
        var bitmap = IDBitmap(capacity: capacity)
        var members = Set<Int64>()
        for _ in 0..<(capacity / 2 + 1) where capacity > 0 {
            let id = Int64.random(in: 0..<Int64(capacity), using: &rng)
            bitmap.insert(id)
            members.insert(id)
        }
        if capacity > 0 {
            bitmap.insert(Int64(capacity - 1))
            members.insert(Int64(capacity - 1))
        }
        #expect(bitmap.count == members.count)
        #expect(bitmap.count == (0..<Int64(capacity)).filter(bitmap.contains).count)
    }

    @Test(
        "A filter (allowed bitmap + excluded ids) returns the exact top-k among the allowed ids",
        arguments: ["Flat", "IVF40,Flat"])
    func filters(factory: String) throws {
        let index = try filled(factory)
        // 2% of the catalogue, spread over all clusters.
        let allowedRows = Set(stride(from: 3, to: 3000, by: 50))
        var bitmap = IDBitmap(capacity: Int(Self.id(3000)))
        for r in allowedRows { bitmap.insert(Self.id(r)) }
        let q = 1234
        let excludedRow = ExactSearch.nearest(Self.data.row(q), in: Self.data, k: 1) { allowedRows.contains($0) }[0].row
        // Exhaustive settings: the filter, not the approximation, is under test.
        let params = SearchParameters(nprobe: 40, efSearch: 3000, allowed: bitmap, excluded: [Self.id(excludedRow)])
        let got = try index.search(Self.data.row(q), k: 10, parameters: params).results(of: 0).map(\.id)
        let exact = ExactSearch.nearest(Self.data.row(q), in: Self.data, k: 10) {
            allowedRows.contains($0) && $0 != excludedRow
        }
        #expect(got.count == 10)
        #expect(got.allSatisfy { bitmap.contains($0) })
        #expect(!got.contains(Self.id(excludedRow)))
        #expect(got == exact.map { Self.id($0.row) })
    }

    @Test(
        "HNSW under a half-catalogue filter returns only allowed ids, with high recall (selective filters starve it: ProductSearch then searches exactly)"
    )
    func hnswFilter() throws {
        let index = try filled("HNSW16")
        var bitmap = IDBitmap(capacity: Int(Self.id(3000)))
        for r in stride(from: 0, to: 3000, by: 2) { bitmap.insert(Self.id(r)) }
        var hits = 0
        for q in stride(from: 1, to: 3000, by: 100) {
            let got = try index.search(
                Self.data.row(q), k: 10, parameters: SearchParameters(efSearch: 128, allowed: bitmap)
            ).results(of: 0)
            #expect(got.allSatisfy { bitmap.contains($0.id) })
            let exact = ExactSearch.nearest(Self.data.row(q), in: Self.data, k: 10) { $0 % 2 == 0 }.map {
                Self.id($0.row)
            }
            hits += Set(got.map(\.id)).intersection(exact).count
        }
        #expect(Double(hits) / 300 >= 0.9)
    }

    @Test("Remove and reconstruct by id; HNSW says it cannot remove", arguments: ["Flat", "IVF40,Flat"])
    func removeAndReconstruct(factory: String) throws {
        let index = try filled(factory)
        #expect(index.canRemove)
        #expect(try index.reconstruct(id: Self.id(17)) == Self.data.row(17))
        let gone = (0..<10).map { Self.id($0 * 3) }
        #expect(try index.remove(ids: gone + [999_999_999]) == 10)
        #expect(index.count == 2990)
        let e = #expect(throws: IndexError.self) { try index.reconstruct(id: gone[0]) }
        #expect(e?.code == .notFound)
        for r in [0, 3, 6] {
            let got = try index.search(Self.data.row(r), k: 5, parameters: SearchParameters(nprobe: 40)).results(of: 0)
                .map(\.id)
            #expect(!got.contains(Self.id(r)))
        }
    }

    @Test("HNSW cannot remove: a clear unsupported error")
    func hnswRemove() throws {
        let index = try filled("HNSW16")
        #expect(!index.canRemove)
        let e = #expect(throws: IndexError.self) { try index.remove(ids: [Self.id(1)]) }
        #expect(e?.code == .unsupported)
        #expect(e?.message.contains("cannot remove") == true)
    }

    @Test("Bad factory strings and dimensions are errors with FAISS's reason, not crashes")
    func errors() throws {
        let e = #expect(throws: IndexError.self) {
            try FaissIndex(dimension: 64, factory: "NoSuchIndex12", metric: .l2)
        }
        #expect(e?.code == .factory)
        let untrained = try FaissIndex(dimension: 64, factory: "IVF8,Flat", metric: .l2)
        let e2 = #expect(throws: IndexError.self) { try untrained.add(Self.data.row(0), ids: [1]) }
        #expect(e2?.code == .notTrained)
        let e3 = #expect(throws: IndexError.self) { try FaissIndex(contentsOf: "/nonexistent/x.faiss") }
        #expect(e3?.code == .io)
        let junk = FileManager.default.temporaryDirectory.appendingPathComponent("junk-\(UUID()).faiss")
        try Data("not an index".utf8).write(to: junk)
        defer { try? FileManager.default.removeItem(at: junk) }
        let e4 = #expect(throws: IndexError.self) { try FaissIndex(contentsOf: junk.path) }
        #expect(e4?.code == .io)
    }

    @Test(
        "Write and read back: the same answers, also memory-mapped (IVF), which is read-only",
        arguments: ["Flat", "IVF40,Flat", "HNSW16", "IVF40,SQ8"])
    func roundTrip(factory: String) throws {
        let index = try filled(factory)
        try index.setDefaults(nprobe: 8, efSearch: 48)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rt-\(UUID()).faiss").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try index.write(to: path)
        for mapped in [false, true] {
            let back = try FaissIndex(contentsOf: path, memoryMapped: mapped)
            #expect(back.count == index.count && back.dimension == 64 && back.kind == index.kind)
            let queries = Array(Self.data.values[0..<(64 * 20)])
            let a = try index.search(queries, k: 10), b = try back.search(queries, k: 10)
            #expect(a.ids == b.ids)
            if mapped && factory.hasPrefix("IVF") {
                #expect(!back.canRemove)
                #expect(throws: IndexError.self) { try back.add(Self.data.row(0), ids: [1]) }
            }
        }
    }

    @Test(
        "Balanced IVF training splits hub lists: no list near every query holds a large share, recall kept, the file reads back"
    )
    func balancedLists() throws {
        // More tight clusters than lists: some clusters get no centroid of their own, and the
        // centroids that take several of them drift towards the mean of all, near every query.
        let d = SyntheticVectors(count: 8000, dimension: 256, clusters: 200, intrinsic: 8, spread: 0.3, seed: 11)
        let ids = (0..<d.count).map(Self.id)
        func built(_ factor: Double?) throws -> (FaissIndex, Int) {
            let index = try FaissIndex(dimension: d.dimension, factory: "IVF160,Flat", metric: .l2)
            var split = 0
            try d.values.withUnsafeBufferPointer { buf in
                if let factor {
                    split = try index.train(buf, maxListFactor: factor).split
                } else {
                    try index.train(buf)
                }
            }
            try index.add(d.values, ids: ids)
            return (index, split)
        }
        // The truth from a Flat index (exact; FaissIndexTests.flatIsExact checks it against Swift).
        let exact = try FaissIndex(dimension: d.dimension, factory: "Flat", metric: .l2)
        try exact.add(d.values, ids: ids)
        let queries = Array(stride(from: 3, to: d.count, by: 80))
        let truth = try queries.map { Set(try exact.search(d.row($0), k: 10).ids) }
        func recall(_ index: FaissIndex, nprobe: Int) throws -> Double {
            var sum = 0.0
            for (q, t) in zip(queries, truth) {
                let got = try index.search(d.row(q), k: 10, parameters: SearchParameters(nprobe: nprobe)).ids
                sum += Double(got.filter(t.contains).count) / 10
            }
            return sum / Double(queries.count)
        }
        let mean = Double(d.count) / 160
        let (plain, _) = try built(nil)
        try #require(Double(plain.largestList) > 4 * mean, "the data has no hub list (largest \(plain.largestList))")
        let (balanced, split) = try built(4)
        #expect(split > 0)
        #expect(balanced.listCount > 160 && balanced.factory == "IVF\(balanced.listCount),Flat", "\(balanced.factory)")
        #expect(
            balanced.largestList * 2 <= plain.largestList,
            "largest list \(balanced.largestList) vs \(plain.largestList)")
        // Split again until no list holds more than 4x the mean of the lists there are (the
        // training sample is every vector here, so the lists are the training's).
        #expect(
            Double(balanced.largestList) <= 4 * Double(d.count) / Double(balanced.listCount),
            "largest list \(balanced.largestList) of \(balanced.listCount) lists (plain: \(plain.largestList))")
        for nprobe in [2, 4] {
            let (b, p) = (try recall(balanced, nprobe: nprobe), try recall(plain, nprobe: nprobe))
            #expect(b >= p - 0.01 && b >= 0.9, "nprobe \(nprobe): recall@10 \(b) balanced, \(p) plain")
        }
        // Factor 0-ish guards: below 1 is an argument error, not a silent plain build.
        #expect(throws: IndexError.self) {
            try d.values.withUnsafeBufferPointer {
                _ = try FaissIndex(
                    dimension: d.dimension, factory: "IVF160,Flat",
                    metric: .l2
                ).train($0, maxListFactor: 0.5)
            }
        }
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("balanced-\(UUID()).faiss").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try balanced.write(to: path)
        let back = try FaissIndex(contentsOf: path)
        #expect(back.listCount == balanced.listCount && back.factory == balanced.factory && back.count == d.count)
    }

    @Test(
        "Python's faiss.read_index reads our file and answers the same",
        .enabled(if: Python.hasFaiss, "/usr/bin/python3 cannot import faiss (apt-get install python3-faiss)"))
    func pythonReadsOurFile() throws {
        for factory in ["Flat", "IVF40,Flat"] {
            let index = try filled(factory)
            try index.setDefaults(nprobe: 8, efSearch: nil)
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("py-\(UUID())")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: dir) }
            try index.write(to: dir.appendingPathComponent("i.faiss").path)
            let queries = Array(Self.data.values[0..<(64 * 20)])
            try queries.withUnsafeBytes { try Data($0).write(to: dir.appendingPathComponent("q.f32")) }
            let out = try Python.run(
                """
                import faiss, numpy as np, json, sys
                d = sys.argv[1]
                index = faiss.read_index(d + "/i.faiss")
                q = np.fromfile(d + "/q.f32", dtype=np.float32).reshape(-1, 64)
                D, I = index.search(q, 10)
                print(json.dumps({"ids": I.ravel().tolist(), "ntotal": index.ntotal}))
                """, args: [dir.path])
            let obj = try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
            #expect(obj["ntotal"] as? Int == 3000)
            let ours = try index.search(queries, k: 10).ids
            #expect((obj["ids"] as? [Int])?.map(Int64.init) == ours, "\(factory)")
        }
    }
}

/// /usr/bin/python3 with Debian's python3-faiss, the reference.
enum Python {
    static var hasFaiss: Bool { (try? run("import faiss")) != nil }

    static func run(_ script: String, args: [String] = []) throws -> String {
        let r = try ProcessRunner.run(path: "/usr/bin/python3", ["-c", script] + args)
        guard r.status == 0 else { throw Fixtures.Missing(description: "python failed: \(r.stderr)") }
        return r.stdout
    }
}
