import EwallCore
import EwallIndex
import EwallStore
import EwallTestSupport
import Foundation
import Testing

@Suite("The id map and filter columns in flat arrays")
struct ProductIDTableTests {
    @Test("Both directions, gaps left by removed ids, ids that need JSON escapes, unknown ids")
    func lookups() throws {
        let folder = Catalogue.folder()
        let index = try FaissIndex(dimension: 4, factory: "Flat", metric: .l2)
        let names: [Int64: String] = [
            0: "a", 1: "p\"quoted\"", 4: "tab\there", 5: "한국어-다운자켓", 9: "back\\slash", 10: "",
        ]
        var map = IDMap()
        for (id, name) in names {
            try index.add([Float](repeating: Float(id), count: 4), ids: [id])
            map.insert(id: id, productID: name, hash: UInt64(id) * 7)
        }
        _ = try folder.publish(
            index: index, idMap: map,
            manifest: IndexManifest(
                factory: index.factory, metric: .l2, distance: "", search: .init(), dimension: 4, count: names.count,
                modelID: "m", preprocessing: "p", builtAt: "", buildSeconds: 0, buildMode: "full", choice: "",
                recall: nil,
                nextID: 11, files: [:]))
        let ids = try folder.load().ids
        #expect(ids.count == names.count && ids.capacity == 11)
        for (id, name) in names {
            #expect(ids.productID(id) == name)
            #expect(ids.id(of: name) == id)
        }
        for unused: Int64 in [2, 3, 6, 7, 8, 11, -1] { #expect(ids.productID(unused) == nil) }
        for unknown in ["b", "p\"quoted", "한국어", "tab"] { #expect(ids.id(of: unknown) == nil) }
        #expect(ids.ids == names.keys.sorted())
    }

    @Test("A malformed, unordered or duplicated id map is a clear manifest error")
    func badMaps() throws {
        for (body, says) in [
            ("0\t0\t\"a\"\n0\t0\t\"b\"\n", "out of order"), ("3\t0\t\"a\"\n1\t0\t\"b\"\n", "out of order"),
            ("0\t0\t\"a\"\n1\t0\t\"a\"\n", "twice"), ("0\tzz\t\"a\"\n", "malformed"), ("0\t0\tnot json\n", "JSON"),
        ] {
            let folder = Catalogue.folder()
            let index = try FaissIndex(dimension: 4, factory: "Flat", metric: .l2)
            var map = IDMap()
            map.insert(id: 0, productID: "x", hash: 0)
            try index.add([0, 0, 0, 0], ids: [0])
            _ = try folder.publish(
                index: index, idMap: map,
                manifest: IndexManifest(
                    factory: index.factory, metric: .l2, distance: "", search: .init(), dimension: 4, count: 1,
                    modelID: "m", preprocessing: "p", builtAt: "", buildSeconds: 0, buildMode: "full", choice: "",
                    recall: nil,
                    nextID: 1, files: [:]))
            // Replace the id map behind the manifest's back (the manifest's size check is dropped with it).
            var manifest = try folder.manifest()
            manifest.files["id_map"] = nil
            try JSONEncoder().encode(manifest).write(to: folder.url.appendingPathComponent(IndexFolder.manifestFile))
            try Data(("id\tvector_fnv1a64\tproduct_id\n" + body).utf8).write(
                to: folder.url.appendingPathComponent(IndexFolder.idMapFile))
            #expect { try folder.load() } throws: { e in
                (e as? IndexError)?.code == .manifest && "\(e)".contains(says)
            }
        }
    }
}

@Suite("Compressed indexes re-rank by exact vectors; --max-memory", .serialized)
struct CompressedIndexTests {
    static let data = SyntheticVectors(count: 6000, dimension: 32, clusters: 150, seed: 21)

    /// Category by cluster, a third out of stock: the platform's default filters bite.
    static func category(_ r: Int) -> String? { "c\(data.cluster[r] % 12)" }
    static func inStock(_ r: Int) -> Bool? { r % 3 != 0 }

    @Test(
        "--max-memory picks SQ8 then PQ; both keep vectors.f32, reach the target, and answer similar products as an exact index does",
        arguments: [(Int64(500 << 10), "SQ8"), (Int64(200 << 10), "PQ")])
    func autoCompressed(budget: Int64, kind: String) async throws {
        let (store, _) = try await Catalogue.store(Self.data, category: Self.category, inStock: Self.inStock)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder(), flatFolder = Catalogue.folder()
        var options = Catalogue.options(folder)
        options.maxMemory = budget
        let s = try await IndexBuilder.build(store: store, options: options)
        #expect(s.factory.contains(kind), "\(s.factory): \(s.choice)")
        let r = try #require(s.recall)
        #expect(r.met && r.measured >= 0.95, "\(r.curve)")
        let loaded = try folder.load(verifyChecksums: true)
        let exact = try #require(loaded.exact)
        #expect(loaded.manifest.refine?.factor == IndexPlan.refineFactor(for: s.factory))
        #expect(exact.rows == Self.data.count)
        for row in [0, 77, 5999] { #expect(exact.vector(Int64(row)) == Self.data.row(row)) } // ids are row numbers here

        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(flatFolder, index: "Flat"))
        let approx = try await ProductSearch.open(folder: folder, store: store)
        let truth = try await ProductSearch.open(folder: flatFolder, store: store)
        var found = 0, wanted = 0
        for row in stride(from: 3, to: 6000, by: 97) {
            let q = SimilarQuery(minSimilarity: 0)
            let a = try await approx.similar(to: Catalogue.pid(row), query: q)
            let t = try await truth.similar(to: Catalogue.pid(row), query: q)
            wanted += t.results.count
            found += Set(a.results.map(\.productID)).intersection(t.results.map(\.productID)).count
            // Re-ranked distances are the exact ones, not the codes'.
            let exactDistance = Dictionary(uniqueKeysWithValues: t.results.map { ($0.productID, $0.distance) })
            for hit in a.results {
                if let d = exactDistance[hit.productID] { #expect(abs(hit.distance - d) < 1e-5) }
                #expect(hit.category == Self.category(Int(hit.productID.dropFirst())!) && hit.inStock == true)
            }
        }
        #expect(Double(found) / Double(wanted) >= 0.95, "\(kind): \(found) of \(wanted)")
    }

    @Test(
        "Python's faiss reads the compressed index, and numpy the exact vectors file",
        .enabled(if: Python.hasFaiss, "/usr/bin/python3 cannot import faiss (apt-get install python3-faiss)"))
    func pythonReadsCompressed() async throws {
        let (store, _) = try await Catalogue.store(Self.data)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, index: "IVF60,SQ8"))
        let loaded = try folder.load()
        let out = try Python.run(
            """
            import faiss, numpy as np, json, sys
            d = sys.argv[1]
            index = faiss.read_index(d + "/image_index.faiss")
            v = np.fromfile(d + "/vectors.f32", dtype=np.float32).reshape(-1, 32)
            D, I = index.search(v[:20], 10)
            print(json.dumps({"ntotal": index.ntotal, "rows": len(v), "ids": I.ravel().tolist(), "row5": v[5].tolist()}))
            """, args: [folder.path])
        let obj = try JSONSerialization.jsonObject(with: Data(out.utf8)) as! [String: Any]
        #expect(obj["ntotal"] as? Int == 6000 && obj["rows"] as? Int == 6000)
        #expect((obj["row5"] as? [Double])?.map(Float.init) == Self.data.row(5))
        let ours = try loaded.index.search(
            Array(Self.data.values[0..<(20 * 32)]), k: 10,
            parameters: SearchParameters(nprobe: loaded.manifest.search.nprobe)
        ).ids
        #expect((obj["ids"] as? [Int])?.map(Int64.init) == ours)
    }

    @Test("--max-memory below the smallest index names the budget it needs; nothing is written")
    func budgetTooSmall() async throws {
        let (store, _) = try await Catalogue.store(Self.data)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        var options = Catalogue.options(folder)
        options.maxMemory = 50_000 // PQ8 needs 6000 × (8 + 8) = 96,000 bytes
        await #expect { try await IndexBuilder.build(store: store, options: options) } throws: { e in
            let s = "\(e)"
            return s.contains("PQ8 needs") && s.contains("raise --max-memory")
        }
        #expect(!folder.exists)
        #expect(throws: IndexError.self) {
            try IndexPlan.auto(count: 10_000_000, dimension: 2048, maxMemory: 100 << 20)
        }
    }

    @Test(
        "A memory-mapped IVF index (ewall-serve --mmap-index) answers exactly as a loaded one",
        arguments: ["IVF60,Flat", "IVF60,SQ8"])
    func memoryMapped(factory: String) async throws {
        let (store, _) = try await Catalogue.store(Self.data, category: Self.category, inStock: Self.inStock)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, index: factory))
        let loaded = try await ProductSearch.open(folder: folder, store: store)
        let mapped = try await ProductSearch.open(folder: folder, store: store, memoryMapped: true)
        for row in stride(from: 1, to: 6000, by: 301) {
            let a = try await loaded.similar(to: Catalogue.pid(row), query: SimilarQuery(minSimilarity: 0))
            let b = try await mapped.similar(to: Catalogue.pid(row), query: SimilarQuery(minSimilarity: 0))
            #expect(a.results == b.results && a.nprobe == b.nprobe, "\(factory) row \(row)")
        }
    }

    @Test("--incremental on a re-ranked index does a full rebuild and says why")
    func incrementalRefine() async throws {
        let (store, _) = try await Catalogue.store(Self.data)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, index: "IVF60,SQ8"))
        let s = try await IndexBuilder.build(
            store: store, options: Catalogue.options(folder, index: "IVF60,SQ8", incremental: true))
        #expect(s.mode == "full" && s.fullRebuildReason?.contains(ExactVectors.fileName) == true)
        #expect(try folder.load().exact?.rows == 6000)
    }
}
