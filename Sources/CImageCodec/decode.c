/*
 * decode.c: format sniffing and JPEG / PNG / WebP decoding to upright 8-bit RGB.
 * See ew_image.h for the contract. Metadata (EXIF orientation, Adobe marker) comes from
 * metadata.c; the pixel conversions shared by every format are at the end of this file.
 */
#include "ew_image.h"
#include "ew_internal.h"

#include <png.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <webp/decode.h>

/* ------------------------------------------------------------------ errors */

int ew_fail(ew_img_error *err, int code, const char *fmt, ...) {
    if (err) {
        err->code = code;
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int ok(ew_img_error *err) {
    if (err) {
        err->code = 0;
        err->message[0] = 0;
    }
    return 0;
}

/* ------------------------------------------------------------------ sniffing */

static int starts(const uint8_t *d, size_t n, const char *magic, size_t m) {
    return n >= m && memcmp(d, magic, m) == 0;
}

ew_img_format ew_img_sniff(const uint8_t *d, size_t n) {
    if (!d || n < 2) return EW_IMG_FORMAT_UNKNOWN;
    if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return EW_IMG_FORMAT_JPEG;
    if (starts(d, n, "\x89PNG\r\n\x1a\n", 8)) return EW_IMG_FORMAT_PNG;
    if (n >= 12 && starts(d, n, "RIFF", 4) && memcmp(d + 8, "WEBP", 4) == 0) return EW_IMG_FORMAT_WEBP;
    if (starts(d, n, "GIF87a", 6) || starts(d, n, "GIF89a", 6)) return EW_IMG_FORMAT_GIF;
    if (starts(d, n, "BM", 2) && n >= 14) return EW_IMG_FORMAT_BMP;
    if (starts(d, n, "II*\0", 4) || starts(d, n, "MM\0*", 4)) return EW_IMG_FORMAT_TIFF;
    if (n >= 12 && memcmp(d + 4, "ftyp", 4) == 0) {
        const char *brands[] = {"heic", "heix", "hevc", "heim", "heis", "mif1", "msf1", "avif", "avis"};
        for (size_t i = 0; i < sizeof brands / sizeof *brands; i++)
            if (memcmp(d + 8, brands[i], 4) == 0) return EW_IMG_FORMAT_HEIF;
    }
    if (starts(d, n, "\0\0\1\0", 4)) return EW_IMG_FORMAT_ICO;
    if (starts(d, n, "\xff\x0a", 2) || starts(d, n, "\0\0\0\x0cJXL ", 8)) return EW_IMG_FORMAT_JXL;
    if (starts(d, n, "8BPS", 4)) return EW_IMG_FORMAT_PSD;
    /* SVG is text: look for "<svg" near the start, after an optional XML prolog. */
    size_t lim = n < 1024 ? n : 1024;
    for (size_t i = 0; i + 4 <= lim; i++)
        if (d[i] == '<' && (d[i + 1] | 32) == 's' && (d[i + 2] | 32) == 'v' && (d[i + 3] | 32) == 'g')
            return EW_IMG_FORMAT_SVG;
    return EW_IMG_FORMAT_UNKNOWN;
}

const char *ew_img_format_name(ew_img_format f) {
    switch (f) {
    case EW_IMG_FORMAT_JPEG: return "jpeg";
    case EW_IMG_FORMAT_PNG: return "png";
    case EW_IMG_FORMAT_WEBP: return "webp";
    case EW_IMG_FORMAT_GIF: return "gif";
    case EW_IMG_FORMAT_BMP: return "bmp";
    case EW_IMG_FORMAT_TIFF: return "tiff";
    case EW_IMG_FORMAT_HEIF: return "heif/avif";
    case EW_IMG_FORMAT_SVG: return "svg";
    case EW_IMG_FORMAT_ICO: return "ico";
    case EW_IMG_FORMAT_JXL: return "jpeg-xl";
    case EW_IMG_FORMAT_PSD: return "psd";
    default: return "unknown";
    }
}

/* What non-image bytes look like, for a message a person can act on. */
static const char *describe_non_image(const uint8_t *d, size_t n) {
    if (n == 0) return "the data is empty (0 bytes)";
    size_t i = 0;
    while (
        i < n && i < 64 &&
        (d[i] == ' ' || d[i] == '\t' || d[i] == '\r' || d[i] == '\n' || d[i] == 0xEF || d[i] == 0xBB || d[i] == 0xBF))
        i++;
    if (i < n && d[i] == '<') return "the data looks like HTML or XML, not an image (an error page?)";
    if (i < n && (d[i] == '{' || d[i] == '[')) return "the data looks like JSON, not an image";
    size_t printable = 0, m = n < 512 ? n : 512;
    for (size_t k = 0; k < m; k++)
        if (d[k] >= 0x20 || d[k] == '\n' || d[k] == '\r' || d[k] == '\t') printable++;
    if (printable == m) return "the data is text, not an image";
    return "the data matches no known image format";
}

/* ------------------------------------------------------------------ limits */

static int check_limits(uint32_t w, uint32_t h, const ew_img_limits *lim, const char *fmt, ew_img_error *err) {
    if (w == 0 || h == 0) return ew_fail(err, EW_IMG_E_CORRUPT, "%s header gives a %ux%u image", fmt, w, h);
    if (lim && lim->max_pixels && (uint64_t)w * h > lim->max_pixels)
        return ew_fail(err, EW_IMG_E_TOO_MANY_PIXELS,
                       "%s is %ux%u = %.1f megapixels, above the limit of %.1f megapixels; refused before "
                       "decoding (raise max pixels to accept it)",
                       fmt, w, h, (double)w * h / 1e6, (double)lim->max_pixels / 1e6);
    if (lim && lim->min_side && (w < lim->min_side || h < lim->min_side))
        return ew_fail(err, EW_IMG_E_TOO_SMALL, "%s is %ux%u, smaller than the minimum side of %u pixels", fmt, w, h,
                       lim->min_side);
    return 0;
}

static void upright_size(uint32_t w, uint32_t h, int orientation, uint32_t *ow, uint32_t *oh) {
    if (orientation >= 5 && orientation <= 8) {
        *ow = h;
        *oh = w;
    } else {
        *ow = w;
        *oh = h;
    }
}

/* ------------------------------------------------------------------ JPEG (TurboJPEG) */

static int jpeg_scale(const ew_img_limits *lim, uint32_t w, uint32_t h, int orientation) {
    if (!lim || !lim->scale_min_width || !lim->scale_min_height) return 1;
    uint32_t need_w = lim->scale_min_width, need_h = lim->scale_min_height;
    if (orientation >= 5) { /* the stored image is sideways */
        uint32_t t = need_w;
        need_w = need_h;
        need_h = t;
    }
    int best = 1;
    for (int denom = 2; denom <= 8; denom *= 2) {
        uint32_t sw = (w + denom - 1) / denom, sh = (h + denom - 1) / denom; /* TJSCALED for 1/denom */
        if (sw >= need_w && sh >= need_h) best = denom;
    }
    return best;
}

/* A fatal libjpeg error's class: after JWRN_JPEG_EOF ("Premature end of JPEG file") the data
   ran out; any other error ("Bogus marker length", ...) is damaged data. */
static int jpeg_classify(const char *msg) {
    return strstr(msg, "Premature end of JPEG file") ? EW_IMG_E_TRUNCATED : EW_IMG_E_CORRUPT;
}

static int jpeg_header(tjhandle tj, const uint8_t *d, size_t n, ew_img_info *info, const ew_img_limits *lim,
                       ew_img_error *err) {
    int w = 0, h = 0, subsamp = 0, cs = 0;
    if (tjDecompressHeader3(tj, d, (unsigned long)n, &w, &h, &subsamp, &cs) != 0 &&
        /* A warning while reading the header (junk between segments, an unknown JFIF version)
           leaves the sizes read; the decode classifies it. */
        !(tjGetErrorCode(tj) == TJERR_WARNING && w > 0 && h > 0 && !strstr(tjGetErrorStr2(tj), "tjDecompressHeader"))) {
        const char *msg = tjGetErrorStr2(tj);
        /* a header that runs off the end of the data is a truncated file */
        int code = (strstr(msg, "Premature") || n < 200) ? EW_IMG_E_TRUNCATED : EW_IMG_E_CORRUPT;
        return ew_fail(err, code, "JPEG header could not be read: %s", msg);
    }
    if (w <= 0 || h <= 0) /* TurboJPEG reached the end of the data before a frame header */
        return ew_fail(err, EW_IMG_E_TRUNCATED, "JPEG is truncated: the data ends before the frame header");
    ew_jpeg_meta meta;
    ew_jpeg_scan_metadata(d, n, &meta);
    info->format = EW_IMG_FORMAT_JPEG;
    info->stored_width = (uint32_t)w;
    info->stored_height = (uint32_t)h;
    info->orientation = meta.orientation;
    info->is_cmyk = (cs == TJCS_CMYK || cs == TJCS_YCCK);
    info->adobe_inverted = info->is_cmyk && meta.adobe;
    info->channels_in_file = cs == TJCS_GRAY ? 1 : info->is_cmyk ? 4 : 3;
    info->bit_depth = 8;
    info->progressive = meta.progressive;
    int rc = check_limits((uint32_t)w, (uint32_t)h, lim, "JPEG", err);
    if (rc) return rc;
    info->scale_denom = jpeg_scale(lim, (uint32_t)w, (uint32_t)h, meta.orientation);
    uint32_t sw = ((uint32_t)w + info->scale_denom - 1) / info->scale_denom;
    uint32_t sh = ((uint32_t)h + info->scale_denom - 1) / info->scale_denom;
    upright_size(sw, sh, meta.orientation, &info->width, &info->height);
    return 0;
}

#define EW_JMSG 256 /* libjpeg's messages are at most JMSG_LENGTH_MAX (200) */

/* One TurboJPEG decode into buf. Returns 0 (clean), 1 (stopped at or finished with a warning:
   its text in msg) or -1 (a fatal error: its text in msg). */
static int jpeg_run(tjhandle tj, const uint8_t *d, size_t n, uint8_t *buf, uint32_t sw, uint32_t sh, int pf, int stop,
                    char *msg, size_t msg_size) {
    int flags = TJFLAG_LIMITSCANS | (stop ? TJFLAG_STOPONWARNING : 0);
    if (tjDecompress2(tj, d, (unsigned long)n, buf, (int)sw, 0, (int)sh, pf, flags) == 0) return 0;
    snprintf(msg, msg_size, "%s", tjGetErrorStr2(tj));
    return tjGetErrorCode(tj) == TJERR_WARNING ? 1 : -1;
}

/*
 * Warnings, by kind (see jpeg_warnings.c for the table):
 *
 *   pass 1   decode with TJFLAG_STOPONWARNING. Clean: done (one decode, the common case).
 *            A fatal error or a damaging first warning: fail (or, allowing warnings, pass 3).
 *   pass 2   a harmless first warning (its cause is in the header before the first scan, so
 *            pass 1 stopped before decoding any pixel): decode a copy whose header is rewritten
 *            as libjpeg reads it (ew_jpeg_clean_header), again with STOPONWARNING. Clean: its
 *            pixels are the result, which are those of the original (libjpeg recovers from each
 *            harmless cause exactly as the copy is written), and the first warning is reported
 *            as harmless. Any warning now is the one libjpeg raises after the harmless one(s),
 *            and is damaging. This is how a damaged scan behind header junk is not missed,
 *            although TurboJPEG only ever tells us the first warning's text.
 *   pass 3   allow_warnings with a damaging warning: decode the original without stopping, as
 *            PIL and browsers do, and report the damaging warning.
 */
static int jpeg_decode(const uint8_t *d, size_t n, const ew_img_limits *lim, uint8_t *rgb, size_t cap,
                       ew_img_info *info, ew_img_error *err) {
    tjhandle tj = tjInitDecompress();
    if (!tj) return ew_fail(err, EW_IMG_E_NO_MEMORY, "TurboJPEG could not allocate a decompressor");
    int rc = jpeg_header(tj, d, n, info, lim, err);
    if (rc || !rgb) {
        tjDestroy(tj);
        return rc;
    }
    uint32_t sw = (info->stored_width + info->scale_denom - 1) / info->scale_denom;
    uint32_t sh = (info->stored_height + info->scale_denom - 1) / info->scale_denom;
    if (cap < (size_t)info->width * info->height * 3) {
        tjDestroy(tj);
        return ew_fail(err, EW_IMG_E_ARGUMENT, "output buffer of %zu bytes is too small", cap);
    }
    int channels = info->is_cmyk ? 4 : 3;
    int pf = info->is_cmyk ? TJPF_CMYK : TJPF_RGB;
    int direct = !info->is_cmyk && info->orientation == 1;
    uint8_t *buf = direct ? rgb : malloc((size_t)sw * sh * channels);
    uint8_t *clean = NULL;
    if (!buf) {
        tjDestroy(tj);
        return ew_fail(err, EW_IMG_E_NO_MEMORY, "out of memory for a %ux%u JPEG", sw, sh);
    }
    int allow = lim && lim->allow_warnings;
    char first[EW_JMSG] = "", later[EW_JMSG] = "";
    const char *damage = NULL; /* the damaging warning's text, if any */
    ew_jpeg_warning kind = 0;
    int r = jpeg_run(tj, d, n, buf, sw, sh, pf, 1, first, sizeof first);
    if (r == 1) {
        kind = ew_jpeg_classify_warning(first, d, n);
        if (kind != EW_JPEG_WARN_HARMLESS) {
            damage = first;
        } else if (!(clean = malloc(n))) {
            rc = ew_fail(err, EW_IMG_E_NO_MEMORY, "out of memory for a %zu-byte JPEG", n);
            goto done;
        } else {
            size_t cn = ew_jpeg_clean_header(d, n, clean);
            r = cn ? jpeg_run(tj, clean, cn, buf, sw, sh, pf, 1, later, sizeof later) : 1;
            if (!cn) snprintf(later, sizeof later, "(EwallML could not re-read the header to check the scans)");
            if (r == 1) {
                kind = ew_jpeg_classify_warning(later, clean, cn);
                if (kind == EW_JPEG_WARN_HARMLESS) kind = EW_JPEG_WARN_CORRUPT; /* nothing harmless is left */
                damage = later;
            } else if (r == 0) {
                snprintf(info->warning, sizeof info->warning, "%s", first);
                info->warning_kind = EW_IMG_WARNING_HARMLESS;
            }
        }
    }
    if (r < 0) { /* a fatal error, in pass 1 or 2 */
        const char *msg = clean && later[0] ? later : first;
        rc = ew_fail(err, jpeg_classify(msg), "JPEG could not be decoded: %s", msg);
        goto done;
    }
    if (damage) {
        int code = kind == EW_JPEG_WARN_TRUNCATED ? EW_IMG_E_TRUNCATED : EW_IMG_E_CORRUPT;
        if (!allow) {
            rc = ew_fail(err, code,
                         "JPEG data is damaged (libjpeg warning: %s%s%s); it would decode to partly grey or "
                         "garbled pixels (allow decoder warnings to accept such files)",
                         damage, damage == later ? ", after the harmless warning: " : "", damage == later ? first : "");
            goto done;
        }
        /* Pass 3. Without STOPONWARNING TurboJPEG reports the first warning's text, unless a
           fatal error came later and replaced it (typically a marker made of damaged scan
           bytes, met after the last row): libjpeg stops there, rows it did not reach keep
           this grey, and the file is still accepted, as warnings were allowed. */
        memset(buf, 128, (size_t)sw * sh * channels);
        char last[EW_JMSG] = "";
        int r3 = jpeg_run(tj, d, n, buf, sw, sh, pf, 0, last, sizeof last);
        if (r3 < 0) {
            rc = ew_fail(err, jpeg_classify(last), "JPEG could not be decoded: %s", last);
            goto done;
        }
        snprintf(info->warning, sizeof info->warning, "%s%s%s", damage, r3 && strcmp(last, first) ? "; then: " : "",
                 r3 && strcmp(last, first) ? last : "");
        info->warning_kind = EW_IMG_WARNING_DAMAGING;
    }
    if (!direct) {
        if (info->is_cmyk) ew_cmyk_to_rgb_inplace(buf, (size_t)sw * sh, info->adobe_inverted);
        ew_orient_rgb(buf, sw, sh, info->orientation, rgb);
    }
done:
    if (!direct) free(buf);
    free(clean);
    tjDestroy(tj);
    return rc;
}

/* ------------------------------------------------------------------ PNG (libpng) */

typedef struct {
    const uint8_t *data;
    size_t len, pos;
    int ran_out;
    jmp_buf jmp;
    char message[256];
} png_src;

static void png_read_cb(png_structp png, png_bytep out, png_size_t n) {
    png_src *s = png_get_io_ptr(png);
    if (s->len - s->pos < n) {
        s->ran_out = 1;
        png_error(png, "the data ends before the image does");
    }
    memcpy(out, s->data + s->pos, n);
    s->pos += n;
}

static void png_error_cb(png_structp png, png_const_charp msg) {
    png_src *s = png_get_error_ptr(png);
    snprintf(s->message, sizeof s->message, "%s", msg);
    longjmp(s->jmp, 1);
}

static void png_warning_cb(png_structp png, png_const_charp msg) {
    (void)png; /* ancillary-chunk warnings (bad iCCP, ...) do not affect pixels */
    (void)msg;
}

static int png_run(const uint8_t *d, size_t n, const ew_img_limits *lim, uint8_t *rgb, size_t cap, ew_img_info *info,
                   int orientation, ew_img_error *err) {
    png_src src = {.data = d, .len = n};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_error_cb, png_warning_cb);
    png_infop pinfo = png ? png_create_info_struct(png) : NULL;
    if (!png || !pinfo) {
        png_destroy_read_struct(&png, NULL, NULL);
        return ew_fail(err, EW_IMG_E_NO_MEMORY, "libpng could not allocate a decoder");
    }
    /* volatile: modified between setjmp and a possible longjmp */
    uint8_t *volatile buf = NULL;
    png_bytep *volatile rows = NULL;
    int rc = 0;
    if (setjmp(src.jmp)) {
        rc = src.ran_out ? ew_fail(err, EW_IMG_E_TRUNCATED, "PNG is truncated: %s", src.message)
                         : ew_fail(err, EW_IMG_E_CORRUPT, "PNG is corrupt: %s", src.message);
        goto done;
    }
    png_set_read_fn(png, &src, png_read_cb);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff); /* our own pixel limit applies below */
    png_read_info(png, pinfo);
    png_uint_32 w = png_get_image_width(png, pinfo), h = png_get_image_height(png, pinfo);
    int ct = png_get_color_type(png, pinfo);
    info->format = EW_IMG_FORMAT_PNG;
    info->stored_width = w;
    info->stored_height = h;
    info->bit_depth = png_get_bit_depth(png, pinfo);
    info->progressive = png_get_interlace_type(png, pinfo) != PNG_INTERLACE_NONE;
    info->has_alpha = (ct & PNG_COLOR_MASK_ALPHA) || png_get_valid(png, pinfo, PNG_INFO_tRNS);
    info->channels_in_file = png_get_channels(png, pinfo);
    info->orientation = orientation;
    info->scale_denom = 1;
    upright_size(w, h, orientation, &info->width, &info->height);
    rc = check_limits(w, h, lim, "PNG", err);
    if (rc || !rgb) goto done;
    if (cap < (size_t)w * h * 3) {
        rc = ew_fail(err, EW_IMG_E_ARGUMENT, "output buffer of %zu bytes is too small", cap);
        goto done;
    }
    png_set_expand(png);   /* palette -> RGB, gray < 8 bits -> 8, tRNS -> alpha */
    png_set_strip_16(png); /* 16-bit -> high byte */
    png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, pinfo);
    int channels = png_get_channels(png, pinfo); /* 3 or 4 now */
    int direct = channels == 3 && orientation == 1;
    buf = direct ? rgb : malloc((size_t)w * h * channels);
    rows = malloc(sizeof(png_bytep) * h);
    if (!buf || !rows) {
        rc = ew_fail(err, EW_IMG_E_NO_MEMORY, "out of memory for a %ux%u PNG", w, h);
        goto done;
    }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = buf + (size_t)y * w * channels;
    png_read_image(png, rows);
    if (channels == 4) ew_rgba_over_white_inplace(buf, (size_t)w * h);
    if (!direct) ew_orient_rgb(buf, w, h, orientation, rgb);
done:
    if (buf && buf != rgb) free(buf);
    free(rows);
    png_destroy_read_struct(&png, &pinfo, NULL);
    return rc;
}

/* ------------------------------------------------------------------ WebP (libwebp) */

static int webp_status(int st, ew_img_error *err, const char *what) {
    switch (st) {
    case VP8_STATUS_NOT_ENOUGH_DATA:
        return ew_fail(err, EW_IMG_E_TRUNCATED, "WebP %s: the data ends before the image does", what);
    case VP8_STATUS_UNSUPPORTED_FEATURE:
        return ew_fail(err, EW_IMG_E_UNSUPPORTED, "WebP %s: uses a feature libwebp does not support", what);
    case VP8_STATUS_OUT_OF_MEMORY: return ew_fail(err, EW_IMG_E_NO_MEMORY, "WebP %s: out of memory", what);
    default: return ew_fail(err, EW_IMG_E_CORRUPT, "WebP %s: the bitstream is corrupt (status %d)", what, st);
    }
}

static int webp_run(const uint8_t *d, size_t n, const ew_img_limits *lim, uint8_t *rgb, size_t cap, ew_img_info *info,
                    ew_img_error *err) {
    WebPBitstreamFeatures f;
    int st = WebPGetFeatures(d, n, &f);
    if (st != VP8_STATUS_OK) return webp_status(st, err, "header");
    int orientation = ew_webp_orientation(d, n);
    info->format = EW_IMG_FORMAT_WEBP;
    info->stored_width = (uint32_t)f.width;
    info->stored_height = (uint32_t)f.height;
    info->has_alpha = f.has_alpha;
    info->channels_in_file = f.has_alpha ? 4 : 3;
    info->bit_depth = 8;
    info->orientation = orientation;
    info->scale_denom = 1;
    upright_size(info->stored_width, info->stored_height, orientation, &info->width, &info->height);
    if (f.has_animation) return ew_fail(err, EW_IMG_E_UNSUPPORTED, "animated WebP is not supported; use a still image");
    int rc = check_limits(info->stored_width, info->stored_height, lim, "WebP", err);
    if (rc || !rgb) return rc;
    size_t w = info->stored_width, h = info->stored_height;
    if (cap < w * h * 3) return ew_fail(err, EW_IMG_E_ARGUMENT, "output buffer of %zu bytes is too small", cap);
    int channels = f.has_alpha ? 4 : 3;
    int direct = channels == 3 && orientation == 1;
    uint8_t *buf = direct ? rgb : malloc(w * h * channels);
    if (!buf) return ew_fail(err, EW_IMG_E_NO_MEMORY, "out of memory for a %zux%zu WebP", w, h);
    WebPDecoderConfig cfg;
    WebPInitDecoderConfig(&cfg);
    cfg.output.colorspace = f.has_alpha ? MODE_RGBA : MODE_RGB;
    cfg.output.is_external_memory = 1;
    cfg.output.u.RGBA.rgba = buf;
    cfg.output.u.RGBA.stride = (int)(w * channels);
    cfg.output.u.RGBA.size = w * h * channels;
    st = WebPDecode(d, n, &cfg);
    WebPFreeDecBuffer(&cfg.output);
    if (st != VP8_STATUS_OK) {
        if (!direct) free(buf);
        return webp_status(st, err, "image data");
    }
    if (channels == 4) ew_rgba_over_white_inplace(buf, w * h);
    if (!direct) {
        ew_orient_rgb(buf, (uint32_t)w, (uint32_t)h, orientation, rgb);
        free(buf);
    }
    return 0;
}

/* ------------------------------------------------------------------ entry points */

static int dispatch(const uint8_t *d, size_t n, const ew_img_limits *lim, uint8_t *rgb, size_t cap, ew_img_info *info,
                    ew_img_error *err) {
    if (!info || (!d && n)) return ew_fail(err, EW_IMG_E_ARGUMENT, "null argument");
    memset(info, 0, sizeof *info);
    info->orientation = 1;
    info->scale_denom = 1;
    ew_img_format f = ew_img_sniff(d, n);
    info->format = f;
    int rc;
    switch (f) {
    case EW_IMG_FORMAT_JPEG: rc = jpeg_decode(d, n, lim, rgb, cap, info, err); break;
    case EW_IMG_FORMAT_PNG: rc = png_run(d, n, lim, rgb, cap, info, ew_png_orientation(d, n), err); break;
    case EW_IMG_FORMAT_WEBP: rc = webp_run(d, n, lim, rgb, cap, info, err); break;
    case EW_IMG_FORMAT_UNKNOWN: return ew_fail(err, EW_IMG_E_NOT_AN_IMAGE, "%s", describe_non_image(d, n));
    default:
        return ew_fail(err, EW_IMG_E_UNSUPPORTED,
                       "unsupported image format: %s (supported: JPEG, PNG, WebP); convert it first",
                       ew_img_format_name(f));
    }
    return rc ? rc : ok(err);
}

int ew_img_probe(const uint8_t *d, size_t n, const ew_img_limits *lim, ew_img_info *info, ew_img_error *err) {
    return dispatch(d, n, lim, NULL, 0, info, err);
}

int ew_img_decode_rgb(const uint8_t *d, size_t n, const ew_img_limits *lim, uint8_t *rgb, size_t cap, ew_img_info *info,
                      ew_img_error *err) {
    if (!rgb) return ew_fail(err, EW_IMG_E_ARGUMENT, "null output buffer");
    return dispatch(d, n, lim, rgb, cap, info, err);
}
