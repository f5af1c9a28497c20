import EwallStore
import Foundation

/// Catalogue changes written into a store as `ewall sync` writes them: each ``apply(_:)`` is one
/// source transaction, recorded at the next source position (the change feed's order).
public final class SourceTransactions {
    public let store: any CatalogueStore
    /// The source position of the last transaction applied.
    public private(set) var position: UInt64

    public init(store: any CatalogueStore, position: UInt64 = 0) {
        self.store = store
        self.position = position
    }

    /// Applies `changes` as the next source transaction; returns the rows it stored.
    @discardableResult
    public func apply(_ changes: [CatalogueChange]) async throws -> [CatalogueRow] {
        position += 1
        return try await store.applyCatalogue(
            changes,
            state: SyncState(
                name: "t", source: "t", slot: "t", position: position, commitTime: Date(), updatedAt: Date()))
    }
}
