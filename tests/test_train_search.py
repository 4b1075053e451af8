"""Hyper-parameter search: grid expansion, seeded random draws, winner by validation only."""

import json
import math

import numpy as np
import pytest

from jaxrec.errors import ConfigError
from jaxrec.train import config_from_dict, expand_trials, pick_best, run_search
from jaxrec.train._search import trial_config

from _model_testing import record_built_features

BASE = {"data": {"synthetic": {}}, "model": {"name": "bprmf"}}


def test_grid_is_the_product_of_the_lists_in_order():
    config = config_from_dict({**BASE, "grid": {"train.learning_rate": [0.1, 0.01],
                                                "loss_weights.reg": [0.0, 1.0, 2.0]}})
    trials = expand_trials(config)
    assert trials == [{"train.learning_rate": lr, "loss_weights.reg": reg}
                      for lr in (0.1, 0.01) for reg in (0.0, 1.0, 2.0)]
    trial = trial_config(config, trials[4])
    assert trial.train.learning_rate == 0.01 and trial.loss_weights == {"reg": 1.0}
    assert not trial.has_search


def test_random_search_draws_within_bounds_reproducibly():
    space = {"train.learning_rate": {"loguniform": [1e-4, 1e-1]}, "train.batch_size": [32, 64],
             "model.args.embedding_size": {"randint": [4, 8]}, "loss_weights.reg": {"uniform": [0.0, 1.0]}}
    config = config_from_dict({**BASE, "search": {"method": "random", "budget": 40, "seed": 3, "space": space}})
    trials = expand_trials(config)
    assert len(trials) == 40
    assert all(1e-4 <= t["train.learning_rate"] <= 1e-1 for t in trials)
    assert {t["train.batch_size"] for t in trials} == {32, 64}
    assert {t["model.args.embedding_size"] for t in trials} == {4, 5, 6, 7, 8}
    assert all(0.0 <= t["loss_weights.reg"] <= 1.0 for t in trials)
    # log-uniform: about as many draws below the geometric middle (1e-2.5) as above it.
    below = sum(t["train.learning_rate"] < 10**-2.5 for t in trials)
    assert 10 <= below <= 30
    assert expand_trials(config) == trials
    reseeded = config_from_dict({**BASE, "search": {"method": "random", "budget": 40, "seed": 4, "space": space}})
    assert expand_trials(reseeded) != trials


@pytest.mark.parametrize("spec, match", [
    ({"loguniform": [0.0, 1.0]}, "positive bounds"),
    ({"uniform": [2.0, 1.0]}, "low <= high"),
    ({"gaussian": [0, 1]}, "expected a list of values"),
    ([], "empty list"),
])
def test_bad_random_specs(spec, match):
    config = config_from_dict({**BASE, "search": {"method": "random", "budget": 2, "space": {"train.seed": spec}}})
    with pytest.raises(ConfigError, match=match):
        expand_trials(config)


def test_the_winner_is_chosen_by_validation_never_by_test(tmp_path):
    # Trial 1 is best on validation, trial 2 on test: the search must pick trial 1.
    valid = {0.1: 0.30, 0.2: 0.35, 0.3: 0.33}
    test = {0.1: 0.31, 0.2: 0.29, 0.3: 0.40}
    seen = []

    def fake_train(config, workdir, **kwargs):
        reg = config.loss_weights["reg"]
        seen.append((reg, workdir.name))
        return {"valid": {"recall@20": valid[reg]}, "test": {"recall@20": test[reg], "ndcg@20": 0.1},
                "best_epoch": 3}

    config = config_from_dict({**BASE, "grid": {"loss_weights.reg": [0.1, 0.2, 0.3]}})
    summary = run_search(config, tmp_path, quiet=True, train_fn=fake_train)
    assert seen == [(0.1, "trial_000"), (0.2, "trial_001"), (0.3, "trial_002")]
    assert summary["best"]["trial"] == 1 and summary["best"]["setting"] == {"loss_weights.reg": 0.2}
    assert json.loads((tmp_path / "search.json").read_text())["best"]["trial"] == 1
    table = (tmp_path / "search.md").read_text()
    assert "| 1 **(best)** | 0.2 | 0.3500 | 0.2900 |" in table
    assert table.count("**(best)**") == 1


def test_ties_and_missing_values_in_pick_best():
    trials = [{"trial": 0, "valid": {"recall@20": math.nan}}, {"trial": 1, "valid": {"recall@20": 0.2}},
              {"trial": 2, "valid": {"recall@20": 0.2}}, {"trial": 3, "valid": {}}]
    assert pick_best(trials, "recall@20")["trial"] == 1


def test_resumed_search_resumes_only_trials_that_started(tmp_path):
    # Finished trials are reused, started ones resumed, and trials that never started begin
    # afresh: train_and_evaluate refuses --resume on a folder holding no run.
    config = config_from_dict({**BASE, "grid": {"loss_weights.reg": [0.1, 0.2, 0.3]}})
    finished = tmp_path / "trial_000"
    finished.mkdir()
    (finished / "metrics.json").write_text(json.dumps({"valid": {"recall@20": 0.5}, "test": {}, "best_epoch": 1}))
    (tmp_path / "trial_001").mkdir()
    (tmp_path / "trial_001" / "config.yaml").write_text("{}\n")
    calls = {}

    def fake_train(config, workdir, *, resume, **kwargs):
        calls[workdir.name] = resume
        return {"valid": {"recall@20": 0.1}, "test": {}, "best_epoch": 1}

    run_search(config, tmp_path, resume=True, quiet=True, train_fn=fake_train)
    assert calls == {"trial_001": True, "trial_002": False}


def _standardized(features: np.ndarray) -> np.ndarray:
    """Per-dimension (x - mean) / std over every row, in numpy (the synthetic rows are all present)."""
    x = np.asarray(features, np.float64)
    return (x - x.mean(axis=0)) / x.std(axis=0)


DATA_GRID = {"data.feature_transform": [{}, {"image": "standardize"}], "loss_weights.reg": [0.0, 1.0]}
SMALL = {"synthetic": {"n_users": 50, "n_items": 30, "n_interactions": 600, "seed": 4}}


def test_a_grid_over_data_keys_trains_each_trial_on_its_own_data(tmp_path):
    # A dataset passed for config.data serves the trials with that data section; a trial whose
    # data section differs gets its own, loaded once per distinct section.
    from jaxrec.train import _data

    config = config_from_dict({"data": SMALL, "model": {"name": "bprmf"}, "grid": DATA_GRID})
    given = _data.load_dataset(config.data)
    seen = {}

    def fake_train(config, workdir, *, dataset, **kwargs):
        seen[workdir.name] = dataset
        return {"valid": {"recall@20": 0.1}, "test": {}, "best_epoch": 1}

    run_search(config, tmp_path, quiet=True, train_fn=fake_train, dataset=given)
    assert seen["trial_000"] is given and seen["trial_001"] is given
    assert seen["trial_002"] is seen["trial_003"] and seen["trial_002"] is not given
    raw = np.asarray(given.modalities["image"].features)
    np.testing.assert_allclose(seen["trial_002"].modalities["image"].features, _standardized(raw), atol=1e-5)
    np.testing.assert_array_equal(seen["trial_002"].modalities["text"].features, given.modalities["text"].features)


@pytest.mark.parametrize("pass_dataset", [False, True])
def test_batched_groups_of_a_data_grid_build_their_models_on_their_own_data(tmp_path, monkeypatch, pass_dataset):
    # jaxrec search (no dataset passed: each group or trial loads its data) and reproduce.py (the
    # config's dataset passed): the grid runs one batched program per feature transform, and each
    # builds its model on that transform's features.
    from jaxrec.train import _data

    built = record_built_features(monkeypatch)
    config = config_from_dict({"data": SMALL, "model": {"name": "bprmf", "args": {"embedding_size": 4}},
                               "train": {"epochs": 1, "batch_size": 256, "checkpoint_every": 100},
                               "eval": {"ks": [20], "metrics": ["recall"]}, "grid": DATA_GRID})
    raw = np.asarray(_data.load_dataset(config.data).modalities["image"].features, np.float64)
    extra = {"dataset": _data.load_dataset(config.data)} if pass_dataset else {}
    summary = run_search(config, tmp_path, quiet=True, **extra)
    assert len(summary["trials"]) == 4
    for trial in range(4):  # two batched programs of two trials
        assert json.loads((tmp_path / f"trial_{trial:03d}" / "metrics.json").read_text())["batched_search"]["trials"] == 2
    kinds = {("raw" if np.allclose(f, raw) else "standardized" if np.allclose(f, _standardized(raw), atol=1e-5)
              else "other") for f in built}
    assert kinds == {"raw", "standardized"}
