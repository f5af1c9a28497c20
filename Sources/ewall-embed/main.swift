import ArgumentParser
import EwallCLI
import EwallML
import Foundation
import Logging

/// `ewall-embed`: the batch job. Parses flags into configuration, opens the store and the
/// model, runs ``EmbeddingJob``, shows progress and a summary. All work is in EwallML.
@main
struct EwallEmbed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ewall-embed",
        abstract: "Embed the product images of a manifest into the embedding store, losing nothing.",
        discussion: """
            MANIFEST: CSV or TSV with a header, or JSON Lines, with product_id and image_url \
            (http://, https://, file:// or a path, relative to the manifest's folder), and optional \
            title, category, in_stock, brand, price. Bad rows are reported with their line number.

            A rerun skips items already embedded with the same URL, model id and preprocessing, \
            and items that failed before (--retry-failed retries those that failed for transient \
            reasons: timeout, connection, 5xx, 429; --force redoes everything). Each batch is one \
            transaction: a job killed at any moment loses only its items in flight, and a rerun \
            completes it. SIGINT/SIGTERM finish and write the current batch, then exit.

            Rows are checked as they are read: ids, URLs and titles must be valid UTF-8 without \
            control characters (NUL, tab, newline...), ids at most --max-id-bytes and URLs at most \
            --max-url-bytes long. A row that breaks a rule is a bad row with its line number and the \
            reason; nothing is truncated or replaced.

            A store that stops answering mid-job (PostgreSQL restarting, unreachable, SQLite locked) \
            is waited for up to --store-wait seconds, the progress line saying why; then the job \
            stops. On every systemic error the summary (and --json) is still printed, with what was \
            committed and an "error" {code, message}.

            Exit status: 0 every row is embedded (now or before); 1 some rows failed (this run, \
            or earlier and not retried) or were bad; 2 systemic error (manifest unreadable, model, \
            store: the reason on stderr and in the summary); 130/143 stopped by SIGINT/SIGTERM after writing the current batch.

            With --redis (or $EWALL_REDIS), image bytes already embedded under this model anywhere \
            are taken from the Redis embedding cache, every new vector fills it, each stored product's \
            vector is written to product_embedding:{id}, the per-host limit and hosts' 429 pauses hold \
            across every worker on every machine, and a --job worker mirrors the job's status under \
            batch:status:{job}, batch:history:{job} and batch:lock:{job}. Redis down or slow changes \
            nothing but the cache hits (counted in the summary).

            A model whose card says pretrained: false (the random-init model that `make model` \
            makes offline) produces vectors that carry no meaning.
            """)

    @Option(name: .long, help: "The manifest (CSV, TSV or JSON Lines).")
    var manifest: String?

    @Option(
        name: .long,
        help: ArgumentHelp(
            "A shared job in the PostgreSQL store: with --manifest, submit it; with --worker, work on it.",
            discussion: "Any number of workers on any number of machines share one job; each item is done once. "
                + "The name is printable text: not empty, no control or invisible format characters, no leading or "
                + "trailing space, at most \(InputRules.maxJobNameBytes) UTF-8 bytes."))
    var job: String?

    @Flag(name: .long, help: "Claim chunks of --job and embed them until the job is done (or cancelled).")
    var worker = false

    @Flag(
        name: .long,
        help: """
            With --worker: when the job has nothing left, wait for its next run instead of exiting (and for a job \
            not submitted yet); stop on SIGTERM/SIGINT. For ewall sync --job, whose rounds are runs of the job.
            """)
    var follow = false

    @Option(name: .long, help: "Items per chunk, the unit a worker claims (with --job and --manifest).")
    var chunkSize: Int = 256

    @Option(
        name: .long,
        help: "Seconds a claimed chunk stays ours without renewal (a dead worker's chunks go to others after this).")
    var leaseSeconds: Double = 60

    @Option(name: .long, help: "Seconds between lease renewals while working (every commit renews too).")
    var heartbeatSeconds: Double = 15

    @Option(name: .long, help: "This worker's name in `ewall job status` (default host:pid).")
    var workerName: String?

    @OptionGroup var database: DatabaseFlags
    @OptionGroup var modelFlags: ModelFlags
    @OptionGroup var imageFlags: ImageFlags
    @OptionGroup var input: InputFlags
    @OptionGroup var redisFlags: RedisFlags

    @Option(name: .long, help: "Fetches in flight over all hosts.")
    var concurrency: Int = 32

    @Option(name: .long, help: "Fetches in flight per host (CDNs answer 429 when hammered).")
    var perHost: Int = 8

    @Option(name: .long, help: "Seconds for one whole HTTP attempt (connect, headers, body).")
    var timeout: Double = 30

    @Option(name: .long, help: "Seconds to establish a connection.")
    var connectTimeout: Double = 5

    @Option(
        name: .long, help: "Seconds one item may take in all, retries included (a stalled host cannot hold the job).")
    var itemDeadline: Double = 60

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Seconds to wait for a store that stopped answering before giving up (exit 2).",
            discussion: "While it waits, the progress line says so and why; what was committed stays committed."))
    var storeWait: Double = 60

    @Option(name: .long, help: "Retries after the first attempt, for timeouts, connection errors, 5xx and 429.")
    var retries: Int = 3

    @Option(
        name: .long,
        help: "Write every failure as JSON Lines (product_id, image_url, class, message, http_status, attempts).")
    var failures: String?

    @Flag(name: .long, help: "Retry items whose last failure was transient (timeout, connection, 5xx, 429).")
    var retryFailed = false

    @Flag(name: .long, help: "Redo every item, even those embedded before.")
    var force = false

    @Flag(name: .long, help: "Print the summary as one JSON object on stdout.")
    var json = false

    @Option(name: .long, help: "Seconds between progress updates (default 0.5 on a terminal, 5 otherwise).")
    var progressInterval: Double?

    func validate() throws {
        if job == nil {
            guard manifest != nil else { throw ValidationError("give --manifest FILE (or --job NAME --worker)") }
            guard !worker else { throw ValidationError("--worker needs --job NAME") }
        }
        if follow && !worker { throw ValidationError("--follow goes with --job NAME --worker") }
        if job != nil {
            guard manifest != nil || worker else {
                throw ValidationError("--job needs --manifest (submit), --worker (work), or both")
            }
        }
        if let job, let problem = InputRules.jobNameProblem(job) { throw ValidationError("--job: \(problem)") }
        guard chunkSize >= 1 && chunkSize <= 100_000 else { throw ValidationError("--chunk-size must be 1...100000") }
        guard leaseSeconds >= 2, heartbeatSeconds > 0, heartbeatSeconds < leaseSeconds else {
            throw ValidationError(
                "--lease-seconds must be at least 2 and --heartbeat-seconds positive and shorter than the lease")
        }
        guard concurrency >= 1 else { throw ValidationError("--concurrency must be at least 1") }
        guard perHost >= 1 else { throw ValidationError("--per-host must be at least 1") }
        guard timeout > 0, connectTimeout > 0, itemDeadline > 0 else {
            throw ValidationError("timeouts must be positive")
        }
        guard retries >= 0 else { throw ValidationError("--retries must be 0 or more") }
        guard storeWait >= 0 else { throw ValidationError("--store-wait must be 0 or more") }
    }

    /// Up to 2,000 of the store's fp32 vectors of this model, for `--precision auto`'s
    /// neighbour overlap among the store's vectors (none when the store has none yet).
    static func guardSample(_ store: any EmbeddingStore, _ c: EmbedderConfiguration) async -> [[Float]] {
        guard let card = try? ModelCard.load(forModel: c.model.path) else { return [] }
        let key = ModelKey(modelID: card.modelID, preprocessing: c.preprocessing.rawValue)
        return ((try? await store.embeddings(key: key, after: nil, limit: 2_000)) ?? []).map(\.embedding.vector)
    }

    func run() async throws {
        bootstrapLogging()
        let logger = Logger(label: "ewall-embed")
        if let manifest, !FileManager.default.isReadableFile(atPath: manifest) {
            throw fail("cannot read the manifest \(manifest)")
        }
        let store = try await database.open()
        let embedder: ImageEmbedder
        do {
            // --streams, else as many as keep the cores busy (docs/precision.md, "Model streams").
            var configuration = imageFlags.configuration(
                model: modelFlags.options(), streams: modelFlags.streams, modelFlags: modelFlags)
            if configuration.model.precision == .auto {
                configuration.guardStoreVectors = await Self.guardSample(store, configuration)
            }
            embedder = try ImageEmbedder(configuration: configuration, logger: logger)
        } catch {
            await store.close()
            throw fail(error.message)
        }
        let fetch = FetchConfiguration(
            perHostLimit: perHost, connectTimeout: .milliseconds(Int(connectTimeout * 1000)),
            requestTimeout: .milliseconds(Int(timeout * 1000)), maxAttempts: retries + 1, maxBytes: imageFlags.maxBytes,
            itemDeadline: .milliseconds(Int(itemDeadline * 1000)))
        var jobConfiguration = EmbeddingJobConfiguration(
            manifestPath: manifest ?? "", fetch: fetch, concurrency: concurrency,
            retryFailed: retryFailed, force: force)
        jobConfiguration.inputRules = input.rules
        jobConfiguration.redis = try redisFlags.configuration()
        jobConfiguration.storeWaitLimit = .milliseconds(Int(storeWait * 1000))
        if manifest == nil { jobConfiguration.fetch.baseDirectory = nil }

        let failureLog: FailureLog?
        do { failureLog = try failures.map { try FailureLog(path: $0) } } catch {
            await store.close()
            throw fail("cannot write \(failures!): \(error.localizedDescription)")
        }
        defer { failureLog?.close() }

        guard let jobName = job else {
            let job = EmbeddingJob(configuration: jobConfiguration, embedder: embedder, store: store, logger: logger)
            try await work(label: nil, stop: { job.stop() }, store: store, failureLog: failureLog) {
                interval, progress, failure in
                try await job.run(progressInterval: interval, onProgress: progress, onFailure: failure)
            }
            return
        }

        // A shared job: submit, work, or both.
        var shared = SharedJobConfiguration()
        shared.chunkSize = chunkSize
        shared.lease = .milliseconds(Int(leaseSeconds * 1000))
        shared.heartbeat = .milliseconds(Int(heartbeatSeconds * 1000))
        shared.follow = follow
        let queue: PostgresJobQueue
        do { queue = try await PostgresJobQueue.over(store) } catch {
            await store.close()
            throw fail("\(error)")
        }
        let name = workerName ?? JobWorker.defaultName
        if manifest != nil {
            do {
                let key = ModelKey(modelID: embedder.modelID, preprocessing: embedder.preprocessingID)
                let submitted = try await JobSubmission.submit(
                    name: jobName, job: jobConfiguration, shared: shared, key: key, queue: queue, submittedBy: name,
                    onFailure: { f in failureLog?.write(f) }, logger: logger)
                printSubmission(submitted, worker: worker)
            } catch {
                await store.close()
                throw fail(Self.message(error))
            }
            if !worker {
                await store.close()
                return
            }
        }
        let w = JobWorker(
            job: jobName, name: name, queue: queue, embedder: embedder, configuration: jobConfiguration,
            shared: shared, logger: logger)
        try await work(label: "job \(jobName) worker \(name)", stop: { w.stop() }, store: store, failureLog: failureLog)
        { interval, progress, failure in
            try await w.run(progressInterval: interval, onProgress: progress, onFailure: failure)
        }
    }

    static func message(_ error: any Error) -> String {
        (error as? StoreError)?.message ?? (error as? ManifestError)?.message ?? (error as? JobQueueError)?.message
            ?? "\(error)"
    }

    /// Runs a job or a worker with progress, signals and the summary; exits as documented.
    private func work(
        label: String?, stop: @escaping @Sendable () -> Void, store: any EmbeddingStore, failureLog: FailureLog?,
        _ body: (Double, @escaping @Sendable (JobProgress) -> Void, @escaping @Sendable (JobFailure) -> Void)
            async throws -> JobSummary
    ) async throws {
        let signals = SignalHandler { signal in
            stop()
            FileHandle.standardError.write(
                Data(
                    "\newall-embed: \(signal == SIGINT ? "SIGINT" : "SIGTERM"): finishing the current batch; again to abort\n"
                        .utf8))
        }
        let display = ProgressDisplay(terminal: isatty(STDERR_FILENO) != 0, label: label)
        let summary: JobSummary
        do {
            summary = try await body(
                progressInterval ?? (display.terminal ? 0.5 : 5), { display.show($0) },
                { f in failureLog?.write(f) })
        } catch let aborted as JobAborted {
            // A systemic error after work began: the summary of what was committed, then the reason.
            display.finish()
            await store.close()
            try printSummary(aborted.summary)
            throw fail(aborted.failure.message)
        } catch {
            display.finish()
            await store.close()
            throw fail(Self.message(error))
        }
        display.finish()
        await store.close()
        try printSummary(summary)
        if let signal = signals.received { throw ExitCode(ExitCodes.interrupted(by: signal)) }
        let c = summary.counts
        if c.failed + c.skippedFailed + c.badRows > 0 { throw ExitCode(ExitCodes.someFailed) }
    }

    private func printSubmission(_ r: JobSubmission.Result, worker: Bool) {
        if json && !worker {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            if let data = try? enc.encode(r) { FileHandle.standardOutput.write(data + Data("\n".utf8)) }
            return
        }
        let c = r.counts
        let text = """
            ewall-embed: submitted job '\(r.job)' (run \(r.runID)) from \(r.manifest) [sha256 \(r.manifestSHA256.prefix(12))]
              model \(r.modelID) (\(r.preprocessing)); rows \(c.rows): queued \(c.queued) in \(r.chunks) chunks, \
            skipped \(c.skipped) (already embedded), failed earlier and not retried \(c.skippedFailed), bad rows \(c.badRows), \
            duplicates \(c.duplicates)
              workers: ewall-embed --db ... --job \(r.job) --worker   (any number, any machines); watch: ewall job status \(r.job)

            """
        FileHandle.standardError.write(Data(text.utf8))
    }

    private func printSummary(_ summary: JobSummary) throws {
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
            FileHandle.standardOutput.write(try enc.encode(summary) + Data("\n".utf8))
        } else {
            print(SummaryText.render(summary, failuresPath: failures))
        }
    }
}
