"""Online-learning quality: a model trained on the past, then fed new interactions through
:meth:`jaxrec.serve.Recommender.update`, against the static model and a model retrained from
scratch on everything.

``lfm2k``: the model's lfm2k config trained on the train split only (the "static" model); the
VALID interactions are then streamed through ``update`` in ``--batches`` batches (shuffled);
test recall@20 of every test user is compared for the static model, the online model (which
also excludes the streamed items, as ``exclude_seen`` does), and a model retrained from scratch
on train + valid for the static run's best epoch count. Target: online beats static and is
within 2% of the retrained model, in a fraction of its time.

``drift``: the same replay on the synthetic generator (:func:`jaxrec.data.make_synthetic`) with
a drift of the users' tastes, which the generator itself does not model, so it is made here
from its planted factors: after training, every user's factor moves to
:math:`p'_u = \\sqrt{1 - \\rho^2}\\, p_u + \\rho z_u` (:math:`z_u \\sim \\mathcal{N}(0, I)`, ``--drift``
ρ), and new interactions are drawn from the generator's own rule with :math:`p'_u`
(:math:`P(i \\mid u) \\propto \\pi_i \\exp(a\\, p'^\\top_u q_i)`, Gumbel top-k, unseen items
only): ``--stream`` per user are streamed, ``--test`` per user are the drifted test set.

Command (from the project root)::

  nice python benchmarks/bench_online.py lfm2k --workdir runs/bench_online --passes 20
  nice python benchmarks/bench_online.py drift --workdir runs/bench_online --passes 20

Prints one row per model variant and writes ``online_<part>.json`` in the workdir.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np

from jaxrec import data as jdata
from jaxrec import eval as jeval
from jaxrec.serve import OnlineConfig, Recommender
from jaxrec.train import apply_overrides, config_from_dict, config_to_dict, load_config, train_and_evaluate
from jaxrec.train._data import load_dataset

CONFIGS = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "lfm2k"


def recall_at_20(rec: Recommender, test_pairs: np.ndarray, extra_seen: np.ndarray | None = None) -> float:
    """Mean recall@20 over the users of ``test_pairs``; ``extra_seen`` pairs are masked too."""
    users = np.unique(test_pairs[:, 0])
    k = 20 if extra_seen is None else 20 + int(np.bincount(extra_seen[:, 0]).max())
    lists, _ = rec.recommend(users, k=k)
    if extra_seen is not None:
        extra = set(map(tuple, extra_seen.tolist()))
        lists = np.array([[i for i in row if (u, i) not in extra][:20] for u, row in zip(users, lists.tolist())])
    truth = set(map(tuple, test_pairs.tolist()))
    hits = np.array([[(u, i) in truth for i in row] for u, row in zip(users.tolist(), lists.tolist())])
    relevant = np.bincount(test_pairs[:, 0])[users]
    return float(np.mean(np.asarray(jeval.recall_at_k(hits, relevant, k=20))))


def with_train(dataset, pairs: np.ndarray, *, keep_valid: np.ndarray | None = None):
    """``dataset`` with ``pairs`` added as train interactions (and valid replaced by ``keep_valid``)."""
    inter = dataset.interactions
    users, items, split = inter.users, inter.items, inter.split
    if keep_valid is not None:
        rows = split != 1
        users, items, split = users[rows], items[rows], split[rows]
        pairs = np.concatenate([pairs, keep_valid])
    labels = np.zeros(len(pairs), np.int8)
    if keep_valid is not None:
        labels[len(pairs) - len(keep_valid):] = 1
    return dataclasses.replace(dataset, interactions=jdata.Interactions(
        np.concatenate([users, pairs[:, 0]]), np.concatenate([items, pairs[:, 1]]), np.concatenate([split, labels])))


def train(config, workdir: Path, dataset) -> dict:
    if (workdir / "metrics.json").exists():
        return json.loads((workdir / "metrics.json").read_text())
    return train_and_evaluate(config, workdir, dataset=dataset, quiet=True)


def stream(rec: Recommender, events: np.ndarray, batches: int, seed: int) -> float:
    order = np.random.default_rng(seed).permutation(len(events))
    tick = time.perf_counter()
    for part in np.array_split(events[order], batches):
        rec.update(part)
    return time.perf_counter() - tick


def compare(config, dataset, new_pairs: np.ndarray, test_pairs: np.ndarray, workdir: Path, args) -> dict:
    static = train(config, workdir / "static", dataset)
    # Retrained from scratch on train + new for the static run's best epoch count; its valid
    # split is a copy of the new pairs (evaluated once, at the end: nothing is chosen by it).
    epochs = static["best_epoch"]
    raw = apply_overrides(config_to_dict(config), [("train.epochs", epochs), ("train.eval_every", epochs),
                                                   ("train.patience", epochs + 1)])
    retrained_data = with_train(dataset, new_pairs, keep_valid=new_pairs)
    retrained = train(config_from_dict(raw), workdir / "retrained", retrained_data)
    online_config = OnlineConfig(passes=args.passes, new_share=args.new_share, learning_rate=args.learning_rate,
                                 max_steps=args.max_steps)
    rec = Recommender.load(workdir / "static", dataset=dataset, online=online_config)
    static_rec = Recommender.load(workdir / "static", dataset=dataset)
    retrained_rec = Recommender.load(workdir / "retrained", dataset=retrained_data)
    seconds = stream(rec, new_pairs, args.batches, args.seed)
    rows = {
        "static (masks train only)": (recall_at_20(static_rec, test_pairs), static["timing"]["total_seconds"]),
        "static (masks train + new)": (recall_at_20(static_rec, test_pairs, new_pairs),
                                       static["timing"]["total_seconds"]),
        f"online ({args.batches} updates)": (recall_at_20(rec, test_pairs), seconds),
        "retrained on train + new": (recall_at_20(retrained_rec, test_pairs), retrained["timing"]["total_seconds"]),
    }
    for name, (recall, secs) in rows.items():
        print(f"| {name} | {recall:.4f} | {secs:.1f} s |", flush=True)
    online = rows[f"online ({args.batches} updates)"][0]
    full = rows["retrained on train + new"][0]
    summary = {"rows": {k: {"recall@20": r, "seconds": s} for k, (r, s) in rows.items()},
               "online_vs_retrained": online / full, "online_seconds_vs_retrained": seconds / rows[
                   "retrained on train + new"][1],
               "n_new_events": int(len(new_pairs)), "online": dataclasses.asdict(online_config),
               "batches": args.batches, "model": config.model.name}
    print(f"online / retrained recall: {online / full:.3f}; time {summary['online_seconds_vs_retrained']:.3f}",
          flush=True)
    return summary


def lfm2k(args) -> dict:
    config = load_config(CONFIGS / f"{args.model}.yaml")
    dataset = load_dataset(config.data)
    # The static model never sees valid: it still needs a valid split for early stopping,
    # so the run's own valid split stays (its best epoch is the run's usual one).
    valid, test = dataset.split_pairs("valid"), dataset.split_pairs("test")
    return compare(config, dataset, valid, test, Path(args.workdir) / f"lfm2k_{args.model}", args)


def drifted_interactions(dataset, truth, *, rho: float, per_user: int, seed: int) -> np.ndarray:
    """``(n_users, per_user)`` items per user from the drifted tastes (module docstring)."""
    rng = np.random.default_rng(seed)
    factors = truth.user_factors
    drifted = np.sqrt(1 - rho ** 2) * factors + rho * rng.standard_normal(factors.shape).astype(np.float32)
    logits = truth.affinity_scale * drifted @ truth.item_factors.T + truth.item_log_popularity
    seen = dataset.split_pairs("train")
    logits[seen[:, 0], seen[:, 1]] = -np.inf
    gumbel = -np.log(-np.log(rng.uniform(size=logits.shape)))
    return np.argsort(-(logits + gumbel), axis=1)[:, :per_user]


def drift(args) -> dict:
    spec = dict(n_users=args.users, n_items=args.items, n_interactions=args.users * 20, seed=args.seed,
                dims={"img": 16})
    dataset, truth = jdata.make_synthetic(**spec, return_truth=True)
    drawn = drifted_interactions(dataset, truth, rho=args.drift, per_user=args.stream + args.test, seed=args.seed + 1)
    users = np.repeat(np.arange(dataset.n_users), args.stream)
    new_pairs = np.stack([users, drawn[:, :args.stream].reshape(-1)], axis=1).astype(np.int32)
    test_users = np.repeat(np.arange(dataset.n_users), args.test)
    test_pairs = np.stack([test_users, drawn[:, args.stream:].reshape(-1)], axis=1).astype(np.int32)
    config = config_from_dict({
        "data": {"synthetic": spec}, "model": {"name": args.model if args.model != "bpr" else "bprmf",
                                              "args": {"embedding_size": 32}},
        "train": {"epochs": 300, "batch_size": 1024, "learning_rate": 0.005, "patience": 10, "seed": 1},
        "eval": {"ks": [20]}, "loss_weights": {"reg": 0.01} if args.model in ("bpr", "bprmf") else {}})
    return compare(config, dataset, new_pairs, test_pairs, Path(args.workdir) / f"drift_{args.model}", args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=("lfm2k", "drift"))
    parser.add_argument("--model", default="bpr", help="lfm2k config name (drift: bpr only is set up)")
    parser.add_argument("--workdir", default="runs/bench_online")
    parser.add_argument("--batches", type=int, default=10, help="updates the new interactions are streamed in")
    parser.add_argument("--passes", type=float, default=20.0)
    parser.add_argument("--new-share", type=float, default=0.5)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--drift", type=float, default=0.5)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--stream", type=int, default=5)
    parser.add_argument("--test", type=int, default=3)
    args = parser.parse_args()
    summary = lfm2k(args) if args.part == "lfm2k" else drift(args)
    summary["args"] = {k: v for k, v in vars(args).items() if k != "workdir"}
    out = Path(args.workdir) / f"online_{args.part}_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
