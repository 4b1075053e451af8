"""missing_modality.py's per-fill summary over seeds: each seed's figures come from the trial of
THAT seed (whatever order the search lists its trials in), and the summary is the mean and the
sample standard deviation (ddof=1) over the seeds, checked against hand-worked numbers.

The search itself is replaced by a stand-in that writes hand-made metrics files (no training)."""

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import missing_modality  # noqa: E402  (experiments/missing_modality.py)

from test_missing_modality_runs import CONFIG  # noqa: E402  (one small GAN-fill config for both files)

# seed -> test recall@20; the other metrics are fixed multiples of it, valid recall@20 is 0.5 + it.
FIGURES = {11: 0.10, 22: 0.20, 33: 0.60}


def _fake_search(seen):
    def run_search(config, workdir, **_):
        seen.append((Path(workdir).name, config.model.args.get("fill"), config.model.args.get("hide_fraction"),
                     (config.data.split or {}).get("method"), (config.data.split or {}).get("holdout")))
        trials = []
        for index, seed in enumerate(sorted(FIGURES, reverse=True)):  # trials listed in another order
            folder = Path(workdir) / f"trial_{index:03d}"
            folder.mkdir(parents=True)
            r20 = FIGURES[seed]
            metrics = {"best_epoch": seed, "timing": {"train_seconds_per_epoch": 0.5},
                       "valid": {"recall@20": 0.5 + r20},
                       "test": {"recall@10": r20 / 2, "recall@20": r20, "ndcg@10": r20 / 4, "ndcg@20": r20 / 5}}
            (folder / "metrics.json").write_text(json.dumps(metrics))
            trials.append({"trial": index, "workdir": str(folder), "setting": {"train.seed": seed}})
        return {"trials": trials}
    return run_search


def test_summary_is_the_mean_and_sample_std_over_the_seeds_of_each_seeds_own_trial(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(missing_modality, "run_search", _fake_search(seen))
    runs = missing_modality.train_runs(CONFIG, [22, 11, 33], "cold_start", tmp_path / "runs")
    # One search per fill, in the scenario's folder; the full-data run hides nothing.
    # The cold-start scenario holds out 20% of the items (the script's docstring).
    assert seen == [("cold_start_full", "none", 0.0, "cold_start_items", 0.2),
                    ("cold_start_mean", "mean", 0.3, "cold_start_items", 0.2),
                    ("cold_start_gan", "gan", 0.3, "cold_start_items", 0.2)]
    for fill in ("full", "mean", "gan"):
        result = runs[fill]
        assert [run["seed"] for run in result["runs"]] == [22, 11, 33]
        assert [run["test_recall@20"] for run in result["runs"]] == [0.20, 0.10, 0.60]
        assert [run["best_epoch"] for run in result["runs"]] == [22, 11, 33]
        summary = result["summary"]
        # 0.1, 0.2, 0.6: mean 0.3; squared deviations 0.01 + 0.04 + 0.09 = 0.14 over n - 1 = 2.
        assert summary["test_recall@20"]["mean"] == pytest.approx(0.3, abs=1e-12)
        assert summary["test_recall@20"]["std"] == pytest.approx(math.sqrt(0.07), abs=1e-12)
        assert summary["test_ndcg@20"]["mean"] == pytest.approx(0.06, abs=1e-12)
        assert summary["test_ndcg@20"]["std"] == pytest.approx(math.sqrt(0.07) / 5, abs=1e-12)
        assert summary["test_recall@10"]["mean"] == pytest.approx(0.15, abs=1e-12)
        assert summary["valid_recall@20"]["mean"] == pytest.approx(0.8, abs=1e-12)
        assert summary["valid_recall@20"]["std"] == pytest.approx(math.sqrt(0.07), abs=1e-12)


def test_a_single_seed_has_a_zero_spread(tmp_path, monkeypatch):
    monkeypatch.setattr(missing_modality, "run_search", _fake_search([]))
    runs = missing_modality.train_runs(CONFIG, [33], "warm", tmp_path / "runs")
    assert runs["gan"]["summary"]["test_recall@20"] == {"mean": 0.60, "std": 0.0}
    assert (tmp_path / "runs" / "gan").is_dir() and not (tmp_path / "runs" / "cold_start_gan").exists()


def test_reconstruction_errors_against_hand_worked_rows():
    # Rows (2, 0) and (1, 1) filled where the truth is (0, 2) and (1, 1); present rows' mean (1, 1).
    # MSE: (4 + 4 + 0 + 0) / 4 = 2. Cosines: 0 and 1, mean 0.5. Centred on (1, 1): (1, -1) vs
    # (-1, 1), cosine -1; the second row is the centre itself (no direction), counted as 0: mean -0.5.
    errors = missing_modality.reconstruction_errors([[2.0, 0.0], [1.0, 1.0]], [[0.0, 2.0], [1.0, 1.0]],
                                                    __import__("numpy").array([1.0, 1.0]))
    assert errors == pytest.approx({"mse": 2.0, "cosine": 0.5, "centred_cosine": -0.5}, abs=1e-12)


def test_ridge_fill_keeps_the_penalty_with_the_least_held_out_error(tmp_path):
    from jaxrec import data as jdata
    from jaxrec.models.gan import hide_modality_rows

    dataset = jdata.make_synthetic(60, 80, n_interactions=900, dims={"text": 6, "audio": 4}, seed=3)
    hidden_dataset, hidden = hide_modality_rows(dataset, "audio", 0.3, seed=0)
    rows, penalty, errors = missing_modality.ridge_fill(hidden_dataset, "audio", ["text"], 0,
                                                        penalties=(0.001, 1e6))
    # A penalty of a million shrinks every weight but the (equally shrunk) intercept to ~0: its
    # held-out error is the larger of the two here, and the smaller one is kept.
    assert set(errors) == {0.001, 1e6} and errors[0.001] < errors[1e6]
    assert penalty == 0.001
    assert rows.shape == (hidden.size, 4)
