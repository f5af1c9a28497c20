import EwallCore
import Foundation

/// Where admissions are kept: each store implements these beside its other methods.
public protocol PrecisionAdmissionStore: Sendable {
    /// Records (or refreshes) an admission; one row per key, made-with and CPU.
    func recordPrecisionAdmission(_ admission: PrecisionAdmission) async throws
    /// The admissions recorded under `key`, oldest first.
    func precisionAdmissions(key: ModelKey) async throws -> [PrecisionAdmission]
}

extension Schema {
    static let precisionAdmissionsSQLite = """

        CREATE TABLE IF NOT EXISTS precision_admissions (
            model_id      TEXT NOT NULL,
            preprocessing TEXT NOT NULL,
            made_with     TEXT NOT NULL,
            cpu           TEXT NOT NULL,
            figures       TEXT NOT NULL,
            recorded_at   TEXT NOT NULL,
            PRIMARY KEY (model_id, preprocessing, made_with, cpu)
        );
        """

    static let precisionAdmissionsPostgres = """

        CREATE TABLE IF NOT EXISTS precision_admissions (
            model_id      TEXT NOT NULL,
            preprocessing TEXT NOT NULL,
            made_with     TEXT NOT NULL,
            cpu           TEXT NOT NULL,
            figures       TEXT NOT NULL,
            recorded_at   TIMESTAMPTZ NOT NULL,
            PRIMARY KEY (model_id, preprocessing, made_with, cpu)
        );
        """

    static let precisionAdmissionUpdate = """
        ON CONFLICT (model_id, preprocessing, made_with, cpu) DO UPDATE SET
          figures = excluded.figures, recorded_at = excluded.recorded_at
        """
}

extension SQLiteStore {
    public func recordPrecisionAdmission(_ a: PrecisionAdmission) async throws {
        try await onWorker { c in
            try c.query(
                """
                INSERT INTO precision_admissions (model_id, preprocessing, made_with, cpu, figures, recorded_at)
                VALUES (?, ?, ?, ?, ?, ?)
                \(Schema.precisionAdmissionUpdate)
                """,
                [
                    .text(a.key.modelID), .text(a.key.preprocessing), .text(a.madeWith), .text(a.cpu), .text(a.figures),
                    .text(a.recordedAt.ISO8601Format()),
                ])
        }
    }

    public func precisionAdmissions(key: ModelKey) async throws -> [PrecisionAdmission] {
        try await onWorker { c in
            var out: [PrecisionAdmission] = []
            try c.query(
                """
                SELECT made_with, cpu, figures, recorded_at FROM precision_admissions
                WHERE model_id = ? AND preprocessing = ? ORDER BY recorded_at, made_with, cpu
                """, [.text(key.modelID), .text(key.preprocessing)]
            ) { row in
                let at = row.text(3).flatMap { try? Date($0, strategy: .iso8601) } ?? Date(timeIntervalSince1970: 0)
                out.append(
                    PrecisionAdmission(
                        key: key, madeWith: row.text(0) ?? "", cpu: row.text(1) ?? "", figures: row.text(2) ?? "",
                        recordedAt: at))
            }
            return out
        }
    }
}

extension PostgresStore {
    public func recordPrecisionAdmission(_ a: PrecisionAdmission) async throws {
        try await run("recording a precision admission") {
            _ = try await client.query(
                """
                INSERT INTO precision_admissions (model_id, preprocessing, made_with, cpu, figures, recorded_at)
                VALUES (\(a.key.modelID), \(a.key.preprocessing), \(a.madeWith), \(a.cpu), \(a.figures), \(a.recordedAt))
                \(unescaped: Schema.precisionAdmissionUpdate)
                """, logger: logger)
        }
    }

    public func precisionAdmissions(key: ModelKey) async throws -> [PrecisionAdmission] {
        try await run("reading precision admissions") {
            let rows = try await client.query(
                """
                SELECT made_with, cpu, figures, recorded_at FROM precision_admissions
                WHERE model_id = \(key.modelID) AND preprocessing = \(key.preprocessing)
                ORDER BY recorded_at, made_with, cpu
                """, logger: logger)
            var out: [PrecisionAdmission] = []
            for try await (madeWith, cpu, figures, at) in rows.decode((String, String, String, Date).self) {
                out.append(PrecisionAdmission(key: key, madeWith: madeWith, cpu: cpu, figures: figures, recordedAt: at))
            }
            return out
        }
    }
}
