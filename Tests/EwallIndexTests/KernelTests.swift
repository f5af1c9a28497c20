import EwallIndex
import EwallTestSupport
import Foundation
import Testing

extension KernelSwitching {
    /// The shim's distance kernels (AVX-512, AVX2+FMA, portable) against FAISS's own code, one
    /// distance at a time and through whole searches. Serialized with every suite that switches
    /// the kernel (see KernelSwitching): the kernel is process-wide.
    @Suite("Distance kernels (CFaissShim)", .serialized)
    struct KernelTests {
        static let dims = [1, 7, 16, 17, 100, 2047, 2048]

        /// Agreement within float rounding. L2: 1e-5 of the value. IP: 1e-5 of sum |x_i y_i| (an
        /// inner product that cancels to ~0 has no relative precision to speak of). Both: plus one
        /// rounding of a subnormal per term (values of 1e-20 square to below FLT_MIN, where FMA and
        /// FAISS's multiply-then-add round differently), and infinities must agree exactly.
        static func close(_ a: Float, _ b: Float, scale: Double, d: Int) -> Bool {
            if a.isInfinite || b.isInfinite || a.isNaN || b.isNaN { return a == b || (a.isNaN && b.isNaN) }
            return abs(Double(a) - Double(b)) <= 1e-5 * scale + Double(d) * Double(Float.leastNonzeroMagnitude)
        }

        /// Rows of `d` values: `kind` picks gaussian, all zeros, huge (1e18 / 1e17 for IP, so the
        /// exact IP stays finite) or tiny (1e-20) magnitudes.
        static func rows(_ n: Int, _ d: Int, kind: String, metric: IndexMetric, rng: inout TestRNG) -> [Float] {
            (0..<(n * d)).map { _ in
                switch kind {
                case "zero": 0
                case "huge": (rng.uniform() * 2 - 1) * (metric == .ip ? 1e17 : 1e18)
                case "tiny": (rng.uniform() * 2 - 1) * 1e-20
                case "mixed": rng.gaussian() * [Float(1e-20), 1, 1e6, 0][Int(rng.next() % 4)]
                default: rng.gaussian()
                }
            }
        }

        /// Forces `kernel`, checks that it is in force, and compares its distances with FAISS's on
        /// every dimension, data kind and metric.
        func matchesFaiss(_ kernel: DistanceKernel) throws {
            defer { DistanceKernel.use(.auto) }
            var rng = TestRNG(seed: 15)
            for metric in IndexMetric.allCases {
                for d in Self.dims {
                    for kind in ["gaussian", "zero", "huge", "tiny", "mixed"] {
                        let n = 24
                        var x = Self.rows(1, d, kind: kind, metric: metric, rng: &rng)
                        var y = Self.rows(n, d, kind: kind == "zero" ? "gaussian" : kind, metric: metric, rng: &rng)
                        if kind == "zero" { y.replaceSubrange(0..<d, with: repeatElement(0, count: d)) }
                        if kind == "mixed" { x = Array(y[d..<(2 * d)]) } // a query equal to row 1
                        #expect(DistanceKernel.use(.faiss) == .faiss)
                        let reference = try DistanceKernel.distances(from: x, to: y, metric: metric)
                        #expect(DistanceKernel.use(kernel) == kernel)
                        let ours = try DistanceKernel.distances(from: x, to: y, metric: metric)
                        for r in 0..<n {
                            let scale = (0..<d).reduce(0.0) { s, j in
                                let a = Double(x[j]), b = Double(y[r * d + j])
                                return s + (metric == .ip ? abs(a * b) : (a - b) * (a - b))
                            }
                            #expect(
                                Self.close(ours[r], reference[r], scale: scale, d: d),
                                "\(kernel) \(metric) d=\(d) \(kind) row \(r): \(ours[r]) vs FAISS \(reference[r])")
                        }
                        if kind == "mixed" && metric == .l2 { #expect(ours[1] == 0, "distance to itself, d=\(d)") }
                        if kind == "zero" { #expect(ours[0] == 0, "zero to zero, d=\(d), \(metric)") }
                    }
                }
            }
        }

        @Test(
            "AVX-512 distances equal FAISS's",
            .enabled(if: DistanceKernel.avx512.isSupported, "this CPU has no AVX-512"))
        func avx512() throws { try matchesFaiss(.avx512) }

        @Test(
            "AVX2+FMA distances equal FAISS's",
            .enabled(if: DistanceKernel.avx2.isSupported, "this CPU has no AVX2/FMA"))
        func avx2() throws { try matchesFaiss(.avx2) }

        @Test("Portable distances equal FAISS's")
        func scalar() throws { try matchesFaiss(.scalar) }

        /// The many-dots kernel of the batched coarse pass against a Double computation of the same
        /// products, on every shape its blocking treats apart: query counts around its groups of 6,
        /// vector counts around its panels of 16, widths off the vector width, and zero, huge, tiny
        /// and mixed magnitudes. Tolerance: d rounding errors of each product's terms (one chain of
        /// d FMAs), which is also what the coarse pass's proof assumes.
        func dotsMatchDouble(_ kernel: DistanceKernel) throws {
            defer { DistanceKernel.use(.auto) }
            #expect(DistanceKernel.use(kernel) == kernel)
            var rng = TestRNG(seed: 61)
            for (n, ny, d) in [
                (1, 1, 1), (5, 15, 7), (6, 16, 16), (7, 17, 17), (13, 33, 100), (4, 40, 2047), (12, 31, 2048),
            ] {
                for kind in ["gaussian", "zero", "huge", "tiny", "mixed"] {
                    let x = Self.rows(n, d, kind: kind, metric: .ip, rng: &rng)
                    let y = Self.rows(ny, d, kind: kind == "zero" ? "gaussian" : kind, metric: .ip, rng: &rng)
                    let ours = try DistanceKernel.dots(x, y, dimension: d)
                    #expect(ours.count == n * ny)
                    for i in 0..<n {
                        for j in 0..<ny {
                            var exact = 0.0, magnitude = 0.0
                            for t in 0..<d {
                                let p = Double(x[i * d + t]) * Double(y[j * d + t])
                                exact += p
                                magnitude += abs(p)
                            }
                            let tolerance =
                                Double(d + 2) * Double(Float.ulpOfOne) * magnitude + Double(d)
                                * Double(Float.leastNonzeroMagnitude)
                            #expect(
                                abs(Double(ours[i * ny + j]) - exact) <= tolerance,
                                "\(kernel) n=\(n) ny=\(ny) d=\(d) \(kind) [\(i), \(j)]: \(ours[i * ny + j]) vs \(exact)"
                            )
                        }
                    }
                }
            }
            #expect(try DistanceKernel.dots([], [1, 2], dimension: 2).isEmpty)
        }

        @Test(
            "Many dots (the batched coarse pass) through each kernel equal the products computed in Double",
            arguments: DistanceKernel.allCases.filter { $0 != .auto && $0.isSupported })
        func manyDots(kernel: DistanceKernel) throws { try dotsMatchDouble(kernel) }

        @Test(
            "auto picks the widest kernel this CPU runs; one it cannot run falls back to the portable one, with one log line"
        )
        func dispatch() {
            defer { DistanceKernel.use(.auto) }
            let best: DistanceKernel =
                DistanceKernel.avx512.isSupported ? .avx512 : DistanceKernel.avx2.isSupported ? .avx2 : .scalar
            #expect(DistanceKernel.use(.auto) == best)
            #expect(DistanceKernel.current == best)
            for kernel in DistanceKernel.allCases where kernel != .auto {
                var lines: [String] = []
                let inForce = DistanceKernel.use(kernel) { lines.append($0) }
                if kernel.isSupported {
                    #expect(inForce == kernel && lines.isEmpty)
                } else {
                    #expect(inForce == .scalar && lines.count == 1, "\(kernel): \(lines)")
                }
            }
            #expect(DistanceKernel.summary().hasPrefix("distance kernel \(DistanceKernel.current.rawValue) "))
        }

        // ---- Whole searches: the fast scanner and quantizer against FAISS's own.

        static let data = SyntheticVectors(count: 4000, dimension: 200, clusters: 80, seed: 15)

        static func index(_ factory: String, metric: IndexMetric) throws -> FaissIndex {
            let index = try FaissIndex(dimension: data.dimension, factory: factory, metric: metric)
            if !index.isTrained { try data.values.withUnsafeBufferPointer { try index.train($0) } }
            try index.add(data.values, ids: (0..<data.count).map { 5 + 3 * Int64($0) })
            return index
        }

        /// Searches with `kernel` and with FAISS's code; same ids in the same order except between
        /// (near-)equal distances, distances within 1e-5 relative. Returns whether any distance
        /// differs in its last bits: proof that our code answered, not FAISS's.
        @discardableResult
        static func sameAsFaiss(
            _ index: FaissIndex, kernel: DistanceKernel, parameters: SearchParameters,
            k: Int = 10, label: String
        ) throws -> Bool {
            defer { DistanceKernel.use(.auto) }
            let queries = Array(data.values[0..<(data.dimension * 40)]) + (0..<data.dimension).map { _ in 0.01 }
            DistanceKernel.use(.faiss)
            let stock = try index.search(queries, k: k, parameters: parameters)
            DistanceKernel.use(kernel)
            let ours = try index.search(queries, k: k, parameters: parameters)
            var differs = false
            for q in 0..<stock.queries {
                let a = stock.results(of: q), b = ours.results(of: q)
                #expect(a.count == b.count, "\(label) query \(q)")
                for (i, (s, o)) in zip(a, b).enumerated() {
                    let tol = 1e-5 * max(abs(s.distance), abs(o.distance), 1e-30)
                    #expect(
                        abs(s.distance - o.distance) <= tol,
                        "\(label) query \(q) rank \(i): \(o.distance) vs \(s.distance)")
                    if s.id != o.id {
                        // Allowed only where FAISS itself sees a tie within rounding.
                        let tie = a.contains { $0.id == o.id && abs($0.distance - o.distance) <= tol }
                        #expect(tie, "\(label) query \(q) rank \(i): id \(o.id) vs FAISS \(s.id)")
                    }
                    if s.distance.bitPattern != o.distance.bitPattern { differs = true }
                }
            }
            return differs
        }

        static func filters() -> [(String, SearchParameters)] {
            var allowed = IDBitmap(capacity: 5 + 3 * data.count)
            var rng = TestRNG(seed: 3)
            for r in 0..<data.count where rng.next() % 3 != 0 { allowed.insert(5 + 3 * Int64(r)) }
            let excluded = (0..<40).map { 5 + 3 * Int64($0) }
            return [
                ("no filter", SearchParameters(nprobe: 8)),
                ("allow bitmap + exclude", SearchParameters(nprobe: 8, allowed: allowed, excluded: excluded)),
                ("exclude only", SearchParameters(nprobe: 3, excluded: excluded)),
            ]
        }

        static var runnable: [DistanceKernel] { [.avx512, .avx2, .scalar].filter(\.isSupported) }

        @Test(
            "IVF-Flat search through our scanner and quantizer equals FAISS's, with and without filters",
            arguments: IndexMetric.allCases)
        func ivfSearch(metric: IndexMetric) throws {
            let index = try Self.index("IVF40,Flat", metric: metric)
            var ran = false
            for kernel in Self.runnable {
                for (name, p) in Self.filters() {
                    ran =
                        try Self.sameAsFaiss(index, kernel: kernel, parameters: p, label: "\(kernel) \(metric) \(name)")
                        || ran
                }
            }
            #expect(ran, "every distance bit-identical to FAISS's: the fast path did not run")
            // k larger than what the filter leaves, and k = 1.
            var few = IDBitmap(capacity: 5 + 3 * Self.data.count)
            for r in [0, 1, 2, 500, 3999] { few.insert(5 + 3 * Int64(r)) }
            try Self.sameAsFaiss(
                index, kernel: .auto, parameters: SearchParameters(nprobe: 40, allowed: few), k: 8, label: "few allowed"
            )
            try Self.sameAsFaiss(index, kernel: .auto, parameters: SearchParameters(nprobe: 4), k: 1, label: "k = 1")
        }

        @Test(
            "IVF-SQ8 through our scanner (residual codes; 200-d and 37-d, off the vector width) equals FAISS's, with and without filters"
        )
        func ivfSQ8Search() throws {
            var ran = false
            for factory in ["IVF40,SQ8"] {
                let index = try Self.index(factory, metric: .l2)
                for kernel in Self.runnable {
                    for (name, p) in Self.filters() {
                        ran =
                            try Self.sameAsFaiss(
                                index, kernel: kernel, parameters: p, label: "\(factory) \(kernel) \(name)") || ran
                    }
                }
                try Self.sameAsFaiss(
                    index, kernel: .auto, parameters: SearchParameters(nprobe: 4), k: 1, label: "\(factory) k = 1")
            }
            #expect(ran, "every distance bit-identical to FAISS's: the fast SQ8 path did not run")
            // 200-d above is a multiple of 8 but not of 32: the vector loops' tails ran. An odd width too:
            let odd = SyntheticVectors(count: 1500, dimension: 37, clusters: 20, seed: 4)
            let index = try FaissIndex(dimension: 37, factory: "IVF10,SQ8", metric: .l2)
            try odd.values.withUnsafeBufferPointer { try index.train($0) }
            try index.add(odd.values, ids: (0..<1500).map(Int64.init))
            let queries = Array(odd.values[0..<(37 * 30)])
            for kernel in Self.runnable {
                DistanceKernel.use(.faiss)
                let stock = try index.search(queries, k: 5, parameters: SearchParameters(nprobe: 3))
                DistanceKernel.use(kernel)
                let ours = try index.search(queries, k: 5, parameters: SearchParameters(nprobe: 3))
                DistanceKernel.use(.auto)
                for i in stock.distances.indices {
                    // A query's own code lies at the quantisation floor (~1e-5): there the terms cancel,
                    // and rounding is relative to the terms, not to their tiny sum.
                    #expect(
                        abs(stock.distances[i] - ours.distances[i]) <= 1e-5 * abs(stock.distances[i]) + 1e-8,
                        "37-d \(kernel) \(i)")
                    if abs(stock.distances[i] - ours.distances[i]) > 1e-5 * abs(stock.distances[i]) + 1e-8 { break }
                }
            }
        }

        @Test("Flat (IDMap2) and HNSW search through our kernels equal FAISS's")
        func flatAndHNSW() throws {
            let flat = try Self.index("Flat", metric: .l2)
            for (name, p) in Self.filters() {
                // 41 queries without a filter are FAISS's BLAS path (bit-identical); with one, ours.
                let ours = try Self.sameAsFaiss(flat, kernel: .auto, parameters: p, label: "Flat \(name)")
                #expect(ours == (name != "no filter"), "\(name)")
            }
            let hnsw = try Self.index("HNSW16", metric: .ip)
            try Self.sameAsFaiss(hnsw, kernel: .auto, parameters: SearchParameters(efSearch: 32), label: "HNSW")
        }

        @Test("A file read back, loaded or memory-mapped, searches with our kernels; exact search too")
        func readIndexesAreFast() throws {
            let index = try Self.index("IVF40,Flat", metric: .l2)
            let path = FileManager.default.temporaryDirectory.appendingPathComponent("kernels-\(UUID()).faiss").path
            defer { try? FileManager.default.removeItem(atPath: path) }
            try index.write(to: path)
            for mapped in [false, true] {
                let back = try FaissIndex(contentsOf: path, memoryMapped: mapped)
                #expect(
                    try Self.sameAsFaiss(
                        back, kernel: .auto, parameters: SearchParameters(nprobe: 8), label: "read mmap=\(mapped)"))
            }
            // ew_faiss_knn_exact below FAISS's BLAS threshold.
            let q = Array(Self.data.values[0..<(Self.data.dimension * 3)])
            func exact() throws -> Neighbours {
                try q.withUnsafeBufferPointer { qb in
                    try Self.data.values.withUnsafeBufferPointer { vb in
                        try FaissIndex.exactNeighbours(
                            queries: qb, vectors: vb, dimension: Self.data.dimension, k: 10, metric: .l2)
                    }
                }
            }
            DistanceKernel.use(.faiss)
            let stock = try exact()
            DistanceKernel.use(.auto)
            let ours = try exact()
            #expect(stock.ids == ours.ids)
            for (a, b) in zip(stock.distances, ours.distances) { #expect(abs(a - b) <= 1e-5 * max(abs(a), 1e-30)) }
        }

        @Test(
            "compare(_:ids:): inner products, norms and distances to stored vectors in one call; unknown ids are not_found",
            arguments: ["IVF40,Flat", "Flat", "IVF40,SQ8"])
        func compareIDs(factory: String) throws {
            let index = try Self.index(factory, metric: .l2)
            let q = Self.data.row(7).map { $0 * 3 } // not unit: the norms must be read, not assumed
            let rows = [0, 7, 1234, 3999]
            let c = try index.compare(q, ids: rows.map { 5 + 3 * Int64($0) })
            let tol = factory.contains("SQ") ? 2e-2 : 1e-5
            for (i, r) in rows.enumerated() {
                let v = Self.data.row(r)
                #expect(abs(Double(c.dot[i]) - VectorMath.dot(q[...], v[...])) <= tol * 3, "\(factory) dot row \(r)")
                #expect(abs(Double(c.norm2[i]) - VectorMath.dot(v[...], v[...])) <= tol, "\(factory) norm row \(r)")
                #expect(
                    abs(Double(c.l2[i]) - Double(ExactSearch.squaredL2(q[...], v[...]))) <= tol * 9,
                    "\(factory) l2 row \(r)")
            }
            #expect { try index.compare(q, ids: [5, 6]) } throws: { ($0 as? IndexError)?.code == .notFound }
        }

        @Test(
            "Python's faiss reads a file our fast index wrote and answers the same",
            .enabled(if: Python.hasFaiss, "/usr/bin/python3 cannot import faiss (apt-get install python3-faiss)"),
            arguments: IndexMetric.allCases)
        func pythonReadsFastIndexFile(metric: IndexMetric) throws {
            let index = try Self.index("IVF40,Flat", metric: metric)
            try index.setDefaults(nprobe: 8, efSearch: nil)
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kernels-py-\(UUID())")
            try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: dir) }
            try index.write(to: dir.appendingPathComponent("i.faiss").path)
            let d = Self.data.dimension
            let queries = Array(Self.data.values[(d * 100)..<(d * 130)])
            try queries.withUnsafeBytes { try Data($0).write(to: dir.appendingPathComponent("q.f32")) }
            let out = try Python.run(
                """
                import faiss, numpy as np, json, sys
                d = sys.argv[1]
                index = faiss.read_index(d + "/i.faiss")
                q = np.fromfile(d + "/q.f32", dtype=np.float32).reshape(-1, int(sys.argv[2]))
                D, I = index.search(q, 10)
                print(json.dumps({"ids": I.ravel().tolist(), "distances": D.ravel().tolist(), "nprobe": index.nprobe,
                                  "type": type(index).__name__}))
                """, args: [dir.path, String(d)])
            let obj = try #require(try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any])
            #expect(obj["type"] as? String == "IndexIVFFlat" && obj["nprobe"] as? Int == 8)
            DistanceKernel.use(.auto)
            let ours = try index.search(queries, k: 10)
            let ids = try #require(obj["ids"] as? [Int]).map(Int64.init)
            let distances = try #require(obj["distances"] as? [Double])
            #expect(ids == ours.ids)
            for (a, b) in zip(distances, ours.distances) { #expect(abs(a - Double(b)) <= 1e-5 * max(abs(a), 1e-30)) }
        }
    }
}
