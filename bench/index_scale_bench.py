#!/usr/bin/python3
"""Index kinds at scale (`make bench` at 100,000 products, `make bench-1m` at 1,000,000): for
each kind rebuild-faiss-index can choose (IVF-Flat, and IVF-SQ8 and IVF-PQ with exact
re-ranking, forced by --max-memory), on the same seeded clustered 2048-d vectors:

- build time and peak RSS (rebuild-faiss-index, from the store), index bytes in memory and
  on disk (the exact vectors file of compressed kinds on disk only; nearest_lists.bin in both,
  since similar-by-id keeps it resident), recall@10 as the build measured it;
- ewall-serve similar-by-id under wrk (64 connections, random ids, default filters): req/s,
  p50/p99, non-2xx, server RSS at rest against the index's own bytes;
- recall@10 of the server's answers under the default filters (same category, in stock, self
  excluded) against an exact filtered search in numpy over the same vectors;
- Python faiss building the automatic choice from the same vectors (train + add), its time and
  peak RSS, in the same run.

It writes bench/out/index_scale_<n>.json and prints a table, plus the per-product figures the
README's 10^7 column is computed from (build seconds and bytes per product).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from index_bench import synthetic  # noqa: E402
from serve_bench import SIMILAR_LUA, Server, rss_mib, wrk  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


PY_BUILD = r"""
import faiss, numpy as np, json, sys, time, resource
npy, factory, train_n, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
faiss.omp_set_num_threads(threads)
x = np.load(npy, mmap_mode="r")
n, d = x.shape
t = time.perf_counter()
index = faiss.index_factory(d, factory)
rng = np.random.default_rng(0)
rows = np.arange(n) if train_n >= n else np.sort(rng.choice(n, train_n, replace=False))
index.train(np.ascontiguousarray(x[rows]))
for s in range(0, n, 65536):
    index.add(np.ascontiguousarray(x[s:s + 65536]))
build = time.perf_counter() - t
print(json.dumps({"build_s": build, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def timed(cmd):
    """Runs cmd under GNU time: (stdout, peak RSS MiB, wall seconds)."""
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    if p.returncode not in (0, 1):
        log(p.stderr[-3000:])
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return p.stdout, int(p.stderr.strip().splitlines()[-1]) / 1024, wall


def filtered_recall(base, x, labels, stock, queries):
    """recall@10 of the server's similar-by-id answers (default filters, min_similarity 0) against
    an exact search over the products the filters allow (one pass over each category's rows, all
    of its queries at once): (mean, standard error of the mean over the queries)."""
    truth = {}
    for c in sorted(set(int(labels[q] % 10) for q in queries)):
        allowed = np.nonzero((labels % 10 == c) & stock)[0]
        rows = np.asarray(x[allowed], dtype=np.float32)
        norms = (rows * rows).sum(axis=1)
        mine = [q for q in queries if labels[q] % 10 == c]
        qv = np.asarray(x[mine], dtype=np.float32)
        dist = norms[:, None] - 2 * (rows @ qv.T) + (qv * qv).sum(axis=1)[None, :]
        for j, q in enumerate(mine):
            d = dist[:, j]
            d[allowed == q] = np.inf
            truth[q] = set(allowed[np.argsort(d, kind="stable")[:10]].tolist())
        del rows, dist
    per_query = []
    for q in queries:
        with urllib.request.urlopen(f"{base}/api/recommendations/similar/p{q:07d}?min_similarity=0", timeout=60) as r:
            got = [int(h["product_id"][1:]) for h in json.loads(r.read())["results"]]
        per_query.append(len(truth[q] & set(got)) / max(1, len(truth[q])))
    r = np.asarray(per_query)
    return float(r.mean()), float(r.std(ddof=1) / np.sqrt(len(r))) if len(r) > 1 else 0.0


def load_new(args, tmp, npy, db, n, d, stock):
    """Seeded clustered vectors into v.npy (labels.npy beside) and the store; returns them mapped."""
    log(f"{n} synthetic vectors")
    x, labels = synthetic(n, d, clusters=max(50, n // 100), seed=n + 1)
    t = time.perf_counter()
    np.save(npy, x)
    np.save(os.path.join(tmp, "labels.npy"), labels)
    # The store, 100,000 products at a time (ewall-bench index load holds a whole file twice):
    # product p<row>, category cat<cluster % 10>, 2 in 3 in stock (seeded), as load_store does.
    for start in range(0, n, 100_000):
        end = min(n, start + 100_000)
        cn, cm = os.path.join(tmp, "chunk.npy"), os.path.join(tmp, "chunk.tsv")
        np.save(cn, x[start:end])
        with open(cm, "w") as f:
            f.write("product_id\tcategory\tin_stock\n")
            for i in range(start, end):
                f.write(f"p{i:07d}\tcat{labels[i] % 10}\t{int(stock[i])}\n")
        subprocess.run([args.ewall_bench, "index", "load", "--npy", cn, "--meta", cm, "--db", db], check=True,
                       stdout=subprocess.DEVNULL, cwd=ROOT)
    os.remove(cn)
    log(f"store loaded in {time.perf_counter() - t:.0f} s")
    del x
    return np.load(npy, mmap_mode="r"), labels


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rebuild", required=True)
    ap.add_argument("--serve", required=True)
    ap.add_argument("--ewall-bench", required=True)
    ap.add_argument("--model", default="models/resnet50.pt")
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--kinds", default="auto,sq8,pq64")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--recall-queries", type=int, default=1000,
                    help="queries for the served recall (1,000: about +-0.006 of sampling noise at 0.95)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-python", action="store_true", help="skip Python faiss's build of the automatic choice")
    ap.add_argument("--tmp", default=None, help="work folder (default: a temporary one; needs ~6 x n x 8 KiB)")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--keep", action="store_true",
                    help="keep the work folder (store, index folders, ids) for profiling afterwards; prints its path")
    ap.add_argument("--reuse", default=None,
                    help="a work folder an earlier --keep run printed: its vectors, labels and store are used "
                         "again (same --count), and only the index folders are rebuilt; implies --keep")
    ap.add_argument("--serve-only", action="store_true",
                    help="with --reuse: serve the index folders kept there as they are, without rebuilding "
                         "(serving levers compared on one index)")
    args = ap.parse_args()
    if args.serve_only and not args.reuse:
        raise SystemExit("--serve-only needs --reuse")
    if args.reuse:
        args.keep = True
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk; make deps does)")
    os.makedirs(args.out, exist_ok=True)
    n, d = args.count, 2048
    tmp = args.reuse or tempfile.mkdtemp(prefix="ewall-scale-", dir=args.tmp)
    rows = []
    try:
        npy, db = os.path.join(tmp, "v.npy"), f"sqlite:{tmp}/store.sqlite"
        stock = np.random.default_rng(1).random(n) < 2 / 3
        if args.reuse:
            x, labels = np.load(npy, mmap_mode="r"), np.load(os.path.join(tmp, "labels.npy"))
            if x.shape != (n, d):
                raise SystemExit(f"{tmp} holds {x.shape[0]} vectors, not --count {n}")
            log(f"reusing {tmp}: {n} vectors and their store")
        else:
            x, labels = load_new(args, tmp, npy, db, n, d, stock)
        rng = np.random.default_rng(5)
        recall_queries = rng.choice(np.nonzero(stock)[0], args.recall_queries, replace=False)
        ids = [f"p{i:07d}" for i in rng.choice(n, min(n, 20_000), replace=False)]
        idfile, script = os.path.join(tmp, "ids.txt"), os.path.join(tmp, "similar.lua")
        open(idfile, "w").write("\n".join(ids) + "\n")
        open(script, "w").write(SIMILAR_LUA)
        flat_bytes, sq_bytes = n * (d * 4 + 8), n * (d + 8)
        budgets = {"auto": None, "sq8": flat_bytes // 2, "pq64": int(n * (64 + 8) * 1.05)}
        for kind in args.kinds.split(","):
            folder = os.path.join(tmp, f"faiss-{kind}")
            if args.serve_only:
                m = json.load(open(os.path.join(folder, "manifest.json")))
                s = {"factory": m["factory"], "search": m["search"], "seconds": {}, "recall": m.get("recall")}
                peak, wall = 0, 0
                log(f"{kind}: serving the kept {m['factory']} as it is")
            else:
                shutil.rmtree(folder, ignore_errors=True)
                cmd = [args.rebuild, "--db", db, "--out", folder, "--json", "--threads", str(args.threads)]
                if budgets[kind]:
                    cmd += ["--max-memory", str(budgets[kind])]
                log(f"{kind}: rebuild-faiss-index {' '.join(cmd[5:])}")
                out, peak, wall = timed(cmd)
                s = json.loads(out)
            files = json.load(open(os.path.join(folder, "manifest.json")))["files"]
            index_bytes = files["index"]["bytes"]
            vec_bytes = files.get("vectors", {}).get("bytes", 0)
            # Memory-mapped, but resident once similar-by-id has touched most products.
            near_bytes = files.get("nearest_lists", {}).get("bytes", 0)
            log(f"{kind}: {s['factory']} in {wall:.0f} s; ewall-serve + wrk")
            srv = Server(args.serve, db, folder, args.model)
            try:
                rest = rss_mib(srv.p.pid, "VmRSS")
                wrk(srv.base, script, [idfile], seconds=3)
                res = wrk(srv.base, script, [idfile], seconds=args.seconds)
                res["rss_peak_mib"] = rss_mib(srv.p.pid, "VmHWM")
                res["rss_after_mib"] = rss_mib(srv.p.pid, "VmRSS")
                anon = rss_mib(srv.p.pid, "RssAnon")
                log(f"{kind}: recall of the server's answers, {len(recall_queries)} queries")
                rec, rec_se = filtered_recall(srv.base, x, labels, stock, recall_queries)
            finally:
                srv.stop()
            row = {
                "kind": kind, "n": n, "factory": s["factory"], "nprobe": s["search"].get("nprobe"),
                "refine_factor": (json.load(open(os.path.join(folder, "manifest.json"))).get("refine") or {}).get("factor"),
                "build_wall_s": wall, "build_seconds": s["seconds"], "build_peak_rss_mib": peak,
                "index_mib": index_bytes / 2**20, "vectors_file_mib": vec_bytes / 2**20,
                "nearest_lists_mib": near_bytes / 2**20,
                "ram_bytes_per_product": (index_bytes + near_bytes) / n,
                "disk_bytes_per_product": (index_bytes + vec_bytes + near_bytes) / n,
                "build_recall": (s.get("recall") or {}).get("measured"),
                "serve_rss_rest_mib": rest, "serve_rss_anon_after_mib": anon, "serve_rss_over_index": rest / (index_bytes / 2**20),
                "similar_recall_default_filters": rec, "similar_recall_standard_error": rec_se,
                "recall_queries": len(recall_queries), **{f"serve_{k}": v for k, v in res.items()},
            }
            row["manifest_search"] = json.load(open(os.path.join(folder, "manifest.json")))["search"]
            rows.append(row)
            log(json.dumps(row))
            if not args.keep:
                shutil.rmtree(folder, ignore_errors=True)
        auto = next((r for r in rows if r["kind"] == "auto"), None)
        if auto and not args.no_python and not args.serve_only:
            factory = auto["factory"].replace("IDMap2,", "")
            nlist = int(factory.split(",")[0][3:]) if factory.startswith("IVF") else 0
            train_n = min(n, nlist * 256, max(131072, nlist * 40)) if nlist else n
            log(f"Python faiss: {factory}")
            out, _, _ = timed(["/usr/bin/python3", "-c", PY_BUILD, npy, factory, str(train_n), str(args.threads)])
            py = json.loads(out)
            ours = auto["build_seconds"].get("train", 0) + auto["build_seconds"].get("faiss_add", 0)
            auto.update({"python_build_s": py["build_s"], "python_peak_rss_mib": py["peak_rss_mib"],
                         "ours_train_add_s": ours, "train_add_ratio": ours / py["build_s"]})
    finally:
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    path = os.path.join(args.out, f"index_scale_{n}.json")
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"\n== index kinds at {n:,} products (2048-d, clustered; wrk 64 connections, default filters) ==")
    print("| index | RAM B/product | disk B/product | build s (peak RSS MiB) | build recall | served recall | req/s | p50 / p99 ms | non-2xx | server RSS / index |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ms = r.get("manifest_search") or {}
        hop = ms.get("second_hop")
        filt = (f", filtered {ms['filtered_nprobe']}" + (f" + hop {hop['top']}x{hop['lists']}" if hop else "")
                if ms.get("filtered_nprobe") else "")
        print(f"| {r['factory']} nprobe {r['nprobe']}{filt}{' refine x' + str(r['refine_factor']) if r['refine_factor'] else ''} "
              f"| {r['ram_bytes_per_product']:.0f} | {r['disk_bytes_per_product']:.0f} | {r['build_wall_s']:.0f} ({r['build_peak_rss_mib']:.0f}) "
              f"| {r['build_recall'] or 1:.3f} | {r['similar_recall_default_filters']:.3f} +- {r['similar_recall_standard_error']:.3f} "
              f"| {r['serve_requests_per_s']:.0f} "
              f"| {r['serve_p50_ms']:.1f} / {r['serve_p99_ms']:.1f} | {r['serve_non_2xx']} | {r['serve_rss_over_index']:.2f}x |")
    if auto and "python_build_s" in auto:
        print(f"Python faiss building {auto['factory']}: {auto['python_build_s']:.0f} s, peak RSS {auto['python_peak_rss_mib']:.0f} MiB; "
              f"ours (train + add) {auto['ours_train_add_s']:.0f} s -> {auto['train_add_ratio']:.2f}x; "
              f"ours whole build incl. reading the store {auto['build_wall_s']:.0f} s, peak RSS {auto['build_peak_rss_mib']:.0f} MiB")
    print(f"written {path}")


if __name__ == "__main__":
    main()
