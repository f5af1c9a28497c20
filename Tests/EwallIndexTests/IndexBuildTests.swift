import EwallCore
import EwallIndex
import EwallStore
import EwallTestSupport
import Foundation
import Testing

@Suite("--index auto")
struct IndexPlanTests {
    @Test("Flat while small, IVF-Flat with >= 39 points per list, SQ8 then PQ as memory shrinks; never HNSW")
    func choices() throws {
        #expect(try IndexPlan.auto(count: 400, dimension: 2048, maxMemory: 1 << 34).factory == "Flat")
        let ivf = try IndexPlan.auto(count: 100_000, dimension: 2048, maxMemory: 1 << 34)
        #expect(ivf.factory == "IVF1265,Flat")
        #expect(ivf.approximate && ivf.trainingSize == 100_000)
        let small = try IndexPlan.auto(count: 6_000, dimension: 2048, maxMemory: 1 << 34)
        #expect(small.factory == "IVF153,Flat") // 4·√6000 = 310 would leave 19 per list
        #expect(6_000 / IndexPlan.listCount(for: 6_000) >= 39)
        #expect(try IndexPlan.auto(count: 100_000, dimension: 2048, maxMemory: 400 << 20).factory == "IVF1265,SQ8")
        let pq = try IndexPlan.auto(count: 10_000_000, dimension: 2048, maxMemory: 4 << 30)
        #expect(pq.factory == "IVF12649,PQ256x8np")
        #expect(pq.trainingSize <= 12649 * 256)
        // Compressed kinds re-rank by exact vectors; exact kinds need not.
        #expect(ivf.refineFactor == nil && pq.refineFactor == 16)
        #expect(try IndexPlan.auto(count: 100_000, dimension: 2048, maxMemory: 400 << 20).refineFactor == 4)
        for n in [5_000, 50_000, 1_000_000, 20_000_000] {
            #expect(try !IndexPlan.auto(count: n, dimension: 2048, maxMemory: 1 << 30).factory.contains("HNSW"))
            #expect(n / IndexPlan.listCount(for: n) >= 39)
        }
    }
}

@Suite("rebuild-faiss-index: builds from the store", .serialized)
struct IndexBuildTests {
    static let data = SyntheticVectors(count: 6000, dimension: 32, clusters: 150, seed: 11)

    @Test(
        "A flat build from SQLite and from PostgreSQL answers exactly as the Swift exact search",
        arguments: StoreKind.allCases)
    func flatBuild(kind: StoreKind) async throws {
        let small = SyntheticVectors(count: 800, dimension: 32, clusters: 40, seed: 3)
        let (store, _) = try await Catalogue.store(small, kind: kind)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        let s = try await IndexBuilder.build(store: store, options: Catalogue.options(folder))
        #expect(s.factory == "IDMap2,Flat" && s.count == 800 && s.recall == nil)
        let loaded = try folder.load(verifyChecksums: true)
        #expect(loaded.manifest.modelID == Catalogue.key.modelID && loaded.manifest.dimension == 32)
        for q in [0, 99, 555] {
            let exact = ExactSearch.nearest(small.row(q), in: small, k: 10).map { Catalogue.pid($0.row) }
            let got = try loaded.index.search(small.row(q), k: 10).results(of: 0).map { loaded.ids.productID($0.id)! }
            #expect(got == exact)
        }
    }

    @Test("auto picks IVF above 5,000 vectors, tunes nprobe to the target, and the recall it records is true")
    func ivfBuildMeetsTarget() async throws {
        let (store, _) = try await Catalogue.store(Self.data)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        let s = try await IndexBuilder.build(store: store, options: Catalogue.options(folder))
        #expect(s.factory.hasPrefix("IVF") && s.factory.hasSuffix(",Flat"))
        let r = try #require(s.recall)
        #expect(r.met && r.measured >= 0.95 && r.queries == 200)
        #expect(r.curve.count >= 2, "nprobe 1 should not already reach 0.95 on this data: \(r.curve)")
        let nprobe = try #require(s.search.nprobe)
        #expect(r.curve.last?.nprobe == nprobe)
        // Independent check on other queries, with the Swift exact search.
        let loaded = try folder.load()
        let independent = try Catalogue.independentRecall(
            loaded, data: Self.data, queries: Array(stride(from: 5, to: 6000, by: 60)))
        #expect(independent >= 0.93, "recorded \(r.measured), independent \(independent)")
        #expect(abs(independent - r.measured) < 0.05)
    }

    @Test(
        "IVF: recall under the default filters (same category, in stock) is measured at build; filtered searches start at the nprobe that met it, and reach it"
    )
    func filteredNprobeMeasured() async throws {
        // 5 categories over 150 clusters and a third out of stock: the filters cut every neighbourhood.
        let category: (Int) -> String? = { "c\(Self.data.cluster[$0] % 5)" }
        let inStock: (Int) -> Bool? = { $0 % 3 != 0 }
        let (store, _) = try await Catalogue.store(Self.data, category: category, inStock: inStock)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        let s = try await IndexBuilder.build(store: store, options: Catalogue.options(folder))
        #expect(s.factory.hasPrefix("IVF"))
        let f = try #require(s.filteredRecall, "no filtered recall recorded")
        let nprobe = try #require(s.search.nprobe)
        let filtered = try #require(s.search.filteredNprobe, "no filtered nprobe: \(f)")
        // Its queries are a draw of their own among the in-stock products with a category (4,000 here).
        let eligible = (0..<Self.data.count).filter { inStock($0) == true && category($0) != nil }.count
        #expect(f.met && f.measured >= 0.95 && f.queries == min(IndexBuilder.filteredRecallQueries, eligible))
        // The plain ladder from the unfiltered nprobe up, then second hops through the recorded lists.
        let plain = f.curve.filter { $0.secondHop == nil }, hops = f.curve.filter { $0.secondHop != nil }
        #expect(plain.first?.nprobe == nprobe && !hops.isEmpty, "\(f.curve)")
        #expect(f.curve.allSatisfy { ($0.microseconds ?? 0) > 0 }, "every point is timed")
        if let hop = s.search.secondHop {
            let chosen = try #require(hops.first { $0.nprobe == filtered && $0.secondHop == hop })
            #expect(chosen.recall == f.measured && chosen.recall >= 0.95)
            // Chosen because the plain ladder missed the target or was slower, and the fastest hop that met
            // it: with its sampling margin (the estimate less two standard errors clears 0.95).
            let se = try #require(chosen.standardError)
            #expect(se > 0 && chosen.recall - 2 * se >= 0.95 && chosen.lowerBound == chosen.recall - 2 * se)
            if let p = plain.last, p.lowerBound >= 0.95 { #expect(chosen.microseconds! < p.microseconds!) }
            for h in hops where h.lowerBound >= 0.95 { #expect(chosen.microseconds! <= h.microseconds!) }
        } else {
            #expect(plain.last?.nprobe == filtered && filtered >= nprobe && plain.last?.recall == f.measured)
            if let p = plain.last {
                #expect(p.lowerBound >= 0.95 && p.recall - 2 * (p.standardError ?? 1) >= 0.95)
                for h in hops where h.lowerBound >= 0.95 { #expect(p.microseconds! <= h.microseconds!) }
            }
        }
        // Hub bounds are recorded as entries: the ladder's 8x the mean list.
        #expect(hops.contains { $0.secondHop?.maxList != nil } && hops.contains { $0.secondHop?.maxList == nil })
        let loaded = try folder.load()
        #expect(loaded.manifest.search.filteredNprobe == filtered && loaded.manifest.filteredRecall == f)
        #expect(loaded.manifest.search.secondHop == s.search.secondHop)
        // Independently: similar products with the default rules, against the Swift exact search
        // among the same category's in-stock products.
        // (exactBelow 0: the index answers, however few products a filter leaves.)
        let search = try await ProductSearch.open(folder: folder, store: store, exactBelow: 0)
        var sum = 0.0, n = 0
        for q in stride(from: 7, to: Self.data.count, by: 97) where inStock(q) == true {
            let allowed = (0..<Self.data.count).filter { $0 != q && inStock($0) == true && category($0) == category(q) }
            let exact = Set(
                allowed.map { r in
                    (r, zip(Self.data.row(q), Self.data.row(r)).reduce(Float(0)) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) })
                }
                .sorted { ($0.1, $0.0) < ($1.1, $1.0) }.prefix(10).map(\.0))
            let a = try await search.similar(to: Catalogue.pid(q), query: SimilarQuery(k: 10, minSimilarity: 0))
            #expect((a.nprobe ?? 0) >= filtered, "\(q): searched at nprobe \(a.nprobe ?? 0)")
            #expect(a.secondHop == s.search.secondHop, "\(q): the answer names its second hop")
            let got = a.results.compactMap { Int($0.productID.dropFirst()) }
            sum += Double(got.filter(exact.contains).count) / Double(exact.count)
            n += 1
        }
        print(
            "filtered: nprobe \(nprobe), filtered \(filtered), hop \(String(describing: s.search.secondHop)), curve \(f.curve.map { "\($0.nprobe ?? 0)\($0.secondHop.map { "+\($0.top)x\($0.lists)" } ?? "") \($0.recall) \(Int($0.microseconds ?? 0))us" }), independent \(sum / Double(n))"
        )
        #expect(n > 30)
        #expect(sum / Double(n) >= 0.9, "independent filtered recall \(sum / Double(n)), recorded \(f.measured)")
    }

    @Test(
        "IVF, a filter that leaves fewer than k in the first lists: the filtered recall the build records is the recall served on the same queries"
    )
    func filteredRecallIsServedRecall() async throws {
        // 300 products in 30 clusters, each category two clusters, a third out of stock: about 7
        // allowed products in a query's own list, so first passes come back short of k = 10 and
        // searches deepen until they reach the other cluster of the category.
        // Every in-stock product is a build query (200, the filtered limit), so both sides see the same ones.
        let data = SyntheticVectors(count: 300, dimension: 32, clusters: 30, seed: 21)
        let category: (Int) -> String? = { "c\(data.cluster[$0] % 15)" }
        let inStock: (Int) -> Bool? = { $0 % 3 != 0 }
        let (store, _) = try await Catalogue.store(data, category: category, inStock: inStock)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        let s = try await IndexBuilder.build(
            store: store, options: Catalogue.options(folder, index: "IVF30,Flat", queries: 300))
        let f = try #require(s.filteredRecall, "no filtered recall recorded")
        let filtered = try #require(s.search.filteredNprobe, "filtered target not met: \(f.curve)")
        let queries = (0..<data.count).filter { inStock($0) == true }
        #expect(f.queries == queries.count)

        let search = try await ProductSearch.open(folder: folder, store: store, exactBelow: 0)
        var sum = 0.0, deepened = 0
        for q in queries {
            let allowed = (0..<data.count).filter { $0 != q && inStock($0) == true && category($0) == category(q) }
            let exact = Set(
                allowed.map { r in
                    (r, zip(data.row(q), data.row(r)).reduce(Float(0)) { $0 + ($1.0 - $1.1) * ($1.0 - $1.1) })
                }
                .sorted { ($0.1, $0.0) < ($1.1, $1.0) }.prefix(10).map(\.0))
            let a = try await search.similar(to: Catalogue.pid(q), query: SimilarQuery(k: 10, minSimilarity: 0))
            if (a.nprobe ?? 0) > filtered { deepened += 1 }
            sum +=
                Double(a.results.compactMap { Int($0.productID.dropFirst()) }.filter(exact.contains).count)
                / Double(exact.count)
        }
        let served = sum / Double(queries.count)
        print(
            "filtered recall: recorded \(f.measured) at nprobe \(filtered) hop \(String(describing: s.search.secondHop)), served \(served), \(deepened) of \(queries.count) deepened"
        )
        #expect(deepened > 0, "no first pass came back short: the case this test is for did not happen")
        #expect(abs(served - f.measured) < 1e-9, "recorded \(f.measured), served \(served)")
    }

    @Test(
        "Every explicit kind: the recall recorded matches an independent measurement; the target is met or flagged",
        arguments: [("HNSW16", true), ("IVF100,SQ8", true), ("IVF100,PQ4x8np", false), ("IVF100,PQ4x8np", true)])
    func explicitKinds(factory: String, refine: Bool) async throws {
        let data = SyntheticVectors(count: 4000, dimension: 32, clusters: 100, seed: 5)
        let (store, _) = try await Catalogue.store(data)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        var options = Catalogue.options(folder, index: factory)
        options.refine = refine
        let s = try await IndexBuilder.build(store: store, options: options)
        let r = try #require(s.recall)
        let independent = try Catalogue.independentRecall(
            try folder.load(), data: data, queries: Array(stride(from: 7, to: 4000, by: 40)))
        #expect(abs(independent - r.measured) < 0.06, "\(factory): recorded \(r.measured), independent \(independent)")
        if r.met {
            #expect(independent >= 0.9)
        } else {
            #expect(s.warnings.contains { $0.contains("below the target") })
        }
        if factory == "IVF100,PQ4x8np" {
            // 4 bytes per 32-d vector rank too coarsely alone; re-ranking 16 × k of them by exact vectors does not.
            #expect(r.met == refine, "refine \(refine): \(r.curve)")
            #expect(
                FileManager.default.fileExists(atPath: folder.url.appendingPathComponent(ExactVectors.fileName).path)
                    == refine)
        }
    }

    @Test("--incremental adds new, replaces changed and removes deleted vectors; the result equals a full rebuild")
    func incremental() async throws {
        let data = SyntheticVectors(count: 1200, dimension: 32, clusters: 40, seed: 9)
        let (store, url) = try await Catalogue.store(data, kind: .sqlite)
        defer { Task { await store.close() } }
        // Start from the first 1000 rows.
        let folder = Catalogue.folder()
        let first = SyntheticVectors(count: 1000, dimension: 32, clusters: 40, seed: 9)
        let (startStore, _) = try await Catalogue.store(first)
        _ = try await IndexBuilder.build(store: startStore, options: Catalogue.options(folder))
        await startStore.close()
        // The full store has rows 1000..<1200 more; change 5 vectors and delete 7 products.
        let changed = [10, 20, 30, 40, 50]
        let fresh = SyntheticVectors(count: 5, dimension: 32, clusters: 2, seed: 99)
        try await store.write(
            WriteBatch(
                embeddings: changed.enumerated().map { i, r in
                    StoredEmbedding(
                        productID: Catalogue.pid(r), imageURL: "file:///new-\(r).jpg", key: Catalogue.key,
                        vector: fresh.row(i))
                }))
        let deleted = [100, 101, 102, 103, 104, 105, 106]
        try sqlite(
            url,
            "DELETE FROM embeddings WHERE product_id IN (\(deleted.map { "'\(Catalogue.pid($0))'" }.joined(separator: ",")))"
        )

        let s = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, incremental: true))
        #expect(s.mode == "incremental")
        #expect(s.added == 200 && s.changed == 5 && s.removed == 7 && s.unchanged == 1000 - 5 - 7)
        #expect(s.count == 1200 - 7)
        let inc = try folder.load(verifyChecksums: true)

        let fullFolder = Catalogue.folder()
        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(fullFolder))
        let full = try fullFolder.load()
        for q in [0, 10, 500, 1100] {
            let a = try inc.index.search(data.row(q), k: 10).results(of: 0).map { inc.ids.productID($0.id)! }
            let b = try full.index.search(data.row(q), k: 10).results(of: 0).map { full.ids.productID($0.id)! }
            #expect(a == b)
            #expect(!a.contains { deleted.map(Catalogue.pid).contains($0) })
        }
        // The changed product is found by its new vector.
        let hit = try inc.index.search(fresh.row(0), k: 1).results(of: 0)[0]
        #expect(inc.ids.productID(hit.id) == Catalogue.pid(10) && hit.distance < 1e-6)

        // Nothing changed since: all unchanged.
        let again = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, incremental: true))
        #expect(again.added == 0 && again.changed == 0 && again.removed == 0 && again.unchanged == 1193)
    }

    @Test("--incremental does a full rebuild, and says why, where an update cannot give a good index")
    func incrementalFallsBack() async throws {
        let data = SyntheticVectors(count: 1000, dimension: 32, clusters: 40, seed: 2)
        let (store, url) = try await Catalogue.store(data)
        defer { Task { await store.close() } }
        let folder = Catalogue.folder()
        _ = try await IndexBuilder.build(store: store, options: Catalogue.options(folder, index: "HNSW16"))
        try sqlite(url, "DELETE FROM embeddings WHERE product_id = '\(Catalogue.pid(3))'")
        let s = try await IndexBuilder.build(
            store: store, options: Catalogue.options(folder, index: "HNSW16", incremental: true))
        #expect(s.mode == "full")
        #expect(s.fullRebuildReason?.contains("cannot remove") == true, "\(s.fullRebuildReason ?? "nil")")
        #expect(s.count == 999)

        // The catalogue outgrows Flat: auto now wants IVF.
        let flatFolder = Catalogue.folder()
        let few = SyntheticVectors(count: 300, dimension: 32, clusters: 10, seed: 2)
        let (fewStore, _) = try await Catalogue.store(few)
        _ = try await IndexBuilder.build(store: fewStore, options: Catalogue.options(flatFolder))
        await fewStore.close()
        let (bigStore, _) = try await Catalogue.store(Self.data)
        defer { Task { await bigStore.close() } }
        let s2 = try await IndexBuilder.build(
            store: bigStore, options: Catalogue.options(flatFolder, incremental: true))
        #expect(s2.mode == "full" && s2.factory.hasPrefix("IVF"))
        #expect(s2.fullRebuildReason?.contains("auto picks IVF") == true, "\(s2.fullRebuildReason ?? "nil")")
    }

    func sqlite(_ url: String, _ sql: String) throws {
        let r = try ProcessRunner.run(path: "/usr/bin/sqlite3", [String(url.dropFirst("sqlite:".count)), sql])
        #expect(r.status == 0, "\(r.stderr)")
    }
}

@Suite("The index folder: atomic replace and the rebuild lock", .serialized)
struct IndexFolderTests {
    /// Publishes a flat index of `n` rows whose product ids all carry the generation `gen`.
    static func publish(_ folder: IndexFolder, gen: Int, n: Int) throws {
        let data = SyntheticVectors(count: n, dimension: 16, clusters: 5, seed: UInt64(gen))
        let index = try FaissIndex(dimension: 16, factory: "Flat", metric: .l2)
        try index.add(data.values, ids: (0..<n).map(Int64.init))
        var map = IDMap()
        for i in 0..<n { map.insert(id: Int64(i), productID: "g\(gen)-\(i)", hash: 0) }
        _ = try folder.publish(
            index: index, idMap: map,
            manifest: IndexManifest(
                factory: index.factory, metric: .l2, distance: "", search: .init(), dimension: 16, count: n,
                modelID: "m",
                preprocessing: "p", builtAt: "", buildSeconds: 0, buildMode: "full", choice: "gen \(gen)", recall: nil,
                nextID: Int64(n), files: [:]))
    }

    @Test("A reader loading in a loop while the folder is replaced 30 times never fails and never sees a mix")
    func atomicReplace() async throws {
        let folder = Catalogue.folder()
        try Self.publish(folder, gen: 0, n: 100)
        let stop = Flag()
        let reader = ReaderLoop(folder: folder, stop: stop)
        let thread = Thread { reader.run() }
        thread.start()
        for gen in 1...30 { try Self.publish(folder, gen: gen, n: 100 + gen * 37) }
        stop.set()
        while !reader.finished.isSet { try await Task.sleep(nanoseconds: 5_000_000) }
        #expect(reader.errors == [], "\(reader.errors.prefix(3))")
        #expect(reader.loads > 10)
        #expect(reader.generations.count > 1, "the reader should have seen several generations")
        let last = try folder.load()
        #expect(last.manifest.choice == "gen 30")
        // No staging folders are left behind.
        let siblings = try FileManager.default.contentsOfDirectory(atPath: folder.url.deletingLastPathComponent().path)
        #expect(siblings == ["faiss"], "\(siblings)")
    }

    @Test("A second rebuild while one holds the lock fails at once and names the holder")
    func lockContention() async throws {
        let folder = Catalogue.folder()
        var held: IndexLock? = try IndexLock(folder: folder)
        let e = #expect(throws: IndexError.self) { try IndexLock(folder: folder) }
        #expect(e?.code == .locked)
        #expect(e?.message.contains("pid \(getpid())") == true, "\(e?.message ?? "")")
        // The builder refuses too, before touching the store.
        let data = SyntheticVectors(count: 50, dimension: 8, clusters: 2, seed: 1)
        let (store, _) = try await Catalogue.store(data)
        defer { Task { await store.close() } }
        await #expect(throws: IndexError.self) {
            try await IndexBuilder.build(store: store, options: Catalogue.options(folder))
        }
        held = nil
        _ = held
        let s = try await IndexBuilder.build(store: store, options: Catalogue.options(folder))
        #expect(s.count == 50)
    }
}

/// A thread that loads the folder until told to stop, recording anything inconsistent.
///
/// Safe because: run() alone writes `loads`, `errors` and `generations`, on its one thread; the test reads them only after `finished` is set.
final class ReaderLoop: @unchecked Sendable {
    let folder: IndexFolder
    let stop: Flag
    let finished = Flag()
    private(set) var loads = 0
    private(set) var errors: [String] = []
    private(set) var generations = Set<String>()

    init(folder: IndexFolder, stop: Flag) {
        self.folder = folder
        self.stop = stop
    }

    func run() {
        while !stop.isSet {
            do {
                let l = try folder.load(verifyChecksums: true)
                let gen = l.manifest.choice.replacingOccurrences(of: "gen ", with: "g") + "-"
                generations.insert(gen)
                if l.index.count != l.manifest.count || !l.ids.ids.allSatisfy({ l.ids.productID($0)!.hasPrefix(gen) }) {
                    errors.append("mixed generations at \(gen)")
                }
                loads += 1
            } catch {
                errors.append("\(error)")
            }
        }
        finished.set()
    }
}

/// A flag set once, read from other threads.
final class Flag: Sendable {
    private let value = Locked(false)
    func set() { value.withLock { $0 = true } }
    var isSet: Bool { value.withLock { $0 } }
}
