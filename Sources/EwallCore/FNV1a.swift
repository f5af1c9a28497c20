/// FNV-1a, 64-bit: a stable hash (Swift's `Hasher` is seeded per process), for choices that
/// must come out the same in every run (sample order, reference choice) and for change checks.
/// Not for security.
public struct FNV1a64: Sendable {
    public private(set) var value: UInt64 = 0xcbf2_9ce4_8422_2325

    public init() {}

    public mutating func combine(_ bytes: UnsafeRawBufferPointer) {
        var h = value
        for b in bytes { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        value = h
    }

    public mutating func combine(_ s: String) {
        var h = value
        for b in s.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        value = h
    }

    /// The hash of a string's UTF-8 bytes.
    public static func hash(_ s: String) -> UInt64 {
        var h = FNV1a64()
        h.combine(s)
        return h.value
    }

    /// The hash of a vector's float32 bytes.
    public static func hash(_ v: UnsafeBufferPointer<Float>) -> UInt64 {
        var h = FNV1a64()
        h.combine(UnsafeRawBufferPointer(v))
        return h.value
    }
}
