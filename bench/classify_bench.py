#!/usr/bin/python3
"""Classifier benchmark: EwallML's CategoryClassifier (ewall-bench classify, ewall classify /
calibrate) against numpy on the same vectors, in the same run, reported as ratios.

Data: seeded synthetic 2048-d vectors. Each of 10 categories is a random direction; its 10
reference products lie close to it, and the products to classify lie at a random distance
from their category's direction, so their best mean cosine spreads across the 0.35 threshold
(as real ones do), and the embedding step accepts some and passes the rest on.

Measured:
- products classified per second, 100,000 products x 10 categories x 10 references (the
  platform's mean-refs method, embedding step only since the synthetic products have no
  titles): ours (one BLAS sgemm per 2,048 products), numpy batched (P @ R.T, the fastest
  Python), and numpy one product at a time (how the platform's service scores a product), and
  whether our answers agree with numpy's;
- calibration of 10,000 labelled products (leave-one-out, 17 thresholds, confusion);
- end to end from SQLite: `ewall classify --all` over the 100k (dry run) and `ewall calibrate`
  over the 10k, including reading the store.
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
D = 2048


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def write_npy(path, a):
    np.save(path, np.ascontiguousarray(a, dtype=np.float32))


def make_data(n_products, n_labelled, categories, refs, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((categories, D), dtype=np.float32)
    ref_vecs = np.repeat(centres, refs, axis=0) * 1.5 + rng.standard_normal((categories * refs, D), dtype=np.float32)
    ref_labels = np.repeat(np.arange(categories), refs)
    truth = rng.integers(0, categories, n_products)
    strength = rng.uniform(0, 1.5, n_products).astype(np.float32)
    products = centres[truth] * strength[:, None] + rng.standard_normal((n_products, D), dtype=np.float32)
    lab_truth = rng.integers(0, categories, n_labelled)
    lab_strength = rng.uniform(0, 1.5, n_labelled).astype(np.float32)
    labelled = centres[lab_truth] * lab_strength[:, None] + rng.standard_normal((n_labelled, D), dtype=np.float32)
    norm = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    return norm(ref_vecs), ref_labels, norm(products), truth, norm(labelled), lab_truth


def numpy_batched(products, refs, ref_labels, categories, threshold):
    """The fastest Python: one matrix product, then the per-category mean."""
    out_cat = np.empty(len(products), dtype=np.int64)
    out_score = np.empty(len(products), dtype=np.float32)
    per = len(refs) // categories
    for start in range(0, len(products), 8192):
        s = products[start:start + 8192] @ refs.T
        means = s.reshape(len(s), categories, per).mean(axis=2)
        out_cat[start:start + len(s)] = means.argmax(axis=1)
        out_score[start:start + len(s)] = means.max(axis=1)
    return out_cat, out_score


def numpy_per_product(products, refs, ref_labels, categories, threshold):
    """One product at a time, one category at a time: how a service scores a request."""
    groups = [refs[ref_labels == c] for c in range(categories)]
    answers = []
    for v in products:
        scores = [float(np.mean(g @ v)) for g in groups]
        best = int(np.argmax(scores))
        answers.append(best if scores[best] >= threshold else -1)
    return answers


def run_json(cmd, env=None):
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if p.returncode not in (0, 1):
        log(p.stderr)
        raise SystemExit(f"{cmd[0]} failed ({p.returncode})")
    return p.stdout, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ewall-bench", default=".build/release/ewall-bench")
    ap.add_argument("--ewall", default=".build/release/ewall")
    ap.add_argument("--products", type=int, default=100_000)
    ap.add_argument("--labelled", type=int, default=10_000)
    ap.add_argument("--per-product-sample", type=int, default=5_000)
    ap.add_argument("--no-store", action="store_true", help="skip the end-to-end runs through SQLite")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    categories, per, threshold = 10, 10, 0.35
    tmp = tempfile.mkdtemp(prefix="ewall-classify-bench-")
    log(f"data: {args.products} products, {args.labelled} labelled, {categories} categories x {per} references, {D}-d ({tmp})")
    refs, ref_labels, products, truth, labelled, lab_truth = make_data(args.products, args.labelled, categories, per, seed=0)
    names = [f"cat{c}" for c in range(categories)]
    write_npy(f"{tmp}/refs.npy", refs)
    write_npy(f"{tmp}/products.npy", products)
    write_npy(f"{tmp}/labelled.npy", labelled)
    with open(f"{tmp}/ref_labels.txt", "w") as f:
        f.write("\n".join(names[c] for c in ref_labels) + "\n")
    with open(f"{tmp}/labels.txt", "w") as f:
        f.write("\n".join(names[c] for c in lab_truth) + "\n")

    result = {"products": args.products, "categories": categories, "references_per_category": per}

    # numpy, batched (best of 3) and one at a time (a sample)
    best = None
    for _ in range(3):
        t = time.perf_counter()
        py_cat, py_score = numpy_batched(products, refs, ref_labels, categories, threshold)
        s = time.perf_counter() - t
        best = s if best is None else min(best, s)
    result["numpy_batched_per_s"] = args.products / best
    sample = products[:args.per_product_sample]
    t = time.perf_counter()
    per_product = numpy_per_product(sample, refs, ref_labels, categories, threshold)
    result["numpy_per_product_per_s"] = len(sample) / (time.perf_counter() - t)

    # ours (best of 3 runs of the whole 100k)
    runs = []
    for _ in range(3):
        out, _ = run_json([args.ewall_bench, "classify", "score", "--refs", f"{tmp}/refs.npy", "--ref-labels",
                           f"{tmp}/ref_labels.txt", "--products", f"{tmp}/products.npy", "--out", f"{tmp}/answers.txt"])
        runs.append(json.loads(out))
    ours = max(runs, key=lambda r: r["per_second"])
    result["ours_per_s"] = ours["per_second"]
    result["ours_runs_per_s"] = [r["per_second"] for r in runs]
    result["ours_peak_rss_mib"] = ours["peak_rss_mib"]

    # agreement with numpy (answers within 1e-5 of the threshold are not compared)
    with open(f"{tmp}/answers.txt") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    py_answer = [names[c] if sc >= threshold else "generic" for c, sc in zip(py_cat, py_score)]
    compared = disagree = 0
    max_diff = 0.0
    for (cat, score), pa, ps in zip(rows, py_answer, py_score):
        max_diff = max(max_diff, abs(float(score) - float(ps)))
        if abs(float(ps) - threshold) < 1e-5:
            continue
        compared += 1
        disagree += cat != pa
    result.update(agreement_compared=compared, agreement_disagree=disagree, max_score_diff=max_diff,
                  accepted_share=float(np.mean(py_score >= threshold)))
    per_product_agree = sum((names[a] if a >= 0 else "generic") == py_answer[i] for i, a in enumerate(per_product))
    result["numpy_per_product_agrees"] = per_product_agree / len(per_product)

    out, _ = run_json([args.ewall_bench, "classify", "calibrate", "--products", f"{tmp}/labelled.npy", "--labels", f"{tmp}/labels.txt"])
    result["calibration"] = json.loads(out)

    if not args.no_store:
        # End to end through SQLite: the 100 references filed by a person, the 100k generic.
        db = f"sqlite:{tmp}/store.sqlite"
        allv = np.concatenate([refs, products])
        write_npy(f"{tmp}/all.npy", allv)
        with open(f"{tmp}/meta.tsv", "w") as f:
            f.write("product_id\tcategory\tin_stock\n")
            for i in range(len(refs)):
                f.write(f"r{i:07d}\t{names[ref_labels[i]]}\t1\n")
            for i in range(len(products)):
                f.write(f"p{i:07d}\tgeneric\t1\n")
        t = time.perf_counter()
        run_json([args.ewall_bench, "index", "load", "--npy", f"{tmp}/all.npy", "--meta", f"{tmp}/meta.tsv", "--db", db,
                  "--model-id", "synthetic@classify"])
        log(f"loaded {len(allv)} vectors into SQLite in {time.perf_counter() - t:.1f} s")
        env = dict(os.environ, EWALL_MODEL="/nonexistent.pt")
        out, wall = run_json([args.ewall, "classify", "--db", db, "--json"], env=env)
        summary = json.loads(out.strip().split("\n")[-1])["summary"]
        result["store_classify"] = {"products": summary["products"], "wall_s": wall, "per_s": summary["products"] / wall,
                                    "run_s": summary["seconds"]}
        # Calibration through SQLite: the 10k labelled products.
        db2 = f"sqlite:{tmp}/labelled.sqlite"
        with open(f"{tmp}/meta2.tsv", "w") as f:
            f.write("product_id\tcategory\tin_stock\n")
            for i in range(len(labelled)):
                f.write(f"l{i:07d}\t{names[lab_truth[i]]}\t1\n")
        run_json([args.ewall_bench, "index", "load", "--npy", f"{tmp}/labelled.npy", "--meta", f"{tmp}/meta2.tsv", "--db", db2,
                  "--model-id", "synthetic@classify"])
        out, wall = run_json([args.ewall, "calibrate", "--db", db2, "--json"], env=env)
        result["store_calibrate"] = {"products": json.loads(out)["products"], "wall_s": wall}

    log(json.dumps(result, indent=1))
    with open(os.path.join(args.out, "classify_bench.json"), "w") as f:
        json.dump(result, f, indent=1)
    r = result
    print(f"\nclassifier, {r['products']} products x {categories} categories x {per} references (mean-refs):")
    print(f"  ours {r['ours_per_s']:,.0f} products/s (runs: {', '.join(f'{x:,.0f}' for x in r['ours_runs_per_s'])}; target >= 50,000)")
    print(f"  numpy batched {r['numpy_batched_per_s']:,.0f}/s -> ours / numpy = {r['ours_per_s'] / r['numpy_batched_per_s']:.2f}x")
    print(f"  numpy one product at a time {r['numpy_per_product_per_s']:,.0f}/s -> {r['ours_per_s'] / r['numpy_per_product_per_s']:.0f}x")
    print(f"  agreement with numpy: {r['agreement_compared'] - r['agreement_disagree']} of {r['agreement_compared']} answers, "
          f"max score difference {r['max_score_diff']:.2e}; the embedding step accepts {r['accepted_share']:.1%}")
    c = r["calibration"]
    print(f"  calibration, {c['products']} labelled (leave-one-out): {c['seconds']:.2f} s including the reference choice "
          f"({c['calibration_seconds']:.2f} s scoring and sweeping)")
    if "store_classify" in r:
        s = r["store_classify"]
        print(f"  ewall classify --all from SQLite: {s['products']} in {s['wall_s']:.1f} s = {s['per_s']:,.0f}/s (process wall time)")
        print(f"  ewall calibrate from SQLite: {r['store_calibrate']['products']} in {r['store_calibrate']['wall_s']:.1f} s")


if __name__ == "__main__":
    main()
