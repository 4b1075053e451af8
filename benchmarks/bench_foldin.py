"""Fold-in quality on lfm2k: users the model never saw, folded in from their train items.

Protocol: 10% of the users that have test interactions are held out -- ALL their
interactions are removed from one training run (the "held-out" run); another run trains on
the whole dataset (the "normal" run). Both use the model's lfm2k config (optionally with fewer
epochs, the same cap for both). The held-out users are then folded into the held-out run
from their train interactions (:meth:`jaxrec.serve.Recommender.fold_in`, no retraining), and
their test recall@20 (train items masked, MMRec's recall) is compared with what the same users
get from the normal run (:meth:`~jaxrec.serve.Recommender.recommend`). Target: the ratio
fold-in / normal >= 0.90.

Command (from the project root; each run is reused when its metrics.json exists)::

  nice python benchmarks/bench_foldin.py --models bpr vbpr lightgcn freedom \\
      --workdir runs/bench_foldin --max-epochs 1000

Prints one table row per (model, fold-in method) and writes ``foldin.json`` in the workdir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from jaxrec import eval as jeval
from jaxrec.serve import Recommender
from jaxrec.serve._foldin import PROPAGATION_LAYERS
from jaxrec.train import apply_overrides, config_from_dict, config_to_dict, load_config, train_and_evaluate
from jaxrec.train._data import load_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "lfm2k"


def without_users(dataset, users: np.ndarray):
    """``dataset`` with every interaction of ``users`` removed (ids unchanged)."""
    inter = dataset.interactions
    keep = ~np.isin(inter.users, users)
    return dataclasses.replace(dataset, interactions=inter.select(np.flatnonzero(keep)))


def recall_at_20(lists: np.ndarray, users: np.ndarray, test_pairs: np.ndarray) -> float:
    truth = {}
    for u, i in test_pairs:
        truth.setdefault(int(u), set()).add(int(i))
    hits = np.array([[int(i) in truth[int(u)] for i in row] for u, row in zip(users, lists)])
    relevant = np.array([len(truth[int(u)]) for u in users])
    return float(np.mean(np.asarray(jeval.recall_at_k(hits, relevant, k=20))))


def train(config, workdir: Path, dataset) -> dict:
    if (workdir / "metrics.json").exists():
        return json.loads((workdir / "metrics.json").read_text())
    return train_and_evaluate(config, workdir, dataset=dataset, quiet=True, resume=(workdir / "checkpoints").exists())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["bpr", "vbpr", "lightgcn", "freedom"])
    parser.add_argument("--workdir", default="runs/bench_foldin")
    parser.add_argument("--max-epochs", type=int, default=1000)
    parser.add_argument("--holdout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    results_path = workdir / "foldin.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.models:
        config = load_config(CONFIGS / f"{name}.yaml")
        raw = apply_overrides(config_to_dict(config), [("train.epochs", min(config.train.epochs, args.max_epochs))])
        config = config_from_dict(raw)
        dataset = load_dataset(config.data)
        test = dataset.split_pairs("test")
        rng = np.random.default_rng(args.seed)
        candidates = np.unique(test[:, 0])
        held = np.sort(rng.choice(candidates, size=int(round(args.holdout * candidates.size)), replace=False))
        reduced = without_users(dataset, held)
        normal = train(config, workdir / name / "normal", dataset)
        reduced_metrics = train(config, workdir / name / "held_out", reduced)
        test_held = test[np.isin(test[:, 0], held)]
        train_pairs = dataset.split_pairs("train")
        histories = [np.sort(train_pairs[train_pairs[:, 0] == u, 1]) for u in held]
        has_history = np.array([h.size > 0 for h in histories])
        held, histories = held[has_history], [h for h in histories if h.size]
        full = Recommender.load(workdir / name / "normal", dataset=dataset)
        lists, _ = full.recommend(held, k=20)
        trained_recall = recall_at_20(lists, held, test_held)
        served = Recommender.load(workdir / name / "held_out", dataset=reduced)
        methods = ["auto", "bpr", "propagate_only"] if config.model.name in PROPAGATION_LAYERS else ["auto"]
        for method in methods:
            tick = time.perf_counter()
            lists, _ = served.fold_in(histories, k=20, method=method)
            seconds = time.perf_counter() - tick
            recall = recall_at_20(lists, held, test_held)
            key = f"{name}/{method}"
            results[key] = {
                "model": config.model.name, "method": method, "held_out_users": int(held.size),
                "epochs": [normal["epochs_run"], reduced_metrics["epochs_run"]],
                "trained_recall@20": trained_recall, "fold_in_recall@20": recall,
                "ratio": recall / trained_recall, "fold_in_seconds": seconds,
                "normal_run_test_recall@20": normal["test"]["recall@20"],
            }
            print(f"| {name} | {method} | {held.size} | {trained_recall:.4f} | {recall:.4f} | "
                  f"{recall / trained_recall:.3f} | {seconds:.1f} s |", flush=True)
            workdir.mkdir(parents=True, exist_ok=True)
            results_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
