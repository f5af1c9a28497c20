/* ew_internal.h: helpers shared by the C files of CImageCodec. Not part of the public header. */
#ifndef EW_INTERNAL_H
#define EW_INTERNAL_H

#include "ew_image.h"

int ew_fail(ew_img_error *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* metadata.c */
typedef struct {
    int orientation; /* 1..8 */
    int adobe;       /* APP14 "Adobe" marker present */
    int progressive; /* SOF2 */
} ew_jpeg_meta;
void ew_jpeg_scan_metadata(const uint8_t *d, size_t n, ew_jpeg_meta *meta);
int ew_png_orientation(const uint8_t *d, size_t n);
int ew_webp_orientation(const uint8_t *d, size_t n);
int ew_exif_orientation(const uint8_t *tiff, size_t n);

/* jpeg_warnings.c */
typedef enum {
    EW_JPEG_WARN_HARMLESS = 1,  /* caused by a marker segment before the first scan */
    EW_JPEG_WARN_TRUNCATED = 2, /* JWRN_JPEG_EOF */
    EW_JPEG_WARN_CORRUPT = 3,   /* any other warning, or one of unknown text */
} ew_jpeg_warning;
/* libjpeg's next_marker(): from *p, skips what libjpeg discards, returns the next marker code
   and sets *p just after it (and *discarded to the count libjpeg warns about); -1 at the end. */
int ew_jpeg_next_marker(const uint8_t *d, size_t n, size_t *p, unsigned *discarded);
/* Classifies a libjpeg warning's text; `d` is the JPEG it came from (for where junk lies). */
ew_jpeg_warning ew_jpeg_classify_warning(const char *msg, const uint8_t *d, size_t n);
/* Copies d into out (caller-allocated, n bytes) with the header before the first scan
   rewritten as libjpeg reads it, free of every harmless warning's cause; the scans are copied
   unchanged. Returns the length written, or 0 when the header cannot be walked to a scan. */
size_t ew_jpeg_clean_header(const uint8_t *d, size_t n, uint8_t *out);

/* pixels.c */
void ew_cmyk_to_rgb_inplace(uint8_t *px, size_t count, int adobe_inverted);
void ew_rgba_over_white_inplace(uint8_t *px, size_t count);
void ew_orient_rgb(const uint8_t *src, uint32_t w, uint32_t h, int orientation, uint8_t *dst);

#endif
