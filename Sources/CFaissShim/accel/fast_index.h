// fast_index.h: FAISS index types whose hot loops use our kernels (internal to CFaissShim; this
// accel/ folder depends on FAISS and kernels.h only, and faiss_shim.cpp calls into it, never back).
//
// Each is a subclass of the FAISS type it replaces and changes nothing but how distances
// are computed, through FAISS's own extension points:
//   - FastIVFFlat (an IndexIVFFlat): get_InvertedListScanner returns a scanner with our
//     kernels; IndexIVF::search / search_preassigned (stock) drive it.
//   - FastIVFSQ8 (an IndexIVFScalarQuantizer): for 8-bit codes and L2, a scanner that widens
//     codes to float in registers (FAISS's baseline build decodes them one at a time).
//   - FastFlat<IndexFlatL2|IndexFlatIP>: search of fewer than 20 queries (FAISS's own BLAS
//     threshold; more go to BLAS as before) or with a selector, and the distance computer
//     HNSW uses on its storage.
// They are written by FAISS's write_index as the base types (IndexIVFFlat, IndexIVFScalarQuantizer,
// IndexFlat), so
// files stay stock FAISS files. With the "faiss" kernel in force every override calls the
// base class: FAISS's own code, for comparison.
#ifndef EW_FAISS_FAST_INDEX_H
#define EW_FAISS_FAST_INDEX_H

#include <faiss/Index.h>

#include <cstddef>
#include <cstdint>

namespace ew {

// Replaces, in the tree under `index`, every IndexIVFFlat, IndexIVFScalarQuantizer and IndexFlat (IVF coarse
// quantizer, IDMap's wrapped index, HNSW storage) that its parent owns by the fast subclass,
// moving the data (no copy of vectors or lists). Takes ownership of `index`; returns the
// index to use instead (maybe the same pointer). Anything else is left as it is.
faiss::Index *accelerate(faiss::Index *index);

// Asks Linux to back the vectors of `index` (IVF-Flat lists, flat arrays) with transparent
// huge pages (madvise MADV_HUGEPAGE, then MADV_COLLAPSE): a list scan reads 8 KiB per vector
// from memory, and with 4 KiB pages it pays a TLB miss per page. Returns the bytes advised;
// errors (no THP, an old kernel) only mean fewer. The data and its addresses do not change.
size_t adviseHugePages(const faiss::Index *index);

// Exact k-NN of n queries among nb vectors with the kernels in force (FAISS's heap, as its
// exhaustive search below the BLAS threshold). labels are row numbers in xb.
void knnExact(const float *x, int64_t n, const float *xb, int64_t nb, size_t d, int64_t k, bool ip, float *distances,
              int64_t *labels);

// x·yᵀ (n x ny, row-major into out) as the batched coarse pass computes it: the many-dots
// kernel in force over y packed here, or sgemm where the kernel in force has none.
void dots(const float *x, int64_t n, const float *y, int64_t ny, size_t d, float *out);

// The coarse pass of a batch of IVF searches. For each of n queries, writes to
// assign/dis + i*stride exactly what quantizer->search(1, x_i, probes[i], ...) writes (the
// single-query path): from 4 queries on, one product of all of them with all centroids (our
// many-dots kernel over centroids packed once, or BLAS) finds each query's 2p+32 nearest candidates, which are re-ranked with the kernel in force; a query whose
// candidates cannot be proven to contain its exact top p (by a bound on the float error of
// both computations) is searched on its own. Returns false (writing nothing) when `quantizer`
// is not a fast flat index or FAISS's own kernels are in force: the caller searches per query.
//
// hints (null, or one per query): a query's 32 nearest lists as recorded when its vector was
// added, and the recorded distances of the 4th, 8th, 16th and 32nd (lists == null: none). For
// p < 32, the kernel's distances to the first 3, 7, 15 or 31 of them (the fewest that hold p)
// give its top p, kept when the next one's recorded distance, less the same error bound, proves
// every list not computed farther than the worst kept; else the next step; after all 32, the
// usual way.
// How many nearest lists a row records (ew_faiss.h's EW_FAISS_NEAREST_LISTS; faiss_shim.cpp
// checks that the two agree, so this folder needs nothing from the C boundary).
constexpr size_t kNearestLists = 32;
struct NearestLists {
    const int32_t *lists = nullptr;
    const float *bounds = nullptr;
};
bool coarseBatch(const faiss::Index *quantizer, int64_t n, const float *x, const size_t *probes, size_t stride,
                 int64_t *assign, float *dis, const NearestLists *hints = nullptr);

// Queries whose hints were used / declined, since the process started.
void nearestStats(int64_t *used, int64_t *declined);

} // namespace ew

#endif
