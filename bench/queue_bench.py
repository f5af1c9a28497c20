#!/usr/bin/python3
"""`make bench`: the shared job's queue (ewall-embed --job), on a PostgreSQL server of its own.
Prints a table and writes bench/out/queue.json.

What is measured, and why:

  1. The queue's own cost, the model replaced by a no-op (`ewall-bench queue`): N items
     submitted in chunks of 256, then W workers (1 and 4; tasks with their own connections)
     claim chunks and commit their items' outcomes in batches of 32 until the job is done.
     "state" commits carry the item states only (what the queue adds to a job); "vectors"
     commits also carry a 2048-d float32 vector and a ledger row per item (what a worker
     writes in all). Target: the queue sustains >= 20,000 items/s, so it never limits a GPU
     worker at ~10,000 images/s.
  2. One worker against two on the real model, over the same images served on loopback
     (`ewall-embed --job J --worker`). On 2 cores two workers share the CPU, so this shows the
     queue's overhead, not scaling: target >= 0.95x.
  3. What a 10^7-item job costs the database: the tables' sizes per item after (1), times 10^7.

The server runs with PostgreSQL's durable defaults (fsync, synchronous_commit on) and
shared_buffers 256MB, on this machine's disk, sharing the 2 cores with the workers.
"""
import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def log(msg):
    print(f"[queue-bench] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pg_bin(name):
    root = "/usr/lib/postgresql"
    for v in sorted(os.listdir(root), key=lambda x: -int(x) if x.isdigit() else 0):
        p = os.path.join(root, v, "bin", name)
        if os.path.exists(p):
            return p
    raise SystemExit(f"{name} not found: make deps installs postgresql")


class Postgres:
    """A throwaway server: initdb in a temporary folder, pg_ctl start, trust on loopback."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="ewall-queue-bench-")
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()
        self.data = os.path.join(self.dir, "data")
        self.run([pg_bin("initdb"), "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8"])
        self.run([pg_bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "log"), "-w", "-o",
                  f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c shared_buffers=256MB "
                  f"-c max_connections=100", "start"])

    def run(self, args):
        if self.root:
            args = ["runuser", "-u", "postgres", "--"] + args
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def db(self, name):
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q", "-c",
                        f"CREATE DATABASE {name}"], check=True)
        return f"postgres://postgres@127.0.0.1:{self.port}/{name}"

    def sql(self, name, query):
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", name, "-At",
                              "-F", "\t", "-c", query], check=True, capture_output=True, text=True).stdout
        return [line.split("\t") for line in out.strip().splitlines()]

    def stop(self):
        self.run([pg_bin("pg_ctl"), "-D", self.data, "-m", "fast", "stop"])
        shutil.rmtree(self.dir, ignore_errors=True)


def queue_only(bench, pg, items, vector_items):
    rows = []
    for vectors in (False, True):
        for workers in (1, 4):
            n = vector_items if vectors else items
            name = f"q_{'v' if vectors else 's'}{workers}"
            url = pg.db(name)
            args = [bench, "queue", "--db", url, "--items", str(n), "--workers", str(workers)] + (["--vectors"] if vectors else [])
            r = json.loads(subprocess.run(args, check=True, capture_output=True, text=True).stdout)
            sizes = pg.sql(name, """
                SELECT relname, pg_total_relation_size(c.oid) FROM pg_class c
                WHERE relname IN ('ewall_job_items', 'ewall_job_chunks', 'ewall_job_workers', 'embeddings', 'item_outcomes')""")
            r["bytes_per_item"] = {k: int(v) / n for k, v in sizes}
            log(f"{'vectors' if vectors else 'state  '} workers {workers}: {r['items_per_s']:.0f} items/s "
                f"(submit {r['submit_items_per_s']:.0f}/s)")
            rows.append(r)
    return rows


def model_workers(embed, model, images_dir, n, pg):
    files = sorted(os.listdir(images_dir))[:n]
    http_port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(http_port), "--bind", "127.0.0.1",
                               "--directory", images_dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1)
    manifest = os.path.join(tempfile.mkdtemp(), "m.csv")
    with open(manifest, "w") as f:
        f.write("product_id,image_url\n")
        for i, name in enumerate(files):
            f.write(f"b{i},http://127.0.0.1:{http_port}/{name}\n")
    out = {}
    try:
        for workers in (1, 2):
            url = pg.db(f"model_{workers}")
            subprocess.run([embed, "--manifest", manifest, "--db", url, "--job", "bench", "--model", model],
                           check=True, capture_output=True)
            start = time.monotonic()
            procs = [subprocess.Popen([embed, "--db", url, "--job", "bench", "--worker", "--model", model, "--json",
                                       "--worker-name", f"w{i}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                     for i in range(workers)]
            summaries = [json.loads(p.communicate()[0]) for p in procs]
            wall = time.monotonic() - start
            embedded = sum(s["counts"]["embedded"] for s in summaries)
            assert embedded == n, summaries
            # Each worker's own rate (model load excluded) and the job's wall rate (included).
            out[workers] = {"wall_seconds": wall, "images_per_s_wall": n / wall,
                            "workers_images_per_s": [s["images_per_second"] for s in summaries],
                            "job_images_per_s": n / max(s["seconds"] for s in summaries)}
            log(f"model, {workers} worker(s): {n / max(s['seconds'] for s in summaries):.1f} images/s "
                f"(wall incl. model load {n / wall:.1f})")
    finally:
        server.terminate()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ewall-bench", required=True)
    ap.add_argument("--ewall-embed", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", default=os.path.join(ROOT, "data/samples/bench"))
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--vector-items", type=int, default=20_000)
    ap.add_argument("--model-images", type=int, default=192)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/out"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    pg = Postgres()
    try:
        queue = queue_only(a.ewall_bench, pg, a.items, a.vector_items)
        model = model_workers(a.ewall_embed, a.model, a.images, a.model_images, pg) if a.model_images else {}
    finally:
        pg.stop()

    best_state = max(r["items_per_s"] for r in queue if not r["vectors"])
    ratio = model[2]["job_images_per_s"] / model[1]["job_images_per_s"] if model else float("nan")
    vec = next(r for r in queue if r["vectors"] and r["workers"] == 4)
    per_item = vec["bytes_per_item"]
    total_per_item = sum(per_item.values())
    print()
    print("Shared job queue (PostgreSQL on this machine, durable defaults), items/s")
    print(f"{'commit carries':<16}{'1 worker':>12}{'4 workers':>12}")
    for vectors in (False, True):
        r1 = next(r for r in queue if r["vectors"] == vectors and r["workers"] == 1)
        r4 = next(r for r in queue if r["vectors"] == vectors and r["workers"] == 4)
        print(f"{'states + vectors' if vectors else 'item states':<16}{r1['items_per_s']:>12.0f}{r4['items_per_s']:>12.0f}")
    print(f"submit: {queue[0]['submit_items_per_s']:.0f} items/s")
    print(f"queue only, best: {best_state:.0f} items/s (target >= 20,000: {'met' if best_state >= 20000 else 'NOT met'})")
    print(f"real model, two workers / one worker: {ratio:.2f}x (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
    print("bytes per item after a job with vectors: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(per_item.items())))
    print(f"10^7 items: {total_per_item * 1e7 / 2**30:.1f} GiB in all "
          f"(queue tables {(per_item.get('ewall_job_items', 0) + per_item.get('ewall_job_chunks', 0)) * 1e7 / 2**30:.2f} GiB)")
    result = {"queue": queue, "model_workers": model, "queue_best_items_per_s": best_state,
              "two_vs_one_worker": ratio, "bytes_per_item": per_item,
              "ten_million_gib": total_per_item * 1e7 / 2**30}
    with open(os.path.join(a.out, "queue.json"), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)


if __name__ == "__main__":
    main()
