"""Cold-start items on lfm2k or TikTok: feature-free and feature-only baselines beside the trained models.

Every figure is on the split of the dataset's cold-start configs
(``experiments/configs/<dataset>/coldstart/``, ``data.split: {method: cold_start_items,
holdout: 0.2, seed: 999}``): 20% of the interacted items are held out with ALL their
interactions, half as valid items, half as test items; valid and test rank only their own new
items (the engine's cold-start protocol), so a top-20 list is a choice among the new test items
(~142 on lfm2k, ~670 on TikTok), none of which has a single train interaction.

Baselines (computed here):

- ``random``: a ranking that knows nothing. Its expected recall@k is exactly
  ``k / n_candidates``; the other metrics are the mean over ``--random-draws`` seeded draws.
- ``feature_popularity``: popularity predicted from features. On new items there is no
  popularity to count (their train count is 0 for all of them; counting their valid or
  test interactions would read the answers), so a ridge regression from the item features
  to ``log(1 + train count)`` is fitted on the warm items and ranks the new items the same
  way for every user. Ridge strength chosen on the valid new items.
- ``feature_knn``: feature-only item kNN. Features are per-modality standardized (statistics
  of warm items) and scaled to unit rows, so the cosine of two items is the mean over
  modalities of the per-modality cosines; a new item ``j`` scores, for user ``u``,
  ``sum_{i in I_u, i in N_k(j)} cos(f_i, f_j)`` over its ``k`` most similar warm items
  ``N_k(j)``; ``k = all`` is the mean cosine between ``j`` and the user's train items. ``k``
  chosen on the valid new items.

Reference row (NOT a baseline, in ``references``): ``oracle_test_popularity`` ranks the new
test items by their number of TEST interactions -- it reads the answers, and is the best any
non-personalized ranking could do; a model that beats it is personalizing.

Also ``popularity``: the new items ranked by their train interaction count, which is 0 for
every one of them -- a tie broken at random (the mean over ``--random-draws`` seeded draws), so
a random ranking; it shows that popularity cannot rank new items. The same counts with the tie
broken by item id are reported beside it (``id_order_tie_break``): an artefact of the id order,
not a baseline.

Trained models (read from their run records under ``--runs``, default
``experiments/records/<dataset>/coldstart``; for a search record, its winner by
valid recall@20 on the valid new items): BPR-MF (its item vectors of new items are never
trained, so it ranks them at random), every model of ``MODEL_RUNS[dataset]`` that scores new
items from their modality features (SideMF, VBPR, the fusion models at the three levels,
kernel, subspace) and, on lfm2k, CKE, which scores them from their tag-KG node (TikTok has no
knowledge graph, so no CKE row there).

Output (``--out``, JSON)::

    {"dataset": str, "split": {"method", "holdout", "seed", "n_valid_items", "n_test_items",
                               "n_test_users", "n_test_interactions"},
     "protocol": "mmrec", "ks": [10, 20],
     "rows": [{"name", "kind": "baseline" | "model", "uses_features": bool, "description",
               "setting": {...}, "selected_by": str,
               "valid": {"recall@20": float, ...}, "test": {"recall@10", "recall@20",
               "ndcg@10", "ndcg@20": float, ...}, "source": "computed" | record file}],
     "references": [same fields, plus "leaks_test_labels": true]}

Command (from the project root, after the cold-start runs):
    python experiments/coldstart_baselines.py                     # lfm2k
    python experiments/coldstart_baselines.py --dataset tiktok    # -> experiments/results/tiktok_coldstart.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from jaxrec import data as jdata
from jaxrec import eval as jeval
from jaxrec._atomic import file_in_the_way, write_json_atomic
from jaxrec.errors import ConfigError, JaxrecError
from jaxrec.features import fit_standardizer
from jaxrec.train import load_config

sys.path.insert(0, str(Path(__file__).resolve().parent))
import records  # noqa: E402  (experiments/records.py, beside this script)

PROJECT = Path(__file__).resolve().parents[1]
KS = (10, 20)
METRICS = ("recall", "ndcg")
RIDGE_ALPHAS = (0.1, 1.0, 10.0, 100.0, 1000.0)
KNN_SIZES = (10, 20, 50, 100, 200, "all")
_LFM2K_RUNS = {  # row name -> (run or search folders under --runs, uses features, description)
    "bprmf": (("bprmf",), False, "BPR-MF trained on the warm items; new items keep their random initial vectors"),
    "sidemf": (("sidemf_search", "sidemf_search_standardized"), True, "SideMF: new items scored by U_u . W^T z_j (free factor masked)"),
    "vbpr": (("vbpr_search", "vbpr_search_standardized"), True, "VBPR (paper form): new items scored by theta_u . E f_j + beta'.f_j"),
    "fusion_mf (early)": (("fusion_mf_search",), True,
                          "feature level: one projection of the concatenated standardized features"),
    "attention": (("attention_search",), True, "vector level: user-conditioned attention over modality vectors"),
    "gated": (("gated_search",), True, "vector level: gated sum of modality vectors"),
    "ensemble": (("ensemble_search",), True, "model level: learned weights over per-modality scorers"),
    "kernel": (("kernel_search",), True, "item side = KernelEncoding of the modalities"),
    "subspace": (("subspace_search",), True, "modalities aligned by SubspaceProjection"),
    "cke": (("cke_search",), False, "CKE: new items scored from their tag-KG node (TransR), no modality features"),
}
# TikTok: the same models but CKE (no knowledge graph in the release; see experiments/configs/tiktok/cke.yaml);
# each row reads its search's winning trial by valid recall@20 (``<model>_search.jsonl``), or its single run
# (``<model>.jsonl``) where that is the only record (``_winning_run``).
_TIKTOK_RUNS = {
    name: ((folder, f"{folder}_search"), uses_features, description)
    for name, folder in (("bprmf", "bprmf"), ("sidemf", "sidemf"), ("vbpr", "vbpr"), ("fusion_mf (early)", "fusion_mf"),
                         ("attention", "attention"), ("gated", "gated"), ("ensemble", "ensemble"),
                         ("kernel", "kernel"), ("subspace", "subspace"))
    for _, uses_features, description in [_LFM2K_RUNS[name]]
}
MODEL_RUNS = {"lfm2k": _LFM2K_RUNS, "tiktok": _TIKTOK_RUNS}  # dataset -> row name -> (folders, uses features, ...)


def load_split(config_path: Path):
    """The dataset of a cold-start config (its data section: path, split, modalities)."""
    config = load_config(config_path)
    cfg = config.data
    if not cfg.split or cfg.split.get("method") != "cold_start_items":
        raise ConfigError(f"{config_path}: data.split is not a cold_start_items split (found {cfg.split!r}); "
                          "expected a cold-start config (experiments/configs/<dataset>/coldstart/)")
    dataset = jdata.load(cfg.path, format=cfg.format, **cfg.options)
    params = dict(cfg.split)
    dataset = jdata.split_dataset(dataset, params.pop("method"), **params)
    modalities = config.model.args.get("modalities") or cfg.modalities
    if modalities:
        dataset = dataset.select_modalities(modalities)
    return dataset, dict(cfg.split), config.eval.protocol


def _evaluate(dataset, user_emb, item_emb, split, candidates, protocol):
    return jeval.evaluate_protocol(
        np.asarray(user_emb, np.float32), np.asarray(item_emb, np.float32), split=split,
        train_pairs=dataset.split_pairs("train"), valid_pairs=dataset.split_pairs("valid"),
        test_pairs=dataset.split_pairs("test"), protocol=protocol, candidate_items=candidates, ks=list(KS),
        metrics=list(METRICS))


def _metrics(result) -> dict[str, float]:
    return {k: float(v) for k, v in result.items() if "@" in k}


def unit_features(dataset) -> np.ndarray:
    """Per-modality standardized (warm-item statistics), unit rows, blocks scaled by
    1/sqrt(M): a dot product is the mean of the per-modality cosines."""
    blocks = []
    for name, modality in dataset.modalities.items():
        rows = fit_standardizer(dataset, name).apply(modality.features)
        rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
        blocks.append(np.where(modality.mask[:, None], rows, 0.0))
    return np.concatenate(blocks, axis=1) / math.sqrt(len(blocks))


def standardized_features(dataset) -> np.ndarray:
    blocks = [np.where(m.mask[:, None], fit_standardizer(dataset, n).apply(m.features), 0.0)
              for n, m in dataset.modalities.items()]
    return np.concatenate(blocks, axis=1)


def train_matrix(dataset) -> np.ndarray:
    pairs = dataset.split_pairs("train")
    matrix = np.zeros((dataset.n_users, dataset.n_items), np.float32)
    matrix[pairs[:, 0], pairs[:, 1]] = 1.0
    return matrix


def warm_items(dataset) -> np.ndarray:
    counts = np.bincount(dataset.split_pairs("train")[:, 1], minlength=dataset.n_items)
    return counts > 0


def popularity_baseline(dataset, cold, protocol, draws: int, seed: int) -> dict:
    """Train interaction counts; ties broken at random (mean over ``draws`` seeded draws).

    Every new item has 0 train interactions, so this is a random ranking. Breaking the tie by
    item id instead would NOT be: lfm2k's item ids correlate with popularity, and an id-order
    tie-break scores far above chance (reported in the row's ``id_order_tie_break``).
    """
    counts = np.bincount(dataset.split_pairs("train")[:, 1], minlength=dataset.n_items).astype(np.float64)
    ones = np.ones((dataset.n_users, 1))
    rng = np.random.default_rng(seed)
    results = {"valid": [], "test": []}
    for _ in range(draws):
        scores = counts + rng.uniform(0.0, 0.5, size=counts.shape)  # integer counts: jitter only breaks ties
        for split in results:
            results[split].append(_metrics(_evaluate(dataset, ones, scores[:, None], split, getattr(cold, split),
                                                     protocol)))
    mean = {split: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} for split, rows in results.items()}
    by_id = {split: _metrics(_evaluate(dataset, ones, counts[:, None], split, getattr(cold, split), protocol))
             for split in ("valid", "test")}
    zero = all(counts[getattr(cold, split)].max() == 0 for split in ("valid", "test"))
    return {"name": "popularity", "kind": "baseline", "uses_features": False,
            "description": "train interaction counts, ties broken at random"
                           + (" (0 for every new item, so a random ranking)" if zero else ""),
            "setting": {"draws": draws, "seed": seed}, "selected_by": "nothing to select",
            "valid": mean["valid"], "test": mean["test"], "source": "computed",
            "id_order_tie_break": {"note": "the same counts with ties broken by smaller item id (an artefact of "
                                           "the id order, not a baseline)", **by_id}}


def random_baseline(dataset, cold, protocol, draws: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    results = {"valid": [], "test": []}
    for _ in range(draws):
        # Gaussian user and item vectors in 256 dimensions: exchangeable, per-user random scores.
        user_emb = rng.normal(size=(dataset.n_users, 256))
        item_emb = rng.normal(size=(dataset.n_items, 256))
        for split in results:
            results[split].append(_metrics(_evaluate(dataset, user_emb, item_emb, split, getattr(cold, split), protocol)))
    mean = {split: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} for split, rows in results.items()}
    for split in mean:
        n = len(getattr(cold, split))
        for k in KS:
            mean[split][f"expected_recall@{k}"] = min(1.0, k / n)
    return {"name": "random", "kind": "baseline", "uses_features": False,
            "description": f"random ranking; recall@k expectation k / n_candidates, other metrics the mean of "
                           f"{draws} seeded draws",
            "setting": {"draws": draws, "seed": seed}, "selected_by": "nothing to select",
            "valid": mean["valid"], "test": mean["test"], "source": "computed"}


def feature_popularity(dataset, cold, protocol) -> dict:
    features = standardized_features(dataset)
    counts = np.bincount(dataset.split_pairs("train")[:, 1], minlength=dataset.n_items)
    warm = warm_items(dataset)
    X = np.concatenate([features[warm], np.ones((warm.sum(), 1))], axis=1)
    y = np.log1p(counts[warm])
    ones = np.ones((dataset.n_users, 1))
    best = None
    for alpha in RIDGE_ALPHAS:
        penalty = alpha * np.eye(X.shape[1])
        penalty[-1, -1] = 0.0  # the intercept is not shrunk
        coef = np.linalg.solve(X.T @ X + penalty, X.T @ y)
        predicted = np.concatenate([features, np.ones((dataset.n_items, 1))], axis=1) @ coef
        valid = _metrics(_evaluate(dataset, ones, predicted[:, None], "valid", cold.valid, protocol))
        if best is None or valid["recall@20"] > best[1]["recall@20"]:
            best = (alpha, valid, predicted)
    alpha, valid, predicted = best
    test = _metrics(_evaluate(dataset, ones, predicted[:, None], "test", cold.test, protocol))
    return {"name": "feature_popularity", "kind": "baseline", "uses_features": True,
            "description": "non-personalized: ridge regression of log(1 + train count) on the standardized "
                           "features of warm items, predicted for new items",
            "setting": {"ridge_alpha": alpha, "alphas_tried": list(RIDGE_ALPHAS)},
            "selected_by": "valid recall@20 on the valid new items",
            "valid": valid, "test": test, "source": "computed"}


def feature_knn(dataset, cold, protocol) -> dict:
    features = unit_features(dataset)
    warm = warm_items(dataset)
    R = train_matrix(dataset)
    similarity = features @ features[warm].T  # (n_items, n_warm)
    order = np.argsort(-similarity, axis=1, kind="stable")
    best = None
    for k in KNN_SIZES:
        if k == "all":
            kept = similarity
        else:
            kept = np.zeros_like(similarity)
            rows = np.arange(similarity.shape[0])[:, None]
            kept[rows, order[:, :k]] = similarity[rows, order[:, :k]]
        # score(u, j) = sum_{i in I_u} kept[j, i]: user vectors are the train rows over warm items.
        user_emb, item_emb = R[:, warm], kept
        if k == "all":  # the mean (not the sum) over the user's items: the same ranking, stated plainly
            user_emb = user_emb / np.maximum(user_emb.sum(1, keepdims=True), 1.0)
        valid = _metrics(_evaluate(dataset, user_emb, item_emb, "valid", cold.valid, protocol))
        if best is None or valid["recall@20"] > best[1]["recall@20"]:
            best = (k, valid, user_emb, item_emb)
    k, valid, user_emb, item_emb = best
    test = _metrics(_evaluate(dataset, user_emb, item_emb, "test", cold.test, protocol))
    return {"name": "feature_knn", "kind": "baseline", "uses_features": True,
            "description": "score(u, j) = sum over the user's train items i among j's k most similar warm items "
                           "of cos(f_i, f_j) (k = all: mean cosine); per-modality standardized, unit-norm "
                           "features, modalities weighted equally",
            "setting": {"k": k, "k_tried": list(KNN_SIZES)}, "selected_by": "valid recall@20 on the valid new items",
            "valid": valid, "test": test, "source": "computed"}


def oracle_popularity(dataset, cold, protocol) -> dict:
    ones = np.ones((dataset.n_users, 1))
    rows = {}
    for split in ("valid", "test"):
        counts = np.bincount(dataset.split_pairs(split)[:, 1], minlength=dataset.n_items).astype(np.float64)
        rows[split] = _metrics(_evaluate(dataset, ones, counts[:, None], split, getattr(cold, split), protocol))
    return {"name": "oracle_test_popularity", "kind": "reference", "uses_features": False, "leaks_test_labels": True,
            "description": "new items ranked by their number of interactions IN THE EVALUATED SPLIT: reads the "
                           "answers; the ceiling of any non-personalized ranking, not a baseline",
            "setting": {}, "selected_by": "nothing to select", "valid": rows["valid"], "test": rows["test"],
            "source": "computed"}


def _source(path: Path, run: str | None = None) -> str:
    """A record file relative to the project, ``#run`` naming the winning trial of a search."""
    path = path.resolve()
    text = str(path.relative_to(PROJECT) if path.is_relative_to(PROJECT) else path)
    return f"{text}#{run}" if run else text


def _winning_run(paths: list[Path]) -> tuple[dict, str, Path] | None:
    """``(metrics, how it was chosen, source)``: of a single run's record, or of the trial
    with the best valid recall@20 over all trials of the given search records (a grid and its
    extension; the earliest trial wins a tie). Test figures are never looked at."""
    found = [records.read(p) for p in paths if p.exists()]
    if len(found) == 1 and found[0].kind == "run":
        run = next(iter(found[0].runs.values()))
        return run["metrics"], "early stopping on valid recall@20 over the valid new items", _source(found[0].path)
    trials = []
    for record in found:
        if record.kind == "search":
            trials += [(t, record) for t in record.search["trials"] if Path(str(t["workdir"])).name in record.runs]
    if not trials:
        return None
    best, record = max(enumerate(trials), key=lambda it: (it[1][0]["valid"].get("recall@20", -math.inf), -it[0]))[1]
    tried = sorted({json.dumps(t["setting"], sort_keys=True) for t, _ in trials})
    return (record.runs[Path(str(best["workdir"])).name]["metrics"],
            f"{len(trials)} settings {', '.join(tried)}; setting and early stopping both by valid recall@20 "
            "over the valid new items", _source(record.path, Path(str(best["workdir"])).name))


def model_rows(runs: Path, dataset: str = "lfm2k") -> list[dict]:
    rows = []
    for name, (folders, uses_features, description) in MODEL_RUNS[dataset].items():
        found = _winning_run([runs / f"{folder}.jsonl" for folder in folders])
        if found is None:
            print(f"note: no record of a finished run or search at {runs / folders[0]}.jsonl; row {name!r} left out "
                  "(run its cold-start config, then pack it with experiments/records.py)")
            continue
        metrics, selected_by, path = found
        rows.append({"name": name, "kind": "model", "uses_features": uses_features, "description": description,
                     "setting": {"loss_weights": metrics.get("loss_weights"), "best_epoch": metrics.get("best_epoch"),
                                 "epochs_run": metrics.get("epochs_run")},
                     "selected_by": selected_by,
                     "valid": {k: v for k, v in metrics["valid"].items() if k.split("@")[0] in METRICS},
                     "test": {k: v for k, v in metrics["test"].items() if k.split("@")[0] in METRICS},
                     "source": path})
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=sorted(MODEL_RUNS), default="lfm2k",
                        help="the benchmark: sets the defaults of --config, --runs and --out and the model rows")
    parser.add_argument("--config", type=Path, default=None,
                        help="a cold-start config whose data section defines the split "
                             "(default: experiments/configs/<dataset>/coldstart/vbpr.yaml)")
    parser.add_argument("--runs", type=Path, default=None,
                        help="folder of the cold-start models' run records (experiments/records.py; "
                             "default: experiments/records/<dataset>/coldstart)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: experiments/results/<dataset>_coldstart.json")
    parser.add_argument("--random-draws", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.config = args.config or PROJECT / f"experiments/configs/{args.dataset}/coldstart/vbpr.yaml"
    args.runs = args.runs or PROJECT / f"experiments/records/{args.dataset}/coldstart"
    args.out = args.out or PROJECT / f"experiments/results/{args.dataset}_coldstart.json"
    # Every argument checked before any work.
    if args.random_draws < 1:
        parser.error(f"--random-draws must be at least 1; found {args.random_draws}")
    if not args.config.is_file():
        _fail(f"--config {args.config}: no such config file (expected a cold-start config, e.g. "
              f"experiments/configs/{args.dataset}/coldstart/vbpr.yaml)")
    if not args.runs.is_dir():
        _fail(f"--runs {args.runs}: no such folder (expected the cold-start run records, "
              f"experiments/records/{args.dataset}/coldstart/*.jsonl)")
    if not any(args.runs.glob("*.jsonl")):
        _fail(f"--runs {args.runs}: no run records (*.jsonl) there; every model row would be left out")
    if args.out.is_dir():
        _fail(f"--out {args.out}: is a folder; expected the result file's path (e.g. {args.out / 'coldstart.json'})")
    blocking = file_in_the_way(args.out.parent)
    if blocking is not None:
        _fail(f"--out {args.out}: {blocking} is a file, not a folder")
    try:
        split_config = load_config(args.config).data.split or {}
        if split_config.get("method") != "cold_start_items":
            raise ConfigError(f"{args.config}: data.split is not a cold_start_items split (found "
                              f"{split_config or None!r}); expected a cold-start config")
        for record in sorted(args.runs.glob("*.jsonl")):
            records.read(record)
        dataset, split, protocol = load_split(args.config)
        cold = jdata.cold_items(dataset)
        rows = [popularity_baseline(dataset, cold, protocol, args.random_draws, args.seed),
                random_baseline(dataset, cold, protocol, args.random_draws, args.seed),
                feature_popularity(dataset, cold, protocol), feature_knn(dataset, cold, protocol)]
        rows += model_rows(args.runs, args.dataset)
    except (JaxrecError, records.RecordError, OSError) as error:
        _fail(str(error))
    test_pairs = dataset.split_pairs("test")
    result = {
        "dataset": dataset.name,
        "split": {**split, "n_valid_items": int(len(cold.valid)), "n_test_items": int(len(cold.test)),
                  "n_test_users": int(len(np.unique(test_pairs[:, 0]))), "n_test_interactions": int(len(test_pairs))},
        "protocol": protocol, "ks": list(KS), "rows": rows,
        "references": [oracle_popularity(dataset, cold, protocol)],
    }
    try:
        write_json_atomic(args.out, result)
    except OSError as error:
        _fail(f"cannot write {args.out}: {error}")
    width = max(len(r["name"]) for r in rows + result["references"])
    print(f"cold-start items: {len(cold.test)} new test items, {result['split']['n_test_users']} users")
    for row in rows + result["references"]:
        test = row["test"]
        print(f"{row['name']:<{width}}  test recall@20 {test['recall@20']:.4f}  ndcg@20 {test['ndcg@20']:.4f}  "
              f"(valid recall@20 {row['valid']['recall@20']:.4f})  {row['setting']}")
    print(f"wrote {args.out}")
    return result


def _fail(message: str):
    """A clear error line and exit status 2 (no traceback)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    main()
