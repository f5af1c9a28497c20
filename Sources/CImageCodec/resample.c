/*
 * resample.c: preprocessing kernels.
 *
 * ew_img_resize_bilinear reproduces PIL's Image.resize(BILINEAR) for 8-bit RGB exactly (the
 * resize torchvision applies to PIL images): a triangle filter whose support widens with the
 * downscale factor (antialiasing), coefficients normalised per output pixel and quantised to
 * 22-bit fixed point, a horizontal pass over the needed rows into an 8-bit image, then a
 * vertical pass. Matching PIL bit for bit is what lets the parity tests hold tight bounds.
 */
#include "ew_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#define PRECISION_BITS (32 - 8 - 2)

static inline uint8_t clip8(int32_t v) {
    v >>= PRECISION_BITS;
    return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
}

static inline double triangle(double x) {
    if (x < 0.0) x = -x;
    return x < 1.0 ? 1.0 - x : 0.0;
}

/* Coefficients for resizing one axis of in_size samples to out_size. Returns ksize, or 0 on
   allocation failure. bounds[2*i] = first input sample, bounds[2*i+1] = number of samples. */
static int coeffs(uint32_t in_size, uint32_t out_size, int32_t **bounds_out, int32_t **kk_out) {
    double scale = (double)in_size / out_size, filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 1.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    double *pre = malloc(sizeof(double) * out_size * ksize);
    int32_t *kk = malloc(sizeof(int32_t) * out_size * ksize);
    int32_t *bounds = malloc(sizeof(int32_t) * out_size * 2);
    if (!pre || !kk || !bounds) {
        free(pre);
        free(kk);
        free(bounds);
        return 0;
    }
    for (uint32_t xx = 0; xx < out_size; xx++) {
        double center = (xx + 0.5) * scale, ww = 0.0, ss = 1.0 / filterscale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > (int)in_size) xmax = (int)in_size;
        xmax -= xmin;
        double *k = pre + (size_t)xx * ksize;
        int x;
        for (x = 0; x < xmax; x++) {
            double w = triangle((x + xmin - center + 0.5) * ss);
            k[x] = w;
            ww += w;
        }
        for (x = 0; x < xmax; x++)
            if (ww != 0.0) k[x] /= ww;
        for (; x < ksize; x++) k[x] = 0;
        bounds[xx * 2] = xmin;
        bounds[xx * 2 + 1] = xmax;
    }
    for (size_t i = 0; i < (size_t)out_size * ksize; i++)
        kk[i] = pre[i] < 0 ? (int32_t)(-0.5 + pre[i] * (1 << PRECISION_BITS))
                           : (int32_t)(0.5 + pre[i] * (1 << PRECISION_BITS));
    free(pre);
    *bounds_out = bounds;
    *kk_out = kk;
    return ksize;
}

/* ---- The two passes: a portable one, and AVX2 (chosen at run time; the same integer
   arithmetic in the same order, so the bytes are identical). ---- */

static void horizontal_scalar(const uint8_t *row, uint8_t *o, uint32_t dw, const int32_t *bh, const int32_t *kh,
                              int kx) {
    for (uint32_t xx = 0; xx < dw; xx++) {
        int32_t xmin = bh[xx * 2], xmax = bh[xx * 2 + 1];
        const int32_t *k = kh + (size_t)xx * kx;
        int32_t s0 = 1 << (PRECISION_BITS - 1), s1 = s0, s2 = s0;
        const uint8_t *p = row + (size_t)xmin * 3;
        for (int32_t x = 0; x < xmax; x++, p += 3) {
            s0 += p[0] * k[x];
            s1 += p[1] * k[x];
            s2 += p[2] * k[x];
        }
        o[xx * 3] = clip8(s0);
        o[xx * 3 + 1] = clip8(s1);
        o[xx * 3 + 2] = clip8(s2);
    }
}

/* Output bytes from..w3-1 of one row. */
static void vertical_scalar(const uint8_t *vin, uint8_t *o, uint32_t from, uint32_t w3, int32_t ymin, int32_t ymax,
                            const int32_t *k) {
    for (uint32_t xx = from; xx < w3; xx++) {
        int32_t s = 1 << (PRECISION_BITS - 1);
        const uint8_t *p = vin + (size_t)ymin * w3 + xx;
        for (int32_t y = 0; y < ymax; y++, p += w3) s += p[0] * k[y];
        o[xx] = clip8(s);
    }
}

#if defined(__x86_64__)
/* Two taps at a time: 8 source bytes [r0 g0 b0 r1 g1 b1 . .] spread to int32 lanes
   [r0 g0 b0 0 | r1 g1 b1 0] and multiplied by [k0 k0 k0 k0 | k1 k1 k1 k1]. Reads 2 bytes past
   the second tap: a tap whose 8-byte load would pass `end` runs the scalar way. */
__attribute__((target("avx2"))) static void horizontal_avx2(const uint8_t *row, const uint8_t *end, uint8_t *o,
                                                            uint32_t dw, const int32_t *bh, const int32_t *kh, int kx) {
    const __m128i spread = _mm_setr_epi8(0, 1, 2, (char)0x80, 3, 4, 5, (char)0x80, (char)0x80, (char)0x80, (char)0x80,
                                         (char)0x80, (char)0x80, (char)0x80, (char)0x80, (char)0x80);
    for (uint32_t xx = 0; xx < dw; xx++) {
        int32_t xmin = bh[xx * 2], xmax = bh[xx * 2 + 1];
        const int32_t *k = kh + (size_t)xx * kx;
        const uint8_t *p = row + (size_t)xmin * 3;
        __m256i acc = _mm256_setzero_si256();
        int32_t x = 0;
        for (; x + 1 < xmax && p + (size_t)x * 3 + 8 <= end; x += 2) {
            __m128i b = _mm_shuffle_epi8(_mm_loadl_epi64((const __m128i *)(p + (size_t)x * 3)), spread);
            __m256i v = _mm256_cvtepu8_epi32(b);
            __m256i kk =
                _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_set1_epi32(k[x])), _mm_set1_epi32(k[x + 1]), 1);
            acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(v, kk));
        }
        __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        int32_t lanes[4];
        _mm_storeu_si128((__m128i *)lanes, sum);
        int32_t s0 = (1 << (PRECISION_BITS - 1)) + lanes[0], s1 = (1 << (PRECISION_BITS - 1)) + lanes[1],
                s2 = (1 << (PRECISION_BITS - 1)) + lanes[2];
        for (; x < xmax; x++) {
            const uint8_t *q = p + (size_t)x * 3;
            s0 += q[0] * k[x];
            s1 += q[1] * k[x];
            s2 += q[2] * k[x];
        }
        o[xx * 3] = clip8(s0);
        o[xx * 3 + 1] = clip8(s1);
        o[xx * 3 + 2] = clip8(s2);
    }
}

/* Eight output bytes at a time: each source row's 8 bytes widened to int32 and multiplied by
   the row's coefficient; shifted, clamped and packed back to bytes. */
__attribute__((target("avx2"))) static void vertical_avx2(const uint8_t *vin, uint8_t *o, uint32_t w3, int32_t ymin,
                                                          int32_t ymax, const int32_t *k) {
    const __m256i half = _mm256_set1_epi32(1 << (PRECISION_BITS - 1)), zero = _mm256_setzero_si256(),
                  top = _mm256_set1_epi32(255);
    uint32_t xx = 0;
    for (; xx + 8 <= w3; xx += 8) {
        __m256i acc = half;
        const uint8_t *p = vin + (size_t)ymin * w3 + xx;
        for (int32_t y = 0; y < ymax; y++, p += w3) {
            __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
            acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(v, _mm256_set1_epi32(k[y])));
        }
        acc = _mm256_min_epi32(_mm256_max_epi32(_mm256_srai_epi32(acc, PRECISION_BITS), zero), top);
        __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
        _mm_storel_epi64((__m128i *)(o + xx), _mm_packus_epi16(w16, w16));
    }
    vertical_scalar(vin, o, xx, w3, ymin, ymax, k);
}
#endif

/* -1: not decided yet; 0: portable; 1: AVX2. */
static int resize_kernel = -1;

static int use_avx2(void) {
#if defined(__x86_64__)
    if (resize_kernel < 0) resize_kernel = __builtin_cpu_supports("avx2") ? 1 : 0;
    return resize_kernel == 1;
#else
    return 0;
#endif
}

int ew_img_set_resize_kernel(int simd) {
#if defined(__x86_64__)
    resize_kernel = simd && __builtin_cpu_supports("avx2") ? 1 : 0;
#else
    resize_kernel = 0;
#endif
    return resize_kernel;
}

int ew_img_resize_bilinear(const uint8_t *src, uint32_t sw, uint32_t sh, uint8_t *dst, uint32_t dw, uint32_t dh,
                           ew_img_error *err) {
    if (!src || !dst || !sw || !sh || !dw || !dh)
        return ew_fail(err, EW_IMG_E_ARGUMENT, "resize: empty image or null buffer");
    int32_t *bh = NULL, *kh = NULL, *bv = NULL, *kv = NULL;
    uint8_t *tmp = NULL;
    int rc = 0;
    int kx = coeffs(sw, dw, &bh, &kh), ky = coeffs(sh, dh, &bv, &kv);
    if (!kx || !ky) {
        rc = ew_fail(err, EW_IMG_E_NO_MEMORY, "resize: out of memory");
        goto done;
    }
    int need_h = dw != sw, need_v = dh != sh;
    const uint8_t *vin = src; /* the vertical pass's input */
    uint32_t first = 0;
    if (need_h) {
        first = (uint32_t)bv[0];
        uint32_t last = (uint32_t)(bv[dh * 2 - 2] + bv[dh * 2 - 1]);
        uint32_t rows = need_v ? last - first : sh;
        if (!need_v) first = 0;
        uint8_t *out = need_v ? (tmp = malloc((size_t)dw * rows * 3)) : dst;
        if (!out) {
            rc = ew_fail(err, EW_IMG_E_NO_MEMORY, "resize: out of memory");
            goto done;
        }
        const int simd = use_avx2();
        const uint8_t *end = src + (size_t)sw * sh * 3;
        for (uint32_t y = 0; y < rows; y++) {
            const uint8_t *row = src + (size_t)(y + first) * sw * 3;
            uint8_t *o = out + (size_t)y * dw * 3;
#if defined(__x86_64__)
            if (simd) {
                horizontal_avx2(row, end, o, dw, bh, kh, kx);
                continue;
            }
#endif
            (void)end;
            horizontal_scalar(row, o, dw, bh, kh, kx);
        }
        vin = out;
    }
    if (need_v) {
        uint32_t w3 = dw * 3; /* after the horizontal pass (or sw == dw) */
        const int simd = use_avx2();
        for (uint32_t yy = 0; yy < dh; yy++) {
            int32_t ymin = bv[yy * 2] - (int32_t)first, ymax = bv[yy * 2 + 1];
            const int32_t *k = kv + (size_t)yy * ky;
            uint8_t *o = dst + (size_t)yy * w3;
#if defined(__x86_64__)
            if (simd) {
                vertical_avx2(vin, o, w3, ymin, ymax, k);
                continue;
            }
#endif
            vertical_scalar(vin, o, 0, w3, ymin, ymax, k);
        }
    }
    if (!need_h && !need_v)
        for (size_t i = 0; i < (size_t)sw * sh * 3; i++) dst[i] = src[i];
done:
    free(bh);
    free(kh);
    free(bv);
    free(kv);
    free(tmp);
    return rc;
}

int ew_img_normalize_chw(const uint8_t *src, uint32_t src_w, uint32_t src_h, uint32_t x0, uint32_t y0, uint32_t w,
                         uint32_t h, const float mean[3], const float std_[3], float *out, ew_img_error *err) {
    if (!src || !out || !mean || !std_) return ew_fail(err, EW_IMG_E_ARGUMENT, "normalize: null argument");
    if ((uint64_t)x0 + w > src_w || (uint64_t)y0 + h > src_h)
        return ew_fail(err, EW_IMG_E_ARGUMENT, "normalize: window %ux%u at (%u,%u) outside a %ux%u image", w, h, x0, y0,
                       src_w, src_h);
    size_t plane = (size_t)w * h;
    /* 256-entry tables: the same float32 operations as ToTensor + Normalize, done once. */
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) lut[c][v] = ((float)v / 255.0f - mean[c]) / std_[c];
    for (uint32_t y = 0; y < h; y++) {
        const uint8_t *p = src + ((size_t)(y0 + y) * src_w + x0) * 3;
        float *r = out + (size_t)y * w, *g = r + plane, *b = g + plane;
        for (uint32_t x = 0; x < w; x++, p += 3) {
            r[x] = lut[0][p[0]];
            g[x] = lut[1][p[1]];
            b[x] = lut[2][p[2]];
        }
    }
    return 0;
}
