import EwallML
import EwallTestSupport
import Foundation
import Testing

/// EwallService follows the store's change feed (what `ewall sync` writes) with no flag: two
/// services over one store, as two replicas behind a load balancer.
@Suite("Replicas follow the change feed by themselves", .serialized)
struct ReplicaFollowTests {
    static func service(_ dir: URL) async throws -> EwallService {
        var c = EwallConfiguration(
            modelPath: Fixtures.model, storeURL: "sqlite:\(dir.path)/ewall.sqlite",
            indexPath: dir.appendingPathComponent("faiss").path, rulesPath: nil, precision: .fp32,
            indexWatchInterval: nil)
        c.catalogueFollowInterval = .milliseconds(50)
        return try await EwallService(configuration: c)
    }

    static func ids(_ s: EwallService, _ query: SimilarQuery) async throws -> [String] {
        try await s.similar(productID: "p01", query: query).results.map(\.productID)
    }

    @Test("two replicas converge on every change; one restarted mid-stream catches up before it is ready")
    func twoReplicas() async throws {
        let cat = try await PhotoCatalogue.shared.value
        let dir = try cat.copy()
        let a = try await Self.service(dir)
        var b = try await Self.service(dir)
        let store = try await SQLiteStore.open(path: "\(dir.path)/ewall.sqlite")
        let source = SourceTransactions(store: store)
        let query = SimilarQuery(k: 10, minSimilarity: 0, sameCategory: false, inStockOnly: true)
        let before = try await Self.ids(a, query)
        #expect(before.count >= 4)
        #expect(try await Self.ids(b, query) == before)

        try await source.apply([cat.row(before[0], inStock: false)])
        var converged = try await eventually(within: .seconds(5)) {
            let (x, y) = (try await Self.ids(a, query), try await Self.ids(b, query))
            return x == y && !x.contains(before[0])
        }
        #expect(converged, "a stock flip reached both replicas")

        // b stops; the feed moves on without it; a new b starts from the index's build point.
        await b.shutdown()
        try await source.apply([.delete(productID: before[1])])
        try await source.apply([cat.row(before[2], listed: false)])
        try await source.apply([cat.row(before[0], inStock: true)])
        b = try await Self.service(dir)
        let ready = await b.readiness()
        #expect(ready.ready, "\(ready.problems)")
        #expect(b.catalogueLag.caughtUp && b.catalogueLag.changes == 0)
        converged = try await eventually(within: .seconds(5)) {
            let (x, y) = (try await Self.ids(a, query), try await Self.ids(b, query))
            return x == y && x.contains(before[0]) && !x.contains(before[1]) && !x.contains(before[2])
        }
        #expect(converged, "the restarted replica caught up and both answer alike")
        #expect(a.catalogueLag.appliedSeq == b.catalogueLag.appliedSeq)
        await a.shutdown()
        await b.shutdown()
        await store.close()
    }
}

/// The same with two `ewall-serve` processes, as they run behind a load balancer.
@Suite("ewall-serve replicas (processes) follow the change feed", .serialized)
struct ReplicaProcessTests {
    static func ids(_ s: ServeProcessTests.Served) async throws -> [String] {
        let r = try await HTTP.call(
            .GET, "\(s.base)/api/recommendations/similar/p01?k=10&min_similarity=0&any_category=true")
        return (r.json["results"] as? [[String: Any]] ?? []).compactMap { $0["product_id"] as? String }
    }

    @Test("two ewall-serve processes converge on every change; one restarted mid-stream answers alike once ready")
    func twoProcesses() async throws {
        let cat = try await PhotoCatalogue.shared.value
        let dir = try cat.copy()
        let a = try ServeProcessTests.Served(ServeProcessTests.args(dir))
        var b = try ServeProcessTests.Served(ServeProcessTests.args(dir))
        defer {
            for s in [a, b] where s.process.isRunning { s.signal(SIGKILL) }
        }
        let store = try await SQLiteStore.open(path: "\(dir.path)/ewall.sqlite")
        let source = SourceTransactions(store: store)
        let before = try await Self.ids(a)
        #expect(before.count >= 4)
        #expect(try await Self.ids(b) == before)

        try await source.apply([cat.row(before[0], inStock: false)])
        var converged = try await eventually(within: .seconds(10)) {
            let (x, y) = (try await Self.ids(a), try await Self.ids(b))
            return x == y && !x.contains(before[0])
        }
        #expect(converged, "a stock flip reached both processes")

        // b stops (SIGTERM); the feed moves on; a new b process starts from the index's build point.
        b.signal(SIGTERM)
        #expect(b.waitForExit() == 0)
        try await source.apply([.delete(productID: before[1])])
        try await source.apply([cat.row(before[2], listed: false)])
        try await source.apply([cat.row(before[0], inStock: true)])
        b = try ServeProcessTests.Served(ServeProcessTests.args(dir))
        let ready = try await eventually(within: .seconds(30)) {
            try await HTTP.call(.GET, "\(b.base)/readyz").status == 200
        }
        #expect(ready)
        // Ready means caught up: the first answers after it already agree.
        let (x, y) = (try await Self.ids(a), try await Self.ids(b))
        #expect(x == y && x.contains(before[0]) && !x.contains(before[1]) && !x.contains(before[2]), "\(x) / \(y)")
        converged = try await eventually(within: .seconds(10)) {
            let (x, y) = (try await Self.ids(a), try await Self.ids(b))
            return x == y && x.contains(before[0]) && !x.contains(before[1]) && !x.contains(before[2])
        }
        #expect(converged, "the restarted process caught up and both answer alike")
        a.signal(SIGTERM)
        b.signal(SIGTERM)
        #expect(a.waitForExit() == 0 && b.waitForExit() == 0)
        await store.close()
    }
}

/// Polls `check` until it holds or `limit` passes.
private func eventually(within limit: Duration, _ check: () async throws -> Bool) async throws -> Bool {
    let deadline = ContinuousClock.now + limit
    while ContinuousClock.now < deadline {
        if try await check() { return true }
        try await Task.sleep(for: .milliseconds(25))
    }
    return try await check()
}
