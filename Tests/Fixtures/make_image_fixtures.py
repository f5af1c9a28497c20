#!/usr/bin/python3
"""Image fixtures for the tests, named by what they are, written to .fixtures/images/.

Good files are real photographs (skimage's coffee and chelsea, CC0) in every format and
variant the decoder supports; bad files are made from them by cutting, garbling or patching
bytes, plus files of other formats and non-images. Deterministic; run by `make fixtures`.

JPEGs that libjpeg decodes with a warning come in two kinds (see ew_image.h): harmless header
faults, each written with `<name>.pil.png`, PIL's own decode of it, for exact comparison; and
damaged scan data. Each is checked here to raise the libjpeg warning it is named for.
Orientation in XMP (tiff:Orientation) without EXIF, and disagreeing with EXIF, is written too:
EwallML applies EXIF orientation only.
"""
import ctypes
import io
import json
import os
import struct
import sys
import warnings
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


def segment(marker, payload):
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def segments(jpeg):
    """(offset, marker, length) of each marker segment up to and including the first SOS."""
    out, i = [], 2
    while True:
        marker, seg = jpeg[i + 1], jpeg[i + 2] << 8 | jpeg[i + 3]
        out.append((i, marker, seg))
        if marker == 0xDA:
            return out
        i += 2 + seg


def insert_before(jpeg, marker, data):
    """`data` inserted just before the first segment with this marker."""
    i = next(off for off, m, _ in segments(jpeg) if m == marker)
    return jpeg[:i] + data + jpeg[i:]


def without(jpeg, marker):
    """The first segment with this marker removed."""
    i, _, seg = next(s for s in segments(jpeg) if s[1] == marker)
    return jpeg[:i] + jpeg[i + 2 + seg:]


XMP_TEMPLATE = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
    '<rdf:Description rdf:about="" xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{}"/>'
    '</rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>')


def xmp_app1(orientation):
    return segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0" + XMP_TEMPLATE.format(orientation).encode())


def png_with_xmp(im, orientation, **kw):
    from PIL import PngImagePlugin
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", XMP_TEMPLATE.format(orientation))
    return encode(im, "PNG", pnginfo=info, **kw)


def tj_first_warning(jpeg):
    """The first libjpeg warning TurboJPEG raises for this JPEG (TJFLAG_STOPONWARNING), "" if none."""
    tj = ctypes.CDLL("libturbojpeg.so.0")
    tj.tjInitDecompress.restype = ctypes.c_void_p
    tj.tjGetErrorStr2.restype = ctypes.c_char_p
    tj.tjGetErrorStr2.argtypes = [ctypes.c_void_p]
    tj.tjGetErrorCode.argtypes = [ctypes.c_void_p]
    h = ctypes.c_void_p(tj.tjInitDecompress())
    w, hh, sub, cs = (ctypes.c_int() for _ in range(4))
    tj.tjDecompressHeader3(h, jpeg, len(jpeg), *(ctypes.byref(v) for v in (w, hh, sub, cs)))
    buf = ctypes.create_string_buffer(max(1, w.value * hh.value * 3))
    TJPF_RGB, STOPONWARNING = 0, 1 << 13
    rc = tj.tjDecompress2(h, jpeg, len(jpeg), buf, w.value, 0, hh.value, TJPF_RGB, STOPONWARNING)
    msg = tj.tjGetErrorStr2(h).decode() if rc else ""
    tj.tjDestroy(h)
    return msg


def with_warning(name, jpeg, expected):
    """Saves a JPEG after checking libjpeg's first warning on it contains `expected` ("": that
    libjpeg raises none)."""
    got = tj_first_warning(jpeg)
    ok = expected in got if expected else got == ""
    assert ok, f"{name}: expected a libjpeg warning with {expected!r}, got {got!r}"
    save(name, jpeg)


def save_with_pil_decode(name, data):
    """The file, and PIL's decode of it as `<name>.pil.png` (what the decoder must equal)."""
    save(name, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PIL's "Corrupt EXIF data" on the malformed APP1
        save(name + ".pil.png", encode(Image.open(io.BytesIO(data)).convert("RGB"), "PNG"))


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
    with_warning("truncated_half.jpg", base[: len(base) // 2], "Premature end of JPEG file")
    save("truncated_in_header.jpg", base[:120])
    s = scan_start(base)
    garbled = bytearray(base)
    for j in range(s + 2000, s + 2400, 7):
        garbled[j] = 0xFF if garbled[j] != 0xFF else 0x00
    garbled = bytes(garbled)
    with_warning("corrupt_scan_data.jpg", garbled, "premature end of data segment")
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
    decoder_warnings(base, garbled, encode(chelsea.transpose(Image.ROTATE_90), "JPEG", quality=95, exif=exif(6)))
    xmp_orientation(chelsea)
    print(f"make_image_fixtures: wrote {len(os.listdir(OUT))} files to {OUT}")


def decoder_warnings(base, garbled, exif6):
    """JPEGs that libjpeg decodes with a warning, harmless ones first (see the module doc)."""
    # Junk before a marker in the header, as in Pillow's test images: libjpeg, PIL and browsers
    # skip it.
    junk = b"\x00\x11\x22\x33\x44"
    data = insert_before(base, 0xDB, junk)
    with_warning("junk_before_dqt_600x400.jpg", data, "5 extraneous bytes before marker 0xdb")
    save_with_pil_decode("junk_before_dqt_600x400.jpg", data)
    # ... before the EXIF segment: the orientation behind it still counts (upright 451x300).
    data = insert_before(exif6, 0xE1, b"\x00\x00\x00")
    with_warning("junk_before_exif6_451x300.jpg", data, "3 extraneous bytes before marker 0xe1")
    # JFIF 2.01: libjpeg's JWRN_JFIF_MAJOR.
    app0 = next(off for off, m, _ in segments(base) if m == 0xE0)
    data = bytearray(base)
    data[app0 + 4 + 5] = 2
    with_warning("jfif_revision_2_600x400.jpg", bytes(data), "unknown JFIF revision number 2.01")
    save_with_pil_decode("jfif_revision_2_600x400.jpg", bytes(data))
    # An Adobe APP14 with transform 7 and no JFIF: JWRN_ADOBE_XFORM, read as YCbCr.
    nojfif = without(base, 0xE0)
    data = nojfif[:2] + segment(0xEE, b"Adobe" + struct.pack(">HHHB", 100, 0, 0, 7)) + nojfif[2:]
    with_warning("adobe_transform_7_600x400.jpg", data, "Unknown Adobe color transform code 7")
    save_with_pil_decode("adobe_transform_7_600x400.jpg", data)
    # Unknown and malformed APPn segments (APP5 of junk, an APP1 "Exif" whose IFD offset points
    # outside it, an APP11 of nothing): libjpeg skips them without a word.
    bad_exif = b"Exif\0\0MM\0\x2a\xff\xff\xff\xf0" + b"\0" * 20
    data = base[:2] + segment(0xE5, bytes(range(200))) + segment(0xE1, bad_exif) + segment(0xEB, b"") + base[2:]
    with_warning("unknown_app_segments_600x400.jpg", data, "")
    save_with_pil_decode("unknown_app_segments_600x400.jpg", data)
    # An ICC chunk numbered 0 of 0 (libjpeg's read_icc_profile says "bad ICC marker"; TurboJPEG
    # 2.1 never reads ICC, and colour management is not applied).
    data = base[:2] + segment(0xE2, b"ICC_PROFILE\0\x00\x00" + b"not a profile" * 8) + base[2:]
    with_warning("bad_icc_chunk_600x400.jpg", data, "")
    save_with_pil_decode("bad_icc_chunk_600x400.jpg", data)

    # Damaging: the scan data (and truncated_half.jpg, corrupt_scan_data.jpg above).
    s = scan_start(base)
    data = bytearray(base)
    rnd = np.random.RandomState(3000)
    data[s + 3000:s + 3016] = bytes(rnd.randint(0, 255, 16, dtype=np.uint8))  # no 0xFF: no marker
    # All blocks decode and bytes are left over: what a desynchronised scan usually looks like.
    with_warning("corrupt_entropy_data_600x400.jpg", bytes(data), "extraneous bytes before marker 0xd9")
    data = bytearray(base)
    data[s - 2] = 0x3E  # Se = 62 in a baseline SOS: JWRN_NOT_SEQUENTIAL
    with_warning("bad_sos_parameters_600x400.jpg", bytes(data), "Invalid SOS parameters for sequential JPEG")
    # A harmless fault before a damaging one: the damage must not hide behind it.
    with_warning("junk_then_corrupt_scan_600x400.jpg", insert_before(garbled, 0xDB, junk), "5 extraneous bytes")
    cut = insert_before(base, 0xDB, junk)
    with_warning("junk_then_truncated_600x400.jpg", cut[: len(cut) // 2], "5 extraneous bytes")


def xmp_orientation(chelsea):
    """Orientation in XMP's tiff:Orientation. Browsers ignore it and so does EwallML: the stored
    pixels are what is shown. Stored as `chelsea` (451x300), so ignoring XMP gives it back."""
    save("xmp_orientation_6_451x300.png", png_with_xmp(chelsea, 6))
    jpeg = encode(chelsea, "JPEG", quality=95)
    save("xmp_orientation_6_451x300.jpg", jpeg[:2] + xmp_app1(6) + jpeg[2:])
    # EXIF 6 and XMP 8 disagree: EXIF wins, so the upright image is `chelsea` again.
    stored = chelsea.transpose(Image.ROTATE_90)
    jpeg = encode(stored, "JPEG", quality=95, exif=exif(6))
    save("exif6_xmp8_451x300.jpg", jpeg[:2] + xmp_app1(8) + jpeg[2:])
    save("exif6_xmp8_451x300.png", png_with_xmp(stored, 8, exif=exif(6)))


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
