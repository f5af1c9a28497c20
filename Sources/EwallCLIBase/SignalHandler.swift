import Dispatch
import Foundation

/// SIGINT and SIGTERM: the first calls `onFirst` (stop gracefully); a second one exits at once.
///
/// Safe because: `signal` is only touched under `lock`; the sources live as long as this object.
public final class SignalHandler: @unchecked Sendable {
    private let lock = NSLock()
    private var signal: Int32?
    private var sources: [DispatchSourceSignal] = []

    public init(onFirst: @escaping @Sendable (Int32) -> Void) {
        for sig in [SIGINT, SIGTERM] {
            Foundation.signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler { [unowned self] in
                self.lock.lock()
                let first = self.signal == nil
                if first { self.signal = sig }
                self.lock.unlock()
                if first { onFirst(sig) } else { exit(128 + sig) }
            }
            source.resume()
            sources.append(source)
        }
    }

    /// The first signal received, if any.
    public var received: Int32? {
        lock.lock()
        defer { lock.unlock() }
        return signal
    }
}
