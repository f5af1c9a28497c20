import Foundation

/// Reading and writing 2-D float32 `.npy` files (NumPy format 1.0, little-endian, C order).
public enum Npy {
    /// The bytes of an `.npy` file holding `rows` x `cols` float32 values from `values`.
    public static func encode(_ values: [Float], rows: Int, cols: Int) -> Data {
        precondition(values.count == rows * cols, "npy: \(values.count) values for \(rows)x\(cols)")
        var data = header(rows: rows, cols: cols)
        values.withUnsafeBufferPointer {
            data.append(
                UnsafeBufferPointer(
                    start: UnsafeRawPointer($0.baseAddress!).assumingMemoryBound(to: UInt8.self), count: $0.count * 4))
        }
        return data
    }

    /// The magic, version and header of a float32 `[rows, cols]` file; the values follow.
    /// The row count is padded to a fixed width, so a writer that streams rows can write the
    /// header first and rewrite it in place with the final count.
    public static func header(rows: Int, cols: Int) -> Data {
        let count = String(rows)
        let padded = String(repeating: " ", count: max(0, 12 - count.utf8.count)) + count
        var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(padded), \(cols)), }"
        let unpadded = 10 + header.utf8.count + 1
        header += String(repeating: " ", count: (64 - unpadded % 64) % 64) + "\n"
        var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
        let len = UInt16(header.utf8.count)
        data.append(contentsOf: [UInt8(len & 0xFF), UInt8(len >> 8)])
        data.append(contentsOf: Array(header.utf8))
        return data
    }

    public struct DecodeError: Error, CustomStringConvertible {
        public var description: String
    }

    /// Reads a little-endian float32 `.npy` of any shape: the shape and the values, in C order.
    public static func decode(_ data: Data) throws -> (shape: [Int], values: [Float]) {
        let bytes = [UInt8](data)
        guard bytes.count >= 10, bytes[0] == 0x93, Array(bytes[1..<6]) == Array("NUMPY".utf8) else {
            throw DecodeError(description: "not an .npy file")
        }
        let major = bytes[6]
        let headerLen: Int, start: Int
        if major == 1 {
            headerLen = Int(bytes[8]) | Int(bytes[9]) << 8
            start = 10
        } else {
            headerLen = Int(bytes[8]) | Int(bytes[9]) << 8 | Int(bytes[10]) << 16 | Int(bytes[11]) << 24
            start = 12
        }
        guard bytes.count >= start + headerLen else { throw DecodeError(description: "truncated .npy header") }
        let header = String(decoding: bytes[start..<start + headerLen], as: UTF8.self)
        guard header.contains("'<f4'") else { throw DecodeError(description: "only <f4 .npy is supported: \(header)") }
        guard !header.contains("'fortran_order': True") else { throw DecodeError(description: "fortran order") }
        guard let open = header.range(of: "'shape': ("), let close = header[open.upperBound...].firstIndex(of: ")")
        else {
            throw DecodeError(description: "no shape in .npy header")
        }
        let shape = header[open.upperBound..<close].split(separator: ",").compactMap {
            Int($0.trimmingCharacters(in: .whitespaces))
        }
        let count = shape.reduce(1, *)
        let body = start + headerLen
        guard bytes.count >= body + count * 4 else { throw DecodeError(description: "truncated .npy data") }
        var values = [Float](repeating: 0, count: count)
        values.withUnsafeMutableBytes { dst in
            bytes.withUnsafeBytes { src in
                dst.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[body..<body + count * 4]))
            }
        }
        return (shape, values)
    }
}
