import ArgumentParser
import EwallCLI
import EwallML
import Foundation

/// `ewall job status|list|cancel`: shared jobs in the PostgreSQL store.
struct Job: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Watch and steer shared jobs (ewall-embed --job NAME) in the PostgreSQL store.",
        discussion: """
            A shared job is submitted with `ewall-embed --manifest FILE --db postgres://... --job NAME` \
            and worked by any number of `ewall-embed --db postgres://... --job NAME --worker` processes \
            on any machines. These commands read and steer it; they never load the model.
            """,
        subcommands: [Status.self, List.self, Cancel.self])

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "A job's counts, progress, workers (rate, last heartbeat, stale ones) and ETA.",
            discussion: "Exit status: 0 shown; 2 no such job or the store cannot be read.")

        @Argument(help: "The job's name.")
        var name: String

        @OptionGroup var database: DatabaseFlags

        @Option(name: .long, help: "The lease the workers use, in seconds: a worker silent for longer is stale.")
        var leaseSeconds: Double = 60

        @Flag(name: .long, help: "Print the status as one JSON object.")
        var json = false

        func run() async throws {
            bootstrapLogging()
            let store = try await database.open()
            defer { Task { await store.close() } }
            let report: JobStatusReport
            do {
                report = try await PostgresJobQueue.over(store).status(
                    job: name, lease: .milliseconds(Int(leaseSeconds * 1000)))
            } catch {
                await store.close()
                throw fail(Self.text(error))
            }
            await store.close()
            if json {
                FileHandle.standardOutput.write(try JobText.encoder.encode(report) + Data("\n".utf8))
                return
            }
            print(JobText.status(report))
        }

        static func text(_ error: any Error) -> String {
            (error as? JobQueueError)?.message ?? (error as? StoreError)?.message ?? "\(error)"
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Runs of every job with start, end and outcome, kept for --keep-days days.")

        @OptionGroup var database: DatabaseFlags

        @Option(name: .long, help: "Days the history is kept; older finished runs are deleted (the platform keeps 7).")
        var keepDays: Int = 7

        @Flag(name: .long, help: "Print the runs as a JSON array.")
        var json = false

        func validate() throws {
            guard keepDays >= 1 else { throw ValidationError("--keep-days must be at least 1") }
        }

        func run() async throws {
            bootstrapLogging()
            let store = try await database.open()
            let runs: [JobRun]
            do { runs = try await PostgresJobQueue.over(store).runs(keepDays: keepDays) } catch {
                await store.close()
                throw fail(Status.text(error))
            }
            await store.close()
            if json {
                FileHandle.standardOutput.write(try JobText.encoder.encode(runs) + Data("\n".utf8))
                return
            }
            if runs.isEmpty {
                print("no job runs in the last \(keepDays) days")
                return
            }
            print(
                "RUN    JOB                   STARTED               FINISHED              OUTCOME    QUEUED  SKIPPED  BAD"
            )
            for r in runs {
                print(
                    String(
                        format: "%-6lld %-21@ %-21@ %-21@ %-10@ %6d  %7d  %3d", r.runID,
                        InputRules.escaped(r.job, maxBytes: 21) as NSString,
                        JobText.time(r.startedAt) as NSString, (r.finishedAt.map(JobText.time) ?? "-") as NSString,
                        r.outcome as NSString, r.submitted.queued, r.submitted.skipped, r.submitted.badRows))
            }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Cancel a running job: workers finish their current batch, give back their chunks and stop.",
            discussion:
                "Exit status: 0 cancelled (or already not running); 2 no such job or the store cannot be reached.")

        @Argument(help: "The job's name.")
        var name: String

        @OptionGroup var database: DatabaseFlags

        func run() async throws {
            bootstrapLogging()
            let store = try await database.open()
            let changed: Bool
            do { changed = try await PostgresJobQueue.over(store).cancel(job: name) } catch {
                await store.close()
                throw fail(Status.text(error))
            }
            await store.close()
            print(
                changed
                    ? "ewall job cancel: '\(InputRules.escaped(name))' cancelled; its workers stop after their current batch"
                    : "ewall job cancel: '\(InputRules.escaped(name))' is not running; nothing to do")
        }
    }
}

enum JobText {
    static var encoder: JSONEncoder {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        e.dateEncodingStrategy = .iso8601
        return e
    }

    static func time(_ d: Date) -> String {
        d.ISO8601Format(
            .iso8601.year().month().day().dateSeparator(.dash).time(includingFractionalSeconds: false)
                .timeSeparator(.colon))
    }

    /// Names, ids and paths read back from the store are escaped (``InputRules/escaped(_:maxBytes:)``):
    /// a stored value never writes terminal escapes or fake lines.
    static func status(_ r: JobStatusReport) -> String {
        let e = { (s: String) in InputRules.escaped(s, maxBytes: 512) }
        let pct = r.total > 0 ? Double(r.done) / Double(r.total) * 100 : 100
        var out = """
            job \(e(r.name)): \(r.status.uppercased()) (run \(r.runID), submitted by \(e(r.submittedBy)) at \(time(r.startedAt)))
              manifest \(e(r.manifest)) [sha256 \(r.manifestSHA256.prefix(12))], model \(e(r.modelID)) (\(e(r.preprocessing)))
              submitted: rows \(r.submitted.rows), queued \(r.submitted.queued), skipped \(r.submitted.skipped) (already embedded), \
            failed earlier \(r.submitted.skippedFailed), bad rows \(r.submitted.badRows), duplicates \(r.submitted.duplicates)
              progress: \(r.done)/\(r.total) (\(String(format: "%.1f", pct))%): embedded \(r.embedded) (reused \(r.reused)), \
            failed \(r.failed); chunks \(r.chunksDone)/\(r.chunks) done, \(r.chunksLeased) leased
            """
        if let eta = r.etaSeconds { out += String(format: "\n  ETA %.0f s at the live workers' rate", eta) }
        if let f = r.finishedAt { out += "\n  finished at \(time(f))" }
        if !r.workers.isEmpty {
            out += "\n  workers:"
            for w in r.workers {
                out += String(
                    format: "\n    %@  %d items, %d chunks, %.1f items/s, last heartbeat %.0f s ago%@%@",
                    e(w.worker) as NSString, w.items, w.chunks, w.itemsPerSecond, w.silentSeconds,
                    w.refused > 0 ? ", \(w.refused) items refused (lease taken over)" as NSString : "" as NSString,
                    w.stale ? "  STALE: its chunks go to others" as NSString : "" as NSString)
            }
        }
        return out
    }
}
