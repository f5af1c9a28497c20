import ArgumentParser
import EwallCLI
import EwallML
import Foundation
import Logging

struct Embed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Embed image files into L2-normalised vectors.",
        discussion: """
            Reads JPEG, PNG or WebP files (format from the bytes, not the name), decodes, \
            preprocesses and runs them through the TorchScript model in batches.

            Output: a table (default); --json: one JSON object per input, \
            {"path":..., "ok":true, "vector":[...]} or {"path":..., "ok":false, "error":{"code":..., "message":...}}; \
            --npy OUT: the vectors of the inputs that succeeded, float32 [n, D], with one JSON line per \
            input on stdout giving its row.

            Exit status: 0 when the run completed, even if some images failed (each failure is reported \
            on its own line); 2 for systemic errors (model missing or unloadable, output not writable).

            A model whose card says pretrained: false (the random-init model `make model` makes \
            offline) produces vectors that carry no meaning.
            """)

    @Argument(help: "Image files.")
    var files: [String]

    @OptionGroup var modelFlags: ModelFlags
    @OptionGroup var imageFlags: ImageFlags

    @Flag(name: .long, help: "One JSON object per input, with the vector.")
    var json = false

    @Option(name: .long, help: "Write the vectors to this .npy file (float32 [n, D]).")
    var npy: String?

    func validate() throws {
        if json && npy != nil { throw ValidationError("--json and --npy are exclusive") }
        if files.isEmpty { throw ValidationError("give at least one image file") }
    }

    func run() async throws {
        bootstrapLogging()
        let logger = Logger(label: "ewall")
        let config = imageFlags.configuration(
            model: modelFlags.options(), streams: modelFlags.streams, modelFlags: modelFlags)
        let embedder: ImageEmbedder
        do {
            embedder = try ImageEmbedder(configuration: config, logger: logger)
        } catch {
            throw fail(error.message)
        }
        let start = Date()
        let outcomes = await embedder.embed(files: files)
        let seconds = Date().timeIntervalSince(start)
        let out = FileHandle.standardOutput
        var rows: [Float] = []
        var row = 0
        for o in outcomes {
            var obj: [String: Any] = ["path": o.source]
            switch o.result {
            case .success(let e):
                obj["ok"] = true
                if json { obj["vector"] = e.vector.map { Double($0) } }
                if npy != nil {
                    obj["row"] = row
                    rows += e.vector
                    row += 1
                }
            case .failure(let f):
                obj["ok"] = false
                obj["error"] = ["code": f.code, "stage": f.stage.rawValue, "message": f.message]
            }
            if json || npy != nil {
                let data = try JSONSerialization.data(
                    withJSONObject: obj, options: [.sortedKeys, .withoutEscapingSlashes])
                out.write(data + Data("\n".utf8))
            }
        }
        if let npy {
            do {
                try Npy.encode(rows, rows: row, cols: embedder.dimension).write(to: URL(fileURLWithPath: npy))
            } catch {
                throw fail("cannot write \(npy): \(error.localizedDescription)")
            }
        }
        if !json && npy == nil { printTable(outcomes, embedder: embedder, seconds: seconds) }
        let failed = outcomes.filter { if case .failure = $0.result { return true } else { return false } }.count
        let summary =
            "ewall embed: \(outcomes.count - failed) embedded, \(failed) failed, "
            + "model \(embedder.modelID) (\(embedder.precision), \(embedder.preprocessingID)), "
            + "on \(embedder.device), \(config.model.threads) model"
            + (config.model.streams > 1 ? " (\(config.model.streams) streams of \(config.model.intraOpThreads))" : "")
            + " + \(config.decodeThreads) decode threads, "
            + String(format: "%.1f images/s", Double(outcomes.count) / max(seconds, 1e-9))
            + (embedder.card?.pretrained == false ? " [RANDOM-INIT MODEL: vectors carry no meaning]" : "")
        FileHandle.standardError.write(Data((summary + "\n").utf8))
        if let decision = embedder.precisionDecision {
            FileHandle.standardError.write(Data("ewall embed: precision auto: \(decision)\n".utf8))
        }
    }

    func printTable(_ outcomes: [EmbeddingOutcome], embedder: ImageEmbedder, seconds: Double) {
        let width = min(48, outcomes.map { $0.source.count }.max() ?? 4)
        func pad(_ s: String, _ n: Int) -> String {
            s.count >= n ? String(s.suffix(n)) : s + String(repeating: " ", count: n - s.count)
        }
        print(pad("image", width) + "  " + pad("format", 6) + "  " + pad("size", 11) + "  result")
        for o in outcomes {
            switch o.result {
            case .success(let e):
                let head = e.vector.prefix(3).map { String(format: "%.4f", $0) }.joined(separator: " ")
                let size = "\(e.image.width)x\(e.image.height)"
                print(
                    pad(o.source, width) + "  " + pad(e.image.format, 6) + "  " + pad(size, 11)
                        + "  ok  dim \(e.vector.count)  [\(head) ...]")
            case .failure(let f):
                print(
                    pad(o.source, width) + "  " + pad("-", 6) + "  " + pad("-", 11) + "  FAILED \(f.code): \(f.message)"
                )
            }
        }
    }
}
