"""Held-out recall by the item's train popularity: where each chosen run wins or loses.

The held-out interactions of a split are grouped by how many train interactions their item
has (``BUCKETS``: none, i.e. unseen in train, then 1-2, 3-5, 6-20, more than 20). For each
group the run (its best checkpoint, its own protocol: full ranking over all items, train items
masked) is scored on that group's pairs alone, as ``experiments/unseen_items.py`` scores the
unseen ones: ``recall@k = mean_u |top_k(u) ∩ T_u^b| / |T_u^b|`` over the users with a pair in
bucket ``b``. A content model should gain most on the rarely-seen items, where an ID vector
has had few interactions to learn from; ``chance`` is a uniformly random ranking's expected
recall@k on the same pairs.

Rows: the run each model's record chose (``make_results.collect_runs``; run folders in
``--runs`` as ``unseen_items.run_folder`` finds them), plus ``--extra LABEL=FOLDER`` runs (e.g.
the feature-transform runs).

Output (``--out``, JSON)::

    {"dataset", "ks", "buckets": [{"name", "low", "high"}],
     "counts": {split: {bucket: {"interactions", "items", "users"}}},
     "chance": {split: {bucket: {"recall@k"}}},
     "rows": [{"model", "label", "run", "record"?, split: {bucket: {"recall@k", "ndcg@k", "num_users"}}}]}

Command (from the project root, after the runs):
    python experiments/popularity_buckets.py --dataset tiktok [--extra freedom_centered=experiments/runs/tiktok/x]
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
import unseen_items  # noqa: E402

# (name, lowest, highest) train interactions of the item, inclusive; None: no upper bound.
BUCKETS = (("unseen", 0, 0), ("1-2", 1, 2), ("3-5", 3, 5), ("6-20", 6, 20), (">20", 21, None))
KS = (20, 50)
MODELS = ("bpr", "lightgcn", "vbpr", "freedom")


def bucket_masks(train_counts: np.ndarray) -> dict[str, np.ndarray]:
    """``{bucket: (n_items,) bool}`` from each item's number of train interactions."""
    return {name: (train_counts >= low) & (train_counts <= (high if high is not None else np.inf))
            for name, low, high in BUCKETS}


def _counts_and_chance(dataset, masks):
    counts, chance = {}, {}
    for split in unseen_items.SPLITS:
        counts[split], chance[split] = {}, {}
        for name, mask in masks.items():
            target = unseen_items.restricted_pairs(dataset, split, mask)
            counts[split][name] = {"interactions": int(len(target)), "items": int(np.unique(target[:, 1]).size),
                                   "users": int(np.unique(target[:, 0]).size)}
            chance[split][name] = {f"recall@{k}": unseen_items.chance_recall(dataset, split, mask, k) for k in KS}
    return counts, chance


def _by_split(scores: dict) -> dict:
    """``{bucket: {split: m}}`` -> ``{split: {bucket: m}}``."""
    out: dict = {}
    for bucket, splits in scores.items():
        for split, metrics in splits.items():
            out.setdefault(split, {})[bucket] = metrics
    return out


def build(dataset_name: str, runs_dir: Path, models=MODELS, extra: dict[str, Path] | None = None) -> dict:
    from jaxrec import train

    records_dir = HERE / "records" / dataset_name
    found = {record.path.resolve(): record for record in records.records_in(records_dir)}
    chosen = make_results.collect_runs(records_dir)
    runs = []
    for model in models:
        if model not in chosen:
            raise unseen_items.UnseenError(f"no chosen run of {model!r} in {records_dir}")
        record = found[(HERE / chosen[model][1]["source"]).resolve()]
        run = record.winner() if record.kind == "search" else next(iter(record.runs.values()))
        folder = unseen_items.run_folder(record, runs_dir, found.values())
        unseen_items._check_same_run(folder, run)
        runs.append({"model": model, "label": model, "record": chosen[model][1]["source"], "folder": folder})
    for label, folder in (extra or {}).items():
        if not (Path(folder) / "metrics.json").is_file():
            raise unseen_items.UnseenError(f"{folder}: no finished run there (metrics.json missing)")
        config = train.load_config(Path(folder) / "config.yaml")
        runs.append({"model": config.model.name, "label": label, "folder": Path(folder)})
    if not runs:
        raise unseen_items.UnseenError("no runs to score")
    experiment = train.prepare_experiment(train.load_config(runs[0]["folder"] / "config.yaml"))
    dataset = experiment.dataset
    masks = bucket_masks(np.bincount(dataset.split_pairs("train")[:, 1], minlength=dataset.n_items))
    counts, chance = _counts_and_chance(dataset, masks)
    rows = []
    for run in runs:
        scores = unseen_items.subsets_metrics(run["folder"], masks, ks=KS)
        row = {key: value for key, value in run.items() if key != "folder"}
        row["run"] = os.path.relpath(run["folder"], HERE.parent)
        rows.append({**row, **_by_split(scores)})
    return {"dataset": dataset_name, "ks": list(KS),
            "buckets": [{"name": n, "low": lo, "high": hi} for n, lo, hi in BUCKETS],
            "counts": counts, "chance": chance, "rows": rows}


def _extra(text: str) -> tuple[str, Path]:
    label, sep, folder = text.partition("=")
    if not sep or not label or not folder:
        raise argparse.ArgumentTypeError(f"--extra takes LABEL=RUN_FOLDER, got {text!r}")
    return label, Path(folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--runs", default=None, help="run folders (default experiments/runs/<dataset>)")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--extra", type=_extra, action="append", default=[], metavar="LABEL=FOLDER")
    parser.add_argument("--out", default=None, help="default experiments/results/<dataset>_popularity_buckets.json")
    args = parser.parse_args(argv)
    runs_dir = Path(args.runs) if args.runs else HERE / "runs" / args.dataset
    target = Path(args.out) if args.out else HERE / "results" / f"{args.dataset}_popularity_buckets.json"
    try:
        result = build(args.dataset, runs_dir, args.models, dict(args.extra))
    except (unseen_items.UnseenError, records.RecordError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_json_atomic(target, result)
    print(json.dumps(result["counts"]["test"]), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
