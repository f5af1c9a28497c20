import Foundation

/// `body`'s result, or the error `timedOut()` makes when `limit` passes first. The body is
/// then abandoned: cancelled, never awaited, so a call that ignores cancellation (a query on a
/// connection that died under its client library) cannot hold the caller past its deadline.
/// Use it only where a late completion is harmless (idempotent store calls, a request whose
/// answer nobody reads). Cancelling the caller ends the wait at once with `CancellationError`.
public func withDeadline<T: Sendable>(
    _ limit: Duration, timedOut: @escaping @Sendable () -> any Error,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let first = FirstOf<T>()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            first.start(continuation)
            first.add(
                Task {
                    do { first.resolve(.success(try await body())) } catch { first.resolve(.failure(error)) }
                })
            first.add(
                Task {
                    try? await Task.sleep(for: limit)
                    first.resolve(.failure(timedOut()))
                })
        }
    } onCancel: {
        first.resolve(.failure(CancellationError()))
    }
}

/// The first outcome of racing tasks, handed to one continuation; the losers are cancelled.
/// The continuation is resumed outside the lock, once.
private final class FirstOf<T: Sendable>: Sendable {
    private struct State: Sendable {
        var continuation: CheckedContinuation<T, any Error>?
        var resolved: Result<T, any Error>?
        var tasks: [Task<Void, Never>] = []
    }

    private let state = Locked(State())

    func start(_ c: CheckedContinuation<T, any Error>) {
        let early = state.withLock { s -> Result<T, any Error>? in
            if s.resolved == nil { s.continuation = c }
            return s.resolved
        }
        if let early { c.resume(with: early) } // the caller was cancelled before the race began
    }

    func add(_ task: Task<Void, Never>) {
        let done = state.withLock { s -> Bool in
            if s.resolved != nil { return true }
            s.tasks.append(task)
            return false
        }
        if done { task.cancel() }
    }

    func resolve(_ result: Result<T, any Error>) {
        let won = state.withLock { s -> (CheckedContinuation<T, any Error>?, [Task<Void, Never>])? in
            guard s.resolved == nil else { return nil }
            s.resolved = result
            defer {
                s.continuation = nil
                s.tasks.removeAll()
            }
            return (s.continuation, s.tasks)
        }
        guard let (c, losers) = won else { return }
        for t in losers { t.cancel() }
        c?.resume(with: result)
    }
}
