import Dispatch
import EwallCore
import Foundation

/// SIGINT and SIGTERM: the first calls `onFirst` (stop gracefully); a second one exits at once.
public final class SignalHandler: Sendable {
    private let first: Locked<Int32?>
    /// Kept only so the sources live as long as this object; never touched after `init`.
    nonisolated(unsafe) private let sources: [any DispatchSourceSignal]

    public init(onFirst: @escaping @Sendable (Int32) -> Void) {
        let first = Locked<Int32?>(nil)
        sources = [SIGINT, SIGTERM].map { sig in
            Foundation.signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
            source.setEventHandler {
                let isFirst = first.withLock { received -> Bool in
                    guard received == nil else { return false }
                    received = sig
                    return true
                }
                if isFirst { onFirst(sig) } else { exit(128 + sig) }
            }
            source.resume()
            return source
        }
        self.first = first
    }

    /// The first signal received, if any.
    public var received: Int32? { first.withLock { $0 } }
}
