import Foundation

/// A position in PostgreSQL's write-ahead log, as `pg_lsn` writes it (`16/B374D848`). Also the
/// version of every change `ewall sync` applies: a change is applied once, in log order.
public struct LSN: Sendable, Hashable, Comparable, CustomStringConvertible, Codable {
    public var value: UInt64

    public init(_ value: UInt64) { self.value = value }

    /// Parses `X/Y` (hex halves).
    public init?(_ text: String) {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let hi = UInt64(parts[0], radix: 16), let lo = UInt64(parts[1], radix: 16),
            hi <= 0xFFFF_FFFF, lo <= 0xFFFF_FFFF
        else { return nil }
        value = hi << 32 | lo
    }

    public var description: String {
        String(value >> 32, radix: 16, uppercase: true) + "/" + String(value & 0xFFFF_FFFF, radix: 16, uppercase: true)
    }

    public static func < (a: LSN, b: LSN) -> Bool { a.value < b.value }
    public static let zero = LSN(0)
}

/// The messages of the streaming replication protocol's CopyBoth sub-protocol, and the
/// logical replication messages `pgoutput` (protocol version 1) sends inside them.
/// PostgreSQL's documentation, "Streaming Replication Protocol" and "Logical Replication
/// Message Formats", defines both; every integer is big-endian, every string NUL-terminated.
enum ReplicationMessage: Equatable {
    /// `w`: WAL data starting at `start`; `payload` is one pgoutput message.
    case xlogData(start: LSN, end: LSN, payload: [UInt8])
    /// `k`: the server's position; `replyNow` asks for a status update at once.
    case keepalive(end: LSN, replyNow: Bool)

    static func decode(_ bytes: [UInt8]) throws(SyncError) -> ReplicationMessage {
        var r = ByteReader(bytes)
        switch try r.byte() {
        case UInt8(ascii: "w"):
            let start = LSN(try r.uint64())
            let end = LSN(try r.uint64())
            _ = try r.uint64() // the server's clock
            return .xlogData(start: start, end: end, payload: Array(bytes[r.offset...]))
        case UInt8(ascii: "k"):
            let end = LSN(try r.uint64())
            _ = try r.uint64()
            return .keepalive(end: end, replyNow: try r.byte() == 1)
        case let other:
            throw SyncError(.protocolError, "unknown replication message type \(Self.name(other))")
        }
    }

    /// `r`: the standby status update that confirms `flushed`: the slot may release the WAL
    /// before it, and a restart resumes after it.
    static func statusUpdate(written: LSN, flushed: LSN, replyNow: Bool = false, now: Date = Date()) -> [UInt8] {
        var out: [UInt8] = [UInt8(ascii: "r")]
        // Microseconds since 2000-01-01 00:00:00 UTC, PostgreSQL's epoch.
        let micros = UInt64(max(0, (now.timeIntervalSince1970 - 946_684_800) * 1_000_000))
        for v in [written.value, flushed.value, flushed.value, micros] { out += bigEndian(v) }
        out.append(replyNow ? 1 : 0)
        return out
    }

    static func bigEndian(_ v: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: v >> (56 - 8 * $0)) } }

    static func name(_ b: UInt8) -> String {
        (0x20..<0x7F).contains(b) ? "'\(Character(UnicodeScalar(b)))'" : "0x" + String(b, radix: 16)
    }
}

/// One pgoutput message (protocol version 1, text tuples).
enum PGOutputMessage: Equatable {
    /// A transaction starts; `finalLSN` is its commit's position.
    case begin(finalLSN: LSN, commitTime: Date, xid: UInt32)
    /// It committed; `end` is the position after the commit record: the slot is confirmed
    /// up to it once the transaction is applied.
    case commit(lsn: LSN, end: LSN, commitTime: Date)
    /// The columns of a table, sent before its first change in a session (and after a change
    /// of its definition).
    case relation(Relation)
    case insert(relation: UInt32, new: [Value])
    /// `old`: the replica identity's key (or the whole old row), when the key changed or
    /// REPLICA IDENTITY FULL.
    case update(relation: UInt32, old: [Value]?, new: [Value])
    case delete(relation: UInt32, old: [Value])
    case truncate(relations: [UInt32])
    /// Messages we do not need (origin, type): skipped.
    case other(UInt8)

    struct Relation: Equatable {
        var id: UInt32
        var namespace: String
        var name: String
        var columns: [Column]
    }

    struct Column: Equatable {
        var name: String
        var isKey: Bool
        var typeOID: UInt32
    }

    /// A column's value in a tuple.
    enum Value: Equatable {
        case null
        /// A TOASTed value that did not change (updates only): keep what the row had.
        case unchanged
        case text(String)
    }

    static func decode(_ bytes: [UInt8]) throws(SyncError) -> PGOutputMessage {
        var r = ByteReader(bytes)
        let type = try r.byte()
        switch type {
        case UInt8(ascii: "B"):
            let lsn = LSN(try r.uint64())
            let time = date(try r.uint64())
            return .begin(finalLSN: lsn, commitTime: time, xid: try r.uint32())
        case UInt8(ascii: "C"):
            _ = try r.byte()
            let lsn = LSN(try r.uint64())
            let end = LSN(try r.uint64())
            return .commit(lsn: lsn, end: end, commitTime: date(try r.uint64()))
        case UInt8(ascii: "R"):
            let id = try r.uint32()
            let namespace = try r.string()
            let name = try r.string()
            _ = try r.byte() // replica identity setting
            let n = Int(try r.uint16())
            var columns: [Column] = []
            for _ in 0..<n {
                let flags = try r.byte()
                let colName = try r.string()
                let oid = try r.uint32()
                _ = try r.uint32() // atttypmod
                columns.append(Column(name: colName, isKey: flags & 1 == 1, typeOID: oid))
            }
            return .relation(Relation(id: id, namespace: namespace, name: name, columns: columns))
        case UInt8(ascii: "I"):
            let rel = try r.uint32()
            guard try r.byte() == UInt8(ascii: "N") else {
                throw SyncError(.protocolError, "insert without a new tuple")
            }
            return .insert(relation: rel, new: try r.tuple())
        case UInt8(ascii: "U"):
            let rel = try r.uint32()
            var marker = try r.byte()
            var old: [Value]?
            if marker == UInt8(ascii: "K") || marker == UInt8(ascii: "O") {
                old = try r.tuple()
                marker = try r.byte()
            }
            guard marker == UInt8(ascii: "N") else { throw SyncError(.protocolError, "update without a new tuple") }
            return .update(relation: rel, old: old, new: try r.tuple())
        case UInt8(ascii: "D"):
            let rel = try r.uint32()
            let marker = try r.byte()
            guard marker == UInt8(ascii: "K") || marker == UInt8(ascii: "O") else {
                throw SyncError(.protocolError, "delete without the old key")
            }
            return .delete(relation: rel, old: try r.tuple())
        case UInt8(ascii: "T"):
            let n = Int(try r.uint32())
            _ = try r.byte()
            var ids: [UInt32] = []
            for _ in 0..<n { ids.append(try r.uint32()) }
            return .truncate(relations: ids)
        default:
            return .other(type)
        }
    }

    /// Microseconds since 2000-01-01 -> Date.
    static func date(_ micros: UInt64) -> Date {
        Date(timeIntervalSince1970: 946_684_800 + Double(Int64(bitPattern: micros)) / 1_000_000)
    }
}

/// Reads big-endian integers and NUL-terminated strings, throwing on a short message.
struct ByteReader {
    let bytes: [UInt8]
    var offset = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    mutating func need(_ n: Int) throws(SyncError) {
        guard offset + n <= bytes.count else {
            throw SyncError(.protocolError, "a replication message ended early (\(bytes.count) bytes)")
        }
    }

    mutating func byte() throws(SyncError) -> UInt8 {
        try need(1)
        defer { offset += 1 }
        return bytes[offset]
    }

    mutating func uint(_ n: Int) throws(SyncError) -> UInt64 {
        try need(n)
        var v: UInt64 = 0
        for i in 0..<n { v = v << 8 | UInt64(bytes[offset + i]) }
        offset += n
        return v
    }

    mutating func uint16() throws(SyncError) -> UInt16 { UInt16(try uint(2)) }
    mutating func uint32() throws(SyncError) -> UInt32 { UInt32(try uint(4)) }
    mutating func uint64() throws(SyncError) -> UInt64 { try uint(8) }

    mutating func string() throws(SyncError) -> String {
        guard let end = bytes[offset...].firstIndex(of: 0) else {
            throw SyncError(.protocolError, "a string in a replication message has no end")
        }
        defer { offset = end + 1 }
        return String(decoding: bytes[offset..<end], as: UTF8.self)
    }

    mutating func tuple() throws(SyncError) -> [PGOutputMessage.Value] {
        let n = Int(try uint16())
        var values: [PGOutputMessage.Value] = []
        values.reserveCapacity(n)
        for _ in 0..<n {
            switch try byte() {
            case UInt8(ascii: "n"): values.append(.null)
            case UInt8(ascii: "u"): values.append(.unchanged)
            case UInt8(ascii: "t"):
                let len = Int(try uint32())
                try need(len)
                values.append(.text(String(decoding: bytes[offset..<offset + len], as: UTF8.self)))
                offset += len
            case let other:
                throw SyncError(.protocolError, "unknown tuple value kind \(ReplicationMessage.name(other))")
            }
        }
        return values
    }
}
