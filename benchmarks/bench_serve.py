"""Latency and throughput of ``jaxrec serve`` over loopback, and exact vs approximate top-k at 1M items.

Usage (from the project root):
  python benchmarks/bench_serve.py --size lfm2k                 # real lfm2k BPR run (synthetic if absent)
  python benchmarks/bench_serve.py --size 1m                    # 1,000,000 items x 64 dims, synthetic
  python benchmarks/bench_serve.py --size 1m --ann hnswlib faiss usearch --skip-http

For each size: a run is trained once into ``runs/bench_serve/<size>`` (BPR-MF, 64 dims;
lfm2k: the real data, 20 epochs; 1m: the synthetic generator, 1,000,000 items, 2,000 users,
200,000 interactions, 1 epoch: the item table is what matters for serving). Then ``jaxrec
serve`` runs in a subprocess on 127.0.0.1 with a fresh state folder and:

- **single client**: ``--requests`` sequential ``GET /recommend?user_id=U&k=20`` (random
  known users, ``exclude_seen`` on, one keep-alive connection) after ``--warmup`` requests
  that compile every batch shape: p50 / p99 latency;
- **16 clients**: ``--clients`` threads, each its own keep-alive connection, ``--requests``
  requests in all (bounded): requests per second, p50 / p99, and the mean batch size the
  micro-batcher formed (from ``/metrics``).

At 1m, the approximate index (``--ann``): the trained item embeddings in an inner-product
index of each library named, queried with the same user vectors the server ranks;
recall@20 against the exact top-20 (``Recommender.recommend``, the jitted path the server
uses, ``exclude_seen`` off so both rank the same items) over ``--ann-queries`` users, and
single-query latency of each (p50) with the speed-up over exact. The load average is printed
before and after: the 2 cores are shared, so every figure depends on it.

Measured figures, with the load they were taken under: docs/serving.md ("Measured").
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
LFM2K = ROOT / ".." / "shared" / "data" / "lfm2k"
RUNS = ROOT / "runs" / "bench_serve"


def load_average() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


# ---------------------------------------------------------------------- runs
def train_run(size: str) -> Path:
    """The run to serve (trained once, then reused)."""
    workdir = RUNS / size
    if (workdir / "metrics.json").exists():
        return workdir
    from jaxrec.cli.main import main

    if size == "lfm2k" and (LFM2K / "lfm2k.inter").exists():
        args = ["train", str(ROOT / "experiments/configs/lfm2k/bpr.yaml"), "--set", "train.epochs=20"]
    else:
        n_users, n_items, n = (1858, 1425, 55_000) if size == "lfm2k" else (2000, 1_000_000, 200_000)
        config = workdir.parent / f"{size}.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(json.dumps({
            "model": {"name": "bprmf", "args": {"embedding_size": 64}},
            "data": {"synthetic": {"n_users": n_users, "n_items": n_items, "n_interactions": n, "seed": 0,
                                   "dims": {}}},
            "train": {"epochs": 1 if size == "1m" else 20, "batch_size": 4096, "learning_rate": 0.01,
                      "seed": 0},
            "eval": {"ks": [20], "metrics": ["recall"]}}))
        args = ["train", str(config)]
    started = time.perf_counter()
    assert main([*args, "--workdir", str(workdir), "--quiet"]) == 0
    print(f"trained {workdir} in {time.perf_counter() - started:.0f} s", flush=True)
    return workdir


# ---------------------------------------------------------------------- the server
class Server:
    def __init__(self, run_dir: Path, *options: str):
        self.state = Path(tempfile.mkdtemp(prefix="bench_serve_state_"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        env.pop("XLA_FLAGS", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jaxrec.cli.main", "serve", str(run_dir), "--port", "0", "--state",
             str(self.state), *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            cwd=ROOT)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in self.process.stdout] + [lines.put(None)],
                         daemon=True).start()
        deadline = time.monotonic() + 900
        while True:
            line = lines.get(timeout=max(deadline - time.monotonic(), 1))
            if line is None:
                raise RuntimeError(f"jaxrec serve exited with {self.process.wait()}")
            print("  server:", line.rstrip(), flush=True)
            if " on http://" in line:
                host_port = line.split(" on http://", 1)[1].split()[0]
                self.host, port = host_port.rsplit(":", 1)
                self.port = int(port)
                break

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=600)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.state, ignore_errors=True)


def fetch(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    response = conn.getresponse()
    return response.status, response.read()


def timed_requests(server: Server, users: list[int], k: int) -> list[float]:
    conn = server.connection()
    latencies = []
    try:
        for user in users:
            started = time.perf_counter()
            status, body = fetch(conn, f"/recommend?user_id={user}&k={k}")
            latencies.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"GET /recommend answered {status}: {body[:200]!r}")
    finally:
        conn.close()
    return latencies


def batch_stats(server: Server) -> tuple[float, float]:
    conn = server.connection()
    _, text = fetch(conn, "/metrics")
    conn.close()
    values = {}
    for line in text.decode().splitlines():
        if line.startswith('jaxrec_batch_size_') and 'kind="recommend"' in line and "_bucket" not in line:
            values[line.split("{")[0]] = float(line.rsplit(" ", 1)[1])
    return values.get("jaxrec_batch_size_count", 0.0), values.get("jaxrec_batch_size_sum", 0.0)


def summary(latencies: list[float]) -> str:
    ms = np.asarray(latencies) * 1e3
    return f"p50 {np.percentile(ms, 50):.2f} ms, p99 {np.percentile(ms, 99):.2f} ms, mean {ms.mean():.2f} ms"


def concurrent(server: Server, n_users: int, rng: random.Random, args, label: str) -> None:
    """``args.clients`` threads, ``args.requests`` requests in all, each thread its own connection."""
    count0, sum0 = batch_stats(server)
    per_client = max(args.requests // args.clients, 1)
    results: list[list[float]] = [[] for _ in range(args.clients)]
    plans = [[rng.randrange(n_users) for _ in range(per_client)] for _ in range(args.clients)]
    threads = [threading.Thread(target=lambda n=n: results[n].extend(timed_requests(server, plans[n], args.k)))
               for n in range(args.clients)]
    started = time.perf_counter()
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - started
    count1, sum1 = batch_stats(server)
    together = [x for r in results for x in r]
    print(f"  {args.clients} clients, {label}: {len(together)} requests in {wall:.2f} s, "
          f"{len(together) / wall:.0f} req/s; {summary(together)}; mean batch "
          f"{(sum1 - sum0) / max(count1 - count0, 1):.1f} requests ({int(count1 - count0)} calls)", flush=True)


def bench_http(run_dir: Path, args) -> None:
    server = Server(run_dir, "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms))
    try:
        conn = server.connection()
        n_users = json.loads(fetch(conn, "/status")[1])["n_users"]
        conn.close()
        rng = random.Random(0)
        timed_requests(server, [rng.randrange(n_users) for _ in range(args.warmup)], args.k)
        concurrent(server, n_users, rng, args, "warm-up pass (compiles the batch shapes it meets)")
        print(f"  {load_average()}", flush=True)
        single = timed_requests(server, [rng.randrange(n_users) for _ in range(args.requests)], args.k)
        print(f"  1 client, {len(single)} requests: {summary(single)}", flush=True)

        concurrent(server, n_users, rng, args, "measured")
        print(f"  {load_average()}", flush=True)
    finally:
        server.stop()


# ---------------------------------------------------------------------- exact vs approximate
def bench_ann(run_dir: Path, args) -> None:
    from jaxrec.serve import Recommender

    rec = Recommender.load(run_dir)
    user_emb, item_emb = rec.embeddings()
    item_emb = np.ascontiguousarray(item_emb, np.float32)
    rng = np.random.default_rng(0)
    users = rng.choice(rec.n_users, size=min(args.ann_queries, rec.n_users), replace=False)
    k = 20
    rec.recommend(users[:1], k=k, exclude_seen=False)  # compile
    exact_items = np.empty((users.size, k), np.int64)
    exact_times = []
    for row, user in enumerate(users):
        started = time.perf_counter()
        items, _ = rec.recommend([int(user)], k=k, exclude_seen=False)
        exact_times.append(time.perf_counter() - started)
        exact_items[row] = items[0]
    exact_p50 = float(np.median(exact_times))
    print(f"  exact top-{k} over {rec.n_items:,} items (Recommender.recommend, one user a call): "
          f"{summary(exact_times)}  [{load_average()}]", flush=True)
    queries = np.ascontiguousarray(user_emb[users], np.float32)

    for library in args.ann:
        started = time.perf_counter()
        search = build_index(library, item_emb, args)
        built = time.perf_counter() - started
        for setting, query in search:
            found, times = [], []
            for row in range(users.size):
                t0 = time.perf_counter()
                found.append(query(queries[row:row + 1], k)[0])
                times.append(time.perf_counter() - t0)
            recall = np.mean([len(set(f.tolist()) & set(e.tolist())) / k for f, e in zip(found, exact_items)])
            p50 = float(np.median(times))
            print(f"  {library} ({setting}; built in {built:.0f} s): recall@{k} {recall:.3f}, {summary(times)}, "
                  f"{exact_p50 / p50:.1f}x faster than exact (p50)  [{load_average()}]", flush=True)


def build_index(library: str, items: np.ndarray, args):
    """(setting name, query(vectors (1, d), k) -> ids (1, k)) pairs, one per search setting."""
    n, d = items.shape
    threads = args.ann_threads
    if library == "hnswlib":
        import hnswlib

        index = hnswlib.Index(space="ip", dim=d)
        index.init_index(max_elements=n, M=args.hnsw_m, ef_construction=args.hnsw_ef_construction, random_seed=0)
        index.set_num_threads(threads)
        index.add_items(items, np.arange(n))
        index.set_num_threads(1)

        def setting(ef):
            def query(q, k):
                index.set_ef(ef)
                return index.knn_query(q, k=k)[0]
            return f"HNSW M={args.hnsw_m} efC={args.hnsw_ef_construction} ef={ef}", query

        return [setting(ef) for ef in args.ef]
    if library == "faiss":
        import faiss

        faiss.omp_set_num_threads(threads)
        index = faiss.IndexHNSWFlat(d, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = args.hnsw_ef_construction
        index.add(items)
        faiss.omp_set_num_threads(1)

        def setting(ef):
            def query(q, k):
                index.hnsw.efSearch = ef
                return index.search(q, k)[1]
            return f"IndexHNSWFlat M={args.hnsw_m} efC={args.hnsw_ef_construction} efSearch={ef}", query

        return [setting(ef) for ef in args.ef]
    if library == "usearch":
        from usearch.index import Index

        index = Index(ndim=d, metric="ip", dtype="f32", connectivity=args.hnsw_m,
                      expansion_add=args.hnsw_ef_construction)
        index.add(np.arange(n), items, threads=threads)

        def setting(ef):
            def query(q, k):
                index.expansion_search = ef
                return np.asarray(index.search(q, k, threads=1).keys).reshape(1, -1)
            return f"HNSW connectivity={args.hnsw_m} expansion_add={args.hnsw_ef_construction} expansion_search={ef}", query

        return [setting(ef) for ef in args.ef]
    raise SystemExit(f"--ann: unknown library {library!r} (hnswlib, faiss, usearch)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=("lfm2k", "1m"), nargs="+", default=["lfm2k", "1m"])
    parser.add_argument("--requests", type=int, default=400, help="requests per phase (bounded load)")
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=1.0)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--ann", nargs="*", default=["hnswlib"], help="libraries for the 1m comparison")
    parser.add_argument("--ann-queries", type=int, default=200)
    parser.add_argument("--ann-threads", type=int, default=2, help="threads for building the index")
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--hnsw-ef-construction", type=int, default=100)
    parser.add_argument("--ef", type=int, nargs="+", default=[64, 128, 256], help="search-time beam widths")
    args = parser.parse_args()
    print(f"bench_serve: {load_average()}, {os.cpu_count()} CPUs", flush=True)
    for size in args.size:
        run_dir = train_run(size)
        print(f"{size}: run {run_dir}", flush=True)
        if not args.skip_http:
            bench_http(run_dir, args)
        if size == "1m" and args.ann:
            bench_ann(run_dir, args)


if __name__ == "__main__":
    main()
