/// A `Duration` as the plain numbers metrics, logs and other clocks take.
extension Duration {
    /// Whole and fractional seconds.
    public var inSeconds: Double {
        let (s, atto) = components
        return Double(s) + Double(atto) / 1e18
    }

    /// Nanoseconds (truncated), for NIO's `TimeAmount` and swift-metrics' timers.
    public var inNanoseconds: Int64 {
        let (s, atto) = components
        return s * 1_000_000_000 + atto / 1_000_000_000
    }
}
