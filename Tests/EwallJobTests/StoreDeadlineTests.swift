import EwallCore
import EwallStore
import Foundation
import Testing

@testable import EwallJob

/// A store call that never returns, even when cancelled (a query on a connection that died
/// under the client library), must not hold the job past its deadline.
@Suite("Store call deadline")
struct StoreDeadlineTests {
    /// A call that ignores cancellation: it waits on a continuation nobody resumes until the
    /// test releases it.
    final class Stuck: Sendable {
        private let waiting = Locked<CheckedContinuation<Int, Never>?>(nil)
        func call() async -> Int { await withCheckedContinuation { c in waiting.withLock { $0 = c } } }
        func release() {
            let c = waiting.withLock { w in
                defer { w = nil }
                return w
            }
            c?.resume(returning: 7)
        }
    }

    @Test("a call that ignores cancellation times out at its deadline, as a transient store error")
    func uncancellableCallTimesOut() async throws {
        let stuck = Stuck()
        let start = ContinuousClock.now
        do {
            _ = try await StoreWaiter.deadline(.milliseconds(300), store: "test store") { await stuck.call() }
            Issue.record("the stuck call returned")
        } catch let e as StoreError {
            #expect(e.isTransient && e.message.contains("test store gave no answer within"), "\(e.message)")
        }
        let waited = ContinuousClock.now - start
        #expect(waited >= .milliseconds(300) && waited < .seconds(5), "returned after \(waited)")
        stuck.release() // the abandoned call ends; its late answer goes nowhere
    }

    @Test("a call that answers in time gives its answer, and its error passes through as it is")
    func answersAndErrorsPassThrough() async throws {
        #expect(try await StoreWaiter.deadline(.seconds(5), store: "s") { 42 } == 42)
        let e = await #expect(throws: StoreError.self) {
            try await StoreWaiter.deadline(.seconds(5), store: "s") { () async throws -> Int in
                throw StoreError(.readOnly, "refused")
            }
        }
        #expect(e?.code == .readOnly && e?.message == "refused", "\(String(describing: e))")
    }

    @Test("cancelling the caller ends the wait at once")
    func cancellingTheCaller() async throws {
        let stuck = Stuck()
        let t = Task { try await StoreWaiter.deadline(.seconds(60), store: "s") { await stuck.call() } }
        try await Task.sleep(for: .milliseconds(100))
        let start = ContinuousClock.now
        t.cancel()
        await #expect(throws: CancellationError.self) { try await t.value }
        #expect(ContinuousClock.now - start < .seconds(5))
        stuck.release()
    }
}
