import EwallClassifier
import EwallCore
import EwallRedis
import Foundation

/// The platform's gift keys in Redis, for one company:
///
/// - `gift:rules:{company_id}`: the rules (the same JSON as `data/gift_rules.json`), read when
///   present; a value that is not such rules is refused (field and reason), counted, left alone,
///   and the rules in force stay in force.
/// - `gift:master:{company_id}`: the registered gift list, a Redis set of product ids or codes, or
///   a JSON array of them.
/// - `gift:classification:{product_code}:{company_id}`: one result, JSON with the platform's
///   fields (`product_type`, `gift_type`, `classification_reason`, `is_revenue`,
///   `revenue_impact`, `classified_at`) and ours (`decided_by`, `rules_version`, `rules_sha256`,
///   `source: "ewall"`), TTL 4 h. A value there that is not ours (no `"source":"ewall"`) is left
///   alone and counted.
/// - `ewall:gift:rules_sha256:{company_id}`: the digest of the rules our results were made with;
///   when the rules change, our results made with other rules are deleted (``invalidateStale(rules:)``).
public final class GiftKeys: Sendable {
    public let client: RedisClient
    public let companyID: Int
    /// The results' time to live (the platform's: 4 h).
    public let ttl: Duration
    private let counts = Locked(Counts())

    /// What the keys saw.
    public struct Counts: Sendable, Hashable {
        /// Values that are not ours: left alone.
        public var foreign = 0
        /// Results written.
        public var written = 0
        /// Our results deleted because the rules changed.
        public var invalidated = 0
        /// Commands that got no answer.
        public var errors = 0
    }

    public static let defaultTTL: Duration = .seconds(4 * 3600)

    public init(client: RedisClient, companyID: Int, ttl: Duration = GiftKeys.defaultTTL) {
        self.client = client
        self.companyID = companyID
        self.ttl = ttl
    }

    public var stats: Counts { counts.withLock { $0 } }

    public static func rulesKey(_ company: Int) -> String { "gift:rules:\(company)" }
    public static func masterKey(_ company: Int) -> String { "gift:master:\(company)" }
    public static func resultKey(productCode: String, company: Int) -> String {
        "gift:classification:\(productCode):\(company)"
    }
    public static func rulesDigestKey(_ company: Int) -> String { "ewall:gift:rules_sha256:\(company)" }

    /// Puts the company's rules from Redis in force in `book` when the key holds some. Returns
    /// what happened: `nil` when the key is absent (the file rules stay), or a line saying the
    /// rules were read, or why the value was refused (the rules in force stay).
    public func loadRules(into book: GiftRuleBook) async -> String? {
        let key = Self.rulesKey(companyID)
        switch await client.send(["GET", RedisArgument(key)]) {
        case .success(.null):
            return nil
        case .success(.string(let bytes)):
            do {
                try book.replace(data: Data(bytes), source: "redis \(key)")
                return "rules \(book.current.version) from \(key)"
            } catch let e as ClassifierError {
                count { $0.foreign += 1 }
                return e.message
            } catch {
                count { $0.foreign += 1 }
                return "\(key): \(error)"
            }
        case .success(.error):
            // WRONGTYPE: a key of another type, not rules.
            count { $0.foreign += 1 }
            return "\(key) is not a string value: not rules; the rules in force stay in force"
        case .success:
            count { $0.foreign += 1 }
            return "\(key) holds an unexpected reply; the rules in force stay in force"
        case .failure(let f):
            count { $0.errors += 1 }
            return "\(key) could not be read (\(f)); the rules in force stay in force"
        }
    }

    /// The registered gift list: a set's members, or a JSON array of strings; `nil` when absent,
    /// unreadable or not ours (counted).
    public func master() async -> [String]? {
        let key = Self.masterKey(companyID)
        guard case .success(.status(let type)) = await client.send(["TYPE", RedisArgument(key)]) else {
            count { $0.errors += 1 }
            return nil
        }
        switch type {
        case "none": return nil
        case "set":
            guard case .success(.array(let members)) = await client.send(["SMEMBERS", RedisArgument(key)]) else {
                return nil
            }
            return members.compactMap { $0.bytes.map { String(decoding: $0, as: UTF8.self) } }.sorted()
        case "string":
            guard case .success(.string(let bytes)) = await client.send(["GET", RedisArgument(key)]),
                let ids = try? JSONDecoder().decode([String].self, from: Data(bytes))
            else {
                count { $0.foreign += 1 }
                return nil
            }
            return ids
        default:
            count { $0.foreign += 1 }
            return nil
        }
    }

    /// One result as the platform reads it.
    public struct Entry: Sendable, Codable, Hashable {
        public var productType: String
        public var giftType: String?
        public var classificationReason: String
        public var isRevenue: Bool
        /// The revenue the product counts for: 0 for a gift left out of revenue, else its price.
        public var revenueImpact: Double
        public var classifiedAt: String
        public var decidedBy: String
        public var rulesVersion: String
        public var rulesSHA256: String
        public var source: String

        enum CodingKeys: String, CodingKey {
            case productType = "product_type", giftType = "gift_type", classificationReason = "classification_reason"
            case isRevenue = "is_revenue", revenueImpact = "revenue_impact", classifiedAt = "classified_at"
            case decidedBy = "decided_by", rulesVersion = "rules_version", rulesSHA256 = "rules_sha256", source
        }

        /// Every field present: `gift_type` is null for a product, as the platform writes it.
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(productType, forKey: .productType)
            try c.encode(giftType, forKey: .giftType)
            try c.encode(classificationReason, forKey: .classificationReason)
            try c.encode(isRevenue, forKey: .isRevenue)
            try c.encode(revenueImpact, forKey: .revenueImpact)
            try c.encode(classifiedAt, forKey: .classifiedAt)
            try c.encode(decidedBy, forKey: .decidedBy)
            try c.encode(rulesVersion, forKey: .rulesVersion)
            try c.encode(rulesSHA256, forKey: .rulesSHA256)
            try c.encode(source, forKey: .source)
        }

        public init(_ d: GiftDecision, price: Double?, rules: GiftRules, at: Date) {
            productType = d.productType
            giftType = d.giftType
            classificationReason = d.classificationReason
            isRevenue = d.isRevenue
            revenueImpact = d.isRevenue ? (price ?? 0) : 0
            classifiedAt = at.ISO8601Format()
            decidedBy = d.decidedBy.rawValue
            rulesVersion = rules.version
            rulesSHA256 = rules.sha256
            source = "ewall"
        }
    }

    /// Writes results (`SET ... PX 4h` unless the key holds a value that is not ours, which is
    /// left alone and counted), in one round trip.
    public func write(_ results: [(productCode: String, result: Entry)]) async {
        if results.isEmpty { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let ttlMs = Int(ttl.inSeconds * 1000)
        let commands: [[RedisArgument]] = results.compactMap { code, r in
            guard let json = try? encoder.encode(r) else { return nil }
            return [
                "EVAL", RedisArgument(Self.writeScript), "1",
                RedisArgument(Self.resultKey(productCode: code, company: companyID)), RedisArgument([UInt8](json)),
                RedisArgument(ttlMs),
            ]
        }
        switch await client.pipeline(commands) {
        case .success(let replies):
            let foreign = replies.filter { $0.integer == 1 }.count
            count {
                $0.foreign += foreign
                $0.written += replies.filter { $0.integer == 0 }.count
            }
        case .failure:
            count { $0.errors += 1 }
        }
    }

    /// A result, when the key holds one of ours.
    public func result(productCode: String) async -> Entry? {
        guard
            case .success(.string(let bytes)) = await client.send([
                "GET", RedisArgument(Self.resultKey(productCode: productCode, company: companyID)),
            ]), let r = try? JSONDecoder().decode(Entry.self, from: Data(bytes)), r.source == "ewall"
        else { return nil }
        return r
    }

    /// When the rules differ from those our results were last made with, deletes our results made
    /// with other rules (values not ours are left alone) and records the new digest. Returns how
    /// many were deleted.
    @discardableResult
    public func invalidateStale(rules: GiftRules) async -> Int {
        let digestKey = RedisArgument(Self.rulesDigestKey(companyID))
        if case .success(.string(let b)) = await client.send(["GET", digestKey]),
            String(decoding: b, as: UTF8.self) == rules.sha256
        {
            return 0
        }
        var deleted = 0
        var cursor = "0"
        repeat {
            guard
                case .success(.array(let reply)) = await client.send([
                    "SCAN", RedisArgument(cursor), "MATCH", RedisArgument("gift:classification:*:\(companyID)"),
                    "COUNT", "1000",
                ]), reply.count == 2, let next = reply[0].bytes, let keys = reply[1].array
            else {
                count { $0.errors += 1 }
                return deleted
            }
            cursor = String(decoding: next, as: UTF8.self)
            let commands: [[RedisArgument]] = keys.compactMap { k in
                k.bytes.map {
                    [
                        "EVAL", RedisArgument(Self.deleteStaleScript), "1", RedisArgument($0),
                        RedisArgument(rules.sha256),
                    ]
                }
            }
            if !commands.isEmpty, case .success(let replies) = await client.pipeline(commands) {
                deleted += replies.filter { $0.integer == 1 }.count
            }
        } while cursor != "0"
        _ = await client.send(["SET", digestKey, RedisArgument(rules.sha256)])
        count { $0.invalidated += deleted }
        return deleted
    }

    /// SET unless the key holds a value that is not ours. 1: left alone (not ours), 0: written.
    static let writeScript = """
        local t = redis.call('TYPE', KEYS[1])['ok']
        if t ~= 'none' then
          if t ~= 'string' then return 1 end
          local v = redis.call('GET', KEYS[1])
          if not string.find(v, '"source":"ewall"', 1, true) then return 1 end
        end
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        return 0
        """

    /// DEL when the key holds our result made with other rules. 1: deleted.
    static let deleteStaleScript = """
        if redis.call('TYPE', KEYS[1])['ok'] ~= 'string' then return 0 end
        local v = redis.call('GET', KEYS[1])
        if not string.find(v, '"source":"ewall"', 1, true) then return 0 end
        if string.find(v, '"rules_sha256":"' .. ARGV[1] .. '"', 1, true) then return 0 end
        redis.call('DEL', KEYS[1])
        return 1
        """

    private func count(_ change: (inout Counts) -> Void) { counts.withLock { change(&$0) } }
}
