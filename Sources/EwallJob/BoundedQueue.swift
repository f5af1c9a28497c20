import Foundation

/// A multi-producer, multi-consumer queue with a fixed capacity between two pipeline stages.
/// `send` suspends while the queue is full (back-pressure: a fast stage waits for a slow one,
/// so memory does not grow with the manifest); `next` suspends while it is empty and returns
/// `nil` once the queue is finished and drained.
///
/// Safe because: all state is guarded by `lock`; continuations are resumed outside it.
final class BoundedQueue<Element: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private let capacity: Int
    /// Popped slots are set to `nil` at once, so a queue never keeps a finished element alive.
    private var buffer: [Element?] = []
    private var head = 0
    private var senders: [(Element, CheckedContinuation<Bool, Never>)] = []
    private var receivers: [CheckedContinuation<Element?, Never>] = []
    private var finished = false

    init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    var count: Int {
        lock.lock()
        defer { lock.unlock() }
        return buffer.count - head
    }

    /// Adds `element`, waiting for room. Returns `false` (dropping it) if the queue was
    /// finished or cancelled.
    @discardableResult
    func send(_ element: Element) async -> Bool {
        await withCheckedContinuation { (cont: CheckedContinuation<Bool, Never>) in enqueue(element, cont) }
    }

    /// The next element, or `nil` when finished and empty.
    func next() async -> Element? {
        await withCheckedContinuation { (cont: CheckedContinuation<Element?, Never>) in dequeue(cont) }
    }

    private func enqueue(_ element: Element, _ cont: CheckedContinuation<Bool, Never>) {
        lock.lock()
        if finished {
            lock.unlock()
            cont.resume(returning: false)
        } else if !receivers.isEmpty {
            let r = receivers.removeFirst()
            lock.unlock()
            r.resume(returning: element)
            cont.resume(returning: true)
        } else if buffer.count - head < capacity {
            buffer.append(element)
            lock.unlock()
            cont.resume(returning: true)
        } else {
            senders.append((element, cont))
            lock.unlock()
        }
    }

    private func dequeue(_ cont: CheckedContinuation<Element?, Never>) {
        lock.lock()
        if let e = popLocked() {
            let woken = admitSenderLocked()
            lock.unlock()
            woken?.resume(returning: true)
            cont.resume(returning: e)
        } else if finished {
            lock.unlock()
            cont.resume(returning: nil)
        } else {
            receivers.append(cont)
            lock.unlock()
        }
    }

    /// The next element if one is buffered now, without waiting (`nil` otherwise).
    func tryNext() -> Element? {
        lock.lock()
        guard let e = popLocked() else {
            lock.unlock()
            return nil
        }
        let woken = admitSenderLocked()
        lock.unlock()
        woken?.resume(returning: true)
        return e
    }

    /// No more elements will be sent; receivers drain what is buffered, then get `nil`.
    func finish() {
        lock.lock()
        finished = true
        let waiting = buffer.count - head == 0 ? receivers : []
        if !waiting.isEmpty { receivers.removeAll() }
        let blocked = senders
        senders.removeAll()
        lock.unlock()
        for r in waiting { r.resume(returning: nil) }
        for (_, s) in blocked { s.resume(returning: false) }
    }

    /// Finishes and drops whatever is buffered (a stage downstream has failed).
    func cancel() {
        lock.lock()
        buffer.removeAll()
        head = 0
        lock.unlock()
        finish()
    }

    /// After a pop, moves the first waiting sender's element into the freed slot; returns the
    /// sender to resume (outside the lock).
    private func admitSenderLocked() -> CheckedContinuation<Bool, Never>? {
        guard !senders.isEmpty else { return nil }
        let (pending, sender) = senders.removeFirst()
        buffer.append(pending)
        return sender
    }

    private func popLocked() -> Element? {
        guard head < buffer.count else { return nil }
        let e = buffer[head]
        buffer[head] = nil
        head += 1
        if head >= capacity && head * 2 > buffer.count {
            buffer.removeFirst(head)
            head = 0
        }
        return e!
    }
}
