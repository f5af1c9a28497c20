import EwallStore
import Foundation
import Testing

/// Which store a test runs against: both must behave the same.
public enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case sqlite, postgres
    public var testDescription: String { rawValue }

    /// A fresh, empty store: a new SQLite file in a temporary folder, or a new database on
    /// the test PostgreSQL server (``PostgresServer``).
    public func open() async throws -> any EmbeddingStore {
        try await StoreLocation(parsing: try await freshURL()).open()
    }

    public func freshURL() async throws -> String {
        switch self {
        case .sqlite:
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ewall-store-\(UUID().uuidString)")
            return "sqlite:\(dir.path)/e.sqlite"
        case .postgres:
            return try await PostgresServer.freshDatabase()
        }
    }
}
