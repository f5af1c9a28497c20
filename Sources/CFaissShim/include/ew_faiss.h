/*
 * ew_faiss.h: the few FAISS operations EwallML needs, from C. Compiles as C and C++.
 * Debian's libfaiss-dev ships FAISS's own c_api headers without their implementation, so
 * this is ours: a thin C++ file (faiss_shim.cpp) over libfaiss.a.
 *
 * Ids: every index made here takes caller-chosen int64 ids. IVF indexes store them natively
 * (with a hash-table direct map, so ids can be reconstructed and removed); every other kind
 * (Flat, HNSW, PQ, ...) is wrapped in IndexIDMap2. The wrapping is part of the factory string
 * that ew_faiss_factory reports, and the file stays readable by Python's faiss.read_index.
 *
 * Threading contract:
 *   - ew_faiss_search, ew_faiss_search_batch, ew_faiss_reconstruct, ew_faiss_compare_ids, ew_faiss_write and the
 *     getters only read the index: any number of threads may call them at once on one handle.
 *   - ew_faiss_set_kernel is process-wide and may be called at any time (see below).
 *   - ew_faiss_train, ew_faiss_add and ew_faiss_remove change it: the caller guarantees no
 *     other call on that handle runs at the same time. ew_faiss_free likewise.
 *   - FAISS parallelises large calls with OpenMP; ew_faiss_set_threads sets the process-wide
 *     OpenMP thread count. A search of one query runs on the calling thread.
 *   - No call keeps a pointer it was given after it returns.
 *
 * Distances: FAISS's hot loops are ours (see "Distance kernels" below); files stay FAISS's.
 *
 * Errors: every fallible call returns 0 or a negative EW_FAISS_E_* code and fills the
 * caller-owned ew_faiss_error (may be NULL). No C++ exception crosses this header.
 */
#ifndef EW_FAISS_H
#define EW_FAISS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    EW_FAISS_OK = 0,
    EW_FAISS_E_ARGUMENT = -1,    /* null pointer, bad dimension, k <= 0, ... */
    EW_FAISS_E_FACTORY = -2,     /* the factory string is not one FAISS understands */
    EW_FAISS_E_NOT_TRAINED = -3, /* add or search before train */
    EW_FAISS_E_UNSUPPORTED = -4, /* this index kind cannot do that (e.g. remove from HNSW) */
    EW_FAISS_E_IO = -5,          /* the file could not be written or read, or is not an index */
    EW_FAISS_E_NOT_FOUND = -6,   /* reconstruct: no vector has this id */
    EW_FAISS_E_MEMORY = -7,      /* allocation failed */
    EW_FAISS_E_FAISS = -8,       /* any other FAISS error; the message says which */
};

enum { EW_FAISS_METRIC_L2 = 0, EW_FAISS_METRIC_IP = 1 };

/* What kind of index sits under the id layer and any transform. */
enum { EW_FAISS_KIND_FLAT = 0, EW_FAISS_KIND_IVF = 1, EW_FAISS_KIND_HNSW = 2, EW_FAISS_KIND_OTHER = 3 };

typedef struct ew_faiss_error {
    int code;
    char message[512];
} ew_faiss_error;

typedef struct ew_faiss_index ew_faiss_index;

/* Per-call search parameters. Zero/NULL fields keep the index's own setting. */
typedef struct ew_faiss_search_params {
    int64_t nprobe;              /* IVF: inverted lists to visit */
    int64_t ef_search;           /* HNSW: candidate list size */
    const uint8_t *allow_bitmap; /* when set, only ids whose bit is 1 (bit id%8 of byte id/8)... */
    int64_t allow_bits;          /* ...and id < allow_bits are considered */
    const int64_t *exclude;      /* ids never returned (e.g. the query product itself) */
    size_t n_exclude;
    /* IVF, ew_faiss_search_batch only: the query is a vector the index holds, and these are
       its EW_FAISS_NEAREST_LISTS nearest lists and EW_FAISS_NEAREST_BOUNDS distances as
       ew_faiss_add_probed wrote them (NULL: none). A query whose nprobe is below 32 takes its
       lists from them: our kernel's distances to the first 3, 7, 15 or 31 of them (the fewest
       that hold nprobe), kept when the recorded distance of the next (the 4th, 8th, 16th or
       32nd) proves every list not computed farther than the worst kept; else the next step,
       and after all 32 the usual coarse pass. Same answers either way. */
    const int32_t *nearest_lists;
    const float *nearest_bounds;
    /* IVF, a second hop through the recorded lists of what the first found: after the nprobe
       lists, the first `hop_lists` recorded lists of each of the `hop_top` best vectors found
       (rows of `hop_table`, the whole nearest_lists.bin mapping, `hop_rows` rows of
       EW_FAISS_NEAREST_LISTS int32 lists then EW_FAISS_NEAREST_BOUNDS float32, by id) that
       were not visited yet are scanned too, with the same filter, and the k best of both
       passes are kept. A vector lies in one list only, so the two passes never repeat one.
       Near a hub the nearest neighbours of a product fall into lists whose centroids are far
       from the product but near its neighbours; this reaches them without a deeper nprobe.
       hop_max_list > 0: lists of more entries than that are left out of the hop (hubs: the
       means of many clusters, near everything, costly to scan and seldom where the missing
       neighbours are). hop_top or hop_lists 0, or no table: no second hop (a stock FAISS search). */
    const int32_t *hop_table;
    int64_t hop_rows;
    int32_t hop_top;
    int32_t hop_lists;
    int64_t hop_max_list;
} ew_faiss_search_params;

/* Nearest lists recorded per vector, and the ranks (1-based) whose distances are kept. */
#define EW_FAISS_NEAREST_LISTS  32
#define EW_FAISS_NEAREST_BOUNDS 4 /* the 4th, 8th, 16th and 32nd */

/* Sets OpenMP's thread count for FAISS (process-wide). Returns the count now in force. */
int ew_faiss_set_threads(int threads);

/* Builds an empty index from an index_factory string ("Flat", "IVF1024,Flat", "HNSW32",
   "IVF4096,PQ64x8np", "OPQ64,IVF4096,PQ64", ...) and a metric. See the header comment on ids. */
int ew_faiss_new(int64_t dim, const char *factory, int metric, ew_faiss_index **out, ew_faiss_error *err);

/* Reads an index file. mmap != 0 maps IVF inverted lists read-only from the file instead of
   loading them (the index can then be searched, not changed); other kinds load fully. A loaded
   (not mapped) index's vectors are put on transparent huge pages where Linux allows
   (madvise MADV_HUGEPAGE + MADV_COLLAPSE): list scans read memory at DRAM speed, and with
   4 KiB pages they paid a TLB miss every half vector (2048-d). */
int ew_faiss_read(const char *path, int mmap, ew_faiss_index **out, ew_faiss_error *err);

/* Writes the index to `path` (the whole file; atomic replacement is the caller's job). */
int ew_faiss_write(const ew_faiss_index *index, const char *path, ew_faiss_error *err);

void ew_faiss_free(ew_faiss_index *index);

/* Makes room for n vectors in total where the index keeps them in one array (flat kinds), so
   that adding them does not copy the array as it grows. A hint: other kinds ignore it. */
int ew_faiss_reserve(ew_faiss_index *index, int64_t n, ew_faiss_error *err);

int ew_faiss_train(ew_faiss_index *index, int64_t n, const float *x, ew_faiss_error *err);

/* Trains an untrained IVF index as ew_faiss_train does, then splits every inverted list that
   holds more than max_list_factor (>= 1) times the mean share of the n training vectors into
   lists of about the mean (k-means over that list's own vectors), so that no "hub" centroid
   near every query sends each search through a large share of the catalogue. The index then has
   more lists than its factory string asked for; ew_faiss_factory reports the real count and the
   file stays a stock IndexIVF*. *lists (may be NULL) gets the list count, *split (may be NULL)
   how many lists were split. Other kinds, or fewer than 2 vectors per list: plain training. */
int ew_faiss_train_balanced(ew_faiss_index *index, int64_t n, const float *x, double max_list_factor, int64_t *lists,
                            int64_t *split, ew_faiss_error *err);

/* Adds n vectors (n*dim floats, borrowed) with their ids. */
int ew_faiss_add(ew_faiss_index *index, int64_t n, const float *x, const int64_t *ids, ew_faiss_error *err);

/* IVF with a flat coarse quantizer (not under a transform) of more than 32 lists: adds as
   ew_faiss_add does, and writes each vector's 32 nearest lists, nearest first (lists: n*32,
   caller-owned), and the distances of its 4th, 8th, 16th and 32nd (bounds: n*4), as FAISS's
   coarse search computed them. One coarse pass finds both: the list a vector goes into is the
   first of them. E_UNSUPPORTED for other kinds. */
int ew_faiss_add_probed(ew_faiss_index *index, int64_t n, const float *x, const int64_t *ids, int32_t *lists,
                        float *bounds, ew_faiss_error *err);

/* Process-wide counts since start: batched queries whose lists came from their nearest lists
   (used), and those that carried nearest lists but took the coarse pass (declined: nprobe above
   the lists recorded, or the bound did not prove them). Either may be NULL. */
void ew_faiss_nearest_stats(int64_t *used, int64_t *declined);

/* The coarse quantizer's list count of an IVF index (not under a transform) when
   ew_faiss_add_probed can record nearest lists for it (a flat quantizer of more than 32 lists);
   0 otherwise. */
int64_t ew_faiss_probed_lists(const ew_faiss_index *index);

/* Removes the given ids; *removed (may be NULL) gets how many were present. */
int ew_faiss_remove(ew_faiss_index *index, int64_t n, const int64_t *ids, int64_t *removed, ew_faiss_error *err);

/* k nearest neighbours of n queries. distances/labels: n*k, caller-owned. Missing results
   have label -1. Distances are FAISS's: squared L2 for the L2 metric, inner product for IP. */
int ew_faiss_search(const ew_faiss_index *index, int64_t n, const float *x, int64_t k,
                    const ew_faiss_search_params *params, float *distances, int64_t *labels, ew_faiss_error *err);

/* n queries at once, each with its own parameters (params: n structs, or NULL for the
   index's own settings for all): the same answers as n calls of ew_faiss_search with one query
   each (the same ids in the same order, the same distances; only exact ties in the coarse
   pass could order differently), cheaper together. For an IVF index with a flat coarse
   quantizer, one coarse pass for all queries (from 4 queries on, one product of all queries
   with all centroids: ew_faiss_dots below, whose candidates are re-ranked with our kernel and
   checked against a bound on float error; below that, our kernel query by query), then each
   query's own lists with its own nprobe and filter. Other kinds, and FAISS's own kernel: query
   by query. Runs on the calling thread (BLAS may use its own threads). distances/labels: n*k, caller-owned. Read-only. */
int ew_faiss_search_batch(const ew_faiss_index *index, int64_t n, const float *x, int64_t k,
                          const ew_faiss_search_params *params, float *distances, int64_t *labels, ew_faiss_error *err);

/* Copies the stored vector of `id` into out (dim floats). Approximate for compressed kinds. */
int ew_faiss_reconstruct(const ew_faiss_index *index, int64_t id, float *out, ew_faiss_error *err);

/* For each of n ids (borrowed), from the vector the index stores for it (approximate for
   compressed kinds) and one query (dim floats, borrowed), with the kernel in force: the inner
   product (dot), the stored vector's squared norm (norm2) and the squared L2 distance (l2).
   Each output (n floats, caller-owned) may be NULL. An id the index does not hold is
   EW_FAISS_E_NOT_FOUND. Read-only: the vectors never leave C (no copy per id into the caller). */
int ew_faiss_compare_ids(const ew_faiss_index *index, const float *query, int64_t n, const int64_t *ids, float *dot,
                         float *norm2, float *l2, ew_faiss_error *err);

/* Exact k-NN of n queries among ny vectors (both caller arrays, no index): labels are row
   numbers in y. For ground truth when measuring recall. */
int ew_faiss_knn_exact(const float *x, int64_t nx, const float *y, int64_t ny, int64_t dim, int64_t k, int metric,
                       float *distances, int64_t *labels, ew_faiss_error *err);

/* Sets the search settings the index keeps (and writes to its file, so that a reader such as
   Python's faiss.read_index searches the same way): IVF nprobe, HNSW efSearch. 0 keeps one. */
int ew_faiss_set_defaults(ew_faiss_index *index, int64_t nprobe, int64_t ef_search, ew_faiss_error *err);

int64_t ew_faiss_ntotal(const ew_faiss_index *index);
int64_t ew_faiss_dim(const ew_faiss_index *index);
int ew_faiss_metric(const ew_faiss_index *index);
int ew_faiss_is_trained(const ew_faiss_index *index);
int ew_faiss_kind(const ew_faiss_index *index);
/* IVF: number of inverted lists; 0 for other kinds. */
int64_t ew_faiss_nlist(const ew_faiss_index *index);
/* 1 when ew_faiss_remove works on this index (and it is not memory-mapped). */
int ew_faiss_can_remove(const ew_faiss_index *index);
/* The factory string the index was built from, with the IDMap2 wrapping made explicit
   ("IDMap2,Flat"); for a file read from disk, a description rebuilt from its structure. */
const char *ew_faiss_factory(const ew_faiss_index *index);
/* IVF: the entries of the longest inverted list (0 for other kinds). */
int64_t ew_faiss_largest_list(const ew_faiss_index *index);

/* ---- Distance kernels.
   Debian's libfaiss.a is built for baseline x86-64, so its distances run scalar code. Indexes
   made or read here compute them with our kernels instead, chosen at run time by CPU: the
   lists of IVF-Flat, the flat coarse quantizer of any IVF kind (below 20 queries a call;
   FAISS's BLAS path above; a batch of searches: our many-dots kernel, see ew_faiss_dots),
   Flat (under IDMap2), HNSW-Flat storage, and ew_faiss_knn_exact
   below 20 queries. Results are FAISS's (same ids in the same order, except exact ties;
   distances within float rounding, about 1e-6 relative at 2048-d). Files written are plain
   FAISS files (IndexIVFFlat, IndexFlat).

   Kernel names: "avx512" (AVX-512F), "avx2" (AVX2 + FMA), "scalar" (portable C++, any x86-64),
   "faiss" (FAISS's own code paths, for comparison), "auto" (the best this CPU runs; default).
   The choice is process-wide; any thread may change it at any time; a search in flight may
   use either. No call here logs. */

/* Puts a kernel in force and returns the one now in force (a static string): the one asked
   for, or "scalar" when this CPU cannot run it. NULL for an unknown name (nothing changes). */
const char *ew_faiss_set_kernel(const char *name);

/* The kernel in force (a static string). */
const char *ew_faiss_kernel(void);

/* 1 when this CPU (and OS) can run the kernel `name`; 0 otherwise or for an unknown name. */
int ew_faiss_kernel_supported(const char *name);

/* OpenBLAS's name for the kernels it picked for this CPU ("Prescott", "Haswell", "SkylakeX",
   "Zen", ...; static string); "" when the process's BLAS is not OpenBLAS. */
const char *ew_faiss_blas_core(void);

/* Sets OpenBLAS's thread count (process-wide) when the BLAS is OpenBLAS; returns the count in
   force, or 0 with another BLAS. With 1, each BLAS call runs on the thread that makes it, so
   several threads can each run their own calls side by side (no pool to share, and no pool
   threads spinning between calls). */
int ew_faiss_set_blas_threads(int threads);

/* The OpenBLAS core family whose kernels this CPU runs and our tests check: "SkylakeX"
   (AVX-512 F/CD/BW/DQ/VL), "Haswell" (AVX2 + FMA), or "" (neither). For choosing
   OPENBLAS_CORETYPE when OpenBLAS itself falls back to its generic kernels (static string). */
const char *ew_faiss_blas_core_for_cpu(void);

/* Inner products of n queries x (n*dim floats) with ny vectors y (ny*dim floats), as the
   batched coarse pass computes them: out[i*ny + j] = x_i . y_j (n*ny floats, caller-owned).
   With the avx2 or avx512 kernel in force, our many-dots kernel over y packed into panels
   (here packed on every call; an index packs its centroids once); with scalar or faiss,
   OpenBLAS's sgemm. For tests and benchmarks. */
int ew_faiss_dots(const float *x, int64_t n, const float *y, int64_t ny, int64_t dim, float *out, ew_faiss_error *err);

/* Distances from one query x (dim floats, borrowed) to each of ny vectors y (ny*dim floats,
   borrowed) with the kernel in force: squared L2 or inner product. out: ny floats, caller-owned. */
int ew_faiss_distances(int metric, const float *x, const float *y, int64_t ny, int64_t dim, float *out,
                       ew_faiss_error *err);

#ifdef __cplusplus
}
#endif

#endif
