#!/usr/bin/python3
"""ewall-serve benchmark: load from wrk against a loopback server, in the same run as the
references it is compared with.

1. Similar products by id at 64 connections (random ids), over the demo catalogue
   (data/ewall.sqlite + data/faiss, from `make demo`) and over 100,000 synthetic products
   (2048-d, clustered like real embeddings; rebuild-faiss-index's automatic choice).
   Reported: requests/s, p50/p90/p99 latency, non-2xx count. Target: p99 <= 20 ms at 100k,
   zero non-2xx.
2. Embeddings under concurrent load: POST /api/embeddings (image bytes) at 64 connections
   against ImageEmbedder's own batch-32 throughput on the same images (`ewall-bench embedder`)
   and the Python reference pipeline (PIL + torchvision + TorchScript, batch 32).
   Target: server >= 90% of the embedder's own (dynamic batching works).
3. Server memory (VmRSS) at rest and its peak (VmHWM) under load.

The model is the random-init test model offline: throughput and latency are real, vectors
and neighbours are meaningless.
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
import urllib.error
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from index_bench import load_store, synthetic  # noqa: E402  (the same seeded data and store as the index bench)


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def rss_mib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class Server:
    def __init__(self, serve, db, index, model, extra=()):
        self.p = subprocess.Popen([serve, "--port", "0", "--db", db, "--index", index, "--model", model,
                                   "--watch-seconds", "0", *extra],
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT, text=True)
        line = self.p.stdout.readline()
        m = re.search(r"listening on (http://[\d.]+:\d+)", line)
        if not m:
            raise SystemExit(f"ewall-serve did not start: {line}")
        self.base = m.group(1)
        time.sleep(1)

    def get(self, path):
        with urllib.request.urlopen(self.base + path, timeout=30) as r:
            return r.read()

    def stop(self):
        self.p.terminate()
        self.p.wait(timeout=60)


def wrk(url, script, args=(), connections=64, seconds=15, threads=2, timeout=10):
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", f"{timeout}s", "--latency",
           "-s", script, url, "--", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    res = {"connections": connections, "seconds": seconds}
    res["requests_per_s"] = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    res["requests"] = int(re.search(r"(\d+) requests in", out).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    res["non_2xx"] = int(m.group(1)) if m else 0
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    res["socket_errors"] = sum(int(x) for x in errs.groups()) if errs else 0

    def ms(v, unit):
        return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    for pct in ["50", "90", "99"]:
        m = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out)
        res[f"p{pct}_ms"] = ms(*m.groups()) if m else None
    return res


SIMILAR_LUA = r"""
local ids = {}
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  math.randomseed(7 + math.floor(os.clock() * 1000))
end
function request()
  return wrk.format("GET", "/api/recommendations/similar/" .. ids[math.random(#ids)])
end
"""

EMBED_LUA = r"""
local bodies = {}
function init(args)
  for line in io.lines(args[1]) do
    local f = io.open(line, "rb"); bodies[#bodies + 1] = f:read("*all"); f:close()
  end
  n = 0
end
function request()
  n = n + 1
  return wrk.format("POST", "/api/embeddings", {["Content-Type"] = "image/jpeg"}, bodies[(n % #bodies) + 1])
end
"""

PY_PIPELINE = r"""
import sys, time, torch, torchvision.transforms as T
from PIL import Image
torch.set_num_threads(2)
files = [l.strip() for l in open(sys.argv[2])]
model = torch.jit.load(sys.argv[1]).eval()
tf = T.Compose([T.Resize((224, 224)), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
def run(paths):
    with torch.no_grad():
        for i in range(0, len(paths), 32):
            x = torch.stack([tf(Image.open(p).convert("RGB")) for p in paths[i:i + 32]])
            y = model(x)
            y = torch.nn.functional.normalize(y.flatten(1), dim=1)
run(files[:32])
t = time.perf_counter(); run(files); s = time.perf_counter() - t
print(len(files) / s)
"""


PY_FAISS = r"""
import sys, time, numpy as np, faiss
faiss.omp_set_num_threads(1)
idx = faiss.read_index(sys.argv[1])
nprobe = int(sys.argv[3])
if nprobe > 0:
    faiss.extract_index_ivf(idx).nprobe = nprobe
x = np.load(sys.argv[2])[::7][:300].copy()
for i in range(20): idx.search(x[i:i + 1], 11)
t = time.perf_counter()
for i in range(len(x)): idx.search(x[i:i + 1], 11)
print((time.perf_counter() - t) / len(x) * 1000)
"""


def similar_case(args, name, db, index, ids, tmp):
    idfile = os.path.join(tmp, f"{name}.ids")
    with open(idfile, "w") as f:
        f.write("\n".join(ids) + "\n")
    script = os.path.join(tmp, "similar.lua")
    with open(script, "w") as f:
        f.write(SIMILAR_LUA)
    log(f"{name}: starting ewall-serve")
    srv = Server(args.serve, db, index, args.model)
    try:
        ready = json.loads(srv.get("/readyz"))
    except urllib.error.HTTPError as e:  # 503: synthetic vectors are not the model's (similar-by-id still works)
        ready = json.loads(e.read())
    rest = rss_mib(srv.p.pid, "VmRSS")
    wrk(srv.base, script, [idfile], seconds=3)  # warm-up
    log(f"{name}: wrk similar-by-id, 64 connections")
    res = wrk(srv.base, script, [idfile], seconds=args.seconds)
    res["index_count"] = ready.get("index_count")
    res["rss_rest_mib"] = rest
    res["rss_peak_mib"] = rss_mib(srv.p.pid, "VmHWM")
    srv.stop()
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", required=True)
    ap.add_argument("--ewall-bench", required=True)
    ap.add_argument("--rebuild", required=True)
    ap.add_argument("--model", default="models/resnet50.pt")
    ap.add_argument("--images", default="data/samples/bench")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk; make deps does)")
    os.makedirs(args.out, exist_ok=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        # 1a. The demo catalogue.
        demo_db, demo_index = os.path.join(ROOT, "data/ewall.sqlite"), os.path.join(ROOT, "data/faiss")
        if os.path.exists(os.path.join(demo_index, "manifest.json")):
            rows = open(os.path.join(demo_index, "id_map.tsv")).read().splitlines()[1:]
            ids = [json.loads(r.split("\t")[2]) for r in rows if r.strip()]
            results["similar_demo"] = similar_case(args, "demo", f"sqlite:{demo_db}", demo_index, ids, tmp)
        else:
            log("no demo catalogue (run `make demo` first); skipping it")

        # 1b. 100,000 synthetic products (the index bench's data), auto index.
        n = args.count
        vectors, labels = synthetic(n, 2048, 1000, seed=100)
        npy, meta, db = os.path.join(tmp, "s.npy"), os.path.join(tmp, "s.tsv"), f"sqlite:{tmp}/s.sqlite"
        log(f"synthetic: loading {n} vectors")
        load_store(args.ewall_bench, vectors, labels, npy, meta, db)
        index = os.path.join(tmp, "faiss")
        log("synthetic: rebuild-faiss-index (auto)")
        subprocess.run([args.rebuild, "--db", db, "--out", index, "--threads", "2"], check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
        manifest = json.load(open(os.path.join(index, "manifest.json")))
        ids = [f"p{i:07d}" for i in range(0, n, 7)]
        r = similar_case(args, "synthetic", db, index, ids, tmp)
        r["factory"] = manifest["factory"]
        r["nprobe"] = manifest.get("search", {}).get("nprobe")
        # The floor: Python faiss (the same Debian libfaiss) answering one unfiltered query at a
        # time on one thread, on the same index file, at the nprobe a filtered query starts with.
        r["python_faiss_single_query_ms"] = float(subprocess.run(
            ["/usr/bin/python3", "-c", PY_FAISS, os.path.join(index, "image_index.faiss"), npy, str(2 * (r["nprobe"] or 0))],
            capture_output=True, text=True, check=True).stdout.strip())
        r["target_p99_ms"] = 20
        r["met"] = (r["p99_ms"] or 1e9) <= 20 and r["non_2xx"] == 0 and r["socket_errors"] == 0
        results[f"similar_{n // 1000}k"] = r

        # 2. Embeddings under load, against the embedder's own batch-32 throughput.
        files = sorted(os.path.join(args.images, f) for f in os.listdir(args.images) if f.lower().endswith((".jpg", ".jpeg")))
        listing = os.path.join(tmp, "images.txt")
        with open(listing, "w") as f:
            f.write("\n".join(files[:128]) + "\n")
        log("embedder's own batch-32 throughput (ewall-bench embedder)")
        own = json.loads(subprocess.run([args.ewall_bench, "embedder", "--model", args.model, "--images", args.images,
                                         "--count", "256"], capture_output=True, text=True, check=True, cwd=ROOT).stdout)
        log("Python reference pipeline, batch 32")
        py = float(subprocess.run(["/usr/bin/python3", "-c", PY_PIPELINE, args.model, listing],
                                  capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip())
        script = os.path.join(tmp, "embed.lua")
        with open(script, "w") as f:
            f.write(EMBED_LUA)
        srv = Server(args.serve, f"sqlite:{demo_db}", demo_index, args.model, ["--max-queue", "1024"])
        rest = rss_mib(srv.p.pid, "VmRSS")
        wrk(srv.base, script, [listing], connections=64, seconds=5)  # warm-up
        log("wrk POST /api/embeddings, 64 connections")
        e = wrk(srv.base, script, [listing], connections=64, seconds=max(30, args.seconds))
        metrics = srv.get("/metrics").decode()
        s = re.search(r"ewall_embed_batch_size_sum ([\d.e+]+)", metrics)
        c = re.search(r"ewall_embed_batch_size_count ([\d.e+]+)", metrics)
        e["mean_batch_size"] = float(s.group(1)) / float(c.group(1)) if s and c else None
        e["rss_rest_mib"] = rest
        e["rss_peak_mib"] = rss_mib(srv.p.pid, "VmHWM")
        srv.stop()
        e["embedder_images_per_s"] = own["images_per_s"]
        e["python_pipeline_images_per_s"] = py
        e["server_vs_embedder"] = e["requests_per_s"] / own["images_per_s"]
        e["server_vs_python"] = e["requests_per_s"] / py
        e["target_vs_embedder"] = 0.9
        e["met"] = e["server_vs_embedder"] >= 0.9 and e["non_2xx"] == 0
        results["embeddings"] = e

    with open(os.path.join(args.out, "serve_bench.json"), "w") as f:
        json.dump(results, f, indent=2, sort_keys=True)
    print("\n== ewall-serve (wrk, loopback, 64 connections; random-init model: speed only) ==")
    for name, r in results.items():
        if name.startswith("similar"):
            print(f"{name:16s} {r['requests_per_s']:9.0f} req/s  p50 {r['p50_ms']:.2f} ms  p90 {r['p90_ms']:.2f} ms  "
                  f"p99 {r['p99_ms']:.2f} ms  non-2xx {r['non_2xx']}  errors {r['socket_errors']}  "
                  f"RSS rest {r['rss_rest_mib']:.0f} MiB, peak {r['rss_peak_mib']:.0f} MiB"
                  + (f"  [{r['factory']}, target p99<=20ms: {'met' if r['met'] else 'NOT met'}; Python faiss alone, "
                     f"1 query, 1 thread, no HTTP: {r['python_faiss_single_query_ms']:.2f} ms]" if 'factory' in r else ""))
    e = results["embeddings"]
    print(f"embeddings       {e['requests_per_s']:9.1f} img/s over HTTP (mean batch {e['mean_batch_size'] or 0:.1f}), "
          f"embedder alone {e['embedder_images_per_s']:.1f} img/s -> {e['server_vs_embedder']:.2f}x "
          f"(target >= 0.90: {'met' if e['met'] else 'NOT met'}); Python pipeline {e['python_pipeline_images_per_s']:.1f} img/s "
          f"-> {e['server_vs_python']:.2f}x; p50 {e['p50_ms']:.0f} ms p99 {e['p99_ms']:.0f} ms; non-2xx {e['non_2xx']}; "
          f"RSS rest {e['rss_rest_mib']:.0f} MiB, peak {e['rss_peak_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
