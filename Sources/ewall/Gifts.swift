import ArgumentParser
import EwallCLI
import EwallML
import Foundation

/// `ewall gifts`: the gift detector over the store.
struct Gifts: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Find gifts and samples in the store: registered list, zero price, words, pictures.",
        discussion: """
            Every product is decided in this order, and the first step that finds a gift says so: \
            master (the company's registered gift list: the rules' "master" and --master), \
            zero_price (a price or supply price of 0), keyword (사은품, 증정품, 샘플, 테스터, free gift, \
            sample, GWP, ... in the title, except free shipping and returns, a product that comes \
            with a gift such as +사은품 or (사은품 포함), and brand or model names), image (the image \
            vector's cosine to the nearest registered gift's is at least the rules' image.threshold; \
            needs vectors in the store). The rest are products.

            Rules: --rules FILE, else $EWALL_GIFT_RULES, else data/gift_rules.json; with --company N, \
            gift_rules.N.json beside the default file when there is one. See docs/gifts.md.

            Without --apply nothing is written (a dry run): every product is reported, gift or not, \
            with the step and the reason. With --apply every answer is stored in gift_flags, where \
            similar products (left out unless include_gifts) and the classifier (answers `gift`) \
            read it.

            --json prints one object per product in the platform's shape (product_id, \
            product_type GIFT/PRODUCT, gift_type, classification_reason, is_revenue) plus decided_by \
            and, for IMAGE, resembles; then a summary object.

            Exit status: 0, 64 for a malformed rules file, 2 on a systemic error.
            """)

    @OptionGroup var database: DatabaseFlags

    @Option(name: .long, help: "The company whose rules apply (its own rules file when there is one).")
    var company: Int?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The gift rules file.", discussion: "Default: $EWALL_GIFT_RULES, then data/gift_rules.json."))
    var rules: String?

    @Option(name: .long, parsing: .upToNextOption, help: "More registered gift product ids (beside the rules').")
    var master: [String] = []

    @Option(name: .long, help: "The image step uses vectors of this model id (needed only when the store has several).")
    var modelId: String?

    @Option(name: .long, help: "...and this preprocessing.")
    var preprocess: String?

    @Flag(name: .long, help: "Store the answers (gift_flags).")
    var apply = false

    @Flag(name: .long, help: "Print one JSON object per product (JSON lines), then a summary object.")
    var json = false

    @OptionGroup var redisFlags: RedisFlags

    func validate() throws {
        if let company, company < 0 { throw ValidationError("--company must be a non-negative integer") }
        if (redisFlags.redis != nil) && company == nil {
            throw ValidationError("--redis needs --company: the platform's gift keys are per company")
        }
    }

    var rulesPath: String {
        rules
            ?? GiftRules.path(
                default: ProcessInfo.processInfo.environment["EWALL_GIFT_RULES"] ?? "data/gift_rules.json",
                company: company)
    }

    func run() async throws {
        bootstrapLogging()
        var giftRules: GiftRules
        do { giftRules = try GiftRules.load(path: rulesPath) } catch let e as ClassifierError { throw fail(e) }
        // With Redis: the company's rules and registered list from the platform's keys when present.
        var keys: GiftKeys?
        var redisMaster: [String] = []
        if let redis = try redisFlags.configuration(), let company {
            let k = GiftKeys(
                client: RedisClient(location: redis.location, timeout: redis.timeout), companyID: company)
            let book = GiftRuleBook(giftRules)
            if let note = await k.loadRules(into: book) {
                if book.current.sha256 == giftRules.sha256 { warn(note) } else if !json { print(note) }
            }
            giftRules = book.current
            redisMaster = await k.master() ?? []
            let gone = await k.invalidateStale(rules: giftRules)
            if gone > 0 && !json { print("rules changed: \(gone) results made with other rules removed from Redis") }
            keys = k
        }
        let store = try await database.open()
        defer { Task { await store.close() } }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        do {
            var key: ModelKey?
            let master = master + redisMaster
            if !(giftRules.master + master).isEmpty {
                key = try? await store.resolveKey(modelID: modelId, preprocessing: preprocess).key
                if key == nil { warn("no single model key in the store: the image step does not run") }
            }
            let detector = try await GiftDetector.open(store: store, rules: giftRules, key: key, master: master)
            var header = false
            let rulesInForce = giftRules
            let summary = try await detector.run(store: store, key: key, apply: apply) { page in
                if let keys {
                    let now = Date()
                    await keys.write(
                        page.map { r in
                            (
                                r.decision.productID ?? "",
                                GiftKeys.Entry(r.decision, price: r.price, rules: rulesInForce, at: now)
                            )
                        })
                }
                if json {
                    var out = Data()
                    for r in page { out += try encoder.encode(r) + Data("\n".utf8) }
                    FileHandle.standardOutput.write(out)
                    return
                }
                if !header {
                    print("product              answer   by          reason")
                    header = true
                }
                for r in page { print(Self.row(r)) }
            }
            if json {
                FileHandle.standardOutput.write(try encoder.encode(["summary": summary]) + Data("\n".utf8))
            } else {
                print(
                    "\n\(summary.products) products, \(summary.gifts) gifts (rules \(summary.rulesVersion), "
                        + "\(giftRules.source)) in \(String(format: "%.2f", summary.seconds)) s")
                print(
                    "  decided by: "
                        + GiftStep.allCases.map { "\($0.rawValue) \(summary.byStep[$0.rawValue, default: 0])" }
                        .joined(separator: ", "))
                print(
                    summary.applied
                        ? "  written to the store (gift_flags)" : "  dry run: nothing written; --apply writes")
                if let stats = keys?.stats {
                    print(
                        "  redis: \(stats.written) results written (TTL 4 h), \(stats.foreign) values not ours left alone, "
                            + "\(stats.invalidated) stale removed, \(stats.errors) errors")
                }
            }
        } catch let e as StoreError {
            throw fail(e)
        } catch let e as ClassifierError {
            throw fail(e)
        }
    }

    static func row(_ r: GiftReport) -> String {
        func pad(_ s: String, _ n: Int) -> String {
            s.count >= n ? String(s.prefix(n - 1)) + " " : s.padding(toLength: n, withPad: " ", startingAt: 0)
        }
        return pad(r.productID ?? "?", 21) + pad(r.productType, 9) + pad(r.decidedBy, 12) + r.classificationReason
            + "  [" + r.explanation + "]"
    }
}
