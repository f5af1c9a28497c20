import Foundation

/// Dedicated threads for blocking native work (forward passes, decodes, SQLite), so it never
/// occupies a thread of Swift's cooperative pool. Jobs start in submission order; with one
/// thread (the default) they also run one at a time, with `threads: n` up to n run at once
/// (the first free thread takes the next job).
///
/// Safe because: all mutable state (`jobs`, `stopped`) is guarded by `condition`.
public final class BlockingWorker: @unchecked Sendable {
    private let condition = NSCondition()
    private var jobs: [() -> Void] = []
    private var stopped = false
    /// The number of threads taking jobs.
    public let threads: Int

    public init(name: String, threads: Int = 1) {
        self.threads = max(1, threads)
        for i in 0..<self.threads {
            let t = Thread { [unowned self] in self.loop() }
            t.name = self.threads == 1 ? name : "\(name)-\(i)"
            t.stackSize = 8 << 20
            t.start()
        }
    }

    deinit {
        condition.lock()
        stopped = true
        condition.broadcast()
        condition.unlock()
    }

    /// Runs `body` on a worker thread and returns its result to the awaiting task.
    public func run<T: Sendable, E: Error>(_ body: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
        let result: Result<T, E> = await withCheckedContinuation { cont in
            condition.lock()
            jobs.append {
                do throws(E) { cont.resume(returning: .success(try body())) } catch {
                    cont.resume(returning: .failure(error))
                }
            }
            condition.signal()
            condition.unlock()
        }
        return try result.get()
    }

    private func loop() {
        while true {
            condition.lock()
            while jobs.isEmpty && !stopped { condition.wait() }
            if jobs.isEmpty && stopped {
                condition.unlock()
                return
            }
            let job = jobs.removeFirst()
            condition.unlock()
            job()
        }
    }
}
