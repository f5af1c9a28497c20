import EwallML
import EwallTestSupport
import Foundation
import Testing

/// EwallService called directly, as a server team links it.
@Suite("EwallService: the library API", .serialized)
struct ServiceTests {
    static func service(_ configure: (inout EwallConfiguration) -> Void = { _ in }) async throws -> EwallService {
        let dir = try await PhotoCatalogue.shared.value.copy()
        var c = EwallConfiguration(
            modelPath: Fixtures.model, storeURL: "sqlite:\(dir.path)/ewall.sqlite",
            indexPath: dir.appendingPathComponent("faiss").path,
            rulesPath: Fixtures.path("data/category_rules.json"), precision: .fp32, indexWatchInterval: nil)
        configure(&c)
        return try await EwallService(configuration: c)
    }

    @Test(
        "A quiet service embeds one image alone, after at most the batch wait; a cancelled embed leaves the queue unrun"
    )
    func quietAndCancel() async throws {
        let cat = try await PhotoCatalogue.shared.value
        let image = try Fixtures.bytes(cat.photos[0])
        let quick = try await Self.service { $0.limits.maxBatchWait = .milliseconds(5) }
        let e = try await quick.embed(.bytes(image))
        #expect(VectorMath.cosine(e.vector, cat.vectors["p00"]!) > 0.99999)
        #expect(quick.batching.sizes == [1: 1])
        await quick.shutdown()

        // A 3 s wait: the caller is cancelled while its image waits for company.
        let slow = try await Self.service { $0.limits.maxBatchWait = .seconds(3) }
        let start = ContinuousClock.now
        let task = Task { try await slow.embed(.bytes(image)) }
        try await Task.sleep(for: .milliseconds(300))
        task.cancel()
        await #expect(throws: EwallError.self) { _ = try await task.value }
        #expect(ContinuousClock.now - start < .seconds(2))
        #expect(slow.batching.images == 0 && slow.batching.queueDepth == 0)
        await slow.shutdown()
        // After shutdown, embeds are refused, not queued forever.
        await #expect(throws: EwallError.self) { _ = try await slow.embed(.bytes(image)) }
    }

    @Test("Many concurrent callers share forward passes and each gets its own image's vector", arguments: [1, 2])
    func concurrentCallers(streams: Int) async throws {
        let cat = try await PhotoCatalogue.shared.value
        let service = try await Self.service { $0.streams = streams }
        let images = try cat.photos.map { try Fixtures.bytes($0) }
        let vectors = try await withThrowingTaskGroup(of: (Int, [Float]).self) { group in
            for i in 0..<40 { group.addTask { (i, try await service.embed(.bytes(images[i % images.count])).vector) } }
            return try await group.reduce(into: [Int: [Float]]()) { $0[$1.0] = $1.1 }
        }
        for (i, v) in vectors { #expect(VectorMath.cosine(v, cat.vectors[PhotoCatalogue.pid(i % 20)]!) > 0.99999) }
        #expect(service.batching.images == 40)
        #expect(service.batching.batches <= 10, "\(service.batching.sizes)")
        await service.shutdown()
    }

    @Test("Bad configuration fails at init with a clear error")
    func badConfiguration() async throws {
        await #expect(throws: EwallError.self) {
            _ = try await EwallService(configuration: EwallConfiguration(modelPath: "/no/such/model.pt"))
        }
        do {
            _ = try await Self.service { $0.storeURL = "mysql://nope" }
            Issue.record("an unknown store scheme was accepted")
        } catch let error as EwallError {
            #expect(error.code == "store_unavailable")
        }
    }
}
