/// The rule every embedding vector meets before EwallML serves, searches or stores it, whether
/// the model just made it or it was read back from a cache: the model's dimension, every value
/// finite, and an L2 norm of 1 within ``normTolerance``. A vector that breaks it is an
/// `invalid_vector` where the model made it, and a value that is not ours where a cache held it.
public enum VectorRule {
    /// How far from 1 a vector's L2 norm may be (float32 rounding of a normalised 2048-d vector
    /// stays below 1e-5).
    public static let normTolerance: Double = 1e-3

    /// Why `vector` cannot be used as an embedding of `dimension` values, or `nil` when it can.
    public static func problem(_ vector: [Float], dimension: Int) -> String? {
        guard vector.count == dimension else {
            return "the vector has \(vector.count) values; the model's have \(dimension)"
        }
        var sum: Double = 0
        for (i, v) in vector.enumerated() {
            guard v.isFinite else { return "the vector holds \(v) at index \(i); every value must be finite" }
            sum += Double(v) * Double(v)
        }
        let norm = sum.squareRoot()
        guard abs(norm - 1) <= normTolerance else {
            return "the vector's L2 norm is \(norm); an embedding's is 1 (within \(normTolerance))"
        }
        return nil
    }
}
