import EwallClassifier
import EwallCore
import EwallStore
import Foundation
import Logging

/// What `ewall sync` follows and how.
public struct SyncConfiguration: Sendable {
    /// `postgres://...` of the platform's database.
    public var source: String
    public var table: SourceTable
    public var map: ColumnMap
    /// A row filter (SQL over the mapped columns, e.g. `is_active`), put in the publication:
    /// a row that stops matching is removed as a delete would remove it.
    public var filter: String?
    /// The replication slot, the publication and the sync's name in our store.
    public var slot: String
    /// Changes applied in one store transaction at most.
    public var maxBatch = 2000
    /// How long received changes may wait to be batched with more.
    public var batchWait: Duration = .milliseconds(50)
    /// How often the slot hears our position when nothing happens.
    public var statusInterval: Duration = .seconds(10)
    /// The gift detector's rule steps (registered list, zero price, words) run on every row
    /// that arrives, and its flag is stored before the row, so replicas leave a new gift out of
    /// similar products as soon as they see the row. nil: no gift flags (the picture step needs
    /// vectors: `ewall gifts --apply` runs it over the store).
    public var gifts: GiftDetector?

    public init(
        source: String, table: SourceTable, map: ColumnMap = ColumnMap(), filter: String? = nil, slot: String? = nil
    ) {
        self.source = source
        self.table = table
        self.map = map
        self.filter = filter
        self.slot = slot ?? Self.defaultSlot(for: table)
    }

    /// `ewall_<schema>_<table>`, lower-case letters, digits and `_` only (a slot name's rule).
    public static func defaultSlot(for table: SourceTable) -> String {
        let raw = "ewall_\(table.schema)_\(table.name)".lowercased()
        return String(
            raw.unicodeScalars.map { ($0.isASCII && (CharacterSet.alphanumerics.contains($0))) ? Character($0) : "_" }
                .prefix(63))
    }
}

/// How a run went, for the log and the tests.
public struct SyncProgress: Sendable {
    /// Rows the snapshot wrote (0 when the run resumed from its slot).
    public var snapshotRows = 0
    /// Whether this run started from a fresh snapshot, and why.
    public var freshSnapshot: String?
    public var transactions = 0
    public var changes = 0
    /// The last applied position.
    public var position = LSN.zero
    /// Times the source or the store went away and was reconnected to.
    public var reconnects = 0
}

/// Follows the platform's product table into our store, by logical decoding (`pgoutput`):
/// a snapshot consistent with a replication slot of its own, then every committed change in
/// commit order. A change is applied, with the log position it was committed at, in the same
/// store transaction that records that position; only then does the slot hear that position
/// (so the source may drop the WAL before it, and a restart resumes after it). Replaying a
/// change is harmless: a restart starts from the recorded position, and the server resends at
/// most what was not confirmed.
///
/// Rows whose image is new or changed go to `onRowsToEmbed` after they are stored; the ids of
/// products deleted or unlisted go to `onRowsRemoved` (the CLI deletes their
/// `product_embedding:{id}` entries in Redis).
public final class CatalogueSync: Sendable {
    public let configuration: SyncConfiguration
    private let store: any CatalogueStore
    private let logger: Logger
    private let onRowsToEmbed: @Sendable ([CatalogueRow]) async -> Void
    private let onRowsRemoved: @Sendable ([String]) async -> Void
    private let worker = BlockingWorker(name: "ewall-sync-source")
    private let stopped = Locked(false)
    private let progressValue = Locked(SyncProgress())

    public init(
        configuration: SyncConfiguration, store: any CatalogueStore, logger: Logger = Logger(label: "ewall.sync"),
        onRowsRemoved: @escaping @Sendable ([String]) async -> Void = { _ in },
        onRowsToEmbed: @escaping @Sendable ([CatalogueRow]) async -> Void = { _ in }
    ) {
        self.configuration = configuration
        self.store = store
        self.logger = logger
        self.onRowsRemoved = onRowsRemoved
        self.onRowsToEmbed = onRowsToEmbed
    }

    /// The products `changes` delete or unlist.
    static func removed(_ changes: [CatalogueChange]) -> [String] {
        changes.compactMap { change in
            switch change {
            case .delete(let id): id
            case .upsert(let r): r.listed == false ? r.product.id : nil
            }
        }
    }

    /// Asks ``run()`` to return after the changes it holds are applied and confirmed.
    public func stop() { stopped.withLock { $0 = true } }
    private var isStopped: Bool { stopped.withLock { $0 } }

    public var progress: SyncProgress { progressValue.withLock { $0 } }

    /// The source and table, password-free.
    var sourceName: String { "\(SourceConnection.redacted(configuration.source)) \(configuration.table)" }

    /// Checks the source, creates what is missing (publication, slot), takes the snapshot when
    /// there is no position to resume from, then applies changes until ``stop()``. A source
    /// or store that goes away (a restart, a lost connection) is waited for and reconnected
    /// to, from the recorded position (backing off from 0.5 s to 30 s); a refusal (the source
    /// cannot be followed as configured) is thrown.
    public func run() async throws {
        var delay = 0.5
        while true {
            do {
                try await runOnce()
                return
            } catch let e as SyncError where e.code == .sourceUnavailable {
                guard try await wait(after: "\(e)", delay: &delay) else { return }
            } catch let e as StoreError where e.isTransient {
                guard try await wait(after: "\(e)", delay: &delay) else { return }
            }
        }
    }

    /// Waits `delay` (doubling it, up to 30 s) unless stopped; false when stopped.
    private func wait(after problem: String, delay: inout Double) async throws -> Bool {
        if isStopped { return false }
        logger.warning("\(problem): reconnecting in \(delay) s")
        progressValue.withLock { $0.reconnects += 1 }
        let until = ContinuousClock.now + .milliseconds(Int(delay * 1000))
        while ContinuousClock.now < until {
            if isStopped { return false }
            try await Task.sleep(for: .milliseconds(50))
        }
        delay = min(delay * 2, 30)
        return !isStopped
    }

    private func runOnce() async throws {
        let c = configuration
        let (plain, replication) = try await worker.run { () throws(SyncError) in
            let plain = try SourceConnection(url: c.source, replication: false)
            try SourceChecks.run(plain, table: c.table, map: c.map)
            try SourceChecks.publication(plain, name: c.slot, table: c.table, map: c.map, filter: c.filter)
            let replication = try SourceConnection(url: c.source, replication: true)
            return (plain, replication)
        }
        let slot = try await worker.run { () throws(SyncError) in
            // Slot names are the whole server's: one of this name on another database is not ours.
            let row = try SourceChecks.rows(
                plain,
                "SELECT confirmed_flush_lsn::text, COALESCE(wal_status, ''), database::text, "
                    + "(database = current_database())::text, plugin::text FROM pg_replication_slots WHERE slot_name = $1",
                [c.slot]
            ).first
            if let row, row[3] != "true" || row[4] != "pgoutput" {
                throw SyncError(
                    .invalidMapping,
                    "the replication slot \(c.slot) already exists on this server for database \(row[2] ?? "?") "
                        + "(plugin \(row[4] ?? "?")): give this sync another name with --slot")
            }
            return row
        }
        let state = try await store.syncState(name: c.slot)
        var position: LSN
        if let state, let slot, (slot[1] ?? "") != "lost" {
            position = LSN(state.position)
            logger.info("resuming \(sourceName) from \(position) (slot \(c.slot))")
        } else {
            let why: String =
                if state == nil { "no position recorded in \(store.displayName)" } else if slot == nil {
                    "the slot \(c.slot) is gone (dropped)"
                } else { "the slot \(c.slot) was invalidated (its WAL was removed)" }
            if state != nil {
                logger.warning("\(why): taking a fresh snapshot of \(sourceName)")
                try await store.resetSync(name: c.slot)
            }
            position = try await snapshot(plain: plain, replication: replication, dropExisting: slot != nil)
            progressValue.withLock { $0.freshSnapshot = why }
        }
        progressValue.withLock { $0.position = position }
        let startSQL =
            "START_REPLICATION SLOT \(SourceConnection.identifier(c.slot)) LOGICAL \(position) "
            + "(proto_version '1', publication_names \(SourceConnection.literal(SourceConnection.identifier(c.slot))))"
        try await worker.run { () throws(SyncError) in
            do { try replication.startCopyBoth(startSQL) } catch {
                throw SyncError(.sourceUnavailable, "\(startSQL): \(error)")
            }
        }
        try await stream(replication, from: position)
        withExtendedLifetime(plain) {}
    }

    /// Creates the slot with an exported snapshot and copies the table as of it; returns the
    /// slot's consistent point, where the stream starts.
    private func snapshot(
        plain: SourceConnection, replication: SourceConnection, dropExisting: Bool
    ) async throws
        -> LSN
    {
        let c = configuration
        let (point, name) = try await worker.run { () throws(SyncError) in
            if dropExisting {
                _ = try SourceChecks.rows(plain, "SELECT pg_drop_replication_slot($1)", [c.slot])
            }
            let sql =
                "CREATE_REPLICATION_SLOT \(SourceConnection.identifier(c.slot)) LOGICAL pgoutput (SNAPSHOT 'export')"
            let rows: SourceConnection.Rows
            do { rows = try replication.query(sql) } catch {
                throw SyncError(.sourceUnavailable, "\(sql): \(error)")
            }
            guard let p = rows.value(0, "consistent_point").flatMap(LSN.init), let n = rows.value(0, "snapshot_name")
            else { throw SyncError(.protocolError, "CREATE_REPLICATION_SLOT answered without a snapshot") }
            return (p, n)
        }
        logger.info("slot \(c.slot) created at \(point); copying \(c.table) as of that point")
        let columns = c.map.sourceColumns
        let select =
            "SELECT " + columns.map { SourceConnection.identifier($0) + "::text" }.joined(separator: ", ")
            + " FROM \(c.table.quoted)" + (c.filter.map { " WHERE (\($0))" } ?? "")
        try await worker.run { () throws(SyncError) in
            for sql in [
                "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
                "SET TRANSACTION SNAPSHOT \(SourceConnection.literal(name))",
                "DECLARE ewall_snapshot NO SCROLL CURSOR FOR \(select)",
            ] {
                _ = try SourceChecks.rows(plain, sql)
            }
        }
        var seen = Set<String>()
        var copied = 0
        while true {
            let rows = try await worker.run { () throws(SyncError) in
                do { return try plain.query("FETCH 2000 FROM ewall_snapshot") } catch {
                    let lost = (error as? SourceConnection.QueryFailure)?.isConnectionLost ?? false
                    throw SyncError(lost ? .sourceUnavailable : .queryFailed, "copying \(c.table): \(error)")
                }
            }
            if rows.rows.isEmpty { break }
            var changes: [CatalogueChange] = []
            for r in rows.rows {
                guard let row = c.map.row({ col in columns.firstIndex(of: col).flatMap { r[$0] } }) else { continue }
                seen.insert(row.product.id)
                changes.append(.upsert(row))
            }
            try await flagGifts(changes)
            let toEmbed = try await store.applyCatalogue(changes, state: state(point, time: nil))
            copied += changes.count
            let unlisted = Self.removed(changes)
            if !unlisted.isEmpty { await onRowsRemoved(unlisted) }
            await onRowsToEmbed(toEmbed)
        }
        try await worker.run { () throws(SyncError) in _ = try SourceChecks.rows(plain, "COMMIT") }
        // Products a previous sync wrote that the source no longer has.
        var gone: [CatalogueChange] = []
        var after: String?
        while true {
            let page = try await store.syncedProductIDs(after: after, limit: 10_000)
            gone += page.filter { !seen.contains($0) }.map { .delete(productID: $0) }
            guard page.count == 10_000 else { break }
            after = page.last
        }
        for chunk in stride(from: 0, to: gone.count, by: 2000) {
            let part = Array(gone[chunk..<min(chunk + 2000, gone.count)])
            _ = try await store.applyCatalogue(part, state: state(point, time: nil))
            await onRowsRemoved(Self.removed(part))
        }
        if copied == 0 && gone.isEmpty { _ = try await store.applyCatalogue([], state: state(point, time: nil)) }
        progressValue.withLock { $0.snapshotRows = copied }
        logger.info("snapshot of \(c.table): \(copied) rows, \(gone.count) removed; streaming from \(point)")
        return point
    }

    /// Stores the gift flags of the rows in `changes` (none without ``SyncConfiguration/gifts``).
    /// Written before the rows: a crash between the two replays the rows, which rewrites the flags.
    private func flagGifts(_ changes: [CatalogueChange]) async throws {
        guard let gifts = configuration.gifts else { return }
        let now = Date()
        let flags = changes.compactMap { change -> GiftFlag? in
            guard case .upsert(let r) = change else { return nil }
            let p = r.product
            return gifts.flag(
                gifts.decide(GiftInput(productID: p.id, title: p.title, brand: p.brand, price: p.price)), at: now)
        }
        if !flags.isEmpty { try await store.writeGiftFlags(flags) }
    }

    private func state(_ position: LSN, time: Date?) -> SyncState {
        SyncState(
            name: configuration.slot, source: sourceName, slot: configuration.slot, position: position.value,
            commitTime: time, updatedAt: Date())
    }

    /// A transaction as it arrives.
    private struct Open {
        var changes: [CatalogueChange] = []
        var time = Date()
    }

    private func stream(_ replication: SourceConnection, from start: LSN) async throws {
        let c = configuration
        var applied = start
        var relations: [UInt32: PGOutputMessage.Relation] = [:]
        var open: Open?
        var pending: [CatalogueChange] = []
        var pendingEnd: LSN?
        var pendingTime: Date?
        var pendingSince = ContinuousClock.now
        var transactions = 0
        var lastStatus = ContinuousClock.now
        var idleEnd = start

        func send(_ flushed: LSN, replyNow: Bool = false) async throws {
            let bytes = ReplicationMessage.statusUpdate(written: flushed, flushed: flushed, replyNow: replyNow)
            try await worker.run { () throws(SyncError) in try replication.send(bytes) }
            lastStatus = .now
        }

        func flush() async throws {
            guard let end = pendingEnd else { return }
            try await flagGifts(pending)
            let toEmbed = try await store.applyCatalogue(pending, state: state(end, time: pendingTime))
            let count = pending.count
            pendingEnd = nil
            applied = end
            idleEnd = max(idleEnd, end)
            progressValue.withLock {
                $0.position = end
                $0.transactions = transactions
                $0.changes += count
            }
            let removed = Self.removed(pending)
            pending.removeAll(keepingCapacity: true)
            try await send(end)
            if !removed.isEmpty { await onRowsRemoved(removed) }
            await onRowsToEmbed(toEmbed)
        }

        while true {
            if isStopped {
                try await flush()
                try await send(max(applied, open == nil ? idleEnd : applied))
                return
            }
            // While a commit is held for batching, wait no longer than the batch window has left.
            var wait = 0.2
            if pendingEnd != nil {
                let left = c.batchWait - (ContinuousClock.now - pendingSince)
                wait = max(0.001, Double(left.components.seconds) + Double(left.components.attoseconds) / 1e18)
            }
            let timeout = min(0.2, wait)
            let read = try await worker.run { () throws(SyncError) in try replication.read(timeout: timeout) }
            switch read {
            case .ended:
                try await flush()
                throw SyncError(.sourceUnavailable, "the source ended the replication stream")
            case .timeout:
                try await flush()
                if open == nil && pending.isEmpty && idleEnd > applied && ContinuousClock.now - lastStatus > .seconds(1)
                {
                    try await send(idleEnd)
                }
            case .data(let bytes):
                switch try ReplicationMessage.decode(bytes) {
                case .keepalive(let end, let replyNow):
                    if open == nil && pending.isEmpty { idleEnd = max(idleEnd, end) }
                    if replyNow { try await send(open == nil && pending.isEmpty ? max(applied, idleEnd) : applied) }
                case .xlogData(_, _, let payload):
                    switch try PGOutputMessage.decode(payload) {
                    case .begin(_, let time, _):
                        open = Open(changes: [], time: time)
                    case .relation(let r):
                        relations[r.id] = r
                    case .insert(let rel, let new):
                        if let row = try row(rel, new, old: nil, relations) { open?.changes.append(.upsert(row)) }
                    case .update(let rel, let old, let new):
                        if let r = relations[rel], isOurs(r) {
                            // The key itself changed: the old product goes, the new one comes.
                            if let old, let oldID = value(of: c.map.productID, in: old, r),
                                let row = try row(rel, new, old: nil, relations),
                                oldID != row.product.id
                            {
                                open?.changes.append(.delete(productID: oldID))
                            }
                            if let row = try row(rel, new, old: old, relations) { open?.changes.append(.upsert(row)) }
                        }
                    case .delete(let rel, let old):
                        if let r = relations[rel], isOurs(r), let id = value(of: c.map.productID, in: old, r) {
                            open?.changes.append(.delete(productID: id))
                        }
                    case .truncate(let rels):
                        if rels.contains(where: { relations[$0].map(isOurs) ?? false }) {
                            var after: String?
                            while true {
                                let page = try await store.syncedProductIDs(after: after, limit: 10_000)
                                open?.changes += page.map { .delete(productID: $0) }
                                guard page.count == 10_000 else { break }
                                after = page.last
                            }
                        }
                    case .commit(_, let end, let time):
                        defer { open = nil }
                        guard end > applied, let o = open else { break } // already applied: a replay
                        transactions += 1
                        if pending.isEmpty { pendingSince = .now }
                        pending += o.changes
                        pendingEnd = end
                        pendingTime = time
                    case .other:
                        break
                    }
                }
                if pending.count >= c.maxBatch
                    || (pendingEnd != nil && ContinuousClock.now - pendingSince >= c.batchWait)
                {
                    try await flush()
                }
            }
            if ContinuousClock.now - lastStatus > c.statusInterval {
                try await send(open == nil && pending.isEmpty ? max(applied, idleEnd) : applied)
            }
        }
    }

    private func isOurs(_ r: PGOutputMessage.Relation) -> Bool {
        r.namespace == configuration.table.schema && r.name == configuration.table.name
    }

    private func value(of column: String, in tuple: [PGOutputMessage.Value], _ r: PGOutputMessage.Relation) -> String? {
        guard let i = r.columns.firstIndex(where: { $0.name == column }), i < tuple.count,
            case .text(let v) = tuple[i]
        else { return nil }
        return v
    }

    /// A tuple of our table as a row. An unchanged TOASTed value (updates only; values over
    /// about 2 kB, far above a title or a URL) counts as absent.
    private func row(
        _ rel: UInt32, _ tuple: [PGOutputMessage.Value], old: [PGOutputMessage.Value]?,
        _ relations: [UInt32: PGOutputMessage.Relation]
    ) throws(SyncError) -> CatalogueRow? {
        guard let r = relations[rel] else {
            throw SyncError(.protocolError, "a change of relation \(rel) came before its description")
        }
        guard isOurs(r) else { return nil }
        var values: [String: String] = [:]
        for (i, col) in r.columns.enumerated() where i < tuple.count {
            if case .text(let v) = tuple[i] { values[col.name] = v }
        }
        return configuration.map.row { values[$0] }
    }
}

/// Where a sync stands: its position in our store, the slot's on the source, and the lag
/// between them (`ewall sync --status`, `/metrics`).
public struct SyncStatus: Sendable, Codable {
    public var name: String
    public var source: String
    /// The last applied commit's end, in our store.
    public var appliedPosition: String?
    public var appliedCommitTime: Date?
    /// The slot: whether it exists, is streaming now, and its WAL status (`reserved`,
    /// `extended`, `unreserved`, `lost`).
    public var slotExists: Bool
    public var slotActive: Bool
    public var walStatus: String?
    public var confirmedPosition: String?
    public var sourcePosition: String?
    /// WAL the slot holds behind the source's current position: what an unread slot costs
    /// the source's disk.
    public var lagBytes: Int64?
    /// Seconds since the last applied commit, when WAL is waiting (0 when caught up).
    public var lagSeconds: Double?
    /// Entries in our change feed.
    public var lastChangeSeq: Int64

    enum CodingKeys: String, CodingKey {
        case name, source, appliedPosition = "applied_position", appliedCommitTime = "applied_commit_time",
            slotExists = "slot_exists", slotActive = "slot_active", walStatus = "wal_status",
            confirmedPosition = "confirmed_position", sourcePosition = "source_position", lagBytes = "lag_bytes",
            lagSeconds = "lag_seconds", lastChangeSeq = "last_change_seq"
    }
}

extension CatalogueSync {
    /// Reads the status from the source and our store (no slot or publication is created).
    public static func status(_ configuration: SyncConfiguration, store: any CatalogueStore) async throws -> SyncStatus
    {
        let c = configuration
        let state = try await store.syncState(name: c.slot)
        let worker = BlockingWorker(name: "ewall-sync-status")
        let row: [String?]? = try await worker.run { () throws(SyncError) in
            let plain = try SourceConnection(url: c.source, replication: false)
            return try SourceChecks.rows(
                plain,
                """
                SELECT s.active::text, COALESCE(s.wal_status, ''), s.confirmed_flush_lsn::text, pg_current_wal_lsn()::text,
                       pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint::text
                FROM pg_replication_slots s WHERE s.slot_name = $1 AND s.database = current_database()
                """, [c.slot]
            ).first
        }
        var status = SyncStatus(
            name: c.slot, source: "\(SourceConnection.redacted(c.source)) \(c.table)",
            appliedPosition: state.map { LSN($0.position).description }, appliedCommitTime: state?.commitTime,
            slotExists: row != nil, slotActive: row?[0] == "t" || row?[0] == "true",
            walStatus: row?[1].flatMap { $0.isEmpty ? nil : $0 }, confirmedPosition: row?[2] ?? nil,
            sourcePosition: row?[3] ?? nil, lagBytes: (row?[4] ?? nil).flatMap { Int64($0) }, lagSeconds: nil,
            lastChangeSeq: try await store.lastChangeSeq())
        if let bytes = status.lagBytes, let state {
            // A slot's confirmed position trails by the last keepalive even when nothing waits.
            status.lagSeconds = bytes > 64 * 1024 ? Date().timeIntervalSince(state.commitTime ?? state.updatedAt) : 0
        }
        return status
    }
}

/// One difference between the source and our store (`ewall sync --reconcile`).
public struct SyncDifference: Sendable, Codable, Hashable {
    public enum Kind: String, Sendable, Codable {
        /// The source has it, our store does not.
        case missing
        /// Our store has it (from a sync), the source does not.
        case extra
        /// Both have it, with different values in `fields`.
        case different
    }

    public var productID: String
    public var kind: Kind
    public var fields: [String]

    enum CodingKeys: String, CodingKey { case productID = "product_id", kind, fields }
}

extension CatalogueSync {
    /// Compares the source table (as the mapping and row filter see it) with our store in one
    /// pass and returns every difference; with `apply`, repairs them in our store (rows written
    /// as the source has them, extras removed, each in the change feed so replicas follow).
    public static func reconcile(
        _ configuration: SyncConfiguration, store: any CatalogueStore, apply: Bool
    ) async throws -> [SyncDifference] {
        let c = configuration
        let worker = BlockingWorker(name: "ewall-sync-reconcile")
        let columns = c.map.sourceColumns
        let source: [String: CatalogueRow] = try await worker.run { () throws(SyncError) in
            let plain = try SourceConnection(url: c.source, replication: false)
            try SourceChecks.run(plain, table: c.table, map: c.map)
            let select =
                "SELECT " + columns.map { SourceConnection.identifier($0) + "::text" }.joined(separator: ", ")
                + " FROM \(c.table.quoted)" + (c.filter.map { " WHERE (\($0))" } ?? "")
            var out: [String: CatalogueRow] = [:]
            for r in try SourceChecks.rows(plain, select) {
                if let row = c.map.row({ col in columns.firstIndex(of: col).flatMap { r[$0] } }) {
                    out[row.product.id] = row
                }
            }
            return out
        }
        var ours = Set<String>()
        var after: String?
        while true {
            let page = try await store.syncedProductIDs(after: after, limit: 10_000)
            ours.formUnion(page)
            guard page.count == 10_000 else { break }
            after = page.last
        }
        var differences: [SyncDifference] = []
        var repairs: [CatalogueChange] = []
        let ids = Array(ours.union(source.keys)).sorted()
        for chunk in stride(from: 0, to: ids.count, by: 5_000) {
            let part = Array(ids[chunk..<min(chunk + 5_000, ids.count)])
            let stored = try await store.catalogueRows(productIDs: part.filter(ours.contains))
            for id in part {
                switch (source[id], stored[id]) {
                case (let s?, nil):
                    differences.append(SyncDifference(productID: id, kind: .missing, fields: []))
                    repairs.append(.upsert(s))
                case (nil, _?) where ours.contains(id):
                    differences.append(SyncDifference(productID: id, kind: .extra, fields: []))
                    repairs.append(.delete(productID: id))
                case (let s?, let o?):
                    let fields = Self.differing(s, o, map: c.map)
                    if !fields.isEmpty {
                        differences.append(SyncDifference(productID: id, kind: .different, fields: fields))
                        repairs.append(.upsert(s))
                    }
                default:
                    break
                }
            }
        }
        if apply && !repairs.isEmpty {
            let state =
                try await store.syncState(name: c.slot)
                ?? SyncState(
                    name: c.slot, source: "\(SourceConnection.redacted(c.source)) \(c.table)", slot: c.slot,
                    position: 0, commitTime: nil, updatedAt: Date())
            for chunk in stride(from: 0, to: repairs.count, by: 2_000) {
                _ = try await store.applyCatalogue(
                    Array(repairs[chunk..<min(chunk + 2_000, repairs.count)]), state: state)
            }
        }
        return differences
    }

    /// The mapped fields whose values differ.
    static func differing(_ a: CatalogueRow, _ b: CatalogueRow, map: ColumnMap) -> [String] {
        var out: [String] = []
        let (p, q) = (a.product, b.product)
        if map.columns["title"] != nil && p.title != q.title { out.append("title") }
        if map.columns["brand"] != nil && p.brand != q.brand { out.append("brand") }
        if map.columns["category"] != nil && p.category != q.category { out.append("category") }
        if map.columns["price"] != nil && p.price != q.price { out.append("price") }
        if map.columns["in_stock"] != nil && p.inStock != q.inStock { out.append("in_stock") }
        if a.imageURL != b.imageURL { out.append("image_url") }
        if map.columns["listed"] != nil && a.listed != b.listed { out.append("listed") }
        return out
    }
}
