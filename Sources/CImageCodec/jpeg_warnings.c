/*
 * jpeg_warnings.c: which libjpeg warnings leave the pixels alone, and how to prove that no
 * damaging warning hides behind a harmless one.
 *
 * libjpeg reports recoverable problems as warnings (JWRN_* in jerror.h). TurboJPEG 2.1 gives
 * us only a warning's text, and only the first one's: libjpeg's emit_message() formats the
 * first warning of a decode and merely counts the rest. So:
 *
 *   1. The text is classified against libjpeg's message table (ew_jpeg_classify_warning). The
 *      strings of jerror.h have not changed since libjpeg 6b; each row below names its JWRN_.
 *   2. The harmless kinds all have their cause in the marker segments before the first scan
 *      (junk between segments, a JFIF APP0 of an unknown major version, an Adobe APP14 with an
 *      unknown transform, a malformed ICC APP2). ew_jpeg_clean_header rewrites that header the
 *      way libjpeg reads it, which removes the cause; decode.c then decodes the cleaned copy
 *      with TJFLAG_STOPONWARNING again, so the first warning of THAT decode (if any) is the
 *      next one libjpeg would have raised, and it is classified in turn.
 *
 * Junk before a marker after entropy-coded data (before EOI, RSTn, or between progressive
 * scans) is damaging: a scan that decodes all its blocks and leaves bytes over is what a
 * desynchronised Huffman decoder typically produces (measured on the coffee photo: ~3 in 4
 * random 16-byte scan corruptions raise only "N extraneous bytes before marker 0xd9").
 */
#include "ew_internal.h"

#include <stdio.h>
#include <string.h>

int ew_jpeg_next_marker(const uint8_t *d, size_t n, size_t *pp, unsigned *discarded) {
    /* libjpeg's next_marker() in jdmarker.c, byte for byte: any non-FF byte is discarded;
       FF fill bytes before a marker are not counted; a stuffed FF 00 counts 2. */
    size_t p = *pp;
    unsigned junk = 0;
    for (;;) {
        while (p < n && d[p] != 0xFF) {
            p++;
            junk++;
        }
        if (p >= n) return -1;
        p++;
        while (p < n && d[p] == 0xFF) p++;
        if (p >= n) return -1;
        uint8_t c = d[p++];
        if (c != 0) {
            *pp = p;
            if (discarded) *discarded = junk;
            return c;
        }
        junk += 2;
    }
}

static int parameterless(int marker) {
    return marker == 0xD8 || marker == 0xD9 || (marker >= 0xD0 && marker <= 0xD7) || marker == 0x01;
}

/* Walks the marker segments before the first SOS as libjpeg does. For each segment calls
   `visit` (may be NULL); stops at the first junk run when `junk_count` is set. Returns the
   offset of the SOS marker's length field (the scan header), or 0 when the walk cannot reach
   an SOS (data ends, a bad length, EOI first). */
typedef struct {
    unsigned first_junk;   /* discarded bytes before the first marker that had any */
    int first_junk_marker; /* that marker */
} header_walk;

static size_t walk_header(const uint8_t *d, size_t n, header_walk *w) {
    w->first_junk = 0;
    w->first_junk_marker = -1;
    size_t p = 2;
    for (;;) {
        unsigned junk = 0;
        int marker = ew_jpeg_next_marker(d, n, &p, &junk);
        if (marker < 0) return 0;
        if (junk && !w->first_junk) {
            w->first_junk = junk;
            w->first_junk_marker = marker;
        }
        if (marker == 0xD9) return 0;
        if (parameterless(marker)) continue;
        if (p + 2 > n) return 0;
        size_t seg = (size_t)d[p] << 8 | d[p + 1];
        if (seg < 2 || p + seg > n) return 0;
        if (marker == 0xDA) return p;
        p += seg;
    }
}

/* libjpeg's message texts (jerror.h), most specific first. */
static const struct {
    const char *text;
    ew_jpeg_warning kind;
} known[] = {
    /* Harmless: the cause is in a marker segment before the first scan. */
    {"extraneous bytes before marker", EW_JPEG_WARN_HARMLESS},     /* JWRN_EXTRANEOUS_DATA (if in the header) */
    {"unknown JFIF revision number", EW_JPEG_WARN_HARMLESS},       /* JWRN_JFIF_MAJOR */
    {"Unknown Adobe color transform code", EW_JPEG_WARN_HARMLESS}, /* JWRN_ADOBE_XFORM */
    {"bad ICC marker", EW_JPEG_WARN_HARMLESS},                     /* JWRN_BOGUS_ICC (TurboJPEG 3 reads ICC) */
    /* Damaging: the scan data is cut short or does not decode as written. */
    {"Premature end of JPEG file", EW_JPEG_WARN_TRUNCATED},      /* JWRN_JPEG_EOF */
    {"premature end of data segment", EW_JPEG_WARN_CORRUPT},     /* JWRN_HIT_MARKER */
    {"bad Huffman code", EW_JPEG_WARN_CORRUPT},                  /* JWRN_HUFF_BAD_CODE */
    {"bad arithmetic code", EW_JPEG_WARN_CORRUPT},               /* JWRN_ARITH_BAD_CODE */
    {"instead of RST", EW_JPEG_WARN_CORRUPT},                    /* JWRN_MUST_RESYNC */
    {"Inconsistent progression sequence", EW_JPEG_WARN_CORRUPT}, /* JWRN_BOGUS_PROGRESSION */
    {"Invalid SOS parameters", EW_JPEG_WARN_CORRUPT},            /* JWRN_NOT_SEQUENTIAL */
    {"too many scanlines", EW_JPEG_WARN_CORRUPT},                /* JWRN_TOO_MUCH_DATA */
};

ew_jpeg_warning ew_jpeg_classify_warning(const char *msg, const uint8_t *d, size_t n) {
    for (size_t i = 0; i < sizeof known / sizeof *known; i++) {
        if (!strstr(msg, known[i].text)) continue;
        if (i != 0) return known[i].kind;
        /* "Corrupt JPEG data: %u extraneous bytes before marker 0x%02x": harmless only when it
           is the first junk run of the header (warnings arrive in file order). */
        unsigned count = 0, marker = 0;
        const char *at = strstr(msg, "JPEG data:");
        if (!at || sscanf(at, "JPEG data: %u extraneous bytes before marker 0x%x", &count, &marker) != 2)
            return EW_JPEG_WARN_CORRUPT;
        header_walk w;
        if (!walk_header(d, n, &w)) return EW_JPEG_WARN_CORRUPT;
        return w.first_junk == count && w.first_junk_marker == (int)marker ? EW_JPEG_WARN_HARMLESS
                                                                           : EW_JPEG_WARN_CORRUPT;
    }
    return EW_JPEG_WARN_CORRUPT; /* an unknown text: not known to be harmless */
}

size_t ew_jpeg_clean_header(const uint8_t *d, size_t n, uint8_t *out) {
    header_walk w;
    size_t sos = walk_header(d, n, &w);
    if (!sos) return 0;
    size_t p = 2, o = 0;
    out[o++] = 0xFF;
    out[o++] = 0xD8;
    int components = 0, jfif = 0;
    size_t adobe_at[16];
    int adobe_count = 0;
    for (;;) {
        int marker = ew_jpeg_next_marker(d, n, &p, NULL); /* junk before it is dropped */
        out[o++] = 0xFF;
        out[o++] = (uint8_t)marker;
        if (parameterless(marker)) continue;
        size_t seg = (size_t)d[p] << 8 | d[p + 1];
        if (marker == 0xDA) { /* the scans, unchanged */
            memcpy(out + o, d + p, n - p);
            o += n - p;
            break;
        }
        const uint8_t *s = d + p + 2;
        size_t sn = seg - 2;
        if (marker == 0xE2 && sn >= 12 && memcmp(s, "ICC_PROFILE\0", 12) == 0) {
            o -= 2; /* an ICC chunk: colour management is not applied, so drop it */
            p += seg;
            continue;
        }
        memcpy(out + o, d + p, seg);
        uint8_t *copy = out + o + 2;
        /* libjpeg's examine_app0: a JFIF major version other than 1 warns and is read as 1. */
        if (marker == 0xE0 && sn >= 14 && memcmp(s, "JFIF\0", 5) == 0) {
            jfif = 1;
            copy[5] = 1;
        }
        /* examine_app14: the last Adobe marker's transform byte counts; patched below. */
        if (marker == 0xEE && sn >= 12 && memcmp(s, "Adobe", 5) == 0 && adobe_count < 16)
            adobe_at[adobe_count++] = o + 2 + 11;
        if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC && sn >= 6)
            components = s[5];
        o += seg;
        p += seg;
    }
    /* default_decompress_parms: an unknown transform warns and is read as YCbCr (3
       components, unless JFIF already decided) or YCCK (4 components). */
    for (int i = 0; i < adobe_count; i++) {
        uint8_t *t = out + adobe_at[i];
        if (components == 3 && !jfif && *t != 0 && *t != 1) *t = 1;
        if (components == 4 && *t != 0 && *t != 2) *t = 2;
    }
    return o;
}
