// kernels.h: the distance kernels behind ew_faiss_set_kernel (internal to CFaissShim).
//
// Three implementations of squared L2 and inner product, chosen at run time: AVX-512
// (avx512f), AVX2 with FMA, and portable C++ (compiled for baseline x86-64, like Debian's
// libfaiss.a). Each is compiled for its own target with function attributes, never with
// -march=native, so the library runs on any x86-64 and uses what the CPU has.
#ifndef EW_FAISS_KERNELS_H
#define EW_FAISS_KERNELS_H

#include <cstddef>
#include <cstdint>

namespace ew {

using DistanceFn = float (*)(const float *x, const float *y, size_t d);
// sum (a_i - c_i b_i)^2 over 8-bit codes c: an SQ8 code's squared L2 distance to a query,
// with a and b precomputed per query and list (see FastIVFSQ8 in fast_index.cpp).
using CodeDistanceFn = float (*)(const float *a, const float *b, const uint8_t *c, size_t d);

// Many queries against many vectors at once (the batched coarse pass): the inner products of
// n queries x (rows of d floats) with nc vectors held as panels (packPanels). Writes
// out[i * ldo + j] = x_i . y_j for i < n and j < panelColumns(nc) (the padding columns are
// products with zero vectors); ldo >= panelColumns(nc).
using PanelDotsFn = void (*)(const float *x, size_t n, size_t d, const float *panels, size_t nc, float *out,
                             size_t ldo);

// Panels of kPanelWidth vectors, dimension-major: panel p holds, for each k < d, the k-th
// floats of vectors kPanelWidth*p ... kPanelWidth*p + kPanelWidth-1 side by side (zeros past
// nc). The kernel then streams each panel from start to end, once per few queries, and the
// vectors are packed once (by the caller that keeps them), not on every call as BLAS does.
constexpr size_t kPanelWidth = 16;
inline size_t panelColumns(size_t nc) {
    return (nc + kPanelWidth - 1) / kPanelWidth * kPanelWidth;
}
// panels: panelColumns(nc) * d floats.
void packPanels(const float *y, size_t nc, size_t d, float *panels);

struct Kernels {
    const char *name;      // "avx512", "avx2", "scalar" or "faiss"
    DistanceFn l2sqr;      // sum (x_i - y_i)^2
    DistanceFn inner;      // sum x_i y_i
    CodeDistanceFn sq8l2;  // sum (a_i - c_i b_i)^2
    PanelDotsFn panelDots; // null: use BLAS (the portable and FAISS paths, where BLAS is faster)
    bool stock;            // "faiss": FAISS's own functions, and the fast indexes run FAISS's code
};

// The kernels in force (one atomic load; any thread).
const Kernels &kernels();

// Puts `name` ("avx512", "avx2", "scalar", "faiss" or "auto") in force. Returns false (and changes
// nothing) for an unknown name; a known one this CPU cannot run puts "scalar" in force.
bool setKernels(const char *name);

// Whether this CPU (and OS) can run `name`; "auto", "scalar" and "faiss" always can.
bool kernelsSupported(const char *name);

} // namespace ew

#endif
