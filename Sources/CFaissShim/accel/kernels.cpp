// kernels.cpp: squared L2 and inner product for AVX-512, AVX2+FMA and portable C++, and
// the run-time choice between them (see kernels.h).
//
// Accuracy: every kernel sums in float like FAISS's own fvec_L2sqr_ref, but in 8 to 64
// partial sums instead of one, so results differ from FAISS's by rounding only (the partial
// sums are the more accurate). AVX kernels use FMA (one rounding per term instead of two).

#include "kernels.h"

#include <immintrin.h>

#include <faiss/utils/distances.h>

#include <atomic>
#include <cstring>
#include <vector>

namespace ew {
namespace {

// ---- portable: compiled for the baseline target; 8 partial sums the compiler can vectorise.

float l2sqrScalar(const float *x, const float *y, size_t d) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= d; i += 8)
        for (int j = 0; j < 8; j++) {
            float t = x[i + j] - y[i + j];
            acc[j] += t * t;
        }
    float res = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < d; i++) {
        float t = x[i] - y[i];
        res += t * t;
    }
    return res;
}

float innerScalar(const float *x, const float *y, size_t d) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= d; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += x[i + j] * y[i + j];
    float res = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < d; i++) res += x[i] * y[i];
    return res;
}

// ---- AVX2 + FMA: 4 x 8 lanes, a scalar tail.

__attribute__((target("avx2,fma"))) inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma"))) float l2sqrAVX2(const float *x, const float *y, size_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        __m256 t0 = _mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i));
        __m256 t1 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8));
        __m256 t2 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16));
        __m256 t3 = _mm256_sub_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24));
        a0 = _mm256_fmadd_ps(t0, t0, a0);
        a1 = _mm256_fmadd_ps(t1, t1, a1);
        a2 = _mm256_fmadd_ps(t2, t2, a2);
        a3 = _mm256_fmadd_ps(t3, t3, a3);
    }
    for (; i + 8 <= d; i += 8) {
        __m256 t = _mm256_sub_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i));
        a0 = _mm256_fmadd_ps(t, t, a0);
    }
    float res = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < d; i++) {
        float t = x[i] - y[i];
        res += t * t;
    }
    return res;
}

__attribute__((target("avx2,fma"))) float innerAVX2(const float *x, const float *y, size_t d) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    for (; i + 8 <= d; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
    float res = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < d; i++) res += x[i] * y[i];
    return res;
}

// ---- AVX-512F: 4 x 16 lanes, a masked tail (masked loads never touch the bytes past d).

__attribute__((target("avx512f"))) float l2sqrAVX512(const float *x, const float *y, size_t d) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 64 <= d; i += 64) {
        __m512 t0 = _mm512_sub_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i));
        __m512 t1 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16));
        __m512 t2 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(y + i + 32));
        __m512 t3 = _mm512_sub_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(y + i + 48));
        a0 = _mm512_fmadd_ps(t0, t0, a0);
        a1 = _mm512_fmadd_ps(t1, t1, a1);
        a2 = _mm512_fmadd_ps(t2, t2, a2);
        a3 = _mm512_fmadd_ps(t3, t3, a3);
    }
    for (; i + 16 <= d; i += 16) {
        __m512 t = _mm512_sub_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i));
        a0 = _mm512_fmadd_ps(t, t, a0);
    }
    if (i < d) {
        __mmask16 m = __mmask16((1u << (d - i)) - 1);
        __m512 t = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i));
        a1 = _mm512_fmadd_ps(t, t, a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

__attribute__((target("avx512f"))) float innerAVX512(const float *x, const float *y, size_t d) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 64 <= d; i += 64) {
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(y + i + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 32), _mm512_loadu_ps(y + i + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 48), _mm512_loadu_ps(y + i + 48), a3);
    }
    for (; i + 16 <= d; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i), a0);
    if (i < d) {
        __mmask16 m = __mmask16((1u << (d - i)) - 1);
        a1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), _mm512_maskz_loadu_ps(m, y + i), a1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
}

// ---- SQ8 codes: sum (a_i - c_i b_i)^2, the code widened to float in registers.

float sq8L2Scalar(const float *a, const float *b, const uint8_t *c, size_t d) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= d; i += 8)
        for (int j = 0; j < 8; j++) {
            float t = a[i + j] - float(c[i + j]) * b[i + j];
            acc[j] += t * t;
        }
    float res = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < d; i++) {
        float t = a[i] - float(c[i]) * b[i];
        res += t * t;
    }
    return res;
}

__attribute__((target("avx2,fma"))) float sq8L2AVX2(const float *a, const float *b, const uint8_t *c, size_t d) {
    __m256 s0 = _mm256_setzero_ps(), s1 = s0;
    size_t i = 0;
    for (; i + 16 <= d; i += 16) {
        __m256 c0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + i))));
        __m256 c1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(c + i + 8))));
        __m256 t0 = _mm256_fnmadd_ps(c0, _mm256_loadu_ps(b + i), _mm256_loadu_ps(a + i));
        __m256 t1 = _mm256_fnmadd_ps(c1, _mm256_loadu_ps(b + i + 8), _mm256_loadu_ps(a + i + 8));
        s0 = _mm256_fmadd_ps(t0, t0, s0);
        s1 = _mm256_fmadd_ps(t1, t1, s1);
    }
    float res = hsum256(_mm256_add_ps(s0, s1));
    for (; i < d; i++) {
        float t = a[i] - float(c[i]) * b[i];
        res += t * t;
    }
    return res;
}

__attribute__((target("avx512f"))) float sq8L2AVX512(const float *a, const float *b, const uint8_t *c, size_t d) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    size_t i = 0;
    for (; i + 32 <= d; i += 32) {
        __m512 c0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + i))));
        __m512 c1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(c + i + 16))));
        __m512 t0 = _mm512_fnmadd_ps(c0, _mm512_loadu_ps(b + i), _mm512_loadu_ps(a + i));
        __m512 t1 = _mm512_fnmadd_ps(c1, _mm512_loadu_ps(b + i + 16), _mm512_loadu_ps(a + i + 16));
        s0 = _mm512_fmadd_ps(t0, t0, s0);
        s1 = _mm512_fmadd_ps(t1, t1, s1);
    }
    float res = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
    for (; i < d; i++) {
        float t = a[i] - float(c[i]) * b[i];
        res += t * t;
    }
    return res;
}

// ---- Many dots: 6 queries x one panel of 16 vectors per call, 12 accumulators in registers.
//
// Per dimension: 2 loads of the panel, 6 broadcasts of the queries' floats, 12 FMAs, so the
// FMA units, not the loads, set the pace. The panel (64 * d bytes: 128 KiB at 2048-d) stays in
// L2 while every group of 6 queries runs over it, so each vector is read from memory once
// per call. Measured against OpenBLAS's sgemm on this project's 2-core Zen 3, 2048-d, one
// thread (sgemm repacks the whole matrix on every call): 1,595 vectors x 16 queries 2.1 vs
// 2.8 ms, x 4 queries 1.2 vs 2.2 ms; 4,000 x 16: 5.2 vs 8.4 ms.

__attribute__((target("avx2,fma"))) void dots6x16AVX2(const float *q, size_t d, const float *panel, float *c,
                                                      size_t ldc) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00, a30 = a00, a31 = a00,
           a40 = a00, a41 = a00, a50 = a00, a51 = a00;
    const float *q0 = q, *q1 = q + d, *q2 = q + 2 * d, *q3 = q + 3 * d, *q4 = q + 4 * d, *q5 = q + 5 * d;
    for (size_t k = 0; k < d; k++, panel += kPanelWidth) {
        __m256 y0 = _mm256_loadu_ps(panel), y1 = _mm256_loadu_ps(panel + 8), b;
        b = _mm256_broadcast_ss(q0 + k);
        a00 = _mm256_fmadd_ps(b, y0, a00);
        a01 = _mm256_fmadd_ps(b, y1, a01);
        b = _mm256_broadcast_ss(q1 + k);
        a10 = _mm256_fmadd_ps(b, y0, a10);
        a11 = _mm256_fmadd_ps(b, y1, a11);
        b = _mm256_broadcast_ss(q2 + k);
        a20 = _mm256_fmadd_ps(b, y0, a20);
        a21 = _mm256_fmadd_ps(b, y1, a21);
        b = _mm256_broadcast_ss(q3 + k);
        a30 = _mm256_fmadd_ps(b, y0, a30);
        a31 = _mm256_fmadd_ps(b, y1, a31);
        b = _mm256_broadcast_ss(q4 + k);
        a40 = _mm256_fmadd_ps(b, y0, a40);
        a41 = _mm256_fmadd_ps(b, y1, a41);
        b = _mm256_broadcast_ss(q5 + k);
        a50 = _mm256_fmadd_ps(b, y0, a50);
        a51 = _mm256_fmadd_ps(b, y1, a51);
    }
    _mm256_storeu_ps(c, a00);
    _mm256_storeu_ps(c + 8, a01);
    _mm256_storeu_ps(c + ldc, a10);
    _mm256_storeu_ps(c + ldc + 8, a11);
    _mm256_storeu_ps(c + 2 * ldc, a20);
    _mm256_storeu_ps(c + 2 * ldc + 8, a21);
    _mm256_storeu_ps(c + 3 * ldc, a30);
    _mm256_storeu_ps(c + 3 * ldc + 8, a31);
    _mm256_storeu_ps(c + 4 * ldc, a40);
    _mm256_storeu_ps(c + 4 * ldc + 8, a41);
    _mm256_storeu_ps(c + 5 * ldc, a50);
    _mm256_storeu_ps(c + 5 * ldc + 8, a51);
}

// All groups of 6 queries over each panel in turn. A last group of fewer than 6 is copied into
// zero rows and its products go through a scratch tile, so nothing past n is read or written.
void panelDotsAVX2(const float *x, size_t n, size_t d, const float *panels, size_t nc, float *out, size_t ldo) {
    constexpr size_t R = 6;
    size_t full = n / R * R, rest = n - full;
    std::vector<float> tailRows(rest ? R * d : 0, 0.0f), tile(rest ? R * kPanelWidth : 0);
    if (rest) std::memcpy(tailRows.data(), x + full * d, rest * d * sizeof(float));
    for (size_t p = 0; p < panelColumns(nc) / kPanelWidth; p++) {
        const float *panel = panels + p * kPanelWidth * d;
        for (size_t i = 0; i < full; i += R) dots6x16AVX2(x + i * d, d, panel, out + i * ldo + p * kPanelWidth, ldo);
        if (rest) {
            dots6x16AVX2(tailRows.data(), d, panel, tile.data(), kPanelWidth);
            for (size_t r = 0; r < rest; r++)
                std::memcpy(out + (full + r) * ldo + p * kPanelWidth, tile.data() + r * kPanelWidth,
                            kPanelWidth * sizeof(float));
        }
    }
}

const Kernels kScalar = {"scalar", l2sqrScalar, innerScalar, sq8L2Scalar, nullptr, false};
const Kernels kAVX2 = {"avx2", l2sqrAVX2, innerAVX2, sq8L2AVX2, panelDotsAVX2, false};
// Many dots with AVX2 there too (every AVX-512F CPU has AVX2 and FMA): no AVX-512 version is
// written, since none of this project's test machines of late could run one.
const Kernels kAVX512 = {"avx512", l2sqrAVX512, innerAVX512, sq8L2AVX512, panelDotsAVX2, false};
// FAISS's own (in Debian's baseline build: fvec_L2sqr_ref, one float sum); the fast indexes
// run FAISS's own scanners with it, so sq8l2 is never called.
const Kernels kFaiss = {"faiss", faiss::fvec_L2sqr, faiss::fvec_inner_product, sq8L2Scalar, nullptr, true};

// __builtin_cpu_supports checks CPUID and that the OS saves the wider registers (XGETBV).
bool canAVX512() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}
bool canAVX2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}

const Kernels *best() {
    return canAVX512() ? &kAVX512 : canAVX2() ? &kAVX2 : &kScalar;
}

std::atomic<const Kernels *> current{nullptr};

} // namespace

void packPanels(const float *y, size_t nc, size_t d, float *panels) {
    size_t cols = panelColumns(nc);
    for (size_t p = 0; p < cols / kPanelWidth; p++)
        for (size_t k = 0; k < d; k++)
            for (size_t j = 0; j < kPanelWidth; j++) {
                size_t v = p * kPanelWidth + j;
                panels[(p * d + k) * kPanelWidth + j] = v < nc ? y[v * d + k] : 0.0f;
            }
}

const Kernels &kernels() {
    const Kernels *k = current.load(std::memory_order_acquire);
    if (!k) {
        k = best();
        const Kernels *expected = nullptr;
        if (!current.compare_exchange_strong(expected, k, std::memory_order_acq_rel)) k = expected;
    }
    return *k;
}

bool kernelsSupported(const char *name) {
    if (!name) return false;
    if (!std::strcmp(name, "auto") || !std::strcmp(name, "scalar") || !std::strcmp(name, "faiss")) return true;
    if (!std::strcmp(name, "avx2")) return canAVX2();
    if (!std::strcmp(name, "avx512")) return canAVX512();
    return false;
}

bool setKernels(const char *name) {
    if (!name) return false;
    const Kernels *k;
    if (!std::strcmp(name, "auto"))
        k = best();
    else if (!std::strcmp(name, "scalar"))
        k = &kScalar;
    else if (!std::strcmp(name, "faiss"))
        k = &kFaiss;
    else if (!std::strcmp(name, "avx2"))
        k = canAVX2() ? &kAVX2 : &kScalar;
    else if (!std::strcmp(name, "avx512"))
        k = canAVX512() ? &kAVX512 : &kScalar;
    else
        return false;
    current.store(k, std::memory_order_release);
    return true;
}

} // namespace ew
