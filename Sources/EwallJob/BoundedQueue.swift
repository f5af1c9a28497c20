import EwallCore
import Foundation

/// A multi-producer, multi-consumer queue with a fixed capacity between two pipeline stages.
/// `send` suspends while the queue is full (back-pressure: a fast stage waits for a slow one,
/// so memory does not grow with the manifest); `next` suspends while it is empty and returns
/// `nil` once the queue is finished and drained. Continuations are resumed outside the lock.
final class BoundedQueue<Element: Sendable>: Sendable {
    private typealias Sender = CheckedContinuation<Bool, Never>
    private typealias Receiver = CheckedContinuation<Element?, Never>

    private struct State: Sendable {
        /// Popped slots are set to `nil` at once, so a queue never keeps a finished element alive.
        var buffer: [Element?] = []
        var head = 0
        var senders: [(Element, Sender)] = []
        var receivers: [Receiver] = []
        var finished = false

        var count: Int { buffer.count - head }

        /// After a pop, moves the first waiting sender's element into the freed slot; returns the
        /// sender to resume (outside the lock).
        mutating func admitSender() -> Sender? {
            guard !senders.isEmpty else { return nil }
            let (pending, sender) = senders.removeFirst()
            buffer.append(pending)
            return sender
        }

        mutating func pop(capacity: Int) -> Element? {
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

    private let capacity: Int
    private let state = Locked(State())

    init(capacity: Int) {
        self.capacity = max(1, capacity)
    }

    var count: Int { state.withLock { $0.count } }

    /// Adds `element`, waiting for room. Returns `false` (dropping it) if the queue was
    /// finished or cancelled.
    @discardableResult
    func send(_ element: Element) async -> Bool {
        await withCheckedContinuation { (cont: Sender) in enqueue(element, cont) }
    }

    /// The next element, or `nil` when finished and empty.
    func next() async -> Element? {
        await withCheckedContinuation { (cont: Receiver) in dequeue(cont) }
    }

    private func enqueue(_ element: Element, _ cont: Sender) {
        // `nil`: no room, so the sender waits (in `senders`).
        let outcome = state.withLock { s -> (sent: Bool, receiver: Receiver?)? in
            if s.finished { return (false, nil) }
            if !s.receivers.isEmpty { return (true, s.receivers.removeFirst()) }
            guard s.count < capacity else {
                s.senders.append((element, cont))
                return nil
            }
            s.buffer.append(element)
            return (true, nil)
        }
        guard let outcome else { return }
        outcome.receiver?.resume(returning: element)
        cont.resume(returning: outcome.sent)
    }

    private func dequeue(_ cont: Receiver) {
        // `nil`: nothing buffered and not finished, so the receiver waits (in `receivers`).
        let answer = state.withLock { s -> (element: Element?, woken: Sender?)? in
            if let e = s.pop(capacity: capacity) { return (e, s.admitSender()) }
            if s.finished { return (nil, nil) }
            s.receivers.append(cont)
            return nil
        }
        guard let answer else { return }
        answer.woken?.resume(returning: true)
        cont.resume(returning: answer.element)
    }

    /// The next element if one is buffered now, without waiting (`nil` otherwise).
    func tryNext() -> Element? {
        let popped = state.withLock { s -> (Element, woken: Sender?)? in
            guard let e = s.pop(capacity: capacity) else { return nil }
            return (e, s.admitSender())
        }
        guard let (e, woken) = popped else { return nil }
        woken?.resume(returning: true)
        return e
    }

    /// No more elements will be sent; receivers drain what is buffered, then get `nil`.
    func finish() {
        let (waiting, blocked) = state.withLock { s -> ([Receiver], [(Element, Sender)]) in
            s.finished = true
            let waiting = s.count == 0 ? s.receivers : []
            if !waiting.isEmpty { s.receivers.removeAll() }
            defer { s.senders.removeAll() }
            return (waiting, s.senders)
        }
        for r in waiting { r.resume(returning: nil) }
        for (_, s) in blocked { s.resume(returning: false) }
    }

    /// Finishes and drops whatever is buffered (a stage downstream has failed).
    func cancel() {
        state.withLock { s in
            s.buffer.removeAll()
            s.head = 0
        }
        finish()
    }
}
