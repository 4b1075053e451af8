"""The scale ladder: FREEDOM and LATTICE on synthetic data up to 1,000,000 items.

Usage (from the project root):
  python benchmarks/bench_scale.py                               # 10k and 100k items
  python benchmarks/bench_scale.py --sizes 1000000 --cache DIR   # the million-item rung
  python benchmarks/bench_scale.py --sizes 10000 --models freedom --json out.jsonl

Each rung runs in a fresh subprocess (so its peak RSS is its own) with the configs of
``experiments/configs/scale/`` resized: n_items items, n_items / 5 users, 10 interactions per
item (80/10/10 per user), the configs' modalities. Steps, each reported with wall seconds,
CPU seconds (both cores together; the machine is shared, so wall time depends on the load) and
the process's peak RSS so far:

* ``generate``: ``jaxrec.data.make_synthetic``;
* ``knn:<modality>``: the frozen item kNN graph (k = 10) of each modality, tiled, through the
  on-disk graph cache (``cached`` says whether it was a hit: FREEDOM and LATTICE share it);
* per model: ``build`` (user-item graph, normalized item graphs, model; the kNN from the
  cache), ``init``, LATTICE's ``learned_knn`` (the learned graph's neighbour lists from the
  initial parameters: n x n similarities in tiles on device) or FREEDOM's ``prune`` (the
  epoch's degree-sensitive pruning), ``epoch`` (one epoch of training), ``eval``
  (embeddings of all users and items, then full ranking over ALL items for a uniform sample
  of ``--eval-users`` test users, with a popularity baseline on the same users).

Measured figures: see the final report in the commit history (``benchmarks: scale ladder ...``)
and the table at the end of this docstring once filled in.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs" / "scale"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux


class Steps:
    """Times steps and prints one JSON line per step (stdout), progress on stderr."""

    def __init__(self, n_items: int):
        self.n_items, self.rows = n_items, []

    def run(self, name: str, fn, *, annotate=None, **extra):
        """``fn()``, timed; ``annotate(result) -> dict`` adds figures to the step's row."""
        print(f"[n={self.n_items}] {name} ...", file=sys.stderr, flush=True)
        wall, cpu = time.perf_counter(), time.process_time()
        result = fn()
        row = {"n_items": self.n_items, "step": name, "seconds": round(time.perf_counter() - wall, 2),
               "cpu_seconds": round(time.process_time() - cpu, 2), "peak_rss_gib": round(peak_rss_gib(), 2), **extra,
               **(annotate(result) if annotate else {})}
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        print(f"[n={self.n_items}] {name}: {row['seconds']} s wall, {row['cpu_seconds']} s cpu, "
              f"peak {row['peak_rss_gib']} GiB", file=sys.stderr, flush=True)
        return result


def _config(model: str, n_items: int, cache: str | None, batch_size: int | None):
    from jaxrec.train import load_config

    overrides = [f"data.synthetic.n_items={n_items}", f"data.synthetic.n_users={max(n_items // 5, 10)}",
                 f"data.synthetic.n_interactions={10 * n_items}"]
    if cache is not None:
        overrides.append(f"model.args.graph_cache={cache}")
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    return load_config(CONFIGS / f"{model}.yaml", overrides)


def _sampled_eval(dataset, user_emb, item_emb, n_users: int, ks, metrics, seed: int = 0) -> dict:
    """Full ranking over all items for a uniform sample of test users, and popularity on them."""
    from jaxrec import eval as jeval

    pairs = {split: dataset.split_pairs(split) for split in ("train", "valid", "test")}
    users = np.unique(pairs["test"][:, 0])
    chosen = np.sort(np.random.default_rng(seed).choice(users, min(n_users, users.size), replace=False))
    sample = {split: p[np.isin(p[:, 0], chosen)] for split, p in pairs.items()}
    kwargs = dict(split="test", train_pairs=sample["train"], valid_pairs=sample["valid"], test_pairs=sample["test"],
                  ks=ks, metrics=metrics)
    result = jeval.evaluate_protocol(user_emb, item_emb, **kwargs)
    popularity = np.bincount(pairs["train"][:, 1], minlength=dataset.n_items).astype(np.float32)
    baseline = jeval.evaluate_protocol(np.ones((dataset.n_users, 1), np.float32), popularity[:, None], **kwargs)
    out = {k: round(float(v), 4) for k, v in result.items() if "@" in k}
    out.update({f"popularity_{k}": round(float(v), 4) for k, v in baseline.items() if "@" in k})
    out["eval_users"] = int(chosen.size)
    return out


def run_rung(n_items: int, models: list[str], cache: str | None, batch_size: int | None, eval_users: int,
             steps_per_call: int) -> list[dict]:
    import jax

    from jaxrec.data import make_synthetic
    from jaxrec.data.graph import GraphCache, cache_key, item_knn_neighbours
    from jaxrec.data.graph import KNN_VERSION
    from jaxrec.models.lattice import refresh_learned_graph
    from jaxrec.train import StepRunner, init_state
    from jaxrec.train._setup import epoch_context, make_encoder, prepare_experiment

    steps = Steps(n_items)
    configs = {model: _config(model, n_items, cache, batch_size) for model in models}
    synthetic = dict(next(iter(configs.values())).data.synthetic)
    dataset = steps.run("generate", lambda: make_synthetic(**synthetic),
                        n_users=synthetic["n_users"], n_interactions=synthetic["n_interactions"],
                        dims=synthetic.get("dims"))
    graph_cache = GraphCache(None if cache in (None, "default") else cache)
    for name in dataset.modalities:
        modality = dataset.modalities[name]
        key = cache_key("knn_neighbours", version=KNN_VERSION, settings={"k": 10, "include_self": True},
                        arrays={"features": modality.features, "mask": modality.mask})
        hit = graph_cache.load("knn_neighbours", key) is not None
        steps.run(f"knn:{name}", lambda name=name: item_knn_neighbours(dataset, name, k=10, cache=graph_cache),
                  cached=hit, dim=int(modality.dim))

    for model, config in configs.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # LATTICE's "epoch" mode: refreshed below
            exp = steps.run(f"{model}:build", lambda: prepare_experiment(config, dataset))
        runner = StepRunner(exp.module, exp.tx, exp.loss_weights, batch_size=config.train.batch_size)
        state = steps.run(f"{model}:init", lambda: jax.block_until_ready(runner.put_state(init_state(
            exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx, config.train.seed))))
        if model == "lattice":
            ctx = steps.run(f"{model}:learned_knn", lambda: jax.block_until_ready(refresh_learned_graph(
                exp.module, runner.get_state(state).params, exp.built.ctx)))
        else:
            ctx = steps.run(f"{model}:prune", lambda: jax.block_until_ready(
                epoch_context(exp.built, config.train.seed, 0)))

        def one_epoch():
            nonlocal state
            device_ctx = runner.put_ctx(ctx)
            batches = exp.sampler.batches(0)
            losses = []
            for offset in range(0, exp.steps_per_epoch, steps_per_call):
                chunk = {k: v[offset:offset + steps_per_call] for k, v in batches.items()}
                state, metrics = runner.run(state, device_ctx, runner.put_batches(chunk))
                losses.append(np.asarray(jax.device_get(metrics.loss)))
                print(f"  {model}: {min(offset + steps_per_call, exp.steps_per_epoch)}/{exp.steps_per_epoch} steps, "
                      f"loss {float(losses[-1][-1]):.4f}", file=sys.stderr, flush=True)
            losses = np.concatenate(losses)
            if not np.all(np.isfinite(losses)):
                raise FloatingPointError(f"{model}: non-finite loss in the epoch")
            return {"first_loss": round(float(losses[0]), 4), "last_loss": round(float(losses[-1]), 4)}

        steps.run(f"{model}:epoch", one_epoch, annotate=lambda losses: losses, steps_per_epoch=exp.steps_per_epoch,
                  batch_size=config.train.batch_size)

        def evaluate():
            user_emb, item_emb = jax.block_until_ready(make_encoder(exp.module)(runner.get_state(state).params, ctx))
            return _sampled_eval(dataset, user_emb, item_emb, eval_users, config.eval.ks, config.eval.metrics)

        steps.run(f"{model}:eval", evaluate, annotate=lambda metrics: metrics)
        del exp, runner, state, ctx
    return steps.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--models", nargs="*", default=["freedom", "lattice"], choices=["freedom", "lattice"])
    parser.add_argument("--cache", default=None, help="graph cache folder (default: the configs' 'default')")
    parser.add_argument("--batch-size", type=int, default=None, help="override the configs' batch size")
    parser.add_argument("--eval-users", type=int, default=10_000)
    parser.add_argument("--steps-per-call", type=int, default=16)
    parser.add_argument("--json", default=None, help="append the JSON rows to this file")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        run_rung(args.child, args.models, args.cache, args.batch_size, args.eval_users, args.steps_per_call)
        return
    rows = []
    for n in args.sizes:
        command = [sys.executable, __file__, "--child", str(n), "--models", *args.models,
                   "--eval-users", str(args.eval_users), "--steps-per-call", str(args.steps_per_call)]
        if args.cache:
            command += ["--cache", args.cache]
        if args.batch_size:
            command += ["--batch-size", str(args.batch_size)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=os.environ.copy())
        rung_rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        rows += rung_rows
        if args.json:
            with open(args.json, "a") as file:
                for row in rung_rows:
                    file.write(json.dumps(row) + "\n")
        if done.returncode:
            print(f"rung n={n} failed (exit {done.returncode})", file=sys.stderr)
    print(f"\n{'n_items':>9} {'step':<22} {'wall s':>9} {'cpu s':>9} {'peak GiB':>9}  notes")
    for row in rows:
        notes = {k: v for k, v in row.items() if k not in ("n_items", "step", "seconds", "cpu_seconds", "peak_rss_gib")}
        print(f"{row['n_items']:>9} {row['step']:<22} {row['seconds']:>9} {row['cpu_seconds']:>9} "
              f"{row['peak_rss_gib']:>9}  {json.dumps(notes) if notes else ''}")


if __name__ == "__main__":
    main()
