"""Seconds per training epoch and per evaluation of LightGCN and MMGCN on lfm2k, against MMRec.

Usage (from the project root):
    python benchmarks/bench_graph_models.py [--models lightgcn mmgcn] [--epochs 10]
        [--data ../shared/data/lfm2k]
    python benchmarks/bench_graph_models.py --chunks     # propagation chunk sizes (CPU)
    python benchmarks/bench_graph_models.py --native     # the CSR custom call against XLA's path

Each model is built from its config in ``experiments/configs/lfm2k/`` exactly as
``jaxrec train`` builds it, compiled, then timed over ``--epochs`` epochs: the device steps
(one scanned call per epoch, the batches already on the device) and one evaluation of the
valid and test splits (full ranking over all items). Both wall seconds and process CPU
seconds are printed: on a shared machine the wall time depends on the load (printed too),
while on an idle machine the wall time lies between CPU seconds / cores (both cores busy
throughout) and CPU seconds (one core at a time), so the two CPU ratios bracket the speed-up. The ratio is to
MMRec's anchors in ``../shared/anchors/mmrec_lfm2k.json`` (same data, 2 CPU cores, idle):
LightGCN 0.2895 s/epoch, MMGCN 5.2892 s/epoch.

``--chunks`` times one propagation and its gradient over the lfm2k graph for several edge
chunk sizes and widths, the measurement behind ``jaxrec.models.lightgcn.chunk_size_for``.

``--native`` times :func:`jaxrec.data.graph.propagate_fixed` over the lfm2k graph with its CPU
custom call (``csr_propagate.cc``) and with XLA's gather + sorted scatter-add
(``JAXREC_NATIVE_KERNELS=0`` at trace time), forward and gradient, per width, checks that the
two give the same bits and prints the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
ANCHORS = ROOT / ".." / "shared" / "anchors" / "mmrec_lfm2k.json"
MMREC_NAMES = {"lightgcn": "LightGCN", "mmgcn": "MMGCN"}


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    result = jax.block_until_ready(fn())
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bench_model(name: str, data: str, epochs: int) -> dict:
    from jaxrec.train import StepRunner, init_state, load_config
    from jaxrec.train import evaluate_params, make_encoder, prepare_eval_splits, prepare_experiment

    config = load_config(ROOT / "experiments" / "configs" / "lfm2k" / f"{name}.yaml", [f"data.path={data}"])
    exp = prepare_experiment(config)
    runner = StepRunner(exp.module, exp.tx, exp.loss_weights, parallel="none", batch_size=config.train.batch_size)
    state = runner.put_state(init_state(exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx,
                                        config.train.seed))
    ctx = runner.put_ctx(exp.built.ctx)
    splits = prepare_eval_splits(exp)
    encoder = make_encoder(exp.module)

    def evaluate(state):
        params = runner.get_state(state).params
        return [evaluate_params(exp, encoder, params, ctx, splits[s])["recall@20"] for s in ("valid", "test")]

    tick = time.perf_counter()
    state, _ = runner.run(state, ctx, runner.put_batches(exp.sampler.batches(0)))
    evaluate(state)
    compile_seconds = time.perf_counter() - tick
    train, evals = [], []
    for epoch in range(1, epochs + 1):
        batches = runner.put_batches(exp.sampler.batches(epoch))
        (state, _), wall, cpu = _timed(lambda: runner.run(state, ctx, batches))
        train.append((wall, cpu))
        _, wall, cpu = _timed(lambda: evaluate(state))
        evals.append((wall, cpu))
    anchor = json.loads(ANCHORS.read_text())[MMREC_NAMES[name]] if ANCHORS.exists() else {}
    row = {
        "model": name, "epochs_timed": epochs, "compile_s": round(compile_seconds, 2),
        "train_wall_s": statistics.median(w for w, _ in train), "train_cpu_s": statistics.median(c for _, c in train),
        "eval_wall_s": statistics.median(w for w, _ in evals), "eval_cpu_s": statistics.median(c for _, c in evals),
        "mmrec_train_s": anchor.get("train_s_per_epoch"), "mmrec_eval_s": anchor.get("eval_s_valid_plus_test"),
    }
    cores = os.cpu_count() or 1
    if row["mmrec_train_s"]:
        row["speedup_wall"] = row["mmrec_train_s"] / row["train_wall_s"]
        row["speedup_cpu"] = row["mmrec_train_s"] / row["train_cpu_s"]
        row["speedup_cpu_over_cores"] = row["mmrec_train_s"] / (row["train_cpu_s"] / cores)
    return row


def bench_chunks(data: str) -> None:
    from jaxrec import data as jdata
    from jaxrec.data import graph as jgraph

    graph = jgraph.bipartite_graph(jdata.load(data))
    edges = jgraph.normalized_adjacency(graph).to_device()
    print(f"lfm2k graph: {graph.n_nodes} nodes, {edges.n_edges} directed edges; CPU ms per call (wall ms)")
    for width in (64, 192, 256, 384):
        x = jax.random.normal(jax.random.PRNGKey(0), (graph.n_nodes, width))
        cells = []
        for chunk in (None, 256, 1024, 4096, 8192, 16384):
            forward = jax.jit(lambda e, x, c=chunk: jgraph.propagate(e, x, indices_are_sorted=True, chunk_size=c))
            grad = jax.jit(jax.grad(lambda x, e, c=chunk: jnp.sum(
                jgraph.propagate(e, x, indices_are_sorted=True, chunk_size=c) ** 2)))
            timings = []
            for fn, args in ((forward, (edges, x)), (grad, (x, edges))):
                jax.block_until_ready(fn(*args))
                runs = [_timed(lambda: fn(*args))[1:] for _ in range(10)]
                timings.append("%.1f (%.1f)" % (1e3 * statistics.median(c for _, c in runs),
                                                1e3 * statistics.median(w for w, _ in runs)))
            cells.append(f"chunk {chunk or 'all'}: fwd {timings[0]}, grad {timings[1]}")
        print(f"d={width}:\n  " + "\n  ".join(cells))


def bench_native(data: str) -> None:
    import numpy as np

    from jaxrec import data as jdata
    from jaxrec.data import graph as jgraph
    from jaxrec.data.graph import _csr_native

    if not _csr_native.native_available():
        raise SystemExit("the native kernel is not available here (no compiler, or JAXREC_NATIVE_KERNELS=0)")
    graph = jgraph.bipartite_graph(jdata.load(data))
    fixed = jgraph.fixed_graph(jgraph.normalized_adjacency(graph), symmetric=True).to_device()
    print(f"lfm2k graph: {graph.n_nodes} nodes, {fixed.n_edges} directed edges; ms per call, median of 10 runs "
          "of 20 calls (wall; CPU in parentheses); load average %.1f" % os.getloadavg()[0])
    for width in (64, 128, 192, 384):
        x = jax.random.normal(jax.random.PRNGKey(0), (graph.n_nodes, width))
        chunk = max(8192, 2**21 // (4 * width))
        results, cells = {}, []
        for path in ("native", "xla"):
            os.environ["JAXREC_NATIVE_KERNELS"] = "1" if path == "native" else "0"
            forward = jax.jit(lambda x: jgraph.propagate_fixed(fixed, x, chunk_size=chunk))
            grad = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(jgraph.propagate_fixed(fixed, x, chunk_size=chunk)))))
            results[path] = (np.asarray(forward(x)), np.asarray(grad(x)))
            for label, fn in (("fwd", forward), ("grad", grad)):
                runs = []
                for _ in range(10):
                    _, wall, cpu = _timed(lambda: [fn(x) for _ in range(20)][-1])
                    runs.append((wall / 20, cpu / 20))
                cells.append((path, label, statistics.median(w for w, _ in runs), statistics.median(c for _, c in runs)))
        os.environ.pop("JAXREC_NATIVE_KERNELS")
        same = all(np.array_equal(a, b) for a, b in zip(results["native"], results["xla"]))
        timing = {(p, l): (w, c) for p, l, w, c in cells}
        print(f"d={width}: bit-identical {same}; " + "; ".join(
            f"{label} native {1e3 * timing['native', label][0]:.3f} ({1e3 * timing['native', label][1]:.3f}) "
            f"xla {1e3 * timing['xla', label][0]:.3f} ({1e3 * timing['xla', label][1]:.3f}) "
            f"-> {timing['xla', label][0] / timing['native', label][0]:.1f}x" for label in ("fwd", "grad")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lightgcn", "mmgcn"], choices=sorted(MMREC_NAMES))
    parser.add_argument("--data", default=str(ROOT / ".." / "shared" / "data" / "lfm2k"))
    parser.add_argument("--epochs", type=int, default=10, help="timed epochs (and evaluations)")
    parser.add_argument("--chunks", action="store_true", help="time propagation chunk sizes instead")
    parser.add_argument("--native", action="store_true", help="time the CSR custom call against XLA's path instead")
    args = parser.parse_args()
    if args.chunks:
        bench_chunks(args.data)
        return
    if args.native:
        bench_native(args.data)
        return
    print(f"{os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at start; jax {jax.__version__}")
    print("| model | train s/epoch wall | CPU s/epoch | eval s (valid+test) wall | MMRec s/epoch | "
          "MMRec / ours (wall) | MMRec / ours (CPU s .. CPU s / cores) | compile s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models:
        r = bench_model(name, args.data, args.epochs)
        print(f"| {name} | {r['train_wall_s']:.3f} | {r['train_cpu_s']:.3f} | {r['eval_wall_s']:.3f} | "
              f"{r['mmrec_train_s']} | {r.get('speedup_wall', float('nan')):.1f}x | "
              f"{r.get('speedup_cpu', float('nan')):.1f}x .. {r.get('speedup_cpu_over_cores', float('nan')):.1f}x | "
              f"{r['compile_s']} |", flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
