import EwallCore
import EwallStore
import Foundation
import Logging
import NIOCore
import PostgresNIO

// Where a job is claimed: one embedding job spread over any number of worker processes on any
// number of machines, with PostgreSQL itself as the coordinator (no daemon of our own).
//
// - A job is submitted once: its items (product id, image URL, manifest line) go into
//   `ewall_job_items`, grouped into chunks (`ewall_job_chunks`, a few hundred items each), the
//   unit of claiming.
// - A worker claims a chunk with `SELECT ... FOR UPDATE SKIP LOCKED`: a lease with an expiry
//   computed by the database (`now() + lease`), never by the workers' clocks, and a generation
//   bumped at every claim. Every commit extends the lease (progress is the heartbeat); a
//   heartbeat also extends it while a long batch runs.
// - A commit writes vectors, ledger rows and item states in one transaction that first locks
//   the chunk rows and checks their generation: a worker whose lease was taken over (killed,
//   frozen, partitioned past its expiry) has its late commit refused, so an item is never
//   written twice and never lost.

/// The job queue over a ``PostgresStore``. Every method may be called from many tasks at once.
public final class PostgresJobQueue: Sendable {
    public let store: PostgresStore
    private var client: PostgresClient { store.client }
    private var logger: Logger { store.logger }

    private init(store: PostgresStore) {
        self.store = store
    }

    /// The queue of `store`, which must be PostgreSQL: the queue needs `SKIP LOCKED` and one
    /// clock that every machine shares.
    /// Creates the queue's tables if they are missing.
    public static func over(_ store: any EmbeddingStore) async throws -> PostgresJobQueue {
        guard let pg = store as? PostgresStore else {
            throw JobQueueError(
                .notPostgres,
                "--job needs a PostgreSQL store (--db postgres://...), which every worker "
                    + "reaches; \(store.displayName) is not one")
        }
        do { try await pg.ensureSchema(JobQueueSchema.postgres) } catch {
            throw PostgresStore.wrap(error, "cannot create the job queue's tables on \(pg.displayName)")
        }
        return PostgresJobQueue(store: pg)
    }

    @discardableResult
    private func run<T>(_ what: String, _ body: () async throws -> T) async throws -> T {
        do { return try await body() } catch let e as JobQueueError { throw e } catch {
            throw PostgresStore.wrap(error, "\(what) on \(store.displayName)")
        }
    }

    // MARK: Submitting

    /// Stores a job in one transaction: refuses while a run of the same name is still
    /// running (naming who holds it), else starts a new run whose items replace the previous
    /// run's. `items` is called repeatedly for the next slice of items to queue (empty: the
    /// end); the caller streams the manifest through it. Nothing is visible to workers until
    /// the transaction commits, so a submission that fails half-way leaves nothing behind.
    public func submit(
        _ spec: JobSpec, counts: @Sendable () -> SubmitCounts,
        items: () async throws -> [QueuedItem]
    ) async throws -> Int64 {
        if let problem = InputRules.jobNameProblem(spec.name) { throw JobQueueError(.invalidName, problem) }
        return try await run("submitting job \(spec.name)") {
            try await client.withTransaction(logger: logger) { conn in
                // The job row is the lock against double runs: held for the whole submission.
                try await conn.query(
                    """
                    INSERT INTO ewall_jobs (name, run_id, status, manifest, manifest_sha256, model_id, preprocessing,
                                            chunk_size, submitted_by, created_at, updated_at)
                    VALUES (\(spec.name), 0, 'new', '', '', '', '', 0, '', now(), now())
                    ON CONFLICT (name) DO NOTHING
                    """, logger: logger)
                let rows = try await conn.query(
                    """
                    SELECT status, submitted_by, run_id FROM ewall_jobs WHERE name = \(spec.name) FOR UPDATE
                    """, logger: logger)
                var status = "", holder = ""
                for try await (s, h, _) in rows.decode((String, String, Int64).self) { (status, holder) = (s, h) }
                if status == "running" {
                    let pending = try await Self.pendingCount(conn, job: spec.name, logger: logger)
                    if pending > 0 {
                        let leases = try await Self.leaseHolders(conn, job: spec.name, logger: logger)
                        throw JobQueueError(
                            .running,
                            "job '\(spec.name)' is running (submitted by \(holder); \(pending) items "
                                + "to go; \(leases.isEmpty ? "no worker holds a lease now" : "leases held by " + leases.joined(separator: ", ")))"
                                + ": wait for it, or `ewall job cancel \(spec.name)` first")
                    }
                    // Nothing left, but no worker has claimed since to mark it so: the run is done.
                    try await Self.finish(conn, job: spec.name, outcome: "done", logger: logger)
                }
                // The new run's chunks start above every generation of the old run's, so a lease
                // (chunk, generation) from an earlier run never matches one of this run's: a late
                // commit of a worker that lost its chunk is refused, not taken into this run.
                var generation: Int64 = 0
                for try await g in try await conn.query(
                    "SELECT COALESCE(MAX(generation), 0)::int8 + 1 FROM ewall_job_chunks WHERE job = \(spec.name)",
                    logger: logger
                ).decode(Int64.self) { generation = g }
                try await conn.query("DELETE FROM ewall_job_items WHERE job = \(spec.name)", logger: logger)
                try await conn.query("DELETE FROM ewall_job_chunks WHERE job = \(spec.name)", logger: logger)
                try await conn.query("DELETE FROM ewall_job_workers WHERE job = \(spec.name)", logger: logger)
                var runID: Int64 = 0
                for try await id in try await conn.query(
                    """
                    INSERT INTO ewall_job_runs (job, manifest_sha256, submitted_by, started_at)
                    VALUES (\(spec.name), \(spec.manifestSHA256), \(spec.submittedBy), now()) RETURNING run_id
                    """, logger: logger
                ).decode(Int64.self) { runID = id }

                var chunk = 0, inChunk = 0, queued = 0
                var chunkSizes: [Int32] = []
                while true {
                    let slice = try await items()
                    if slice.isEmpty { break }
                    var chunks: [Int32] = []
                    chunks.reserveCapacity(slice.count)
                    for _ in slice {
                        if inChunk == spec.chunkSize {
                            chunk += 1
                            inChunk = 0
                        }
                        if inChunk == 0 { chunkSizes.append(0) }
                        chunkSizes[chunk] += 1
                        inChunk += 1
                        chunks.append(Int32(chunk))
                    }
                    queued += slice.count
                    try await conn.query(
                        """
                        INSERT INTO ewall_job_items (job, product_id, chunk, image_url, line, status)
                        SELECT \(spec.name), u.id, u.chunk, u.url, u.line, 'pending'
                        FROM unnest(\(slice.map(\.productID))::text[], \(chunks)::int4[], \(slice.map(\.imageURL))::text[],
                                    \(slice.map { Int32(clamping: $0.line) })::int4[]) AS u(id, chunk, url, line)
                        """, logger: logger)
                }
                if !chunkSizes.isEmpty {
                    try await conn.query(
                        """
                        INSERT INTO ewall_job_chunks (job, chunk, items, pending, generation)
                        SELECT \(spec.name), c.n - 1, c.items, c.items, \(generation)
                        FROM unnest(\(chunkSizes)::int4[]) WITH ORDINALITY AS c(items, n)
                        """, logger: logger)
                }
                let c = counts()
                try await conn.query(
                    """
                    UPDATE ewall_job_runs SET rows_read = \(Int64(c.rows)), queued = \(Int64(queued)), skipped = \(Int64(c.skipped)),
                        skipped_failed = \(Int64(c.skippedFailed)), bad_rows = \(Int64(c.badRows)), duplicates = \(Int64(c.duplicates)),
                        finished_at = CASE WHEN \(Int64(queued)) = 0 THEN now() END,
                        outcome = CASE WHEN \(Int64(queued)) = 0 THEN 'done' END
                    WHERE run_id = \(runID)
                    """, logger: logger)
                try await conn.query(
                    """
                    UPDATE ewall_jobs SET run_id = \(runID), status = \(queued == 0 ? "done" : "running"), manifest = \(spec.manifest),
                        manifest_sha256 = \(spec.manifestSHA256), model_id = \(spec.key.modelID),
                        preprocessing = \(spec.key.preprocessing), chunk_size = \(Int32(spec.chunkSize)),
                        submitted_by = \(spec.submittedBy), updated_at = now()
                    WHERE name = \(spec.name)
                    """, logger: logger)
                return runID
            }
        }
    }

    static func pendingCount(_ conn: PostgresConnection, job: String, logger: Logger) async throws -> Int {
        var n = 0
        for try await v in try await conn.query(
            "SELECT COALESCE(SUM(pending), 0)::int8 FROM ewall_job_chunks WHERE job = \(job)",
            logger: logger
        ).decode(Int64.self) { n = Int(v) }
        return n
    }

    static func leaseHolders(_ conn: PostgresConnection, job: String, logger: Logger) async throws -> [String] {
        var out: [String] = []
        for try await w in try await conn.query(
            """
            SELECT DISTINCT lease_owner FROM ewall_job_chunks
            WHERE job = \(job) AND pending > 0 AND lease_until > now() AND lease_owner IS NOT NULL ORDER BY 1
            """, logger: logger
        ).decode(String.self) { out.append(w) }
        return out
    }

    // MARK: Working

    /// The job's model key and status; refuses an unknown job.
    public func job(_ name: String) async throws -> (key: ModelKey, status: String, runID: Int64) {
        try await run("reading job \(name)") {
            for try await (m, p, s, r) in try await client.query(
                """
                SELECT model_id, preprocessing, status, run_id FROM ewall_jobs WHERE name = \(name) AND status <> 'new'
                """, logger: logger
            ).decode((String, String, String, Int64).self) {
                return (ModelKey(modelID: m, preprocessing: p), s, r)
            }
            var known: [String] = []
            for try await n in try await client.query(
                "SELECT name FROM ewall_jobs WHERE status <> 'new' ORDER BY name LIMIT 20",
                logger: logger
            ).decode(String.self) { known.append(n) }
            throw JobQueueError(
                .unknownJob,
                "no job named '\(InputRules.escaped(name))' in \(store.displayName)"
                    + (known.isEmpty
                        ? " (it holds no jobs)"
                        : "; it has: " + known.map { InputRules.escaped($0, maxBytes: 64) }.joined(separator: ", ")))
        }
    }

    /// Registers a worker (or refreshes its row) after checking its model key against the job's.
    public func join(job name: String, worker: String, key: ModelKey) async throws {
        let job = try await job(name)
        guard job.key == key else {
            throw JobQueueError(
                .modelMismatch,
                "job '\(name)' embeds with \(job.key.modelID) --preprocess \(job.key.preprocessing); "
                    + "this worker has \(key.modelID) --preprocess \(key.preprocessing): refused before claiming anything"
            )
        }
        try await run("joining job \(name)") {
            try await client.query(
                """
                INSERT INTO ewall_job_workers (job, worker, model_id, started_at, heartbeat_at)
                VALUES (\(name), \(worker), \(key.modelID), now(), now())
                ON CONFLICT (job, worker) DO UPDATE SET heartbeat_at = now()
                """, logger: logger)
        }
    }

    /// What a claim found.
    public enum Claim: Sendable {
        /// A chunk is ours until the lease expires (extended by every commit and heartbeat).
        case chunk(ClaimedChunk)
        /// Chunks are pending but all leased by live workers: try again after `retryAfter`.
        case wait(retryAfter: Duration)
        /// Nothing is pending: the job is done (and marked so).
        case finished
        /// The job was cancelled: claim nothing more.
        case cancelled
    }

    /// Claims the lowest pending chunk that no live lease holds: `FOR UPDATE SKIP LOCKED` lets
    /// claimers pass each other without waiting, and the lease's expiry is the database's
    /// `now() + lease`, so the workers' clocks never matter.
    public func claim(job name: String, worker: String, lease: Duration) async throws -> Claim {
        let seconds = lease.inSeconds
        // A worker frozen inside this transaction (SIGSTOP, a VM paused, a long GC) would hold
        // the row lock of the chunk it was claiming, and every other worker's SKIP LOCKED would
        // pass over that chunk for as long as the freeze lasts: PostgreSQL ends such a session
        // after one lease, which frees the chunk.
        let idleLimit = String(max(1000, Int(seconds * 1000)))
        return try await run("claiming a chunk of \(name)") {
            try await client.withTransaction(logger: logger) { conn in
                try await conn.query(
                    "SELECT set_config('idle_in_transaction_session_timeout', \(idleLimit), true)",
                    logger: logger)
                var status = ""
                for try await s in try await conn.query(
                    "SELECT status FROM ewall_jobs WHERE name = \(name)",
                    logger: logger
                ).decode(String.self) { status = s }
                if status == "cancelled" { return .cancelled }
                var claimed: (Int, Int64)?
                for try await (c, g) in try await conn.query(
                    """
                    WITH free AS (
                        SELECT job, chunk FROM ewall_job_chunks
                        WHERE job = \(name) AND pending > 0 AND (lease_until IS NULL OR lease_until < now())
                        ORDER BY chunk LIMIT 1 FOR UPDATE SKIP LOCKED)
                    UPDATE ewall_job_chunks k SET lease_owner = \(worker),
                        lease_until = now() + make_interval(secs => \(seconds)),
                        generation = k.generation + 1, claims = k.claims + 1
                    FROM free WHERE k.job = free.job AND k.chunk = free.chunk
                    RETURNING k.chunk, k.generation
                    """, logger: logger
                ).decode((Int32, Int64).self) { claimed = (Int(c), g) }
                guard let (chunk, generation) = claimed else {
                    var pending = 0, nextExpiry = 0.0
                    for try await (p, e) in try await conn.query(
                        """
                        SELECT COUNT(*)::int8, COALESCE(EXTRACT(EPOCH FROM MIN(lease_until) - now()), 0)::float8
                        FROM ewall_job_chunks WHERE job = \(name) AND pending > 0
                        """, logger: logger
                    ).decode((Int64, Double).self) { (pending, nextExpiry) = (Int(p), e) }
                    if pending > 0 {
                        return .wait(retryAfter: .milliseconds(Int(min(2, max(0.2, nextExpiry + 0.05)) * 1000)))
                    }
                    try await Self.finish(conn, job: name, outcome: "done", logger: logger)
                    return .finished
                }
                var items: [QueuedItem] = []
                for try await (id, url, line) in try await conn.query(
                    """
                    SELECT product_id, image_url, line FROM ewall_job_items
                    WHERE job = \(name) AND chunk = \(Int32(chunk)) AND status = 'pending' ORDER BY line
                    """, logger: logger
                ).decode((String, String, Int32).self) {
                    items.append(QueuedItem(productID: id, imageURL: url, line: Int(line)))
                }
                try await conn.query(
                    """
                    UPDATE ewall_job_workers SET chunks = chunks + 1, heartbeat_at = now() WHERE job = \(name) AND worker = \(worker)
                    """, logger: logger)
                return .chunk(ClaimedChunk(job: name, chunk: chunk, generation: generation, items: items))
            }
        }
    }

    static func finish(_ conn: PostgresConnection, job: String, outcome: String, logger: Logger) async throws {
        try await conn.query(
            """
            UPDATE ewall_job_runs SET finished_at = now(), outcome = \(outcome)
            WHERE run_id = (SELECT run_id FROM ewall_jobs WHERE name = \(job)) AND finished_at IS NULL
            """, logger: logger)
        try await conn.query(
            """
            UPDATE ewall_jobs SET status = \(outcome), updated_at = now() WHERE name = \(job) AND status = 'running'
            """, logger: logger)
    }

    /// Extends the leases this worker still holds and records its heartbeat. Returns the
    /// chunks whose lease was lost (taken over by another worker): their items must not be
    /// committed (the commit would be refused anyway) and are dropped. Also says whether the
    /// job was cancelled meanwhile.
    public func heartbeat(
        job name: String, worker: String, leases: [ChunkLease], lease: Duration
    ) async throws
        -> (lost: Set<Int>, cancelled: Bool)
    {
        let seconds = lease.inSeconds
        return try await run("renewing leases on \(name)") {
            var held = Set<Int>()
            if !leases.isEmpty {
                for try await c in try await client.query(
                    """
                    UPDATE ewall_job_chunks k SET lease_until = now() + make_interval(secs => \(seconds))
                    FROM unnest(\(leases.map { Int32($0.chunk) })::int4[], \(leases.map(\.generation))::int8[]) AS l(chunk, generation)
                    WHERE k.job = \(name) AND k.chunk = l.chunk AND k.generation = l.generation
                    RETURNING k.chunk
                    """, logger: logger
                ).decode(Int32.self) { held.insert(Int(c)) }
            }
            var cancelled = false
            for try await s in try await client.query(
                """
                WITH w AS (UPDATE ewall_job_workers SET heartbeat_at = now() WHERE job = \(name) AND worker = \(worker))
                SELECT status FROM ewall_jobs WHERE name = \(name)
                """, logger: logger
            ).decode(String.self) { cancelled = s == "cancelled" }
            return (Set(leases.map(\.chunk)).subtracting(held), cancelled)
        }
    }

    /// Gives leases back at once (a worker that stops): others need not wait for the expiry.
    public func release(job name: String, leases: [ChunkLease]) async throws {
        if leases.isEmpty { return }
        try await run("releasing leases on \(name)") {
            try await client.query(
                """
                UPDATE ewall_job_chunks k SET lease_until = NULL, lease_owner = NULL
                FROM unnest(\(leases.map { Int32($0.chunk) })::int4[], \(leases.map(\.generation))::int8[]) AS l(chunk, generation)
                WHERE k.job = \(name) AND k.chunk = l.chunk AND k.generation = l.generation
                """, logger: logger)
        }
    }

    /// Writes one batch under its leases, atomically, in one statement (one round trip): the
    /// chunk rows are locked (`FOR UPDATE`) and their generations checked first; the vectors,
    /// ledger rows and item states of chunks whose lease still holds are written, those of
    /// chunks taken over are not. The chunks' counters come from the item rows it changed, and
    /// every committed chunk's lease is extended (progress is a heartbeat).
    ///
    /// Under READ COMMITTED a takeover that commits while this waits for the row lock is seen:
    /// the lock re-reads the row and its new generation no longer matches.
    public func commit(
        job name: String, worker: String, batch: WriteBatch, outcomes: [ItemOutcome],
        lease: Duration
    ) async throws -> CommitResult {
        try StorableText.check(batch)
        let seconds = lease.inSeconds
        let leases = Array(Set(outcomes.map(\.lease))).sorted { $0.chunk < $1.chunk }
        let chunkOf = Dictionary(
            outcomes.map { ($0.productID, Int32($0.lease.chunk)) }, uniquingKeysWith: { a, _ in a })
        let e = batch.embeddings.filter { chunkOf[$0.productID] != nil }
        let l = batch.ledger.filter { chunkOf[$0.productID] != nil }
        let o = outcomes
        let statement = CommitStatement(
            job: name, worker: worker, leaseSeconds: seconds,
            leaseChunks: leases.map { Int32($0.chunk) }, leaseGenerations: leases.map(\.generation),
            vectorIDs: e.map(\.productID), vectorChunks: e.map { chunkOf[$0.productID]! },
            vectorModels: e.map(\.key.modelID),
            vectorPreprocessings: e.map(\.key.preprocessing), vectorURLs: e.map(\.imageURL),
            vectorDims: e.map { Int32($0.vector.count) },
            vectors: e.map { ByteBuffer(bytes: VectorBytes.encode($0.vector)) },
            vectorSHAs: e.map { $0.imageSHA256 ?? "" }, vectorWidths: e.map { Int32($0.width ?? -1) },
            vectorHeights: e.map { Int32($0.height ?? -1) }, vectorBytes: e.map { Int64($0.bytes ?? -1) },
            vectorTypes: e.map { $0.contentType ?? "" },
            ledgerIDs: l.map(\.productID), ledgerChunks: l.map { chunkOf[$0.productID]! },
            ledgerModels: l.map(\.key.modelID),
            ledgerPreprocessings: l.map(\.key.preprocessing), ledgerURLs: l.map(\.imageURL),
            ledgerStatuses: l.map(\.status.rawValue),
            ledgerClasses: l.map { $0.errorClass ?? "" }, ledgerHTTP: l.map { Int32($0.httpStatus ?? -1) },
            ledgerAttempts: l.map { Int32($0.attempts) }, ledgerErrors: l.map { $0.lastError ?? "" },
            ledgerTried: l.map(\.lastTried),
            itemIDs: o.map(\.productID), itemChunks: o.map { Int32($0.lease.chunk) },
            itemStatuses: o.map(\.status.rawValue),
            itemClasses: o.map { $0.errorClass ?? "" }, itemGenerations: o.map(\.lease.generation))
        return try await run("committing a batch of \(name)") {
            var held = Set<Int>()
            // Prepared once per connection: a commit's plan is not made again every time.
            for try await c in try await client.execute(statement, logger: logger) { held.insert(Int(c)) }
            return CommitResult(committed: held, refused: Set(leases.map(\.chunk)).subtracting(held))
        }
    }

    // MARK: Watching

    /// Asks the job's workers to stop: they finish their current batch, give back their
    /// leases and claim nothing more. The run ends as `cancelled`.
    public func cancel(job name: String) async throws -> Bool {
        _ = try await job(name)
        return try await run("cancelling \(name)") {
            try await client.withTransaction(logger: logger) { conn in
                var changed = false
                for try await _ in try await conn.query(
                    """
                    UPDATE ewall_jobs SET status = 'cancelled', updated_at = now() WHERE name = \(name) AND status = 'running'
                    RETURNING name
                    """, logger: logger
                ).decode(String.self) { changed = true }
                if changed {
                    try await conn.query(
                        """
                        UPDATE ewall_job_runs SET finished_at = now(), outcome = 'cancelled'
                        WHERE run_id = (SELECT run_id FROM ewall_jobs WHERE name = \(name)) AND finished_at IS NULL
                        """, logger: logger)
                }
                return changed
            }
        }
    }

    /// Counts, progress, workers (rate, last heartbeat, stale) and an ETA, by the database's clock.
    public func status(job name: String, lease: Duration = .seconds(60)) async throws -> JobStatusReport {
        _ = try await job(name)
        return try await run("reading the status of \(name)") {
            var report: JobStatusReport?
            for try await (
                status, runID, manifest, sha, model, pre, by, started, finished, rows, queued, skipped, sf, bad, dups
            )
                in try await client.query(
                    """
                    SELECT j.status, j.run_id, j.manifest, j.manifest_sha256, j.model_id, j.preprocessing, j.submitted_by,
                           r.started_at, r.finished_at, r.rows_read, r.queued, r.skipped, r.skipped_failed, r.bad_rows, r.duplicates
                    FROM ewall_jobs j JOIN ewall_job_runs r ON r.run_id = j.run_id WHERE j.name = \(name)
                    """, logger: logger
                ).decode(
                    (
                        String, Int64, String, String, String, String, String, Date, Date?,
                        Int64, Int64, Int64, Int64, Int64, Int64
                    ).self)
            {
                var submitted = SubmitCounts()
                submitted.rows = Int(rows)
                submitted.queued = Int(queued)
                submitted.skipped = Int(skipped)
                submitted.skippedFailed = Int(sf)
                submitted.badRows = Int(bad)
                submitted.duplicates = Int(dups)
                report = JobStatusReport(
                    name: name, status: status, runID: runID, manifest: manifest, manifestSHA256: sha,
                    modelID: model, preprocessing: pre, submittedBy: by, startedAt: started,
                    finishedAt: finished, submitted: submitted, total: Int(queued), done: 0, embedded: 0,
                    reused: 0, failed: 0, chunks: 0, chunksDone: 0, chunksLeased: 0, workers: [],
                    etaSeconds: nil)
            }
            guard var r = report else { throw JobQueueError(.unknownJob, "no job named '\(InputRules.escaped(name))'") }
            for try await (chunks, done, leased, e, u, f, pending) in try await client.query(
                """
                SELECT COUNT(*)::int8, COUNT(*) FILTER (WHERE pending = 0)::int8,
                       COUNT(*) FILTER (WHERE pending > 0 AND lease_until > now())::int8,
                       COALESCE(SUM(embedded), 0)::int8, COALESCE(SUM(reused), 0)::int8, COALESCE(SUM(failed), 0)::int8,
                       COALESCE(SUM(pending), 0)::int8
                FROM ewall_job_chunks WHERE job = \(name)
                """, logger: logger
            ).decode((Int64, Int64, Int64, Int64, Int64, Int64, Int64).self) {
                r.chunks = Int(chunks)
                r.chunksDone = Int(done)
                r.chunksLeased = Int(leased)
                r.embedded = Int(e)
                r.reused = Int(u)
                r.failed = Int(f)
                r.done = r.total - Int(pending)
            }
            let leaseSeconds = lease.inSeconds
            var rate = 0.0
            for try await (w, model, started, beat, items, chunks, refused, age, silent) in try await client.query(
                """
                SELECT worker, model_id, started_at, heartbeat_at, items, chunks, refused,
                       EXTRACT(EPOCH FROM heartbeat_at - started_at)::float8, EXTRACT(EPOCH FROM now() - heartbeat_at)::float8
                FROM ewall_job_workers WHERE job = \(name) ORDER BY worker
                """, logger: logger
            ).decode((String, String, Date, Date, Int64, Int64, Int64, Double, Double).self) {
                let perSecond = age > 0 ? Double(items) / age : 0
                let stale = silent > leaseSeconds
                if !stale && r.status == "running" { rate += perSecond }
                r.workers.append(
                    .init(
                        worker: w, modelID: model, startedAt: started, heartbeatAt: beat, items: Int(items),
                        chunks: Int(chunks), refused: Int(refused), itemsPerSecond: perSecond,
                        silentSeconds: silent, stale: stale))
            }
            if r.status == "running" && rate > 0 { r.etaSeconds = Double(r.total - r.done) / rate }
            return r
        }
    }

    /// Runs started within the last `days` days, newest first; older ones are deleted
    /// (the history is kept for `days` days, the platform's 7 by default).
    public func runs(keepDays days: Int) async throws -> [JobRun] {
        try await run("listing job runs") {
            try await client.query(
                """
                DELETE FROM ewall_job_runs WHERE started_at < now() - make_interval(days => \(Int32(days)))
                  AND run_id NOT IN (SELECT run_id FROM ewall_jobs)
                """, logger: logger)
            var out: [JobRun] = []
            for try await (id, job, sha, by, started, finished, outcome, rows, queued, skipped, sf, bad, dups)
                in try await client.query(
                    """
                    SELECT run_id, job, manifest_sha256, submitted_by, started_at, finished_at, COALESCE(outcome, 'running'),
                           rows_read, queued, skipped, skipped_failed, bad_rows, duplicates
                    FROM ewall_job_runs ORDER BY started_at DESC, run_id DESC
                    """, logger: logger
                ).decode(
                    (Int64, String, String, String, Date, Date?, String, Int64, Int64, Int64, Int64, Int64, Int64).self)
            {
                var c = SubmitCounts()
                c.rows = Int(rows)
                c.queued = Int(queued)
                c.skipped = Int(skipped)
                c.skippedFailed = Int(sf)
                c.badRows = Int(bad)
                c.duplicates = Int(dups)
                out.append(
                    JobRun(
                        runID: id, job: job, manifestSHA256: sha, submittedBy: by, startedAt: started,
                        finishedAt: finished, outcome: outcome, submitted: c))
            }
            return out
        }
    }

    // MARK: Hosts

    /// Records that `host` asked for a pause (HTTP 429 with Retry-After) until `seconds` from
    /// now by the database's clock, so every worker on every machine honours it.
    public func pauseHost(_ host: String, seconds: Double, seenBy worker: String) async throws {
        try await run("recording a host pause") {
            try await client.query(
                """
                INSERT INTO ewall_host_pauses (host, until_at, seen_by)
                VALUES (\(host), now() + make_interval(secs => \(seconds)), \(worker))
                ON CONFLICT (host) DO UPDATE SET until_at = GREATEST(ewall_host_pauses.until_at, excluded.until_at),
                                                 seen_by = excluded.seen_by
                """, logger: logger)
        }
    }

    /// Hosts paused now, with the seconds left (by the database's clock).
    public func pausedHosts() async throws -> [String: Double] {
        try await run("reading host pauses") {
            var out: [String: Double] = [:]
            for try await (h, left) in try await client.query(
                """
                SELECT host, EXTRACT(EPOCH FROM until_at - now())::float8 FROM ewall_host_pauses WHERE until_at > now()
                """, logger: logger
            ).decode((String, Double).self) { out[h] = left }
            return out
        }
    }
}

/// ``PostgresJobQueue/commit(job:worker:batch:outcomes:lease:)``'s statement, prepared once per
/// connection (planning was about a third of a commit's cost). One statement, so one atomic
/// transaction: lock the held chunks and check their generations, then write the vectors,
/// ledger rows and item states of those chunks, their counters and the worker's count.
struct CommitStatement: PostgresPreparedStatement {
    static let sql = """
        WITH held AS (
            SELECT k.chunk FROM ewall_job_chunks k
            JOIN unnest($1::int4[], $2::int8[]) AS l(chunk, generation) ON k.chunk = l.chunk AND k.generation = l.generation
            WHERE k.job = $3
            ORDER BY k.chunk FOR UPDATE OF k),
        vec AS (
            INSERT INTO embeddings (product_id, model_id, preprocessing, image_url, dim, vector, image_sha256,
                                    width, height, bytes, content_type, created_at, updated_at)
            SELECT v.id, v.model, v.pre, v.url, v.dim, v.vec, NULLIF(v.sha, ''), NULLIF(v.w, -1), NULLIF(v.h, -1),
                   NULLIF(v.b, -1), NULLIF(v.ct, ''), now(), now()
            FROM unnest($4::text[], $5::int4[], $6::text[], $7::text[], $8::text[], $9::int4[], $10::bytea[], $11::text[],
                        $12::int4[], $13::int4[], $14::int8[], $15::text[])
                 AS v(id, chunk, model, pre, url, dim, vec, sha, w, h, b, ct)
            WHERE v.chunk IN (SELECT chunk FROM held)
            \(Schema.embeddingUpdate)
            RETURNING product_id, model_id, preprocessing, image_url, image_sha256),
        feed AS (
            INSERT INTO catalogue_changes (product_id, kind, at, model_id, preprocessing)
            SELECT v.product_id, 'vector', EXTRACT(EPOCH FROM now())::float8, v.model_id, v.preprocessing
            FROM vec v JOIN catalogue c ON c.product_id = v.product_id AND c.image_url = v.image_url
            WHERE NOT EXISTS (
                SELECT 1 FROM embeddings e
                WHERE e.model_id = v.model_id AND e.preprocessing = v.preprocessing AND e.product_id = v.product_id
                  AND e.image_url = v.image_url AND e.image_sha256 IS NOT DISTINCT FROM v.image_sha256)),
        ledger AS (
            INSERT INTO item_outcomes (product_id, model_id, preprocessing, image_url, status, error_class,
                                       http_status, attempts, last_error, last_tried)
            SELECT u.id, u.model, u.pre, u.url, u.status, NULLIF(u.cls, ''), NULLIF(u.http, -1), u.attempts,
                   NULLIF(u.err, ''), u.tried
            FROM unnest($16::text[], $17::int4[], $18::text[], $19::text[], $20::text[], $21::text[], $22::text[],
                        $23::int4[], $24::int4[], $25::text[], $26::timestamptz[])
                 AS u(id, chunk, model, pre, url, status, cls, http, attempts, err, tried)
            WHERE u.chunk IN (SELECT chunk FROM held)
            \(Schema.ledgerUpdate)),
        changed AS (
            UPDATE ewall_job_items i SET status = o.status, error_class = NULLIF(o.cls, ''), generation = o.generation,
                worker = $27
            FROM unnest($28::text[], $29::int4[], $30::text[], $31::text[], $32::int8[]) AS o(id, chunk, status, cls, generation)
            WHERE o.chunk IN (SELECT chunk FROM held)
              AND i.job = $3 AND i.product_id = o.id AND i.chunk = o.chunk AND i.status = 'pending'
            RETURNING i.chunk, i.status),
        per AS (
            SELECT chunk, COUNT(*) FILTER (WHERE status = 'embedded') AS e,
                   COUNT(*) FILTER (WHERE status = 'reused') AS r, COUNT(*) FILTER (WHERE status = 'failed') AS f
            FROM changed GROUP BY chunk),
        chunks AS (
            UPDATE ewall_job_chunks k SET pending = k.pending - (per.e + per.r + per.f)::int4,
                embedded = k.embedded + per.e::int4, reused = k.reused + per.r::int4, failed = k.failed + per.f::int4,
                lease_until = now() + make_interval(secs => $33::float8)
            FROM per WHERE k.job = $3 AND k.chunk = per.chunk),
        w AS (
            UPDATE ewall_job_workers SET items = items + (SELECT COUNT(*) FROM changed),
                refused = refused + $34::int8 - (SELECT COUNT(*) FROM changed), heartbeat_at = now()
            WHERE job = $3 AND worker = $27)
        SELECT chunk FROM held
        """

    var job: String, worker: String, leaseSeconds: Double
    var leaseChunks: [Int32], leaseGenerations: [Int64]
    var vectorIDs: [String], vectorChunks: [Int32], vectorModels: [String], vectorPreprocessings: [String],
        vectorURLs: [String], vectorDims: [Int32], vectors: [ByteBuffer], vectorSHAs: [String], vectorWidths: [Int32],
        vectorHeights: [Int32], vectorBytes: [Int64], vectorTypes: [String]
    var ledgerIDs: [String], ledgerChunks: [Int32], ledgerModels: [String], ledgerPreprocessings: [String],
        ledgerURLs: [String], ledgerStatuses: [String], ledgerClasses: [String], ledgerHTTP: [Int32],
        ledgerAttempts: [Int32], ledgerErrors: [String], ledgerTried: [Date]
    var itemIDs: [String], itemChunks: [Int32], itemStatuses: [String], itemClasses: [String], itemGenerations: [Int64]

    func makeBindings() throws -> PostgresBindings {
        var b = PostgresBindings(capacity: 34)
        b.append(leaseChunks)
        b.append(leaseGenerations)
        b.append(job)
        b.append(vectorIDs)
        b.append(vectorChunks)
        b.append(vectorModels)
        b.append(vectorPreprocessings)
        b.append(vectorURLs)
        b.append(vectorDims)
        b.append(vectors)
        b.append(vectorSHAs)
        b.append(vectorWidths)
        b.append(vectorHeights)
        b.append(vectorBytes)
        b.append(vectorTypes)
        b.append(ledgerIDs)
        b.append(ledgerChunks)
        b.append(ledgerModels)
        b.append(ledgerPreprocessings)
        b.append(ledgerURLs)
        b.append(ledgerStatuses)
        b.append(ledgerClasses)
        b.append(ledgerHTTP)
        b.append(ledgerAttempts)
        b.append(ledgerErrors)
        b.append(ledgerTried)
        b.append(worker)
        b.append(itemIDs)
        b.append(itemChunks)
        b.append(itemStatuses)
        b.append(itemClasses)
        b.append(itemGenerations)
        b.append(leaseSeconds)
        b.append(Int64(itemIDs.count))
        return b
    }

    func decodeRow(_ row: PostgresRow) throws -> Int32 { try row.decode(Int32.self) }
}

extension JobQueueError: EwallFailure {
    public var failureCode: String { code.rawValue }
    public var kind: FailureKind {
        switch code {
        case .unknownJob: .notFound
        case .running: .unavailable
        case .modelMismatch, .notPostgres, .invalidName: .invalidRequest
        }
    }
}
