#!/usr/bin/python3
"""Image fixtures for the tests, named by what they are, written to .fixtures/images/.

Good files are real photographs (skimage's coffee and chelsea, CC0) in every format and
variant the decoder supports; bad files are made from them by cutting, garbling or patching
bytes, plus files of other formats and non-images. Deterministic; run by `make fixtures`.
"""
import ctypes
import io
import json
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

OUT = sys.argv[1] if len(sys.argv) > 1 else ".fixtures/images"
SK = "/usr/lib/python3/dist-packages/skimage/data"


def save(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def encode(im, fmt, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


def cutout(im):
    w, h = im.size
    yy, xx = np.mgrid[0:h, 0:w]
    inside = ((xx - w / 2) / (w * 0.4)) ** 2 + ((yy - h / 2) / (h * 0.42)) ** 2
    alpha = np.clip((1.15 - inside) * 400, 0, 255).astype(np.uint8)  # soft edge, 0 outside
    rgb = np.asarray(im).copy()
    rgb[alpha == 0] = 0  # black under the transparent pixels, as exporters often leave it
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def exif(orientation):
    e = Image.Exif()
    e[0x0112] = orientation
    return e.tobytes()


def ycck_jpeg(rgb):
    """A YCCK JPEG (Adobe transform 2) via TurboJPEG, which turns CMYK input into YCCK. The CMYK
    is written in Adobe's inverted convention, as Photoshop does."""
    tj = ctypes.CDLL("libturbojpeg.so.0")
    tj.tjInitCompress.restype = ctypes.c_void_p
    h = tj.tjInitCompress()
    a = np.asarray(rgb).astype(np.int32)
    k = 255 - a.max(axis=2)
    ink = np.zeros(a.shape[:2] + (4,), np.int32)
    denom = np.maximum(255 - k, 1)[..., None]
    ink[..., :3] = ((255 - a - k[..., None]) * 255) // denom
    ink[..., 3] = k
    cmyk_inverted = np.ascontiguousarray((255 - ink).astype(np.uint8))
    buf = ctypes.POINTER(ctypes.c_ubyte)()
    size = ctypes.c_ulong(0)
    H, W = cmyk_inverted.shape[:2]
    TJPF_CMYK, TJSAMP_444 = 11, 0
    rc = tj.tjCompress2(ctypes.c_void_p(h), cmyk_inverted.ctypes.data_as(ctypes.c_void_p), W, 0, H, TJPF_CMYK,
                        ctypes.byref(buf), ctypes.byref(size), TJSAMP_444, 95, 0)
    assert rc == 0, "tjCompress2 failed"
    data = ctypes.string_at(buf, size.value)
    tj.tjFree(buf)
    tj.tjDestroy(ctypes.c_void_p(h))
    return data


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_png(w, h):
    """A valid w x h 8-bit gray PNG of white, compressed row by row (a few hundred KB)."""
    z = zlib.compressobj(9)
    row = b"\x00" + b"\xff" * w
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))


def patch_sof(jpeg, w, h):
    """Rewrites the frame size in the SOF0/SOF2 marker."""
    b = bytearray(jpeg)
    i = 2
    while i < len(b):
        marker = b[i + 1]
        seg = b[i + 2] << 8 | b[i + 3]
        if marker in (0xC0, 0xC1, 0xC2):
            b[i + 5:i + 9] = struct.pack(">HH", h, w)
            return bytes(b)
        i += 2 + seg
    raise ValueError("no SOF")


def scan_start(jpeg):
    i = 2
    while True:
        seg = jpeg[i + 2] << 8 | jpeg[i + 3]
        if jpeg[i + 1] == 0xDA:
            return i + 2 + seg
        i += 2 + seg


def main():
    os.makedirs(OUT, exist_ok=True)
    coffee = Image.open(os.path.join(SK, "coffee.png")).convert("RGB")  # 600x400
    chelsea = Image.open(os.path.join(SK, "chelsea.png")).convert("RGB")  # 451x300
    expect = {}

    # --- good files, every supported variant
    save("baseline_600x400.jpg", encode(coffee, "JPEG", quality=92))
    save("progressive_600x400.jpg", encode(coffee, "JPEG", quality=92, progressive=True))
    save("grayscale_600x400.jpg", encode(coffee.convert("L"), "JPEG", quality=92))
    save("cmyk_adobe_600x400.jpg", encode(coffee.convert("CMYK"), "JPEG", quality=95))
    save("ycck_adobe_600x400.jpg", ycck_jpeg(coffee))
    save("source_600x400.png", encode(coffee, "PNG"))  # the colours CMYK/YCCK must come back to
    save("rgb8_451x300.png", encode(chelsea, "PNG"))
    save("interlaced_451x300.png", _interlaced(chelsea))
    save("rgba_cutout_451x300.png", encode(cutout(chelsea), "PNG"))
    save("gray_alpha_451x300.png", encode(cutout(chelsea).convert("LA"), "PNG"))
    save("palette_451x300.png", encode(chelsea.quantize(256), "PNG"))
    pal = chelsea.quantize(64)
    save("palette_transparent_451x300.png", encode(pal, "PNG", transparency=0))
    g16 = (np.asarray(chelsea.convert("L")).astype(np.uint16) * 257)
    save("gray16_451x300.png", encode(Image.fromarray(g16, "I;16"), "PNG"))
    save("lossy_451x300.webp", encode(chelsea, "WEBP", quality=85))
    save("lossless_451x300.webp", encode(chelsea, "WEBP", lossless=True))
    save("alpha_451x300.webp", encode(cutout(chelsea), "WEBP", quality=90))
    # EXIF orientations 1..8: stored so that the upright image is always `chelsea`
    inverse = {1: None, 2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM,
               5: Image.TRANSPOSE, 6: Image.ROTATE_90, 7: Image.TRANSVERSE, 8: Image.ROTATE_270}
    for o, t in inverse.items():
        stored = chelsea if t is None else chelsea.transpose(t)
        save(f"exif_orientation_{o}.jpg", encode(stored, "JPEG", quality=95, exif=exif(o)))

    # --- bad files
    base = encode(coffee, "JPEG", quality=92)
    save("truncated_half.jpg", base[: len(base) // 2])
    save("truncated_in_header.jpg", base[:120])
    s = scan_start(base)
    garbled = bytearray(base)
    for j in range(s + 2000, s + 2400, 7):
        garbled[j] = 0xFF if garbled[j] != 0xFF else 0x00
    save("corrupt_scan_data.jpg", bytes(garbled))
    save("header_60000x60000.jpg", patch_sof(base, 60000, 60000))
    save("valid_16000x16000.png", huge_png(16000, 16000))
    png = encode(chelsea, "PNG")
    save("truncated.png", png[: len(png) * 2 // 3])
    bad = bytearray(png)
    idat = png.index(b"IDAT")
    bad[idat + 4 + 100] ^= 0xFF  # inside the first IDAT's data: its CRC no longer matches
    save("bad_crc.png", bytes(bad))
    webp = encode(chelsea, "WEBP", quality=85)
    save("truncated.webp", webp[: len(webp) // 2])
    save("tiny_8x8.png", encode(chelsea.resize((8, 8)), "PNG"))
    save("animation.gif", encode(chelsea.convert("P"), "GIF"))
    save("bitmap.bmp", encode(chelsea, "BMP"))
    save("scan.tiff", encode(chelsea, "TIFF"))
    save("drawing.svg", b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>\n')
    save("html_pretending_to_be.jpg", b"<!DOCTYPE html>\n<html><body>404 Not Found</body></html>\n")
    save("json_error.jpg", b'{"error": "not found"}')
    save("text.txt", "상품 이미지가 아닙니다 (not an image)\n".encode())
    save("empty.jpg", b"")
    save("heic_header.heic", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64)
    print(f"make_image_fixtures: wrote {len(os.listdir(OUT))} files to {OUT}")


def _interlaced(im):
    """Adam7-interlaced PNG (PIL cannot write one): encode the passes by hand."""
    a = np.asarray(im)
    h, w = a.shape[:2]
    passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
    raw = b""
    for x0, y0, dx, dy in passes:
        sub = a[y0::dy, x0::dx]
        if sub.size == 0:
            continue
        for row in sub:
            raw += b"\x00" + row.tobytes()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 1))
            + png_chunk(b"IDAT", zlib.compress(raw, 9)) + png_chunk(b"IEND", b""))


if __name__ == "__main__":
    main()
