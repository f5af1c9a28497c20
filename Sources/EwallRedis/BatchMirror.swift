import EwallCore
import Foundation

/// A shared job's state where the platform's batch system looks for it:
///
/// - `batch:status:{job}`: the job's status as `ewall job status --json` prints it (counts,
///   progress, workers), a JSON string, TTL 1 hour, written by each worker at most once a second;
/// - `batch:history:{job}`: a hash of run id -> that run's final status (JSON), TTL 7 days;
/// - `batch:lock:{job}`: the worker that holds the job against a double run (its name),
///   TTL 30 minutes, renewed with every status write while any worker runs the job: when its
///   holder stops, another running worker takes it over on its next write; the last worker
///   deletes it when the job is done.
///
/// A mirror only: PostgreSQL stays the job's truth, and Redis down costs nothing but the mirror.
public final class BatchMirror: Sendable {
    public let client: RedisClient
    public let job: String
    public let owner: String
    public let statusTTL: Duration
    public let historyTTL: Duration
    public let lockTTL: Duration
    /// Status writes at most this often (default 1 s).
    public let interval: Duration
    private let last = Locked<ContinuousClock.Instant?>(nil)

    public init(
        client: RedisClient, job: String, owner: String, statusTTL: Duration = .seconds(3600),
        historyTTL: Duration = .seconds(7 * 86400), lockTTL: Duration = .seconds(1800), interval: Duration = .seconds(1)
    ) {
        self.client = client
        self.job = job
        self.owner = owner
        self.statusTTL = statusTTL
        self.historyTTL = historyTTL
        self.lockTTL = lockTTL
        self.interval = interval
    }

    static let lockScript = """
        local cur = redis.call('GET', KEYS[1])
        if not cur then
          redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
          return ARGV[1]
        end
        if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
        return cur
        """

    static let unlockScript = """
        if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
        return 0
        """

    private func ms(_ d: Duration) -> RedisArgument { RedisArgument(max(1, Int(d.inSeconds * 1000))) }

    /// Whether a status write is due (at most one per ``interval``); marks it done if so.
    public func due() -> Bool {
        last.withLock { l in
            if let at = l, ContinuousClock.now - at < interval { return false }
            l = .now
            return true
        }
    }

    /// Writes the status and takes or renews the lock in one round trip. Returns the lock's
    /// holder (this worker or another), or `nil` when Redis did not answer.
    @discardableResult
    public func publish(status json: [UInt8]) async -> String? {
        let replies = await client.pipeline([
            ["SET", RedisArgument(RedisKeys.batchStatus(job)), RedisArgument(json), "PX", ms(statusTTL)],
            [
                "EVAL", RedisArgument(Self.lockScript), "1", RedisArgument(RedisKeys.batchLock(job)),
                RedisArgument(owner), ms(lockTTL),
            ],
        ])
        guard case .success(let r) = replies, let holder = r[1].bytes else { return nil }
        return String(decoding: holder, as: UTF8.self)
    }

    /// The last word of this worker: the final status, and when the job is done the run's
    /// history entry. The lock is given back if this worker holds it (another running worker
    /// takes it over); when the job is done it is gone for good.
    public func finish(status json: [UInt8], runID: Int64, done: Bool) async {
        var commands: [[RedisArgument]] = [
            ["SET", RedisArgument(RedisKeys.batchStatus(job)), RedisArgument(json), "PX", ms(statusTTL)]
        ]
        if done {
            commands.append([
                "HSET", RedisArgument(RedisKeys.batchHistory(job)), RedisArgument("\(runID)"), RedisArgument(json),
            ])
            commands.append(["PEXPIRE", RedisArgument(RedisKeys.batchHistory(job)), ms(historyTTL)])
        }
        commands.append([
            "EVAL", RedisArgument(Self.unlockScript), "1", RedisArgument(RedisKeys.batchLock(job)),
            RedisArgument(owner),
        ])
        _ = await client.pipeline(commands)
    }
}
