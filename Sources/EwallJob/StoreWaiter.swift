import EwallCore
import EwallStore
import Foundation
import Logging

/// How a job calls its store: waiting for it while it does not answer, and saying why.
struct StoreWaiter: Sendable {
    let store: any EmbeddingStore
    /// How long to wait in all for a store that stopped answering.
    let limit: Duration
    /// One call that takes longer counts as no answer.
    let callTimeout: Duration
    let logger: Logger

    /// Runs one store call, waiting for the store while it does not answer: each call is
    /// bounded by `callTimeout`; a transient failure (the
    /// server is down, restarting or busy) is retried with backoff for up to
    /// `limit`, with the reason (asked of the store
    /// itself) on the progress line. Store calls are idempotent upserts, so a call that timed
    /// out after committing is harmless to repeat. Other store errors are thrown at once.
    func call<T: Sendable>(
        _ what: String, stats: JobStats,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        let limit = self.limit.inSeconds
        // A call that takes longer than the whole wait is no answer either (never under 5 s).
        let timeout = min(callTimeout, max(.seconds(5), self.limit))
        var firstFailure: ContinuousClock.Instant?
        var delay = 0.25
        while true {
            do {
                let value = try await Self.deadline(timeout, store: store.displayName, body)
                if firstFailure != nil {
                    stats.setStoreWait(nil)
                    logger.warning("the store \(store.displayName) answers again; the job goes on")
                }
                return value
            } catch let e as StoreError where e.isTransient {
                let now = ContinuousClock.now
                if firstFailure == nil {
                    firstFailure = now
                }
                let waited = (now - firstFailure!).inSeconds
                // Asking why is bounded too: a probe of a server half way up may get no answer.
                let store = self.store
                let diagnosis = try? await Self.deadline(timeout, store: store.displayName) { await store.diagnose() }
                let reason = diagnosis.flatMap { $0 } ?? e.message
                if waited >= limit || Task.isCancelled {
                    stats.setStoreWait(nil)
                    throw StoreError(
                        e.code,
                        "the store \(store.displayName) did not answer for \(Int(waited.rounded())) s "
                            + "(limit \(Int(limit)) s) while \(what): \(reason)", detail: e.debugDescription)
                }
                stats.setStoreWait(StoreWait(reason: reason, waited: waited, limit: limit))
                try await Task.sleep(for: .milliseconds(Int(min(delay, 5, max(0.05, limit - waited)) * 1000)))
                delay *= 2
            }
        }
    }

    /// `body`, or a transient ``StoreError`` when it takes longer than `limit` (the call is
    /// abandoned then, ``withDeadline(_:timedOut:_:)``: store calls are idempotent, so a late
    /// completion is harmless).
    static func deadline<T: Sendable>(
        _ limit: Duration, store: String,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        try await withDeadline(
            limit, timedOut: { StoreError(.unavailable, "\(store) gave no answer within \(limit)") }, body)
    }
}
