#!/usr/bin/python3
"""The live catalogue: how soon a change committed on the platform's PostgreSQL shows in
ewall-serve's answers, and what following it costs the server.

A PostgreSQL 15 of its own (wal_level=logical) holds a product table of N products; the same
products, with synthetic 2048-d clustered vectors, are in our store and index (ewall-bench
index load, rebuild-faiss-index). `ewall sync` follows the table; ewall-serve serves the index
and follows the store's change feed.

1. Visibility: a product X that is in query Q's answer goes out of stock at the source (one
   UPDATE, one transaction); from the moment the commit returns, Q's answer is polled every
   5 ms until X has left it. p50/p95/p99 at 10 and 100 changes/s of background stock flips
   (the tracked flips are part of the rate), and at --high-rate (10,000/s) with the background
   flips in transactions of 100, as a bulk stock feed writes them (10 tracked flips a second
   at every rate; polled every 20 ms there, 5 ms at the others). Target: p95 <= 1 s, p99 <= 2 s
   at 100/s.
2. Similar-by-id under wrk (64 connections, random ids) with no changes, and with 100 stock
   flips/s streaming through sync and the server's follower, in --pairs alternating pairs: the
   median pair's p99 ratio (target <= 1.2x), with the CPU the server, the sync and the rest
   used meanwhile.
3. A new product: INSERT of two products with the same photo (served on loopback), from the
   commit to the moment each is the other's nearest in GET similar (sync embeds in its own
   process with the model; no rebuild).
4. The highest sustained rate: with the server stopped, --burst stock flips as fast as psql
   commits them (transactions of 500 rows), timed from the first commit until the store's change
   feed holds them all (what `ewall sync` applies per second). Then the restarted replica's
   catch-up: its start to /readyz with that backlog (readiness waits for the feed), against its
   start without one.

Prints a table; writes bench/out/sync_bench.json.
"""
import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from index_bench import synthetic  # noqa: E402
from serve_bench import wrk  # noqa: E402


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Postgres:
    """A throwaway server with wal_level=logical (as the postgres user when run as root)."""

    def __init__(self, tmp):
        versions = sorted(os.listdir("/usr/lib/postgresql"), key=int, reverse=True)
        self.bin = f"/usr/lib/postgresql/{versions[0]}/bin"
        self.dir = os.path.join(tmp, "pg")
        os.makedirs(self.dir)
        self.root = os.geteuid() == 0
        if self.root:
            shutil.chown(self.dir, "postgres", "postgres")
            os.chmod(tmp, 0o755)
        self.port = free_port()
        self._run([f"{self.bin}/initdb", "-D", f"{self.dir}/data", "-A", "trust", "-U", "postgres", "--no-sync"])
        self._run([f"{self.bin}/pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/log", "-w", "-o",
                   f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c wal_level=logical -F", "start"])
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, cmd):
        if self.root:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def psql(self, sql):
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-q", "-v",
                        "ON_ERROR_STOP=1", "-c", sql], check=True, stdout=subprocess.DEVNULL)

    def stop(self):
        self._run([f"{self.bin}/pg_ctl", "-D", f"{self.dir}/data", "-m", "immediate", "stop"])


class Session:
    """One psql process per writer, fed statements on stdin (each its own transaction)."""

    def __init__(self, pg, db="postgres"):
        self.p = subprocess.Popen(["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", db, "-q",
                                   "-A", "-t"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        self.lock = threading.Lock()

    def run(self, sql):
        """Runs one statement and returns when its commit has returned."""
        with self.lock:
            self.p.stdin.write(sql.rstrip().rstrip(";") + ";\n\\echo __done\n")
            self.p.stdin.flush()
            while True:
                line = self.p.stdout.readline()
                if not line or line.strip() == "__done":
                    return

    def close(self):
        self.p.stdin.close()
        self.p.wait()


def get_json(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def percentiles(xs):
    if not xs:
        return {"n": 0}
    a = np.array(xs)
    return {"n": len(xs), "p50_ms": float(np.percentile(a, 50) * 1000), "p95_ms": float(np.percentile(a, 95) * 1000),
            "p99_ms": float(np.percentile(a, 99) * 1000), "max_ms": float(a.max() * 1000)}


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds():
    """CPU seconds all cores spent working so far: user, nice, system, irq and softirq (not idle,
    iowait, or steal; guest time is inside user already)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[0:3]) + sum(v[5:7])) / os.sysconf("SC_CLK_TCK")


def timed_wrk(base, script, ids, seconds, serve_pid, sync_pid):
    """wrk, with the CPU seconds the server, the sync and the whole machine spent meanwhile."""
    before = (cpu_seconds(serve_pid), cpu_seconds(sync_pid), machine_busy_seconds())
    res = wrk(base, script, ids, seconds=seconds)
    after = (cpu_seconds(serve_pid), cpu_seconds(sync_pid), machine_busy_seconds())
    res["serve_cpu_ms_per_request"] = (after[0] - before[0]) * 1000 / max(1, res["requests"])
    res["sync_cpu_share"] = (after[1] - before[1]) / (after[2] - before[2])
    res["others_cpu_share"] = 1 - (after[0] - before[0] + after[1] - before[1]) / (after[2] - before[2])
    return res


class Stock:
    """Each product's stock as the source has it, and how many are in stock, kept as it changes
    (a sum over the catalogue at every flip cost the writer a core's worth at 100 flips/s)."""

    def __init__(self, values):
        self.v = [bool(x) for x in values]
        self.count = sum(self.v)

    def __getitem__(self, x):
        return self.v[x]

    def __setitem__(self, x, value):
        self.count += int(bool(value)) - int(self.v[x])
        self.v[x] = bool(value)


def neutral_flip(n, stock, target, avoid=()):
    """One stock flip that keeps the catalogue's in-stock count at `target`: a product out when
    more are in stock, else one in. Random flips drift the share toward half (90% -> 80% over
    the stages before the wrk runs), which makes filtered searches cheaper and flattered the
    run under changes (p99 ratio 0.84x). Returns (product, its new stock)."""
    want = stock.count <= target  # put one back in stock
    while True:
        x = random.randrange(n)
        if stock[x] != want and x not in avoid:
            stock[x] = want
            return x, want


def visibility(base, pg, n, rate, seconds, stock, rows=1, poll=0.005):
    """Stock flips at `rate`/s for `seconds`, in transactions of `rows` flips; ten transactions a
    second are one tracked flip each, timed from commit to gone (its query polled every `poll`
    seconds: each poll is a search the server answers, so the watchers are load too)."""
    writer = Session(pg)
    target = stock.count
    tx_rate = rate / rows
    tracked_every = max(1, int(tx_rate // 10))
    latencies, misses = [], 0
    lock = threading.Lock()
    watchers = []
    # Tracked products the background flips leave alone until they are seen gone: a background
    # flip back into stock would keep one in the answer until its next flip (at 10,000 flips/s
    # over 20,000 products, about one tracked flip in ten, read as 2-5 s of "latency").
    pinned = set()

    def watch(q, x, t0):
        nonlocal misses
        deadline = t0 + 10
        while time.monotonic() < deadline:
            ids = [r["product_id"] for r in get_json(f"{base}/api/recommendations/similar/{q}")["results"]]
            if x not in ids:
                with lock:
                    latencies.append(time.monotonic() - t0)
                    pinned.discard(int(x))
                return
            time.sleep(poll)
        with lock:
            misses += 1
            pinned.discard(int(x))

    start = time.monotonic()
    i = 0
    while time.monotonic() - start < seconds:
        i += 1
        due = start + i / tx_rate
        if due > time.monotonic():
            time.sleep(due - time.monotonic())
        if i % tracked_every == 0:
            q = random.randrange(n)
            ans = get_json(f"{base}/api/recommendations/similar/{q}")["results"]
            if not ans:
                continue
            x = ans[0]["product_id"]
            with lock:
                pinned.add(int(x))
            writer.run(f"UPDATE shop_product SET in_stock = false WHERE id = {x}")
            t0 = time.monotonic()
            stock[int(x)] = False
            t = threading.Thread(target=watch, args=(q, x, t0))
            t.start()
            watchers.append(t)
        elif rows == 1:
            with lock:
                x, now = neutral_flip(n, stock, target, avoid=pinned)
            writer.run(f"UPDATE shop_product SET in_stock = {str(now).lower()} WHERE id = {x}")
        else:
            with lock:
                xs = [x for x in random.sample(range(n), rows) if x not in pinned]
            if not xs:
                continue
            for x in xs:
                stock[x] = not stock[x]
            writer.run(f"UPDATE shop_product SET in_stock = NOT in_stock WHERE id IN ({','.join(map(str, xs))})")
    for t in watchers:
        t.join()
    writer.close()
    out = percentiles(latencies)
    out["rate_per_s"] = rate
    out["rows_per_transaction"] = rows
    out["achieved_per_s"] = (i * rows - len(watchers) * (rows - 1)) / (time.monotonic() - start)
    out["not_seen_within_10s"] = misses
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ewall", default=".build/release/ewall")
    ap.add_argument("--serve", default=".build/release/ewall-serve")
    ap.add_argument("--rebuild", default=".build/release/rebuild-faiss-index")
    ap.add_argument("--ewall-bench", default=".build/release/ewall-bench")
    ap.add_argument("--model", default="models/resnet50.pt")
    ap.add_argument("--photos", default="data/samples/photos")
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--burst", type=int, default=200000, help="stock flips of the sustained-rate stage")
    ap.add_argument("--pairs", type=int, default=3, choices=range(1, 100), metavar="N",
                    help="wrk runs without and with 100 changes/s, alternating; the median pair is reported")
    ap.add_argument("--high-rate", type=int, default=10000,
                    help="stock flips/s of the third visibility stage (transactions of 100 flips)")
    ap.add_argument("--out", default="bench/out")
    args = ap.parse_args()
    os.chdir(ROOT)
    for tool in ("wrk", "psql"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (make deps installs it)")
    card = json.load(open(os.path.splitext(args.model)[0] + ".card.json"))
    model_id = f"{card['name']}@{card['sha256'][:12]}"
    tmp = tempfile.mkdtemp(prefix="ewall-sync-bench-")
    pg = Postgres(tmp)
    procs = []
    results = {"count": args.count}
    try:
        n = args.count
        vectors, labels = synthetic(n, 2048, max(10, n // 200), seed=7)
        stock = Stock(np.random.default_rng(1).random(n) < 0.9)
        npy, meta, db = f"{tmp}/v.npy", f"{tmp}/meta.tsv", f"sqlite:{tmp}/store.sqlite"
        np.save(npy, vectors)
        with open(meta, "w") as f:
            f.write("product_id\tcategory\tin_stock\n")
            for i in range(n):
                f.write(f"{i}\tcat{labels[i] % 10}\t{int(stock[i])}\n")
        log(f"loading {n} products into {db} and the source table")
        subprocess.run([args.ewall_bench, "index", "load", "--npy", npy, "--meta", meta, "--db", db,
                        "--model-id", model_id], check=True, stdout=subprocess.DEVNULL)
        pg.psql("CREATE TABLE shop_product (id bigint PRIMARY KEY, title text, brand text, category text, "
                "price numeric(12,2), in_stock boolean, image_url text)")
        rows = f"{tmp}/rows.csv"
        with open(rows, "w") as f:
            for i in range(n):
                f.write(f"{i},t{i},b,cat{labels[i] % 10},1,{str(stock[i]).lower()},synthetic:{i}\n")
        os.chmod(tmp, 0o755)
        os.chmod(rows, 0o644)
        pg.psql(f"\\copy shop_product FROM '{rows}' CSV")
        log("rebuild-faiss-index")
        subprocess.run([args.rebuild, "--db", db, "--out", f"{tmp}/faiss"], check=True, stdout=subprocess.DEVNULL)

        # A photo server for the new products.
        photo_port = free_port()
        procs.append(subprocess.Popen([sys.executable, "-m", "http.server", str(photo_port), "--bind", "127.0.0.1",
                                       "--directory", args.photos], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        photo = sorted(os.listdir(args.photos))[0]

        sync_log = open(f"{tmp}/sync.log", "w")
        sync_proc = subprocess.Popen([args.ewall, "sync", "--source", pg.url, "--table", "shop_product", "--db", db,
                                       "--model", args.model], stdout=sync_log, stderr=sync_log)
        procs.append(sync_proc)
        def start_serve():
            """ewall-serve over the store and index: the process, its URL, seconds to /readyz."""
            t0 = time.monotonic()
            serve = subprocess.Popen([args.serve, "--port", "0", "--db", db, "--index", f"{tmp}/faiss", "--model",
                                      args.model, "--watch-seconds", "0"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
            procs.append(serve)
            m = re.search(r"listening on (http://[\d.]+:\d+)", serve.stdout.readline())
            if not m:
                raise SystemExit("ewall-serve did not start")
            url = m.group(1)
            for _ in range(1200):
                try:
                    with urllib.request.urlopen(f"{url}/readyz", timeout=5) as r:
                        if r.status == 200:
                            break
                except Exception:
                    pass
                time.sleep(0.05)
            return serve, url, time.monotonic() - t0

        serve, base, ready_plain = start_serve()
        # Settled before anything is timed: the sync's first snapshot of the table applied (its
        # slot caught up) and the server through the feed it wrote. Timing from a fixed pause
        # put the snapshot inside the quiet wrk run on a slower CPU (p99 ratio 0.65x).
        status = [args.ewall, "sync", "--status", "--json", "--source", pg.url, "--table", "shop_product", "--db", db]
        for _ in range(600):
            st = subprocess.run(status, capture_output=True, text=True).stdout
            with urllib.request.urlopen(f"{base}/metrics", timeout=10) as r:
                lag = re.search(r"^ewall_catalogue_lag_changes (\S+)", r.read().decode(), re.M)
            if '"lag_bytes":0' in st and '"slot_active":true' in st and lag and float(lag.group(1)) == 0:
                break
            time.sleep(0.2)
        else:
            raise SystemExit("ewall sync and ewall-serve did not settle within 120 s")
        time.sleep(3)

        ids = f"{tmp}/ids.txt"
        with open(ids, "w") as f:
            f.write("\n".join(str(i) for i in range(n)))
        script = f"{tmp}/similar.lua"
        with open(script, "w") as f:
            f.write('local ids = {}\nfunction init(args) for l in io.lines(args[1]) do ids[#ids+1] = l end end\n'
                    'request = function()\n  return wrk.format("GET", "/api/recommendations/similar/" .. '
                    'ids[math.random(#ids)])\nend\n')
        wrk(base, script, [ids], seconds=3)

        for rate in (10, 100):
            log(f"visibility at {rate} changes/s")
            results[f"visibility_{rate}"] = visibility(base, pg, n, rate, args.seconds, stock)

        target = stock.count

        def flipper(stop):
            w = Session(pg)
            k = 0
            t = time.monotonic()
            while not stop.is_set():
                k += 1
                x, now = neutral_flip(n, stock, target)
                w.run(f"UPDATE shop_product SET in_stock = {str(now).lower()} WHERE id = {x}")
                due = t + k / 100
                if due > time.monotonic():
                    time.sleep(due - time.monotonic())
            w.close()

        def under_changes():
            stop = threading.Event()
            ft = threading.Thread(target=flipper, args=(stop,))
            ft.start()
            try:
                return timed_wrk(base, script, [ids], args.seconds, serve.pid, sync_proc.pid)
            finally:
                stop.set()
                ft.join()

        # Alternating pairs, their median ratio: one pair's ratio moved from 0.94x to 1.36x between
        # runs of the same build (these machines vary 15-30%; a p99 of 15 s of wrk rests on about a
        # hundred requests).
        pairs = []
        for k in range(args.pairs):
            log(f"wrk similar-by-id without changes, then under 100 stock flips/s ({k + 1}/{args.pairs})")
            q = timed_wrk(base, script, [ids], args.seconds, serve.pid, sync_proc.pid)
            b = under_changes()
            ratio = b["p99_ms"] / q["p99_ms"] if q.get("p99_ms") and b.get("p99_ms") else float("nan")
            pairs.append({"quiet": q, "with_100_changes": b, "p99_ratio": ratio})
        middle = sorted(pairs, key=lambda p: p["p99_ratio"])[len(pairs) // 2]
        results["wrk_pairs"] = pairs
        results["wrk_quiet"] = middle["quiet"]
        results["wrk_100_changes"] = middle["with_100_changes"]
        results["p99_ratio"] = middle["p99_ratio"]
        # After the wrk runs: its random flips leave about half the catalogue in stock (from 90%),
        # which makes filtered searches cheaper and would flatter the run after it.
        log(f"visibility at {args.high_rate} changes/s, in transactions of 100")
        # Polled every 20 ms: at 5 ms the watchers' own searches (2.4 ms of CPU each at this size)
        # took over a core once a few were waiting, and fed on themselves (p99 3.6 s in one run).
        results["visibility_high"] = visibility(base, pg, n, args.high_rate, args.seconds, stock, rows=100,
                                                poll=0.02)

        log("new products: INSERT -> each other's nearest")
        w = Session(pg)
        url = f"http://127.0.0.1:{photo_port}/{photo}"
        w.run(f"INSERT INTO shop_product VALUES ({n}, 'new a', 'b', 'cat0', 1, true, '{url}'), "
              f"({n + 1}, 'new b', 'b', 'cat0', 1, true, '{url}')")
        t0 = time.monotonic()
        seen = None
        while time.monotonic() - t0 < 60:
            try:
                ans = get_json(f"{base}/api/recommendations/similar/{n}?min_similarity=0")
                if ans["results"] and ans["results"][0]["product_id"] == str(n + 1):
                    seen = time.monotonic() - t0
                    break
            except Exception:
                pass
            time.sleep(0.02)
        w.close()
        results["new_product_seconds"] = seen

        log(f"the highest sustained rate: {args.burst} flips with the server stopped, then its catch-up")
        serve.terminate()
        serve.wait(timeout=10)
        store_file = db[len("sqlite:"):]

        def feed_seq():
            out = subprocess.run(["sqlite3", store_file, "SELECT COALESCE(MAX(seq), 0) FROM catalogue_changes"],
                                 capture_output=True, text=True)
            return int(out.stdout.strip() or 0)

        before = feed_seq()
        w = Session(pg)
        t0 = time.monotonic()
        for start in range(0, args.burst, 500):
            ids = ",".join(str((start + j) % n) for j in range(min(500, args.burst - start)))
            w.run(f"UPDATE shop_product SET in_stock = NOT in_stock WHERE id IN ({ids})")
        committed = time.monotonic() - t0
        w.close()
        while feed_seq() - before < args.burst and time.monotonic() - t0 < 300:
            time.sleep(0.05)
        applied = time.monotonic() - t0
        results["burst"] = {"changes": args.burst, "commit_seconds": committed, "applied_seconds": applied,
                            "applied_per_s": args.burst / applied, "source_commits_per_s": args.burst / committed}
        _, base, ready_backlog = start_serve()
        extra = ready_backlog - ready_plain
        # Below half a second the backlog hides in the start's own noise (loading the model and index).
        results["catch_up"] = {"ready_without_backlog_s": ready_plain, "ready_with_backlog_s": ready_backlog,
                               "backlog": args.burst, "changes_per_s": args.burst / extra if extra > 0.5 else None}
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        pg.stop()

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "sync_bench.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"\n== the live catalogue: {args.count} products, ewall sync + ewall-serve on loopback ==")
    for name in ("visibility_10", "visibility_100", "visibility_high"):
        v = results[name]
        rate = v["rate_per_s"]
        tx = " in transactions of 100" if v.get("rows_per_transaction", 1) > 1 else ""
        print(f"stock flip -> gone from the answer, {rate}/s{tx} (achieved {v.get('achieved_per_s', 0):.0f}/s): "
              f"p50 {v.get('p50_ms', 0):.0f} ms, p95 {v.get('p95_ms', 0):.0f} ms, p99 {v.get('p99_ms', 0):.0f} ms "
              f"(n={v['n']}, not seen within 10 s: {v['not_seen_within_10s']})")
    q, b = results["wrk_quiet"], results["wrk_100_changes"]
    each = ", ".join(f"{p['p99_ratio']:.2f}x" for p in results["wrk_pairs"])
    print(f"similar-by-id, wrk 64 connections: {q.get('requests_per_s', 0):.0f} req/s, p99 {q.get('p99_ms', 0):.1f} ms "
          f"without changes; {b.get('requests_per_s', 0):.0f} req/s, p99 {b.get('p99_ms', 0):.1f} ms with 100 flips/s "
          f"(p99 ratio {results['p99_ratio'] or 0:.2f}x, the median of {each})")
    print(f"  CPU meanwhile: ewall-serve {q['serve_cpu_ms_per_request']:.2f} / {b['serve_cpu_ms_per_request']:.2f} ms a request; "
          f"ewall sync {q['sync_cpu_share']:.1%} / {b['sync_cpu_share']:.1%} and the rest (PostgreSQL, psql, wrk) "
          f"{q['others_cpu_share']:.1%} / {b['others_cpu_share']:.1%} of the machine's busy time")
    print(f"new product, INSERT -> nearest of its twin: {results['new_product_seconds']} s (model included)")
    b, c = results["burst"], results["catch_up"]
    print(f"highest sustained rate: {b['changes']} flips committed at {b['source_commits_per_s']:.0f}/s, applied by "
          f"ewall sync at {b['applied_per_s']:.0f}/s ({b['applied_seconds']:.1f} s)")
    rate = (f"catch-up {c['changes_per_s']:.0f} changes/s" if c["changes_per_s"]
            else f"applied within the start's own noise (0.5 s): faster than {c['backlog'] / 0.5:.0f} changes/s")
    print(f"restarted replica: ready in {c['ready_with_backlog_s']:.1f} s with {c['backlog']} changes behind, "
          f"{c['ready_without_backlog_s']:.1f} s without: {rate}")


if __name__ == "__main__":
    main()
