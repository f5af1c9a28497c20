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

    @Flag(name: .long, help: "Print the answer as one JSON object on stdout.")
    var json = false

    @OptionGroup var modelFlags: ModelFlags
    @OptionGroup var redisFlags: RedisFlags

    func validate() throws {
        if productID == nil && image == nil { throw ValidationError("give a PRODUCT_ID, or --image FILE|URL") }
        if let problem = SimilarQuery(k: k, minSimilarity: minSimilarity).problem {
            throw ValidationError(problem.replacingOccurrences(of: "min_similarity", with: "--min-similarity")
                .replacingOccurrences(of: "k must", with: "--k must"))
        }
    }

    func run() async throws {
        bootstrapLogging()
        let store = try await database.open()
        defer { Task { await store.close() } }
        let folder = resolvedIndexFolder(index)
        let search: ProductSearch
        do { search = try await ProductSearch.open(folder: folder, store: store) } catch {
            throw fail((error as? IndexError)?.message ?? (error as? StoreError)?.message ?? "\(error)")
        }
        for w in search.warnings { FileHandle.standardError.write(Data("ewall: warning: \(w)\n".utf8)) }
        if let card = try? ModelCard.load(forModel: modelFlags.resolvedModel), card.modelID == search.manifest.modelID,
           !card.pretrained {
            FileHandle.standardError.write(Data(("ewall: warning: the index holds vectors of a RANDOM-INIT model (\(card.modelID)): "
                + "these neighbours carry no meaning\n").utf8))
        }
        let query = SimilarQuery(k: k, minSimilarity: minSimilarity, sameCategory: !anyCategory, inStockOnly: !includeOutOfStock)
        let answer: SimilarAnswer
        do {
            if let image {
                answer = try await byImage(image, search: search, store: store, query: query)
            } else {
                answer = try await search.similar(to: productID!, query: query)
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
            print(render(answer, search: search))
        }
    }

    private func byImage(_ image: String, search: ProductSearch, store: any EmbeddingStore,
                         query: SimilarQuery) async throws -> SimilarAnswer {
        let m = search.manifest
        let embedder: ImageEmbedder
        do {
            embedder = try ImageEmbedder(configuration: EmbedderConfiguration(
                model: modelFlags.options(), preprocessing: PreprocessingMode(rawValue: m.preprocessing) ?? .squash224))
        } catch { throw fail(error.message) }
        guard embedder.modelID == m.modelID else {
            throw fail("the index was built from model \(m.modelID), --model is \(embedder.modelID): their vectors cannot be compared")
        }
        let bytes: [UInt8]
        if image.hasPrefix("http://") || image.hasPrefix("https://") {
            let fetcher = ImageFetcher()
            let fetched = await fetcher.fetch(image)
            try? await fetcher.shutdown()
            switch fetched {
            case .success(let f): bytes = f.bytes
            case .failure(let e): throw fail("cannot fetch \(image): \(e.code): \(e.message)")
            }
        } else {
            switch ImageFetcher.readFile(image, maxBytes: ImageLimits().maxBytes) {
            case .success(let b): bytes = b
            case .failure(let e): throw fail("cannot read \(image): \(e.message)")
            }
        }
        // With --redis: the vector of these bytes under this model key, if any process made it.
        let cache = try redisFlags.configuration().map { r in
            EmbeddingCache(client: RedisClient(location: r.location, timeout: r.timeout, connections: 1),
                           key: ModelKey(modelID: embedder.modelID, preprocessing: embedder.preprocessingID),
                           dimension: embedder.dimension, ttl: r.cacheTTL)
        }
        let sha = ImageFetcher.sha256(bytes)
        let vector: [Float]
        if let cache, let hit = await cache.lookup(sha256: sha) {
            vector = hit.vector
        } else {
            guard let outcome = await embedder.embed(images: [bytes], labels: [image]).first else { throw fail("no outcome") }
            switch outcome.result {
            case .success(let e):
                vector = e.vector
                await cache?.store([CachedEmbedding(vector: e.vector, imageSHA256: sha, format: e.image.format,
                                                    width: e.image.width, height: e.image.height)])
            case .failure(let f): throw fail("\(image): \(f.code): \(f.message)")
            }
        }
        await cache?.client.close()
        var category = self.category
        if let productID {
            guard let p = try await store.product(id: productID) else { throw IndexError(.unknownProduct, "unknown product \(productID)") }
            category = category ?? p.category
        }
        return try search.similar(vector: vector, category: category, excluding: productID, query: query)
    }

    private func render(_ a: SimilarAnswer, search: ProductSearch) -> String {
        var out = "similar to \(a.query ?? image ?? "?")" + (a.category.map { " (category \($0))" } ?? "")
            + ": \(a.results.count) of k=\(k), from \(search.count) indexed (\(search.manifest.factory))\n"
        if !a.results.isEmpty {
            out += "  #   similarity  cosine  distance  category      stock  product / title\n"
            for (i, r) in a.results.enumerated() {
                let stock = r.inStock.map { $0 ? "yes" : "no" } ?? "?"
                out += String(format: "  %-3d %10.4f  %6.4f  %8.4f  ", i + 1, r.similarity, r.cosine, r.distance)
                    + (r.category ?? "-").padding(toLength: 12, withPad: " ", startingAt: 0) + "  "
                    + stock.padding(toLength: 5, withPad: " ", startingAt: 0) + "  " + r.productID
                    + (r.title.map { "  \($0)" } ?? "") + "\n"
            }
        }
        for n in a.notes { out += "  note: \(n)\n" }
        return out.trimmingCharacters(in: .newlines)
    }
}
