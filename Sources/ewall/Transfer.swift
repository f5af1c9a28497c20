import ArgumentParser
import EwallCLI
import EwallML
import Foundation

struct Import: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Import vectors from the platform's Django table (JSON Lines).",
        discussion: """
            One JSON object per line: product_id, image_url, embedding_vector (an array of floats, \
            or a string holding one), model_version, and optional title, category, in_stock. \
            Vectors are stored under (model_version, --preprocess) and never mixed with vectors \
            of other models or preprocessings. Categories imported count as set by a person. \
            Bad lines are reported with their number and skipped.

            Exit status: 0 all lines imported; 1 some lines were bad; 2 systemic error.
            """)

    @Option(name: .long, help: "The JSON Lines file.")
    var seedJsonl: String

    @OptionGroup var database: DatabaseFlags
    @OptionGroup var input: InputFlags

    @Option(
        name: .long, help: "The preprocessing the imported vectors were made with (the platform's seed used squash224)."
    )
    var preprocess: PreprocessingMode = .squash224

    @Flag(name: .long, help: "Print the summary as JSON.")
    var json = false

    func run() async throws {
        bootstrapLogging()
        let store = try await database.open()
        let summary: VectorTransfer.ImportSummary
        do {
            let file = seedJsonl
            summary = try await VectorTransfer.importSeed(
                path: file, into: store, preprocessing: preprocess.rawValue,
                rules: input.rules
            ) { p in
                FileHandle.standardError.write(Data("ewall import: \(file): \(p)\n".utf8))
            }
        } catch {
            await store.close()
            throw fail((error as? StoreError)?.message ?? "\(error)")
        }
        await store.close()
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            FileHandle.standardOutput.write(try enc.encode(summary) + Data("\n".utf8))
        } else {
            let models = summary.byModel.sorted { $0.key < $1.key }.map { "\($0.key) (\(preprocess)): \($0.value)" }
                .joined(separator: ", ")
            print(
                "ewall import: \(summary.imported) vectors into \(store.displayName) [\(models)], \(summary.badLines) bad lines"
                    + (summary.notUnitNorm > 0 ? ", \(summary.notUnitNorm) not L2-normalised (stored as given)" : ""))
        }
        if summary.badLines > 0 { throw ExitCode(ExitCodes.someFailed) }
    }
}

struct Export: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Export the vectors of one model as JSON Lines or .npy + ids.",
        discussion: """
            --jsonl FILE: one object per line in the import's shape (product_id, image_url, \
            embedding_vector, model_version, preprocessing, image_sha256, title, category, in_stock). \
            --npy FILE: float32 [n, dim] and FILE.ids.txt with the product ids in row order. \
            Product-id order (byte-wise). When the store holds vectors of several models or \
            preprocessings, name one with --model-id and --preprocess: they are never mixed.
            """)

    @Option(name: .long, help: "Write JSON Lines here.")
    var jsonl: String?

    @Option(name: .long, help: "Write a float32 .npy here (and FILE.ids.txt).")
    var npy: String?

    @OptionGroup var database: DatabaseFlags

    @Option(name: .long, help: "The model id to export (default: the only one in the store).")
    var modelId: String?

    @Option(name: .long, help: "The preprocessing to export (default: the only one in the store).")
    var preprocess: PreprocessingMode?

    func validate() throws {
        if (jsonl == nil) == (npy == nil) { throw ValidationError("give exactly one of --jsonl FILE or --npy FILE") }
    }

    func run() async throws {
        bootstrapLogging()
        let store = try await database.open()
        do {
            let key = try await store.resolveKey(modelID: modelId, preprocessing: preprocess?.rawValue)
            let n: Int
            if let jsonl {
                n = try await VectorTransfer.exportJSONL(from: store, key: key.key, to: jsonl)
            } else {
                n = try await VectorTransfer.exportNpy(from: store, key: key, to: npy!)
            }
            await store.close()
            let target = jsonl ?? "\(npy!) (+ \(npy!).ids.txt)"
            print(
                "ewall export: \(n) vectors of \(key.key.modelID) (\(key.key.preprocessing), dim \(key.dimension)) to \(target)"
            )
        } catch {
            await store.close()
            throw fail((error as? StoreError)?.message ?? (error as? ManifestError)?.message ?? "\(error)")
        }
    }
}
