import CLibPQ
import EwallCore
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// Why `ewall sync` cannot follow the source, or what went wrong on the way: a stable code, a
/// message that names what is missing and the statement or setting that fixes it.
public struct SyncError: EwallFailure, Hashable {
    public enum Code: String, Sendable {
        /// The source database cannot be reached or refused the connection.
        case sourceUnavailable = "source_unavailable"
        /// `wal_level` is not `logical`.
        case walLevel = "wal_level_not_logical"
        /// The role may not replicate (no `REPLICATION` attribute).
        case noReplication = "role_cannot_replicate"
        /// The table, or a mapped column, does not exist.
        case noTable = "source_table_missing"
        case noColumn = "source_column_missing"
        /// The product id column is not what the table's replica identity sends on delete.
        case replicaIdentity = "replica_identity"
        /// The role may not create or change the publication.
        case publication = "publication_denied"
        /// The mapping or the row filter is malformed.
        case invalidMapping = "invalid_mapping"
        /// The replication slot was dropped or invalidated (WAL removed under it).
        case slotLost = "slot_lost"
        /// The replication stream said something we do not understand.
        case protocolError = "replication_protocol"
        /// A query on the source failed.
        case queryFailed = "source_query_failed"
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }
    public var failureCode: String { code.rawValue }
    public var kind: FailureKind {
        switch code {
        case .sourceUnavailable, .slotLost, .queryFailed, .protocolError: .unavailable
        case .walLevel, .noReplication, .noTable, .noColumn, .replicaIdentity, .publication, .invalidMapping:
            .invalidRequest
        }
    }
}

/// A libpq connection to the source: a plain one (checks, the publication, the snapshot) or a
/// replication one (`replication=database`: the slot and the change stream, which postgres-nio
/// does not speak). Calls block: the sync runs them on a thread of its own.
///
/// Safe because: one task owns a connection and calls it one call at a time (the sync's loop);
/// `conn` is never touched concurrently, and it is only freed in deinit.
final class SourceConnection: @unchecked Sendable {
    private let conn: OpaquePointer
    /// The source's URL without its password, for messages.
    let shown: String

    /// A result: column names, then rows of text values (nil for NULL).
    struct Rows {
        var columns: [String]
        var rows: [[String?]]

        func value(_ row: Int, _ column: String) -> String? {
            guard row < rows.count, let c = columns.firstIndex(of: column) else { return nil }
            return rows[row][c]
        }
    }

    init(url: String, replication: Bool) throws(SyncError) {
        shown = Self.redacted(url)
        var keys = ["dbname", "application_name", "connect_timeout"]
        var values = [url, "ewall-sync", "10"]
        if replication {
            keys.append("replication")
            values.append("database")
        }
        let cKeys = keys.map { strdup($0) } + [nil]
        let cValues = values.map { strdup($0) } + [nil]
        defer {
            cKeys.forEach { free($0) }
            cValues.forEach { free($0) }
        }
        let c = cKeys.map { UnsafePointer($0) }.withUnsafeBufferPointer { k in
            cValues.map { UnsafePointer($0) }.withUnsafeBufferPointer { v in
                PQconnectdbParams(k.baseAddress, v.baseAddress, 1)
            }
        }
        guard let c else { throw SyncError(.sourceUnavailable, "cannot connect to \(shown): out of memory") }
        guard PQstatus(c) == CONNECTION_OK else {
            let why = String(cString: PQerrorMessage(c)).trimmingCharacters(in: .whitespacesAndNewlines)
            PQfinish(c)
            if replication && why.contains("replication") {
                throw SyncError(
                    .noReplication,
                    "\(shown) refused a replication connection: \(why). Give the role the REPLICATION "
                        + "attribute (ALTER ROLE name REPLICATION) and allow it in pg_hba.conf "
                        + "(host <database> <role> <address> ... for a logical replication connection)")
            }
            throw SyncError(.sourceUnavailable, "cannot connect to \(shown): \(why)")
        }
        conn = c
    }

    deinit { PQfinish(conn) }

    /// `postgres://user:secret@host/db` -> `postgres://user@host/db`.
    static func redacted(_ url: String) -> String {
        guard let at = url.firstIndex(of: "@"), let scheme = url.range(of: "://"), scheme.upperBound < at else {
            return url
        }
        let userinfo = url[scheme.upperBound..<at]
        let user = userinfo.split(separator: ":", maxSplits: 1).first.map(String.init) ?? ""
        return String(url[..<scheme.upperBound]) + user + String(url[at...])
    }

    /// Runs one statement (text parameters `$1...`); its rows, or an error carrying the
    /// server's SQLSTATE.
    @discardableResult
    func query(_ sql: String, _ params: [String?] = []) throws(QueryFailure) -> Rows {
        let result: OpaquePointer?
        if params.isEmpty {
            result = PQexec(conn, sql)
        } else {
            let cParams = params.map { $0.map { strdup($0) } ?? nil }
            defer { cParams.forEach { free($0) } }
            result = cParams.map { UnsafePointer($0) }.withUnsafeBufferPointer { p in
                PQexecParams(conn, sql, Int32(params.count), nil, p.baseAddress, nil, nil, 0)
            }
        }
        guard let result else { throw QueryFailure(state: nil, message: lastError) }
        defer { PQclear(result) }
        let status = PQresultStatus(result)
        guard status == PGRES_TUPLES_OK || status == PGRES_COMMAND_OK else {
            // A lost connection has no SQLSTATE from the server: say so (class 08).
            let state =
                PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
                ?? (PQstatus(conn) != CONNECTION_OK ? "08006" : nil)
            let message = PQresultErrorMessage(result).map { String(cString: $0) } ?? lastError
            throw QueryFailure(state: state, message: message.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        var rows = Rows(columns: [], rows: [])
        let nf = PQnfields(result)
        let nt = PQntuples(result)
        rows.columns = (0..<nf).map { String(cString: PQfname(result, $0)) }
        rows.rows.reserveCapacity(Int(nt))
        for r in 0..<nt {
            rows.rows.append(
                (0..<nf).map { f in
                    PQgetisnull(result, r, f) == 1 ? nil : String(cString: PQgetvalue(result, r, f))
                })
        }
        return rows
    }

    struct QueryFailure: Error, CustomStringConvertible {
        var state: String?
        var message: String
        var description: String { message }
        /// The connection went away or the server is shutting down: worth reconnecting.
        var isConnectionLost: Bool { state.map { $0.hasPrefix("08") || $0.hasPrefix("57P") } ?? false }
    }

    var lastError: String {
        String(cString: PQerrorMessage(conn)).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts a CopyBoth stream (`START_REPLICATION ...`).
    func startCopyBoth(_ sql: String) throws(QueryFailure) {
        guard let result = PQexec(conn, sql) else { throw QueryFailure(state: nil, message: lastError) }
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_COPY_BOTH else {
            let state = PQresultErrorField(result, Int32(UInt8(ascii: "C"))).map { String(cString: $0) }
            let message = PQresultErrorMessage(result).map { String(cString: $0) } ?? lastError
            throw QueryFailure(state: state, message: message.trimmingCharacters(in: .whitespacesAndNewlines))
        }
    }

    /// What ``read(timeout:)`` found.
    enum CopyRead {
        case data([UInt8])
        case timeout
        case ended
    }

    /// The next CopyData message of the stream, waiting at most `timeout` seconds.
    func read(timeout: Double) throws(SyncError) -> CopyRead {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            var buffer: UnsafeMutablePointer<CChar>?
            let n = PQgetCopyData(conn, &buffer, 1)
            if n > 0, let buffer {
                defer { PQfreemem(buffer) }
                return .data(
                    [UInt8](UnsafeRawBufferPointer(start: UnsafeRawPointer(buffer), count: Int(n))))
            }
            if n == -1 {
                // The stream ended: collect the result that says why.
                var why = ""
                while let r = PQgetResult(conn) {
                    if PQresultStatus(r) != PGRES_COMMAND_OK, let m = PQresultErrorMessage(r) {
                        why += String(cString: m)
                    }
                    PQclear(r)
                }
                if why.isEmpty { return .ended }
                throw SyncError(.sourceUnavailable, "the replication stream from \(shown) ended: \(why)")
            }
            if n == -2 { throw SyncError(.sourceUnavailable, "reading the replication stream: \(lastError)") }
            let left = deadline.timeIntervalSinceNow
            if left <= 0 { return .timeout }
            var fds = pollfd(fd: PQsocket(conn), events: Int16(POLLIN), revents: 0)
            let ready = poll(&fds, 1, Int32(max(1, min(left, 1) * 1000)))
            if ready < 0 && errno != EINTR {
                throw SyncError(
                    .sourceUnavailable, "waiting for the replication stream: \(String(cString: strerror(errno)))")
            }
            if ready > 0 && PQconsumeInput(conn) == 0 {
                throw SyncError(.sourceUnavailable, "reading the replication stream: \(lastError)")
            }
        }
    }

    /// Sends one CopyData message (a standby status update) and flushes it.
    func send(_ bytes: [UInt8]) throws(SyncError) {
        let ok = bytes.withUnsafeBufferPointer { b in
            b.baseAddress!.withMemoryRebound(to: CChar.self, capacity: b.count) {
                PQputCopyData(conn, $0, Int32(b.count))
            }
        }
        guard ok == 1, PQflush(conn) == 0 else {
            throw SyncError(.sourceUnavailable, "writing to the replication stream: \(lastError)")
        }
    }

    /// A string as an SQL literal ('...' with quotes doubled).
    static func literal(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "''") + "'" }

    /// A name as an SQL identifier ("..." with quotes doubled).
    static func identifier(_ s: String) -> String { "\"" + s.replacingOccurrences(of: "\"", with: "\"\"") + "\"" }
}
