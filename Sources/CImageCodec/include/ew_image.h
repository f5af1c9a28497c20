/*
 * ew_image.h: image sniffing, decoding and resampling for EwallML. Pure C.
 *
 * Decoding turns JPEG (TurboJPEG), PNG (libpng) and WebP (libwebp) bytes into 8-bit RGB,
 * upright (EXIF orientation applied), with alpha composited onto white, CMYK/YCCK converted
 * to RGB (Adobe-inverted CMYK detected from the APP14 marker), 16-bit samples reduced to
 * their high byte. The format comes from the magic bytes only.
 *
 * Orientation: EXIF only (JPEG APP1, PNG eXIf, WebP EXIF; tag 0x0112). An XMP packet's
 * tiff:Orientation is ignored, with or without an EXIF orientation: the catalogue is shown in
 * browsers, which apply the EXIF tag only (CSS image-orientation: from-image), so an image is
 * embedded the way shoppers see it. (Pillow >= 8.3's ImageOps.exif_transpose also reads XMP;
 * reference/ewall_reference.py applies the EXIF tag only, to match this.)
 *
 * JPEG warnings: libjpeg recovers from some problems with a warning. Harmless ones, whose cause
 * lies in the marker segments before the first scan (junk bytes between segments, an unknown
 * JFIF revision, an unknown Adobe transform, a malformed ICC chunk), are accepted and reported
 * in ew_img_info.warning with warning_kind EW_IMG_WARNING_HARMLESS: the pixels are those of the
 * same file without the fault. Damaging ones (truncated or corrupt scan data, junk after scan
 * data, bad Huffman/arithmetic codes, lost restart markers, bad progression or SOS
 * parameters) fail with EW_IMG_E_TRUNCATED or EW_IMG_E_CORRUPT, unless limits->allow_warnings,
 * which accepts them as EW_IMG_WARNING_DAMAGING. A harmless warning followed by a damaging one
 * is damaging (decode.c, jpeg_decode, says how that is checked).
 *
 * Threading contract: every function is reentrant. There is no shared state; calls may run
 * concurrently on any threads. Nothing here retries, logs, caches or reads the environment.
 *
 * Errors: fallible calls return 0 or one of the negative EW_IMG_E_* codes and fill the
 * caller-owned ew_img_error. No longjmp leaves this library (libpng's stays in decode.c).
 *
 * Ownership: every pointer parameter is borrowed for the duration of the call. Output buffers
 * are allocated by the caller with the size stated on each function.
 */
#ifndef EW_IMAGE_H
#define EW_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    EW_IMG_OK = 0,
    EW_IMG_E_NOT_AN_IMAGE = -1,    /* empty, text, HTML, or bytes of no known image format */
    EW_IMG_E_UNSUPPORTED = -2,     /* a recognised image format this library does not decode */
    EW_IMG_E_TRUNCATED = -3,       /* the data ends before the image does */
    EW_IMG_E_CORRUPT = -4,         /* malformed data, or a JPEG that decodes only with damaging warnings */
    EW_IMG_E_TOO_MANY_PIXELS = -5, /* width*height above the limit (checked from the header) */
    EW_IMG_E_TOO_SMALL = -6,       /* a side below the minimum */
    EW_IMG_E_NO_MEMORY = -7,
    EW_IMG_E_ARGUMENT = -8, /* a caller error: null pointer, buffer too small, bad size */
};

typedef struct ew_img_error {
    int code;
    char message[512];
} ew_img_error;

typedef enum ew_img_format {
    EW_IMG_FORMAT_UNKNOWN = 0,
    EW_IMG_FORMAT_JPEG = 1,
    EW_IMG_FORMAT_PNG = 2,
    EW_IMG_FORMAT_WEBP = 3,
    /* recognised but not decoded: */
    EW_IMG_FORMAT_GIF = 10,
    EW_IMG_FORMAT_BMP = 11,
    EW_IMG_FORMAT_TIFF = 12,
    EW_IMG_FORMAT_HEIF = 13, /* HEIC / AVIF (ISO BMFF 'ftyp') */
    EW_IMG_FORMAT_SVG = 14,
    EW_IMG_FORMAT_ICO = 15,
    EW_IMG_FORMAT_JXL = 16,
    EW_IMG_FORMAT_PSD = 17,
} ew_img_format;

/* Returns the format named by the first bytes, EW_IMG_FORMAT_UNKNOWN if none. Never fails. */
ew_img_format ew_img_sniff(const uint8_t *data, size_t len);

/* A short lowercase name for a format ("jpeg", "png", "gif", ...). Static storage. */
const char *ew_img_format_name(ew_img_format format);

typedef struct ew_img_limits {
    uint64_t max_pixels; /* refuse when stored width*height exceeds this (0 = no limit) */
    uint32_t min_side;   /* refuse when either side is below this (0 = no limit) */
    int allow_warnings;  /* 1: accept JPEGs that libjpeg decodes with damaging warnings too */
    /* JPEG fast path: when both are > 0, decode with the smallest TurboJPEG DCT scaling
       (1/8 .. 1) whose upright output is still at least min_width x min_height. Changes
       pixels compared with a full decode followed by resampling. 0 = exact full decode. */
    uint32_t scale_min_width;
    uint32_t scale_min_height;
} ew_img_limits;

typedef enum ew_img_warning_kind {
    EW_IMG_WARNING_NONE = 0,
    EW_IMG_WARNING_HARMLESS = 1, /* a JPEG header fault libjpeg reads past; pixels unaffected */
    EW_IMG_WARNING_DAMAGING = 2, /* damaged scan data, accepted because of allow_warnings */
} ew_img_warning_kind;

typedef struct ew_img_info {
    ew_img_format format;
    uint32_t width; /* upright output width, after orientation and DCT scaling */
    uint32_t height;
    uint32_t stored_width; /* as stored in the file */
    uint32_t stored_height;
    int orientation;      /* EXIF orientation 1..8 (1 when absent) */
    int has_alpha;        /* the source had an alpha channel or transparency */
    int channels_in_file; /* 1 gray, 2 gray+alpha, 3 colour, 4 colour+alpha or CMYK */
    int is_cmyk;          /* JPEG in CMYK or YCCK */
    int adobe_inverted;   /* CMYK data stored inverted (Adobe APP14 marker present) */
    int bit_depth;        /* bits per sample in the file */
    int progressive;      /* JPEG progressive or PNG interlaced */
    int scale_denom;      /* JPEG fast path: 1 (none), 2, 4 or 8 */
    char warning[256];    /* the accepted decoder warning's text (libjpeg's), else "" */
    int warning_kind;     /* an ew_img_warning_kind: NONE when warning is "" */
} ew_img_info;

/* Reads the header only: format, sizes, orientation, alpha. Applies limits (pixels, min side).
   Runs in microseconds whatever the image's size. */
int ew_img_probe(const uint8_t *data, size_t len, const ew_img_limits *limits, ew_img_info *info, ew_img_error *err);

/* Decodes into `rgb`, caller-allocated with at least info->width * info->height * 3 bytes as
   returned by ew_img_probe with the same limits. Row-major, tightly packed RGB. Fills `info`
   again (identical sizes). */
int ew_img_decode_rgb(const uint8_t *data, size_t len, const ew_img_limits *limits, uint8_t *rgb, size_t rgb_capacity,
                      ew_img_info *info, ew_img_error *err);

/* Resamples packed RGB src (sw x sh) to dst (dw x dh), caller-allocated dw*dh*3 bytes, with
   PIL's antialiased bilinear filter in fixed point, bit-exact with Image.resize(BILINEAR)
   (horizontal pass, then vertical, 8-bit intermediate). src and dst must not overlap. */
int ew_img_resize_bilinear(const uint8_t *src, uint32_t sw, uint32_t sh, uint8_t *dst, uint32_t dw, uint32_t dh,
                           ew_img_error *err);

/* Picks the resize's kernels: 1 = AVX2 where the CPU has it (the default, chosen at the first
   resize), 0 = portable. Both give identical bytes; for tests and benchmarks. Returns the
   kernel now in force (1 AVX2, 0 portable). Process-wide; call before resizing starts. */
int ew_img_set_resize_kernel(int simd);

/* Writes the w x h window at (x0, y0) of packed RGB src (src_w wide) as planar CHW float32
   into `out` (caller-allocated 3*w*h floats): out = (v/255 - mean[c]) / std[c], in float32,
   the operations of torchvision's ToTensor + Normalize. */
int ew_img_normalize_chw(const uint8_t *src, uint32_t src_w, uint32_t src_h, uint32_t x0, uint32_t y0, uint32_t w,
                         uint32_t h, const float mean[3], const float std_[3], float *out, ew_img_error *err);

#ifdef __cplusplus
}
#endif
#endif
