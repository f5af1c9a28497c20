#!/usr/bin/env python3
"""Reads bench/gpu/run.sh's outputs and writes gpu_bench.json and a table: ours vs PyTorch (model
only, end to end), GPU vs CPU vectors (centered cosine, 10-NN overlap), the error paths."""
import argparse
import datetime
import json
import os
import platform
import subprocess

import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from drift_bench import compare  # noqa: E402  (centered cosine and 10-NN overlap, as the CPU drift bench)


def rows(path):
    return [json.loads(l) for l in open(path) if l.strip().startswith("{")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda:0")
    args = ap.parse_args()
    ours, theirs = rows(os.path.join(args.out, "harness.jsonl")), rows(os.path.join(args.out, "pytorch.jsonl"))
    gpu = ""
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    result = {"date": datetime.date.today().isoformat(), "machine": f"{gpu or 'no GPU'}, {os.cpu_count()} CPU cores, {platform.platform()}",
              "device": args.device, "error_paths": [], "model_only": [], "end_to_end": [], "vectors": {}}
    for r in ours:
        if r["kind"] == "error_path":
            result["error_paths"].append(r["r"])
    best = {}
    for r in theirs:
        if r["kind"] == "model_pytorch":
            best[r["r"]["batch"]] = max(best.get(r["r"]["batch"], 0), r["r"]["images_per_s"])
    for r in ours:
        if r["kind"] == "model_ours" and "images_per_s" in r["r"]:
            o = r["r"]
            same = next((t["r"]["images_per_s"] for t in theirs if t["kind"] == "model_pytorch"
                         and t["r"]["batch"] == o["batch"] and t["r"]["precision"] == o["precision"]), None)
            result["model_only"].append({**o, "pytorch_same_precision": same, "pytorch_best_at_batch": best.get(o["batch"]),
                                         "vs_pytorch_best": o["images_per_s"] / best[o["batch"]] if best.get(o["batch"]) else None})
    for r in ours:
        if r["kind"] == "e2e_ours" and "images_per_s" in r["r"]:
            o = r["r"]
            t = next((t["r"]["images_per_s"] for t in theirs if t["kind"] == "e2e_pytorch" and t["r"]["batch"] == o["batch"]), None)
            result["end_to_end"].append({**o, "pytorch_dataloader": t, "vs_pytorch": o["images_per_s"] / t if t else None,
                                         "target_images_per_s": 5000, "target_vs_pytorch": 1.8})
    cpu_path = os.path.join(args.out, "vectors_cpu.f32")
    if os.path.exists(cpu_path):
        cpu = np.fromfile(cpu_path, dtype=np.float32).reshape(-1, 2048)
        for p in ["fp32", "bf16"]:
            path = os.path.join(args.out, f"vectors_{p}_device.f32")
            if os.path.exists(path):
                result["vectors"][f"{args.device}_{p}_vs_cpu_fp32"] = compare(cpu, np.fromfile(path, dtype=np.float32).reshape(-1, 2048))
    with open(os.path.join(args.out, "gpu_bench.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    print(f"== bench/gpu/run.sh, {result['date']}, {result['machine']} ==")
    for e in result["error_paths"]:
        if "case" in e:
            print(f"error path  {e['case']:40s} {'ok' if e.get('ok') else 'WRONG'}  {e.get('message', '')[:90]}")
    for m in result["model_only"]:
        vs = f"{m['vs_pytorch_best']:.2f}x PyTorch's best" if m["vs_pytorch_best"] else ""
        print(f"model only  {m['device']} {m['precision']:5s} batch {m['batch']:4d}  {m['images_per_s']:9.1f} img/s  "
              f"(PyTorch same precision {m['pytorch_same_precision'] or 0:9.1f}, best {m['pytorch_best_at_batch'] or 0:9.1f}) {vs}")
    for e in result["end_to_end"]:
        print(f"end to end  batch {e['batch']:4d}, {e['decode_threads']} decode threads  {e['images_per_s']:9.1f} img/s  "
              f"model busy {e['model_busy']:.2f}  (DataLoader 16 PIL workers {e['pytorch_dataloader'] or 0:.1f}"
              + (f", {e['vs_pytorch']:.2f}x" if e["vs_pytorch"] else "") + ")")
    for k, v in result["vectors"].items():
        print(f"vectors     {k}: centered cosine min {v['centered_cosine_min']:.6f} median {v['centered_cosine_median']:.6f}, "
              f"10-NN overlap {v['knn10_overlap']:.3f}")


if __name__ == "__main__":
    main()
