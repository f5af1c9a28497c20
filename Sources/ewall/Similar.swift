import ArgumentParser
import EwallCLI
import EwallML
import Foundation
import Logging

/// `ewall similar`: similar products by product id (its stored vector) or by an image.
struct Similar: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Similar products: by product id, or by an image embedded on the fly.",
        discussion: """
            The platform's rules by default: k=10; the query product excluded by id (an exact \
            duplicate under another id is a different product and is returned); similarity = \
            1/(1+d) with d the Euclidean distance (the square root of FAISS's squared L2), kept \
            when >= 0.5; same category and in stock only (unknown stock counts as in stock). \
            Filters are applied inside the search, which goes deeper when they leave fewer than k.

            With --image, the image is embedded with --model (it must be the model the index was \
            built from); a PRODUCT_ID given too supplies the category and is excluded.

            Vectors from a random-init model (the one `make model` makes offline) carry no \
            meaning: their "similar products" are not similar.
            """)

    @Argument(help: "The product to find similar products for (optional with --image).")
    var productID: String?

    @Option(name: .long, help: "Query by this image (file path or http(s) URL) instead of the stored vector.")
    var image: String?

    @Option(name: .long, help: "With --image and no PRODUCT_ID: the category for the same-category rule.")
    var category: String?

    @OptionGroup var database: DatabaseFlags

    @Option(name: .long, help: ArgumentHelp("The index folder.", discussion: "Default: $EWALL_INDEX, then data/faiss."))
    var index: String?

    @Option(name: .long, help: "Results wanted.")
    var k: Int = SimilarQuery.defaultK

    @Option(name: .long, help: "Keep results with similarity 1/(1+d) at least this.")
    var minSimilarity: Double = SimilarQuery.defaultMinSimilarity

    @Flag(name: .long, help: "Do not restrict results to the query product's category.")
    var anyCategory = false

    @Flag(name: .long, help: "Include products that are out of stock.")
    var includeOutOfStock = false

    @Flag(name: .long, help: "Include gifts and samples (flagged by `ewall gifts --apply`; never by default).")
    var includeGifts = false

    @Flag(name: .long, help: "Print the answer as one JSON object on stdout.")
    var json = false

    @OptionGroup var modelFlags: ModelFlags
    @OptionGroup var redisFlags: RedisFlags

    func validate() throws {
        if productID == nil && image == nil { throw ValidationError("give a PRODUCT_ID, or --image FILE|URL") }
        if let problem = SimilarQuery(k: k, minSimilarity: minSimilarity).problem {
            throw ValidationError(
                problem.replacingOccurrences(of: "min_similarity", with: "--min-similarity")
                    .replacingOccurrences(of: "k must", with: "--k must"))
        }
    }

    func run() async throws {
        bootstrapLogging()
        let folder = resolvedIndexFolder(index)
        let query = SimilarQuery(
            k: k, minSimilarity: minSimilarity, sameCategory: !anyCategory, inStockOnly: !includeOutOfStock,
            includeGifts: includeGifts)
        let answer: SimilarAnswer
        let indexed: Indexed
        do {
            if let image {
                (answer, indexed) = try await byImage(image, folder: folder, query: query)
            } else {
                (answer, indexed) = try await byProduct(productID!, folder: folder, query: query)
            }
        } catch let e as IndexError {
            FileHandle.standardError.write(Data("ewall: error: \(e.message)\n".utf8))
            throw ExitCode(e.code == .unknownProduct || e.code == .noVector ? 1 : ExitCodes.systemic)
        }
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            FileHandle.standardOutput.write(try enc.encode(answer) + Data("\n".utf8))
        } else {
            print(render(answer, indexed: indexed))
        }
    }

    /// What answered: the index's size and FAISS factory, for the table's first line.
    private typealias Indexed = (count: Int, factory: String)

    /// By the product's stored vector: the index and store alone, no model.
    private func byProduct(
        _ id: String, folder: IndexFolder, query: SimilarQuery
    ) async throws -> (SimilarAnswer, Indexed) {
        let store = try await database.open()
        defer { Task { await store.close() } }
        let search: ProductSearch
        do { search = try await ProductSearch.open(folder: folder, store: store) } catch {
            throw fail((error as? IndexError)?.message ?? (error as? StoreError)?.message ?? "\(error)")
        }
        for w in search.warnings { FileHandle.standardError.write(Data("ewall: warning: \(w)\n".utf8)) }
        warnIfRandomInit(indexModelID: search.manifest.modelID)
        return (try await search.similar(to: id, query: query), (search.count, search.manifest.factory))
    }

    /// By an image: an ``EwallService`` (model, store, index, Redis cache) answers, as it does
    /// for ewall-serve. A file is read here; an http(s) URL is fetched by the service.
    private func byImage(
        _ image: String, folder: IndexFolder, query: SimilarQuery
    ) async throws -> (SimilarAnswer, Indexed) {
        let manifest: IndexManifest
        do { manifest = try folder.manifest() } catch { throw fail((error as? IndexError)?.message ?? "\(error)") }
        warnIfRandomInit(indexModelID: manifest.modelID)
        let limits = ImageLimits()
        let source: ImageSource
        if image.hasPrefix("http://") || image.hasPrefix("https://") {
            source = .url(image)
        } else {
            switch ImageFetcher.readFile(image, maxBytes: limits.maxBytes) {
            case .success(let b): source = .bytes(b)
            case .failure(let e): throw fail("cannot read \(image): \(e.message)")
            }
        }
        // A PRODUCT_ID given too supplies the category and is excluded.
        var category = self.category
        if let productID {
            let store = try await database.open()
            let product: Product?
            do { product = try await store.product(id: productID) } catch {
                await store.close()
                throw fail((error as? StoreError)?.message ?? "\(error)")
            }
            await store.close()
            guard let product else { throw IndexError(.unknownProduct, "unknown product \(productID)") }
            category = category ?? product.category
        }
        let model = modelFlags.options()
        // No keyword rules (the CLI does not classify), no URL policy (the operator's own
        // command may fetch from any host), no index watch; the image limits of the other commands.
        var configuration = EwallConfiguration(
            modelPath: model.path, storeURL: database.resolvedDB, indexPath: folder.path, rulesPath: nil,
            preprocessing: PreprocessingMode(rawValue: manifest.preprocessing) ?? .squash224,
            precision: model.precision, threads: model.threads,
            limits: .init(
                maxImageBytes: limits.maxBytes, maxImagePixels: limits.maxPixels, maxBatchSize: model.batchSize),
            urlPolicy: nil, indexWatchInterval: nil)
        configuration.device = model.device
        configuration.streams = model.streams
        configuration.precisionCachePath = model.precisionCachePath
        configuration.calibration = modelFlags.calibration
        configuration.precisionGuard = modelFlags.precisionGuard
        configuration.redis = try redisFlags.configuration().map {
            var r = $0
            r.connections = 1
            return r
        }
        let service: EwallService
        do {
            service = try await EwallService(configuration: configuration, logger: Logger(label: "ewall"))
        } catch {
            throw fail(error.message)
        }
        let status = service.indexStatus
        guard status.loaded else {
            await service.shutdown()
            throw fail(status.problem ?? "no index at \(folder.path): run rebuild-faiss-index")
        }
        do throws(EwallError) {
            let answer = try await service.similar(
                image: source, category: category, excluding: productID, query: query)
            await service.shutdown()
            return (answer, (status.count, status.factory ?? manifest.factory))
        } catch {
            await service.shutdown()
            throw fail(
                message(
                    for: error, image: image, source: source, indexModelID: manifest.modelID, modelID: service.modelID))
        }
    }

    /// The service's error, worded as this command has always worded it.
    private func message(
        for e: EwallError, image: String, source: ImageSource, indexModelID: String, modelID: String
    ) -> String {
        let isURL = if case .url = source { true } else { false }
        switch e.code {
        case "model_mismatch" where modelID != indexModelID:
            return
                "the index was built from model \(indexModelID), --model is \(modelID): their vectors cannot be compared"
        case FailureClass.blockedURL where isURL, FailureClass.invalidURL where isURL:
            return "cannot fetch \(image): \(e.code): \(e.message)"
        case FailureClass.tooLarge where isURL && e.message.hasPrefix("\(image): "):
            return "cannot fetch \(image): \(e.code): \(e.message.dropFirst(image.count + 2))"
        case "fetch_failed", "internal", "index_error", "classifier_error":
            return e.message
        default:
            // The image's own failure (decode, preprocess, forward pass).
            return e.kind == .unprocessable || e.kind == .internal ? "\(image): \(e.code): \(e.message)" : e.message
        }
    }

    private func warnIfRandomInit(indexModelID: String) {
        if let card = try? ModelCard.load(forModel: modelFlags.resolvedModel), card.modelID == indexModelID,
            !card.pretrained
        {
            FileHandle.standardError.write(
                Data(
                    ("ewall: warning: the index holds vectors of a RANDOM-INIT model (\(card.modelID)): "
                        + "these neighbours carry no meaning\n").utf8))
        }
    }

    private func render(_ a: SimilarAnswer, indexed: Indexed) -> String {
        var out =
            "similar to \(a.query ?? image ?? "?")" + (a.category.map { " (category \($0))" } ?? "")
            + ": \(a.results.count) of k=\(k), from \(indexed.count) indexed (\(indexed.factory))\n"
        if !a.results.isEmpty {
            out += "  #   similarity  cosine  distance  category      stock  product / title\n"
            for (i, r) in a.results.enumerated() {
                let stock = r.inStock.map { $0 ? "yes" : "no" } ?? "?"
                out +=
                    String(format: "  %-3d %10.4f  %6.4f  %8.4f  ", i + 1, r.similarity, r.cosine, r.distance)
                    + (r.category ?? "-").padding(toLength: 12, withPad: " ", startingAt: 0) + "  "
                    + stock.padding(toLength: 5, withPad: " ", startingAt: 0) + "  " + r.productID
                    + (r.title.map { "  \($0)" } ?? "") + "\n"
            }
        }
        for n in a.notes { out += "  note: \(n)\n" }
        return out.trimmingCharacters(in: .newlines)
    }
}
