import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A file of fixed-size rows mapped read-only (`MADV_RANDOM`: searches touch a few rows each,
/// and the kernel may drop them again under memory pressure). The one mapping code behind
/// ``ExactVectors`` and ``NearestLists``.
///
/// Safe because: the mapping is read-only (PROT_READ) and its pointer and size never change after init.
final class MappedRows: @unchecked Sendable {
    let rows: Int
    let rowBytes: Int
    /// nil for an empty file.
    let base: UnsafeRawPointer?
    var bytes: Int { rows * rowBytes }

    /// Maps an open file (the caller keeps or closes `fd`; the mapping outlives it). `what`
    /// names a row in the error of a file that is not whole rows.
    init(fd: Int32, path: String, rowBytes: Int, what: String) throws {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw IndexError(.io, "cannot stat \(path)") }
        let size = Int(st.st_size)
        guard rowBytes > 0, size % rowBytes == 0 else {
            throw IndexError(.manifest, "\(path) has \(size) bytes, not whole rows of \(what)")
        }
        self.rowBytes = rowBytes
        rows = size / rowBytes
        guard size > 0 else {
            base = nil
            return
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw IndexError(.io, "cannot map \(path): \(String(cString: strerror(errno)))")
        }
        _ = madvise(p, size, MADV_RANDOM)
        base = UnsafeRawPointer(p)
    }

    /// Opens and maps the file at `path`.
    convenience init(path: String, rowBytes: Int, what: String) throws {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw IndexError(.io, "cannot open \(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        try self.init(fd: fd, path: path, rowBytes: rowBytes, what: what)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), bytes) }
    }

    /// The start of row `i`, or nil when out of range.
    func row(_ i: Int64) -> UnsafeRawPointer? {
        guard let base, i >= 0, i < rows else { return nil }
        return base + Int(i) * rowBytes
    }
}
