import EwallTestSupport
import Foundation
import NIOPosix
import ServiceLifecycle
import Testing

@Suite("The DocC article's example")
struct LinkingExampleTests {
    @Test("The article shows the compiled example verbatim")
    func articleMatchesCode() throws {
        let source = try String(
            contentsOfFile: Fixtures.path("Tests/EwallServerTests/LinkingExample.swift"), encoding: .utf8)
        let article = try String(
            contentsOfFile: Fixtures.path("Sources/EwallML/EwallML.docc/LinkingEwallML.md"), encoding: .utf8)
        let snippet = try #require(
            source.components(separatedBy: "// snippet:begin\n").last?.components(separatedBy: "// snippet:end").first)
        #expect(article.contains("```swift\n" + snippet + "```"), "update LinkingEwallML.md from LinkingExample.swift")
    }

    @Test("The example runs: similar products and a category over HTTP")
    func exampleRuns() async throws {
        let cat = try await PhotoCatalogue.shared.value
        let dir = try cat.copy()
        let port = try Self.freePort()
        let app = try await makeShopServer(
            modelPath: Fixtures.model, storeURL: "sqlite:\(dir.path)/ewall.sqlite",
            indexPath: dir.appendingPathComponent("faiss").path, port: port)
        let group = ServiceGroup(services: [app], gracefulShutdownSignals: [], logger: .init(label: "example"))
        let task = Task { try await group.run() }
        var similar: Reply?
        for _ in 0..<50 {
            similar = try? await HTTP.call(.GET, "http://127.0.0.1:\(port)/products/p01/similar")
            if similar != nil { break }
            try await Task.sleep(for: .milliseconds(100))
        }
        #expect(similar?.status == 200)
        // 4 in-stock coats but itself
        #expect(similar?.text.split(separator: "\n").count == 3, "\(similar?.text ?? "")")
        let unknown = try await HTTP.call(.GET, "http://127.0.0.1:\(port)/products/nope/similar")
        #expect(unknown.status == 404)
        let category = try await HTTP.call(
            .POST, "http://127.0.0.1:\(port)/products/category", body: Array("울 롱 코트".utf8),
            contentType: "text/plain")
        #expect(category.text == "coat")
        await group.triggerGracefulShutdown()
        try await task.value
    }

    static func freePort() throws -> Int {
        let channel = try ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton).bind(host: "127.0.0.1", port: 0)
            .wait()
        let port = channel.localAddress!.port!
        try channel.close().wait()
        return port
    }
}
