import EwallCore
import EwallEmbedding
import EwallFetch
import EwallRedis
import EwallStore
import Foundation

/// One item (or manifest row) that did not become a vector, as written to `--failures`.
public struct JobFailure: Sendable, Codable, Hashable {
    /// Manifest line, when the failure is a bad row.
    public var line: Int?
    public var productID: String?
    public var imageURL: String?
    /// A ``FailureClass`` (or image/model error class) raw value.
    public var errorClass: String
    /// `manifest`, `fetch`, `decode`, `infer`.
    public var stage: String
    public var message: String
    public var httpStatus: Int?
    public var attempts: Int

    enum CodingKeys: String, CodingKey {
        case line, stage, message, attempts
        case productID = "product_id", imageURL = "image_url", errorClass = "class", httpStatus = "http_status"
    }
}

/// Counts while the job runs, and at its end.
public struct JobCounts: Sendable, Codable, Hashable {
    /// Manifest rows read (bad rows and duplicates included).
    public var rows = 0
    /// Vectors written by this run.
    public var embedded = 0
    /// Already embedded with the same URL, model and preprocessing.
    public var skipped = 0
    /// Failed in an earlier run and not retried (permanent class, or no `--retry-failed`).
    public var skippedFailed = 0
    /// Failed in this run.
    public var failed = 0
    /// Manifest rows that could not be used.
    public var badRows = 0
    /// Rows repeating an earlier row's product id and URL.
    public var duplicates = 0
    /// Of `embedded`: vectors taken from identical image bytes (sha256) embedded before under
    /// the same model key, by any product, job or worker, without a forward pass.
    public var reused = 0
    /// Items a shared job's worker processed but did not commit because its lease had been
    /// taken over by another worker (which does them): never written twice.
    public var refused = 0
    /// Images that decoded with a harmless decoder warning (junk before a JPEG marker, an
    /// unknown APPn segment...): embedded, and counted here.
    public var decoderWarnings = 0

    /// Items this run has finished with, one way or another.
    public var done: Int { embedded + skipped + skippedFailed + failed + badRows + duplicates }

    enum CodingKeys: String, CodingKey {
        case rows, embedded, skipped, failed, duplicates, reused, refused
        case skippedFailed = "skipped_failed", badRows = "bad_rows", decoderWarnings = "decoder_warnings"
    }
}

/// Busy seconds per stage, summed over the stage's workers.
public struct StageSeconds: Sendable, Codable, Hashable {
    public var fetch = 0.0
    public var decode = 0.0
    public var infer = 0.0
    public var write = 0.0
}

/// A snapshot for the progress display.
public struct JobProgress: Sendable {
    public var counts: JobCounts
    /// Data rows in the manifest, estimated from its line count.
    public var estimatedRows: Int?
    public var elapsed: Double
    /// Vectors per second over the run so far.
    public var imagesPerSecond: Double
    /// Seconds left at the current rate, when it can be estimated.
    public var eta: Double?
    /// Set while the store does not answer and the job waits for it: what is wrong, in the
    /// store's words, and how long the job has waited.
    public var storeProblem: StoreWait?
}

/// The job is waiting for its store to come back.
public struct StoreWait: Sendable, Hashable {
    /// The store's own words: "connection refused", "PostgreSQL refused: ...".
    public var reason: String
    /// Seconds since the store stopped answering.
    public var waited: Double
    /// Seconds the job waits in all before it gives up (exit 2).
    public var limit: Double
}

/// Why a job stopped before its end: the store, the manifest or the model failed as a whole.
public struct SystemicFailure: Sendable, Codable, Hashable {
    /// A stable code (`store_unavailable`, `store_full`, `manifest_unreadable`, ...).
    public var code: String
    /// What broke, in words a user can act on; never a password.
    public var message: String
}

/// Thrown by ``EmbeddingJob/run(progressInterval:onProgress:onFailure:)`` when the job stops
/// on a systemic error: carries what was done before it stopped (everything counted there is
/// committed), so the caller can print the summary as well as the reason.
public struct JobAborted: Error, Sendable, CustomStringConvertible {
    public var summary: JobSummary
    public var underlying: any Error
    public var failure: SystemicFailure { summary.error! }
    public var description: String { failure.message }
}

/// The end of a run, as printed and as `--json`.
public struct JobSummary: Sendable, Codable {
    public var manifest: String
    public var store: String
    public var modelID: String
    public var preprocessing: String
    public var precision: String
    /// Where the model ran: `cpu`, `cuda:0`, ...
    public var device: String = "cpu"
    /// The model card says `pretrained: false`: the vectors carry no meaning.
    public var randomInitModel: Bool
    public var counts: JobCounts
    /// Failures of this run by class.
    public var failuresByClass: [String: Int]
    /// Earlier failures skipped by this run, by class.
    public var skippedFailedByClass: [String: Int]
    public var seconds: Double
    public var imagesPerSecond: Double
    public var stageSeconds: StageSeconds
    /// Share of the model's time it was running a batch, over all its streams (1.0: never
    /// waited for input).
    public var modelBusy: Double
    /// Batches the model ran at once (``ModelOptions/streams``).
    public var streams: Int = 1
    /// Stopped by `stop()` (SIGINT/SIGTERM) before the manifest's end.
    public var interrupted: Bool
    /// Set when the job stopped on a systemic error; the counts say what was committed first.
    public var error: SystemicFailure?
    /// The shared job this worker ran (`--job`), and the worker's name.
    public var job: String?
    public var worker: String?
    /// The hosts that took longest in all, slowest first (at most 5).
    public var slowestHosts: [HostSummary] = []
    /// With `--precision auto`: the decision in one line ("fp32, exact JPEG decode (measured on
    /// 96 photos: bf16 1.93x fp32's speed but drifts (...); ...)").
    public var precisionChoice: String?
    /// With `--redis`: the embedding cache's hits, misses, errors and values not ours.
    public var cache: CacheStatistics?

    /// One host's fetches in a run.
    public struct HostSummary: Sendable, Codable, Hashable {
        public var host: String
        public var requests: Int
        public var totalSeconds: Double
        public var maxSeconds: Double
        public var timeouts: Int

        enum CodingKeys: String, CodingKey {
            case host, requests, timeouts
            case totalSeconds = "total_seconds", maxSeconds = "max_seconds"
        }
    }

    enum CodingKeys: String, CodingKey {
        case manifest, store, precision, device, streams, counts, seconds, interrupted, error, job, worker, cache
        case slowestHosts = "slowest_hosts", precisionChoice = "precision_choice"
        case modelID = "model_id", preprocessing, randomInitModel = "random_init_model"
        case failuresByClass = "failures_by_class", skippedFailedByClass = "skipped_failed_by_class"
        case imagesPerSecond = "images_per_second", stageSeconds = "stage_seconds", modelBusy = "model_busy"
    }
}

extension JobSummary {
    /// The summary of a run from its counters.
    init(
        stats: JobStats, source: String, store: String, embedder: ImageEmbedder, wall: Double, interrupted: Bool,
        error: SystemicFailure?, job: String? = nil, worker: String? = nil, hosts: [HostTiming] = [],
        cache: CacheStatistics? = nil
    ) {
        let (counts, failures, skippedFailures, stages) = stats.snapshot()
        var byClass = failures
        if counts.badRows > 0 { byClass[FailureClass.badRow] = counts.badRows }
        self.init(
            manifest: source, store: store, modelID: embedder.modelID,
            preprocessing: embedder.preprocessingID, precision: embedder.precision.rawValue,
            randomInitModel: embedder.card?.pretrained == false, counts: counts, failuresByClass: byClass,
            skippedFailedByClass: skippedFailures, seconds: wall,
            imagesPerSecond: Double(counts.embedded) / max(wall, 1e-9), stageSeconds: stages,
            modelBusy: min(1, stages.infer / max(wall * Double(embedder.embedder.streams), 1e-9)),
            interrupted: interrupted, error: error, job: job,
            worker: worker,
            slowestHosts: hosts.prefix(5).map {
                HostSummary(
                    host: $0.host, requests: $0.requests, totalSeconds: $0.totalSeconds, maxSeconds: $0.maxSeconds,
                    timeouts: $0.timeouts)
            }, precisionChoice: embedder.precisionDecision.map { "\($0)" }, cache: cache)
        self.device = embedder.device
        self.streams = embedder.embedder.streams
    }
}

/// Seconds since a run started.
struct JobClock: Sendable {
    let start = ContinuousClock.now
    var elapsed: Double { (ContinuousClock.now - start).inSeconds }
}

/// Shared counters of a running job.
final class JobStats: Sendable {
    private struct State: Sendable {
        var counts = JobCounts()
        var failures: [String: Int] = [:]
        var skippedFailures: [String: Int] = [:]
        var stages = StageSeconds()
        var storeWait: StoreWait?
    }

    private let state = Locked(State())

    func setStoreWait(_ wait: StoreWait?) {
        state.withLock { $0.storeWait = wait }
    }

    var currentStoreWait: StoreWait? { state.withLock { $0.storeWait } }

    func update(_ body: (inout JobCounts) -> Void) {
        state.withLock { body(&$0.counts) }
    }

    func failed(_ cls: String) {
        state.withLock { s in
            s.counts.failed += 1
            s.failures[cls, default: 0] += 1
        }
    }

    func skippedFailed(_ cls: String) {
        state.withLock { s in
            s.counts.skippedFailed += 1
            s.skippedFailures[cls, default: 0] += 1
        }
    }

    /// Counts committed outcomes (failures are counted by ``failed(_:)`` with their class).
    func committed(_ outcomes: [ItemOutcome.Status]) {
        state.withLock { s in
            for o in outcomes {
                switch o {
                case .embedded: s.counts.embedded += 1
                case .reused:
                    s.counts.embedded += 1
                    s.counts.reused += 1
                case .failed: break
                }
            }
        }
    }

    func progress(estimatedRows: Int?, elapsed t: Double) -> JobProgress {
        let (counts, _, _, _) = snapshot()
        let rate = Double(counts.embedded) / max(t, 1e-9)
        let doneRate = Double(counts.done) / max(t, 1e-9)
        let eta = estimatedRows.flatMap { est in
            doneRate > 0 && est > counts.done ? Double(est - counts.done) / doneRate : nil
        }
        return JobProgress(
            counts: counts, estimatedRows: estimatedRows, elapsed: t, imagesPerSecond: rate, eta: eta,
            storeProblem: currentStoreWait)
    }

    func time(_ stage: WritableKeyPath<StageSeconds, Double>, _ seconds: Double) {
        state.withLock { $0.stages[keyPath: stage] += seconds }
    }

    func snapshot() -> (JobCounts, [String: Int], [String: Int], StageSeconds) {
        state.withLock { s in (s.counts, s.failures, s.skippedFailures, s.stages) }
    }
}
