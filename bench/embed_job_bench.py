#!/usr/bin/python3
"""`make bench`, second part: the batch job `ewall-embed` end to end, over HTTP on loopback.
Prints a table and writes bench/out/embed_job.json.

What is compared, and why:

  1. ewall-embed end to end: a CSV manifest of --n product images served by a separate
     `python3 -m http.server` process on 127.0.0.1, fetched, decoded, preprocessed, embedded
     (batch 32) and written to a fresh SQLite store. This is what the job costs in production,
     minus the real network.
  2. Model-only throughput at the same precision and threads (ewall-bench: batches of 32
     preprocessed tensors in memory, as bench/run_bench.py uses it). The job overlaps fetch,
     decode and writes with the model, so end to end / model-only says how much of the
     model's speed the pipeline keeps (target >= 0.85).
  3. The Python pipeline the platform ran before, over the same images and the same HTTP
     server: requests.Session fetch, PIL open + convert('RGB'), torchvision Resize((224,224))
     + ToTensor + Normalize, eager torchvision resnet50 (fc = Identity), batches of 32, L2
     normalisation, one thing after the other. ewall-embed / Python is the speed-up the
     platform gets from switching (target >= 2.5). It runs in its own process, so its peak
     RSS is reported too.
  4. Memory flatness: a --memory-n row run (the bench images reused under 5 product ids each,
     so every row is fetched and embedded), the job's RSS sampled every 0.5 s against its
     progress; growth from the RSS at 500 rows done to the maximum afterwards (target <= 10%).
  5. A rerun of a 1,000,000-row manifest whose rows are all embedded already: only the skip
     path (manifest streaming, store look-ups, product upserts) is measured, so the store is
     built directly with sqlite3 and holds tiny 4-float vectors (dim 4), not 2048-d ones.
     Wall seconds and peak RSS (target: well under a minute, bounded memory).

Timings: the job's images/s is its own summary (embedded / job wall time, model load
excluded); the Python loop is timed from the first fetch to the last vector, model
construction excluded. Both include their first forward pass. The HTTP server shares the
CPU with whichever side runs, equally for both. The model file is random-init where `make
model` could not download weights: throughput does not depend on the weights' values.
Numbers on a 2-core machine vary 15-30% between runs: compare the ratios within one run.
"""
import argparse
import csv
import io
import json
import os
import re
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BATCH = 32
SAMPLE_EVERY_S = 0.5
PROGRESS = re.compile(r"ewall-embed: (\d+)(?:/~?\d+)? rows")
SCHEMA_SWIFT = os.path.join(ROOT, "Sources", "EwallStore", "Schema.swift")

TARGETS = {
    "end_to_end_vs_model_only": 0.85,  # at least
    "ewall_vs_python": 2.5,  # at least
    "memory_growth_percent": 10.0,  # at most
    "million_skip_seconds": 60.0,  # at most ("well under a minute")
}
AT_LEAST = ("end_to_end_vs_model_only", "ewall_vs_python")


def log(msg):
    print(f"[embed-bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Images and the HTTP server


def ensure_images(images_dir, need):
    """At least `need` bench JPEGs in images_dir, made by data/make_samples.py if fewer."""
    have = [f for f in os.listdir(images_dir)] if os.path.isdir(images_dir) else []
    if len(have) < need:
        if os.path.basename(os.path.normpath(images_dir)) != "bench":
            sys.exit(f"embed-bench: {images_dir} has {len(have)} images, {need} needed "
                     "(make_samples.py writes OUT/bench; point --images at such a folder)")
        log(f"{images_dir} has {len(have)} images; making {need} with data/make_samples.py")
        subprocess.run([sys.executable, os.path.join(ROOT, "data", "make_samples.py"),
                        "--out", os.path.dirname(os.path.normpath(images_dir)), "--bench", str(need)], check=True)
    names = sorted(f for f in os.listdir(images_dir) if f.lower().endswith((".jpg", ".jpeg", ".png", ".webp")))
    if len(names) < need:
        sys.exit(f"embed-bench: only {len(names)} images in {images_dir}, {need} needed")
    return names


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HTTPServer:
    """`python3 -m http.server` in its own process, serving one folder on 127.0.0.1."""

    def __init__(self, directory):
        self.directory = os.path.abspath(directory)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            ["/usr/bin/python3", "-m", "http.server", str(self.port), "--bind", "127.0.0.1",
             "--directory", self.directory],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"http.server exited with status {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.base + "/", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"http.server on port {self.port} did not answer in 15 s")
            time.sleep(0.1)

    def __exit__(self, *exc):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def url(self, name):
        return f"{self.base}/{name}"


def write_manifest(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["product_id", "image_url"])
        w.writerows(rows)


# --------------------------------------------------------------------------------------------
# Running a child process: wall time, peak RSS (wait4), RSS and progress samples


class ChildRun:
    def __init__(self, rc, wall_s, peak_rss_mib, stdout, stderr, samples):
        self.rc = rc
        self.wall_s = wall_s
        self.peak_rss_mib = peak_rss_mib
        self.stdout = stdout
        self.stderr = stderr
        self.samples = samples  # [(seconds, rss MiB, rows done or None)]


def vm_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def run_child(cmd, workdir, env=None):
    """Runs cmd with stdout/stderr in files under workdir; samples its VmRSS and the last
    progress line every 0.5 s; its own peak RSS comes from wait4."""
    out_path, err_path = os.path.join(workdir, "stdout.txt"), os.path.join(workdir, "stderr.txt")
    samples, done = [], None
    with open(out_path, "wb") as out, open(err_path, "wb") as err, open(err_path, "rb") as tail:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=err, env=env)
        pending = b""
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            pending += tail.read()
            *lines, pending = pending.split(b"\n")
            for line in lines:
                m = PROGRESS.search(line.decode("utf-8", "replace"))
                if m:
                    done = int(m.group(1))
            rss = vm_rss_mib(proc.pid)
            if rss is not None:
                samples.append((time.monotonic() - t0, rss, done))
            time.sleep(SAMPLE_EVERY_S)
        wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    with open(out_path, encoding="utf-8", errors="replace") as f:
        stdout = f.read()
    with open(err_path, encoding="utf-8", errors="replace") as f:
        stderr = f.read()
    return ChildRun(proc.returncode, wall, usage.ru_maxrss / 1024, stdout, stderr, samples)


def run_embed(args, manifest, db, workdir):
    """ewall-embed over one manifest; returns (ChildRun, summary dict). Fails loudly on a
    systemic error or a summary that cannot be read."""
    cmd = [args.ewall_embed, "--manifest", manifest, "--db", f"sqlite:{db}", "--model", args.model,
           "--precision", args.precision, "--threads", str(args.threads), "--json", "--progress-interval", "1"]
    if args.streams:
        cmd += ["--streams", str(args.streams)]
    env = None
    if args.malloc_env:
        env = dict(os.environ, **args.malloc_env)
    run = run_child(cmd, workdir, env=env)
    lines = [l for l in run.stdout.splitlines() if l.strip().startswith("{")]
    if run.rc not in (0, 1) or not lines:
        envs = " ".join(f"{k}={v}" for k, v in (args.malloc_env or {}).items())
        sys.exit(f"embed-bench: ewall-embed exited {run.rc}\n  command: {envs + ' ' if envs else ''}{' '.join(cmd)}\n"
                 f"  stderr (end):\n{run.stderr[-3000:]}")
    return run, json.loads(lines[-1])


def need_counts(summary, label, **expected):
    c = summary["counts"]
    wrong = {k: (c.get(k), v) for k, v in expected.items() if c.get(k) != v}
    if wrong:
        sys.exit(f"embed-bench: {label}: counts {c} (expected {expected}); failures by class: "
                 f"{summary.get('failures_by_class')}")


# --------------------------------------------------------------------------------------------
# The measurements


def measure_end_to_end(args, server, names, tmp):
    work = os.path.join(tmp, "end_to_end")
    os.makedirs(work)
    manifest = os.path.join(work, "manifest.csv")
    write_manifest(manifest, [(f"p{k:05d}", server.url(name)) for k, name in enumerate(names[:args.n])])
    log(f"ewall-embed: {args.n} images over HTTP ...")
    run, s = run_embed(args, manifest, os.path.join(work, "bench.sqlite"), work)
    need_counts(s, "end to end", embedded=args.n, failed=0)
    return {
        "images": args.n, "embedded": s["counts"]["embedded"], "images_per_s": s["images_per_second"],
        "job_seconds": s["seconds"], "process_wall_s": run.wall_s, "model_busy": s["model_busy"],
        "stage_busy_seconds": s["stage_seconds"], "peak_rss_mib": run.peak_rss_mib,
        "precision": s["precision"], "model_id": s["model_id"], "preprocessing": s["preprocessing"],
        "random_init_model": s.get("random_init_model"),
    }


def measure_model_only(args, images_dir, names, precision, tmp):
    """ewall-bench as bench/run_bench.py runs it, over a folder of 32 of the bench images (it
    also times decoding over the whole folder; 32 keeps that short). Its model figure is
    batches of 32 preprocessed tensors already in memory."""
    folder = os.path.join(tmp, "model_only_images")
    os.makedirs(folder)
    for name in names[:BATCH]:
        os.symlink(os.path.abspath(os.path.join(images_dir, name)), os.path.join(folder, name))
    log(f"ewall-bench: model only, {precision}, {args.threads} threads, batch {BATCH} ...")
    out = subprocess.run([args.ewall_bench, "--model", args.model, "--images", folder, "--threads", str(args.threads),
                          "--iterations", str(args.model_iterations)], check=True, capture_output=True, text=True).stdout
    res = json.loads(out)
    key = f"model_{precision}_images_per_s"
    if key not in res:
        sys.exit(f"embed-bench: ewall-bench gave no {key} (this CPU may lack native bf16): {res}")
    return {"images_per_s": res[key], "iterations": args.model_iterations, "batch": BATCH, "ewall_bench": res}


def measure_python(args, server, names, tmp):
    work = os.path.join(tmp, "python")
    os.makedirs(work)
    urls = os.path.join(work, "urls.txt")
    with open(urls, "w") as f:
        f.writelines(server.url(n) + "\n" for n in names[:args.n])
    log(f"Python pipeline (requests + PIL + torchvision + eager resnet50): {args.n} images ...")
    run = run_child([sys.executable, os.path.abspath(__file__), "--python-worker", urls, "--threads", str(args.threads)], work)
    if run.rc != 0:
        sys.exit(f"embed-bench: the Python pipeline exited {run.rc}:\n{run.stderr[-3000:]}")
    res = json.loads(run.stdout.strip().splitlines()[-1])
    res["peak_rss_mib"] = run.peak_rss_mib
    return res


def measure_memory(args, server, names, tmp):
    """--memory-n rows, the bench images under several product ids each (p{k}_{copy}), so
    every row is fetched and embedded; RSS sampled against rows done."""
    work = os.path.join(tmp, "memory")
    os.makedirs(work)
    manifest = os.path.join(work, "manifest.csv")
    pool = names[:args.n]
    write_manifest(manifest, [(f"p{k % len(pool):05d}_{k // len(pool)}", server.url(pool[k % len(pool)]))
                              for k in range(args.memory_n)])
    log(f"ewall-embed: memory run, {args.memory_n} rows ...")
    run, s = run_embed(args, manifest, os.path.join(work, "bench.sqlite"), work)
    need_counts(s, "memory run", embedded=args.memory_n, failed=0)
    after = [(t, rss) for t, rss, done in run.samples if done is not None and done >= args.memory_baseline_rows]
    if not after:
        sys.exit(f"embed-bench: memory run: no RSS sample after {args.memory_baseline_rows} rows done")
    base, peak = after[0][1], max(rss for _, rss in after)
    # Not in the target, a diagnostic: a leak keeps climbing, an allocator's working set
    # levels off. Maximum RSS over the first and the second half of the rows.
    half = args.memory_n // 2
    first = max((rss for _, rss, d in run.samples if d is not None and d < half), default=None)
    second = max((rss for _, rss, d in run.samples if d is not None and d >= half), default=None)
    return {
        "rows": args.memory_n, "images_per_s": s["images_per_second"], "job_seconds": s["seconds"],
        "baseline_rows": args.memory_baseline_rows, "rss_at_baseline_mib": base, "rss_max_after_mib": peak,
        "growth_percent": (peak - base) / base * 100, "peak_rss_mib": run.peak_rss_mib,
        "rss_max_first_half_mib": first, "rss_max_second_half_mib": second,
        "samples": [{"t": round(t, 2), "rss_mib": round(rss, 1), "rows_done": done} for t, rss, done in run.samples],
        "curve": memory_curve(run.samples, args.memory_curve_rows, args.memory_n) if args.memory_curve_rows > 0 else None,
    }


def memory_curve(samples, every, rows):
    """RSS against rows done, one point per `every` rows: the first sample at or past each
    multiple of `every`, and the maximum RSS sampled until the next one."""
    points = []
    for lo in range(every, rows + 1, every):
        window = [(t, rss, d) for t, rss, d in samples if d is not None and lo <= d < lo + every]
        if window:
            t, rss, d = window[0]
            points.append({"rows": lo, "rows_done": d, "t": round(t, 2), "rss_mib": round(rss, 1),
                           "max_rss_mib_until_next": round(max(r for _, r, _ in window), 1)})
    return points


def sqlite_schema():
    """The SQLite DDL of Sources/EwallStore/Schema.swift (`static let sqlite = \"\"\"...\"\"\"`)."""
    with open(SCHEMA_SWIFT) as f:
        m = re.search(r'static let sqlite = """\n(.*?)"""', f.read(), re.S)
    if not m:
        sys.exit(f"embed-bench: no `static let sqlite` in {SCHEMA_SWIFT}")
    return m.group(1)


def measure_million(args, server, names, tmp):
    """A rerun over --million-rows rows all embedded already: only the skip path."""
    work = os.path.join(tmp, "million")
    os.makedirs(work)
    db = os.path.join(work, "bench.sqlite")
    pool = names[:args.n]
    pid = lambda k: f"m{k:07d}"  # noqa: E731
    url = lambda k: server.url(pool[k % len(pool)])  # noqa: E731

    # One real row first: the store's schema and meta come from ewall-embed itself, and the
    # model id and preprocessing the other rows are keyed with are the ones it writes.
    one = os.path.join(work, "one.csv")
    write_manifest(one, [(pid(0), url(0))])
    log("ewall-embed: 1-row run for the store's model key ...")
    _, s = run_embed(args, one, db, work)
    need_counts(s, "1-row run", embedded=1)
    con = sqlite3.connect(db)
    model_id, preprocessing = con.execute("SELECT model_id, preprocessing FROM embeddings").fetchone()
    con.executescript(sqlite_schema())  # IF NOT EXISTS: checks the file's schema is the one in Schema.swift

    log(f"sqlite3: inserting {args.million_rows - 1} more rows (products, embeddings dim 4, ledger) ...")
    t0 = time.monotonic()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    vector = struct.pack("<4f", 0.5, 0.5, 0.5, 0.5)  # tiny: only the skip path is measured
    rng = range(1, args.million_rows)
    with con:
        con.executemany("INSERT INTO products (product_id, created_at, updated_at) VALUES (?, ?, ?)",
                        ((pid(k), now, now) for k in rng))
        con.executemany("""INSERT INTO embeddings (product_id, model_id, preprocessing, image_url, dim, vector,
                           created_at, updated_at) VALUES (?, ?, ?, ?, 4, ?, ?, ?)""",
                        ((pid(k), model_id, preprocessing, url(k), vector, now, now) for k in rng))
        con.executemany("""INSERT INTO item_outcomes (product_id, model_id, preprocessing, image_url, status,
                           attempts, last_tried) VALUES (?, ?, ?, ?, 'embedded', 1, ?)""",
                        ((pid(k), model_id, preprocessing, url(k), now) for k in rng))
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    build_s = time.monotonic() - t0

    manifest = os.path.join(work, "manifest.csv")
    write_manifest(manifest, ((pid(k), url(k)) for k in range(args.million_rows)))
    log(f"ewall-embed: rerun over {args.million_rows} rows, all done already ...")
    run, s = run_embed(args, manifest, db, work)
    need_counts(s, "1M-row rerun", skipped=args.million_rows, embedded=0, failed=0)
    # RSS once the model is loaded and rows are flowing, against the peak: what the 1M rows add.
    flowing = [rss for _, rss, done in run.samples if done]
    return {
        "rss_at_first_progress_mib": flowing[0] if flowing else None,
        "rss_max_while_rows_flow_mib": max(flowing) if flowing else None,
        "rows": args.million_rows, "skipped": s["counts"]["skipped"], "job_seconds": s["seconds"],
        "process_wall_s": run.wall_s, "rows_per_s": args.million_rows / s["seconds"], "peak_rss_mib": run.peak_rss_mib,
        "store_vector_dim": 4, "store_build_seconds": build_s, "model_id": model_id, "preprocessing": preprocessing,
        "store_bytes": os.path.getsize(db), "manifest_bytes": os.path.getsize(manifest),
    }


# --------------------------------------------------------------------------------------------
# The platform's Python pipeline (runs as `--python-worker URLS`, in its own process)


def python_worker(urls_path, threads):
    import requests
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms

    torch.set_num_threads(threads)
    model = torchvision.models.resnet50(weights=None)
    model.fc = torch.nn.Identity()
    model.eval()
    tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    with open(urls_path) as f:
        urls = [line.strip() for line in f if line.strip()]
    session = requests.Session()
    stage = {"fetch": 0.0, "decode": 0.0, "infer": 0.0}
    vectors = 0
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(urls), BATCH):
            tensors = []
            for u in urls[i:i + BATCH]:
                t = time.perf_counter()
                r = session.get(u, timeout=30)
                r.raise_for_status()
                t1 = time.perf_counter()
                tensors.append(tf(Image.open(io.BytesIO(r.content)).convert("RGB")))
                t2 = time.perf_counter()
                stage["fetch"] += t1 - t
                stage["decode"] += t2 - t1
            t = time.perf_counter()
            v = torch.nn.functional.normalize(model(torch.stack(tensors)), dim=1)
            stage["infer"] += time.perf_counter() - t
            vectors += v.shape[0]
    seconds = time.perf_counter() - start
    print(json.dumps({"images": vectors, "seconds": seconds, "images_per_s": vectors / seconds,
                      "stage_seconds": stage, "torch": torch.__version__, "torchvision": torchvision.__version__}))


# --------------------------------------------------------------------------------------------


def table(res):
    e, m, p, mem, mil = (res.get(k) for k in ("end_to_end", "model_only", "python", "memory", "million"))
    r = res["ratios"]
    rows = []
    if e:
        st = e["stage_busy_seconds"]
        rows += [
            ("ewall-embed end to end", f"{e['images_per_s']:.1f} img/s",
             f"{e['images']} images in {e['job_seconds']:.1f} s (process {e['process_wall_s']:.1f} s), "
             f"peak RSS {e['peak_rss_mib']:.0f} MiB"),
            ("  busy s: fetch/decode/model/write", "",
             f"{st['fetch']:.1f} / {st['decode']:.1f} / {st['infer']:.1f} / {st['write']:.1f}; "
             f"model busy {e['model_busy'] * 100:.0f}%"),
        ]
    if m:
        rows.append(("model only (ewall-bench)", f"{m['images_per_s']:.1f} img/s",
                     f"batch {m['batch']}, {m['iterations']} iterations, tensors in memory"))
    if p:
        st = p["stage_seconds"]
        rows.append(("Python pipeline (platform's)", f"{p['images_per_s']:.1f} img/s",
                     f"{p['images']} images in {p['seconds']:.1f} s, fetch/decode/model "
                     f"{st['fetch']:.1f}/{st['decode']:.1f}/{st['infer']:.1f} s, peak RSS {p['peak_rss_mib']:.0f} MiB"))
    if mem:
        rows.append((f"memory, {mem['rows']} rows", f"{mem['growth_percent']:+.1f}%",
                     f"RSS {mem['rss_at_baseline_mib']:.0f} MiB at {mem['baseline_rows']} rows -> max "
                     f"{mem['rss_max_after_mib']:.0f} MiB after; {mem['images_per_s']:.1f} img/s"))
        if mem["rss_max_first_half_mib"] and mem["rss_max_second_half_mib"]:
            rows.append(("  max RSS, first / second half", "",
                         f"{mem['rss_max_first_half_mib']:.0f} / {mem['rss_max_second_half_mib']:.0f} MiB "
                         "(diagnostic: a leak keeps climbing in the second half)"))
        for pt in mem.get("curve") or []:
            rows.append((f"  RSS at {pt['rows']} rows", f"{pt['rss_mib']:.0f} MiB",
                         f"(sample at {pt['rows_done']} rows done, t {pt['t']:.1f} s); "
                         f"max {pt['max_rss_mib_until_next']:.0f} MiB until the next point"))
    if mil:
        rows.append((f"rerun, {mil['rows']:,} rows all done", f"{mil['job_seconds']:.1f} s",
                     f"skipped {mil['skipped']:,}, {mil['rows_per_s']:,.0f} rows/s, process {mil['process_wall_s']:.1f} s, "
                     f"peak RSS {mil['peak_rss_mib']:.0f} MiB (store vectors dim 4)"))
        if mil["rss_at_first_progress_mib"]:
            rows.append(("  RSS while rows flow", f"{mil['rss_at_first_progress_mib']:.0f} MiB",
                         f"at the first progress line -> max {mil['rss_max_while_rows_flow_mib']:.0f} MiB "
                         "(the peak above includes loading the model)"))
    print()
    for label, fig, note in rows:
        print(f"{label:36} {fig:>13}  {note}")
    print()
    for name, x in r.items():
        if x["value"] is not None:
            sign = ">=" if x["at_least"] else "<="
            print(f"{name:36} {x['value']:13.2f}  target {sign} {x['target']}  {'met' if x['met'] else 'NOT MET'}")


def parse_env(text):
    env = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"not K=V: {item!r}")
        env[key] = value
    return env


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ewall-embed", default=".build/release/ewall-embed")
    ap.add_argument("--ewall-bench", default=".build/release/ewall-bench")
    ap.add_argument("--model", default="models/resnet50.pt")
    ap.add_argument("--images", default="data/samples/bench")
    ap.add_argument("--n", type=int, default=1000, help="images in the end-to-end and Python runs")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "auto"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", type=int, default=None, help="ewall-embed --streams (default: its own default)")
    ap.add_argument("--model-iterations", type=int, default=6, help="ewall-bench batches timed")
    ap.add_argument("--out", default="bench/out")
    ap.add_argument("--memory-n", type=int, default=5000)
    ap.add_argument("--memory-baseline-rows", type=int, default=500, help="RSS growth is measured from here")
    ap.add_argument("--million-rows", type=int, default=1_000_000)
    ap.add_argument("--memory-curve-rows", type=int, default=0, metavar="ROWS",
                    help="print the memory run's RSS against rows done every ROWS rows (0: not printed)")
    ap.add_argument("--malloc-env", type=parse_env, default={}, metavar="K=V,K=V",
                    help="environment variables for the ewall-embed processes only, e.g. "
                         "MALLOC_ARENA_MAX=2,MALLOC_MMAP_THRESHOLD_=262144 (glibc malloc tunables)")
    ap.add_argument("--only-memory", action="store_true",
                    help="run only the memory-flatness part (no end-to-end, model-only, Python or 1M-row "
                         "runs); writes embed_job_memory.json, not embed_job.json")
    ap.add_argument("--skip-python", action="store_true", help="skip the Python pipeline")
    ap.add_argument("--skip-memory", action="store_true", help="skip the --memory-n run")
    ap.add_argument("--skip-million", action="store_true", help="skip the --million-rows rerun")
    ap.add_argument("--keep-temp", action="store_true", help="keep the temporary folder (stores, manifests, logs)")
    ap.add_argument("--python-worker", metavar="URLS", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.python_worker:
        return python_worker(args.python_worker, args.threads)

    for name in ("ewall_embed", "ewall_bench", "model"):
        setattr(args, name, os.path.abspath(getattr(args, name)))  # the job runs in a temp folder
    for path in (args.ewall_embed, args.model) + (() if args.only_memory else (args.ewall_bench,)):
        if not os.path.exists(path):
            sys.exit(f"embed-bench: {path} not found (swift build -c release --product ...; make model)")
    names = ensure_images(args.images, max(args.n, 1000))

    res = {"config": {"n": args.n, "precision": args.precision, "threads": args.threads, "streams": args.streams, "batch": BATCH,
                      "model": os.path.relpath(args.model, ROOT), "images": args.images, "cpus": os.cpu_count(),
                      "http": "python3 -m http.server on 127.0.0.1, separate process",
                      "ewall_embed_env": args.malloc_env, "only_memory": args.only_memory},
           "notes": ["The model may be random-init (make model offline): throughput does not depend on the weights.",
                     "The 1M-row store holds 4-float vectors (dim 4, 16 bytes): only the skip path is measured.",
                     "The HTTP server shares the CPUs with the side being measured, equally for both sides."]}
    tmp = tempfile.mkdtemp(prefix="ewall-embed-bench-")
    try:
        with HTTPServer(args.images) as server:
            if args.only_memory:
                res["memory"] = measure_memory(args, server, names, tmp)
            else:
                res["end_to_end"] = measure_end_to_end(args, server, names, tmp)
                res["model_only"] = measure_model_only(args, args.images, names, res["end_to_end"]["precision"], tmp)
                if not args.skip_python:
                    res["python"] = measure_python(args, server, names, tmp)
                if not args.skip_memory:
                    res["memory"] = measure_memory(args, server, names, tmp)
                if not args.skip_million:
                    res["million"] = measure_million(args, server, names, tmp)
    finally:
        if args.keep_temp:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    e = res.get("end_to_end") or {}
    ratios = {
        "end_to_end_vs_model_only": e["images_per_s"] / res["model_only"]["images_per_s"] if e else None,
        "ewall_vs_python": e["images_per_s"] / res["python"]["images_per_s"] if "python" in res else None,
        "memory_growth_percent": res["memory"]["growth_percent"] if "memory" in res else None,
        "million_skip_seconds": res["million"]["job_seconds"] if "million" in res else None,
    }
    res["ratios"] = {k: {"value": v, "target": TARGETS[k], "at_least": k in AT_LEAST,
                         "met": None if v is None else (v >= TARGETS[k] if k in AT_LEAST else v <= TARGETS[k])}
                     for k, v in ratios.items()}

    what = f"memory run only, {args.memory_n} rows" if args.only_memory else f"{args.n} product JPEGs"
    print(f"\newall-embed batch job: {what} over HTTP on loopback, {args.precision}, "
          f"{args.threads} threads, batch {BATCH}, model {res['config']['model']}")
    if args.malloc_env:
        print("ewall-embed environment: " + " ".join(f"{k}={v}" for k, v in args.malloc_env.items()))
    if e.get("random_init_model"):
        print("(random-init model: the vectors mean nothing, the throughput is the same as with trained weights)")
    table(res)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "embed_job_memory.json" if args.only_memory else "embed_job.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1, sort_keys=True)
    print(f"\nwritten: {path}")


if __name__ == "__main__":
    main()
