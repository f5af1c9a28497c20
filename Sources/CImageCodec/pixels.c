/*
 * pixels.c: conversions every decoder shares. Each one is written to agree bit for bit with
 * the reference pipeline (reference/ewall_reference.py), which the parity tests check.
 */
#include "ew_internal.h"

#include <string.h>

/* PIL's CMYK -> RGB (Convert.c cmyk2rgb): r = nk - nk*c/255, with nk = 255 - k, integer
   rounding as MULDIV255. Adobe (APP14) CMYK JPEGs store every channel inverted. */
void ew_cmyk_to_rgb_inplace(uint8_t *px, size_t count, int inverted) {
    uint8_t *out = px;
    for (size_t i = 0; i < count; i++) {
        const uint8_t *in = px + i * 4;
        int c = in[0], m = in[1], y = in[2], k = in[3];
        if (inverted) {
            c = 255 - c;
            m = 255 - m;
            y = 255 - y;
            k = 255 - k;
        }
        int nk = 255 - k, t;
        int r = nk - ((t = c * nk + 128, ((t >> 8) + t) >> 8));
        int g = nk - ((t = m * nk + 128, ((t >> 8) + t) >> 8));
        int b = nk - ((t = y * nk + 128, ((t >> 8) + t) >> 8));
        out[i * 3 + 0] = (uint8_t)(r < 0 ? 0 : r);
        out[i * 3 + 1] = (uint8_t)(g < 0 ? 0 : g);
        out[i * 3 + 2] = (uint8_t)(b < 0 ? 0 : b);
    }
}

/* Straight alpha over an opaque white background: out = (c*a + 255*(255-a) + 127) / 255. */
void ew_rgba_over_white_inplace(uint8_t *px, size_t count) {
    for (size_t i = 0; i < count; i++) {
        const uint8_t *in = px + i * 4;
        uint32_t a = in[3], w = 255u * (255u - a) + 127u;
        uint8_t r = (uint8_t)((in[0] * a + w) / 255u);
        uint8_t g = (uint8_t)((in[1] * a + w) / 255u);
        uint8_t b = (uint8_t)((in[2] * a + w) / 255u);
        px[i * 3 + 0] = r;
        px[i * 3 + 1] = g;
        px[i * 3 + 2] = b;
    }
}

/* Applies EXIF orientation: src is w x h as stored, dst is the upright image (h x w for 5..8).
   Matches PIL's ImageOps.exif_transpose. */
void ew_orient_rgb(const uint8_t *src, uint32_t w, uint32_t h, int o, uint8_t *dst) {
    if (o < 2 || o > 8) {
        if (src != dst) memcpy(dst, src, (size_t)w * h * 3);
        return;
    }
    uint32_t ow = o >= 5 ? h : w, oh = o >= 5 ? w : h;
    for (uint32_t y = 0; y < oh; y++) {
        for (uint32_t x = 0; x < ow; x++) {
            uint32_t sx, sy;
            switch (o) {
            case 2:
                sx = w - 1 - x;
                sy = y;
                break;
            case 3:
                sx = w - 1 - x;
                sy = h - 1 - y;
                break;
            case 4:
                sx = x;
                sy = h - 1 - y;
                break;
            case 5:
                sx = y;
                sy = x;
                break;
            case 6:
                sx = y;
                sy = h - 1 - x;
                break;
            case 7:
                sx = w - 1 - y;
                sy = h - 1 - x;
                break;
            default:
                sx = w - 1 - y;
                sy = x;
                break; /* 8 */
            }
            const uint8_t *s = src + ((size_t)sy * w + sx) * 3;
            uint8_t *d = dst + ((size_t)y * ow + x) * 3;
            d[0] = s[0];
            d[1] = s[1];
            d[2] = s[2];
        }
    }
}
