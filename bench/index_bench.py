#!/usr/bin/python3
"""Index benchmark: EwallML (rebuild-faiss-index, ewall-bench index) against Python faiss on
the same vectors, in the same run, reported as ratios.

Data: seeded synthetic 2048-d vectors with the neighbour structure of real embeddings (a
mixture of tight clusters, each spread along a few directions, non-negative, L2-normalised)
at 10k and 100k, plus the real vectors of the demo store (data/ewall.sqlite, if present).
Categories follow the clusters (as real categories follow appearance); 2 in 3 are in stock.

For each index: build time and peak RSS (each side in its own process), index size,
recall@10 at the nprobe/efSearch rebuild-faiss-index chose (Python searches with the same),
single-query latency p50/p99 and batched throughput; for EwallML also similar products by id
with the default filters (p50/p99 and recall@10 against an exact filtered search).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def synthetic(n, d, clusters, seed, intrinsic=8, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.standard_normal((clusters, d), dtype=np.float32))
    labels = rng.integers(0, clusters, n)
    out = np.empty((n, d), dtype=np.float32)
    for c in range(clusters):
        idx = np.nonzero(labels == c)[0]
        if len(idx) == 0:
            continue
        basis = rng.standard_normal((intrinsic, d), dtype=np.float32)
        coeff = rng.standard_normal((len(idx), intrinsic), dtype=np.float32) * spread
        out[idx] = np.maximum(centres[c] + coeff @ basis, 0)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, labels




def load_store(ewall_bench, vectors, labels, npy, meta, db):
    """Writes `vectors` (as .npy) and their products (p0000000..., category cat<label % 10>, 2 in 3
    in stock, seeded) and loads both into the store `db` with `ewall-bench index load`."""
    np.save(npy, vectors)
    stock = np.random.default_rng(1).random(len(vectors)) < 2 / 3
    with open(meta, "w") as f:
        f.write("product_id\tcategory\tin_stock\n")
        for i in range(len(vectors)):
            f.write(f"p{i:07d}\tcat{labels[i] % 10}\t{int(stock[i])}\n")
    subprocess.run([ewall_bench, "index", "load", "--npy", npy, "--meta", meta, "--db", db], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)


def peak_rss_mib(cmd):
    """Peak RSS of one command, from GNU time."""
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, cwd=ROOT)
    if p.returncode not in (0, 1):
        log(p.stderr.decode()[-2000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    rss_kib = int(p.stderr.decode().strip().splitlines()[-1])
    return p.stdout.decode(), rss_kib / 1024


PY_BUILD = r"""
import faiss, numpy as np, json, sys, time, resource
npy, factory, nprobe, ef, train_n, nq, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
faiss.omp_set_num_threads(threads)
x = np.load(npy)
n, d = x.shape
t = time.perf_counter()
index = faiss.index_factory(d, factory)
if not index.is_trained:
    rng = np.random.default_rng(0)
    sample = x if train_n >= n else x[np.sort(rng.choice(n, train_n, replace=False))]
    index.train(sample)
index.add(x)
build = time.perf_counter() - t
ps = faiss.ParameterSpace()
if nprobe > 0: ps.set_index_parameter(index, "nprobe", nprobe)
if ef > 0: ps.set_index_parameter(index, "efSearch", ef)
step = max(1, n // nq)
rows = np.arange(0, n, step)[:nq]
q = x[rows]
lat = []
index.search(q[:1], 10)
for i in range(len(rows)):
    s = time.perf_counter(); index.search(q[i:i+1], 11); lat.append((time.perf_counter() - s) * 1000)
s = time.perf_counter(); _, I = index.search(q, 11); batched = len(rows) / (time.perf_counter() - s)
flat = faiss.IndexFlatL2(d); flat.add(x)
_, E = flat.search(q, 11)
rec = []
for i, r in enumerate(rows):
    truth = [j for j in E[i] if j != r][:10]
    got = set(j for j in I[i] if j != r)
    rec.append(len([j for j in truth if j in got]) / max(1, len(truth)))
print(json.dumps({"build_s": build, "single_p50_ms": float(np.percentile(lat, 50)), "single_p99_ms": float(np.percentile(lat, 99)),
                  "batched_qps": batched, "recall_at_10": float(np.mean(rec))}))
"""


def bench_case(args, name, vectors, labels, factory, tmp):
    n, d = vectors.shape
    npy = os.path.join(tmp, f"{name}.npy")
    meta = os.path.join(tmp, f"{name}.meta.tsv")
    db = f"sqlite:{tmp}/{name}.sqlite"
    if not os.path.exists(npy):
        log(f"{name}: loading {n} vectors into {db}")
        load_store(args.ewall_bench, vectors, labels, npy, meta, db)
    out_dir = os.path.join(tmp, f"{name}-{factory.replace(',', '_')}")
    log(f"{name}: rebuild-faiss-index --index {factory}")
    t = time.perf_counter()
    out, rss = peak_rss_mib([args.rebuild, "--db", db, "--out", out_dir, "--index", factory, "--json",
                             "--threads", str(args.threads), "--recall-queries", "1000"])
    wall = time.perf_counter() - t
    ours = json.loads(out)
    s = ours["seconds"]
    # The FAISS part (train + add) compares with Python's; the rest is reading the store.
    faiss_s = s.get("train", 0) + s.get("faiss_add", s.get("add", 0))
    build_s = s.get("read_sample", 0) + s.get("train", 0) + s.get("add", 0)
    log(f"{name}: ewall-bench index search")
    search = json.loads(subprocess.run([args.ewall_bench, "index", "search", "--db", db, "--index", out_dir, "--npy", npy,
                                        "--meta", meta, "--queries", str(args.queries)],
                                       check=True, capture_output=True, cwd=ROOT).stdout)
    nprobe = ours["search"].get("nprobe") or 0
    ef = ours["search"].get("ef_search") or 0
    py_factory = factory if factory != "auto" else ours["factory"].replace("IDMap2,", "")
    train_n = n
    if py_factory.startswith("IVF"):
        nlist = int(py_factory.split(",")[0][3:])
        train_n = min(n, nlist * 256, max(131072, nlist * 40))
    log(f"{name}: Python faiss {py_factory}")
    py_out, py_rss = peak_rss_mib([sys.executable, "-c", PY_BUILD, npy, py_factory, str(nprobe), str(ef), str(train_n),
                                   str(args.queries), str(args.threads)])
    py = json.loads(py_out)
    raw_mib = n * d * 4 / 2**20
    row = {
        "data": name, "n": n, "factory": ours["factory"], "nprobe": nprobe or None, "ef_search": ef or None,
        "ours_faiss_s": faiss_s, "ours_build_s": build_s, "ours_tune_s": s.get("tune", 0), "ours_total_s": wall, "py_build_s": py["build_s"],
        "ours_peak_rss_mib": rss, "py_peak_rss_mib": py_rss, "raw_vectors_mib": raw_mib,
        "index_mib": ours["index_bytes"] / 2**20,
        "ours_recall": (ours.get("recall") or {}).get("measured", 1.0), "py_recall": py["recall_at_10"],
        "ours_single_p50_ms": search["single_p50_ms"], "ours_single_p99_ms": search["single_p99_ms"],
        "py_single_p50_ms": py["single_p50_ms"], "py_single_p99_ms": py["single_p99_ms"],
        "ours_batched_qps": search["batched_qps"], "py_batched_qps": py["batched_qps"],
        "similar_p50_ms": search["similar_p50_ms"], "similar_p99_ms": search["similar_p99_ms"],
        "similar_recall": search["similar_recall_at_10"],
    }
    row["faiss_build_ratio"] = row["ours_faiss_s"] / max(1e-9, row["py_build_s"])
    row["build_ratio"] = row["ours_build_s"] / max(1e-9, row["py_build_s"])
    row["single_p50_ratio"] = row["ours_single_p50_ms"] / max(1e-9, row["py_single_p50_ms"])
    row["batched_ratio"] = row["ours_batched_qps"] / max(1e-9, row["py_batched_qps"])
    row["rss_over_raw"] = rss / raw_mib
    log(json.dumps(row))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ewall-bench", required=True)
    ap.add_argument("--rebuild", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--hnsw-at-10k", action="store_true", help="also HNSW32 at 10k (about 35 s a side)")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ewall-index-bench-") as tmp:
        demo = os.path.join(ROOT, "data", "ewall.sqlite")
        if os.path.exists(demo):
            exp = os.path.join(tmp, "demo-export.npy")
            subprocess.run([os.path.join(os.path.dirname(args.rebuild), "ewall"), "export", "--db", f"sqlite:{demo}",
                            "--npy", exp], check=True, capture_output=True, cwd=ROOT)
            v = np.load(exp)
            rows.append(bench_case(args, "demo", v, np.zeros(len(v), dtype=int), "auto", tmp))
        for n in [int(s) for s in args.sizes.split(",")]:
            v, labels = synthetic(n, 2048, clusters=max(50, n // 30), seed=n)
            name = f"synthetic{n // 1000}k"
            rows.append(bench_case(args, name, v, labels, "Flat", tmp))
            rows.append(bench_case(args, name, v, labels, "auto", tmp))
            if n == 10000 and args.hnsw_at_10k:
                rows.append(bench_case(args, name, v, labels, "HNSW32", tmp))
    with open(os.path.join(args.out, "index_bench.json"), "w") as f:
        json.dump(rows, f, indent=1)
    print("\n| data | index | FAISS train+add s ours / py (ratio) | ours incl. reading the store | peak RSS MiB ours / py (x raw) | recall@10 ours / py "
          "| 1 query p50 ms ours / py | batched q/s ours / py | similar p50 / p99 ms (recall) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        knob = f" nprobe {r['nprobe']}" if r["nprobe"] else (f" ef {r['ef_search']}" if r["ef_search"] else "")
        print(f"| {r['data']} ({r['n']}) | {r['factory']}{knob} | {r['ours_faiss_s']:.2f} / {r['py_build_s']:.2f} "
              f"({r['faiss_build_ratio']:.2f}x) | {r['ours_build_s']:.2f} s ({r['build_ratio']:.2f}x) | {r['ours_peak_rss_mib']:.0f} / {r['py_peak_rss_mib']:.0f} ({r['rss_over_raw']:.2f}x) "
              f"| {r['ours_recall']:.3f} / {r['py_recall']:.3f} | {r['ours_single_p50_ms']:.2f} / {r['py_single_p50_ms']:.2f} "
              f"| {r['ours_batched_qps']:.0f} / {r['py_batched_qps']:.0f} | {r['similar_p50_ms']:.2f} / {r['similar_p99_ms']:.2f} "
              f"({r['similar_recall']:.3f}) |")


if __name__ == "__main__":
    main()
