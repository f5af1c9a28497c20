// fast_index.cpp: the fast subclasses of fast_index.h. Their result handling copies FAISS
// 1.7.3's (IVFFlatScanner in IndexIVFFlat.cpp; exhaustive_*_seq with HeapResultHandler in
// utils/distances.cpp): the same heap, the same comparisons, the same order of visits, so
// the answers are FAISS's except where a distance's last bits differ.

#include "fast_index.h"

#include "kernels.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/impl/AuxIndexStructures.h>
#include <faiss/impl/DistanceComputer.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/invlists/DirectMap.h>
#include <faiss/utils/Heap.h>
#include <faiss/utils/distances.h>

#include <faiss/invlists/InvertedLists.h>

#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <functional>
#include <atomic>
#include <mutex>
#include <cmath>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

namespace ew {

using idx_t = faiss::Index::idx_t;

// BLAS, as libfaiss.a itself calls it (Fortran sgemm from OpenBLAS).
extern "C" int sgemm_(const char *transa, const char *transb, const int *m, const int *n, const int *k,
                      const float *alpha, const float *a, const int *lda, const float *b, const int *ldb,
                      const float *beta, float *c, const int *ldc);

namespace {

template <bool IP>
using Heap = typename std::conditional<IP, faiss::CMin<float, idx_t>, faiss::CMax<float, idx_t>>::type;

// ---- The list scan both fast scanners share: FAISS's loop (filter, distance, heap) over codes
// of `stride` bytes, with the distance from Derived::codeDistance.

template <class Derived, class C, bool useSel> struct HeapListScanner : faiss::InvertedListScanner {
    size_t stride;
    HeapListScanner(size_t stride, bool storePairs, const faiss::IDSelector *sel)
        : InvertedListScanner(storePairs, sel), stride(stride) {
        code_size = stride;
    }

    idx_t resultID(size_t j, const idx_t *ids) const {
        return store_pairs ? idx_t(faiss::lo_build(list_no, j)) : ids[j];
    }

    float distance_to_code(const uint8_t *code) const override {
        return static_cast<const Derived *>(this)->codeDistance(code);
    }

    size_t scan_codes(size_t n, const uint8_t *codes, const idx_t *ids, float *simi, idx_t *idxi,
                      size_t k) const override {
        const Derived &self = *static_cast<const Derived *>(this);
        size_t updates = 0;
        for (size_t j = 0; j < n; j++, codes += stride) {
            if (useSel && !sel->is_member(ids[j])) continue;
            float v = self.codeDistance(codes);
            if (C::cmp(simi[0], v)) {
                faiss::heap_replace_top<C>(k, simi, idxi, v, resultID(j, ids));
                updates++;
            }
        }
        return updates;
    }

    void scan_codes_range(size_t n, const uint8_t *codes, const idx_t *ids, float radius,
                          faiss::RangeQueryResult &res) const override {
        const Derived &self = *static_cast<const Derived *>(this);
        for (size_t j = 0; j < n; j++, codes += stride) {
            if (useSel && !sel->is_member(ids[j])) continue;
            float v = self.codeDistance(codes);
            if (C::cmp(radius, v)) res.add(v, resultID(j, ids));
        }
    }
};

// ---- IVF-Flat: FAISS's IVFFlatScanner with our kernel.

template <bool IP, bool useSel>
struct FlatListScanner : HeapListScanner<FlatListScanner<IP, useSel>, Heap<IP>, useSel> {
    size_t d;
    DistanceFn dis;
    const float *q = nullptr;

    FlatListScanner(size_t d, bool storePairs, const faiss::IDSelector *sel, const Kernels &k)
        : HeapListScanner<FlatListScanner<IP, useSel>, Heap<IP>, useSel>(d * sizeof(float), storePairs, sel), d(d),
          dis(IP ? k.inner : k.l2sqr) {}

    void set_query(const float *x) override { q = x; }
    void set_list(idx_t list, float) override { this->list_no = list; }
    float codeDistance(const uint8_t *code) const { return dis(q, (const float *)code, d); }
};

struct FastIVFFlat : faiss::IndexIVFFlat {
    explicit FastIVFFlat(const faiss::IndexIVFFlat &o) : faiss::IndexIVFFlat(o) {}

    faiss::InvertedListScanner *get_InvertedListScanner(bool storePairs, const faiss::IDSelector *sel) const override {
        const Kernels &k = kernels();
        if (k.stock) return faiss::IndexIVFFlat::get_InvertedListScanner(storePairs, sel);
        if (metric_type == faiss::METRIC_INNER_PRODUCT) {
            if (sel) return new FlatListScanner<true, true>(d, storePairs, sel, k);
            return new FlatListScanner<true, false>(d, storePairs, sel, k);
        }
        if (metric_type == faiss::METRIC_L2) {
            if (sel) return new FlatListScanner<false, true>(d, storePairs, sel, k);
            return new FlatListScanner<false, false>(d, storePairs, sel, k);
        }
        return faiss::IndexIVFFlat::get_InvertedListScanner(storePairs, sel);
    }
};

// ---- IVF-SQ8 (8-bit per dimension, L2): FAISS's IVFSQScannerL2 with our kernel.
//
// FAISS decodes component i of a code as vmin_i + (c_i + 0.5) / 255 * vdiff_i and sums
// (r_i - that)^2 one float at a time (r: the query, minus the list's centroid when the index
// encodes residuals). Per list we precompute a_i = r_i - vmin_i - 0.5 * vdiff_i / 255 and
// b_i = vdiff_i / 255, so a code costs sum (a_i - c_i b_i)^2: the same value up to rounding.

template <bool useSel>
struct SQ8ListScanner : HeapListScanner<SQ8ListScanner<useSel>, faiss::CMax<float, idx_t>, useSel> {
    size_t d;
    const float *vmin, *vdiff;
    const faiss::Index *quantizer; // null: codes are of the vectors themselves
    CodeDistanceFn dis;
    const float *q = nullptr;
    std::vector<float> r, a, b;

    SQ8ListScanner(size_t d, const std::vector<float> &trained, const faiss::Index *quantizer, bool storePairs,
                   const faiss::IDSelector *sel, const Kernels &k)
        : HeapListScanner<SQ8ListScanner<useSel>, faiss::CMax<float, idx_t>, useSel>(d, storePairs, sel), d(d),
          vmin(trained.data()), vdiff(trained.data() + d), quantizer(quantizer), dis(k.sq8l2), r(d), a(d), b(d) {
        for (size_t i = 0; i < d; i++) b[i] = vdiff[i] / 255.0f;
    }

    void set_query(const float *x) override {
        q = x;
        if (!quantizer) prepare(x);
    }
    void set_list(idx_t list, float) override {
        this->list_no = list;
        if (quantizer) {
            quantizer->compute_residual(q, r.data(), list);
            prepare(r.data());
        }
    }
    void prepare(const float *x) {
        for (size_t i = 0; i < d; i++) a[i] = x[i] - vmin[i] - 0.5f * b[i];
    }
    float codeDistance(const uint8_t *code) const { return dis(a.data(), b.data(), code, d); }
};

struct FastIVFSQ8 : faiss::IndexIVFScalarQuantizer {
    explicit FastIVFSQ8(const faiss::IndexIVFScalarQuantizer &o) : faiss::IndexIVFScalarQuantizer(o) {}

    faiss::InvertedListScanner *get_InvertedListScanner(bool storePairs, const faiss::IDSelector *sel) const override {
        const Kernels &k = kernels();
        if (k.stock || metric_type != faiss::METRIC_L2 || sq.qtype != faiss::ScalarQuantizer::QT_8bit ||
            sq.trained.size() != 2 * size_t(d))
            return faiss::IndexIVFScalarQuantizer::get_InvertedListScanner(storePairs, sel);
        const faiss::Index *q = by_residual ? quantizer : nullptr;
        if (sel) return new SQ8ListScanner<true>(d, sq.trained, q, storePairs, sel, k);
        return new SQ8ListScanner<false>(d, sq.trained, q, storePairs, sel, k);
    }
};

// ---- Flat: FAISS's exhaustive_*_seq with a heap, and the distance computer HNSW uses.

template <bool IP>
void knnScan(const float *x, idx_t n, const float *xb, idx_t nb, size_t d, idx_t k, float *distances, idx_t *labels,
             const faiss::IDSelector *sel, DistanceFn dis) {
    using C = Heap<IP>;
    int nt = int(std::min<idx_t>(n, omp_get_max_threads()));
#pragma omp parallel for num_threads(nt) if (nt > 1)
    for (idx_t i = 0; i < n; i++) {
        float *simi = distances + i * k;
        idx_t *idxi = labels + i * k;
        const float *q = x + i * d;
        faiss::heap_heapify<C>(k, simi, idxi);
        const float *y = xb;
        for (idx_t j = 0; j < nb; j++, y += d) {
            if (sel && !sel->is_member(j)) continue;
            float v = dis(q, y, d);
            if (C::cmp(simi[0], v)) faiss::heap_replace_top<C>(k, simi, idxi, v, j);
        }
        faiss::heap_reorder<C>(k, simi, idxi);
    }
}

struct FlatDistance : faiss::FlatCodesDistanceComputer {
    size_t d;
    DistanceFn dis;
    const float *q = nullptr;
    FlatDistance(const uint8_t *codes, size_t d, DistanceFn dis)
        : FlatCodesDistanceComputer(codes, d * sizeof(float)), d(d), dis(dis) {}
    void set_query(const float *x) override { q = x; }
    float distance_to_code(const uint8_t *code) override { return dis(q, (const float *)code, d); }
    float symmetric_dis(idx_t i, idx_t j) override {
        return dis((const float *)(codes + j * code_size), (const float *)(codes + i * code_size), d);
    }
};

template <class Base, bool IP> struct FastFlat : Base {
    // Takes the vectors of `o` (left empty).
    explicit FastFlat(faiss::IndexFlat &o) : Base(o.d) {
        this->codes = std::move(o.codes);
        this->ntotal = o.ntotal;
        this->is_trained = o.is_trained;
        this->verbose = o.verbose;
        o.ntotal = 0;
    }

    // Every stored vector's squared norm (the batched coarse pass: FAISS's BLAS search
    // recomputes them with scalar code on every call) and the largest (coarseBatch's error
    // bound), computed once per ntotal: a quantizer's vectors change only while it trains, alone.
    mutable std::mutex normsLock;
    mutable std::vector<float> norms;
    mutable float maxNorm2 = 0;

    const float *storedNorms2() const {
        std::lock_guard<std::mutex> hold(normsLock);
        if (norms.size() != size_t(this->ntotal)) {
            const Kernels &kn = kernels();
            const float *y = this->get_xb();
            size_t d = size_t(this->d);
            norms.resize(size_t(this->ntotal));
            maxNorm2 = 0;
            for (idx_t j = 0; j < this->ntotal; j++) {
                norms[size_t(j)] = kn.inner(y + j * d, y + j * d, d);
                maxNorm2 = std::max(maxNorm2, norms[size_t(j)]);
            }
        }
        return norms.data();
    }

    float largestNorm2() const {
        storedNorms2();
        std::lock_guard<std::mutex> hold(normsLock);
        return maxNorm2;
    }

    // The stored vectors packed as panels for the batched coarse pass's many-dots kernel
    // (kernels.h; one more copy of the centroids, 8 KiB each at 2048-d), made on first use
    // and again when ntotal changes. 64-byte aligned, so no panel load splits a cache line.
    mutable std::vector<float> panelStore;
    mutable size_t panelCount = 0;
    mutable const float *panelData = nullptr;

    const float *panels() const {
        std::lock_guard<std::mutex> hold(normsLock);
        if (!panelData || panelCount != size_t(this->ntotal)) {
            size_t nc = size_t(this->ntotal), d = size_t(this->d);
            panelStore.assign(panelColumns(nc) * d + 16, 0.0f);
            float *base = panelStore.data();
            float *aligned = reinterpret_cast<float *>((reinterpret_cast<uintptr_t>(base) + 63) & ~uintptr_t(63));
            packPanels(this->get_xb(), nc, d, aligned);
            panelData = aligned;
            panelCount = nc;
        }
        return panelData;
    }

    void search(idx_t n, const float *x, idx_t k, float *distances, idx_t *labels,
                const faiss::SearchParameters *params) const override {
        const Kernels &kn = kernels();
        const faiss::IDSelector *sel = params ? params->sel : nullptr;
        // FAISS answers these with BLAS or its own special cases: leave them to it.
        bool stock = kn.stock || k <= 0 || (!sel && n >= faiss::distance_compute_blas_threshold) ||
                     dynamic_cast<const faiss::IDSelectorRange *>(sel) ||
                     dynamic_cast<const faiss::IDSelectorArray *>(sel);
        if (stock) return Base::search(n, x, k, distances, labels, params);
        knnScan<IP>(x, n, this->get_xb(), this->ntotal, size_t(this->d), k, distances, labels, sel,
                    IP ? kn.inner : kn.l2sqr);
    }

    faiss::FlatCodesDistanceComputer *get_FlatCodesDistanceComputer() const override {
        const Kernels &kn = kernels();
        if (kn.stock) return Base::get_FlatCodesDistanceComputer();
        return new FlatDistance(this->codes.data(), size_t(this->d), IP ? kn.inner : kn.l2sqr);
    }
};

bool isPlainFlat(const faiss::Index *i) {
    const std::type_info &t = typeid(*i);
    return (t == typeid(faiss::IndexFlat) || t == typeid(faiss::IndexFlatL2) || t == typeid(faiss::IndexFlatIP)) &&
           (i->metric_type == faiss::METRIC_L2 || i->metric_type == faiss::METRIC_INNER_PRODUCT);
}

} // namespace

void knnExact(const float *x, int64_t n, const float *xb, int64_t nb, size_t d, int64_t k, bool ip, float *distances,
              int64_t *labels) {
    const Kernels &kn = kernels();
    if (ip)
        knnScan<true>(x, n, xb, nb, d, k, distances, labels, nullptr, kn.inner);
    else
        knnScan<false>(x, n, xb, nb, d, k, distances, labels, nullptr, kn.l2sqr);
}

void dots(const float *x, int64_t n, const float *y, int64_t ny, size_t d, float *out) {
    if (n <= 0 || ny <= 0) return;
    const Kernels &kn = kernels();
    if (kn.panelDots) {
        size_t ld = panelColumns(size_t(ny));
        std::vector<float> panels(ld * d), wide(size_t(n) * ld);
        packPanels(y, size_t(ny), d, panels.data());
        kn.panelDots(x, size_t(n), d, panels.data(), size_t(ny), wide.data(), ld);
        for (int64_t i = 0; i < n; i++)
            std::copy(wide.begin() + ptrdiff_t(size_t(i) * ld), wide.begin() + ptrdiff_t(size_t(i) * ld + size_t(ny)),
                      out + size_t(i) * size_t(ny));
        return;
    }
    const int m = int(ny), nn = int(n), k = int(d);
    const float one = 1, zero = 0;
    sgemm_("Transpose", "Not transpose", &m, &nn, &k, &one, y, &k, x, &k, &zero, out, &m);
}

namespace {

// From this many queries the batched coarse pass takes its candidates from one product of all
// queries with all centroids (each centroid read once for all of them: our many-dots kernel,
// or BLAS) instead of scanning the centroids per query.
constexpr idx_t kCoarseProductFrom = 4;

// The kc nearest centroids of each query by BLAS: x·yᵀ in one sgemm, then |x|² + |y|² - 2x·y
// (L2, the stored norms cached) or x·y (inner product), as FAISS's exhaustive_L2sqr_blas
// computes them, without recomputing the centroids' norms on every call. Candidates only:
// coarseBatchOf re-ranks them with the single-query kernel and proves the cut.
template <bool IP>
void productCandidates(
    const FastFlat<typename std::conditional<IP, faiss::IndexFlatIP, faiss::IndexFlatL2>::type, IP> *q, idx_t n,
    const float *x, idx_t kc, float *cdis, idx_t *cand) {
    using C = Heap<IP>;
    const int d = int(q->d), ny = int(q->ntotal), nx = int(n);
    const float *y = q->get_xb();
    const Kernels &kn = kernels();
    // x·yᵀ: our many-dots kernel over the centroids packed once (where the kernel in force has
    // one), else one sgemm, which repacks all the centroids on every call.
    size_t ld = kn.panelDots ? panelColumns(size_t(ny)) : size_t(ny);
    std::vector<float> ip(size_t(n) * ld);
    if (kn.panelDots) {
        kn.panelDots(x, size_t(n), size_t(d), q->panels(), size_t(ny), ip.data(), ld);
    } else {
        const float one = 1, zero = 0;
        sgemm_("Transpose", "Not transpose", &ny, &nx, &d, &one, y, &d, x, &d, &zero, ip.data(), &ny);
    }
    const float *y2 = IP ? nullptr : q->storedNorms2();
    for (idx_t i = 0; i < n; i++) {
        float *simi = cdis + i * kc;
        idx_t *idxi = cand + i * kc;
        faiss::heap_heapify<C>(size_t(kc), simi, idxi);
        const float *row = ip.data() + size_t(i) * ld;
        const float *xi = x + size_t(i) * size_t(d);
        float x2 = IP ? 0 : kn.inner(xi, xi, size_t(d));
        for (int j = 0; j < ny; j++) {
            float v = IP ? row[j] : std::max(0.0f, x2 + y2[j] - 2 * row[j]);
            if (C::cmp(simi[0], v)) faiss::heap_replace_top<C>(size_t(kc), simi, idxi, v, idx_t(j));
        }
        faiss::heap_reorder<C>(size_t(kc), simi, idxi);
    }
}

std::atomic<int64_t> hintsUsed{0}, hintsDeclined{0};

// The error bound of the proofs below: a squared distance (or inner product) computed by the
// product path, the kernel or FAISS's BLAS path errs by at most about 4(d+2)u(|x|^2+|y|^2)
// (u = 2^-24; the many-dots kernel sums each product in one chain of d FMAs, within d·u·|x||y|).
inline double errorBound(size_t d, float x2, float y2) {
    return 4.0 * double(d + 2) * std::ldexp(1.0, -24) * (double(x2) + double(y2)) + 1e-30;
}

// The top p of `ids` (sorted: knnScan's order of visits) by the kernel, into simi/idxi (a heap,
// not yet reordered).
template <bool IP>
void topOf(const std::vector<idx_t> &ids, const float *xi, const float *xb, size_t d, size_t p, DistanceFn f,
           float *simi, idx_t *idxi) {
    using C = Heap<IP>;
    faiss::heap_heapify<C>(p, simi, idxi);
    for (idx_t j : ids) {
        float v = f(xi, xb + size_t(j) * d, d);
        if (C::cmp(simi[0], v)) faiss::heap_replace_top<C>(p, simi, idxi, v, j);
    }
}

// Whether every centroid left out, at least `last` away by a computation within `tol`, is
// strictly worse than the worst kept: then none of them can be kept (or tie with one that is).
template <bool IP> bool provenCut(double last, double tol, const float *simi, const idx_t *idxi) {
    double worst = simi[0];
    bool allFinite = std::isfinite(last) && std::isfinite(worst) && idxi[0] >= 0;
    return allFinite && (IP ? last + tol < worst : last - tol > worst);
}

template <bool IP>
bool coarseBatchOf(const FastFlat<typename std::conditional<IP, faiss::IndexFlatIP, faiss::IndexFlatL2>::type, IP> *q,
                   idx_t n, const float *x, const size_t *probes, size_t stride, idx_t *assign, float *dis,
                   const NearestLists *hints, const Kernels &kn) {
    using C = Heap<IP>;
    size_t d = size_t(q->d);
    idx_t nlist = q->ntotal;
    DistanceFn f = IP ? kn.inner : kn.l2sqr;
    const float *xb = q->get_xb();
    std::vector<idx_t> ids;

    // Queries that are stored vectors with their nearest lists recorded: the kernel's distances
    // to the first few of those lists, kept when the next one's recorded distance proves every
    // list not computed farther; more of them if not.
    std::vector<idx_t> pending;
    pending.reserve(size_t(n));
    float y2All = hints ? q->largestNorm2() : 0;
    constexpr size_t kLists = kNearestLists;
    const size_t steps[][2] = {{3, 4}, {7, 8}, {15, 16}, {31, 32}, {32, 32}}; // lists computed, rank of the bound
    const size_t boundOf[33] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2,
                                0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3};
    float dist[kLists];
    std::vector<std::pair<idx_t, float>> kept;
    for (idx_t i = 0; i < n; i++) {
        const NearestLists *h = hints ? &hints[i] : nullptr;
        size_t p = probes[i];
        bool proven = false;
        if (h && h->lists && h->bounds && p < kLists && nlist > idx_t(kLists)) {
            const float *xi = x + i * d;
            float *simi = dis + i * stride;
            idx_t *idxi = assign + i * stride;
            ids.assign(h->lists, h->lists + kLists);
            bool valid = std::all_of(ids.begin(), ids.end(), [&](idx_t j) { return j >= 0 && j < nlist; });
            std::sort(ids.begin(), ids.end());
            valid = valid && std::adjacent_find(ids.begin(), ids.end()) == ids.end();
            double tol = valid ? errorBound(d, kn.inner(xi, xi, d), y2All) : 0;
            size_t computed = 0;
            for (size_t s = 0; valid && !proven && s < 5; s++) {
                size_t upto = steps[s][0], rank = steps[s][1];
                if (upto < p) continue;
                for (; computed < upto; computed++) dist[computed] = f(xi, xb + size_t(h->lists[computed]) * d, d);
                // The p-th best distance computed so far, against the bound of those not computed.
                float sorted[kLists];
                std::copy(dist, dist + computed, sorted);
                if (IP)
                    std::nth_element(sorted, sorted + p - 1, sorted + computed, std::greater<float>());
                else
                    std::nth_element(sorted, sorted + p - 1, sorted + computed);
                double worst = sorted[p - 1], last = h->bounds[boundOf[rank]];
                proven = std::isfinite(last) && std::isfinite(worst) && (IP ? last + tol < worst : last - tol > worst);
            }
            if (proven) {
                // The top p of those computed, visited in id order as knnScan visits them.
                kept.clear();
                for (size_t r = 0; r < computed; r++) kept.emplace_back(idx_t(h->lists[r]), dist[r]);
                std::sort(kept.begin(), kept.end());
                faiss::heap_heapify<C>(p, simi, idxi);
                for (const auto &e : kept)
                    if (C::cmp(simi[0], e.second)) faiss::heap_replace_top<C>(p, simi, idxi, e.second, e.first);
                faiss::heap_reorder<C>(p, simi, idxi);
            }
        }
        if (h && h->lists) (proven ? hintsUsed : hintsDeclined).fetch_add(1, std::memory_order_relaxed);
        if (!proven) pending.push_back(i);
    }
    if (pending.empty()) return true;

    // Few queries: the single-query path itself (our kernel), query by query.
    if (idx_t(pending.size()) < kCoarseProductFrom) {
        for (idx_t i : pending)
            q->search(1, x + i * d, idx_t(probes[i]), dis + i * stride, assign + i * stride, nullptr);
        return true;
    }
    // The rest: candidates from one product of all of them with all centroids.
    idx_t m = idx_t(pending.size());
    std::vector<float> gathered;
    const float *xs = x;
    if (m < n) {
        gathered.resize(size_t(m) * d);
        for (idx_t r = 0; r < m; r++)
            std::copy(x + pending[size_t(r)] * d, x + (pending[size_t(r)] + 1) * d, gathered.begin() + r * d);
        xs = gathered.data();
    }
    size_t maxP = 0;
    for (idx_t i : pending) maxP = std::max(maxP, probes[i]);
    idx_t kc = std::min<idx_t>(nlist, idx_t(2 * maxP + 32));
    std::vector<idx_t> cand(size_t(m * kc));
    std::vector<float> cdis(size_t(m * kc));
    productCandidates<IP>(q, m, xs, kc, cdis.data(), cand.data());
    float y2 = kc < nlist ? q->largestNorm2() : 0;
    for (idx_t r = 0; r < m; r++) {
        idx_t i = pending[size_t(r)];
        const float *xi = x + i * d;
        idx_t p = idx_t(probes[i]);
        float *simi = dis + i * stride;
        idx_t *idxi = assign + i * stride;
        ids.assign(cand.begin() + r * kc, cand.begin() + (r + 1) * kc);
        ids.erase(std::remove(ids.begin(), ids.end(), idx_t(-1)), ids.end());
        std::sort(ids.begin(), ids.end()); // knnScan's order of visits
        bool proven = idx_t(ids.size()) == nlist;
        if (!proven && kc < nlist && idx_t(ids.size()) == kc && p <= kc) {
            topOf<IP>(ids, xi, xb, d, size_t(p), f, simi, idxi);
            // Every centroid left out is at least as far (by the product) as the last candidate.
            proven = provenCut<IP>(cdis[size_t((r + 1) * kc - 1)], errorBound(d, kn.inner(xi, xi, d), y2), simi, idxi);
            if (proven) faiss::heap_reorder<C>(size_t(p), simi, idxi);
        } else if (proven) {
            topOf<IP>(ids, xi, xb, d, size_t(p), f, simi, idxi);
            faiss::heap_reorder<C>(size_t(p), simi, idxi);
        }
        if (!proven) q->search(1, xi, p, simi, idxi, nullptr);
    }
    return true;
}

} // namespace

void nearestStats(int64_t *used, int64_t *declined) {
    if (used) *used = hintsUsed.load(std::memory_order_relaxed);
    if (declined) *declined = hintsDeclined.load(std::memory_order_relaxed);
}

bool coarseBatch(const faiss::Index *quantizer, int64_t n, const float *x, const size_t *probes, size_t stride,
                 int64_t *assign, float *dis, const NearestLists *hints) {
    const Kernels &kn = kernels();
    if (kn.stock) return false;
    if (auto q = dynamic_cast<const FastFlat<faiss::IndexFlatL2, false> *>(quantizer))
        return coarseBatchOf<false>(q, n, x, probes, stride, assign, dis, hints, kn);
    if (auto q = dynamic_cast<const FastFlat<faiss::IndexFlatIP, true> *>(quantizer))
        return coarseBatchOf<true>(q, n, x, probes, stride, assign, dis, hints, kn);
    return false;
}

namespace {

// The heap buffers holding an index's vectors: IVF-Flat lists, flat (quantizer) arrays.
void vectorBuffers(const faiss::Index *index, std::vector<std::pair<uintptr_t, uintptr_t>> &out) {
    auto add = [&](const std::vector<uint8_t> &v) {
        if (!v.empty()) out.emplace_back(uintptr_t(v.data()), uintptr_t(v.data()) + v.size());
    };
    if (auto m = dynamic_cast<const faiss::IndexIDMap *>(index)) return vectorBuffers(m->index, out);
    if (auto p = dynamic_cast<const faiss::IndexPreTransform *>(index)) return vectorBuffers(p->index, out);
    if (auto h = dynamic_cast<const faiss::IndexHNSW *>(index)) return vectorBuffers(h->storage, out);
    if (auto ivf = dynamic_cast<const faiss::IndexIVF *>(index)) {
        vectorBuffers(ivf->quantizer, out);
        if (auto lists = dynamic_cast<const faiss::ArrayInvertedLists *>(ivf->invlists))
            for (const auto &codes : lists->codes) add(codes);
        return;
    }
    if (auto f = dynamic_cast<const faiss::IndexFlatCodes *>(index)) add(f->codes);
}

} // namespace

size_t adviseHugePages(const faiss::Index *index) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    const uintptr_t huge = uintptr_t(2) << 20, gap = 16384;
    std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
    vectorBuffers(index, ranges);
    std::sort(ranges.begin(), ranges.end());
    // glibc gives each large buffer its own mapping and Linux places (and merges) them side by
    // side, so neighbouring lists form long runs: merge across the few bytes between them.
    std::vector<std::pair<uintptr_t, uintptr_t>> runs;
    for (auto r : ranges) {
        if (!runs.empty() && r.first <= runs.back().second + gap)
            runs.back().second = std::max(runs.back().second, r.second);
        else
            runs.push_back(r);
    }
    size_t advised = 0;
    for (auto r : runs) {
        uintptr_t a = (r.first + huge - 1) & ~(huge - 1), b = r.second & ~(huge - 1);
        if (b <= a) continue;
        if (madvise(reinterpret_cast<void *>(a), b - a, MADV_HUGEPAGE) != 0) continue;
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
        // Linux >= 6.1 makes them huge now; older kernels (EINVAL) leave it to khugepaged.
        (void)madvise(reinterpret_cast<void *>(a), b - a, MADV_COLLAPSE);
        advised += b - a;
    }
    return advised;
#else
    (void)index;
    return 0;
#endif
}

faiss::Index *accelerate(faiss::Index *index) {
    if (!index) return index;
    if (auto m = dynamic_cast<faiss::IndexIDMap *>(index)) {
        if (m->own_fields) m->index = accelerate(m->index);
        return index;
    }
    if (auto p = dynamic_cast<faiss::IndexPreTransform *>(index)) {
        if (p->own_fields) p->index = accelerate(p->index);
        return index;
    }
    if (auto h = dynamic_cast<faiss::IndexHNSW *>(index)) {
        if (h->own_fields) h->storage = accelerate(h->storage);
        return index;
    }
    if (auto ivf = dynamic_cast<faiss::IndexIVF *>(index)) {
        if (ivf->own_fields) ivf->quantizer = accelerate(ivf->quantizer);
        if (typeid(*ivf) == typeid(faiss::IndexIVFScalarQuantizer)) {
            auto old = static_cast<faiss::IndexIVFScalarQuantizer *>(ivf);
            faiss::DirectMap map = std::move(old->direct_map);
            old->direct_map = faiss::DirectMap();
            auto fast = new FastIVFSQ8(*old);
            fast->direct_map = std::move(map);
            old->own_fields = false;
            old->own_invlists = false;
            delete old;
            return fast;
        }
        if (typeid(*ivf) != typeid(faiss::IndexIVFFlat)) return index;
        auto old = static_cast<faiss::IndexIVFFlat *>(ivf);
        // Copy everything but the direct map (moved) and the lists and quantizer (handed over).
        faiss::DirectMap map = std::move(old->direct_map);
        old->direct_map = faiss::DirectMap();
        auto fast = new FastIVFFlat(*old);
        fast->direct_map = std::move(map);
        old->own_fields = false;
        old->own_invlists = false;
        delete old;
        return fast;
    }
    if (isPlainFlat(index)) {
        auto old = static_cast<faiss::IndexFlat *>(index);
        faiss::Index *fast;
        if (old->metric_type == faiss::METRIC_INNER_PRODUCT)
            fast = new FastFlat<faiss::IndexFlatIP, true>(*old);
        else
            fast = new FastFlat<faiss::IndexFlatL2, false>(*old);
        delete old;
        return fast;
    }
    return index;
}

} // namespace ew
