"""Per-device memory, communication and step time of the (data, model) mesh at several table sizes.

Usage (from the project root):
    python benchmarks/bench_mesh.py [--sizes 25000x10000,100000x40000,400000x160000]
        [--dim 64] [--batch 4096] [--steps 8] [--repeats 3] [--models bprmf,lightgcn]
        [--graph-max-users 100000] [--eval | --eval-only] [--json FILE]
    python benchmarks/bench_mesh.py --checkpoint [--sizes ...] [--dim 64]

Without accelerators it runs on 4 host-platform devices (``XLA_FLAGS`` is set to that unless
already set), which share the machine's cores: the memory and communication figures are
what a real mesh of that shape holds and sends; the times are only comparable with each
other. On a GPU/TPU host the real devices are used.

For every model, table size ``n_users x n_items`` (width ``--dim``, Adam) and mesh
``D x M`` (every factorization of the device count, and one device without a mesh) it
prints, from the compiled step and the live state:

- ``state/dev``: bytes of the train state one device holds (params + Adam moments), read
  from the arrays' addressable shards;
- ``temp/dev``: the compiled step's temporary buffers per device (XLA's memory analysis);
- ``comm/step``: bytes produced by the collectives of one update (all-reduce, all-gather,
  reduce-scatter, all-to-all, collective-permute in the compiled HLO, per device);
- ``ms/step`` and examples per second (median of ``--repeats`` calls of ``--steps`` steps).

``--eval`` also times one full-ranking evaluation of ``--eval-users`` users against the
largest item table (``--eval-only``: only that) both ways: ``jaxrec.eval.evaluate_prepared_sharded`` (top-k per shard,
merged) and the one-device program compiled over sharded inputs (GSPMD decides).

``--checkpoint`` saves and restores a BPR-MF train state (Adam) of the largest size on a
``{data: 1, model: N}`` mesh both ways, each in a fresh process: ``sharded`` (the state as it
is on the mesh: Orbax writes each device's shards; jaxrec's path) and ``gathered`` (the
logical state copied to the host first, then written: the path before per-shard saves). It
prints the seconds and CPU seconds of the save, the restore onto the mesh, and the process's
peak resident memory above the state itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

if "XLA_FLAGS" not in os.environ and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from jaxrec import eval as jeval  # noqa: E402
from jaxrec.data import graph as jgraph  # noqa: E402
from jaxrec.models.bprmf import BPRMF  # noqa: E402
from jaxrec.models.lightgcn import LightGCN  # noqa: E402
from jaxrec.train import MeshStepRunner, StepRunner, TrainConfig, init_state, make_mesh, make_optimizer  # noqa: E402
from jaxrec.train._state import abstract_state  # noqa: E402

_COLLECTIVE = re.compile(r"=\s*(\(?[^=]*?\)?)\s+(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
                         r"(-start)?\(")
_SHAPE = re.compile(r"(pred|s8|u8|s16|u16|bf16|f16|s32|u32|f32|s64|u64|f64)\[([\d,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "f32": 4,
          "s64": 8, "u64": 8, "f64": 8}


def collective_bytes(hlo_text: str) -> dict[str, int]:
    """Bytes produced per device by each kind of collective in a compiled module's HLO (ops in
    a loop body count once: one scanned step)."""
    out: dict[str, int] = {}
    for line in hlo_text.splitlines():
        match = _COLLECTIVE.search(line)
        if not match:
            continue
        size = 0
        for dtype, dims in _SHAPE.findall(match.group(1)):
            size += _BYTES[dtype] * int(np.prod([int(d) for d in dims.split(",") if d] or [1]))
        out[match.group(2)] = out.get(match.group(2), 0) + size
    return out


def _mib(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def random_graph(n_users: int, n_items: int, per_user: int, rng) -> jgraph.Edges:
    users = np.repeat(np.arange(n_users, dtype=np.int32), per_user)
    items = rng.integers(0, n_items, users.size).astype(np.int32)
    graph = jgraph.BipartiteGraph.from_pairs(users, items, n_users=n_users, n_items=n_items)
    return jgraph.normalized_adjacency(graph).to_device()


def build(model: str, n_users: int, n_items: int, dim: int, rng):
    if model == "bprmf":
        return BPRMF(n_users=n_users, n_items=n_items, embedding_size=dim), {}
    if model == "lightgcn":
        return (LightGCN(n_users=n_users, n_items=n_items, embedding_size=dim, n_layers=1),
                {"graph": random_graph(n_users, n_items, 10, rng)})
    raise SystemExit(f"unknown --models entry {model!r}; expected bprmf or lightgcn")


def bench_one(model, n_users, n_items, mesh, args, rng) -> dict:
    module, ctx = build(model, n_users, n_items, args.dim, rng)
    steps, batch = args.steps, args.batch
    tx = make_optimizer(TrainConfig(learning_rate=1e-3), 1000)
    batches = {"users": rng.integers(0, n_users, (steps, batch)).astype(np.int32),
               "pos_items": rng.integers(0, n_items, (steps, batch)).astype(np.int32),
               "neg_items": rng.integers(0, n_items, (steps, batch, 1)).astype(np.int32),
               "weights": np.ones((steps, batch), np.float32)}
    example = {k: v[0] for k, v in batches.items()}
    target = abstract_state(module, ctx, example, tx, 0)
    weights = {"bpr": 1.0, "reg": 1e-4}
    if mesh is None:
        runner = StepRunner(module, tx, weights, parallel="none", batch_size=batch)
        state = runner.put_state(init_state(module, ctx, example, tx, 0))
    else:
        runner = MeshStepRunner(module, tx, weights, target=target, n_users=n_users, n_items=n_items, data=mesh[0],
                                model=mesh[1], batch_size=batch)
        state = runner.init_state(module, ctx, example, tx, 0)
    ctx, placed = runner.put_ctx(ctx), runner.put_batches(batches)
    tick = time.perf_counter()
    compiled = runner._run.lower(state, ctx, placed).compile()
    compile_s = time.perf_counter() - tick
    memory = compiled.memory_analysis()
    comm = collective_bytes(compiled.as_text())
    state, _ = runner.run(state, ctx, placed)  # warm
    times = []
    for _ in range(args.repeats):
        tick = time.perf_counter()
        state, metrics = runner.run(state, ctx, placed)
        jax.block_until_ready(metrics)
        times.append((time.perf_counter() - tick) / steps)
    per_device: dict = {}
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    seconds = statistics.median(times)
    return {"model": model, "n_users": n_users, "n_items": n_items, "dim": args.dim, "batch": batch,
            "mesh": "none" if mesh is None else f"{mesh[0]}x{mesh[1]}",
            "state_bytes_per_device": max(per_device.values()),
            "temp_bytes_per_device": int(getattr(memory, "temp_size_in_bytes", 0) or 0),
            "comm_bytes_per_step": comm, "ms_per_step": 1e3 * seconds, "examples_per_s": batch / seconds,
            "compile_s": compile_s}


def bench_eval(n_users: int, n_items: int, args, rng) -> list[dict]:
    """The sharded evaluator against GSPMD's partitioning of the one-device program."""
    from jaxrec.eval import _ranking

    d = args.dim
    user_emb = rng.normal(size=(n_users, d)).astype(np.float32)
    item_emb = rng.normal(size=(n_items, d)).astype(np.float32)
    users = rng.choice(n_users, args.eval_users, replace=False)
    train = np.stack([np.repeat(users, 10), rng.integers(0, n_items, users.size * 10)], 1)
    test = np.stack([np.repeat(users, 2), rng.integers(0, n_items, users.size * 2)], 1)
    split = jeval.prepare_split(num_items=n_items, train_pairs=train, target_pairs=test, batch_size=args.eval_batch)
    ks, names = (10, 20, 50), ("recall", "ndcg")
    rows = []
    n = jax.device_count()
    for model_size in [m for m in (1, 2, 4, 8) if n % m == 0 and m > 1]:
        mesh = make_mesh(n // model_size, model_size)
        spec = NamedSharding(mesh, P("model", None))
        pad = lambda x: np.pad(x, [(0, -x.shape[0] % model_size), (0, 0)])  # noqa: E731
        u, i = jax.device_put(pad(user_emb), spec), jax.device_put(pad(item_emb), spec)
        mask = np.zeros(i.shape[0], bool)
        mask[:n_items] = True
        mask = jax.device_put(mask, NamedSharding(mesh, P("model")))
        device_metrics, list_len = names, max(ks)
        kwargs = {"ks": ks, "metric_names": device_metrics, "list_len": list_len}
        ways = {
            "per-shard top-k": (jeval._sharded.sharded_metric_sums,  # noqa: SLF001
                                dict(kwargs, mesh=mesh, data_axis="data", model_axis="model")),
            "GSPMD": (_ranking.split_metric_sums, dict(kwargs, score_fn=_ranking.dot_product_scores)),
        }
        results = {}
        for way, (fn, kw) in ways.items():
            compiled = fn.lower(split.batches, mask, u, i, **kw).compile()
            memory = compiled.memory_analysis()
            comm = collective_bytes(compiled.as_text())
            out = fn(split.batches, mask, u, i, **kw)
            results[way] = np.asarray(out[0], np.float64).sum(0)
            times = []
            for _ in range(args.repeats):
                tick = time.perf_counter()
                jax.block_until_ready(fn(split.batches, mask, u, i, **kw))
                times.append(time.perf_counter() - tick)
            rows.append({"mesh": f"{n // model_size}x{model_size}", "way": way, "n_items": n_items,
                         "eval_users": args.eval_users, "eval_batch": args.eval_batch,
                         "seconds": statistics.median(times), "comm_bytes_per_batch": comm,
                         "temp_bytes_per_device": int(getattr(memory, "temp_size_in_bytes", 0) or 0)})
        same = np.allclose(results["per-shard top-k"], results["GSPMD"], rtol=1e-5)
        rows[-1]["same_metrics"] = rows[-2]["same_metrics"] = bool(same)
    return rows


def _checkpoint_child(way: str, n_users: int, n_items: int, dim: int, folder: str) -> dict:
    import resource
    import tempfile

    from jaxrec.train._checkpoint import Checkpoints

    n = jax.device_count()
    module, ctx = build("bprmf", n_users, n_items, dim, np.random.default_rng(0))
    tx = make_optimizer(TrainConfig(learning_rate=1e-3), 1000)
    example = {"users": np.zeros(8, np.int32), "pos_items": np.zeros(8, np.int32),
               "neg_items": np.zeros((8, 1), np.int32), "weights": np.ones(8, np.float32)}
    target = abstract_state(module, ctx, example, tx, 0)
    runner = MeshStepRunner(module, tx, {"bpr": 1.0}, target=target, n_users=n_users, n_items=n_items, data=1,
                            model=n, batch_size=8)
    state = jax.block_until_ready(runner.init_state(module, ctx, example, tx, 0))
    state_bytes = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    checkpoints = Checkpoints(tempfile.mkdtemp(dir=folder), keep=1)
    tick, cpu = time.perf_counter(), time.process_time()
    if way == "sharded":
        checkpoints.save(1, state, {}, is_best=False, logical_shapes=runner.layout.shapes)
    else:
        checkpoints.save(1, jax.tree.map(np.asarray, runner.get_state(state)), {}, is_best=False)
    save_s, save_cpu = time.perf_counter() - tick, time.process_time() - cpu
    save_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    del state
    tick, cpu = time.perf_counter(), time.process_time()
    restored, _ = checkpoints.restore(target, 1, read_as=runner.restore_target(target))
    jax.block_until_ready(restored)
    restore_s, restore_cpu = time.perf_counter() - tick, time.process_time() - cpu
    checkpoints.close()
    return {"way": way, "n_users": n_users, "n_items": n_items, "dim": dim, "mesh": f"1x{n}",
            "state_bytes": state_bytes, "save_s": save_s, "save_cpu_s": save_cpu, "restore_s": restore_s,
            "restore_cpu_s": restore_cpu, "save_peak_rss_above_start": save_rss - base_rss}


def bench_checkpoint(n_users: int, n_items: int, args) -> list[dict]:
    import subprocess
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for way in ("sharded", "gathered"):
            code = (f"import json, sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
                    f"import bench_mesh; print(json.dumps(bench_mesh._checkpoint_child({way!r}, {n_users}, "
                    f"{n_items}, {args.dim}, {folder!r})))")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="25000x10000,100000x40000,400000x160000")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="bprmf,lightgcn")
    parser.add_argument("--graph-max-users", type=int, default=100000,
                        help="skip graph models above this many users (propagation is slow on CPU)")
    parser.add_argument("--eval", action="store_true")
    parser.add_argument("--eval-only", action="store_true", help="only the evaluation comparison")
    parser.add_argument("--eval-users", type=int, default=8192)
    parser.add_argument("--eval-batch", type=int, default=1024)
    parser.add_argument("--checkpoint", action="store_true", help="only the checkpoint comparison")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    sizes = [tuple(int(x) for x in size.split("x")) for size in args.sizes.split(",")]
    if args.checkpoint:
        n_users, n_items = sizes[-1]
        print(f"checkpoint of a BPR-MF state (Adam), {n_users} x {n_items} x {args.dim}; load average "
              f"{os.getloadavg()[0]:.1f}")
        rows = bench_checkpoint(n_users, n_items, args)
        for row in rows:
            print(f"{row['way']:>9} on {row['mesh']}: state {_mib(row['state_bytes'])} MiB; save {row['save_s']:.2f} s "
                  f"({row['save_cpu_s']:.2f} CPU-s), peak RSS +{_mib(row['save_peak_rss_above_start'])} MiB; restore "
                  f"onto the mesh {row['restore_s']:.2f} s ({row['restore_cpu_s']:.2f} CPU-s)", flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(rows, f, indent=1)
        return
    n = jax.device_count()
    meshes = [None] + [(n // m, m) for m in range(1, n + 1) if n % m == 0]
    rng = np.random.default_rng(0)
    print(f"{n} {jax.devices()[0].platform} device(s) ({jax.devices()[0].device_kind}); dim {args.dim}, batch "
          f"{args.batch}, Adam; load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':9} {'users x items':>17} {'mesh':>5} {'state/dev MiB':>14} {'temp/dev MiB':>13} "
          f"{'comm/step MiB':>14} {'ms/step':>8} {'ex/s':>9}")
    rows = []
    for model in [] if args.eval_only else args.models.split(","):
        for n_users, n_items in sizes:
            if model != "bprmf" and n_users > args.graph_max_users:
                continue
            base = None
            for mesh in meshes:
                row = bench_one(model, n_users, n_items, mesh, args, rng)
                rows.append(row)
                base = base or row
                comm = sum(row["comm_bytes_per_step"].values())
                ratio = row["state_bytes_per_device"] / base["state_bytes_per_device"]
                print(f"{model:9} {n_users:>8}x{n_items:<8} {row['mesh']:>5} {_mib(row['state_bytes_per_device']):>14} "
                      f"{_mib(row['temp_bytes_per_device']):>13} {_mib(comm):>14} {row['ms_per_step']:8.1f} "
                      f"{row['examples_per_s']:9.0f}  state x{ratio:.2f}", flush=True)
    if args.eval or args.eval_only:
        n_users, n_items = sizes[-1]
        for row in bench_eval(n_users, n_items, args, rng):
            rows.append(row)
            print(f"eval {row['eval_users']} users x {row['n_items']} items, mesh {row['mesh']}, {row['way']:>15}: "
                  f"{row['seconds']:.3f} s, temp/dev {_mib(row['temp_bytes_per_device'])} MiB, comm/batch "
                  f"{_mib(sum(row['comm_bytes_per_batch'].values()))} MiB {row['comm_bytes_per_batch']} "
                  f"(same metrics: {row['same_metrics']})", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
