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
* ``knn:<modality>``: the frozen item kNN graph (k = 10) of each modality, through the on-disk
  graph cache (``cached`` says whether it was a hit: FREEDOM and LATTICE share it). With
  ``--knn auto`` (the configs' ``knn_method: auto``) rungs below 200,000 items search it
  exactly (tiled, O(n^2): a million items would take about an hour of both cores), larger
  ones by the cluster-blocked join (``jaxrec/data/graph/_join.py``); ``--knn ivf`` uses our
  JAX inverted file (1,024 clusters, 32 probed), ``--knn join`` / ``hnsw`` (hnswlib, the
  ``ann`` extra) / ``exact`` force one method.
  ``knn:<modality>:recall`` reports an approximate graph's recall@10 on ``--recall-queries``
  sampled items against a brute-force top-k (``benchmarks/bench_knn.py --ann`` compares the
  libraries);
* per model: ``build`` (user-item graph, normalized item graphs, model; the kNN from the
  cache), ``init``, LATTICE's ``learned_knn`` (the learned graph's neighbour lists from the
  initial parameters: n x n similarities in tiles on device, or the IVF from 500,000 items on,
  then ``learned_knn:recall`` as above; the method follows ``--knn``) or FREEDOM's ``prune`` (the
  epoch's degree-sensitive pruning), ``epoch`` (one epoch of training), ``eval``
  (embeddings of all users and items, then full ranking over ALL items for a uniform sample
  of ``--eval-users`` test users, with a popularity baseline on the same users).

kNN at 1M x 128 (``benchmarks/bench_knn.py --ann``): the cluster-blocked join (``auto``'s
method from 200,000 items; 4,096 lists, 12 probed) recall@10 0.968 in 78.1 CPU s (2026-12-04,
load 12); hnswlib 12:48:24 0.974 in 234.8 CPU s, 8:32:20 0.912 in 148.8 (quiet machine; 0.910
in 195.8 at load 15-17); faiss's inverted file 4096 lists / 4 probed 0.654 in 95.3 CPU s
(2026-12-03, loaded). bench_knn's docstring has the tables.

LATTICE's 1M rung with the join (2026-12-04, commit efee696, ``--sizes 1000000 --models lattice
--batch-size 262144``; load 7-10 from the kNN step on, so wall seconds are 2-3x the CPU seconds;
peak RSS of the process so far; rows in ``experiments/results/scale_1m.jsonl``):

  n_items    step                       wall s    CPU s   peak GiB  notes
  1,000,000  generate                     30.3     25.2     1.27
  1,000,000  knn:text (join)             158.0     72.2     3.52     sampled recall@10 0.966
  1,000,000  lattice:build                18.1     11.4     4.05
  1,000,000  lattice:init                  4.4      2.8     4.73
  1,000,000  lattice:learned_knn (join)  199.5     58.5     6.48     sampled recall@10 0.964
  1,000,000  lattice:epoch              2175.2    781.8     9.41     31 steps of 262,144; loss 0.6932 -> 0.3349
  1,000,000  lattice:eval                408.1    112.9     9.41     recall@20 0.0171 (popularity 0.1463)

The whole rung: 1,058 s user + 72 s system CPU, 53.5 min wall, peak RSS 9.41 GiB (``time -v``
9.87e6 kB), under the 12 GiB target (18.44 GiB before the neighbour-table propagation). The
epoch is 25.2 CPU s per step. The rows below predate the join (2026-11-28, kNN by the IVF).

Measured (2026-11-28, this 2-core / 24 GiB machine; wall seconds depend on the other jobs that
shared the cores, CPU seconds are both cores together; rows from ``--json``):

  n_items    step                       wall s    CPU s   peak GiB  notes
  100,000    knn:text (exact)             53.2     49.0     0.61
  100,000    freedom:epoch                13.3     12.8     1.12     25 steps of 32,768
  1,000,000  generate                    109.0     30.5     1.18     200,000 users, 10M interactions
  1,000,000  knn:text (IVF 1024:32)      795.3    345.7     2.47     sampled recall@10 0.82
  1,000,000  freedom:build                70.0     29.3     3.85
  1,000,000  freedom:prune                 1.7      0.9     4.20
  1,000,000  freedom:epoch              1398.2    745.9     6.14     244 steps of 32,768; loss 0.693 -> 0.284
  1,000,000  freedom:eval                124.0    123.5     6.14     10,000 users, all 1M items ranked;
                                                                     recall@20 0.1466 (popularity 0.1466)
  1,000,000  lattice:build                30.1     30.3     3.50
  1,000,000  lattice:learned_knn (IVF)   199.6    301.3     4.21     sampled recall@10 0.85 (earlier run)
  1,000,000  lattice:epoch                398.9    704.4   18.44     31 steps of 262,144; loss 0.6932 -> 0.3023
  1,000,000  lattice:eval                  76.6    113.7   18.44     recall@20 0.0178 (popularity 0.1463)

(the rows above ran before the HNSW kNN and the chunked LATTICE item graph; kNN by the IVF.)

``--compiled-memory``: XLA's buffer sizes of LATTICE's compiled loss gradient at the ladder's
shapes, no data allocated (batch 262,144). Measured (2026-12-03): at 1,000,000 items the
working memory (``temp``) of one step was 14.4 GiB when each item graph was propagated as one
edge list (its (edges x 64) gathers kept for the backward pass; the 18.44 GiB peak above) and
4.47 GiB with the item graphs as one neighbour table propagated in rematerialized row chunks
(``jaxrec.data.graph.propagate_neighbours``); arguments 1.1 GiB, outputs 0.3 GiB. At 100,000
items: 1.67 -> 1.12 GiB. The saving, 9.9 GiB at 1M, puts the expected peak RSS of the
``lattice:epoch`` step at about 8.5 GiB (18.44 - 9.9). A full 1M LATTICE rung was not rerun (on
2026-12-03 the shared machine gave one process 20-50% of a core, and the rung is ~1,200 CPU s).

``--lattice-step``: the training step alone (gradient + Adam, batch 262,144) on random arrays
of the 1M ladder's shapes (17.2M user-item edges, 1M x 128 features, 1M x 10 neighbour
tables), its peak RSS by ``getrusage`` (a watchdog sampling VmRSS every 2 s agreed). Measured
(2026-12-03, load ~11, ``--sizes 1000000 --repeats 1``): peak RSS 7.05 GiB (4.28 GiB before the
first step: arrays, parameters, Adam state), 35.8 CPU s per step, loss 0.6884. A full rung adds
the dataset and sampler (``generate``: 1.18 GiB peak above), so about 8.2-9 GiB is expected for
``lattice:epoch``, under the 12 GiB target; the rung (above, 2026-12-04) measured 9.41 GiB.
Since then LATTICE's user-item graph is a ``FixedGraph`` (its transpose for the gradient):
``--compiled-memory`` at 1M then gives temp 4.34 GiB, arguments 1.26 GiB (+0.19, the
transpose), outputs 0.29 GiB, and ``--lattice-step`` peak RSS 7.05 GiB (4.47 before the first
step), 34.6 CPU s per step, loss 0.6884 (2026-12-04, load ~9): the same peak as before.

``--freedom-parts``: where FREEDOM's epoch goes. CPU seconds of one training step (gradient +
Adam, batch 32,768) with parts switched off. Measured (2026-12-03, load 10-15, 100,000 items,
``--sizes 100000 --repeats 3``):

  variant                                   CPU s / step
  full (item graph 1 layer, 2 user-item)        0.437
  no item graph (n_mm_layers=0)                 0.271    item graph: 0.166 (38%)
  no user-item layers (n_ui_layers=0)           0.340    user-item layers: 0.097 (22%)
  neither                                       0.135    the rest (gathers, dense gradients of
                                                         the (users + items) x 64 tables, Adam)

At 1M the epoch was 745.9 CPU s for 244 steps (3.06 CPU s per step; table above). Every part
is O(n_items) per step: the item-graph term propagated all n x 10 edges and the user-item
layers all kept pairs although the loss reads the embeddings of at most 2 x 32,768 items and
32,768 users, and the gradients and Adam touch the full (1.2M x 64) tables. So the epoch costs
(steps x n) and grows as n^2 / batch: the cause of the ~1,400 s wall (746 CPU s) epoch.

Since 2026-12-04 the item-graph term is computed at the batch's items only when the batch holds
fewer ids than there are items (``jaxrec/models/freedom.py``: h_i as a sum over item i's k
neighbour rows, its gradient k scatter-adds into one table; the same numbers). Measured
(2026-12-04, load 5-10, one step of the full variant, CPU s / step, old = the code before):

  n_items     old                     new                     notes
  100,000     0.422 / 0.390 / 0.343   0.426 / 0.393 / 0.386   65,536 ids per 100,000 items: the
                                                              k-row gathers cost what the sorted
                                                              full propagation did; no change
  1,000,000   3.544 / 4.017           2.623 / 2.636           -26% / -34% (peak RSS of the step
                                                              alone 5.9 -> 5.8 GB)

(the 100,000 rows: ``--freedom-parts --sizes 100000 --repeats 3``'s full variant and two runs of
the same step alone; the 1M rows: that step alone, 2 steps, old and new alternated.) The saving at 1M is less than the
38% item-graph share measured at 100k: the user-item layers (all kept pairs, both directions,
2 layers, forward and backward over the sorted transpose) and the dense Adam update of the
(1.2M x 64) tables remain O(n) per step. A 1M epoch (244 steps) is then projected at the table's
746 CPU s x (0.66-0.74) = ~490-550 CPU s (a projection from the step ratio, not a measured
epoch). Time to convergence at 1M is (epochs to the valid-selected epoch) x the epoch: not
measured here; at ~550 CPU s per epoch, 50 epochs would take ~7.6 CPU hours.

Trained to convergence (2026-12-05, ``jaxrec train experiments/configs/scale/freedom_converge.yaml``:
batch 262,144, learning rate 1e-2, validation on a fixed sample of 2,000 users every 2 epochs, patience
5): early stop after 74 epochs, best epoch 62, 55 min 10 s wall, 5,587 CPU s, peak RSS 9.50 GiB;
37.1 s per epoch (31 steps), 9.1 s per evaluation. Valid recall@20 0.1645 against popularity's 0.1528
on the same users, test 0.1591 against 0.1484. The config header has the curve and the pilot that chose
the rate; the row is ``freedom:converge`` in ``experiments/results/scale_1m.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
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


IVF_SETTINGS = {"knn_n_clusters": 1024, "knn_n_probe": 32}  # --knn ivf: our inverted file at 1M items


def _config(model: str, n_items: int, cache: str | None, batch_size: int | None, knn: str = "auto"):
    import yaml

    from jaxrec.train import apply_overrides, config_from_dict, resolve_paths

    path = CONFIGS / f"{model}.yaml"
    overrides = [f"data.synthetic.n_items={n_items}", f"data.synthetic.n_users={max(n_items // 5, 10)}",
                 f"data.synthetic.n_interactions={10 * n_items}"]
    if cache is not None:
        overrides.append(f"model.args.graph_cache={cache}")
    if batch_size is not None:
        overrides.append(f"train.batch_size={batch_size}")
    raw = apply_overrides(yaml.safe_load(path.read_text()), overrides)
    args = raw["model"]["args"]
    args["knn_method"] = knn
    for name, value in IVF_SETTINGS.items():  # only the inverted file takes these
        if knn == "ivf":
            args[name] = value
        else:
            args.pop(name, None)
    return resolve_paths(config_from_dict(raw, source=path))


def _sampled_eval(dataset, user_emb, item_emb, n_users: int, ks, metrics, seed: int = 0) -> dict:
    """Full ranking over all items for a uniform sample of test users, and popularity on them."""
    from jaxrec import eval as jeval
    from jaxrec.train._setup import sampled_user_pairs  # eval.user_sample's draw

    pairs = {split: dataset.split_pairs(split) for split in ("train", "valid", "test")}
    sample = sampled_user_pairs(pairs, "test", n_users, seed)
    kwargs = dict(split="test", train_pairs=sample["train"], valid_pairs=sample["valid"], test_pairs=sample["test"],
                  ks=ks, metrics=metrics)
    result = jeval.evaluate_protocol(user_emb, item_emb, **kwargs)
    popularity = np.bincount(pairs["train"][:, 1], minlength=dataset.n_items).astype(np.float32)
    baseline = jeval.evaluate_protocol(np.ones((dataset.n_users, 1), np.float32), popularity[:, None], **kwargs)
    out = {k: round(float(v), 4) for k, v in result.items() if "@" in k}
    out.update({f"popularity_{k}": round(float(v), 4) for k, v in baseline.items() if "@" in k})
    out["eval_users"] = int(np.unique(sample["test"][:, 0]).size)
    return out


def _sampled_recall(features: np.ndarray, found: np.ndarray, n_queries: int, seed: int = 1) -> dict:
    """Recall@k of ``found`` (n, k) neighbour lists against a brute-force top-k of sampled rows."""
    from bench_knn import _sampled_exact, neighbour_recall

    from jaxrec.data.graph import unit_rows

    queries = np.sort(np.random.default_rng(seed).choice(len(features), min(n_queries, len(features)), replace=False))
    truth = _sampled_exact(unit_rows(np.asarray(features, np.float32)), queries, found.shape[1])
    return {f"recall@{found.shape[1]}_sampled": round(neighbour_recall(found[queries], truth), 4),
            "recall_queries": int(queries.size)}


def run_rung(n_items: int, models: list[str], cache: str | None, batch_size: int | None, eval_users: int,
             steps_per_call: int, knn: str = "auto", recall_queries: int = 1000) -> list[dict]:
    import jax

    from jaxrec.data import make_synthetic
    from jaxrec.data.graph import GraphCache, item_knn_neighbours, knn_cache_key, resolve_knn_method
    from jaxrec.models.freedom import knn_search_settings
    from jaxrec.train import StepRunner, epoch_context, init_state, make_encoder, prepare_experiment

    steps = Steps(n_items)
    configs = {model: _config(model, n_items, cache, batch_size, knn) for model in models}
    synthetic = dict(next(iter(configs.values())).data.synthetic)
    dataset = steps.run("generate", lambda: make_synthetic(**synthetic),
                        n_users=synthetic["n_users"], n_interactions=synthetic["n_interactions"],
                        dims=synthetic.get("dims"))
    graph_cache = GraphCache(None if cache in (None, "default") else cache)
    args = dict(next(iter(configs.values())).model.args)  # both scale configs search the kNN alike
    method = args.get("knn_method", "exact")
    ivf = knn_search_settings(method, args.get("knn_n_clusters"), args.get("knn_n_probe"), "scale ladder")
    for name in dataset.modalities:
        modality = dataset.modalities[name]
        key = knn_cache_key(modality.features, modality.mask, k=10, include_self=True, method=method, ivf=ivf)
        hit = graph_cache.load("knn_neighbours", key) is not None
        resolved = resolve_knn_method(method, int(np.count_nonzero(modality.mask)))
        neighbours = steps.run(f"knn:{name}", lambda name=name: item_knn_neighbours(
            dataset, name, k=10, cache=graph_cache, method=method, ivf=ivf), cached=hit, dim=int(modality.dim),
            method=resolved, **({} if ivf is None else {"n_clusters": ivf.n_clusters, "n_probe": ivf.n_probe}))
        if resolved != "exact" and recall_queries:
            steps.run(f"knn:{name}:recall", lambda: _sampled_recall(modality.features, neighbours.indices,
                                                                    recall_queries), annotate=lambda r: r)

    for model, config in configs.items():
        exp = steps.run(f"{model}:build", lambda: prepare_experiment(config, dataset))
        runner = StepRunner(exp.module, exp.tx, exp.loss_weights, batch_size=config.train.batch_size)
        state = steps.run(f"{model}:init", lambda: jax.block_until_ready(runner.put_state(init_state(
            exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx, config.train.seed))))
        # The model's epoch hook as the trainer runs it before epoch 1: LATTICE's learned-graph
        # refresh ("epoch" mode), FREEDOM's edge pruning.
        if model == "lattice":
            resolved = resolve_knn_method(exp.module.knn_method, exp.module.n_items)
            ctx = steps.run(f"{model}:learned_knn", lambda: jax.block_until_ready(epoch_context(
                exp.built, runner.get_state(state).params, config.train.seed, 0)), method=resolved)
            if resolved != "exact" and recall_queries:
                project = jax.jit(lambda params, c: exp.module.apply({"params": params}, c,
                                                                     method="projected_features"))
                projected = np.asarray(project(runner.get_state(state).params, ctx)[0])
                steps.run(f"{model}:learned_knn:recall", lambda: _sampled_recall(
                    projected, np.asarray(ctx["learned_neighbours"])[:, :exp.module.knn_k], recall_queries),
                    annotate=lambda r: r)
                del projected
        else:
            ctx = steps.run(f"{model}:prune", lambda: jax.block_until_ready(
                epoch_context(exp.built, runner.get_state(state).params, config.train.seed, 0)))

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


def compiled_memory(n_items: int, batch_size: int) -> dict:
    """XLA's buffer sizes of LATTICE's compiled loss gradient at the ladder's shapes for n_items
    (n_items / 5 users, 8 n_items training pairs in both directions plus self-loops, one 128-d
    modality, k = 10, epoch mode): nothing is allocated, so it runs at a million items on any
    machine. ``temp_gib`` is the working memory of one step beyond its inputs and outputs."""
    import jax
    import jax.numpy as jnp

    from jaxrec.data import graph as jgraph
    from jaxrec.models.lattice import LATTICE

    n_users, k, dim = max(n_items // 5, 10), 10, 128
    n_edges = 2 * 8 * n_items + n_items + n_users
    shape = jax.ShapeDtypeStruct
    edges = jgraph.Edges(shape((n_edges,), jnp.int32), shape((n_edges,), jnp.int32), shape((n_edges,), jnp.float32))
    ctx = {"graph": jgraph.FixedGraph(edges, edges),  # D^-1 (A + I) and its transpose, as the builder's
           "features": (shape((n_items, dim), jnp.float32),), "learned_neighbours": shape((n_items, k), jnp.int32),
           "original_neighbours": shape((n_items, k), jnp.int32), "original_weights": (shape((n_items, k), jnp.float32),)}
    module = LATTICE(n_users=n_users, n_items=n_items, feature_dims=(dim,), knn_k=k, train_features=False,
                     learned_graph="epoch")
    params = jax.eval_shape(lambda c: module.init(jax.random.PRNGKey(0), c, False, method="encode"), ctx)["params"]
    batch = {"users": shape((batch_size,), jnp.int32), "pos_items": shape((batch_size,), jnp.int32),
             "neg_items": shape((batch_size, 1), jnp.int32), "weights": shape((batch_size,), jnp.float32)}

    def loss(p, c, b):
        terms = module.apply({"params": p}, c, b, True, method="loss_terms")
        return terms["bpr"] + 1e-4 * terms["reg"]

    analysis = jax.jit(jax.value_and_grad(loss)).lower(params, ctx, batch).compile().memory_analysis()
    return {"n_items": n_items, "step": "lattice:compiled_gradient", "batch_size": batch_size,
            **{f"{name}_gib": round(getattr(analysis, f"{name}_size_in_bytes") / 2**30, 2)
               for name in ("temp", "argument", "output")}}


def freedom_parts(n_items: int, repeats: int) -> list[dict]:
    """CPU seconds of one FREEDOM training step (gradient + Adam, batch 32,768) at the ladder's
    shapes for n_items, with parts switched off: the frozen item graph (``n_mm_layers=0``), the
    user-item layers (``n_ui_layers=0``), both. Random graphs of the ladder's sizes (pruned
    user-item graph: 10% of 8 n_items pairs, both directions; item graph: k = 10 per item);
    the cost of a part is the difference to the full step."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxrec.data import graph as jgraph
    from jaxrec.models.freedom import FREEDOM

    n_users, k, dim, batch_size = max(n_items // 5, 10), 10, 128, 32768
    rng = np.random.default_rng(0)
    n_nodes, kept = n_users + n_items, int(8 * n_items * 0.1)

    def random_edges(m, rows=None):
        rows = np.sort(rng.integers(0, n_nodes, m)) if rows is None else rows
        return jgraph.Edges(jnp.asarray(rows, jnp.int32), jnp.asarray(rng.integers(0, n_nodes if rows is None else
                                                                                        n_items, m), jnp.int32),
                            jnp.asarray(rng.random(m, dtype=np.float32) * 0.1))

    # The graphs as the model's constants (FixedGraph; the random user-item lists are not symmetric, but a
    # transpose costs what the graph costs); the item graph k entries per row, as FREEDOM's builder lays it out.
    item_graph = jgraph.Edges(np.repeat(np.arange(n_items, dtype=np.int32), k),
                              rng.integers(0, n_items, n_items * k).astype(np.int32),
                              np.full((n_items * k,), 1.0 / k, np.float32))
    ctx = {"graph": jgraph.FixedGraph(random_edges(2 * kept)), "train_graph": jgraph.FixedGraph(random_edges(2 * kept)),
           "item_graph": jgraph.fixed_graph(item_graph).to_device(),
           "features": (jnp.asarray(rng.standard_normal((n_items, dim), dtype=np.float32)),)}
    batch = {"users": jnp.asarray(rng.integers(0, n_users, batch_size), jnp.int32),
             "pos_items": jnp.asarray(rng.integers(0, n_items, batch_size), jnp.int32),
             "neg_items": jnp.asarray(rng.integers(0, n_items, (batch_size, 1)), jnp.int32),
             "weights": jnp.ones((batch_size,), jnp.float32)}
    rows = []
    for name, mm_layers, ui_layers in (("full", 1, 2), ("no_item_graph", 0, 2), ("no_ui_layers", 1, 0),
                                       ("neither", 0, 0)):
        module = FREEDOM(n_users=n_users, n_items=n_items, feature_dims=(dim,), train_features=False,
                         n_mm_layers=mm_layers, n_ui_layers=ui_layers)
        params = module.init(jax.random.PRNGKey(0), ctx, batch, True, method="loss_terms")["params"]
        tx = optax.adam(1e-3)
        opt = tx.init(params)

        def loss(p, c, b, module=module):
            terms = module.apply({"params": p}, c, b, True, method="loss_terms")
            return terms["bpr"] + 1e-5 * terms["modality_bpr"]

        @jax.jit
        def step(p, o, c, b, loss=loss, tx=tx):
            value, grads = jax.value_and_grad(loss)(p, c, b)
            updates, o = tx.update(grads, o, p)
            return optax.apply_updates(p, updates), o, value

        params, opt, _ = jax.block_until_ready(step(params, opt, ctx, batch))  # compile
        cpu = time.process_time()
        for _ in range(repeats):
            params, opt, _ = jax.block_until_ready(step(params, opt, ctx, batch))
        row = {"n_items": n_items, "step": f"freedom:step:{name}",
               "cpu_seconds_per_step": round((time.process_time() - cpu) / repeats, 3)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def lattice_step(n_items: int, batch_size: int, repeats: int) -> dict:
    """Peak RSS and CPU seconds of LATTICE's training step (gradient + Adam) at the ladder's
    shapes for n_items, on random arrays of those shapes (the shapes of ``compiled_memory``):
    the step's real memory without the dataset, the sampler and the kNN builds of a full rung."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxrec.data import graph as jgraph
    from jaxrec.models.lattice import LATTICE

    n_users, k, dim = max(n_items // 5, 10), 10, 128
    n_edges = 2 * 8 * n_items + n_items + n_users
    rng = np.random.default_rng(0)
    rows = np.sort(rng.integers(0, n_users + n_items, n_edges))
    graph = jgraph.fixed_graph(jgraph.Edges(rows.astype(np.int32), rng.integers(0, n_users + n_items, n_edges,
                                                                                dtype=np.int32),
                                            rng.random(n_edges, dtype=np.float32) * 0.1)).to_device()
    ctx = {"graph": graph,  # with its column-sorted transpose, as the builder's
           "features": (jnp.asarray(rng.standard_normal((n_items, dim), dtype=np.float32)),),
           "learned_neighbours": jnp.asarray(rng.integers(0, n_items, (n_items, k)), jnp.int32),
           "original_neighbours": jnp.asarray(rng.integers(0, n_items, (n_items, k)), jnp.int32),
           "original_weights": (jnp.asarray(rng.random((n_items, k), dtype=np.float32)),)}
    del rows, graph
    module = LATTICE(n_users=n_users, n_items=n_items, feature_dims=(dim,), knn_k=k, train_features=False,
                     learned_graph="epoch")
    params = module.init(jax.random.PRNGKey(0), ctx, False, method="encode")["params"]
    batch = {"users": jnp.asarray(rng.integers(0, n_users, batch_size), jnp.int32),
             "pos_items": jnp.asarray(rng.integers(0, n_items, batch_size), jnp.int32),
             "neg_items": jnp.asarray(rng.integers(0, n_items, (batch_size, 1)), jnp.int32),
             "weights": jnp.ones((batch_size,), jnp.float32)}
    tx = optax.adam(1e-3)
    opt = tx.init(params)

    def loss(p, c, b):
        terms = module.apply({"params": p}, c, b, True, method="loss_terms")
        return terms["bpr"] + 1e-4 * terms["reg"]

    @jax.jit
    def step(p, o, c, b):
        value, grads = jax.value_and_grad(loss)(p, c, b)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, value

    before = peak_rss_gib()
    params, opt, value = jax.block_until_ready(step(params, opt, ctx, batch))  # compile + first step
    cpu = time.process_time()
    for _ in range(repeats):
        params, opt, value = jax.block_until_ready(step(params, opt, ctx, batch))
    row = {"n_items": n_items, "step": "lattice:train_step", "batch_size": batch_size,
           "cpu_seconds_per_step": round((time.process_time() - cpu) / max(repeats, 1), 2),
           "peak_rss_gib_before_step": round(before, 2), "peak_rss_gib": round(peak_rss_gib(), 2),
           "loss": round(float(value), 4)}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--models", nargs="*", default=["freedom", "lattice"], choices=["freedom", "lattice"])
    parser.add_argument("--cache", default=None, help="graph cache folder (default: the configs' 'default')")
    parser.add_argument("--batch-size", type=int, default=None, help="override the configs' batch size")
    parser.add_argument("--eval-users", type=int, default=10_000)
    parser.add_argument("--steps-per-call", type=int, default=16)
    parser.add_argument("--json", default=None, help="append the JSON rows to this file")
    parser.add_argument("--knn", choices=["auto", "exact", "ivf", "hnsw", "join"], default="auto",
                        help="kNN search: auto (exact below 200,000 items, join from there on), or always "
                             "exact / ivf (1024 clusters, 32 probed) / hnsw / join")
    parser.add_argument("--recall-queries", type=int, default=1000,
                        help="sampled items whose approximate neighbours are checked against a brute-force top-k "
                             "(0: none)")
    parser.add_argument("--compiled-memory", action="store_true",
                        help="only compile LATTICE's training gradient at each size (abstract shapes, no data) and "
                             "report XLA's buffer sizes")
    parser.add_argument("--freedom-parts", action="store_true",
                        help="only time FREEDOM's training step at each size with parts switched off")
    parser.add_argument("--repeats", type=int, default=3, help="steps timed per variant (--freedom-parts)")
    parser.add_argument("--lattice-step", action="store_true",
                        help="only LATTICE's training step at each size on random arrays: peak RSS and CPU seconds")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.lattice_step:
        for n in args.sizes:
            lattice_step(n, args.batch_size or 262144, args.repeats)
        return
    if args.freedom_parts:
        for n in args.sizes:
            freedom_parts(n, args.repeats)
        return
    if args.compiled_memory:
        for n in args.sizes:
            print(json.dumps(compiled_memory(n, args.batch_size or 262144)), flush=True)
        return
    if args.child is not None:
        run_rung(args.child, args.models, args.cache, args.batch_size, args.eval_users, args.steps_per_call,
                 args.knn, args.recall_queries)
        return
    rows = []
    for n in args.sizes:
        command = [sys.executable, __file__, "--child", str(n), "--models", *args.models,
                   "--eval-users", str(args.eval_users), "--steps-per-call", str(args.steps_per_call),
                   "--knn", args.knn, "--recall-queries", str(args.recall_queries)]
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
