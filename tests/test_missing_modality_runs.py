"""experiments/missing_modality.py's training stage: every fill's seeds run as ONE search over
``train.seed`` (its trials batched), and each seed's figures are those of the seed's own run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from jaxrec import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import missing_modality  # noqa: E402  (experiments/missing_modality.py)

CONFIG = {
    "model": {"name": "gan", "args": {
        "modality": "audio", "fill": "gan", "hide_fraction": 0.3, "hide_seed": 0, "seed": 0,
        "sources": ["text"], "id_embedding_dim": 0,
        "gan": {"steps": 20, "eval_every": 10, "batch_size": 32, "hidden_dims": [16], "noise_dim": 4},
        "base": "vbpr", "base_args": {"embedding_size": 8, "visual_size": 8, "modalities": ["text", "audio"]}}},
    "data": {"synthetic": {"n_users": 80, "n_items": 60, "n_interactions": 1200, "dims": {"text": 12, "audio": 6},
                           "seed": 3}},
    "train": {"epochs": 4, "batch_size": 256, "learning_rate": 0.01, "patience": 10, "seed": 1},
    "eval": {"ks": [10, 20]},
    "loss_weights": {"bpr": 1.0, "reg_theta": 0.01, "reg_e": 0.01},
}


def test_each_fill_is_one_batched_search_over_the_seeds_with_each_seeds_own_figures(tmp_path):
    seeds = [7, 5]
    runs = missing_modality.train_runs(CONFIG, seeds, "warm", tmp_path / "runs")
    assert set(runs) == {"full", "mean", "gan"}
    for fill, result in runs.items():
        search = json.loads((tmp_path / "runs" / fill / "search.json").read_text())
        assert [t["setting"] for t in search["trials"]] == [{"train.seed": s} for s in seeds]
        metrics = [json.loads((tmp_path / "runs" / fill / f"trial_{i:03d}" / "metrics.json").read_text())
                   for i in range(len(seeds))]
        assert all(m["batched_search"] == {"trials": 2} for m in metrics)  # one program for the seeds
        assert [r["seed"] for r in result["runs"]] == seeds
        for run, m in zip(result["runs"], metrics):
            assert run["test_recall@20"] == m["test"]["recall@20"] and run["best_epoch"] == m["best_epoch"]
    # A seed's own run (the trainer alone) gives its figures: seed 5 of the GAN fill.
    config = missing_modality.fill_configs(missing_modality.scenario_config(CONFIG, "warm"))["gan"]
    config["train"]["seed"] = 5
    alone = train.train_and_evaluate(train.config_from_dict(config), tmp_path / "alone", quiet=True)
    batched = runs["gan"]["runs"][1]
    assert batched["best_epoch"] == alone["best_epoch"]
    for metric in missing_modality.METRICS:
        assert batched[f"test_{metric}"] == pytest.approx(alone["test"][metric], abs=1e-6)
    assert batched["valid_recall@20"] == pytest.approx(alone["valid"]["recall@20"], abs=1e-6)
    # A finished search is reused, not trained again.
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.json")}
    again = missing_modality.train_runs(CONFIG, seeds, "warm", tmp_path / "runs")
    assert again == runs
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("metrics.json")} == written
