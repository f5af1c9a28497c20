import Synchronization

/// How one host has answered an ``ImageFetcher`` so far: enough for a job summary to name its
/// slowest hosts. Every HTTP request (each attempt, retries included) counts once, against the
/// host of the URL asked for (redirect hops are part of that request). Files are not counted.
///
/// ```swift
/// for t in fetcher.hostTimings().prefix(3) {
///     print("\(t.host): \(t.requests) requests, \(t.totalSeconds) s in all, slowest \(t.maxSeconds) s,",
///           "\(t.timeouts) timeouts")
/// }
/// ```
public struct HostTiming: Sendable, Hashable {
    /// The host name, lower-case, as in the URL, with `:port` when the URL names a port.
    public var host: String
    /// Requests sent to it (attempts; a retry is another request).
    public var requests: Int
    /// Seconds spent in those requests, summed: from sending (connect included) to the last
    /// byte, the error, or the cut at the item deadline. Waits for a permit and backoff between
    /// attempts are not included.
    public var totalSeconds: Double
    /// The slowest single request, in seconds.
    public var maxSeconds: Double
    /// Requests that ended in a timeout (``FetchConfiguration/requestTimeout``, the connect
    /// timeout, or a cut at ``FetchConfiguration/itemDeadline``).
    public var timeouts: Int

    public init(host: String, requests: Int = 0, totalSeconds: Double = 0, maxSeconds: Double = 0, timeouts: Int = 0) {
        self.host = host
        self.requests = requests
        self.totalSeconds = totalSeconds
        self.maxSeconds = maxSeconds
        self.timeouts = timeouts
    }

    /// Mean seconds per request (0 before the first).
    public var meanSeconds: Double { requests > 0 ? totalSeconds / Double(requests) : 0 }
}

/// The per-host tallies behind ``ImageFetcher/hostTimings()``.
final class HostTimings: Sendable {
    private let state = Mutex<[String: HostTiming]>([:])

    func record(host: String, seconds: Double, timedOut: Bool) {
        state.withLock { all in
            var t = all[host] ?? HostTiming(host: host)
            t.requests += 1
            t.totalSeconds += seconds
            t.maxSeconds = max(t.maxSeconds, seconds)
            if timedOut { t.timeouts += 1 }
            all[host] = t
        }
    }

    /// Slowest first: by total seconds, then by host name.
    var snapshot: [HostTiming] {
        state.withLock { Array($0.values) }.sorted {
            $0.totalSeconds != $1.totalSeconds ? $0.totalSeconds > $1.totalSeconds : $0.host < $1.host
        }
    }
}
