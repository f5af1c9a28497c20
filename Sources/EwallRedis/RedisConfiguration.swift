import EwallFetch
import Foundation

/// How EwallML uses Redis, with documented defaults. Redis is optional everywhere: without a
/// configuration nothing changes; with one, Redis down or slow is a cache miss, never an error.
public struct RedisConfiguration: Sendable, Hashable {
    public var location: RedisLocation
    /// How long a cached vector and a per-product entry live (default 3,600 s, the platform's).
    public var cacheTTL: Duration
    /// Connect, send and receive timeout for each command (default 100 ms).
    public var timeout: Duration
    /// Connections, each on its own thread (default 2).
    public var connections: Int

    public init(
        location: RedisLocation, cacheTTL: Duration = .seconds(3600), timeout: Duration = .milliseconds(100),
        connections: Int = 2
    ) {
        self.location = location
        self.cacheTTL = cacheTTL
        self.timeout = timeout
        self.connections = connections
    }

    /// `--redis` if given, else `EWALL_REDIS` in `environment` (the executable's, which it
    /// passes in); `nil` when neither is set (no Redis).
    public static func location(
        flag: String?, environment: [String: String]
    )
        throws(RedisLocation.Malformed) -> RedisLocation?
    {
        guard let text = flag ?? environment["EWALL_REDIS"], !text.isEmpty else { return nil }
        return try RedisLocation(parsing: text)
    }
}

extension FetchConfiguration {
    /// The per-host limit and hosts' 429 pauses shared through Redis by every process that
    /// uses the same `client`'s Redis.
    public mutating func share(through client: RedisClient) {
        sharedSlots = SharedHostSlots(RedisHostSlots(client: client))
        sharedPauses = SharedHostPauses(RedisHostPauses(client: client))
    }
}
