import ArgumentParser
import EwallCLI
import EwallML
import Foundation
import Logging

/// `ewall sync`: follows the platform's product table into the store, until SIGTERM or SIGINT.
struct Sync: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Follow the platform's product table (PostgreSQL logical decoding) into the store.",
        discussion: """
            Runs until SIGTERM or SIGINT. The first run creates a publication of the mapped columns and a \
            replication slot of its own, copies the table as of the slot's snapshot, then applies every \
            committed change in commit order: attribute changes (stock, category, title, brand, price, listed) \
            without any index work, deletes, and new products or new image URLs, which it embeds (in this \
            process, as ewall-embed would; with --job on a PostgreSQL store, as runs of that shared job for \
            ewall-embed --job NAME --worker --follow on any machine). Every ewall-serve over the same --db \
            follows the store's change \
            feed by itself. The source needs wal_level = logical and a role with REPLICATION \
            (docs/sync.md says what a DBA grants); a refusal names what is missing and how to fix it. \
            Exit status: 0 stopped cleanly (what was applied is confirmed to the slot), 2 the source or the \
            store failed, 64 bad flags or a source that cannot be followed as configured.
            """)

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The platform's database: postgres://user:password@host:port/db.",
            discussion: "Default: $EWALL_SYNC_SOURCE."))
    var source: String?

    @Option(name: .long, help: "The product table, SCHEMA.NAME (NAME alone: public.NAME).")
    var table: String

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Source columns for our fields, field=column,... (field= drops an optional one).",
            discussion:
                "Fields: product_id, title, brand, category, price, in_stock, image_url, listed. Defaults: id, title, brand, category, price, in_stock, image_url; listed (an active/visible flag) only when mapped."
        ))
    var map: String?

    @Option(name: .long, help: "The mapping as a JSON object {\"field\": \"column\", ...} (over the defaults).")
    var mapFile: String?

    @Option(
        name: .customLong("where"),
        help: "A row filter over the mapped columns (SQL, e.g. \"is_active\"): only matching rows are followed.")
    var filter: String?

    @Option(name: .long, help: "The replication slot and publication name (default ewall_SCHEMA_TABLE).")
    var slot: String?

    @Flag(name: .long, help: "Print where the sync stands (positions, slot, lag) and exit.")
    var status = false

    @Flag(
        name: .long,
        help: ArgumentHelp(
            "Compare the source with the store in one pass, print every difference and exit.",
            discussion: "Exit 0: none; 1: there are some (--apply repairs them); 2: an error."))
    var reconcile = false

    @Flag(name: .long, help: "With --reconcile: repair the differences in the store (replicas follow).")
    var apply = false

    @Flag(name: .long, help: "With --status or --reconcile: JSON (one object; one line per difference).")
    var json = false

    @Option(name: .long, help: "With --status: exit 1 when the slot holds more WAL than this many MiB.")
    var lagWarningMib: Int = 1024

    @Flag(name: .long, help: "Store attribute changes only; embed nothing (another process embeds).")
    var noEmbed = false

    @Option(
        name: .long,
        help: """
            With a PostgreSQL --db: hand new images to this shared job's workers (ewall-embed --db ... --job NAME \
            --worker --follow, on any machine) instead of embedding them here; each round is a run of it.
            """)
    var job: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "An index folder to compact: rebuilt in the background when it drifts from the feed.",
            discussion:
                "Drift: products with a new vector plus deleted ones, as a share of the index (--compact-at). The build is rebuild-faiss-index --incremental's, published atomically; servers watching the folder reload it."
        ))
    var index: String?

    @Option(name: .long, help: "With --index: the drift that starts a build (0.2: 20% of the index).")
    var compactAt: Double = 0.2

    @Option(
        name: .long,
        help: ArgumentHelp(
            "The gift rules each arriving row is checked with; its flag is stored before the row.",
            discussion:
                "Default: $EWALL_GIFT_RULES, then data/gift_rules.json when it exists. The rule steps run here (registered list, zero price, words); the picture step needs vectors: ewall gifts --apply runs it. Replicas leave a flagged product out of similar products as soon as they see its row (docs/gifts.md)."
        ))
    var giftRules: String?

    @Flag(name: .long, help: "Store no gift flags (another process runs ewall gifts --apply).")
    var noGifts = false

    @OptionGroup var database: DatabaseFlags
    @OptionGroup var modelFlags: ModelFlags
    @OptionGroup var imageFlags: ImageFlags
    @OptionGroup var input: InputFlags
    @OptionGroup var redisFlags: RedisFlags

    @Option(name: .long, help: "Fetches in flight per host.")
    var perHost: Int = 8

    @Option(name: .long, help: "Seconds for one whole HTTP attempt.")
    var timeout: Double = 30

    func validate() throws {
        guard resolvedSource != nil else {
            throw ValidationError("give --source postgres://... (or set EWALL_SYNC_SOURCE)")
        }
        if map != nil && mapFile != nil { throw ValidationError("give --map or --map-file, not both") }
        if apply && !reconcile { throw ValidationError("--apply goes with --reconcile") }
        if noGifts && giftRules != nil { throw ValidationError("give --gift-rules or --no-gifts, not both") }
        guard compactAt > 0 && compactAt <= 1 else { throw ValidationError("--compact-at must be in (0, 1]") }
        if status && reconcile { throw ValidationError("give --status or --reconcile, not both") }
        guard lagWarningMib >= 1 else { throw ValidationError("--lag-warning-mib must be at least 1") }
        if let job {
            if noEmbed { throw ValidationError("give --job or --no-embed, not both") }
            if let problem = InputRules.jobNameProblem(job) { throw ValidationError("--job: \(problem)") }
        }
    }

    var resolvedSource: String? { source ?? ProcessInfo.processInfo.environment["EWALL_SYNC_SOURCE"] }

    func syncConfiguration() throws -> SyncConfiguration {
        var c: SyncConfiguration
        do throws(SyncError) {
            let columns: ColumnMap
            if let mapFile { columns = try ColumnMap(file: mapFile) } else { columns = try ColumnMap(parsing: map) }
            c = SyncConfiguration(
                source: resolvedSource!, table: try SourceTable(parsing: table), map: columns, filter: filter,
                slot: slot)
        } catch {
            throw fail(error)
        }
        c.gifts = try giftDetector()
        return c
    }

    /// The gift detector of --gift-rules (or the default file, when it exists); nil with --no-gifts.
    func giftDetector() throws -> GiftDetector? {
        if noGifts { return nil }
        let path = giftRules ?? ProcessInfo.processInfo.environment["EWALL_GIFT_RULES"] ?? "data/gift_rules.json"
        if giftRules == nil && !FileManager.default.fileExists(atPath: path) { return nil }
        do { return try GiftDetector(rules: try GiftRules.load(path: path)) } catch let e as ClassifierError {
            throw fail(e)
        }
    }

    func run() async throws {
        bootstrapLogging()
        let logger = Logger(label: "ewall-sync")
        let configuration = try syncConfiguration()
        let opened = try await database.open()
        guard let store = opened as? any CatalogueStore else {
            await opened.close()
            throw fail("\(opened.displayName) cannot hold a live catalogue")
        }
        defer { Task { await store.close() } }
        if status {
            let s: SyncStatus
            do { s = try await CatalogueSync.status(configuration, store: store) } catch let e as SyncError {
                throw fail(e)
            }
            print(json ? Self.json(s) : Self.text(s))
            if let bytes = s.lagBytes, bytes > Int64(lagWarningMib) * 1_048_576 {
                FileHandle.standardError.write(
                    Data(
                        "ewall: warning: slot \(s.name) holds \(bytes / 1_048_576) MiB of WAL (over --lag-warning-mib \(lagWarningMib))\n"
                            .utf8))
                throw ExitCode(1)
            }
            return
        }
        if reconcile {
            let differences: [SyncDifference]
            do { differences = try await CatalogueSync.reconcile(configuration, store: store, apply: apply) } catch let
                e as any EwallFailure
            {
                throw fail(e)
            }
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            for d in differences {
                if json {
                    print(String(decoding: (try? encoder.encode(d)) ?? Data(), as: UTF8.self))
                } else {
                    print(
                        "\(d.kind.rawValue)\t\(InputRules.escaped(d.productID))"
                            + (d.fields.isEmpty ? "" : "\t" + d.fields.joined(separator: ",")))
                }
            }
            FileHandle.standardError.write(
                Data(
                    "ewall sync --reconcile: \(differences.count) differences\(apply && !differences.isEmpty ? ", repaired" : "")\n"
                        .utf8))
            if !differences.isEmpty { throw ExitCode(1) }
            return
        }
        var made: SyncEmbedder?
        if !noEmbed {
            do {
                let image = try ImageEmbedder(
                    configuration: imageFlags.configuration(
                        model: modelFlags.options(), streams: modelFlags.streams, modelFlags: modelFlags),
                    logger: logger)
                let fetch = FetchConfiguration(
                    perHostLimit: perHost, requestTimeout: .milliseconds(Int(timeout * 1000)),
                    maxBytes: imageFlags.maxBytes)
                var template = EmbeddingJobConfiguration(manifestPath: "", fetch: fetch)
                template.fetch.baseDirectory = nil
                template.inputRules = input.rules
                template.redis = try redisFlags.configuration()
                var shared: SyncJob?
                if let job {
                    do { shared = SyncJob(name: job, queue: try await PostgresJobQueue.over(store)) } catch let
                        e as JobQueueError
                    {
                        throw fail(e)
                    }
                }
                made = SyncEmbedder(embedder: image, store: store, template: template, job: shared, logger: logger)
            } catch let e as InferenceError {
                throw fail(e)
            }
        }
        let embedder = made
        // The platform's product_embedding:{id} follows deletes and unlistings (new vectors are
        // written through by the embedding job, as ewall-embed's are).
        var productKeys: EmbeddingCache?
        if let r = try redisFlags.configuration(), let embedder {
            productKeys = EmbeddingCache(
                client: RedisClient(location: r.location, timeout: r.timeout, connections: 1, logger: logger),
                key: embedder.key, dimension: embedder.dimension, ttl: r.cacheTTL)
        }
        let cache = productKeys
        let sync = CatalogueSync(
            configuration: configuration, store: store, logger: logger,
            onRowsRemoved: { ids in await cache?.writeProducts(current: [], replaced: ids) }
        ) { rows in
            embedder?.enqueue(rows)
        }
        let compaction = index.map {
            Compaction(
                folder: IndexFolder(path: $0), share: compactAt, store: store, key: embedder?.key, logger: logger)
        }
        let signals = SignalHandler { _ in
            sync.stop()
            embedder?.stop()
        }
        FileHandle.standardError.write(
            Data(
                "ewall sync: following \(configuration.table) into \(store.displayName) (slot \(configuration.slot))\n"
                    .utf8))
        do {
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await sync.run() }
                if let embedder { group.addTask { try await embedder.run() } }
                if let compaction {
                    group.addTask {
                        while !Task.isCancelled {
                            await compaction.check()
                            try? await Task.sleep(for: .seconds(5))
                        }
                    }
                }
                // The first to end (the sync stopped or failed) ends the others.
                do { try await group.next() } catch {
                    sync.stop()
                    embedder?.stop()
                    throw error
                }
                sync.stop()
                embedder?.stop()
                group.cancelAll()
                try await group.waitForAll()
            }
        } catch let e as any EwallFailure {
            throw fail(e)
        }
        let p = sync.progress
        FileHandle.standardError.write(
            Data(
                "ewall sync: stopped\(signals.received.map { " on signal \($0)" } ?? ""): \(p.transactions) transactions, \(p.changes) changes applied up to \(p.position)\n"
                    .utf8))
    }

    static func text(_ s: SyncStatus) -> String {
        var lines = ["sync \(s.name): \(s.source)"]
        lines.append(
            "  applied      \(s.appliedPosition ?? "nothing yet")"
                + (s.appliedCommitTime.map { " (committed \($0.ISO8601Format()))" } ?? ""))
        if s.slotExists {
            lines.append(
                "  slot         \(s.slotActive ? "streaming" : "idle"), WAL \(s.walStatus ?? "?"), confirmed \(s.confirmedPosition ?? "?")"
            )
            lines.append(
                "  lag          \(s.lagBytes.map { "\($0) bytes" } ?? "?")"
                    + (s.lagSeconds.map { String(format: ", %.1f s", $0) } ?? ""))
        } else {
            lines.append("  slot         missing: the next ewall sync creates it and takes a fresh snapshot")
        }
        lines.append("  change feed  \(s.lastChangeSeq) entries")
        return lines.joined(separator: "\n")
    }

    static func json(_ s: SyncStatus) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return String(decoding: (try? encoder.encode(s)) ?? Data(), as: UTF8.self)
    }
}
