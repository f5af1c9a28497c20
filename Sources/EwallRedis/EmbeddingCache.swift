import EwallCore
import Foundation
import Metrics

/// A vector as the cache holds it, with what made it and the image it came from.
public struct CachedEmbedding: Sendable, Hashable {
    public var vector: [Float]
    /// SHA-256 of the image bytes, lower-case hex.
    public var imageSHA256: String
    /// The decoded image: format (`jpeg`, `png`, `webp`) and upright size; 0 / "" when unknown.
    public var format: String
    public var width: Int
    public var height: Int

    public init(vector: [Float], imageSHA256: String, format: String = "", width: Int = 0, height: Int = 0) {
        self.vector = vector
        self.imageSHA256 = imageSHA256
        self.format = format
        self.width = width
        self.height = height
    }
}

/// The value format of every vector EwallML writes to Redis (the embedding cache and the
/// per-product view), little-endian:
///
/// ```
/// "EWV1"                      4 bytes, magic
/// dimension                   u32
/// model key length, key       u16, UTF-8 "{model_id}|{preprocessing}"
/// image sha256 length, sha    u16, lower-case hex (64)
/// width, height               u32, u32 (0 when unknown)
/// format length, format       u8, ASCII ("jpeg", "png", "webp", "")
/// vector                      dimension x f32
/// ```
///
/// A value that does not parse, names another dimension or model key, or holds a vector that
/// breaks ``VectorRule`` (a NaN or infinite value, a norm that is not 1) is not ours: it is
/// ignored (a miss), counted, and overwritten by the next fill.
public enum VectorValue {
    static let magic: [UInt8] = Array("EWV1".utf8)

    public static func encode(_ e: CachedEmbedding, key: ModelKey) -> [UInt8] {
        let keyBytes = Array(Self.keyText(key).utf8)
        let sha = Array(e.imageSHA256.utf8)
        let format = Array(e.format.utf8.prefix(255))
        var out: [UInt8] = []
        out.reserveCapacity(4 + 4 + 2 + keyBytes.count + 2 + sha.count + 8 + 1 + format.count + 4 * e.vector.count)
        out += magic
        put(UInt32(e.vector.count), into: &out)
        put(UInt16(keyBytes.count), into: &out)
        out += keyBytes
        put(UInt16(sha.count), into: &out)
        out += sha
        put(UInt32(clamping: e.width), into: &out)
        put(UInt32(clamping: e.height), into: &out)
        out.append(UInt8(format.count))
        out += format
        e.vector.withUnsafeBytes { raw in
            for f in raw.bindMemory(to: UInt32.self) { put(UInt32(littleEndian: f.littleEndian), into: &out) }
        }
        return out
    }

    /// The embedding, or `nil` when `bytes` is not a value of this model key and dimension, or
    /// its vector breaks ``VectorRule`` (so a poisoned value is never served).
    public static func decode(_ bytes: [UInt8], key: ModelKey, dimension: Int) -> CachedEmbedding? {
        var r = Reader(bytes: bytes)
        guard r.take(4).map(Array.init) == magic, let dim = r.u32(), Int(dim) == dimension,
            let keyLength = r.u16(), let k = r.take(Int(keyLength)), k.elementsEqual(keyText(key).utf8),
            let shaLength = r.u16(), let sha = r.take(Int(shaLength)),
            let width = r.u32(), let height = r.u32(),
            let formatLength = r.u8(), let format = r.take(Int(formatLength)),
            r.remaining == 4 * dimension
        else { return nil }
        var vector = [Float](repeating: 0, count: dimension)
        let start = r.offset
        vector.withUnsafeMutableBytes { out in
            bytes.withUnsafeBytes { raw in
                out.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[start..<(start + 4 * dimension)]))
            }
        }
        #if _endian(big)
        vector = vector.map { Float(bitPattern: UInt32(littleEndian: $0.bitPattern)) }
        #endif
        guard VectorRule.problem(vector, dimension: dimension) == nil else { return nil }
        return CachedEmbedding(
            vector: vector, imageSHA256: String(decoding: sha, as: UTF8.self),
            format: String(decoding: format, as: UTF8.self), width: Int(width), height: Int(height))
    }

    static func keyText(_ key: ModelKey) -> String { "\(key.modelID)|\(key.preprocessing)" }

    private static func put<T: FixedWidthInteger>(_ v: T, into out: inout [UInt8]) {
        withUnsafeBytes(of: v.littleEndian) { out += $0 }
    }

    private struct Reader {
        let bytes: [UInt8]
        var offset = 0
        var remaining: Int { bytes.count - offset }
        mutating func take(_ n: Int) -> ArraySlice<UInt8>? {
            guard n >= 0, remaining >= n else { return nil }
            defer { offset += n }
            return bytes[offset..<(offset + n)]
        }
        mutating func u8() -> UInt8? { take(1).map { $0.first! } }
        mutating func u16() -> UInt16? { take(2).map { s in UInt16(s.first!) | UInt16(s.last!) << 8 } }
        mutating func u32() -> UInt32? {
            take(4).map { s in s.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) } }
        }
    }
}

/// Where EwallML's keys live, following the platform's `{domain}:{entity}:{id}` convention.
/// Every key is listed in docs/store-and-keys.md ("Redis keys").
public enum RedisKeys {
    /// The embedding cache: one vector per image bytes and model key (string, TTL = the cache TTL).
    public static func embedding(_ key: ModelKey, sha256: String) -> String {
        "embedding:vector:\(key.modelID):\(key.preprocessing):\(sha256)"
    }
    /// The per-product view the platform reads (hash: field `{model_id}|{preprocessing}`).
    public static func product(_ productID: String) -> String { "product_embedding:\(productID)" }
    /// The field of ``product(_:)`` holding the vector of one model key.
    public static func productField(_ key: ModelKey) -> String { VectorValue.keyText(key) }
    /// Fetch slots held per host (sorted set: token -> expiry in ms).
    public static func fetchSlots(_ host: String) -> String { "fetch:slots:\(host)" }
    /// Hosts paused after a 429 with Retry-After (sorted set: host -> end of pause in ms).
    public static let fetchPauses = "fetch:pauses:hosts"
    /// A shared job's status, history and lock.
    public static func batchStatus(_ job: String) -> String { "batch:status:\(job)" }
    public static func batchHistory(_ job: String) -> String { "batch:history:\(job)" }
    public static func batchLock(_ job: String) -> String { "batch:lock:\(job)" }
}

/// What the cache has done so far.
public struct CacheStatistics: Sendable, Hashable, Codable {
    public var hits = 0
    public var misses = 0
    /// Lookups and fills that got no answer from Redis (each also counts as a miss when a lookup).
    public var errors = 0
    /// Values under our keys that were not ours (wrong magic, dimension or model key, or a
    /// vector that breaks ``VectorRule``).
    public var foreign = 0
    /// Vectors written (cache fills and per-product writes).
    public var writes = 0

    public init() {}
}

/// The embedding cache: image bytes (sha256) + model key -> vector, shared by every job
/// worker and API replica through Redis, with the per-product view written through.
///
/// Never fails its caller: Redis down, slow or refusing is a miss (or a skipped write), one
/// warning from ``RedisClient``, and a count in ``statistics`` and the metrics
/// (`ewall_redis_cache_hits_total`, `..._misses_total`, `ewall_redis_errors_total`,
/// `ewall_redis_foreign_values_total`, `ewall_redis_lookup_seconds`).
public final class EmbeddingCache: Sendable {
    public let client: RedisClient
    public let key: ModelKey
    public let dimension: Int
    /// How long a cached vector and a per-product entry live (default 3,600 s: the platform's).
    public let ttl: Duration
    private let stats = Locked(CacheStatistics())
    private let hitsCounter: Counter
    private let missesCounter: Counter
    private let errorsCounter: Counter
    private let foreignCounter: Counter
    private let lookupTimer: Metrics.Timer

    public init(
        client: RedisClient, key: ModelKey, dimension: Int, ttl: Duration = .seconds(3600),
        metrics: any MetricsFactory = MetricsSystem.factory
    ) {
        self.client = client
        self.key = key
        self.dimension = dimension
        self.ttl = ttl
        hitsCounter = Counter(label: "ewall_redis_cache_hits_total", dimensions: [], factory: metrics)
        missesCounter = Counter(label: "ewall_redis_cache_misses_total", dimensions: [], factory: metrics)
        errorsCounter = Counter(label: "ewall_redis_errors_total", dimensions: [], factory: metrics)
        foreignCounter = Counter(label: "ewall_redis_foreign_values_total", dimensions: [], factory: metrics)
        lookupTimer = Metrics.Timer(
            label: "ewall_redis_lookup_seconds", dimensions: [], preferredDisplayUnit: .milliseconds,
            factory: metrics)
    }

    public var statistics: CacheStatistics { stats.withLock { $0 } }

    private var ttlMilliseconds: Int { max(1, Int(ttl.inSeconds * 1000)) }

    /// The vector made from these image bytes under this model key, or `nil` (a miss).
    public func lookup(sha256: String) async -> CachedEmbedding? {
        await lookup(sha256s: [sha256])[0]
    }

    /// Looks up many images in one round trip (`MGET`).
    public func lookup(sha256s: [String]) async -> [CachedEmbedding?] {
        if sha256s.isEmpty { return [] }
        let t0 = ContinuousClock.now
        let reply = await client.send(
            [RedisArgument("MGET")] + sha256s.map { RedisArgument(RedisKeys.embedding(key, sha256: $0)) })
        lookupTimer.recordNanoseconds(Int64((ContinuousClock.now - t0).inSeconds * 1e9))
        guard case .success(.array(let values)) = reply, values.count == sha256s.count else {
            count(misses: sha256s.count, errors: 1)
            return Array(repeating: nil, count: sha256s.count)
        }
        var hits = 0, foreign = 0
        let found: [CachedEmbedding?] = zip(values, sha256s).map { value, sha in
            guard let bytes = value.bytes else { return nil }
            guard let e = VectorValue.decode(bytes, key: key, dimension: dimension), e.imageSHA256 == sha else {
                foreign += 1
                return nil
            }
            hits += 1
            return e
        }
        count(hits: hits, misses: sha256s.count - hits, foreign: foreign)
        return found
    }

    /// Fills the cache (`SET ... PX ttl`, one round trip for all).
    public func store(_ embeddings: [CachedEmbedding]) async {
        if embeddings.isEmpty { return }
        let commands: [[RedisArgument]] = embeddings.map { e in
            [
                "SET", RedisArgument(RedisKeys.embedding(key, sha256: e.imageSHA256)),
                RedisArgument(VectorValue.encode(e, key: key)),
                "PX", RedisArgument(ttlMilliseconds),
            ]
        }
        await run(commands, writes: embeddings.count)
    }

    /// The per-product view: each product's current vector under this model key. Writes
    /// `current` (the job just stored these vectors) and deletes the entries of `replaced`
    /// (products whose photo changed but has no vector now), so nothing reads a vector of a
    /// photo that was replaced. The whole key expires after ``ttl`` unless written again.
    public func writeProducts(current: [(productID: String, embedding: CachedEmbedding)], replaced: [String]) async {
        let field = RedisArgument(RedisKeys.productField(key))
        var commands: [[RedisArgument]] = []
        for (id, e) in current {
            commands.append([
                "EVAL", RedisArgument(Self.writeProductScript), "1", RedisArgument(RedisKeys.product(id)), field,
                RedisArgument(VectorValue.encode(e, key: key)), RedisArgument(ttlMilliseconds),
            ])
        }
        for id in replaced {
            commands.append([
                "EVAL", RedisArgument(Self.deleteProductScript), "1", RedisArgument(RedisKeys.product(id)), field,
            ])
        }
        if commands.isEmpty { return }
        switch await client.pipeline(commands) {
        case .success(let replies):
            // A key that held something else than our hash (the platform's older plain value)
            // was replaced or deleted: counted as foreign.
            let foreign = replies.filter { $0.integer == 1 }.count
            count(foreign: foreign, writes: current.count)
        case .failure:
            count(errors: 1)
        }
    }

    /// HSET + PEXPIRE on a product's hash; a key of another type (not ours) is deleted first.
    /// Returns 1 when it replaced such a key, else 0.
    static let writeProductScript = """
        local foreign = 0
        local t = redis.call('TYPE', KEYS[1])['ok']
        if t ~= 'none' and t ~= 'hash' then redis.call('DEL', KEYS[1]); foreign = 1 end
        redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('PEXPIRE', KEYS[1], ARGV[3])
        return foreign
        """

    /// HDEL of this model key's field; a key of another type (not ours) is deleted whole.
    /// Returns 1 when it deleted such a key, else 0.
    static let deleteProductScript = """
        local t = redis.call('TYPE', KEYS[1])['ok']
        if t == 'hash' then redis.call('HDEL', KEYS[1], ARGV[1]); return 0 end
        if t ~= 'none' then redis.call('DEL', KEYS[1]); return 1 end
        return 0
        """

    /// A product's current vector under this model key, as the platform would read it.
    public func product(_ productID: String) async -> CachedEmbedding? {
        guard
            case .success(.string(let bytes)) = await client.send([
                "HGET", RedisArgument(RedisKeys.product(productID)),
                RedisArgument(RedisKeys.productField(key)),
            ])
        else { return nil }
        return VectorValue.decode(bytes, key: key, dimension: dimension)
    }

    private func run(_ commands: [[RedisArgument]], writes: Int) async {
        switch await client.pipeline(commands) {
        case .success(let replies):
            let refused = replies.filter { if case .error = $0 { return true } else { return false } }.count
            count(errors: refused > 0 ? 1 : 0, writes: writes)
        case .failure:
            count(errors: 1)
        }
    }

    private func count(hits: Int = 0, misses: Int = 0, errors: Int = 0, foreign: Int = 0, writes: Int = 0) {
        stats.withLock {
            $0.hits += hits
            $0.misses += misses
            $0.errors += errors
            $0.foreign += foreign
            $0.writes += writes
        }
        if hits > 0 { hitsCounter.increment(by: hits) }
        if misses > 0 { missesCounter.increment(by: misses) }
        if errors > 0 { errorsCounter.increment(by: errors) }
        if foreign > 0 { foreignCounter.increment(by: foreign) }
    }
}
