/*
 * metadata.c: the few metadata fields decoding needs, read straight from the container:
 * EXIF orientation (JPEG APP1, PNG eXIf, WebP EXIF chunk) and JPEG's Adobe APP14 marker.
 * Every read is bounds-checked; malformed metadata is ignored (orientation 1), never an error.
 */
#include "ew_internal.h"

#include <string.h>

static uint32_t rd16(const uint8_t *p, int le) {
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 : (uint32_t)p[0] << 8 | p[1];
}
static uint32_t rd32(const uint8_t *p, int le) {
    return le ? (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24
              : (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* `tiff` starts at the TIFF header ("II*\0" or "MM\0*"). */
int ew_exif_orientation(const uint8_t *t, size_t n) {
    if (n < 8) return 1;
    int le;
    if (t[0] == 'I' && t[1] == 'I')
        le = 1;
    else if (t[0] == 'M' && t[1] == 'M')
        le = 0;
    else
        return 1;
    if (rd16(t + 2, le) != 42) return 1;
    uint32_t ifd = rd32(t + 4, le);
    if (ifd > n - 2) return 1;
    uint32_t count = rd16(t + ifd, le);
    for (uint32_t i = 0; i < count; i++) {
        size_t e = (size_t)ifd + 2 + (size_t)i * 12;
        if (e + 12 > n) return 1;
        if (rd16(t + e, le) == 0x0112) {
            uint32_t type = rd16(t + e + 2, le);
            uint32_t v = type == 3 ? rd16(t + e + 8, le) : type == 4 ? rd32(t + e + 8, le) : 1;
            return (v >= 1 && v <= 8) ? (int)v : 1;
        }
    }
    return 1;
}

void ew_jpeg_scan_metadata(const uint8_t *d, size_t n, ew_jpeg_meta *m) {
    m->orientation = 1;
    m->adobe = 0;
    m->progressive = 0;
    int exif_seen = 0;
    size_t p = 2;
    for (;;) {
        /* Junk between segments is skipped as libjpeg (and PIL) skip it. */
        int marker = ew_jpeg_next_marker(d, n, &p, NULL);
        if (marker < 0 || marker == 0xDA || marker == 0xD9) return; /* start of scan: metadata is over */
        if (marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01) continue;
        if (p + 2 > n) return;
        size_t seg = (size_t)d[p] << 8 | d[p + 1];
        if (seg < 2 || p + seg > n) return;
        const uint8_t *s = d + p + 2;
        size_t sn = seg - 2;
        if (marker == 0xE1 && sn >= 6 && memcmp(s, "Exif\0\0", 6) == 0 && !exif_seen++) /* the first, as PIL */
            m->orientation = ew_exif_orientation(s + 6, sn - 6);
        else if (marker == 0xEE && sn >= 5 && memcmp(s, "Adobe", 5) == 0)
            m->adobe = 1;
        else if (marker == 0xC2 || marker == 0xC6 || marker == 0xCA || marker == 0xCE)
            m->progressive = 1;
        p += seg;
    }
}

int ew_png_orientation(const uint8_t *d, size_t n) {
    size_t p = 8;
    while (p + 12 <= n) {
        uint32_t len = rd32(d + p, 0);
        const uint8_t *type = d + p + 4;
        if ((size_t)len > n - p - 12) return 1;
        if (memcmp(type, "eXIf", 4) == 0) return ew_exif_orientation(d + p + 8, len);
        if (memcmp(type, "IDAT", 4) == 0 || memcmp(type, "IEND", 4) == 0) return 1;
        p += 12 + (size_t)len;
    }
    return 1;
}

int ew_webp_orientation(const uint8_t *d, size_t n) {
    size_t p = 12;
    while (p + 8 <= n) {
        uint32_t len = rd32(d + p + 4, 1);
        if ((size_t)len > n - p - 8) return 1;
        if (memcmp(d + p, "EXIF", 4) == 0) {
            const uint8_t *e = d + p + 8;
            size_t en = len;
            if (en >= 6 && memcmp(e, "Exif\0\0", 6) == 0) {
                e += 6;
                en -= 6;
            }
            return ew_exif_orientation(e, en);
        }
        p += 8 + (size_t)len + (len & 1);
    }
    return 1;
}
