"""Held-out interactions on items unseen in train: what each chosen run does with them alone.

On TikTok (MMRec's split) a few hundred valid and test interactions fall on items that have
NO train interaction. The warm table counts them like every other held-out interaction; this
script scores them separately, from the SAME runs the warm table reports (the run chosen by
validation for each model, ``make_results.collect_runs``), reloaded from their best checkpoint.

For a split s and the set ``U_s`` of items without a train interaction, the subset metric of
a run is the split's metric (same protocol: full ranking over all items, training items
masked) with the held-out pairs restricted to ``{(u, i) in s : i in U_s}`` and the users to
those who have such a pair: ``recall@k = mean_u |top_k(u) ∩ T_u| / |T_u|`` with ``T_u`` the
user's held-out unseen items.

Which models can score such an item at all: a model whose item side reads content
(``model.args.modalities`` in its config: VBPR's ``E f_i``, the graph models' feature
projections and item-item kNN graphs) places an unseen item by its features; a pure-ID model
(BPR-MF, LightGCN) has only the item's random initial vector, which training never pulls up
(the item is never a positive, and is a sampled negative) -- at best chance, usually below.
``chance`` is the exact expected recall@k of a uniformly random ranking,
``mean_u k / (n_items - |train_u|)`` over the same users.

Output (``--out``, JSON)::

    {"dataset", "protocol", "ks",
     "counts": {split: {"interactions", "items", "users"}},
     "chance": {split: {"recall@k": float}},
     "rows": [{"model", "item_side": "content" | "id only", "modalities": [...],
               "record": str, "run": str, split: {"recall@k", "ndcg@k": float, "num_users"}}]}

Command (from the project root, after the runs, with their folders in ``--runs``):
    python experiments/unseen_items.py --dataset tiktok
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from jaxrec._atomic import write_json_atomic

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import make_results  # noqa: E402
import records  # noqa: E402

KS = (10, 20, 50)
METRICS = ("recall", "ndcg")
SPLITS = ("valid", "test")


class UnseenError(ValueError):
    """A run folder missing or not matching its record."""


def unseen_items(dataset) -> np.ndarray:
    """Boolean ``(n_items,)``: the item has no train interaction."""
    counts = np.bincount(dataset.split_pairs("train")[:, 1], minlength=dataset.n_items)
    return counts == 0


def restricted_pairs(dataset, split: str, items: np.ndarray) -> np.ndarray:
    """The ``split`` pairs whose item is flagged in the boolean ``items``."""
    pairs = np.asarray(dataset.split_pairs(split))
    return pairs[items[pairs[:, 1]]]


def chance_recall(dataset, split: str, items: np.ndarray, k: int) -> float:
    """Expected recall@k of a uniformly random ranking on the restricted pairs of ``split``
    (mmrec protocol: each user's train items masked)."""
    target = restricted_pairs(dataset, split, items)
    users = np.unique(target[:, 0])
    if users.size == 0:
        return float("nan")
    train = np.asarray(dataset.split_pairs("train"))
    n_train = np.bincount(train[:, 0], minlength=dataset.n_users)[users]
    return float(np.mean(np.minimum(k, dataset.n_items - n_train) / (dataset.n_items - n_train)))


def subset_metrics(workdir, items: np.ndarray | None = None, *, ks=KS, metrics=METRICS) -> dict[str, dict]:
    """Per split, the run's metrics (its best checkpoint, its own protocol) on the held-out
    pairs whose item is flagged in ``items`` (default: the items unseen in train)."""
    return subsets_metrics(workdir, {"subset": items}, ks=ks, metrics=metrics)["subset"]


def subsets_metrics(workdir, subsets: dict, *, ks=KS, metrics=METRICS) -> dict[str, dict[str, dict]]:
    """``{name: {split: metrics}}`` for each boolean item mask of ``subsets`` (None: the items
    unseen in train), the run restored and encoded once."""
    from jaxrec import eval as jeval
    from jaxrec import train

    experiment, state, epoch = train.restore_best(workdir)
    dataset, cfg = experiment.dataset, experiment.config
    ctx = train.epoch_context(experiment.built, state.params, cfg.train.seed, epoch)
    user_emb, item_emb = train.make_encoder(experiment.module)(state.params, ctx)
    pairs = {name: np.asarray(dataset.split_pairs(name)) for name in ("train", "valid", "test")}
    result = {}
    for name, items in subsets.items():
        items = unseen_items(dataset) if items is None else np.asarray(items, bool)
        out = {}
        for split in SPLITS:
            chosen = dict(pairs)
            chosen[split] = restricted_pairs(dataset, split, items)
            if len(chosen[split]) == 0:
                continue
            layout = jeval.prepare_protocol(split=split, num_items=dataset.n_items, train_pairs=chosen["train"],
                                            valid_pairs=chosen["valid"], test_pairs=chosen["test"],
                                            protocol=cfg.eval.protocol, batch_size=cfg.eval.batch_size)
            scores = jeval.evaluate_prepared(layout, user_emb, item_emb, ks=ks, metrics=metrics)
            out[split] = {key: float(value) for key, value in scores.items() if "@" in key}
            out[split]["num_users"] = int(scores["num_users"])
            out[split]["rank_percentile"] = rank_percentiles(user_emb, item_emb, chosen[split], pairs["train"])
        result[name] = out
    return result


def rank_percentiles(user_emb, item_emb, target: np.ndarray, train: np.ndarray) -> dict:
    """Where the held-out items of ``target`` (pairs) land in their user's full ranking: the
    share of the user's non-train items scored strictly above each one (0: first; a random
    ranking gives 0.5 on average and puts 10% of them in the top tenth), summarized as
    ``{"median", "mean", "top_tenth"}`` over the pairs."""
    users = np.asarray(user_emb, np.float64)
    items = np.asarray(item_emb, np.float64)
    order = np.argsort(train[:, 0], kind="stable")
    starts = np.searchsorted(train[order, 0], np.arange(users.shape[0] + 1))
    shares = np.empty(len(target))
    for row, (user, item) in enumerate(np.asarray(target)):
        scores = items @ users[user]
        seen = train[order[starts[user]:starts[user + 1]], 1]
        scores[seen] = -np.inf
        shares[row] = np.count_nonzero(scores > scores[item]) / (scores.size - np.unique(seen).size)
    return {"median": float(np.median(shares)), "mean": float(np.mean(shares)),
            "top_tenth": float(np.mean(shares < 0.1))}


def item_side(run: dict) -> tuple[str, list]:
    """``(item side, modalities)`` of a recorded run: ``"content"`` when its item side is scored
    from features (``model.args.modalities``, or a wrapper's ``base_args.modalities`` such as
    gan's VBPR), ``"id only, content in training"`` when only a training term reads them
    (contrastive's ``model.args.modality``: ranking is its base's ID table, and an item never
    seen as a positive is never in that term), else ``"id only"``."""
    scored = make_results.scoring_modalities(run)
    if scored:
        return "content", scored
    read = make_results._modalities(run)
    return ("id only, content in training" if read else "id only"), read


def run_folder(record: records.Record, runs_dir: Path, others=()) -> Path:
    """The scratch run folder a record was packed from, under ``runs_dir``: ``runs_dir/<name>``
    for a run, ``runs_dir/<name>/<winning trial>`` for a search; for a final run that was a
    search's winning trial reused (``experiments/reproduce.py``; the record's ``source`` is
    ``.../<search>/trial_NNN``), ``runs_dir/<search>/trial_NNN``. Without such a folder under
    ``runs_dir``, the recorded ``source`` itself when it holds a finished run. A record packed
    before ``source`` was kept: a trial of the row's search records in ``others`` whose metrics
    are the run's own (the reused trial), ``runs_dir/<search>/<trial>``. Else the first
    candidate (whose absence the caller reports)."""
    if record.kind == "search":
        return runs_dir / record.name / Path(str(record.search["best"]["workdir"])).name
    candidates = [runs_dir / record.name]
    if record.source:
        source = Path(record.source)
        if source.name.startswith("trial_"):
            candidates.append(runs_dir / source.parent.name / source.name)
        candidates.append(source if source.is_absolute() else HERE.parent / source)
    metrics = next(iter(record.runs.values()), {}).get("metrics")
    for other in others:
        if other.kind == "search" and make_results._row_name(other.name) == record.name:
            candidates += [runs_dir / other.name / trial for trial, run in other.runs.items()
                           if metrics is not None and run.get("metrics") == metrics]
    return next((c for c in candidates if (c / "metrics.json").is_file()), candidates[0])


def _check_same_run(folder: Path, run: dict) -> None:
    metrics_path = folder / "metrics.json"
    if not metrics_path.is_file():
        raise UnseenError(f"{folder}: no finished run there (metrics.json missing); run it or pass --runs")
    ours = json.loads(metrics_path.read_text())
    if (ours.get("best_epoch") != run["metrics"].get("best_epoch")
            or abs(ours["test"]["recall@20"] - run["metrics"]["test"]["recall@20"]) > 1e-9):
        raise UnseenError(f"{folder}: its metrics.json (best epoch {ours.get('best_epoch')}, test recall@20 "
                          f"{ours['test']['recall@20']}) is not the recorded run's; re-pack or re-run it")


def _fingerprint(run: dict) -> dict:
    """What identifies a recorded run's result: its best epoch and test recall@20."""
    metrics = run.get("metrics") or {}
    return {"best_epoch": metrics.get("best_epoch"), "test_recall@20": (metrics.get("test") or {}).get("recall@20")}


def build(dataset_name: str, runs_dir: Path, previous: dict | None = None, skip_missing: bool = False) -> dict:
    """The output JSON; rows of ``previous`` (an earlier output) are kept for runs it already
    scored (same model, record file and run folder, and the same recorded result: a row whose
    ``fingerprint`` differs from the record's is scored again). A row is kept without its run
    folder (scratch, possibly deleted) only for the same record; a run folder at hand is
    checked against its record. With ``skip_missing``, a chosen run whose folder is gone and
    that was never scored is left out (listed under ``not_scored``) instead of an error."""
    from jaxrec import train

    kept = {(row["model"], row["record"], row["run"]): row for row in (previous or {}).get("rows", [])}

    records_dir = HERE / "records" / dataset_name
    found = {record.path.resolve(): record for record in records.records_in(records_dir)}
    chosen = make_results.collect_runs(records_dir)
    rows, dataset, protocol, not_scored = [], None, None, []
    for model in sorted(chosen, key=make_results._order_key):
        _, info = chosen[model]
        record = found[(HERE / info["source"]).resolve()]
        run = record.winner() if record.kind == "search" else next(iter(record.runs.values()))
        folder = run_folder(record, runs_dir, found.values())
        key = (model, info["source"], os.path.relpath(folder, HERE.parent))
        fingerprint = _fingerprint(run)
        previous_row = kept.get(key)
        if previous_row is not None and previous_row.get("fingerprint", fingerprint) != fingerprint:
            previous_row = None  # the record was re-packed from another run: score it again
        if not (folder / "metrics.json").is_file() and previous_row is None and skip_missing:
            print(f"note: {model}: its run folder {folder} is gone and it was never scored; left out",
                  file=sys.stderr)
            not_scored.append({"model": model, "record": key[1], "run": key[2]})
            continue
        if (folder / "metrics.json").is_file() or previous_row is None:
            _check_same_run(folder, run)
            if previous_row is not None and "fingerprint" not in previous_row:
                previous_row = None  # an older row without a fingerprint, and the run is at hand: score it
        # else: the folder is gone, and the earlier row of the same record is kept
        side, modalities = item_side(run)
        if dataset is None and (folder / "config.yaml").is_file():
            experiment = train.prepare_experiment(train.load_config(folder / "config.yaml"))
            dataset, protocol = experiment.dataset, experiment.config.eval.protocol
        scores = ({s: previous_row[s] for s in SPLITS if s in previous_row} if previous_row is not None
                  else subset_metrics(folder))
        rows.append({"model": model, "item_side": side, "modalities": modalities,
                     "record": key[1], "run": key[2], "fingerprint": fingerprint,
                     "negative_items": ((run.get("config") or {}).get("train") or {}).get("negative_items", "all"),
                     **scores})
    if dataset is None:
        raise UnseenError(f"no run folder of a chosen run in {runs_dir} to load the dataset from")
    items = unseen_items(dataset)
    counts, chance = {}, {}
    for split in SPLITS:
        target = restricted_pairs(dataset, split, items)
        counts[split] = {"interactions": int(len(target)), "items": int(np.unique(target[:, 1]).size),
                         "users": int(np.unique(target[:, 0]).size)}
        chance[split] = {f"recall@{k}": chance_recall(dataset, split, items, k) for k in KS}
    return {"dataset": dataset_name, "protocol": protocol, "ks": list(KS), "counts": counts, "chance": chance,
            "rows": rows, "not_scored": not_scored}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--runs", default=None, help="run folders (default experiments/runs/<dataset>)")
    parser.add_argument("--out", default=None, help="default experiments/results/<dataset>_unseen_items.json")
    parser.add_argument("--fresh", action="store_true", help="score every run again (default: keep the rows of "
                        "runs the existing output already scored)")
    parser.add_argument("--skip-missing", action="store_true", help="leave out chosen runs whose folder is gone "
                        "and that were never scored (default: an error)")
    args = parser.parse_args(argv)
    runs_dir = Path(args.runs) if args.runs else HERE / "runs" / args.dataset
    target = Path(args.out) if args.out else HERE / "results" / f"{args.dataset}_unseen_items.json"
    previous = json.loads(target.read_text()) if target.is_file() and not args.fresh else None
    try:
        result = build(args.dataset, runs_dir, previous, skip_missing=args.skip_missing)
    except (UnseenError, records.RecordError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_json_atomic(target, result)
    print(json.dumps(result["counts"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
