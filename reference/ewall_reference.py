#!/usr/bin/python3
"""The Python reference pipeline: PIL + torchvision + torch, exactly as the platform ran it,
with the corrections EwallML makes (so both sides must agree):

  - EXIF orientation applied (tag 0x0112 of the file's EXIF block), as a browser shows the
    image; an XMP packet's tiff:Orientation is ignored, with or without an EXIF one. Browsers
    apply the EXIF tag only (CSS image-orientation: from-image), and the catalogue is seen in
    browsers. ImageOps.exif_transpose is not used: Pillow's getexif() also reports XMP's
    tiff:Orientation when EXIF has none (Debian 12's Pillow 9.4 for a PNG's iTXt XMP, newer
    Pillow in more formats), which would rotate images no shopper sees rotated;
  - alpha composited onto white, out = (rgb*a + 255*(255-a) + 127) // 255
    (PIL's convert('RGB') exposes whatever lies under transparent pixels, often black);
  - 16-bit grayscale scaled to 8 bits by its high byte (PIL's convert clips it to white);
  - CMYK JPEGs: PIL's own Adobe-aware conversion.

Preprocessing modes (recorded with every vector by EwallML):
  squash224          Resize((224,224)) bilinear (PIL, antialiased), ToTensor, ImageNet Normalize
  resize256-crop224  Resize(256) shorter side, CenterCrop(224), ToTensor, ImageNet Normalize

Run with Debian's /usr/bin/python3 (python3-torch 1.13.1, python3-torchvision 0.14.1, python3-pil).

  reference/ewall_reference.py --mode squash224 --tensors out.npy FILE...
  reference/ewall_reference.py --model models/resnet50.pt --vectors out.npy FILE...
"""
import argparse
import sys
import warnings

import numpy as np
from PIL import Image

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
MODES = ("squash224", "resize256-crop224")


# EXIF orientation -> the transpose that makes the image upright (as ImageOps.exif_transpose).
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def exif_orientation(im):
    """EXIF tag 0x0112 from the file's own EXIF block (JPEG APP1, PNG eXIf, WebP EXIF), 1 when
    absent or unreadable. Not im.getexif(): that also reports XMP's tiff:Orientation."""
    raw = im.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data": treated as no orientation
            exif.load(raw)
    except Exception:  # malformed EXIF: no orientation, as the decoder reads it
        return 1
    return exif.get(0x0112, 1)


def load_rgb(path):
    """Open an image file as an upright 8-bit RGB PIL image (see the module doc)."""
    im = Image.open(path)
    method = TRANSPOSE.get(exif_orientation(im))
    if method is not None:
        im = im.transpose(method)
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im).astype(np.uint32)
        im = Image.fromarray((arr >> 8).astype(np.uint8), mode="L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        im.mode in ("P", "L", "RGB") and "transparency" in im.info
    )
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA")).astype(np.uint32)
        a = rgba[..., 3:4]
        rgb = (rgba[..., :3] * a + 255 * (255 - a) + 127) // 255
        return Image.fromarray(rgb.astype(np.uint8), mode="RGB")
    return im.convert("RGB")


def transform(mode):
    from torchvision import transforms as T

    norm = [T.ToTensor(), T.Normalize(MEAN, STD)]
    if mode == "squash224":
        return T.Compose([T.Resize((224, 224))] + norm)
    if mode == "resize256-crop224":
        return T.Compose([T.Resize(256), T.CenterCrop(224)] + norm)
    raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {MODES}")


def preprocess(paths, mode="squash224"):
    """float32 array [n, 3, 224, 224]."""
    import torch

    t = transform(mode)
    return torch.stack([t(load_rgb(p)) for p in paths]).numpy()


def embed(model_path, tensors, batch=32, precision="fp32", threads=2):
    """L2-normalised vectors [n, D] from preprocessed tensors, through the TorchScript file."""
    import torch

    torch.set_num_threads(threads)
    m = torch.jit.load(model_path, map_location="cpu").eval()
    outs = []
    with torch.inference_mode():
        for i in range(0, len(tensors), batch):
            x = torch.from_numpy(np.ascontiguousarray(tensors[i : i + batch]))
            if precision == "bf16":
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    y = m(x.contiguous(memory_format=torch.channels_last))
            else:
                y = m(x)
            outs.append(y.float())
    v = torch.cat(outs)
    v = v / v.norm(dim=1, keepdim=True)
    return v.numpy()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*")
    ap.add_argument("--list", help="a file with one image path per line")
    ap.add_argument("--mode", default="squash224", choices=MODES)
    ap.add_argument("--tensors", help="write preprocessed tensors [n,3,224,224] float32 .npy")
    ap.add_argument("--model", help="TorchScript file; with --vectors")
    ap.add_argument("--vectors", help="write L2-normalised vectors [n,D] float32 .npy")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    files = list(args.files)
    if args.list:
        with open(args.list) as f:
            files += [line.strip() for line in f if line.strip()]
    if not files:
        ap.error("no input files")
    x = preprocess(files, args.mode)
    if args.tensors:
        np.save(args.tensors, x)
    if args.vectors:
        if not args.model:
            ap.error("--vectors needs --model")
        np.save(args.vectors, embed(args.model, x, precision=args.precision, threads=args.threads))
    print(f"reference: {len(files)} images, mode {args.mode}", file=sys.stderr)


if __name__ == "__main__":
    main()
