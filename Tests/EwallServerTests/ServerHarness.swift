import AsyncHTTPClient
import EwallML
import EwallServer
import EwallTestSupport
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Prometheus
import ServiceLifecycle

/// A catalogue of real vectors: the sample photos embedded with the test model, stored in a
/// SQLite file with an index built from it. Made once per test process, copied per server.
struct PhotoCatalogue: Sendable {
    static let categories = ["down", "coat", "jeans", "fleece"]
    static let titles = ["구스다운 롱패딩", "울 코트", "리바이스 청바지", "후리스 집업"]
    static let count = 20

    let directory: URL
    let photos: [String]
    let vectors: [String: [Float]]
    let key: ModelKey

    static func pid(_ i: Int) -> String { String(format: "p%02d", i) }
    static func category(_ i: Int) -> String { categories[i % 4] }
    static func inStock(_ i: Int) -> Bool { i % 5 != 0 }

    /// Product `id`'s catalogue row as `ewall sync` writes it (its photo, its category).
    func row(_ id: String, inStock: Bool = true, listed: Bool = true) -> CatalogueChange {
        let i = Int(id.dropFirst())!
        return .upsert(
            CatalogueRow(
                product: Product(id: id, title: "t", category: Self.category(i), inStock: inStock),
                imageURL: photos[i], listed: listed))
    }

    static let shared = Task<PhotoCatalogue, any Error> { try await make() }

    private static func make() async throws -> PhotoCatalogue {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
            "ewall-serve-catalogue-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let photos = Array(try Fixtures.photos().prefix(count))
        let embedder = try ImageEmbedder(
            configuration: EmbedderConfiguration(model: ModelOptions(path: Fixtures.model)))
        let key = ModelKey(modelID: embedder.modelID, preprocessing: PreprocessingMode.squash224.rawValue)
        let outcomes = await embedder.embed(files: photos)
        let store = try await StoreLocation(parsing: "sqlite:\(dir.path)/ewall.sqlite").open()
        var vectors: [String: [Float]] = [:]
        var products: [Product] = []
        var embeddings: [StoredEmbedding] = []
        for (i, o) in outcomes.enumerated() {
            let v = try o.result.get().vector
            vectors[pid(i)] = v
            products.append(
                Product(id: pid(i), title: "\(titles[i % 4]) \(i)", category: category(i), inStock: inStock(i)))
            embeddings.append(StoredEmbedding(productID: pid(i), imageURL: photos[i], key: key, vector: v))
        }
        try await store.upsertProducts(products, source: .manifest)
        try await store.write(WriteBatch(embeddings: embeddings))
        _ = try await IndexBuilder.build(
            store: store,
            options: IndexBuildOptions(
                folder: IndexFolder(path: dir.appendingPathComponent("faiss").path), threads: 2))
        await store.close()
        return PhotoCatalogue(directory: dir, photos: photos, vectors: vectors, key: key)
    }

    /// A private copy (store and index) for a server that changes them.
    func copy() throws -> URL {
        let to = FileManager.default.temporaryDirectory.appendingPathComponent("ewall-serve-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: directory, to: to)
        return to
    }
}

/// A real `ewall-serve` application, in process, on a loopback port; stopped by graceful shutdown.
final class RunningServer: Sendable {
    let service: EwallService
    let port: Int
    let directory: URL
    let group: ServiceGroup
    let task: Task<Void, any Error>

    var base: String { "http://127.0.0.1:\(port)" }

    static func start(
        directory: URL? = nil, configure: (inout EwallConfiguration, inout ServerConfiguration) -> Void = { _, _ in }
    )
        async throws -> RunningServer
    {
        let dir: URL
        if let directory { dir = directory } else { dir = try await PhotoCatalogue.shared.value.copy() }
        var config = EwallConfiguration(
            modelPath: Fixtures.model, storeURL: "sqlite:\(dir.path)/ewall.sqlite",
            indexPath: dir.appendingPathComponent("faiss").path,
            rulesPath: Fixtures.path("data/category_rules.json"), precision: .fp32, indexWatchInterval: nil)
        var server = ServerConfiguration(host: "127.0.0.1", port: 0, maxBodyBytes: 2 << 20)
        configure(&config, &server)
        var logger = Logger(label: "ewall-serve-test")
        logger.logLevel = .critical
        let registry = PrometheusCollectorRegistry()
        let service = try await EwallService(
            configuration: config, logger: logger,
            metrics: PrometheusMetricsFactory.forEwall(registry: registry))
        let (ports, continuation) = AsyncStream.makeStream(of: Int.self)
        let app = EwallHTTPServer.application(
            service: service, configuration: server, registry: registry, logger: logger
        ) {
            continuation.yield($0?.port ?? 0)
            continuation.finish()
        }
        let group = ServiceGroup(services: [app], gracefulShutdownSignals: [], logger: logger)
        let task = Task { try await group.run() }
        var port = 0
        for await p in ports { port = p }
        return RunningServer(service: service, port: port, directory: dir, group: group, task: task)
    }

    private init(service: EwallService, port: Int, directory: URL, group: ServiceGroup, task: Task<Void, any Error>) {
        self.service = service
        self.port = port
        self.directory = directory
        self.group = group
        self.task = task
    }

    func stop() async throws {
        await group.triggerGracefulShutdown()
        try await task.value
    }
}

/// An HTTP answer, with its body parsed as JSON when it is JSON.
struct Reply: Sendable {
    var status: Int
    var headers: [(String, String)]
    var body: [UInt8]

    var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] ?? [:] }
    var text: String { String(decoding: body, as: UTF8.self) }
    var errorCode: String? { (json["error"] as? [String: Any])?["code"] as? String }
    func header(_ name: String) -> String? { headers.first { $0.0.lowercased() == name.lowercased() }?.1 }
}

enum HTTP {
    static let client = HTTPClient(
        eventLoopGroupProvider: .singleton,
        configuration: .init(
            redirectConfiguration: .disallow, timeout: .init(connect: .seconds(5)),
            connectionPool: .init(
                idleTimeout: .seconds(60),
                concurrentHTTP1ConnectionsPerHostSoftLimit: 128)))

    static func call(
        _ method: HTTPMethod = .GET, _ url: String, json: Any? = nil, body: [UInt8]? = nil,
        contentType: String? = nil, timeout: TimeAmount = .seconds(60)
    ) async throws -> Reply {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let json {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: try JSONSerialization.data(withJSONObject: json)))
        } else if let body {
            if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        let response = try await client.execute(request, timeout: timeout)
        var bytes: [UInt8] = []
        for try await chunk in response.body { bytes += chunk.readableBytesView }
        return Reply(
            status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) }, body: bytes)
    }
}
