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
///
/// Safe because: every field is touched under `lock`; the continuation is resumed outside it, once.
private final class FirstOf<T: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<T, any Error>?
    private var resolved: Result<T, any Error>?
    private var tasks: [Task<Void, Never>] = []

    func start(_ c: CheckedContinuation<T, any Error>) {
        lock.lock()
        if let resolved {
            lock.unlock()
            c.resume(with: resolved) // the caller was cancelled before the race began
            return
        }
        continuation = c
        lock.unlock()
    }

    func add(_ task: Task<Void, Never>) {
        lock.lock()
        let done = resolved != nil
        if !done { tasks.append(task) }
        lock.unlock()
        if done { task.cancel() }
    }

    func resolve(_ result: Result<T, any Error>) {
        lock.lock()
        guard resolved == nil else {
            lock.unlock()
            return
        }
        resolved = result
        let (c, losers) = (continuation, tasks)
        continuation = nil
        tasks.removeAll()
        lock.unlock()
        for t in losers { t.cancel() }
        c?.resume(with: result)
    }
}
