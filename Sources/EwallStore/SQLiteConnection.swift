import CSQLite
import Foundation

/// A value bound to or read from a statement.
enum SQLValue {
    case null
    case int(Int64)
    case double(Double)
    case text(String)
    case blob([UInt8])
}

/// One SQLite connection and its prepared-statement cache: a thin layer over the C API.
/// Not thread-safe by itself.
///
/// Safe because: ``SQLiteStore`` creates it on its worker thread and touches it only there,
/// one call at a time; `Sendable` only lets the handle travel to that thread.
final class SQLiteConnection: @unchecked Sendable {
    private var db: OpaquePointer?
    private var cache: [String: OpaquePointer] = [:]
    let path: String

    // SQLITE_TRANSIENT: SQLite copies bound text and blobs.
    private static let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

    init(path: String) throws {
        self.path = path
        let flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK else {
            let msg = db.map { String(cString: sqlite3_errmsg($0)) } ?? "out of memory"
            sqlite3_close(db)
            db = nil
            throw StoreError(.unavailable, "cannot open SQLite database \(path): \(msg)")
        }
        sqlite3_busy_timeout(db, 10_000)
    }

    deinit {
        for stmt in cache.values { sqlite3_finalize(stmt) }
        sqlite3_close(db)
    }

    /// Runs one or more statements without results.
    func exec(_ sql: String) throws {
        var err: UnsafeMutablePointer<CChar>?
        if sqlite3_exec(db, sql, nil, nil, &err) != SQLITE_OK {
            let msg = err.map { String(cString: $0) } ?? String(cString: sqlite3_errmsg(db))
            sqlite3_free(err)
            let what = sql.split(separator: " ").first.map(String.init) ?? "statement"
            throw StoreError(
                Self.code(sqlite3_extended_errcode(db)), "SQLite \(what) failed on \(path): \(msg)",
                detail: String(sql.prefix(200)))
        }
    }

    /// Runs `sql` with `binds`, calling `row` for each result row.
    func query(_ sql: String, _ binds: [SQLValue] = [], row: ((Row) throws -> Void)? = nil) throws {
        let stmt = try prepare(sql)
        defer {
            sqlite3_reset(stmt)
            sqlite3_clear_bindings(stmt)
        }
        for (i, v) in binds.enumerated() {
            let idx = Int32(i + 1)
            let rc: Int32
            switch v {
            case .null: rc = sqlite3_bind_null(stmt, idx)
            case .int(let x): rc = sqlite3_bind_int64(stmt, idx, x)
            case .double(let x): rc = sqlite3_bind_double(stmt, idx, x)
            // The length is given, never found by strlen: the text is bound byte for byte.
            case .text(let s): rc = sqlite3_bind_text(stmt, idx, s, Int32(s.utf8.count), Self.transient)
            case .blob(let b):
                rc = b.withUnsafeBytes { sqlite3_bind_blob(stmt, idx, $0.baseAddress, Int32($0.count), Self.transient) }
            }
            guard rc == SQLITE_OK else { throw error("bind", sql) }
        }
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { return }
            guard rc == SQLITE_ROW else { throw error("step", sql) }
            try row?(Row(stmt: stmt))
        }
    }

    func transaction<T>(_ body: () throws -> T) throws -> T {
        try exec("BEGIN IMMEDIATE")
        do {
            let result = try body()
            try exec("COMMIT")
            return result
        } catch {
            try? exec("ROLLBACK")
            throw error
        }
    }

    private func prepare(_ sql: String) throws -> OpaquePointer {
        if let stmt = cache[sql] { return stmt }
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK, let stmt else { throw error("prepare", sql) }
        // Statements built for a varying number of parameters are not worth caching forever.
        if cache.count > 64 {
            for s in cache.values { sqlite3_finalize(s) }
            cache.removeAll()
        }
        cache[sql] = stmt
        return stmt
    }

    private func error(_ what: String, _ sql: String) -> StoreError {
        let msg = String(cString: sqlite3_errmsg(db))
        return StoreError(
            Self.code(sqlite3_extended_errcode(db)), "SQLite \(what) failed on \(path): \(msg)",
            detail: String(sql.prefix(200)))
    }

    /// SQLite's result code as a store error code. SQLite's own message ("database or disk is
    /// full", "attempt to write a readonly database", "database is locked") is always kept in
    /// the error's message, which is what users see.
    static func code(_ extended: Int32) -> StoreError.Code {
        switch extended & 0xFF {
        case SQLITE_FULL: return .storageFull
        case SQLITE_READONLY: return .readOnly
        case SQLITE_BUSY, SQLITE_LOCKED: return .busy
        case SQLITE_CANTOPEN, SQLITE_IOERR: return .unavailable
        default: return .queryFailed
        }
    }

    /// The current result row.
    struct Row {
        let stmt: OpaquePointer

        func isNull(_ i: Int32) -> Bool { sqlite3_column_type(stmt, i) == SQLITE_NULL }
        func int(_ i: Int32) -> Int? { isNull(i) ? nil : Int(sqlite3_column_int64(stmt, i)) }
        func double(_ i: Int32) -> Double? { isNull(i) ? nil : sqlite3_column_double(stmt, i) }
        func text(_ i: Int32) -> String? {
            guard let p = sqlite3_column_text(stmt, i) else { return nil }
            let n = Int(sqlite3_column_bytes(stmt, i))
            return String(decoding: UnsafeBufferPointer(start: p, count: n), as: UTF8.self)
        }
        func blob<T>(_ i: Int32, _ body: (UnsafeRawBufferPointer) throws -> T) rethrows -> T {
            let p = sqlite3_column_blob(stmt, i)
            let n = Int(sqlite3_column_bytes(stmt, i))
            return try body(UnsafeRawBufferPointer(start: p, count: n))
        }
    }
}
