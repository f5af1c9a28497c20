import ArgumentParser
import EwallCLI
import EwallML
import Foundation

/// Flags `ewall classify` and `ewall calibrate` share: the store, the vectors' model key, the
/// rules file and the classifier's method and parameters.
struct ClassifierFlags: ParsableArguments {
    @OptionGroup var database: DatabaseFlags

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The keyword rules file.",
            discussion: "Default: $EWALL_RULES, then data/category_rules.json."))
    var rules: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The gift rules file: gifts and samples are answered `gift`, never used as references.",
            discussion: "Default: $EWALL_GIFT_RULES, then data/gift_rules.json when it exists."))
    var giftRules: String?

    @Flag(name: .long, help: "Do not run the gift detector (stored gift flags still apply).")
    var noGifts = false

    @Option(name: .long, help: "Scoring: mean-refs (the platform's), centroid, or knn.")
    var method: ScoringMethod = .meanRefs

    @Option(name: .long, help: "The embedding step answers when the best category's score is at least this.")
    var threshold: Double = 0.35

    @Option(name: .long, help: "Reference products per category.")
    var maxRefs: Int = 10

    @Option(name: .long, help: "Categories with fewer references than this are reported.")
    var minRefs: Int = 3

    @Option(name: .customLong("k"), help: "Neighbours voting, for --method knn.")
    var k: Int = 10

    @Option(name: .long, help: "Use the vectors of this model id (needed only when the store holds several).")
    var modelId: String?

    @Option(name: .long, help: "...and this preprocessing.")
    var preprocess: String?

    var resolvedRules: String {
        rules ?? ProcessInfo.processInfo.environment["EWALL_RULES"] ?? "data/category_rules.json"
    }

    var configuration: ClassifierConfiguration {
        ClassifierConfiguration(
            method: method, threshold: threshold, maxReferences: maxRefs, minReferences: minRefs, k: k)
    }

    func validate() throws {
        guard (0...1).contains(threshold) else { throw ValidationError("--threshold must be between 0 and 1") }
        guard (1...1000).contains(maxRefs) else { throw ValidationError("--max-refs must be 1...1000") }
        guard k >= 1 else { throw ValidationError("--k must be at least 1") }
    }

    /// Opens the store and builds the classifier, printing its warnings.
    func open() async throws -> (any EmbeddingStore, ModelKey, CategoryClassifier) {
        let store = try await database.open()
        do {
            let rules = try KeywordRules.load(path: resolvedRules)
            let key = try await store.resolveKey(modelID: modelId, preprocessing: preprocess).key
            var gifts: GiftDetector?
            let giftPath =
                giftRules ?? ProcessInfo.processInfo.environment["EWALL_GIFT_RULES"] ?? "data/gift_rules.json"
            if !noGifts && (giftRules != nil || FileManager.default.fileExists(atPath: giftPath)) {
                gifts = try await GiftDetector.open(store: store, rules: GiftRules.load(path: giftPath), key: key)
            }
            let classifier = try await CategoryClassifier.open(
                store: store, key: key, rules: rules, configuration: configuration, gifts: gifts)
            if classifier.references.count == 0 {
                warn(
                    "no product has a category set by a person and a vector under \(key): the embedding step cannot run, "
                        + "only the keyword rules answer")
            }
            for (category, n) in classifier.thinCategories {
                warn(
                    "category '\(category)' has only \(n) reference product(s) (fewer than --min-refs \(minRefs)): its scores are noisy"
                )
            }
            let model = ProcessInfo.processInfo.environment["EWALL_MODEL"] ?? "models/resnet50.pt"
            if let card = try? ModelCard.load(forModel: model), card.modelID == key.modelID, !card.pretrained {
                warn(
                    "the vectors come from a RANDOM-INIT model (\(card.modelID)): embedding scores carry no meaning, "
                        + "only the keyword answers do")
            }
            return (store, key, classifier)
        } catch let e as ClassifierError {
            await store.close()
            throw fail(e.message)
        } catch let e as StoreError {
            await store.close()
            throw fail(e.message)
        }
    }
}

func warn(_ message: String) {
    FileHandle.standardError.write(Data("ewall: warning: \(message)\n".utf8))
}

extension ScoringMethod: ExpressibleByArgument {}

/// `ewall classify`: the hybrid category classifier over the store.
struct Classify: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Classify products: image similarity to reference products first, title keywords second.",
        discussion: """
            The platform's classifier by default: for each category, the mean cosine similarity \
            of the product's vector to up to 10 reference products of that category; the best \
            category wins if its score is >= 0.35; otherwise the keyword rules on the title \
            (Korean and English, --rules); otherwise `generic`. Before all of them, gifts and \
            samples (the gift detector, --gift-rules, and the store's gift flags) are answered \
            `gift` with the reason, and are never references.

            References are products whose category a person set (from a manifest or an import; \
            not `generic`, not the classifier's), chosen in the order of a hash of their id. A \
            product is never its own reference.

            Without --apply nothing is written (a dry run). With --apply the answers are stored, \
            marked as set by the classifier with the method and score; a category a person set \
            is never overwritten. Stored answers are reused while the rules file, the references, \
            the model and the product's vector and title are unchanged.

            Exit status: 0, 1 when some PRODUCT_IDs are unknown, 2 on a systemic error.
            Vectors from a random-init model (`make model` offline) make embedding scores \
            meaningless; only keyword answers are then worth reading.
            """)

    @Argument(help: ArgumentHelp("Products to classify (default: --only-generic).", valueName: "product-id"))
    var productIDs: [String] = []

    @Flag(
        name: .long,
        help: "Classify every product whose category is generic or unset (the default without PRODUCT_IDs).")
    var onlyGeneric = false

    @Flag(
        name: .long,
        help: "Classify every product (a person's categories are reported beside the answer, never changed).")
    var all = false

    @Flag(name: .long, help: "Write the answers to the store.")
    var apply = false

    @Flag(name: .long, help: "Only report (the default).")
    var dryRun = false

    @Flag(name: .long, help: "Print one JSON object per product (JSON lines), then a summary object.")
    var json = false

    @OptionGroup var flags: ClassifierFlags

    func validate() throws {
        if [!productIDs.isEmpty, onlyGeneric, all].filter({ $0 }).count > 1 {
            throw ValidationError("give PRODUCT_IDs, --only-generic or --all: one of them")
        }
        if apply && dryRun { throw ValidationError("--apply and --dry-run contradict each other") }
    }

    func run() async throws {
        BLASCore.selectAtStartup() // before any BLAS work: OpenBLAS's kernels for this CPU (see BLASCore)
        bootstrapLogging()
        let (store, key, classifier) = try await flags.open()
        defer { Task { await store.close() } }
        let selection: ClassifySelection = !productIDs.isEmpty ? .products(productIDs) : all ? .all : .generic
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        var printedHeader = false
        let summary: ClassifySummary
        do {
            summary = try await classifier.run(store: store, key: key, selection: selection, apply: apply) { page in
                if json {
                    var out = Data()
                    for r in page { out += try encoder.encode(r) + Data("\n".utf8) }
                    FileHandle.standardOutput.write(out)
                } else {
                    if !printedHeader {
                        print(
                            "product              current         answer       by         score  runner-up         action      why"
                        )
                        printedHeader = true
                    }
                    for r in page { print(Self.row(r)) }
                }
            }
        } catch let e as StoreError {
            throw fail(e.message)
        } catch let e as ClassifierError {
            throw fail(e.message)
        }
        for id in summary.unknown { FileHandle.standardError.write(Data("ewall: error: unknown product \(id)\n".utf8)) }
        if json {
            FileHandle.standardOutput.write(try encoder.encode(["summary": summary]) + Data("\n".utf8))
        } else {
            print(Self.summaryText(summary, classifier: classifier, key: key))
        }
        if !summary.unknown.isEmpty { throw ExitCode(ExitCodes.someFailed) }
    }

    static func row(_ r: ClassifiedProduct) -> String {
        let c = r.classification
        func pad(_ s: String, _ n: Int) -> String {
            s.count >= n ? String(s.prefix(n - 1)) + " " : s.padding(toLength: n, withPad: " ", startingAt: 0)
        }
        let current = (r.currentCategory ?? "-") + (r.currentSource.map { $0 == .classifier ? "*" : "" } ?? "")
        let score = c.best.map { String(format: "%.3f", $0.score) } ?? "-"
        let runner = c.runnerUp.map { "\($0.category) \(String(format: "%.3f", $0.score))" } ?? "-"
        var why = ""
        switch c.decidedBy {
        case .embedding:
            why =
                "\(c.best!.category) >= \(c.threshold), margin \(String(format: "%.3f", c.margin ?? 0)), \(c.referencesUsed) refs"
        case .keyword:
            why =
                "'\(c.keyword!.term)' in '\(c.keyword!.matchedText)'"
                + (c.best.map { " (best score \($0.category) < \(c.threshold))" } ?? "")
        case .none: why = c.embeddingSkipped ?? "below \(c.threshold), no keyword"
        case .gift: why = c.gift.map { "\($0.classificationReason) (\($0.decidedBy))" } ?? "gift"
        }
        return pad(c.productID ?? "?", 21) + pad(current, 16) + pad(c.category, 13) + pad(c.decidedBy.rawValue, 11)
            + pad(score, 7) + pad(runner, 18) + pad(r.action.rawValue + (r.cached ? "·c" : ""), 12) + why
    }

    static func summaryText(_ s: ClassifySummary, classifier: CategoryClassifier, key: ModelKey) -> String {
        let c = classifier.configuration
        var out =
            "\n\(s.products) products classified in \(String(format: "%.2f", s.seconds)) s"
            + " (\(c.method.rawValue), threshold \(c.threshold), \(classifier.references.count) references in "
            + "\(classifier.references.categories.count) categories, \(key))\n"
        out +=
            "  decided by: "
            + ["embedding", "keyword", "gift", "none"].map { "\($0) \(s.byDecision[$0, default: 0])" }.joined(
                separator: ", ")
            + "\n"
        out +=
            "  answers: "
            + s.byCategory.sorted { $0.value != $1.value ? $0.value > $1.value : $0.key < $1.key }
            .map { "\($0.key) \($0.value)" }.joined(separator: ", ") + "\n"
        out +=
            "  actions: "
            + s.byAction.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            + " (\(s.cached) from stored answers, marked ·c)\n"
        out +=
            s.applied
            ? "  written to the store (category_source = classifier)" : "  dry run: nothing written; --apply writes"
        out += "\n  current: * = set by the classifier earlier"
        return out
    }
}

/// `ewall calibrate`: how the classifier does on products with trusted categories.
struct Calibrate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Measure the classifier on products whose category a person set (leave-one-out), threshold by threshold.",
        discussion: """
            Every product with a category a person set (not `generic`) is classified as if it were \
            new, never against itself (when it is a reference, the next one in order takes its \
            place). For thresholds 0.10 to 0.90: the share the embedding step accepts, its \
            accuracy on those, the keyword step's coverage and accuracy on the rest, and the \
            overall accuracy (`generic` counts as wrong). Then the confusion table at --threshold, \
            and the lowest threshold from which the embedding step's precision stays >= \
            --target-precision. This is how to check whether 0.35 holds for a catalogue and model.
            """)

    @OptionGroup var flags: ClassifierFlags

    @Option(name: .long, help: "The precision the suggested threshold must reach.")
    var targetPrecision: Double = 0.9

    @Flag(name: .long, help: "Print the report as one JSON object.")
    var json = false

    @Flag(
        name: .long,
        help: ArgumentHelp(
            "Calibrate the gift detector's image step instead: its threshold, swept over the products the other "
                + "gift steps label.",
            discussion: """
                Registered gifts (the gift rules' master list and --gift-master) with vectors are the \
                references; every other product with a vector is labelled a gift or not by the master list, \
                zero price and words; for thresholds 0.500 to 0.995, how many the image step would flag, \
                its precision and recall; then the lowest threshold from which precision stays >= \
                --target-precision. Put it in the rules' image.threshold.
                """))
    var gifts = false

    @Option(name: .long, parsing: .upToNextOption, help: "With --gifts: more registered gift product ids.")
    var giftMaster: [String] = []

    func run() async throws {
        BLASCore.selectAtStartup() // before any BLAS work: OpenBLAS's kernels for this CPU (see BLASCore)
        bootstrapLogging()
        if gifts {
            try await calibrateGifts()
            return
        }
        let (store, key, classifier) = try await flags.open()
        defer { Task { await store.close() } }
        let report: CalibrationReport
        do {
            let labelled = try await CategoryClassifier.labelledProducts(store: store, key: key)
            guard !labelled.isEmpty else {
                throw fail("no product has a category set by a person: nothing to calibrate on")
            }
            report = try Calibration.run(classifier, products: labelled, targetPrecision: targetPrecision)
        } catch let e as StoreError {
            throw fail(e.message)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            FileHandle.standardOutput.write(try encoder.encode(report) + Data("\n".utf8))
            return
        }
        print(Self.render(report))
    }

    func calibrateGifts() async throws {
        let store = try await flags.database.open()
        defer { Task { await store.close() } }
        let report: GiftImageCalibration
        do {
            let key = try await store.resolveKey(modelID: flags.modelId, preprocessing: flags.preprocess).key
            let path =
                flags.giftRules ?? ProcessInfo.processInfo.environment["EWALL_GIFT_RULES"] ?? "data/gift_rules.json"
            let detector = try await GiftDetector.open(
                store: store, rules: GiftRules.load(path: path), key: key, master: giftMaster)
            guard detector.hasMasterVectors else {
                throw fail("no registered gift has a vector under \(key): nothing to compare images with")
            }
            report = try await detector.calibrateImage(store: store, key: key, targetPrecision: targetPrecision)
        } catch let e as StoreError {
            throw fail(e)
        } catch let e as ClassifierError {
            throw fail(e)
        }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            FileHandle.standardOutput.write(try encoder.encode(report) + Data("\n".utf8))
            return
        }
        var out =
            "gift image step: \(report.products) products with vectors (\(report.gifts) gifts by the other steps), "
            + "\(report.masterWithVectors) registered gifts with vectors\n\nthreshold  flagged  precision  recall\n"
        for row in report.rows where Int((row.threshold * 1000).rounded()) % 25 == 0 || row.threshold >= 0.9 {
            out +=
                String(
                    format: "%9.3f  %7d  %9@  %5.1f%%\n", row.threshold, row.flagged,
                    row.precision.map { String(format: "%5.1f%%", $0 * 100) } ?? "-", row.recall * 100)
        }
        if let t = report.thresholdForTarget {
            out += "\nprecision >= \(report.targetPrecision) from threshold \(t) up"
        } else {
            out += "\nno threshold gives the image step a precision >= \(report.targetPrecision)"
        }
        out += " (the rules' image.threshold: \(report.currentThreshold))"
        print(out)
    }

    static func render(_ r: CalibrationReport) -> String {
        func pct(_ x: Double?) -> String { x.map { String(format: "%5.1f%%", $0 * 100) } ?? "     -" }
        var out =
            "calibration on \(r.products) products with a person's category (\(r.withoutVector) without a vector), "
            + "\(r.method.rawValue), up to \(r.maxReferences) references, rules \(r.rulesVersion ?? "none"), "
            + "\(String(format: "%.2f", r.seconds)) s\n\n"
        out += "threshold  embedding accepts  its accuracy  keywords cover  their accuracy  overall  generic\n"
        for row in r.rows {
            out +=
                String(format: "%9.2f", row.threshold) + "  "
                + pct(row.embeddingAccepted).padding(toLength: 17, withPad: " ", startingAt: 0)
                + "  " + pct(row.embeddingAccuracy).padding(toLength: 12, withPad: " ", startingAt: 0)
                + "  " + pct(row.keywordCoverage).padding(toLength: 14, withPad: " ", startingAt: 0)
                + "  " + pct(row.keywordAccuracy).padding(toLength: 14, withPad: " ", startingAt: 0)
                + "  " + pct(row.overallAccuracy) + "   " + pct(row.generic) + "\n"
        }
        out += "\n"
        if let t = r.thresholdForTarget {
            out +=
                "precision >= \(pct(r.targetPrecision)) from threshold \(String(format: "%.2f", t)) up, where the embedding step accepts \(pct(r.acceptedAtTarget))\n"
        } else {
            out += "no threshold gives the embedding step a precision >= \(pct(r.targetPrecision))\n"
        }
        let c = r.confusion
        out +=
            "\nconfusion at threshold \(String(format: "%.2f", c.threshold)) (rows: the person's category; columns: the classifier's answer)\n"
        let width = max(10, (c.categories + c.columns).map(\.count).max()! + 2)
        out +=
            "".padding(toLength: width, withPad: " ", startingAt: 0)
            + c.columns.map { $0.padding(toLength: width, withPad: " ", startingAt: 0) }.joined() + "\n"
        for (i, name) in c.categories.enumerated() {
            out +=
                name.padding(toLength: width, withPad: " ", startingAt: 0)
                + c.counts[i].map { "\($0)".padding(toLength: width, withPad: " ", startingAt: 0) }.joined() + "\n"
        }
        return out.trimmingCharacters(in: .newlines)
    }
}
