import EwallCore

/// The queue's tables (PostgreSQL only), created by ``PostgresJobQueue/over(_:)``.
///
/// Bloat: a chunk row is updated at every commit of its items and an item row once, when it is
/// done. Neither update touches an indexed column, so with the fill factors below they are HOT
/// updates that need no index maintenance; autovacuum reclaims the old versions.
enum JobQueueSchema {
    static let postgres = """
        CREATE TABLE IF NOT EXISTS ewall_jobs (
            name            TEXT COLLATE "C" PRIMARY KEY,
            run_id          BIGINT NOT NULL,
            status          TEXT NOT NULL,
            manifest        TEXT NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            model_id        TEXT NOT NULL,
            preprocessing   TEXT NOT NULL,
            chunk_size      INTEGER NOT NULL,
            submitted_by    TEXT NOT NULL,
            created_at      TIMESTAMPTZ NOT NULL,
            updated_at      TIMESTAMPTZ NOT NULL
        );
        CREATE TABLE IF NOT EXISTS ewall_job_runs (
            run_id          BIGSERIAL PRIMARY KEY,
            job             TEXT COLLATE "C" NOT NULL,
            manifest_sha256 TEXT NOT NULL,
            submitted_by    TEXT NOT NULL,
            started_at      TIMESTAMPTZ NOT NULL,
            finished_at     TIMESTAMPTZ,
            outcome         TEXT,
            rows_read       BIGINT NOT NULL DEFAULT 0,
            queued          BIGINT NOT NULL DEFAULT 0,
            skipped         BIGINT NOT NULL DEFAULT 0,
            skipped_failed  BIGINT NOT NULL DEFAULT 0,
            bad_rows        BIGINT NOT NULL DEFAULT 0,
            duplicates      BIGINT NOT NULL DEFAULT 0
        );
        CREATE INDEX IF NOT EXISTS ewall_job_runs_by_start ON ewall_job_runs (started_at);
        CREATE TABLE IF NOT EXISTS ewall_job_chunks (
            job         TEXT COLLATE "C" NOT NULL,
            chunk       INTEGER NOT NULL,
            items       INTEGER NOT NULL,
            pending     INTEGER NOT NULL,
            embedded    INTEGER NOT NULL DEFAULT 0,
            reused      INTEGER NOT NULL DEFAULT 0,
            failed      INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until TIMESTAMPTZ,
            generation  BIGINT NOT NULL DEFAULT 0,
            claims      INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (job, chunk)
        ) WITH (fillfactor = 50);
        CREATE TABLE IF NOT EXISTS ewall_job_items (
            job         TEXT COLLATE "C" NOT NULL,
            product_id  TEXT COLLATE "C" NOT NULL,
            chunk       INTEGER NOT NULL,
            image_url   TEXT NOT NULL,
            line        INTEGER NOT NULL,
            status      TEXT NOT NULL,
            error_class TEXT,
            generation  BIGINT,
            worker      TEXT,
            PRIMARY KEY (job, product_id)
        ) WITH (fillfactor = 85);
        CREATE INDEX IF NOT EXISTS ewall_job_items_by_chunk ON ewall_job_items (job, chunk);
        CREATE TABLE IF NOT EXISTS ewall_job_workers (
            job          TEXT COLLATE "C" NOT NULL,
            worker       TEXT NOT NULL,
            model_id     TEXT NOT NULL,
            started_at   TIMESTAMPTZ NOT NULL,
            heartbeat_at TIMESTAMPTZ NOT NULL,
            items        BIGINT NOT NULL DEFAULT 0,
            chunks       BIGINT NOT NULL DEFAULT 0,
            refused      BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (job, worker)
        );
        CREATE TABLE IF NOT EXISTS ewall_host_pauses (
            host        TEXT PRIMARY KEY,
            until_at    TIMESTAMPTZ NOT NULL,
            seen_by     TEXT NOT NULL
        )
        """
}
