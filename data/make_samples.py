#!/usr/bin/python3
"""Build the sample photo set used by `make demo`, the parity tests, the benchmarks and
the BatchNorm recalibration of the random-init model.

The photos are real photographs shipped by Debian packages (installed by `make deps`):
  - mate-backgrounds            /usr/share/backgrounds/mate/nature/*.jpg   (GPL-2+)
  - plasma-workspace-wallpapers /usr/share/wallpapers/*/contents/images/   (LGPL-3 / CC-BY-SA)
  - python3-skimage             skimage/data/*.png|jpg                     (public domain / CC0)
None of them is committed to this repository; this script makes product-sized copies in
assorted formats under data/samples/ (git-ignored), deterministically.

Output:
  data/samples/photos/NN_<name>.<ext>   ~30 photos, 300..1600 px, JPEG (baseline, progressive,
                                        grayscale, CMYK, EXIF-rotated), PNG (RGB, RGBA cut-out,
                                        gray+alpha, palette, 16-bit gray), WebP (lossy, lossless,
                                        alpha)
  data/samples/calibration/*.jpg        the same sources, 256 px, for BatchNorm recalibration
  data/samples/bench/NNNN.jpg           --bench N: N JPEGs at product size (median side ~720 px)
  data/samples/real/NNN_<name>.<ext>    --real N: N photos of mixed sizes, 128 to 4,000 px on the
                                        longest side (log-uniform), ~70% JPEG (baseline/progressive,
                                        quality 80-95), ~30% PNG (RGB), from the largest version
                                        of every source photo (wallpapers up to 5120 px, skimage);
                                        see real_photos() for how each one is made
  DIR/NNN.jpg|png                        --guard N --guard-dir DIR (alone): N product-sized photos (crops of
                                        the sources, 480-1200 px, ~85% JPEG, ~15% PNG) that `make
                                        model` keeps beside the model (models/resnet50.calibration/)
                                        for `--precision auto`'s drift guard
  data/samples/manifest.json            what each file is and where it came from
"""
import argparse
import hashlib
import io
import json
import math
import os
import random
import sys

from PIL import Image, ImageDraw, ImageFilter

MATE = "/usr/share/backgrounds/mate/nature"
PLASMA = "/usr/share/wallpapers"
PLASMA_PHOTOS = [
    "BytheWater", "ColdRipple", "ColorfulCups", "DarkestHour", "EveningGlow", "FallenLeaf",
    "Grey", "Kite", "OneStandsOut", "Path", "summer_1am",
]
SKIMAGE = "/usr/lib/python3/dist-packages/skimage/data"
SKIMAGE_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "camera.png"]


def sources():
    out = []
    if os.path.isdir(MATE):
        for f in sorted(os.listdir(MATE)):
            if f.lower().endswith(".jpg"):
                out.append(("mate-backgrounds", os.path.join(MATE, f)))
    for name in PLASMA_PHOTOS:
        p = os.path.join(PLASMA, name, "contents", "images", "1920x1080.jpg")
        if os.path.exists(p):
            out.append(("plasma-workspace-wallpapers", p))
    for f in SKIMAGE_PHOTOS:
        p = os.path.join(SKIMAGE, f)
        if os.path.exists(p):
            out.append(("python3-skimage", p))
    return out


def largest_sources():
    """Every source photo at its largest stored size: MATE's (up to 2560 px), each plasma
    wallpaper's biggest file (up to 5120 x 2880; photos and renders), skimage's photos."""
    out = []
    if os.path.isdir(MATE):
        out += [os.path.join(MATE, f) for f in sorted(os.listdir(MATE)) if f.lower().endswith(".jpg")]
    if os.path.isdir(PLASMA):
        for name in sorted(os.listdir(PLASMA)):
            d = os.path.join(PLASMA, name, "contents", "images")
            if not os.path.isdir(d):
                continue
            files = [f for f in os.listdir(d) if f.lower().endswith((".jpg", ".png"))]

            def area(f):
                try:
                    w, h = os.path.splitext(f)[0].split("x")
                    return int(w) * int(h)
                except ValueError:
                    return 0
            if files:
                out.append(os.path.join(d, max(files, key=area)))
    out += [os.path.join(SKIMAGE, f) for f in SKIMAGE_PHOTOS if os.path.exists(os.path.join(SKIMAGE, f))]
    return out


def real_photos(out_dir, n):
    """`--real N`: the benchmark and drift set of real photos of mixed sizes. Photo j comes from
    source j mod S: a random window of 50-100% of each side (so aspect ratios vary), resized
    so its longest side is log-uniform in 128...4000 px (never upscaled past the source: a
    source smaller than the draw keeps its size), saved as JPEG (quality 80-95, 1 in 4
    progressive) or, 3 times in 10, PNG. Deterministic (seeded)."""
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(4000)
    srcs = largest_sources()
    cache = {}
    made = []
    for j in range(n):
        path = srcs[j % len(srcs)]
        kind = "png" if rng.random() < 0.3 else ("jpeg_progressive" if rng.random() < 0.25 else "jpeg")
        longest = int(round(math.exp(rng.uniform(math.log(128), math.log(4000)))))
        fx, fy, ox, oy, q = rng.uniform(0.5, 1), rng.uniform(0.5, 1), rng.random(), rng.random(), rng.randint(80, 95)
        out = os.path.join(out_dir, f"{j:03d}_{slug(path)}.{'png' if kind == 'png' else 'jpg'}")
        made.append(out)
        if os.path.exists(out):
            continue
        if path not in cache:
            cache.clear()
            im = Image.open(path)
            im.load()
            cache[path] = im.convert("RGB")
        im = cache[path]
        w, h = im.size
        cw, ch = max(1, int(w * fx)), max(1, int(h * fy))
        x, y = int((w - cw) * ox), int((h - ch) * oy)
        crop = im.crop((x, y, x + cw, y + ch))
        if longest < max(cw, ch):
            crop = fit(crop, longest)
        if kind == "png":
            crop.save(out, "PNG", compress_level=6)
        else:
            crop.save(out, "JPEG", quality=q, progressive=kind == "jpeg_progressive")
    return made


def guard_photos(src, out_dir, n):
    """`n` product-like crops of the source photos, deterministic, for the precision guard: the
    drift of bf16/int8/fast-JPEG decode is measured on them, so they look like catalogue photos
    (a window of a real photo, 480-1200 px, JPEG quality 80-92, a few PNGs)."""
    os.makedirs(out_dir, exist_ok=True)
    rng = random.Random(38)
    cache = {}
    for j in range(n):
        pkg, path = src[j % len(src)]
        ext = "png" if rng.random() < 0.15 else "jpg"
        out = os.path.join(out_dir, f"{j:03d}.{ext}")
        if path not in cache:
            im = Image.open(path)
            im.load()
            cache[path] = im.convert("RGB")
        im = cache[path]
        w, h = im.size
        cw, ch = int(w * rng.uniform(0.35, 0.9)), int(h * rng.uniform(0.35, 0.9))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = fit(im.crop((x, y, x + cw, y + ch)), rng.choice([480, 600, 720, 800, 960, 1200]))
        quality = rng.choice([80, 85, 90, 92])
        if os.path.exists(out):
            continue
        if ext == "png":
            crop.save(out, "PNG", compress_level=6)
        else:
            crop.save(out, "JPEG", quality=quality)


def slug(path):
    base = os.path.basename(path)
    if "/wallpapers/" in path:
        base = path.split("/wallpapers/")[1].split("/")[0]
    return os.path.splitext(base)[0].lower().replace(" ", "_")


def fit(im, longest):
    im = im.copy()
    w, h = im.size
    s = longest / max(w, h)
    return im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.LANCZOS)


def cutout(im):
    """A product cut-out: the photo inside a soft ellipse, fully transparent outside, and the
    RGB under the transparent pixels set to black (as many exporters leave it)."""
    w, h = im.size
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse((w * 0.12, h * 0.08, w * 0.88, h * 0.92), fill=255)
    mask = mask.filter(ImageFilter.GaussianBlur(3))
    rgb = Image.composite(im, Image.new("RGB", (w, h), (0, 0, 0)), mask)
    rgba = rgb.copy()
    rgba.putalpha(mask)
    return rgba


def exif_bytes(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


# (format label, extension, writer) applied round-robin; every label appears at least once.
def write_variant(kind, im, path):
    if kind == "jpeg":
        im.save(path, "JPEG", quality=90)
    elif kind == "jpeg_progressive":
        im.save(path, "JPEG", quality=88, progressive=True)
    elif kind == "jpeg_gray":
        im.convert("L").save(path, "JPEG", quality=90)
    elif kind == "jpeg_cmyk":  # PIL writes Adobe-inverted CMYK with an APP14 Adobe marker
        im.convert("CMYK").save(path, "JPEG", quality=92)
    elif kind == "jpeg_exif6":  # stored rotated; orientation 6 says "rotate 90 CW to display"
        im.transpose(Image.ROTATE_90).save(path, "JPEG", quality=90, exif=exif_bytes(6))
    elif kind == "jpeg_exif3":
        im.transpose(Image.ROTATE_180).save(path, "JPEG", quality=90, exif=exif_bytes(3))
    elif kind == "png":
        im.save(path, "PNG")
    elif kind == "png_rgba_cutout":
        cutout(im).save(path, "PNG")
    elif kind == "png_gray_alpha":
        cutout(im).convert("LA").save(path, "PNG")
    elif kind == "png_palette":
        im.quantize(colors=256, method=Image.MEDIANCUT).save(path, "PNG")
    elif kind == "png_gray16":
        import numpy as np
        g = np.asarray(im.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(g.astype(np.uint16), mode="I;16").save(path, "PNG")
    elif kind == "webp_lossy":
        im.save(path, "WEBP", quality=85)
    elif kind == "webp_lossless":
        im.save(path, "WEBP", lossless=True, quality=50)
    elif kind == "webp_alpha":
        cutout(im).save(path, "WEBP", quality=85)
    else:
        raise ValueError(kind)


VARIANTS = [
    ("jpeg", "jpg"), ("png", "png"), ("jpeg_progressive", "jpg"), ("webp_lossy", "webp"),
    ("jpeg", "jpg"), ("png_rgba_cutout", "png"), ("jpeg_gray", "jpg"), ("jpeg_cmyk", "jpg"),
    ("jpeg", "jpg"), ("jpeg_exif6", "jpg"), ("webp_lossless", "webp"), ("png_palette", "png"),
    ("jpeg", "jpg"), ("png_gray16", "png"), ("jpeg_exif3", "jpg"), ("webp_alpha", "webp"),
    ("jpeg", "jpg"), ("png_gray_alpha", "png"), ("jpeg_progressive", "jpg"), ("jpeg", "jpg"),
]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="data/samples")
    ap.add_argument("--bench", type=int, default=0, help="also write N product-sized JPEGs for benchmarks")
    ap.add_argument("--real", type=int, default=0, help="also write N real photos of mixed sizes (128-4000 px)")
    ap.add_argument("--guard", type=int, default=0, help="write only N product-sized photos to --guard-dir")
    ap.add_argument("--guard-dir", help="where --guard writes (make model: models/resnet50.calibration)")
    args = ap.parse_args()
    if args.guard and not args.guard_dir:
        ap.error("--guard needs --guard-dir")

    src = sources()
    if len(src) < 20:
        sys.exit(
            f"make_samples: found only {len(src)} source photos; install mate-backgrounds, "
            "plasma-workspace-wallpapers and python3-skimage (make deps does)"
        )
    if args.guard:  # only the guard photos: the sample set (and its manifest) stays as it is
        guard_photos(src, args.guard_dir, args.guard)
        print(f"make_samples: {args.guard} guard photos in {args.guard_dir}")
        return
    photos = os.path.join(args.out, "photos")
    calib = os.path.join(args.out, "calibration")
    os.makedirs(photos, exist_ok=True)
    os.makedirs(calib, exist_ok=True)
    rng = random.Random(20261121)
    manifest = []
    for i, (pkg, path) in enumerate(src):
        im = Image.open(path)
        im.load()
        im = im.convert("RGB")
        kind, ext = VARIANTS[i % len(VARIANTS)]
        longest = rng.choice([320, 480, 640, 720, 800, 960, 1200, 1600])
        out = os.path.join(photos, f"{i:02d}_{slug(path)}.{ext}")
        if not os.path.exists(out):
            write_variant(kind, fit(im, longest), out)
        cal = os.path.join(calib, f"{i:02d}_{slug(path)}.jpg")
        if not os.path.exists(cal):
            fit(im, 256).save(cal, "JPEG", quality=92)
        manifest.append({"file": os.path.relpath(out, args.out), "kind": kind, "source": path,
                         "package": pkg, "sha256": sha256(out)})

    if args.bench:
        bench = os.path.join(args.out, "bench")
        os.makedirs(bench, exist_ok=True)
        brng = random.Random(7)
        cache = {}
        for j in range(args.bench):
            out = os.path.join(bench, f"{j:05d}.jpg")
            if os.path.exists(out):
                continue
            pkg, path = src[j % len(src)]
            if path not in cache:
                im = Image.open(path)
                im.load()
                cache[path] = im.convert("RGB")
            im = cache[path]
            # a product-like crop: a random window, resized so the median longest side is ~720
            w, h = im.size
            cw, ch = int(w * brng.uniform(0.45, 0.9)), int(h * brng.uniform(0.45, 0.9))
            x, y = brng.randint(0, w - cw), brng.randint(0, h - ch)
            crop = im.crop((x, y, x + cw, y + ch))
            fit(crop, brng.choice([480, 600, 720, 720, 800, 960])).save(out, "JPEG", quality=brng.choice([80, 85, 90]))

    if args.real:
        real_photos(os.path.join(args.out, "real"), args.real)

    # Rewritten only when it changes: the model (make model) depends on it.
    path = os.path.join(args.out, "manifest.json")
    text = json.dumps({"photos": manifest}, indent=1)
    old = open(path).read() if os.path.exists(path) else None
    if text != old:
        with open(path, "w") as f:
            f.write(text)
    print(f"make_samples: {len(manifest)} photos in {photos}" + (f", {args.bench} bench JPEGs" if args.bench else "")
          + (f", {args.real} real photos of mixed sizes" if args.real else ""))


if __name__ == "__main__":
    main()
