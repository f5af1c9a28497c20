#!/usr/bin/python3
"""Distance-kernel benchmark: single-query latency of one IVF-Flat index, EwallML (the shim's
run-time dispatched kernels, `ewall-bench index latency`) against stock Python faiss (Debian's
1.7.3, the same library EwallML links, computing distances with its scalar fallback), in the
same run, on the same file and queries, one thread each, queries one at a time.

Data: seeded synthetic 2048-d vectors clustered like real embeddings (index_bench.synthetic).
The index: IVF<nlist>,Flat with nlist = 4 sqrt(n) (what rebuild-faiss-index's auto picks),
k-means trained by Python faiss on a sample, written once to bench/out (cached by parameters).
The ewall side also runs FAISS's own code in-process (kernel "faiss"), which separates the
kernel's gain from Python's call overhead. Every side must return the same ids.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))
from index_bench import synthetic  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


PY_LATENCY = r"""
import faiss, numpy as np, json, sys, time
path, qpath, nprobes, k = sys.argv[1], sys.argv[2], [int(x) for x in sys.argv[3].split(",")], int(sys.argv[4])
faiss.omp_set_num_threads(1)
index = faiss.read_index(path)
q = np.load(qpath)
runs = []
for nprobe in nprobes:
    index.nprobe = nprobe
    for i in range(min(len(q), 20)):
        index.search(q[i:i+1], k)
    ms, ids = [], []
    for i in range(len(q)):
        s = time.perf_counter(); _, I = index.search(q[i:i+1], k); ms.append((time.perf_counter() - s) * 1000)
        ids += I.ravel().tolist()
    runs.append({"nprobe": nprobe, "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
                 "mean_ms": float(np.mean(ms)), "ids": ids})
print(json.dumps({"runs": runs}))
"""


def build(n, d, nlist, seed, path, train_n, niter):
    import faiss
    x, _ = synthetic(n, d, clusters=max(50, n // 30), seed=seed)
    t = time.perf_counter()
    rng = np.random.default_rng(0)
    sample = x[np.sort(rng.choice(n, min(n, train_n), replace=False))]
    km = faiss.Kmeans(d, nlist, niter=niter, seed=1, max_points_per_centroid=10**9)
    km.train(sample)
    quantizer = faiss.IndexFlatL2(d)
    quantizer.add(km.centroids)
    index = faiss.IndexIVFFlat(quantizer, d, nlist)
    index.is_trained = True
    index.add(x)
    faiss.write_index(index, path)
    log(f"built IVF{nlist},Flat over {n} x {d} in {time.perf_counter() - t:.1f} s -> {path}")
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ewall-bench", required=True)
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--nprobe", default="4,16")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--train", type=int, default=100000, help="k-means sample size")
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    n, d = args.n, args.dim
    nlist = int(round(4 * n ** 0.5))
    cache = os.path.join(args.out, "faiss_kernel_bench")
    os.makedirs(cache, exist_ok=True)
    stem = os.path.join(cache, f"ivf{nlist}_n{n}_d{d}_t{args.train}_i{args.niter}")
    path, qpath = stem + ".faiss", stem + f".q{args.queries}.npy"
    if not os.path.exists(path) or not os.path.exists(qpath):
        x = build(n, d, nlist, n, path, args.train, args.niter)
        rows = np.arange(0, n, max(1, n // args.queries))[: args.queries]
        np.save(qpath, x[rows])
    import faiss
    ivf = faiss.read_index(path)  # kept alive while its lists are read
    imbalance = ivf.invlists.imbalance_factor()
    del ivf
    log(f"list imbalance factor {imbalance:.2f}")
    load = os.getloadavg()
    log(f"load average before: {load[0]:.2f}")
    ours = json.loads(subprocess.run([args.ewall_bench, "index", "latency", "--index", path, "--npy", qpath,
                                      "--nprobe", args.nprobe, "--kernels", "auto,faiss"],
                                     check=True, capture_output=True, cwd=ROOT).stdout)
    py = json.loads(subprocess.run([sys.executable, "-c", PY_LATENCY, path, qpath, args.nprobe, "10"],
                                   check=True, capture_output=True, cwd=ROOT).stdout)
    rows = []
    for pr in py["runs"]:
        fast = next(r for r in ours["runs"] if r["nprobe"] == pr["nprobe"] and r["kernel"] != "faiss")
        stock = next(r for r in ours["runs"] if r["nprobe"] == pr["nprobe"] and r["kernel"] == "faiss")
        same = sum(a == b for a, b in zip(fast["ids"], pr["ids"])) / len(pr["ids"])
        rows.append({
            "n": n, "dim": d, "factory": ours["factory"], "nprobe": pr["nprobe"], "queries": ours["queries"],
            "kernel": fast["kernel"], "blas_core": ours["blas_core"],
            "ours_p50_ms": fast["p50_ms"], "ours_p99_ms": fast["p99_ms"], "ours_mean_ms": fast["mean_ms"],
            "faiss_inproc_p50_ms": stock["p50_ms"], "py_p50_ms": pr["p50_ms"], "py_p99_ms": pr["p99_ms"],
            "py_mean_ms": pr["mean_ms"],
            "speedup_vs_py_p50": pr["p50_ms"] / fast["p50_ms"], "speedup_vs_py_mean": pr["mean_ms"] / fast["mean_ms"],
            "speedup_vs_inproc_faiss_p50": stock["p50_ms"] / fast["p50_ms"],
            "same_ids_as_py": same, "load_before": load[0], "imbalance": imbalance,
        })
        log(json.dumps(rows[-1]))
    with open(os.path.join(args.out, "faiss_kernel_bench.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\nsingle-query latency, IVF-Flat over {n} x {d} (list imbalance {imbalance:.2f}), k=10, one thread (load average {load[0]:.2f}; "
          f"kernel {rows[0]['kernel']}, OpenBLAS core {rows[0]['blas_core'] or '-'})")
    print("| index | nprobe | ours p50 / p99 ms | stock FAISS in-process p50 ms | Python faiss p50 / p99 ms "
          "| speedup vs Python (p50, mean) | same ids |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['factory']} | {r['nprobe']} | {r['ours_p50_ms']:.3f} / {r['ours_p99_ms']:.3f} | {r['faiss_inproc_p50_ms']:.3f} "
              f"| {r['py_p50_ms']:.3f} / {r['py_p99_ms']:.3f} | {r['speedup_vs_py_p50']:.1f}x, {r['speedup_vs_py_mean']:.1f}x "
              f"| {r['same_ids_as_py']:.4f} |")


if __name__ == "__main__":
    main()
