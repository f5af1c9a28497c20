import EwallCore
import EwallStore
import Foundation

/// How the image step would do at each threshold on products whose answer is known without it:
/// `ewall calibrate --gifts`. The labels are the other steps' answers (registered list, zero
/// price, words): a product they call a gift should resemble a registered gift's image, and one
/// they call a product should not. Registered gifts themselves are left out.
public struct GiftImageCalibration: Sendable, Encodable {
    public struct Row: Sendable, Encodable {
        public var threshold: Double
        /// Products the image step would flag at this threshold.
        public var flagged: Int
        /// Of those, the share the other steps call gifts (`nil`: none flagged).
        public var precision: Double?
        /// Of the gifts, the share it would flag.
        public var recall: Double
    }

    public var products: Int
    public var gifts: Int
    public var masterWithVectors: Int
    public var rows: [Row]
    public var targetPrecision: Double
    /// The lowest threshold from which precision stays at or above the target (`nil`: none).
    public var thresholdForTarget: Double?
    /// The rules' threshold, for comparison.
    public var currentThreshold: Double

    enum CodingKeys: String, CodingKey {
        case products, gifts, masterWithVectors = "master_with_vectors", rows, targetPrecision = "target_precision"
        case thresholdForTarget = "threshold_for_target", currentThreshold = "current_threshold"
    }
}

extension GiftDetector {
    /// Sweeps the image threshold over labelled vectors (see ``GiftImageCalibration``).
    public func calibrateImage(
        _ items: [(productID: String, vector: [Float], isGift: Bool)],
        thresholds: [Double] = stride(from: 0.5, through: 0.995, by: 0.005).map { ($0 * 1000).rounded() / 1000 },
        targetPrecision: Double = 0.99
    ) -> GiftImageCalibration {
        let scored: [(cosine: Double, gift: Bool)] = items.compactMap { item in
            guard !masterIDs.contains(item.productID), item.vector.count == vectorDimension, hasMasterVectors else {
                return nil
            }
            return (nearest(item.vector).cosine, item.isGift)
        }
        let gifts = scored.filter(\.gift).count
        let rows = thresholds.map { t in
            let flagged = scored.filter { $0.cosine >= t }
            let right = flagged.filter(\.gift).count
            return GiftImageCalibration.Row(
                threshold: t, flagged: flagged.count,
                precision: flagged.isEmpty ? nil : Double(right) / Double(flagged.count),
                recall: gifts == 0 ? 0 : Double(right) / Double(gifts))
        }
        // The lowest threshold from which every higher one keeps the target (or flags nothing).
        var chosen: Double?
        for row in rows.reversed() {
            if let p = row.precision, p < targetPrecision { break }
            if row.precision != nil { chosen = row.threshold }
        }
        return GiftImageCalibration(
            products: scored.count, gifts: gifts, masterWithVectors: masterVectorCount, rows: rows,
            targetPrecision: targetPrecision, thresholdForTarget: chosen, currentThreshold: rules.imageThreshold)
    }

    /// Labels every product of the store that has a vector under `key` by the steps before the
    /// image step, and sweeps the image threshold over them.
    public func calibrateImage(
        store: any EmbeddingStore, key: ModelKey, targetPrecision: Double = 0.99, pageSize: Int = 2048
    ) async throws -> GiftImageCalibration {
        var items: [(productID: String, vector: [Float], isGift: Bool)] = []
        var after: String?
        while true {
            let page = try await store.productsWithVectors(key: key, after: after, limit: pageSize)
            let vectors = try await store.vectors(productIDs: page.map(\.id), key: key)
            for p in page {
                guard let v = vectors[p.id] else { continue }
                // Without the vector: the other steps alone.
                let d = decide(GiftInput(productID: p.id, title: p.title, brand: p.brand, price: p.price))
                items.append((p.id, v, d.isGift))
            }
            guard let last = page.last, page.count == pageSize else { break }
            after = last.id
        }
        return calibrateImage(items, targetPrecision: targetPrecision)
    }
}
