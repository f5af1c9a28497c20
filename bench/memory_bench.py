#!/usr/bin/python3
"""`make bench`: memory over 5,000 images (issue 17, item 6). Runs `ewall-bench memory`:
ImageEmbedder.embed(files:) over --count images (the real photos of mixed sizes reused in
turn, up to 4,000 px), 256 per call, the process's current RSS after every call. Growth = the
maximum RSS over images 500-1500 (after warm-up) against the maximum over the last 1,000
images; target <= 10%. Writes bench/out/memory.json (with every sample).
"""
import argparse
import json
import os
import subprocess
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ewall-bench", default=".build/release/ewall-bench")
    ap.add_argument("--model", default="models/resnet50.pt")
    ap.add_argument("--images", default="data/samples/real")
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--precision", default="auto", help="auto: the faster precision, to keep the run short")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    r = subprocess.run([args.ewall_bench, "memory", "--model", args.model, "--images", args.images,
                        "--count", str(args.count), "--precision", args.precision], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"ewall-bench memory failed: {r.stderr[-2000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\nMemory over {res['images']} images ({res['precision']}, {res['images_per_s']:.1f} img/s, "
          f"{res['failed']} failed): max RSS images 500-1500 {res['rss_max_early_mib']:.0f} MiB, "
          f"last 1000 {res['rss_max_late_mib']:.0f} MiB, growth {100 * res['growth']:+.1f}% (target <= +10%)")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "memory.json"), "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
