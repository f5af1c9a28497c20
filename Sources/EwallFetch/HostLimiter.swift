/// At most `limit` requests in flight per host, and a pause for the whole host when it
/// answers 429 with `Retry-After`: every request to that host waits, not only the one that
/// was refused (img2dataset #62: a single CDN hammered into 429s).
actor HostLimiter {
    private let limit: Int
    private var active: [String: Int] = [:]
    private var waiters: [String: [CheckedContinuation<Void, Never>]] = [:]
    private var pausedUntil: [String: ContinuousClock.Instant] = [:]

    init(limit: Int) {
        self.limit = max(1, limit)
    }

    /// Waits for a permit for `host`, then for any pause on it to end. Pair with ``release(_:)``.
    func acquire(_ host: String) async {
        if active[host, default: 0] < limit {
            active[host, default: 0] += 1
        } else {
            // The permit is handed over by `release`, so `active` already counts us.
            await withCheckedContinuation { waiters[host, default: []].append($0) }
        }
        while let until = pausedUntil[host], until > .now {
            do { try await Task.sleep(until: until, clock: .continuous) } catch { return }
        }
    }

    func release(_ host: String) {
        if var queue = waiters[host], !queue.isEmpty {
            let next = queue.removeFirst()
            waiters[host] = queue
            next.resume()
        } else {
            active[host, default: 1] -= 1
        }
    }

    /// No request to `host` starts before `until`.
    func pause(_ host: String, until: ContinuousClock.Instant) {
        if let current = pausedUntil[host], current >= until { return }
        pausedUntil[host] = until
    }
}
