"""How much ranking signal the item features carry on their own, and what their scale does.

A diagnostic for the TikTok results (``experiments/results/tiktok.md``): no training, numpy only.
On the dataset's own split (train pairs known, test pairs scored, mmrec protocol: each user's
train items masked, full ranking over all items), for each modality and each preprocessing of
its rows (``raw``; ``centered``: minus the item mean; ``standardized``: centered and divided by
the per-dimension std), rows are scaled to unit norm and

- ``mean_offdiag_cosine``: the mean cosine of two different items (near 1: one shared
  direction dominates every row, so a cosine kNN graph of the raw rows mostly sees it);
- ``knn10_test_recall@20``: test recall@20 of the item-kNN scorer ``score(u, j) = sum_{i in I_u}
  S_ij`` with ``S`` the cosine matrix kept at each item's 10 nearest other items (the frozen
  graph FREEDOM builds, used alone).

Beside them, ``popularity``: test recall@20 of ranking every user's unseen items by their train
interaction count -- the floor a personalized model should clear.

Usage (from the project root):
    python experiments/feature_probe.py [--dataset tiktok] [--out experiments/results/<dataset>_feature_probe.json]

``--dataset`` is a dataset name, as for the other scripts (``../shared/data/<name>``), or a
dataset folder; the default ``--out`` is named after the dataset.
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
DATA = HERE.parent.parent / "shared" / "data"  # the datasets by name
K, NEIGHBOURS = 20, 10


def dataset_folder(text: str) -> Path:
    """``--dataset``: a name (``tiktok`` -> ``../shared/data/tiktok``) or a folder."""
    path = Path(text).expanduser()
    if os.sep not in text and (os.altsep is None or os.altsep not in text) and not path.exists():
        return DATA / text
    return path


def recall_at_k(scores: np.ndarray, train_rows: list[np.ndarray], targets: list[np.ndarray], k: int = K) -> float:
    """Mean over users of |top_k ∩ targets| / |targets|, train items masked (rows of ``scores``)."""
    scores = scores.astype(np.float64, copy=True)
    out = []
    for row, seen, target in zip(scores, train_rows, targets):
        row[seen] = -np.inf
        top = np.argpartition(-row, k)[:k]
        out.append(np.isin(target, top).sum() / len(target))
    return float(np.mean(out))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="tiktok",
                        help="a dataset name (../shared/data/<name>) or a dataset folder (default tiktok)")
    parser.add_argument("--out", default=None, help="default experiments/results/<dataset>_feature_probe.json")
    args = parser.parse_args(argv)
    folder = dataset_folder(args.dataset)
    name = os.path.basename(os.path.normpath(folder))
    target = Path(args.out) if args.out else HERE / "results" / f"{name}_feature_probe.json"
    if not folder.is_dir():
        known = sorted(p.name for p in DATA.iterdir() if p.is_dir()) if DATA.is_dir() else []
        print(f"error: --dataset {args.dataset}: no dataset folder {folder} (expected a name"
              + (f" such as {', '.join(known)}" if known else "") + " or a dataset folder)", file=sys.stderr)
        return 2
    if target.is_dir():
        print(f"error: --out {target}: is a folder; expected the result file's path", file=sys.stderr)
        return 2
    from jaxrec import data
    from jaxrec.errors import JaxrecError

    try:
        dataset = data.load(folder)
    except (JaxrecError, OSError) as error:
        print(f"error: --dataset {args.dataset}: {error}", file=sys.stderr)
        return 2
    train, test = np.asarray(dataset.split_pairs("train")), np.asarray(dataset.split_pairs("test"))
    users = np.unique(test[:, 0])
    train_rows = [train[train[:, 0] == u, 1] for u in users]
    targets = [test[test[:, 0] == u, 1] for u in users]
    interactions = np.zeros((len(users), dataset.n_items), np.float32)
    for position, seen in enumerate(train_rows):
        interactions[position, seen] = 1.0
    popularity = np.bincount(train[:, 1], minlength=dataset.n_items).astype(np.float64)
    result = {"dataset": name, "test_users": int(len(users)),
              "popularity_test_recall@20": recall_at_k(np.tile(popularity, (len(users), 1)), train_rows, targets),
              "modalities": {}}
    for name in dataset.modality_names:
        features = np.asarray(dataset.modalities[name].features, np.float32)
        rows = {}
        for how in ("raw", "centered", "standardized"):
            x = features if how == "raw" else features - features.mean(0)
            if how == "standardized":
                x = x / (features.std(0) + 1e-6)
            x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            similarity = x @ x.T
            np.fill_diagonal(similarity, 0.0)
            n = len(similarity)
            keep = np.argpartition(-similarity, NEIGHBOURS, axis=1)[:, :NEIGHBOURS]
            knn = np.zeros_like(similarity)
            np.put_along_axis(knn, keep, np.take_along_axis(similarity, keep, 1), 1)
            rows[how] = {"mean_offdiag_cosine": float(similarity.sum() / (n * (n - 1))),
                         "knn10_test_recall@20": recall_at_k(interactions @ knn, train_rows, targets)}
        result["modalities"][name] = rows
    try:
        write_json_atomic(target, result)
    except OSError as error:
        print(f"error: cannot write {target}: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
