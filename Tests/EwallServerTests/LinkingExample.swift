import EwallML
import Hummingbird
import ServiceLifecycle

// The example of the article "Linking EwallML into your server"
// (Sources/EwallML/EwallML.docc/LinkingEwallML.md). LinkingExampleTests checks that the
// article shows exactly the code between the markers, and runs it.

// snippet:begin
/// Your server: one `EwallService` for the process, shared by every request.
func makeShopServer(
    modelPath: String, storeURL: String, indexPath: String, port: Int
) async throws -> some ApplicationProtocol {
    var configuration = EwallConfiguration(modelPath: modelPath, storeURL: storeURL, indexPath: indexPath)
    configuration.limits.maxBatchWait = .milliseconds(5) // how long an idle model waits for company
    configuration.precision = .fp32 // the reference; the default, auto, measures once per model and CPU
    let ewall = try await EwallService(configuration: configuration)

    let router = Router()
    // Similar products: ids, best first.
    router.get("/products/{id}/similar") { _, context -> String in
        let id = try context.parameters.require("id")
        do throws(EwallError) {
            let answer = try await ewall.similar(productID: id, query: SimilarQuery(k: 5))
            return answer.results.map(\.productID).joined(separator: "\n")
        } catch {
            // Stable codes; .notFound is an unknown product.
            throw HTTPError(error.kind == .notFound ? .notFound : .internalServerError, message: error.message)
        }
    }
    // The category of a product title (and, if you have one, its image).
    router.post("/products/category") { request, _ -> String in
        let title = String(buffer: try await request.body.collect(upTo: 4096))
        return try await ewall.classify(title: title).category
    }
    // EwallService is a Service: it runs beside the HTTP server and, on SIGTERM, shuts down
    // after it (queued embeds finish, the store closes).
    return Application(
        router: router, configuration: .init(address: .hostname("127.0.0.1", port: port)),
        services: [ewall])
}
// snippet:end
