// faiss_shim.cpp: ew_faiss.h over FAISS 1.7.3 (Debian's libfaiss.a). Every entry point
// catches every exception and turns it into an error code; see the header for the contract.

#include "ew_faiss.h"

#include "accel/fast_index.h"
#include "accel/kernels.h"

static_assert(ew::kNearestLists == EW_FAISS_NEAREST_LISTS, "accel/ and ew_faiss.h must agree on the recorded lists");

#include <faiss/Clustering.h>
#include <faiss/IVFlib.h>
#include <faiss/Index.h>
#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPreTransform.h>
#include <faiss/IndexScalarQuantizer.h>
#include <faiss/VectorTransform.h>
#include <faiss/impl/FaissException.h>
#include <faiss/impl/IDSelector.h>
#include <faiss/index_factory.h>
#include <faiss/index_io.h>
#include <faiss/invlists/InvertedLists.h>
#include <faiss/utils/distances.h>

#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <typeinfo>
#include <vector>

struct ew_faiss_index {
    std::unique_ptr<faiss::Index> index;
    std::string factory;
    bool mapped = false;
};

namespace {

using idx_t = faiss::Index::idx_t;

int fill(ew_faiss_error *err, int code, const std::string &message) {
    if (err) {
        err->code = code;
        std::snprintf(err->message, sizeof err->message, "%s", message.c_str());
    }
    return code;
}

int ok(ew_faiss_error *err) {
    if (err) {
        err->code = EW_FAISS_OK;
        err->message[0] = 0;
    }
    return EW_FAISS_OK;
}

// Runs `body`, turning every exception into an error code. FAISS reports everything as
// FaissException with a message naming the failed check; the first line is what matters.
template <typename F> int guarded(ew_faiss_error *err, int faissCode, F body) {
    try {
        body();
        return ok(err);
    } catch (const faiss::FaissException &e) {
        std::string m = e.what();
        auto at = m.find("Error: '");
        if (at != std::string::npos) m = m.substr(at);
        auto nl = m.find('\n');
        if (nl != std::string::npos) m = m.substr(0, nl);
        return fill(err, faissCode, m);
    } catch (const std::bad_alloc &) {
        return fill(err, EW_FAISS_E_MEMORY, "out of memory");
    } catch (const std::exception &e) {
        return fill(err, EW_FAISS_E_FAISS, e.what());
    } catch (...) {
        return fill(err, EW_FAISS_E_FAISS, "unknown C++ exception");
    }
}

// The id layer (IndexIDMap2) when there is one.
const faiss::IndexIDMap2 *idMap(const faiss::Index *index) {
    return dynamic_cast<const faiss::IndexIDMap2 *>(index);
}

// The index under the id layer and any transform chain.
const faiss::Index *core(const faiss::Index *index) {
    for (;;) {
        if (auto m = dynamic_cast<const faiss::IndexIDMap *>(index))
            index = m->index;
        else if (auto p = dynamic_cast<const faiss::IndexPreTransform *>(index))
            index = p->index;
        else
            return index;
    }
}

std::string describe(const faiss::Index *index) {
    if (auto m = dynamic_cast<const faiss::IndexIDMap2 *>(index)) return "IDMap2," + describe(m->index);
    if (auto m = dynamic_cast<const faiss::IndexIDMap *>(index)) return "IDMap," + describe(m->index);
    if (auto p = dynamic_cast<const faiss::IndexPreTransform *>(index)) {
        std::string s;
        for (auto *t : p->chain) {
            if (auto o = dynamic_cast<const faiss::OPQMatrix *>(t))
                s += "OPQ" + std::to_string(o->M) + "_" + std::to_string(o->d_out) + ",";
            else if (auto c = dynamic_cast<const faiss::PCAMatrix *>(t))
                s += "PCA" + std::to_string(c->d_out) + ",";
            else
                s += std::string(typeid(*t).name()) + ",";
        }
        return s + describe(p->index);
    }
    if (auto f = dynamic_cast<const faiss::IndexIVFFlat *>(index)) return "IVF" + std::to_string(f->nlist) + ",Flat";
    if (auto q = dynamic_cast<const faiss::IndexIVFPQ *>(index))
        return "IVF" + std::to_string(q->nlist) + ",PQ" + std::to_string(q->pq.M) + "x" + std::to_string(q->pq.nbits);
    if (auto s = dynamic_cast<const faiss::IndexIVFScalarQuantizer *>(index))
        return "IVF" + std::to_string(s->nlist) + ",SQ" + std::to_string(s->sq.bits);
    if (auto h = dynamic_cast<const faiss::IndexHNSW *>(index)) return "HNSW" + std::to_string(h->hnsw.nb_neighbors(1));
    if (dynamic_cast<const faiss::IndexFlat *>(index)) return "Flat";
    return typeid(*index).name();
}

// A filter as FAISS sees it: the caller's bitmap of allowed ids minus a short exclude list.
struct FilterSelector : faiss::IDSelector {
    const uint8_t *bitmap;
    int64_t bits;
    const int64_t *exclude;
    size_t nExclude;
    bool is_member(idx_t id) const override {
        if (bitmap) {
            if (id < 0 || id >= bits || !((bitmap[id >> 3] >> (id & 7)) & 1)) return false;
        }
        for (size_t i = 0; i < nExclude; i++)
            if (exclude[i] == id) return false;
        return true;
    }
};

// FAISS 1.7.3's IndexIDMap2 refuses search parameters; under it, the wrapped index numbers
// its vectors 0..n-1. This asks the caller's selector about the id a position stands for.
struct PositionSelector : faiss::IDSelector {
    const std::vector<idx_t> *idOf;
    const faiss::IDSelector *inner;
    bool is_member(idx_t position) const override { return inner->is_member((*idOf)[position]); }
};

// Search parameters for `index` (which may be a transform chain), with the selector set.
// Owns what it allocates; `top` is what to pass to the index's search.
struct ParamChain {
    std::vector<std::unique_ptr<faiss::SearchParameters>> owned;
    faiss::SearchParameters *top = nullptr;

    ParamChain(const faiss::Index *index, const ew_faiss_search_params *p, const faiss::IDSelector *sel) {
        faiss::SearchParameters **slot = &top;
        for (;;) {
            if (auto pt = dynamic_cast<const faiss::IndexPreTransform *>(index)) {
                auto s = std::make_unique<faiss::SearchParametersPreTransform>();
                auto raw = s.get();
                *slot = raw;
                owned.push_back(std::move(s));
                slot = &raw->index_params;
                index = pt->index;
                continue;
            }
            if (auto ivf = dynamic_cast<const faiss::IndexIVF *>(index)) {
                auto s = std::make_unique<faiss::SearchParametersIVF>();
                s->nprobe = (p && p->nprobe > 0) ? size_t(p->nprobe) : ivf->nprobe;
                s->max_codes = ivf->max_codes;
                s->sel = const_cast<faiss::IDSelector *>(sel);
                *slot = s.get();
                owned.push_back(std::move(s));
            } else if (auto h = dynamic_cast<const faiss::IndexHNSW *>(index)) {
                auto s = std::make_unique<faiss::SearchParametersHNSW>();
                s->efSearch = (p && p->ef_search > 0) ? int(p->ef_search) : h->hnsw.efSearch;
                s->sel = const_cast<faiss::IDSelector *>(sel);
                *slot = s.get();
                owned.push_back(std::move(s));
            } else if (sel) {
                auto s = std::make_unique<faiss::SearchParameters>();
                s->sel = const_cast<faiss::IDSelector *>(sel);
                *slot = s.get();
                owned.push_back(std::move(s));
            }
            return;
        }
    }
};

bool hasFilter(const ew_faiss_search_params *p) {
    return p && (p->allow_bitmap || (p->exclude && p->n_exclude > 0));
}

} // namespace

extern "C" {

int ew_faiss_set_threads(int threads) {
    if (threads > 0) omp_set_num_threads(threads);
    return omp_get_max_threads();
}

int ew_faiss_new(int64_t dim, const char *factory, int metric, ew_faiss_index **out, ew_faiss_error *err) {
    if (!factory || !out || dim <= 0) return fill(err, EW_FAISS_E_ARGUMENT, "factory, out and dim > 0 are required");
    if (metric != EW_FAISS_METRIC_L2 && metric != EW_FAISS_METRIC_IP)
        return fill(err, EW_FAISS_E_ARGUMENT, "metric must be L2 or IP");
    *out = nullptr;
    return guarded(err, EW_FAISS_E_FACTORY, [&] {
        auto m = metric == EW_FAISS_METRIC_IP ? faiss::METRIC_INNER_PRODUCT : faiss::METRIC_L2;
        std::unique_ptr<faiss::Index> index(faiss::index_factory(int(dim), factory, m));
        std::string name = factory;
        if (auto ivf = faiss::ivflib::try_extract_index_ivf(index.get())) {
            // Native ids; the hash-table direct map makes reconstruct and remove by id work.
            ivf->set_direct_map_type(faiss::DirectMap::Hashtable);
        } else if (!dynamic_cast<faiss::IndexIDMap *>(index.get())) {
            auto wrapped = std::make_unique<faiss::IndexIDMap2>(index.release());
            wrapped->own_fields = true;
            index = std::move(wrapped);
            name = "IDMap2," + name;
        }
        index.reset(ew::accelerate(index.release()));
        auto h = new ew_faiss_index;
        h->index = std::move(index);
        h->factory = name;
        *out = h;
    });
}

int ew_faiss_read(const char *path, int mmap, ew_faiss_index **out, ew_faiss_error *err) {
    if (!path || !out) return fill(err, EW_FAISS_E_ARGUMENT, "path and out are required");
    *out = nullptr;
    std::FILE *probe = std::fopen(path, "rb");
    if (!probe) return fill(err, EW_FAISS_E_IO, std::string("cannot open ") + path + ": " + std::strerror(errno));
    std::fclose(probe);
    return guarded(err, EW_FAISS_E_IO, [&] {
        // Memory-mapping applies to IVF inverted lists only; other kinds load as usual.
        std::unique_ptr<faiss::Index> index(faiss::read_index(path, mmap ? faiss::IO_FLAG_MMAP : 0));
        index.reset(ew::accelerate(index.release()));
        bool mapped = false;
        if (mmap) {
            if (auto ivf = faiss::ivflib::try_extract_index_ivf(index.get()))
                mapped = dynamic_cast<faiss::ArrayInvertedLists *>(ivf->invlists) == nullptr;
        }
        if (!mapped) ew::adviseHugePages(index.get());
        auto h = new ew_faiss_index;
        h->factory = describe(index.get());
        h->index = std::move(index);
        h->mapped = mapped;
        *out = h;
    });
}

int ew_faiss_write(const ew_faiss_index *h, const char *path, ew_faiss_error *err) {
    if (!h || !path) return fill(err, EW_FAISS_E_ARGUMENT, "index and path are required");
    return guarded(err, EW_FAISS_E_IO, [&] { faiss::write_index(h->index.get(), path); });
}

void ew_faiss_free(ew_faiss_index *h) {
    delete h;
}

int ew_faiss_reserve(ew_faiss_index *h, int64_t n, ew_faiss_error *err) {
    if (!h || n < 0) return fill(err, EW_FAISS_E_ARGUMENT, "index and n >= 0 are required");
    return guarded(err, EW_FAISS_E_FAISS, [&] {
        auto m = dynamic_cast<faiss::IndexIDMap2 *>(h->index.get());
        if (!m) return;
        m->id_map.reserve(size_t(n));
        m->rev_map.reserve(size_t(n));
        if (auto f = dynamic_cast<faiss::IndexFlatCodes *>(m->index)) f->codes.reserve(size_t(n) * f->code_size);
    });
}

int ew_faiss_train(ew_faiss_index *h, int64_t n, const float *x, ew_faiss_error *err) {
    if (!h || (n > 0 && !x)) return fill(err, EW_FAISS_E_ARGUMENT, "index and vectors are required");
    return guarded(err, EW_FAISS_E_FAISS, [&] { h->index->train(n, x); });
}

int ew_faiss_train_balanced(ew_faiss_index *h, int64_t n, const float *x, double max_list_factor, int64_t *lists,
                            int64_t *split, ew_faiss_error *err) {
    if (!h || (n > 0 && !x) || !(max_list_factor >= 1))
        return fill(err, EW_FAISS_E_ARGUMENT, "index, vectors and a list factor >= 1 are required");
    return guarded(err, EW_FAISS_E_FAISS, [&] {
        faiss::IndexIVF *ivf = faiss::ivflib::try_extract_index_ivf(h->index.get());
        if (split) *split = 0;
        if (!ivf || ivf->is_trained || (ivf->quantizer->is_trained && ivf->quantizer->ntotal > 0) ||
            n < int64_t(ivf->nlist) * 2) {
            h->index->train(n, x);
            if (lists) *lists = ivf ? int64_t(ivf->nlist) : 0;
            return;
        }
        const size_t d = ivf->d, nlist = ivf->nlist;
        // The coarse centroids, as IndexIVF::train would make them (same clustering parameters).
        faiss::IndexFlat coarse(d, ivf->metric_type);
        faiss::Clustering clus(d, nlist, ivf->cp);
        clus.train(n, x, coarse);
        // A centroid that averages many natural clusters lies near every point (a hub) and
        // collects them all: split each list holding more than max_list_factor times the mean
        // into lists of about the mean, by k-means over its own training points. A split can
        // leave a new hub among the pieces (one of them central again), so the points are
        // assigned again and the check repeated, for up to kBalanceRounds rounds.
        constexpr int kBalanceRounds = 4;
        std::vector<float> centroids(coarse.get_xb(), coarse.get_xb() + nlist * d);
        std::vector<idx_t> assign(static_cast<size_t>(n));
        int64_t splitCount = 0;
        for (int round = 0; round < kBalanceRounds; round++) {
            const size_t lists = centroids.size() / d;
            faiss::IndexFlat current(d, ivf->metric_type);
            current.add(idx_t(lists), centroids.data());
            current.assign(n, x, assign.data());
            std::vector<int64_t> count(lists, 0);
            for (idx_t a : assign) count[size_t(a)]++;
            const double mean = double(n) / double(lists);
            std::vector<float> next;
            next.reserve(centroids.size());
            int64_t splitNow = 0;
            for (size_t l = 0; l < lists; l++) {
                if (double(count[l]) <= max_list_factor * mean) {
                    next.insert(next.end(), centroids.begin() + l * d, centroids.begin() + (l + 1) * d);
                    continue;
                }
                std::vector<float> points;
                points.reserve(size_t(count[l]) * d);
                for (int64_t i = 0; i < n; i++)
                    if (size_t(assign[size_t(i)]) == l) points.insert(points.end(), x + i * d, x + (i + 1) * d);
                faiss::ClusteringParameters cp = ivf->cp;
                cp.seed = ivf->cp.seed + int(l) + 1 + round * 7919;
                faiss::Clustering sub(d, size_t(std::ceil(double(count[l]) / mean)), cp);
                faiss::IndexFlat subIndex(d, ivf->metric_type);
                sub.train(count[l], points.data(), subIndex);
                next.insert(next.end(), subIndex.get_xb(), subIndex.get_xb() + subIndex.ntotal * d);
                splitNow++;
            }
            if (splitNow == 0) break;
            splitCount += splitNow;
            centroids.swap(next);
        }
        const size_t m = centroids.size() / d;
        ivf->quantizer->reset();
        ivf->quantizer->add(idx_t(m), centroids.data());
        ivf->nlist = m;
        ivf->replace_invlists(new faiss::ArrayInvertedLists(m, ivf->code_size), true);
        // The rest of training (scalar or product quantizer residuals) against the new centroids;
        // the coarse quantizer is trained and holds nlist centroids, so FAISS keeps it as it is.
        h->index->train(n, x);
        auto at = h->factory.find("IVF");
        if (at != std::string::npos) {
            size_t end = at + 3;
            while (end < h->factory.size() && std::isdigit(static_cast<unsigned char>(h->factory[end]))) end++;
            h->factory.replace(at + 3, end - at - 3, std::to_string(m));
        }
        if (lists) *lists = int64_t(m);
        if (split) *split = splitCount;
    });
}

int ew_faiss_add(ew_faiss_index *h, int64_t n, const float *x, const int64_t *ids, ew_faiss_error *err) {
    if (!h || (n > 0 && (!x || !ids))) return fill(err, EW_FAISS_E_ARGUMENT, "index, vectors and ids are required");
    if (h->mapped) return fill(err, EW_FAISS_E_UNSUPPORTED, "a memory-mapped index is read-only");
    if (!h->index->is_trained) return fill(err, EW_FAISS_E_NOT_TRAINED, "the index must be trained before adding");
    return guarded(err, EW_FAISS_E_FAISS, [&] { h->index->add_with_ids(n, x, ids); });
}

namespace {
// The IVF index itself when nearest lists can be recorded and used for it: IVF at the top
// (no transform, no IDMap) over a plain flat quantizer.
faiss::IndexIVF *probedIVF(const ew_faiss_index *h) {
    if (!h) return nullptr;
    auto ivf = dynamic_cast<faiss::IndexIVF *>(h->index.get());
    if (!ivf || !dynamic_cast<const faiss::IndexFlat *>(ivf->quantizer) || ivf->nlist <= EW_FAISS_NEAREST_LISTS)
        return nullptr;
    return ivf;
}
} // namespace

void ew_faiss_nearest_stats(int64_t *used, int64_t *declined) {
    ew::nearestStats(used, declined);
}

int64_t ew_faiss_probed_lists(const ew_faiss_index *h) {
    auto ivf = probedIVF(h);
    return ivf ? int64_t(ivf->nlist) : 0;
}

int ew_faiss_add_probed(ew_faiss_index *h, int64_t n, const float *x, const int64_t *ids, int32_t *lists, float *bounds,
                        ew_faiss_error *err) {
    if (!h || (n > 0 && (!x || !ids || !lists || !bounds)) || n < 0)
        return fill(err, EW_FAISS_E_ARGUMENT, "index, vectors, ids and outputs are required");
    if (h->mapped) return fill(err, EW_FAISS_E_UNSUPPORTED, "a memory-mapped index is read-only");
    if (!h->index->is_trained) return fill(err, EW_FAISS_E_NOT_TRAINED, "the index must be trained before adding");
    faiss::IndexIVF *ivf = probedIVF(h);
    if (!ivf)
        return fill(err, EW_FAISS_E_UNSUPPORTED,
                    "nearest lists are recorded for IVF over a flat quantizer of more than 32 lists only, not " +
                        h->factory);
    return guarded(err, EW_FAISS_E_FAISS, [&] {
        // What IndexIVF::add_with_ids does (assign, then add_core), with 32 lists each.
        const int64_t count = EW_FAISS_NEAREST_LISTS;
        const int64_t ranks[EW_FAISS_NEAREST_BOUNDS] = {4, 8, 16, 32};
        std::vector<idx_t> I(size_t(n) * size_t(count));
        std::vector<float> D(I.size());
        ivf->quantizer->search(n, x, count, D.data(), I.data());
        std::vector<idx_t> first(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; i++) {
            first[size_t(i)] = I[size_t(i * count)];
            for (int64_t j = 0; j < count; j++) lists[i * count + j] = int32_t(I[size_t(i * count + j)]);
            for (int b = 0; b < EW_FAISS_NEAREST_BOUNDS; b++)
                bounds[i * EW_FAISS_NEAREST_BOUNDS + b] = D[size_t(i * count + ranks[b] - 1)];
        }
        ivf->add_core(n, x, ids, first.data());
    });
}

int ew_faiss_can_remove(const ew_faiss_index *h) {
    if (!h || h->mapped) return 0;
    const faiss::Index *c = core(h->index.get());
    if (idMap(h->index.get())) return dynamic_cast<const faiss::IndexHNSW *>(c) ? 0 : 1;
    return faiss::ivflib::try_extract_index_ivf(h->index.get()) ? 1 : 0;
}

int ew_faiss_remove(ew_faiss_index *h, int64_t n, const int64_t *ids, int64_t *removed, ew_faiss_error *err) {
    if (!h || (n > 0 && !ids)) return fill(err, EW_FAISS_E_ARGUMENT, "index and ids are required");
    if (!ew_faiss_can_remove(h))
        return fill(err, EW_FAISS_E_UNSUPPORTED, "this index (" + h->factory + ") cannot remove vectors");
    return guarded(err, EW_FAISS_E_FAISS, [&] {
        faiss::IDSelectorArray sel(size_t(n), ids);
        size_t r = h->index->remove_ids(sel);
        if (removed) *removed = int64_t(r);
    });
}

} // extern "C"

namespace {

bool wantsHop(const ew_faiss_search_params *p) {
    return p && p->hop_table && p->hop_rows > 0 && p->hop_top > 0 && p->hop_lists > 0;
}

// The second hop (ew_faiss_search_params.hop_*) of one query whose first pass visited the
// `np` lists `probed` and left its k best in D/I (sorted, FAISS's order): the recorded lists
// of the best hop_top found, not visited yet, scanned with the same parameters and filter,
// then the k best of both passes, in FAISS's order (ties: first pass first).
void secondHop(const faiss::IndexIVF *ivf, const float *xi, int64_t k, const idx_t *probed, size_t np,
               const ew_faiss_search_params *p, const faiss::SearchParametersIVF *params, float *D, int64_t *I) {
    constexpr size_t stride = EW_FAISS_NEAREST_LISTS + EW_FAISS_NEAREST_BOUNDS;
    const size_t per = std::min<size_t>(size_t(p->hop_lists), EW_FAISS_NEAREST_LISTS);
    const idx_t nlist = idx_t(ivf->nlist);
    std::vector<idx_t> seen(probed, probed + np), extra;
    int taken = 0;
    for (int64_t j = 0; j < k && taken < p->hop_top; j++) {
        int64_t id = I[j];
        if (id < 0 || id >= p->hop_rows) continue;
        taken++;
        const int32_t *row = p->hop_table + size_t(id) * stride;
        for (size_t r = 0; r < per; r++) {
            idx_t l = row[r];
            if (l < 0 || l >= nlist || std::find(seen.begin(), seen.end(), l) != seen.end()) continue;
            seen.push_back(l);
            if (p->hop_max_list > 0 && ivf->invlists->list_size(size_t(l)) > size_t(p->hop_max_list)) continue;
            extra.push_back(l);
        }
    }
    if (extra.empty()) return;
    // The coarse distances of the extra lists (FAISS's scanners take them per list).
    const size_t d = size_t(ivf->d);
    std::vector<float> centroid(d), coarse(extra.size());
    const bool ip = ivf->metric_type == faiss::METRIC_INNER_PRODUCT;
    const ew::Kernels &kn = ew::kernels();
    for (size_t e = 0; e < extra.size(); e++) {
        ivf->quantizer->reconstruct(extra[e], centroid.data());
        coarse[e] = ip ? kn.inner(xi, centroid.data(), d) : kn.l2sqr(xi, centroid.data(), d);
    }
    faiss::SearchParametersIVF hop = *params;
    hop.nprobe = extra.size();
    std::vector<float> D2(static_cast<size_t>(k));
    std::vector<idx_t> I2(static_cast<size_t>(k));
    ivf->search_preassigned(1, xi, k, extra.data(), coarse.data(), D2.data(), I2.data(), false, &hop, nullptr);
    // Merge: both sorted nearest first; missing results (id -1) last.
    std::vector<float> Dm(static_cast<size_t>(k));
    std::vector<int64_t> Im(static_cast<size_t>(k));
    size_t a = 0, b = 0;
    for (int64_t o = 0; o < k; o++) {
        bool hasA = a < size_t(k) && I[a] >= 0, hasB = b < size_t(k) && I2[b] >= 0;
        bool takeA = hasA && (!hasB || (ip ? D[a] >= D2[b] : D[a] <= D2[b]));
        if (takeA) {
            Dm[size_t(o)] = D[a];
            Im[size_t(o)] = I[a];
            a++;
        } else if (hasB) {
            Dm[size_t(o)] = D2[b];
            Im[size_t(o)] = I2[b];
            b++;
        }
        // Both exhausted: a < k here (a full first pass fills the output), so I[a] is -1 and
        // D[a] is the distance FAISS gives a missing result (its heap's neutral value).
        else {
            Dm[size_t(o)] = D[a];
            Im[size_t(o)] = -1;
        }
    }
    std::copy(Dm.begin(), Dm.end(), D);
    std::copy(Im.begin(), Im.end(), I);
}

int searchPlain(const ew_faiss_index *h, int64_t n, const float *x, int64_t k, const ew_faiss_search_params *p,
                float *distances, int64_t *labels, ew_faiss_error *err) {
    return guarded(err, EW_FAISS_E_FAISS, [&] {
        FilterSelector filter;
        const faiss::IDSelector *sel = nullptr;
        if (hasFilter(p)) {
            filter.bitmap = p->allow_bitmap;
            filter.bits = p->allow_bits;
            filter.exclude = p->exclude;
            filter.nExclude = p->exclude ? p->n_exclude : 0;
            sel = &filter;
        }
        if (auto m = idMap(h->index.get())) {
            // Search under the id layer ourselves, so that parameters and filters apply.
            PositionSelector positions;
            positions.idOf = &m->id_map;
            positions.inner = sel;
            ParamChain chain(m->index, p, sel ? &positions : nullptr);
            m->index->search(n, x, k, distances, labels, chain.top);
            for (int64_t i = 0; i < n * k; i++)
                if (labels[i] >= 0) labels[i] = m->id_map[size_t(labels[i])];
        } else {
            ParamChain chain(h->index.get(), p, sel);
            h->index->search(n, x, k, distances, labels, chain.top);
        }
    });
}

} // namespace

extern "C" {

int ew_faiss_search(const ew_faiss_index *h, int64_t n, const float *x, int64_t k, const ew_faiss_search_params *p,
                    float *distances, int64_t *labels, ew_faiss_error *err) {
    if (!h || (n > 0 && (!x || !distances || !labels)) || k <= 0)
        return fill(err, EW_FAISS_E_ARGUMENT, "index, queries, outputs and k > 0 are required");
    if (!h->index->is_trained) return fill(err, EW_FAISS_E_NOT_TRAINED, "the index is not trained");
    // A second hop needs each query's visited lists: the batched path, which keeps them.
    if (wantsHop(p) && dynamic_cast<const faiss::IndexIVF *>(h->index.get()) && n > 0) {
        std::vector<ew_faiss_search_params> each(size_t(n), *p);
        return ew_faiss_search_batch(h, n, x, k, each.data(), distances, labels, err);
    }
    return searchPlain(h, n, x, k, p, distances, labels, err);
}

int ew_faiss_search_batch(const ew_faiss_index *h, int64_t n, const float *x, int64_t k,
                          const ew_faiss_search_params *params, float *distances, int64_t *labels,
                          ew_faiss_error *err) {
    if (!h || n < 0 || (n > 0 && (!x || !distances || !labels)) || k <= 0)
        return fill(err, EW_FAISS_E_ARGUMENT, "index, queries, outputs and k > 0 are required");
    if (!h->index->is_trained) return fill(err, EW_FAISS_E_NOT_TRAINED, "the index is not trained");
    const size_t d = size_t(h->index->d);
    auto oneByOne = [&]() -> int {
        for (int64_t i = 0; i < n; i++) {
            int rc = searchPlain(h, 1, x + size_t(i) * d, k, params ? &params[i] : nullptr, distances + i * k,
                                 labels + i * k, err);
            if (rc != 0) return rc;
        }
        return ok(err);
    };
    // IVF (not under a transform): one coarse pass for all, then each query's own lists and
    // filter, as IndexIVF::search does for one query. Anything else: query by query.
    const faiss::IndexIVF *ivf = dynamic_cast<const faiss::IndexIVF *>(h->index.get());
    bool hinted = false;
    bool hops = false;
    for (int64_t i = 0; params && i < n; i++) {
        hinted = hinted || (params[i].nearest_lists && params[i].nearest_bounds);
        hops = hops || wantsHop(&params[i]);
    }
    if (!ivf || n < (hinted || hops ? 1 : 2)) return oneByOne();
    std::vector<size_t> probes(static_cast<size_t>(n));
    size_t maxP = 0;
    for (int64_t i = 0; i < n; i++) {
        const ew_faiss_search_params *p = params ? &params[i] : nullptr;
        size_t np = std::min(ivf->nlist, (p && p->nprobe > 0) ? size_t(p->nprobe) : ivf->nprobe);
        if (np == 0) return oneByOne(); // FAISS's own error, as for one query
        probes[size_t(i)] = np;
        maxP = std::max(maxP, np);
    }
    std::vector<idx_t> assign;
    std::vector<float> coarse;
    std::vector<ew::NearestLists> hints;
    if (hinted) {
        hints.resize(size_t(n));
        for (int64_t i = 0; i < n; i++)
            if (params[i].nearest_lists && params[i].nearest_bounds)
                hints[size_t(i)] = {params[i].nearest_lists, params[i].nearest_bounds};
    }
    bool batched = false;
    int rc = guarded(err, EW_FAISS_E_FAISS, [&] {
        assign.resize(size_t(n) * maxP);
        coarse.resize(size_t(n) * maxP);
        batched = ew::coarseBatch(ivf->quantizer, n, x, probes.data(), maxP, assign.data(), coarse.data(),
                                  hinted ? hints.data() : nullptr);
    });
    if (rc != 0) return rc;
    if (!batched) {
        if (!hops) return oneByOne();
        // FAISS's own kernels: its coarse pass (each query's first nprobe of the maxP nearest).
        rc = guarded(err, EW_FAISS_E_FAISS,
                     [&] { ivf->quantizer->search(n, x, idx_t(maxP), coarse.data(), assign.data()); });
        if (rc != 0) return rc;
    }
    for (int64_t i = 0; i < n; i++) {
        const ew_faiss_search_params *p = params ? &params[i] : nullptr;
        rc = guarded(err, EW_FAISS_E_FAISS, [&] {
            FilterSelector filter;
            const faiss::IDSelector *sel = nullptr;
            if (hasFilter(p)) {
                filter.bitmap = p->allow_bitmap;
                filter.bits = p->allow_bits;
                filter.exclude = p->exclude;
                filter.nExclude = p->exclude ? p->n_exclude : 0;
                sel = &filter;
            }
            ParamChain chain(ivf, p, sel);
            auto ivfParams = static_cast<const faiss::SearchParametersIVF *>(chain.top);
            const idx_t *a = assign.data() + size_t(i) * maxP;
            ivf->invlists->prefetch_lists(a, int(probes[size_t(i)]));
            ivf->search_preassigned(1, x + size_t(i) * d, k, a, coarse.data() + size_t(i) * maxP, distances + i * k,
                                    labels + i * k, false, ivfParams, nullptr);
            if (wantsHop(p))
                secondHop(ivf, x + size_t(i) * d, k, a, probes[size_t(i)], p, ivfParams, distances + i * k,
                          labels + i * k);
        });
        if (rc != 0) return rc;
    }
    return ok(err);
}

int ew_faiss_reconstruct(const ew_faiss_index *h, int64_t id, float *out, ew_faiss_error *err) {
    if (!h || !out) return fill(err, EW_FAISS_E_ARGUMENT, "index and out are required");
    if (auto m = idMap(h->index.get())) {
        if (m->rev_map.find(id) == m->rev_map.end())
            return fill(err, EW_FAISS_E_NOT_FOUND, "no vector has id " + std::to_string(id));
    } else if (auto ivf = faiss::ivflib::try_extract_index_ivf(h->index.get())) {
        if (ivf->direct_map.type == faiss::DirectMap::Hashtable &&
            ivf->direct_map.hashtable.find(id) == ivf->direct_map.hashtable.end())
            return fill(err, EW_FAISS_E_NOT_FOUND, "no vector has id " + std::to_string(id));
    }
    return guarded(err, EW_FAISS_E_FAISS, [&] { h->index->reconstruct(id, out); });
}

int ew_faiss_compare_ids(const ew_faiss_index *h, const float *q, int64_t n, const int64_t *ids, float *dot,
                         float *norm2, float *l2, ew_faiss_error *err) {
    if (!h || (n > 0 && (!q || !ids)) || n < 0)
        return fill(err, EW_FAISS_E_ARGUMENT, "index, query and ids are required");
    const faiss::IndexIDMap2 *m = idMap(h->index.get());
    const faiss::IndexIVF *ivf =
        m ? nullptr : faiss::ivflib::try_extract_index_ivf(const_cast<faiss::Index *>(h->index.get()));
    for (int64_t i = 0; i < n; i++) {
        bool known = true;
        if (m)
            known = m->rev_map.count(ids[i]) > 0;
        else if (ivf && ivf->direct_map.type == faiss::DirectMap::Hashtable)
            known = ivf->direct_map.hashtable.count(ids[i]) > 0;
        if (!known) return fill(err, EW_FAISS_E_NOT_FOUND, "no vector has id " + std::to_string(ids[i]));
    }
    return guarded(err, EW_FAISS_E_FAISS, [&] {
        const ew::Kernels &k = ew::kernels();
        size_t d = size_t(h->index->d);
        std::vector<float> v(d);
        // Where the index keeps the floats themselves (Flat under IDMap2, IVF-Flat), compare
        // them in place; otherwise decode a copy.
        const faiss::IndexFlat *flat = m ? dynamic_cast<const faiss::IndexFlat *>(m->index) : nullptr;
        const bool ivfFloats = ivf && dynamic_cast<const faiss::IndexIVFFlat *>(ivf) &&
                               ivf->code_size == d * sizeof(float) && ivf->direct_map.type != faiss::DirectMap::NoMap;
        for (int64_t i = 0; i < n; i++) {
            auto compare = [&](const float *y) {
                if (dot) dot[i] = k.inner(q, y, d);
                if (norm2) norm2[i] = k.inner(y, y, d);
                if (l2) l2[i] = k.l2sqr(q, y, d);
            };
            if (flat) {
                compare(flat->get_xb() + size_t(m->rev_map.at(ids[i])) * d);
            } else if (ivfFloats) {
                idx_t lo = ivf->direct_map.get(ids[i]);
                faiss::InvertedLists::ScopedCodes code(ivf->invlists, size_t(faiss::lo_listno(lo)),
                                                       size_t(faiss::lo_offset(lo)));
                compare(reinterpret_cast<const float *>(code.get()));
            } else {
                h->index->reconstruct(ids[i], v.data());
                compare(v.data());
            }
        }
    });
}

int ew_faiss_knn_exact(const float *x, int64_t nx, const float *y, int64_t ny, int64_t dim, int64_t k, int metric,
                       float *distances, int64_t *labels, ew_faiss_error *err) {
    if ((nx > 0 && (!x || !distances || !labels)) || (ny > 0 && !y) || dim <= 0 || k <= 0)
        return fill(err, EW_FAISS_E_ARGUMENT, "queries, vectors, outputs, dim > 0 and k > 0 are required");
    return guarded(err, EW_FAISS_E_FAISS, [&] {
        // Few queries: FAISS would scan with its scalar kernel; ours instead. Many: BLAS.
        if (!ew::kernels().stock && nx < faiss::distance_compute_blas_threshold)
            ew::knnExact(x, nx, y, ny, size_t(dim), k, metric == EW_FAISS_METRIC_IP, distances, labels);
        else if (metric == EW_FAISS_METRIC_IP)
            faiss::knn_inner_product(x, y, size_t(dim), size_t(nx), size_t(ny), size_t(k), distances, labels);
        else
            faiss::knn_L2sqr(x, y, size_t(dim), size_t(nx), size_t(ny), size_t(k), distances, labels);
    });
}

int ew_faiss_set_defaults(ew_faiss_index *h, int64_t nprobe, int64_t ef_search, ew_faiss_error *err) {
    if (!h) return fill(err, EW_FAISS_E_ARGUMENT, "index is required");
    return guarded(err, EW_FAISS_E_FAISS, [&] {
        if (nprobe > 0)
            if (auto ivf = faiss::ivflib::try_extract_index_ivf(h->index.get())) ivf->nprobe = size_t(nprobe);
        if (ef_search > 0)
            if (auto hnsw = dynamic_cast<faiss::IndexHNSW *>(const_cast<faiss::Index *>(core(h->index.get()))))
                hnsw->hnsw.efSearch = int(ef_search);
    });
}

int64_t ew_faiss_ntotal(const ew_faiss_index *h) {
    return h ? int64_t(h->index->ntotal) : 0;
}
int64_t ew_faiss_dim(const ew_faiss_index *h) {
    return h ? int64_t(h->index->d) : 0;
}
int ew_faiss_metric(const ew_faiss_index *h) {
    return h && h->index->metric_type == faiss::METRIC_INNER_PRODUCT ? EW_FAISS_METRIC_IP : EW_FAISS_METRIC_L2;
}
int ew_faiss_is_trained(const ew_faiss_index *h) {
    return h && h->index->is_trained ? 1 : 0;
}
int ew_faiss_kind(const ew_faiss_index *h) {
    if (!h) return EW_FAISS_KIND_OTHER;
    const faiss::Index *c = core(h->index.get());
    if (dynamic_cast<const faiss::IndexIVF *>(c)) return EW_FAISS_KIND_IVF;
    if (dynamic_cast<const faiss::IndexHNSW *>(c)) return EW_FAISS_KIND_HNSW;
    if (dynamic_cast<const faiss::IndexFlat *>(c)) return EW_FAISS_KIND_FLAT;
    return EW_FAISS_KIND_OTHER;
}
int64_t ew_faiss_nlist(const ew_faiss_index *h) {
    if (!h) return 0;
    auto ivf = faiss::ivflib::try_extract_index_ivf(const_cast<faiss::Index *>(h->index.get()));
    return ivf ? int64_t(ivf->nlist) : 0;
}
int64_t ew_faiss_largest_list(const ew_faiss_index *h) {
    if (!h) return 0;
    auto ivf = faiss::ivflib::try_extract_index_ivf(const_cast<faiss::Index *>(h->index.get()));
    if (!ivf) return 0;
    size_t most = 0;
    for (size_t l = 0; l < ivf->nlist; l++) most = std::max(most, ivf->invlists->list_size(l));
    return int64_t(most);
}
const char *ew_faiss_factory(const ew_faiss_index *h) {
    return h ? h->factory.c_str() : "";
}

const char *ew_faiss_set_kernel(const char *name) {
    return ew::setKernels(name) ? ew::kernels().name : nullptr;
}
const char *ew_faiss_kernel(void) {
    return ew::kernels().name;
}
int ew_faiss_kernel_supported(const char *name) {
    return ew::kernelsSupported(name) ? 1 : 0;
}

const char *ew_faiss_blas_core(void) {
    // Looked up, not linked: Debian's libblas.so (the OpenBLAS alternative) does not export
    // it itself, and with another BLAS there is none.
    using CoreName = char *(*)();
    static CoreName coreName = reinterpret_cast<CoreName>(dlsym(RTLD_DEFAULT, "openblas_get_corename"));
    const char *name = coreName ? coreName() : nullptr;
    return name ? name : "";
}

int ew_faiss_set_blas_threads(int threads) {
    using SetThreads = void (*)(int);
    using GetThreads = int (*)();
    static SetThreads set = reinterpret_cast<SetThreads>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    static GetThreads get = reinterpret_cast<GetThreads>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    if (!set || !get) return 0;
    if (threads > 0) set(threads);
    return get();
}

const char *ew_faiss_blas_core_for_cpu(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return "SkylakeX";
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
    return "";
}

int ew_faiss_dots(const float *x, int64_t n, const float *y, int64_t ny, int64_t dim, float *out, ew_faiss_error *err) {
    if (n < 0 || ny < 0 || dim <= 0 || (n > 0 && ny > 0 && (!x || !y || !out)))
        return fill(err, EW_FAISS_E_ARGUMENT, "queries, vectors, output, dim > 0, n >= 0 and ny >= 0 are required");
    if (n > INT32_MAX || ny > INT32_MAX || dim > INT32_MAX)
        return fill(err, EW_FAISS_E_ARGUMENT, "n, ny and dim must each be below 2^31");
    ew::dots(x, n, y, ny, size_t(dim), out);
    return ok(err);
}

int ew_faiss_distances(int metric, const float *x, const float *y, int64_t ny, int64_t dim, float *out,
                       ew_faiss_error *err) {
    if (!x || (ny > 0 && (!y || !out)) || dim <= 0 || ny < 0)
        return fill(err, EW_FAISS_E_ARGUMENT, "query, vectors, output, dim > 0 and ny >= 0 are required");
    if (metric != EW_FAISS_METRIC_L2 && metric != EW_FAISS_METRIC_IP)
        return fill(err, EW_FAISS_E_ARGUMENT, "metric must be L2 or IP");
    const ew::Kernels &k = ew::kernels();
    ew::DistanceFn dis = metric == EW_FAISS_METRIC_IP ? k.inner : k.l2sqr;
    for (int64_t i = 0; i < ny; i++) out[i] = dis(x, y + i * dim, size_t(dim));
    return ok(err);
}

} // extern "C"
