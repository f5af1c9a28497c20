#!/usr/bin/python3
"""A new product's way from its INSERT on the platform's table to its vector in the store's
change feed (what every ewall-serve follows), on a PostgreSQL store, two ways:

- in-process: `ewall sync` embeds the image itself;
- job: `ewall sync --job NAME` submits each round as a run of a shared job, and one
  `ewall-embed --job NAME --worker --follow` process (as on another machine) embeds it.

A PostgreSQL 15 of its own (wal_level=logical) holds both sources and stores. Products arrive
one at a time, `--gap` seconds apart, each with an image of its own (a sample photo plus 4 bytes
of its number, served on loopback); each is timed from its commit to its `vector` entry in the
feed. Prints p50/p95/max per way and the ratio job / in-process; writes
bench/out/sync_job_bench.json.

    bench/sync_job_bench.py --ewall .build/release/ewall --ewall-embed .build/release/ewall-embed \\
        --model models/resnet50.pt --products 20
"""
import argparse
import glob
import http.server
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sync_bench import Postgres, Session, percentiles  # noqa: E402


def serve_photos(photos):
    """Serves /p/N.jpg: photo N % len(photos) plus N as 4 bytes after the JPEG's end."""
    blobs = [open(p, "rb").read() for p in photos]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                n = int(self.path.split("/")[-1].split(".")[0])
            except ValueError:
                self.send_error(404)
                return
            body = blobs[n % len(blobs)] + struct.pack("<I", n)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/p/"


def vectors_in_feed(pg, db):
    out = subprocess.run(
        ["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", db, "-q", "-A", "-t", "-c",
         "SELECT product_id FROM catalogue_changes WHERE kind = 'vector'"],
        capture_output=True, text=True)
    return set(out.stdout.split())


def run_way(args, pg, images, way, env):
    src, store = f"src_{way}", f"store_{way}"
    pg.psql(f"CREATE DATABASE {src}")
    pg.psql(f"CREATE DATABASE {store}")
    source = Session(pg, db=src)
    source.run("CREATE TABLE products (id bigserial PRIMARY KEY, title text, brand text, category text, "
               "price numeric(12,2), in_stock boolean, image_url text)")
    base = pg.url.rsplit("/", 1)[0]
    procs = []
    if way == "job":
        procs.append(subprocess.Popen(
            [args.ewall_embed, "--db", f"{base}/{store}", "--job", "bench", "--worker", "--follow", "--model",
             args.model], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    sync = [args.ewall, "sync", "--source", f"{base}/{src}", "--table", "public.products", "--db", f"{base}/{store}",
            "--slot", f"ewall_{way}", "--model", args.model] + (["--job", "bench"] if way == "job" else [])
    procs.append(subprocess.Popen(sync, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    latencies = []
    try:
        # The first product warms everything (model load, slot, job); it is not counted.
        for n in range(args.products + 1):
            source.run(f"INSERT INTO products (title, category, in_stock, image_url) "
                       f"VALUES ('p{n}', 'coat', true, '{images}{n}.jpg')")
            t0 = time.monotonic()
            product = str(n + 1)
            deadline = t0 + (120 if n == 0 else 60)
            while product not in vectors_in_feed(pg, store):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{way}: product {product} not embedded within {deadline - t0:.0f} s")
                time.sleep(0.02)
            if n > 0:
                latencies.append(time.monotonic() - t0)
            time.sleep(args.gap)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        source.close()
    return latencies


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ewall", default=".build/release/ewall")
    ap.add_argument("--ewall-embed", default=".build/release/ewall-embed")
    ap.add_argument("--model", default="models/resnet50.pt")
    ap.add_argument("--products", type=int, default=20)
    ap.add_argument("--gap", type=float, default=1.0, help="seconds between arrivals")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    env = dict(os.environ)
    env.setdefault("EWALL_PRECISION", "fp32")
    photos = sorted(glob.glob("data/samples/photos/*.jpg"))[:8]
    if not photos:
        raise SystemExit("no sample photos: run make samples")
    server, images = serve_photos(photos)
    with tempfile.TemporaryDirectory() as tmp:
        pg = Postgres(tmp)
        try:
            result = {way: percentiles(run_way(args, pg, images, way, env)) for way in ("inprocess", "job")}
        finally:
            pg.stop()
            server.shutdown()
    ratio = result["job"]["p50_ms"] / result["inprocess"]["p50_ms"]
    result["job_over_inprocess_p50"] = ratio
    result["products"] = args.products
    result["gap_s"] = args.gap
    print(f"A new product, INSERT -> vector in the change feed ({args.products} products, {args.gap} s apart):")
    for way, label in (("inprocess", "ewall sync embeds"), ("job", "ewall sync --job + 1 --follow worker")):
        r = result[way]
        print(f"  {label:38} p50 {r['p50_ms']:7.0f} ms  p95 {r['p95_ms']:7.0f} ms  max {r['max_ms']:7.0f} ms")
    print(f"  job / in-process (p50): {ratio:.2f}x")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sync_job_bench.json"), "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
