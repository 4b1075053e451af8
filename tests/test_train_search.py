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


def test_the_search_table_shows_test_figures_at_the_selection_cutoff(tmp_path):
    # A grid selected on ndcg@10 (eval.ks [5, 10]) has no @20 figures: its table's test
    # columns were recall@20 / ndcg@20, all '-'.
    def fake_train(config, workdir, **kwargs):
        reg = config.loss_weights["reg"]
        return {"valid": {"ndcg@10": reg}, "test": {"recall@10": 0.5 + reg, "ndcg@10": 0.25, "recall@5": 0.1},
                "best_epoch": 2}

    raw = {**BASE, "eval": {"ks": [5, 10]}, "train": {"valid_metric": "ndcg@10"},
           "grid": {"loss_weights.reg": [0.1, 0.2]}}
    run_search(config_from_dict(raw), tmp_path, quiet=True, train_fn=fake_train)
    table = (tmp_path / "search.md").read_text().splitlines()
    assert table[2] == "| trial | loss_weights.reg | valid ndcg@10 | test recall@10 | test ndcg@10 | best epoch |"
    assert table[5] == "| 1 **(best)** | 0.2 | 0.2000 | 0.7000 | 0.2500 | 2 |"


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


# ---- the search folder checked before anything is written -------------------------------------

TINY = {"data": {"synthetic": {"n_users": 40, "n_items": 30, "n_interactions": 500, "seed": 2}},
        "model": {"name": "bprmf", "args": {"embedding_size": 4}},
        "train": {"epochs": 1, "batch_size": 256, "checkpoint_every": 100},
        "eval": {"ks": [10, 20], "metrics": ["recall"]}, "loss_weights": {"reg": 0.1}}


def _no_training(monkeypatch):
    """Make every way a trial could train fail the test."""
    from jaxrec.train import _batched_search, _loop

    def trained(*args, **kwargs):
        raise AssertionError("a trial trained before the search was refused")

    monkeypatch.setattr(_loop, "train_and_evaluate", trained)
    monkeypatch.setattr(_batched_search, "run_batched_search", trained)


def _tree(root):
    """Every path under ``root`` with the bytes of its files (None for folders)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _write_yaml(path, raw):
    import yaml

    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.parametrize("batched", ["auto", "never"])
def test_a_trial_folder_holding_a_run_is_refused_before_any_trial_trains(tmp_path, monkeypatch, batched):
    # trial_001 holds a run (a finished checkpoint folder), trial_000 nothing: without --resume the
    # search is refused as `jaxrec train` refuses such a folder, before trial 0 trains, batched or not.
    _no_training(monkeypatch)
    config = config_from_dict({**TINY, "grid": {"loss_weights.reg": [0.1, 1.0]}})
    (tmp_path / "trial_001" / "checkpoints" / "7").mkdir(parents=True)
    before = _tree(tmp_path)
    with pytest.raises(ConfigError, match=r"^trial 1 \(loss_weights.reg=1.0\): .*trial_001 already holds a run "
                                          r"\(checkpoint after epoch 7\); pass --resume to continue it"):
        run_search(config, tmp_path, quiet=True, batched=batched)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("folder", ["missing", "empty", "other files"])
def test_resume_with_nothing_to_resume_is_refused(tmp_path, folder):
    # As `jaxrec train --resume` on a folder holding no run: refused, and nothing created.
    config = config_from_dict({**BASE, "grid": {"loss_weights.reg": [0.1, 0.2]}})
    workdir = tmp_path / "search"
    if folder != "missing":
        workdir.mkdir()
    if folder == "other files":
        (workdir / "notes.txt").write_text("x")
        (workdir / "trial_007").mkdir()  # not a trial of this 2-trial grid
    before = _tree(tmp_path)

    def fake_train(*args, **kwargs):
        raise AssertionError("nothing should train")

    why = "it does not exist" if folder == "missing" else "none of its 2 trial folders"
    with pytest.raises(ConfigError, match=rf"^nothing to resume: {workdir} holds no run \({why}.*\); drop --resume"):
        run_search(config, workdir, resume=True, quiet=True, train_fn=fake_train)
    assert _tree(tmp_path) == before


def test_search_resume_on_a_missing_folder_is_refused_in_trains_words(tmp_path, capsys):
    # The walkthrough: `jaxrec search CONFIG --workdir DOES_NOT_EXIST --resume` exits 1 with the
    # message `jaxrec train --resume` gives there, and creates nothing.
    from jaxrec.cli.main import main

    plain = _write_yaml(tmp_path / "plain.yaml", TINY)
    grid = _write_yaml(tmp_path / "grid.yaml", {**TINY, "grid": {"loss_weights.reg": [0.1, 1.0]}})
    assert main(["train", plain, "--workdir", str(tmp_path / "nope"), "--resume", "--quiet"]) == 1
    train_err = capsys.readouterr().err
    assert main(["search", grid, "--workdir", str(tmp_path / "nope"), "--resume", "--quiet"]) == 1
    search_err = capsys.readouterr().err
    same = f"jaxrec: error: nothing to resume: {tmp_path / 'nope'} holds no run (it does not exist); drop --resume"
    assert train_err.startswith(same) and search_err.startswith(same)
    assert not (tmp_path / "nope").exists()


def test_a_reused_trial_must_be_this_grids_trial(tmp_path):
    # --resume reuses a finished trial's metrics as they are: a trial folder written for another
    # setting is refused (naming the difference) rather than listed under this grid's value; a
    # raised train.epochs is no difference for a trial that stopped early (more epochs change
    # nothing), but one that ran to its epoch limit under a schedule spread over train.epochs can
    # neither be reused (it is not the run asked for) nor extended: refused.
    from jaxrec.train._config_io import dump_config

    cosine = {"train": {"epochs": 1000, "schedule": "cosine"}}
    old = config_from_dict({**BASE, **cosine, "grid": {"loss_weights.reg": [0.1, 0.2]}})
    for index, setting in enumerate(expand_trials(old)):
        trial = tmp_path / f"trial_{index:03d}"
        trial.mkdir()
        (trial / "config.yaml").write_text(dump_config(trial_config(old, setting)))
        (trial / "metrics.json").write_text(json.dumps({"valid": {"recall@20": 0.1 * (index + 1)}, "test": {},
                                                        "best_epoch": 1, "stopped_early": True}))

    def fake_train(*args, **kwargs):
        raise AssertionError("finished trials are reused")

    other = config_from_dict({**BASE, **cosine, "grid": {"loss_weights.reg": [0.5, 0.2]}})
    with pytest.raises(ConfigError, match=r"trial 0 \(loss_weights.reg=0.5\): cannot resume .*trial_000: the "
                                          r"config differs .*'reg': 0.1\} -> .*'reg': 0.5\}"):
        run_search(other, tmp_path, resume=True, quiet=True, train_fn=fake_train)
    assert not (tmp_path / "search.json").exists()
    longer = config_from_dict({**BASE, "train": {"epochs": 2000, "schedule": "cosine"},
                               "grid": {"loss_weights.reg": [0.1, 0.2]}})
    summary = run_search(longer, tmp_path, resume=True, quiet=True, train_fn=fake_train)
    assert [t["valid"]["recall@20"] for t in summary["trials"]] == [0.1, 0.2] and summary["best"]["trial"] == 1
    metrics = tmp_path / "trial_001" / "metrics.json"
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "stopped_early": False}))
    with pytest.raises(ConfigError, match=r"trial 1 .*cannot extend .*trial_001 from 1000 to 2000 epochs"):
        run_search(longer, tmp_path, resume=True, quiet=True, train_fn=fake_train)


@pytest.mark.parametrize("batched", ["auto", "never"])
def test_resume_extends_trials_that_reached_a_lower_epoch_cap(tmp_path, batched):
    # A --max-epochs smoke search resumed without the cap: a trial that ran to its epoch limit is
    # extended to the new one (as `jaxrec train --resume` extends a run), never reused as if it
    # were the longer run; "auto" starts a search that has nothing to resume.
    short = {**TINY, "train": {**TINY["train"], "epochs": 2, "patience": 50},
             "grid": {"loss_weights.reg": [0.1, 1.0]}}
    first = run_search(config_from_dict(short), tmp_path / "s", resume="auto", quiet=True, batched=batched)
    assert [t["best_epoch"] for t in first["trials"]] and all(
        len((tmp_path / "s" / f"trial_{i:03d}" / "history.jsonl").read_text().splitlines()) == 2 for i in (0, 1))
    longer = {**short, "train": {**short["train"], "epochs": 4}}
    run_search(config_from_dict(longer), tmp_path / "s", resume=True, quiet=True, batched=batched)
    for index in (0, 1):
        trial = tmp_path / "s" / f"trial_{index:03d}"
        assert [json.loads(line)["epoch"] for line in (trial / "history.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
        assert json.loads((trial / "metrics.json").read_text())["epochs_run"] == 4
    with pytest.raises(ConfigError, match="resume must be True, False or 'auto'"):
        run_search(config_from_dict(longer), tmp_path / "s", resume="yes", quiet=True)


@pytest.mark.parametrize("grid, error", [
    ({"model.name": ["bprmf", "nosuch"]}, r"trial 1 \(model.name='nosuch'\): unknown model 'nosuch'"),
    ({"model.args.embedding_size": [4, 0]}, r"trial 1 \(model.args.embedding_size=0\): .*embedding_size must be"),
    ({"model.args": [{"embedding_size": 4}, {"embedding_sise": 4}]},
     r"trial 1 .*model 'bprmf' has no argument 'embedding_sise'"),
    ({"eval.ks": [[10, 20], [20, 500]]}, r"trial 1 .*eval.ks has 500, but the dataset has only 30 items"),
    ({"model.name": ["bprmf", "lightgcn"], "loss_weights.bpr": [1.0]}, None),  # valid: trains (below)
])
@pytest.mark.parametrize("batched", ["auto", "never"])
def test_every_trial_is_checked_before_anything_is_written(tmp_path, monkeypatch, grid, error, batched):
    # A value that `jaxrec train` refuses in a later trial fails the search before trial 0 trains
    # and before the search folder exists -- batched or one by one.
    if error is None:
        config = config_from_dict({**TINY, "grid": grid})
        summary = run_search(config, tmp_path / "search", quiet=True, batched=batched)
        assert len(summary["trials"]) == 2 and (tmp_path / "search" / "search.json").exists()
        return
    _no_training(monkeypatch)
    config = config_from_dict({**TINY, "grid": grid})
    with pytest.raises(ConfigError, match=error):
        run_search(config, tmp_path / "search", quiet=True, batched=batched)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("setting, error", [
    ("loss_weights.regg", "model 'bprmf' has no loss term 'regg'; did you mean 'reg'?"),
    ("model.args.embedding_size", "embedding_size must be a positive integer; found 0"),
])
def test_a_bad_grid_leaves_no_folder_as_train_leaves_none(tmp_path, capsys, setting, error):
    # The walkthrough's mistakes: `jaxrec train` with them leaves nothing; so does `jaxrec search`.
    from jaxrec.cli.main import main

    plain = _write_yaml(tmp_path / "plain.yaml", TINY)
    grid = _write_yaml(tmp_path / "grid.yaml", TINY)
    values = "[0.1, 1.0]" if setting.startswith("loss") else "[0, 8]"
    assert main(["train", plain, "--workdir", str(tmp_path / "t" / "run"), "--quiet",
                 "--set", f"{setting}={values[1:].split(',')[0]}"]) == 1
    assert error in capsys.readouterr().err
    assert main(["search", grid, "--workdir", str(tmp_path / "s" / "x"), "--quiet",
                 "--set", f"grid.{setting}={values}"]) == 1
    assert error in capsys.readouterr().err
    assert not (tmp_path / "t").exists() and not (tmp_path / "s").exists()


def test_a_file_at_the_search_folder_is_a_config_error(tmp_path):
    # Was a raw NotADirectoryError from the first trial's folder, after the trials' checks.
    (tmp_path / "taken").write_text("x")
    config = config_from_dict({**BASE, "data": {"synthetic": {"n_users": 30, "n_items": 25, "n_interactions": 200}},
                               "eval": {"ks": [5, 10]}, "train": {"epochs": 1, "valid_metric": "recall@10"},
                               "grid": {"loss_weights.reg": [0.1, 0.2]}})
    for where in (tmp_path / "taken", tmp_path / "taken" / "search"):
        with pytest.raises(ConfigError, match=f"cannot use {where} as a run folder: {tmp_path / 'taken'} is a file"):
            run_search(config, where, quiet=True)
    assert (tmp_path / "taken").read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
