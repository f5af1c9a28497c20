import EwallCore
import EwallStore
import Foundation

/// What a submission stores: the job's identity and the items that need work.
public struct JobSpec: Sendable, Hashable {
    public var name: String
    public var manifest: String
    public var manifestSHA256: String
    public var key: ModelKey
    public var chunkSize: Int
    /// `host:pid` of the submitting process, shown to whoever is refused.
    public var submittedBy: String

    public init(
        name: String, manifest: String, manifestSHA256: String, key: ModelKey, chunkSize: Int, submittedBy: String
    ) {
        self.name = name
        self.manifest = manifest
        self.manifestSHA256 = manifestSHA256
        self.key = key
        self.chunkSize = chunkSize
        self.submittedBy = submittedBy
    }
}

/// One item of a job: what a worker fetches and embeds.
public struct QueuedItem: Sendable, Hashable {
    public var productID: String
    public var imageURL: String
    /// The manifest line it came from.
    public var line: Int

    public init(productID: String, imageURL: String, line: Int) {
        self.productID = productID
        self.imageURL = imageURL
        self.line = line
    }
}

/// Counts a submission records beside the items (what the submitter decided without a worker).
public struct SubmitCounts: Sendable, Hashable, Codable {
    public var rows = 0
    public var queued = 0
    public var skipped = 0
    public var skippedFailed = 0
    public var badRows = 0
    public var duplicates = 0

    public init() {}

    enum CodingKeys: String, CodingKey {
        case rows, queued, skipped, duplicates
        case skippedFailed = "skipped_failed", badRows = "bad_rows"
    }
}

/// A chunk held under a lease: its items still pending, and the generation every commit must
/// present.
public struct ClaimedChunk: Sendable, Hashable {
    public var job: String
    public var chunk: Int
    public var generation: Int64
    public var items: [QueuedItem]
}

/// A lease, as carried by every item of a claimed chunk through the pipeline.
public struct ChunkLease: Sendable, Hashable {
    public var chunk: Int
    public var generation: Int64

    public init(chunk: Int, generation: Int64) {
        self.chunk = chunk
        self.generation = generation
    }
}

/// One item's outcome in a commit.
public struct ItemOutcome: Sendable {
    public enum Status: String, Sendable { case embedded, reused, failed }

    public var lease: ChunkLease
    public var productID: String
    public var status: Status
    public var errorClass: String?

    public init(lease: ChunkLease, productID: String, status: Status, errorClass: String? = nil) {
        self.lease = lease
        self.productID = productID
        self.status = status
        self.errorClass = errorClass
    }
}

/// What a commit did: the chunks whose lease still held (their items are written) and those
/// taken over by another worker (nothing of theirs was written).
public struct CommitResult: Sendable, Hashable {
    public var committed: Set<Int>
    public var refused: Set<Int>
}

/// A job's state as `ewall job status` shows it.
public struct JobStatusReport: Sendable, Codable {
    public struct Worker: Sendable, Codable, Hashable {
        public var worker: String
        public var modelID: String
        public var startedAt: Date
        public var heartbeatAt: Date
        public var items: Int
        public var chunks: Int
        /// Commits refused because the lease had been taken over.
        public var refused: Int
        /// Items per second since it started.
        public var itemsPerSecond: Double
        /// Seconds since its last heartbeat (by the database's clock).
        public var silentSeconds: Double
        /// No heartbeat for longer than the lease: its chunks go to others.
        public var stale: Bool

        enum CodingKeys: String, CodingKey {
            case worker, items, chunks, refused, stale
            case modelID = "model_id", startedAt = "started_at", heartbeatAt = "heartbeat_at"
            case itemsPerSecond = "items_per_second", silentSeconds = "silent_seconds"
        }
    }

    public var name: String
    public var status: String
    public var runID: Int64
    public var manifest: String
    public var manifestSHA256: String
    public var modelID: String
    public var preprocessing: String
    public var submittedBy: String
    public var startedAt: Date
    public var finishedAt: Date?
    public var submitted: SubmitCounts
    /// Items queued for workers, and what became of them.
    public var total: Int
    public var done: Int
    public var embedded: Int
    public var reused: Int
    public var failed: Int
    public var chunks: Int
    public var chunksDone: Int
    public var chunksLeased: Int
    public var workers: [Worker]
    /// Seconds left at the workers' current combined rate.
    public var etaSeconds: Double?

    enum CodingKeys: String, CodingKey {
        case name, status, manifest, submitted, total, done, embedded, reused, failed, chunks, workers
        case runID = "run_id", manifestSHA256 = "manifest_sha256", modelID = "model_id", preprocessing
        case submittedBy = "submitted_by", startedAt = "started_at", finishedAt = "finished_at"
        case chunksDone = "chunks_done", chunksLeased = "chunks_leased", etaSeconds = "eta_seconds"
    }
}

/// One run of a job, as `ewall job list` shows it.
public struct JobRun: Sendable, Codable, Hashable {
    public var runID: Int64
    public var job: String
    public var manifestSHA256: String
    public var submittedBy: String
    public var startedAt: Date
    public var finishedAt: Date?
    /// `running`, `done` or `cancelled`.
    public var outcome: String
    public var submitted: SubmitCounts

    enum CodingKeys: String, CodingKey {
        case job, outcome, submitted
        case runID = "run_id", manifestSHA256 = "manifest_sha256", submittedBy = "submitted_by"
        case startedAt = "started_at", finishedAt = "finished_at"
    }
}

/// A refusal of the queue: a job that runs, does not exist, or belongs to another model.
public struct JobQueueError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable {
        case running = "job_running"
        case unknownJob = "unknown_job"
        case modelMismatch = "model_mismatch"
        case notPostgres = "queue_needs_postgres"
        /// The job name breaks ``InputRules/jobNameProblem(_:)``.
        case invalidName = "invalid_job_name"
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
