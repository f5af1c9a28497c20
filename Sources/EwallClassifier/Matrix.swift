import CBLAS

/// Matrix products through BLAS (OpenBLAS): the classifier scores a whole batch of products
/// against every reference in one `sgemm`, never a loop of dot products in Swift.
enum Matrix {
    /// `A (m x d) * B (n x d)^T` -> `m x n`, all row-major.
    static func productTransposed(_ a: [Float], rows m: Int, _ b: [Float], rows n: Int, dimension d: Int) -> [Float] {
        var c = [Float](repeating: 0, count: m * n)
        productTransposed(a, rows: m, b, rows: n, dimension: d, into: &c)
        return c
    }

    /// The same into `c`, which holds at least `m * n` floats (the first `m` rows of `a` are used).
    static func productTransposed(
        _ a: [Float], rows m: Int, _ b: [Float], rows n: Int, dimension d: Int, into c: inout [Float]
    ) {
        precondition(a.count >= m * d && b.count >= n * d && c.count >= m * n)
        guard m > 0, n > 0, d > 0 else { return }
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                c.withUnsafeMutableBufferPointer { pc in
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(d),
                        1, pa.baseAddress, Int32(d), pb.baseAddress, Int32(d), 0, pc.baseAddress, Int32(n))
                }
            }
        }
    }

    /// Euclidean norm (BLAS: vectorised, unlike a plain Swift float sum).
    static func norm(_ v: UnsafeBufferPointer<Float>) -> Float {
        cblas_snrm2(Int32(v.count), v.baseAddress, 1)
    }
}
