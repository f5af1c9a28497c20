import EwallCore
import EwallFetch
import Foundation

/// The per-host limit held across every worker on every machine: a counting semaphore per host
/// in a sorted set (`fetch:slots:{host}`: token -> expiry in ms, Redis's own clock), taken and
/// returned by Lua scripts so each step is atomic. A slot expires by itself after its lease,
/// so a worker that dies never keeps its slots. While the set is full, a fetch waits and polls
/// (2 to 20 ms, jittered). Redis down or refusing: `nil`, and the fetch goes on under the
/// per-process limit alone.
public final class RedisHostSlots: HostSlotBoard {
    let client: RedisClient
    private let owner = UUID().uuidString.prefix(8)
    private let counter = Locked(0)

    public init(client: RedisClient) { self.client = client }

    static let acquireScript = """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
          redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
          redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
          return 1
        end
        return 0
        """

    public func acquire(host: String, limit: Int, lease: Duration) async -> String? {
        let n = counter.withLock { c -> Int in
            c += 1
            return c
        }
        let token = "\(owner)-\(n)"
        let key = RedisArgument(RedisKeys.fetchSlots(host))
        let leaseMs = RedisArgument(max(1000, Int(lease.inSeconds * 1000)))
        var wait = 2.0
        while true {
            switch await client.send([
                "EVAL", RedisArgument(Self.acquireScript), "1", key, RedisArgument(max(1, limit)),
                RedisArgument(token), leaseMs,
            ]) {
            case .success(.integer(1)): return token
            case .success(.integer(0)):
                if Task.isCancelled { return nil }
                try? await Task.sleep(for: .milliseconds(Int(wait * Double.random(in: 0.5...1.5))))
                wait = min(20, wait * 1.5)
            default:
                return nil // unreachable or refusing: the local limit alone
            }
        }
    }

    public func release(host: String, token: String) async {
        _ = await client.send(["ZREM", RedisArgument(RedisKeys.fetchSlots(host)), RedisArgument(token)])
    }
}

/// Hosts' pauses (HTTP 429 with `Retry-After`) shared through Redis: one sorted set
/// (`fetch:pauses:hosts`: host -> end of the pause in ms, Redis's clock), so a pause one worker
/// is asked for holds for every worker within the fetcher's 250 ms poll. Expired entries are
/// dropped as they are read; the key itself expires with the longest pause.
public final class RedisHostPauses: HostPauseBoard {
    let client: RedisClient

    public init(client: RedisClient) { self.client = client }

    static let publishScript = """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local untilMs = now + tonumber(ARGV[2])
        local current = redis.call('ZSCORE', KEYS[1], ARGV[1])
        if not current or tonumber(current) < untilMs then redis.call('ZADD', KEYS[1], untilMs, ARGV[1]) end
        if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2])) end
        return 1
        """

    static let currentScript = """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
        local out = {}
        local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
        for i = 1, #entries, 2 do
          out[#out + 1] = entries[i]
          out[#out + 1] = tostring(tonumber(entries[i + 1]) - now)
        end
        return out
        """

    public func publish(host: String, seconds: Double) async {
        _ = await client.send([
            "EVAL", RedisArgument(Self.publishScript), "1", RedisArgument(RedisKeys.fetchPauses),
            RedisArgument(host), RedisArgument(max(1, Int(seconds * 1000))),
        ])
    }

    public func current() async -> [String: Double] {
        guard
            case .success(.array(let flat)) = await client.send(
                ["EVAL", RedisArgument(Self.currentScript), "1", RedisArgument(RedisKeys.fetchPauses)])
        else { return [:] }
        var out: [String: Double] = [:]
        var i = 0
        while i + 1 < flat.count {
            if let h = flat[i].bytes,
                let ms = flat[i + 1].bytes.flatMap({ Double(String(decoding: $0, as: UTF8.self)) })
            {
                out[String(decoding: h, as: UTF8.self)] = ms / 1000
            }
            i += 2
        }
        return out
    }
}
