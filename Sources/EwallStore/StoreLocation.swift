import EwallCore
import Foundation
import Logging

/// A store URL: `sqlite:PATH` (relative or absolute; `sqlite:///abs/path` too) or
/// `postgres://user:password@host:port/database` (`postgresql://` also accepted).
public enum StoreLocation: Sendable, Hashable, CustomStringConvertible {
    case sqlite(path: String)
    case postgres(host: String, port: Int, user: String, password: String?, database: String)

    /// The embedded default.
    public static let defaultURL = "sqlite:data/ewall.sqlite"

    public init(parsing text: String) throws {
        if text.hasPrefix("sqlite:") {
            var path = String(text.dropFirst("sqlite:".count))
            if path.hasPrefix("//") { path = String(path.dropFirst(2)) }
            guard !path.isEmpty else { throw StoreError(.invalidURL, "'\(text)' names no file: use sqlite:PATH") }
            self = .sqlite(path: path)
            return
        }
        if text.hasPrefix("postgres://") || text.hasPrefix("postgresql://") {
            guard let c = URLComponents(string: text), let host = c.host, !host.isEmpty else {
                throw StoreError(.invalidURL, "'\(Self.redact(text))' is not a valid postgres:// URL")
            }
            let db = c.path.hasPrefix("/") ? String(c.path.dropFirst()) : c.path
            self = .postgres(
                host: host, port: c.port ?? 5432, user: c.user ?? "postgres",
                password: c.password, database: db.isEmpty ? (c.user ?? "postgres") : db)
            return
        }
        throw StoreError(
            .invalidURL,
            "'\(Self.redact(text))' is not a store URL: use sqlite:PATH or postgres://user@host:port/db")
    }

    /// Without the password.
    public var description: String {
        switch self {
        case .sqlite(let path): return "sqlite:\(path)"
        case .postgres(let host, let port, let user, _, let db): return "postgres://\(user)@\(host):\(port)/\(db)"
        }
    }

    static func redact(_ text: String) -> String {
        guard var c = URLComponents(string: text), c.password != nil else { return text }
        c.password = "***"
        return c.string ?? text
    }

    /// Opens (and creates or migrates) the store. A PostgreSQL server that does not answer
    /// within `connectTimeout` is a ``StoreError/Code/unavailable`` error.
    public func open(
        connectTimeout: Duration = .seconds(10),
        logger: Logger = Logger(label: "ewall.store")
    ) async throws -> any EmbeddingStore {
        switch self {
        case .sqlite(let path):
            return try await SQLiteStore.open(path: path)
        case .postgres(let host, let port, let user, let password, let database):
            return try await PostgresStore.open(
                host: host, port: port, user: user, password: password,
                database: database, connectTimeout: connectTimeout, logger: logger)
        }
    }
}
