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

/* pixels.c */
void ew_cmyk_to_rgb_inplace(uint8_t *px, size_t count, int adobe_inverted);
void ew_rgba_over_white_inplace(uint8_t *px, size_t count);
void ew_orient_rgb(const uint8_t *src, uint32_t w, uint32_t h, int orientation, uint8_t *dst);

#endif
