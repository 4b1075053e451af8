"""Missing modality on Last.fm 2K: 30% of the vggish rows hidden, refilled by a GAN or by the mean.

Runs, from ``experiments/configs/lfm2k/gan.yaml``:

1. Reconstruction of the hidden rows (the direct measure), in the original vggish space:
   mean squared error, cosine to the truth, and cosine of the rows centred on the mean of
   the present rows (the mean fill's centred cosine is 0 by construction, so this shows how
   much of each item's own deviation a fill recovers). Fills: the mean of the present rows;
   ridge regression from the same inputs as the GAN (its penalty chosen on the same kind of
   10% held-out present rows); the GAN with its adversarial term switched off (a plain MLP
   regressor, the ablation); and the GAN.
2. Recommendation: the recommender of gan.yaml (VBPR) trained on the full data, on the
   mean-filled data and on the GAN-filled data, ``--seeds`` training seeds each; test
   recall@10/20 and ndcg@10/20 at the best validation epoch, mean and standard deviation.
   Two scenarios: ``warm`` (gan.yaml as is) and ``cold_start`` (20% of the items held out
   with all their interactions and ranked from their features alone, VBPR on vggish only).

Usage (from the project root)::

    python experiments/missing_modality.py [--seeds 999 1000 1001] [--scenarios warm cold_start]
                                           [--skip-training] [--config C] [--out F] [--runs DIR] [--max-epochs N]

Writes ``experiments/results/lfm2k_missing_modality.json`` and the runs under
``experiments/runs/lfm2k/missing_modality/<fill>/trial_NNN/`` (one search over the seeds per fill and
scenario, ``cold_start_<fill>`` for the cold-start scenario, its trials trained as one batched program;
scratch workdirs; pack them into
the committed record with ``python experiments/records.py pack experiments/runs/lfm2k/missing_modality
experiments/records/lfm2k/missing_modality.jsonl``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from pathlib import Path

import sys

import jax
import numpy as np
import yaml

from jaxrec import data as jdata
from jaxrec._atomic import file_in_the_way, write_json_atomic
from jaxrec.errors import JaxrecError
from jaxrec.models.gan import (
    fill_missing_with_gan,
    fill_missing_with_mean,
    gan_conditions,
    hide_modality_rows,
)
from jaxrec.train import config_from_dict, run_search

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "experiments/configs/lfm2k/gan.yaml"
RESULT = ROOT / "experiments/results/lfm2k_missing_modality.json"
RUNS = ROOT / "experiments/runs/lfm2k/missing_modality"
METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def reconstruction_errors(filled_rows, truth, present_mean) -> dict[str, float]:
    """MSE, mean cosine and mean centred cosine of ``filled_rows`` against ``truth`` (both (n, d))."""
    filled_rows, truth = np.asarray(filled_rows, np.float64), np.asarray(truth, np.float64)

    scale = np.linalg.norm(present_mean)

    def cosine(a, b):
        # A row within float32 rounding of the centre (the mean fill, centred) has no
        # direction: its cosine is 0, not the cosine of its rounding noise.
        norm_a, norm_b = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
        directional = norm_a > 1e-5 * scale
        cosines = np.sum(a * b, axis=1) / np.maximum(norm_a * norm_b, 1e-300)
        return float(np.mean(np.where(directional, cosines, 0.0)))

    return {"mse": float(np.mean((filled_rows - truth) ** 2)), "cosine": cosine(filled_rows, truth),
            "centred_cosine": cosine(filled_rows - present_mean, truth - present_mean)}


def ridge_fill(dataset, modality, sources, id_embedding_dim, *, holdout=0.1, seed=0,
               penalties=(0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)):
    """Ridge regression of the standardized modality on the GAN's conditions, the penalty
    chosen by the held-out present rows' MSE; returns (filled rows of the missing items, penalty)."""
    mod = dataset.modalities[modality]
    condition = np.c_[gan_conditions(dataset, sources, id_embedding_dim), np.ones(dataset.n_items)]
    rows = mod.features[mod.mask].astype(np.float64)
    mean, std = rows.mean(0), np.where(rows.std(0) < 1e-8, 1.0, rows.std(0))
    target = (mod.features.astype(np.float64) - mean) / std
    present = np.flatnonzero(mod.mask)
    shuffled = np.random.default_rng(seed).permutation(present)
    held, fit = shuffled[:round(holdout * present.size)], shuffled[round(holdout * present.size):]

    def solve(rows_, penalty):
        x = condition[rows_]
        return np.linalg.solve(x.T @ x + penalty * np.eye(x.shape[1]), x.T @ target[rows_])

    errors = {p: float(np.mean((condition[held] @ solve(fit, p) - target[held]) ** 2)) for p in penalties}
    best = min(errors, key=errors.get)
    missing = np.flatnonzero(~mod.mask)
    weights = solve(present, best)  # refit on every present row with the chosen penalty
    return condition[missing] @ weights * std + mean, best, errors


def reconstruction_table(config) -> dict:
    args = config["model"]["args"]
    modality = args["modality"]
    dataset = jdata.load(config["data"]["path"], format=config["data"]["format"])
    hidden_dataset, hidden = hide_modality_rows(dataset, modality, args["hide_fraction"], seed=args["hide_seed"])
    truth = dataset.modalities[modality].features[hidden]
    present_mean = hidden_dataset.modalities[modality].features[hidden_dataset.modalities[modality].mask].astype(
        np.float64).mean(0)
    table, details = {}, {}
    mean_filled = fill_missing_with_mean(hidden_dataset, modality)
    table["mean"] = reconstruction_errors(mean_filled.modalities[modality].features[hidden], truth, present_mean)
    ridge_rows, penalty, ridge_errors = ridge_fill(hidden_dataset, modality, args["sources"], args["id_embedding_dim"])
    table["ridge"] = reconstruction_errors(ridge_rows, truth, present_mean)
    details["ridge"] = {"penalty": penalty, "holdout_mse_by_penalty": ridge_errors}
    for name, overrides in (("gan_without_adversarial_term", {"adversarial_weight": 0.0}), ("gan", {})):
        started = time.perf_counter()
        filled, result = fill_missing_with_gan(hidden_dataset, modality, jax.random.PRNGKey(args["seed"]),
                                               sources=args["sources"], id_embedding_dim=args["id_embedding_dim"],
                                               **{**args["gan"], **overrides})
        table[name] = reconstruction_errors(filled.modalities[modality].features[hidden], truth, present_mean)
        details[name] = {"best_step": result.best_step, "seconds": time.perf_counter() - started,
                         "holdout_mse_standardized": min(h["holdout_mse"] for h in result.history),
                         "history": result.history}
    return {"modality": modality, "hidden_items": int(hidden.size), "present_items": int(
        hidden_dataset.modalities[modality].mask.sum()), "hide_seed": args["hide_seed"],
        "sources": args["sources"], "errors_on_hidden_rows": table, "details": details}


SCENARIOS = {
    # gan.yaml as it is: warm items, VBPR on [MiniLM, vggish].
    "warm": {},
    # New items scored from their features alone (20% of the items held out with all their
    # interactions), by VBPR on vggish only: the hidden rows of new items are then all a
    # model knows about them, so this is where a fill's quality can show in the ranking.
    "cold_start": {"split": {"method": "cold_start_items", "holdout": 0.2}, "modalities": ["vggish"]},
}


def scenario_config(config, scenario: str) -> dict:
    config = copy.deepcopy(config)
    change = SCENARIOS[scenario]
    if "split" in change:
        config["data"]["split"] = change["split"]
    if "modalities" in change:
        config["model"]["args"]["base_args"]["modalities"] = change["modalities"]
    return config


def fill_configs(config) -> dict[str, dict]:
    """The three runs' configs: full data (nothing hidden), mean fill, GAN fill."""
    configs = {}
    for fill in ("full", "mean", "gan"):
        variant = copy.deepcopy(config)
        args = variant["model"]["args"]
        if fill == "full":
            args.update(fill="none", hide_fraction=0.0)
        else:
            args["fill"] = fill
        configs[fill] = variant
    return configs


def train_runs(config, seeds, scenario: str = "warm", runs_dir: Path = RUNS) -> dict:
    """Each fill's runs over ``seeds``: ONE search over ``train.seed`` per fill, its trials trained
    together as one batched program (``jaxrec.train.run_search``: the seeds share the model's
    build, here the GAN fill, the compilation and every epoch's dispatch). Trial ``i`` of
    ``runs_dir/<fill>`` (``<scenario>_<fill>`` for a scenario other than warm) is seed ``seeds[i]``;
    a finished search folder is reused."""
    runs = {}
    for fill, variant in fill_configs(scenario_config(config, scenario)).items():
        workdir = runs_dir / (fill if scenario == "warm" else f"{scenario}_{fill}")
        search = copy.deepcopy(variant)
        search["grid"] = {"train.seed": [int(seed) for seed in seeds]}
        summary = run_search(config_from_dict(search), workdir, resume="auto", quiet=True)
        by_seed = {int(trial["setting"]["train.seed"]): Path(trial["workdir"]) for trial in summary["trials"]}
        per_seed = []
        for seed in seeds:
            metrics = json.loads((by_seed[int(seed)] / "metrics.json").read_text())
            per_seed.append({"seed": int(seed), "best_epoch": metrics["best_epoch"],
                             "seconds_per_epoch": metrics["timing"]["train_seconds_per_epoch"],
                             **{f"valid_{m}": metrics["valid"][m] for m in ("recall@20",)},
                             **{f"test_{m}": metrics["test"][m] for m in METRICS}})
            print(scenario, fill, seed, {k: round(v, 4) for k, v in per_seed[-1].items() if k.startswith("test")}, flush=True)
        summary_stats = {}
        for key in [f"test_{m}" for m in METRICS] + ["valid_recall@20"]:
            values = np.array([run[key] for run in per_seed])
            summary_stats[key] = {"mean": float(values.mean()),
                                  "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
        runs[fill] = {"summary": summary_stats, "runs": per_seed}
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[999, 1000, 1001])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--skip-training", action="store_true", help="only the reconstruction table")
    parser.add_argument("--config", type=Path, default=CONFIG, help="the GAN config (default: lfm2k's gan.yaml)")
    parser.add_argument("--out", type=Path, default=RESULT, help="the result JSON")
    parser.add_argument("--runs", type=Path, default=RUNS, help="folder of the run workdirs")
    parser.add_argument("--max-epochs", type=int, help="cap train.epochs of every run (smoke runs)")
    options = parser.parse_args(argv)
    if options.max_epochs is not None and options.max_epochs < 1:
        parser.error(f"--max-epochs must be at least 1; found {options.max_epochs}")
    if len(set(options.seeds)) != len(options.seeds):
        parser.error(f"--seeds: a seed listed twice in {options.seeds}")
    try:  # every argument checked before any work
        config = check_config(options.config)
        if options.out.is_dir():
            raise ValueError(f"--out {options.out}: is a folder; expected the result file's path")
        for flag, path in (("--out", options.out), ("--runs", options.runs)):
            blocking = file_in_the_way(path if flag == "--runs" else path.parent)
            if blocking is not None:
                raise ValueError(f"{flag} {path}: {blocking} is a file, not a folder")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if options.max_epochs is not None:
        config["train"]["epochs"] = min(config["train"].get("epochs", options.max_epochs), options.max_epochs)
    # The config's data path is relative to the project root, wherever this script runs from.
    config["data"]["path"] = str((ROOT / config["data"]["path"]).resolve())
    started = time.perf_counter()
    try:
        result = {"config": os.path.relpath(options.config.resolve(), ROOT), "base_model": config["model"]["args"]["base"],
                  "hide_fraction": config["model"]["args"]["hide_fraction"],
                  "reconstruction": reconstruction_table(config)}
        print(json.dumps(result["reconstruction"]["errors_on_hidden_rows"], indent=1), flush=True)
        if not options.skip_training:
            result["recommendation"] = {}
            for scenario in options.scenarios:
                result["recommendation"][scenario] = {
                    "split": SCENARIOS[scenario].get("split", "the dataset's own (x_label)"),
                    "base_modalities": scenario_config(config, scenario)["model"]["args"]["base_args"]["modalities"],
                    **train_runs(config, options.seeds, scenario, options.runs)}
        result["seconds"] = time.perf_counter() - started
        write_json_atomic(options.out, result)
    except (JaxrecError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {options.out}")
    return 0


# What this script reads of the config, beyond what jaxrec's config check covers.
_GAN_ARGS = ("modality", "hide_fraction", "hide_seed", "seed", "sources", "id_embedding_dim", "gan", "base",
             "base_args")


def check_config(path: Path) -> dict:
    """The raw config at ``path`` if it is a GAN config this script can run (``model.name: gan``
    with a base recommender and the hidden modality), else ValueError naming the file and field."""
    from jaxrec.train import load_config

    try:
        load_config(path)  # the keys and values jaxrec itself checks (a missing file, a typo)
    except JaxrecError as error:
        raise ValueError(f"--config: {error}") from None
    config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    model = (config or {}).get("model") or {}
    if model.get("name") != "gan":
        raise ValueError(f"{path}: model.name is {model.get('name')!r}; expected gan (a config of the GAN fill "
                         "wrapping a recommender, e.g. experiments/configs/lfm2k/gan.yaml)")
    args = model.get("args") or {}
    absent = [key for key in _GAN_ARGS if key not in args]
    if absent:
        raise ValueError(f"{path}: model.args lacks {', '.join(absent)}; expected every one of "
                         f"{', '.join(_GAN_ARGS)} (as in experiments/configs/lfm2k/gan.yaml)")
    if not isinstance(args["base_args"], dict) or "modalities" not in args["base_args"]:
        raise ValueError(f"{path}: model.args.base_args.modalities: missing; expected the base model's modalities")
    data = config.get("data") or {}
    if not data.get("path"):
        raise ValueError(f"{path}: data.path: missing; expected the dataset folder")
    data.setdefault("format", "auto")
    return config


if __name__ == "__main__":
    raise SystemExit(main())
