// The index half of `make bench` (bench/index_bench.py runs Python faiss in the same run):
//
//   ewall-bench index load --npy V.npy --meta meta.tsv --db URL --model-id ID
//       puts the vectors into a store (product_id, category, in_stock from meta.tsv)
//   ewall-bench index search --db URL --index DIR --npy V.npy --meta meta.tsv --queries N
//       single-query latency and batched throughput of the raw index at its tuned nprobe, and
//       similar products by id with the platform's default filters (p50/p99, recall@10 against
//       an exact search over the same filtered products). Prints one JSON object.
//   ewall-bench index latency --index FILE.faiss --npy QUERIES.npy --nprobe 4,16 [--k 10] [--kernels auto,faiss] [--mmap]
//       single-query latency of one FAISS file (bench/faiss_kernel_bench.py runs Python faiss on
//       the same file in the same run): for each nprobe and distance kernel, p50/p99/mean ms and
//       the ids found (to check that every side answers the same). Prints one JSON object.
import EwallML
import Foundation

enum IndexBench {
    static func run(_ args: [String]) async throws {
        func opt(_ name: String) -> String? {
            args.firstIndex(of: name).flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil }
        }
        if args.first == "latency" {
            return try latency(
                index: opt("--index")!, mapped: args.contains("--mmap"), queries: opt("--npy")!,
                nprobes: (opt("--nprobe") ?? "4,16").split(separator: ",").map { Int($0)! },
                k: Int(opt("--k") ?? "10")!,
                kernels: (opt("--kernels") ?? "auto,faiss").split(separator: ",").map {
                    guard let k = DistanceKernel(rawValue: String($0)) else { fatalError("unknown kernel \($0)") }
                    return k
                })
        }
        let (shape, values) = try Npy.decode(Data(contentsOf: URL(fileURLWithPath: opt("--npy")!)))
        let (n, d) = (shape[0], shape[1])
        let meta = try String(contentsOfFile: opt("--meta")!, encoding: .utf8).split(separator: "\n").dropFirst().map {
            $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        }
        precondition(meta.count == n, "meta.tsv rows \(meta.count) != vectors \(n)")
        let store = try await StoreLocation(parsing: opt("--db")!).open()
        defer { Task { await store.close() } }
        switch args.first {
        case "load":
            let key = ModelKey(modelID: opt("--model-id") ?? "synthetic@bench", preprocessing: "squash224")
            for start in stride(from: 0, to: n, by: 1000) {
                let rows = start..<min(n, start + 1000)
                try await store.upsertProducts(
                    rows.map {
                        Product(
                            id: meta[$0][0], title: "synthetic \($0)", category: meta[$0][1],
                            inStock: meta[$0][2] == "1")
                    }, source: .import)
                try await store.write(
                    WriteBatch(
                        embeddings: rows.map {
                            StoredEmbedding(
                                productID: meta[$0][0], imageURL: "synthetic:\($0)", key: key,
                                vector: Array(values[$0 * d..<($0 + 1) * d]))
                        }))
            }
            print("{\"loaded\": \(n)}")
        case "search":
            try await search(
                values: values, n: n, d: d, meta: meta, store: store,
                folder: IndexFolder(path: opt("--index")!), queryCount: Int(opt("--queries") ?? "500")!)
        default:
            fatalError("ewall-bench index load|search")
        }
    }

    /// Single-query latency of `index` (a FAISS file, loaded the way the server loads it) for each
    /// nprobe and kernel; one thread, queries one at a time, one warm-up pass first.
    static func latency(
        index path: String, mapped: Bool, queries: String, nprobes: [Int], k: Int, kernels: [DistanceKernel]
    ) throws {
        FaissIndex.setThreads(1)
        let (shape, q) = try Npy.decode(Data(contentsOf: URL(fileURLWithPath: queries)))
        let (nq, d) = (shape[0], shape[1])
        let index = try FaissIndex(contentsOf: path, memoryMapped: mapped)
        precondition(index.dimension == d, "queries are \(d)-d, the index \(index.dimension)-d")
        let clock = ContinuousClock()
        var runs: [[String: Any]] = []
        for nprobe in nprobes {
            let p = SearchParameters(nprobe: nprobe)
            for kernel in kernels {
                let inForce = DistanceKernel.use(kernel)
                for i in 0..<min(nq, 20) { _ = try index.search(Array(q[i * d..<(i + 1) * d]), k: k, parameters: p) }
                var ms: [Double] = [], ids: [Int64] = []
                for i in 0..<nq {
                    let query = Array(q[i * d..<(i + 1) * d])
                    let start = clock.now
                    let found = try index.search(query, k: k, parameters: p)
                    ms.append(seconds(clock.now - start) * 1000)
                    ids += found.ids
                }
                runs.append([
                    "nprobe": nprobe, "kernel": inForce.rawValue, "p50_ms": percentile(ms, 0.5),
                    "p99_ms": percentile(ms, 0.99), "mean_ms": ms.reduce(0, +) / Double(ms.count), "ids": ids,
                ])
            }
        }
        DistanceKernel.use(.auto)
        let out: [String: Any] = [
            "factory": index.factory, "count": index.count, "queries": nq, "mmap": mapped,
            "blas_core": DistanceKernel.blasCore ?? "", "runs": runs,
        ]
        print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    static func percentile(_ xs: [Double], _ p: Double) -> Double {
        let s = xs.sorted()
        return s[min(s.count - 1, Int((Double(s.count - 1) * p).rounded()))]
    }

    static func search(
        values: [Float], n: Int, d: Int, meta: [[String]], store: any EmbeddingStore,
        folder: IndexFolder, queryCount: Int
    ) async throws {
        FaissIndex.setThreads(2)
        let clock = ContinuousClock()
        let search = try await ProductSearch.open(folder: folder, store: store)
        let loaded = try folder.load()
        let index = loaded.index
        let m = loaded.manifest
        let params = SearchParameters(nprobe: m.search.nprobe, efSearch: m.search.efSearch)
        // Queries: every (n / queryCount)-th product, deterministic.
        let step = max(1, n / queryCount)
        let rows = Array(stride(from: 0, to: n, by: step).prefix(queryCount))
        func row(_ r: Int) -> [Float] { Array(values[r * d..<(r + 1) * d]) }

        // Raw index: one query at a time, then all in one call.
        var single: [Double] = []
        _ = try index.search(row(rows[0]), k: 10, parameters: params)
        for r in rows {
            let q = row(r)
            let t = clock.measure { _ = try! index.search(q, k: 10, parameters: params) }
            single.append(seconds(t) * 1000)
        }
        let batch = rows.flatMap(row)
        let tb = seconds(clock.measure { _ = try! index.search(batch, k: 10, parameters: params) })

        // Similar products by id, the platform's defaults (same category, in stock, k=10, >= 0.5).
        var similar: [Double] = []
        var answers: [String: [String]] = [:]
        _ = try await search.similar(to: meta[rows[0]][0], query: SimilarQuery(minSimilarity: 0))
        for r in rows {
            let start = clock.now
            let a = try await search.similar(to: meta[r][0], query: SimilarQuery(minSimilarity: 0))
            similar.append(seconds(clock.now - start) * 1000)
            answers[meta[r][0]] = a.results.map(\.productID)
        }
        // Exact answers under the same filters: brute force over each query's eligible products.
        var groups: [String: [Int]] = [:]
        for r in 0..<n where meta[r][2] == "1" { groups[meta[r][1], default: []].append(r) }
        var recallSum = 0.0, counted = 0
        for (category, members) in groups {
            let queries = rows.filter { meta[$0][1] == category }
            guard !queries.isEmpty else { continue }
            let matrix = members.flatMap(row)
            let qm = queries.flatMap(row)
            let exact = try qm.withUnsafeBufferPointer { qb in
                try matrix.withUnsafeBufferPointer { mb in
                    try FaissIndex.exactNeighbours(queries: qb, vectors: mb, dimension: d, k: 11, metric: m.metric)
                }
            }
            for (i, q) in queries.enumerated() {
                let truth = exact.results(of: i).map { meta[members[Int($0.id)]][0] }.filter { $0 != meta[q][0] }
                    .prefix(10)
                let got = Set(answers[meta[q][0]] ?? [])
                recallSum += Double(truth.filter(got.contains).count) / Double(max(1, truth.count))
                counted += 1
            }
        }
        let out: [String: Any] = [
            "factory": m.factory, "nprobe": m.search.nprobe as Any, "ef_search": m.search.efSearch as Any,
            "count": index.count, "queries": rows.count,
            "single_p50_ms": percentile(single, 0.5), "single_p99_ms": percentile(single, 0.99),
            "batched_qps": Double(rows.count) / tb,
            "similar_p50_ms": percentile(similar, 0.5), "similar_p99_ms": percentile(similar, 0.99),
            "similar_recall_at_10": recallSum / Double(max(1, counted)),
        ]
        print(String(decoding: try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys]), as: UTF8.self))
    }
}
