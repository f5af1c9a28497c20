import EwallIndex
import EwallML
import EwallServer
import EwallStore
import EwallTestSupport
import Foundation
import Prometheus
import Testing

/// EwallService coalesces concurrent similar-products searches: each answer is what the
/// request gets alone, and a lone request runs at once in a batch of one.
@Suite("EwallService: coalesced similar searches", .serialized)
struct SimilarCoalescingTests {
    static func service(
        memoryMapped: Bool = false, searchThreads: Int = EwallConfiguration.defaultSearchThreads
    ) async throws
        -> (EwallService, PrometheusCollectorRegistry)
    {
        let dir = try await PhotoCatalogue.shared.value.copy()
        var c = EwallConfiguration(
            modelPath: Fixtures.model, storeURL: "sqlite:\(dir.path)/ewall.sqlite",
            indexPath: dir.appendingPathComponent("faiss").path,
            rulesPath: Fixtures.path("data/category_rules.json"), precision: .fp32, indexWatchInterval: nil)
        c.indexMemoryMapped = memoryMapped
        c.searchThreads = searchThreads
        let registry = PrometheusCollectorRegistry()
        let service = try await EwallService(
            configuration: c, metrics: PrometheusMetricsFactory.forEwall(registry: registry))
        return (service, registry)
    }

    /// (count, sum) of the ewall_similar_batch_size histogram.
    static func batchSizes(_ registry: PrometheusCollectorRegistry) -> (count: Int, sum: Double) {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        var count = 0, sum = 0.0
        for line in String(decoding: buffer, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2 else { continue }
            if parts[0] == "ewall_similar_batch_size_count" { count = Int(Double(parts[1]) ?? -1) }
            if parts[0] == "ewall_similar_batch_size_sum" { sum = Double(parts[1]) ?? -1 }
        }
        return (count, sum)
    }

    static func same(_ a: SimilarAnswer, _ b: SimilarAnswer) -> Bool {
        a.query == b.query && a.category == b.category && a.results == b.results && a.candidates == b.candidates
            && a.eligible == b.eligible && a.nprobe == b.nprobe && a.efSearch == b.efSearch && a.notes == b.notes
            && a.index == b.index
    }

    static func queries() -> [(String, SimilarQuery)] {
        var out: [(String, SimilarQuery)] = []
        for i in 0..<PhotoCatalogue.count {
            out.append((PhotoCatalogue.pid(i), SimilarQuery()))
            out.append(
                (
                    PhotoCatalogue.pid(i),
                    SimilarQuery(
                        k: 1 + i % 7, minSimilarity: 0, sameCategory: i % 2 == 0,
                        inStockOnly: i % 3 != 0)
                ))
            out.append(
                (
                    PhotoCatalogue.pid(i),
                    SimilarQuery(k: 20, minSimilarity: 0.1, sameCategory: false, inStockOnly: false)
                ))
        }
        return out
    }

    @Test("A lone similar request is answered at once, in a batch of one")
    func loneRequest() async throws {
        let (service, registry) = try await Self.service()
        let start = ContinuousClock.now
        let a = try await service.similar(productID: PhotoCatalogue.pid(1))
        #expect(ContinuousClock.now - start < .seconds(2))
        #expect(a.query == PhotoCatalogue.pid(1))
        let b = Self.batchSizes(registry)
        #expect(b.count == 1 && b.sum == 1)
        // One after another: each alone.
        for i in 2..<6 { _ = try await service.similar(productID: PhotoCatalogue.pid(i)) }
        let c = Self.batchSizes(registry)
        #expect(c.count == 5 && c.sum == 5)
        await service.shutdown()
    }

    @Test(
        "indexMemoryMapped (ewall-serve --mmap-index) reaches the service, which answers as the index opened plainly (this catalogue's Flat index loads fully either way; mapping itself is tested on IVF in CompressedIndexTests)"
    )
    func memoryMappedService() async throws {
        let (mapped, _) = try await Self.service(memoryMapped: true)
        let store = try await StoreLocation(parsing: mapped.configuration.storeURL).open()
        let plain = try await ProductSearch.open(
            folder: IndexFolder(path: mapped.configuration.indexPath), store: store)
        for (id, q) in Self.queries().prefix(12) {
            let a = try await plain.similar(to: id, query: q)
            let b = try await mapped.similar(productID: id, query: q)
            #expect(Self.same(a, b), "\(id)")
        }
        await store.close()
        await mapped.shutdown()
    }

    @Test(
        "Concurrent similar requests (different products, k, category and stock rules, unknown ids) get exactly their one-at-a-time answers, with one search thread and with two batches searched at once",
        arguments: [1, 2])
    func concurrentEqualsAlone(searchThreads: Int) async throws {
        let (service, registry) = try await Self.service(searchThreads: searchThreads)
        let qs = Self.queries()
        var alone: [SimilarAnswer] = []
        for (id, q) in qs { alone.append(try await service.similar(productID: id, query: q)) }
        #expect(Self.batchSizes(registry).count == qs.count)
        for round in 0..<3 {
            let together = await withTaskGroup(of: (Int, Result<SimilarAnswer, EwallError>).self) { group in
                for (i, (id, q)) in qs.enumerated() {
                    group.addTask {
                        do throws(EwallError) {
                            return (i, .success(try await service.similar(productID: id, query: q)))
                        } catch { return (i, .failure(error)) }
                    }
                }
                group.addTask {
                    do throws(EwallError) {
                        return (-1, .success(try await service.similar(productID: "no-such-product")))
                    } catch { return (-1, .failure(error)) }
                }
                var out: [Int: Result<SimilarAnswer, EwallError>] = [:]
                for await (i, r) in group { out[i] = r }
                return out
            }
            for i in qs.indices {
                guard case .success(let t) = together[i] else {
                    Issue.record("round \(round) request \(i) failed")
                    continue
                }
                #expect(Self.same(alone[i], t), "round \(round) request \(i)")
            }
            if case .success = together[-1] { Issue.record("an unknown product was answered") }
        }
        let b = Self.batchSizes(registry)
        // Every searched request counted once (the unknown product fails before the search).
        #expect(Int(b.sum) == 4 * qs.count)
        // 61 requests at once, three times: some of them shared a batch.
        #expect(b.count < 4 * qs.count, "batches: \(b.count) for \(Int(b.sum)) requests")
        print("coalesced: \(b.count - qs.count) batches for \(3 * qs.count) concurrent requests")
        await service.shutdown()
    }
}
