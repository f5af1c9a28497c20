#!/usr/bin/python3
"""`make bench`: EwallML against the Python reference pipeline, in one run, same model file,
same thread count, batch 32. Prints a table of ratios and writes bench/out/bench.json.

Python side, each in its best CPU configuration on Debian's torch 1.13.1:
  - model only, fp32: torch.jit.load + torch.jit.freeze + channels-last input
  - model only, bf16: the same module cast to bfloat16, frozen, channels-last bf16 input
  - model only, bf16 autocast: torch.autocast('cpu', bfloat16) + channels-last
  - model only, eager fp32 NCHW (the platform's original)
  - decode + preprocess on one core: PIL open + convert('RGB') + Resize((224,224)) + ToTensor
    + Normalize, and the same with PIL's JPEG draft mode
Our side: ewall-bench (decode exact / fast JPEG on one thread; model fp32 / bf16).
Numbers on this 2-core machine vary 15-30% between runs: compare the ratios within one run.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
import ewall_reference as ref  # noqa: E402


def rate(n, fn, repeat=1):
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return n * repeat / (time.perf_counter() - t)


def python_side(model_path, files, threads, iterations):
    out = {}
    torch.set_num_threads(1)
    t = ref.transform("squash224")
    out["py_decode_pil_images_per_s"] = rate(len(files), lambda: [t(Image.open(f).convert("RGB")) for f in files])

    def draft(f):
        im = Image.open(f)
        im.draft("RGB", (224, 224))
        return t(im.convert("RGB"))

    out["py_decode_pil_draft_images_per_s"] = rate(len(files), lambda: [draft(f) for f in files])

    torch.set_num_threads(threads)
    x = torch.from_numpy(ref.preprocess(files[:32]))
    xcl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        eager = torch.jit.load(model_path).eval()
        out["py_model_eager_fp32_images_per_s"] = rate(32, lambda: eager(x), max(1, iterations // 3))
        frozen = torch.jit.freeze(torch.jit.load(model_path).eval())
        frozen(xcl)
        out["py_model_fp32_images_per_s"] = rate(32, lambda: frozen(xcl), iterations)
        b = torch.jit.freeze(torch.jit.load(model_path).eval().to(torch.bfloat16))
        xb = xcl.to(torch.bfloat16)
        b(xb)
        out["py_model_bf16_images_per_s"] = rate(32, lambda: b(xb), iterations)

        def autocast():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return eager(xcl)

        out["py_model_bf16_autocast_images_per_s"] = rate(32, autocast, iterations)
    out["py_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ewall-bench", required=True)
    ap.add_argument("--model", default="models/resnet50.pt")
    ap.add_argument("--images", default="data/samples/bench")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    files = sorted(os.path.join(args.images, f) for f in os.listdir(args.images))
    ours = json.loads(subprocess.run(
        [args.ewall_bench, "--model", args.model, "--images", args.images, "--threads", str(args.threads),
         "--iterations", str(args.iterations)], check=True, capture_output=True, text=True).stdout)
    py = python_side(args.model, files, args.threads, args.iterations)
    res = {**ours, **py}
    rows = [
        ("model fp32, batch 32", "model_fp32_images_per_s", "py_model_fp32_images_per_s", "frozen+CL"),
        ("model bf16, batch 32", "model_bf16_images_per_s", "py_model_bf16_images_per_s", "cast+frozen+CL"),
        ("model bf16 vs autocast", "model_bf16_images_per_s", "py_model_bf16_autocast_images_per_s", "autocast+CL"),
        ("model fp32 vs eager", "model_fp32_images_per_s", "py_model_eager_fp32_images_per_s", "eager NCHW"),
        ("decode+preprocess, 1 core", "decode_exact_images_per_s", "py_decode_pil_images_per_s", "PIL+tv"),
        ("  same, portable resize", "decode_exact_portable_resize_images_per_s", "py_decode_pil_images_per_s", "PIL+tv"),
        ("fast JPEG path, 1 core", "decode_fast_jpeg_images_per_s", "py_decode_pil_draft_images_per_s", "PIL draft"),
    ]
    print(f"\nEwallML vs Python reference: {len(files)} photos, {args.threads} threads, batch 32, "
          f"model {args.model} (same file both sides)\n")
    print(f"{'measure':28} {'EwallML img/s':>14} {'Python img/s':>13}  {'ratio':>6}  python config")
    for label, a, b, cfg in rows:
        if a in res and b in res:
            print(f"{label:28} {res[a]:14.1f} {res[b]:13.1f}  {res[a] / res[b]:5.2f}x  {cfg}")
    print(f"{'peak RSS MiB':28} {res['peak_rss_mib']:14.0f} {res['py_peak_rss_mib']:13.0f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "bench.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    print(f"\nwritten: {os.path.join(args.out, 'bench.json')}")


if __name__ == "__main__":
    main()
