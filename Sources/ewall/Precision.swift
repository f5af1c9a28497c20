import ArgumentParser
import EwallCLI
import EwallML
import Foundation
import Logging

struct PrecisionCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "precision",
        abstract: "Show what --precision auto decides on this machine, and the figures it decides by.",
        discussion: """
            Measures (or reads from --precision-cache) each precision this machine runs: fp32; bf16 \
            where the CPU or GPU has it; int8 where the int8 file of the model exists (models/NAME_int8.pt, \
            make model writes it) and libtorch has the onednn engine; fp16 on CUDA. For each: model-only \
            images/s on full batches, and drift against fp32 on the calibration photos (mean top-10 \
            neighbour overlap, median centered cosine; with --db, also the overlap among the store's \
            vectors); then the fast JPEG decode's drift with the chosen precision. auto runs the fastest \
            precision faster than fp32 by more than 10% whose drift is within --min-overlap and \
            --min-centered-cosine, else fp32.

            The figures are cached per model file and int8 file (sha256), CPU model and flags, libtorch \
            version, threads, batch size and calibration photos; --remeasure measures again. With the \
            random-init stand-in model, bf16 and int8 drift far beyond the guard and auto keeps fp32: \
            that is expected; a trained model usually drifts far less, which is why it is measured.

            Output: a table and the decision; --json: the decision as JSON. Exit status: 0; 2 when fp32 \
            itself cannot run or the calibration folder has too few photos (at least 64).
            """)

    @OptionGroup var modelFlags: ModelFlags
    @OptionGroup var imageFlags: ImageFlags

    @Option(name: .long, help: "A store whose vectors of this model also serve for the neighbour overlap.")
    var db: String?

    @Flag(name: .long, help: "Measure again even when the cache has figures.")
    var remeasure = false

    @Flag(name: .long, help: "Print the decision as JSON.")
    var json = false

    func run() async throws {
        bootstrapLogging()
        var options = modelFlags.options()
        options.precision = .auto
        let path = options.path
        guard FileManager.default.fileExists(atPath: path) else {
            throw fail("model file \(path) not found; run `make model` or pass --model / set EWALL_MODEL")
        }
        var storeVectors: [[Float]] = []
        if let db {
            let store: any EmbeddingStore
            do { store = try await StoreLocation(parsing: db).open() } catch let e as StoreError { throw fail(e) }
            if let card = try? ModelCard.load(forModel: path) {
                let key = ModelKey(modelID: card.modelID, preprocessing: imageFlags.preprocess.rawValue)
                storeVectors = ((try? await store.embeddings(key: key, after: nil, limit: 2_000)) ?? []).map(
                    \.embedding.vector)
            }
            await store.close()
        }
        let advisor = PrecisionAdvisor(
            model: options, preprocessing: imageFlags.preprocess, limits: imageFlags.limits,
            calibration: modelFlags.calibration ?? PrecisionAdvisor.calibrationFolder(forModel: path),
            guard: modelFlags.precisionGuard, storeVectors: storeVectors)
        let decision: PrecisionDecision
        do { decision = try advisor.decide(remeasure: remeasure) } catch { throw fail(error) }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(decision), as: UTF8.self))
            return
        }
        print(Self.table(decision))
    }

    /// The measurements as a table, then the decision and why.
    static func table(_ d: PrecisionDecision) -> String {
        let m = d.measured
        let fp32 = m.of(.fp32)?.imagesPerSecond
        func f(_ x: Double?, _ format: String) -> String { x.map { String(format: format, $0) } ?? "-" }
        func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }
        var lines = [
            "\(m.photos) calibration photos in \(m.calibration), measured \(m.measuredAt)\(d.fromCache ? " (cached)" : "")",
            pad("precision", 10) + pad("decode", 8) + pad("img/s", 8) + pad("vs fp32", 9) + pad("overlap", 9)
                + pad("centered", 10) + pad("store", 7) + "keeps",
        ]
        for x in m.measurements {
            let keeps = x.drift.map { d.precisionGuard.keeps($0) ? "yes" : "no" } ?? "reference"
            lines.append(
                pad("\(x.precision)", 10) + pad(x.fastJPEG ? "fast" : "exact", 8) + pad(f(x.imagesPerSecond, "%.1f"), 8)
                    + pad(x.imagesPerSecond.flatMap { s in fp32.map { String(format: "%.2fx", s / $0) } } ?? "-", 9)
                    + pad(f(x.drift?.overlap, "%.3f"), 9) + pad(f(x.drift?.centeredCosine, "%.4f"), 10)
                    + pad(f(x.drift?.storeOverlap, "%.3f"), 7) + keeps)
        }
        for (p, why) in m.unavailable.sorted(by: { $0.key < $1.key }) { lines.append("\(p): not measured: \(why)") }
        lines.append(
            "guard: top-\(d.precisionGuard.neighbours) overlap >= \(d.precisionGuard.minOverlap), centered cosine >= "
                + "\(d.precisionGuard.minCenteredCosine), faster than fp32 by > \(Int(d.precisionGuard.speedMargin * 100))%"
        )
        lines.append("auto: \(d.precision), \(d.fastJPEG ? "fast" : "exact") JPEG decode")
        lines += d.reasons.map { "  " + $0 }
        return lines.joined(separator: "\n")
    }
}
