#!/usr/bin/python3
"""`make bench`: how far the faster paths move vectors, on real photos of mixed sizes
(data/samples/real, `make_samples.py --real N`). Writes bench/out/drift.json.

Runs `ewall embed --npy` over the same photos three ways, same model file:
  exact fp32 (the reference path), fast JPEG path fp32 (`--fast-jpeg`: TurboJPEG DCT scaling
  of JPEGs at least twice the resize target), exact bf16 (`--precision bf16`, where the CPU
  runs bfloat16 natively).
For each variant against exact fp32: centered cosine (both sets minus the exact set's mean
vector, so the large shared component of a random-init model does not hide differences),
its median and minimum, and the 10-NN overlap (each photo's 10 nearest neighbours among the
others, by cosine, in both sets; mean fraction shared). The targets (issue 17): the fast path
becomes the default only at centered cosine >= 0.999 (median) and 10-NN overlap >= 0.95;
bf16 becomes the default only at centered cosine >= 0.999.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np

K = 10


def embed(ewall, model, files, extra, threads, may_fail=False):
    out = f"/tmp/ewall-drift-{os.getpid()}-{'_'.join(extra) or 'exact'}.npy"
    r = subprocess.run([ewall, "embed", "--model", model, "--threads", str(threads), "--npy", out, *extra, *files],
                       capture_output=True, text=True)
    if r.returncode != 0 and may_fail:
        return None, r.stderr.strip()
    if r.returncode != 0:
        sys.exit(f"ewall embed {' '.join(extra)} failed: {r.stderr[-2000:]}")
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    v = np.load(out)
    os.unlink(out)
    failed = [x["path"] for x in rows if not x["ok"]]
    if failed:
        sys.exit(f"ewall embed {' '.join(extra)}: {len(failed)} photos failed: {failed[:3]}")
    return v.astype(np.float64), r.stderr.strip().splitlines()[-1]


def knn(v):
    n = v / np.linalg.norm(v, axis=1, keepdims=True)
    s = n @ n.T
    np.fill_diagonal(s, -np.inf)
    return np.argsort(-s, axis=1)[:, :K]


def compare(ref, other):
    mean = ref.mean(axis=0)
    a, b = ref - mean, other - mean
    cc = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    raw = (ref * other).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(other, axis=1))
    ka, kb = knn(ref), knn(other)
    overlap = np.mean([len(set(x) & set(y)) / K for x, y in zip(ka, kb)])
    return {"centered_cosine_median": float(np.median(cc)), "centered_cosine_min": float(cc.min()),
            "centered_cosine_p05": float(np.percentile(cc, 5)), "raw_cosine_min": float(raw.min()),
            "knn10_overlap": float(overlap)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ewall", default=".build/release/ewall")
    ap.add_argument("--model", default="models/resnet50.pt")
    ap.add_argument("--images", default="data/samples/real")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    files = sorted(os.path.join(args.images, f) for f in os.listdir(args.images))
    from PIL import Image
    big = sum(1 for f in files if f.endswith(".jpg") and min(Image.open(f).size) >= 448)
    ref, _ = embed(args.ewall, args.model, files, [], args.threads)
    res = {"photos": len(files), "jpegs_at_least_448_px": big}
    fast, _ = embed(args.ewall, args.model, files, ["--fast-jpeg"], args.threads)
    res["fast_jpeg"] = compare(ref, fast)
    b, why = embed(args.ewall, args.model, files, ["--precision", "bf16"], args.threads, may_fail=True)
    if b is not None:
        res["bf16"] = compare(ref, b)
    else:
        print(f"bf16 not measured: {why[-300:]}")
    print(f"\nDrift against the exact fp32 path: {len(files)} real photos ({big} JPEGs >= 448 px on both sides, "
          f"which the fast path scales)\n")
    print(f"{'variant':12} {'centered cos median':>20} {'p5':>8} {'min':>8} {'10-NN overlap':>14}  target")
    for name, target in [("fast_jpeg", ">= 0.999 and >= 0.95"), ("bf16", ">= 0.999")]:
        if name in res:
            d = res[name]
            print(f"{name:12} {d['centered_cosine_median']:20.5f} {d['centered_cosine_p05']:8.5f} "
                  f"{d['centered_cosine_min']:8.5f} {d['knn10_overlap']:14.3f}  {target}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "drift.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    print(f"\nwritten: {os.path.join(args.out, 'drift.json')}")


if __name__ == "__main__":
    main()
