import ArgumentParser
import EwallCLI
import EwallML
import EwallServer
import Foundation
import Logging
import Prometheus
import UnixSignals

/// `ewall-serve`: the reference HTTP server over EwallML (thin: flags -> configuration -> run).
@main
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ewall-serve",
        abstract: "HTTP API: similar products, category classification and image embeddings.",
        discussion: """
            Routes: GET /api/recommendations/similar/{product_id}?k=&min_similarity=&any_category=&include_out_of_stock=, \
            POST /api/recommendations/similar, POST /api/recommendations/classify, POST /api/embeddings, \
            GET /healthz, /readyz, /metrics (Prometheus), /openapi.json; POST /admin/reload-index from loopback only.

            Image URLs from callers are fetched only if every address their host resolves to is public: \
            loopback, private, link-local (169.254.169.254), multicast and reserved addresses and non-http(s) \
            schemes are refused, on every redirect hop. --allow-host opens one host (an internal CDN).

            The index is reloaded and swapped in atomically on SIGHUP, on POST /admin/reload-index, and when \
            the index folder changes (checked every --watch-seconds). SIGTERM/SIGINT stop accepting, finish \
            requests in flight and queued embeds, then exit.

            Concurrent embeds are coalesced into batches of up to --batch-size images, waiting at most \
            --max-batch-wait-ms for company when the model is idle.

            Connections: a client has --header-timeout seconds to send a whole request head, from \
            connecting and from the first byte of each later request (a head sent a byte at a time is \
            cut off too); a connection with nothing to read is closed after --idle-timeout seconds; beyond \
            --max-connections open connections, new ones are closed on arrival and counted in \
            ewall_http_connections_refused_total. Keep --max-connections below the open-file limit \
            (ulimit -n). Path ids are percent-decoded (an id with a / is sent as %2F); a method a path \
            does not serve answers 405 with Allow.

            With --redis (or $EWALL_REDIS), image queries (by URL or bytes) look up the embedding \
            cache first (key: model, preprocessing and sha256 of the image bytes) and fill it after a \
            forward pass, so replicas share one another's work; hits, misses, errors and lookup \
            latency are on /metrics. Redis down or slow is a miss and a metric, never an error.

            With the random-init model `make model` makes offline, every vector, neighbour and embedding \
            score is meaningless; responses carry a "warning" saying so.
            """)

    @Option(name: .long, help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(name: .long, help: "Port to listen on (0: any free port, printed).")
    var port = 8080

    @OptionGroup var database: DatabaseFlags

    @Option(name: .long, help: ArgumentHelp("The index folder.", discussion: "Default: $EWALL_INDEX, then data/faiss."))
    var index: String?

    @OptionGroup var modelFlags: ModelFlags
    @OptionGroup var redisFlags: RedisFlags

    @Option(name: .long, help: "Preprocessing the store's vectors were made with.")
    var preprocess: PreprocessingMode = .squash224

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Keyword rules for the classifier.", discussion: "Default: $EWALL_RULES, then data/category_rules.json."))
    var rules: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Gift rules: gifts and samples are answered `gift` by classify and decided by /api/gifts/check.",
            discussion: "Default: $EWALL_GIFT_RULES, then data/gift_rules.json."))
    var giftRules: String?

    @Option(
        name: .customLong("allow-host"),
        help: "A host whose image URLs may be fetched whatever it resolves to (repeatable).")
    var allowHosts: [String] = []

    @Option(name: .long, help: "Longest wait for a batch to fill when the model is idle, in milliseconds.")
    var maxBatchWaitMs = 5

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Similar-products batches searched at once, a thread each.",
            discussion:
                "Default: the cores, at most 4. Above 1, OpenBLAS runs each search's coarse pass on that search's own thread."
        ))
    var searchThreads = EwallConfiguration.defaultSearchThreads

    @Option(name: .long, help: "Images waiting for the model beyond which embeds answer 503 overloaded.")
    var maxQueue = 256

    @Option(name: .long, help: "Largest request body in bytes (413 above).")
    var maxBodyBytes = 16 << 20

    @Option(name: .long, help: "Largest image in bytes, uploaded or fetched (422 above).")
    var maxImageBytes = 10 << 20

    @Option(name: .long, help: "Largest image in pixels, from its header (422 above).")
    var maxPixels = 40_000_000

    @Option(name: .long, help: "Seconds a request may take (503 timeout after).")
    var requestTimeout = 30.0

    @Option(name: .long, help: "API requests in progress beyond which new ones answer 503 overloaded.")
    var maxInFlight = 512

    @Option(
        name: .long,
        help:
            "Seconds a client has to send a whole request head, from connecting or from the request's first byte; then the connection is closed."
    )
    var headerTimeout = ServerConfiguration.defaultHeaderTimeout.inSeconds

    @Option(
        name: .long,
        help:
            "Seconds a connection may sit with nothing to read (between keep-alive requests, or in a stalled body) before it is closed."
    )
    var idleTimeout = ServerConfiguration.defaultIdleTimeout.inSeconds

    @Option(name: .long, help: "Open connections beyond which new ones are closed on arrival (keep below ulimit -n).")
    var maxConnections = ServerConfiguration.defaultMaxConnections

    @Option(name: .long, help: "Seconds between checks of the index folder for a new index (0: no watch).")
    var watchSeconds = 2.0

    @Flag(name: .long, help: "Do not serve POST /admin/reload-index.")
    var noAdmin = false

    @Flag(
        name: .long,
        help: ArgumentHelp(
            "Map the index's IVF lists from its file instead of loading them.",
            discussion:
                "The kernel pages lists in as searches touch them: an index larger than RAM can serve, cold lists cost disk reads. Compressed kinds' exact vectors (vectors.f32) are always mapped."
        ))
    var mmapIndex = false

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535") }
        guard maxBatchWaitMs >= 0 && maxBatchWaitMs <= 1000 else {
            throw ValidationError("--max-batch-wait-ms must be 0...1000")
        }
        guard maxQueue >= 1, maxBodyBytes >= 1024, maxImageBytes >= 1024, maxPixels >= 1, maxInFlight >= 1 else {
            throw ValidationError("limits must be positive (body and image bytes at least 1024)")
        }
        guard requestTimeout > 0, watchSeconds >= 0, headerTimeout > 0, idleTimeout > 0 else {
            throw ValidationError("times must be positive")
        }
        guard maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1") }
        guard searchThreads >= 1 else { throw ValidationError("--search-threads must be at least 1") }
    }

    func run() async throws {
        BLASCore.selectAtStartup() // before any BLAS work: OpenBLAS's kernels for this CPU (see BLASCore)
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel =
                ProcessInfo.processInfo.environment["LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0) } ?? .info
            return h
        }
        let logger = Logger(label: "ewall-serve")
        let model = modelFlags.options()
        var config = EwallConfiguration(
            modelPath: model.path, storeURL: database.resolvedDB,
            indexPath: index ?? ProcessInfo.processInfo.environment["EWALL_INDEX"] ?? "data/faiss",
            rulesPath: rules ?? ProcessInfo.processInfo.environment["EWALL_RULES"] ?? "data/category_rules.json",
            preprocessing: preprocess, precision: model.precision, threads: model.threads,
            urlPolicy: AddressPolicy(allowHosts: allowHosts),
            indexWatchInterval: watchSeconds > 0 ? .milliseconds(Int(watchSeconds * 1000)) : nil)
        config.giftRulesPath =
            giftRules ?? ProcessInfo.processInfo.environment["EWALL_GIFT_RULES"] ?? "data/gift_rules.json"
        config.redis = try redisFlags.configuration()
        config.device = model.device
        config.streams = model.streams
        config.precisionCachePath = model.precisionCachePath
        config.calibration = modelFlags.calibration
        config.precisionGuard = modelFlags.precisionGuard
        config.searchThreads = searchThreads
        config.indexMemoryMapped = mmapIndex
        config.limits = .init(
            maxImageBytes: maxImageBytes, maxImagePixels: maxPixels, maxBatchSize: model.batchSize,
            maxBatchWait: .milliseconds(maxBatchWaitMs), maxQueuedImages: maxQueue)
        let registry = PrometheusCollectorRegistry()
        let service: EwallService
        do {
            service = try await EwallService(
                configuration: config, logger: logger,
                metrics: PrometheusMetricsFactory.forEwall(registry: registry))
        } catch {
            throw fail("\(error.code): \(error.message)")
        }
        if let warning = service.modelWarning { logger.warning("\(warning)") }
        let server = ServerConfiguration(
            host: host, port: port, maxBodyBytes: maxBodyBytes,
            requestTimeout: .milliseconds(Int(requestTimeout * 1000)),
            maxInFlight: maxInFlight, adminRoutes: !noAdmin,
            headerTimeout: .milliseconds(Int(headerTimeout * 1000)),
            idleTimeout: .milliseconds(Int(idleTimeout * 1000)), maxConnections: maxConnections)
        if let files = Self.openFileLimit(), maxConnections + Self.reservedFiles > files {
            logger.warning(
                """
                --max-connections \(maxConnections) is above the open-file limit \(files) less \(Self.reservedFiles) for \
                the store, model and index: the process can run out of file descriptors before the cap applies; \
                raise ulimit -n or lower --max-connections
                """)
        }
        let (host, port) = (self.host, self.port)
        let app = EwallHTTPServer.application(
            service: service, configuration: server, registry: registry, logger: logger
        ) { address in
            // Tests and scripts read the port from this line (with --port 0).
            let shown = address.map { "\($0.ipAddress ?? host):\($0.port ?? port)" } ?? "\(host):\(port)"
            FileHandle.standardOutput.write(Data("ewall-serve: listening on http://\(shown)\n".utf8))
        }
        // SIGHUP: reload the index (rebuild-faiss-index has published a new one).
        let reloader = Task {
            for await _ in await UnixSignalsSequence(trapping: [.sighup]) {
                do throws(EwallError) {
                    let s = try await service.reloadIndex()
                    logger.info("SIGHUP: index reloaded (\(s.count) vectors, built \(s.builtAt ?? "?"))")
                } catch {
                    logger.error("SIGHUP: reload failed, the previous index stays: \(error.message)")
                }
            }
        }
        defer { reloader.cancel() }
        try await app.runService()
    }

    /// File descriptors kept for what is not a connection: the store, the model, the index,
    /// logs, the event loops' own.
    static let reservedFiles = 64

    /// The process's soft limit on open files, or `nil` where it cannot be read.
    static func openFileLimit() -> Int? {
        var limit = rlimit()
        #if os(Linux)
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return nil }
        #else
        guard getrlimit(RLIMIT_NOFILE, &limit) == 0 else { return nil }
        #endif
        return Int(clamping: limit.rlim_cur) // unlimited clamps to Int.max
    }
}
