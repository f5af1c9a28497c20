import EwallCore
import Foundation

/// Test hosts on one machine: `count` network namespaces, each with its own veth pair on a
/// bridge of ours (10.213.0.1/24 on this side, 10.213.0.11, .12, ... inside), so processes run
/// in them reach a server on 10.213.0.1 as separate machines would, over a real network path.
/// Made with `ip netns` / `ip link` (root; iproute2); removed by ``remove()`` and at exit.
/// Where they cannot be made, ``make(count:)`` says why and the tests that need them are
/// disabled with that reason.
public final class TestHostNetwork: Sendable {
    /// The address of this side (the "server machine") on the bridge.
    public static let gateway = "10.213.0.1"
    public let namespaces: [String]
    private let bridge: String

    private init(namespaces: [String], bridge: String) {
        self.namespaces = namespaces
        self.bridge = bridge
    }

    /// Why test hosts cannot be made here, or `nil` when they can (checked once, by making
    /// and removing one).
    public static let unavailableReason: String? = {
        guard geteuid() == 0 else { return "network namespaces need root" }
        guard let ip = ipPath else { return "iproute2's ip not found" }
        let probe = "ewprobe\(getpid())"
        let (status, output) = PostgresServer.run(ip, ["netns", "add", probe], asPostgres: false)
        guard status == 0 else { return "ip netns add failed: \(output)" }
        PostgresServer.run(ip, ["netns", "del", probe], asPostgres: false)
        return nil
    }()

    static let ipPath: String? = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    /// Makes the bridge and `count` namespaces (at most 200).
    public static func make(count: Int) throws -> TestHostNetwork {
        if let reason = unavailableReason { throw PostgresServer.Unavailable(description: reason) }
        let ip = ipPath!
        let tag = String(getpid() % 100_000)
        let bridge = "ewbr\(tag)"
        func must(_ args: [String]) throws {
            let (status, output) = PostgresServer.run(ip, args, asPostgres: false)
            guard status == 0 else {
                throw PostgresServer.Unavailable(description: "ip \(args.joined(separator: " ")) failed: \(output)")
            }
        }
        PostgresServer.run(ip, ["link", "del", bridge], asPostgres: false)
        try must(["link", "add", bridge, "type", "bridge"])
        try must(["addr", "add", "\(gateway)/24", "dev", bridge])
        try must(["link", "set", bridge, "up"])
        var names: [String] = []
        do {
            for i in 1...count {
                let ns = "ewns\(tag)_\(i)", host = "ew\(tag)h\(i)", inner = "ew\(tag)n\(i)"
                PostgresServer.run(ip, ["netns", "del", ns], asPostgres: false)
                try must(["netns", "add", ns])
                names.append(ns)
                try must(["link", "add", host, "type", "veth", "peer", "name", inner])
                try must(["link", "set", host, "master", bridge, "up"])
                try must(["link", "set", inner, "netns", ns])
                try must(["-n", ns, "addr", "add", "10.213.0.\(10 + i)/24", "dev", inner])
                try must(["-n", ns, "link", "set", inner, "up"])
                try must(["-n", ns, "link", "set", "lo", "up"])
            }
        } catch {
            TestHostNetwork(namespaces: names, bridge: bridge).remove()
            throw error
        }
        let made = TestHostNetwork(namespaces: names, bridge: bridge)
        registerCleanup(made)
        return made
    }

    /// The command prefix that runs a program on test host `i` (0-based).
    public func prefix(_ i: Int) -> [String] { [Self.ipPath!, "netns", "exec", namespaces[i]] }

    /// Test host `i`'s own address.
    public func address(_ i: Int) -> String { "10.213.0.\(11 + i)" }

    /// Removes the namespaces (their veth pairs go with them) and the bridge.
    public func remove() {
        guard let ip = Self.ipPath else { return }
        for ns in namespaces { PostgresServer.run(ip, ["netns", "del", ns], asPostgres: false) }
        PostgresServer.run(ip, ["link", "del", bridge], asPostgres: false)
    }

    /// The networks made so far, removed at exit.
    private static let live = Locked<[TestHostNetwork]>([])

    private static func registerCleanup(_ n: TestHostNetwork) {
        live.withLock { live in
            if live.isEmpty {
                atexit { TestHostNetwork.live.withLock { for n in $0 { n.remove() } } }
            }
            live.append(n)
        }
    }
}
