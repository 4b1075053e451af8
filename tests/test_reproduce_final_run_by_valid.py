"""reproduce.py's choice of a row's final run over ALL its searches: the trial with the best
VALID recall@20 (a trial whose valid figure is not finite never wins), reused as the final run
and packed as the row's record. The searches are stand-ins that write hand-made trial folders
(no training); which trial must win is worked out by hand."""

import json
import math
import sys
from pathlib import Path

import yaml

import jaxrec.train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import records  # noqa: E402
import reproduce  # noqa: E402

CONFIG = {"model": {"name": "bprmf", "args": {"embedding_size": 8}},
          "data": {"synthetic": {"n_users": 60, "n_items": 40, "n_interactions": 900, "seed": 2}},
          "train": {"epochs": 5, "batch_size": 128, "seed": 5}, "loss_weights": {"reg": 0.01},
          "eval": {"ks": [10, 20]}}

# search name -> [(loss_weights.reg, valid recall@20, test recall@20)], one per trial.
FIGURES = {
    # trial_000's valid figure is NaN; trial_001 has the best TEST figure of all (0.99).
    "bpr_search": [(0.1, math.nan, 0.50), (1.0, 0.40, 0.99)],
    # The best VALID figure of all (0.45), with a poor test figure: the row's final run.
    "bpr_search_b": [(0.001, 0.45, 0.11), (0.002, 0.30, 0.70)],
}


def _fake_search(config, folder, **_):
    folder = Path(folder)
    trials = []
    for index, (reg, valid, test) in enumerate(FIGURES[folder.name]):
        workdir = folder / f"trial_{index:03d}"
        workdir.mkdir(parents=True)
        metrics = {"valid": {"recall@20": valid}, "test": {"recall@20": test}, "best_epoch": 2, "epochs_run": 5}
        (workdir / "metrics.json").write_text(json.dumps(metrics))
        trials.append({"trial": index, "workdir": str(workdir), "setting": {"loss_weights.reg": reg},
                       "valid": metrics["valid"], "test": metrics["test"]})
    finite = [t for t in trials if math.isfinite(t["valid"]["recall@20"])]
    summary = {"valid_metric": "recall@20", "n_trials": len(trials), "trials": trials,
               "best": max(finite, key=lambda t: t["valid"]["recall@20"])}
    (folder / "search.json").write_text(json.dumps(summary))
    return summary


def _refuse_training(*_, **__):
    raise AssertionError("the winning trial is the final run: nothing is trained again")


def test_the_final_run_is_the_best_valid_trial_of_all_searches(tmp_path, monkeypatch):
    monkeypatch.setattr(jaxrec.train, "run_search", _fake_search)
    monkeypatch.setattr(jaxrec.train, "train_and_evaluate", _refuse_training)
    monkeypatch.setattr(reproduce.Runner, "_dataset", lambda self, config: None)
    (tmp_path / "bpr.yaml").write_text(yaml.safe_dump(CONFIG))
    searches = [reproduce.Search(name, {"loss_weights.reg": [reg for reg, _, _ in trials]}, {})
                for name, trials in FIGURES.items()]
    row = reproduce.Row("bpr", "", tmp_path / "bpr.yaml", {}, searches)
    plan = reproduce.Plan("tiny", "grids.yaml", [row], [], False, None)
    out = tmp_path / "out"
    runner = reproduce.Runner(plan, out, max_epochs=None, batched="auto", resume=False, quiet=True)
    report = runner.run_row(row)
    assert report["final"] == {"reused": "runs/tiny/bpr_search_b/trial_000", "seconds": 0.0}
    final = records.read(out / "records" / "tiny" / "bpr.jsonl")
    assert final.kind == "run"
    assert next(iter(final.runs.values()))["metrics"]["test"]["recall@20"] == 0.11
    assert sorted(p.name for p in (out / "records" / "tiny").iterdir()) == ["bpr.jsonl", "bpr_search.jsonl",
                                                                          "bpr_search_b.jsonl"]


def _runner(tmp_path, monkeypatch, figures, search_set=None):
    monkeypatch.setattr(reproduce.Runner, "_dataset", lambda self, config: None)
    monkeypatch.setitem(globals(), "FIGURES", figures)
    (tmp_path / "bpr.yaml").write_text(yaml.safe_dump(CONFIG))
    searches = [reproduce.Search(name, {"loss_weights.reg": [reg for reg, _, _ in trials]}, dict(search_set or {}))
                for name, trials in figures.items()]
    row = reproduce.Row("bpr", "", tmp_path / "bpr.yaml", {}, searches)
    plan = reproduce.Plan("tiny", "grids.yaml", [row], [], False, None)
    return reproduce.Runner(plan, tmp_path / "out", max_epochs=None, batched="auto", resume=False, quiet=True), row


def test_a_valid_tie_across_searches_goes_to_the_earlier_search_as_within_one(tmp_path, monkeypatch):
    # jaxrec's searches break a valid tie for the earlier trial; across a row's searches, the
    # earlier search's trial (bpr_search, valid 0.40) keeps the row against bpr_search_b's 0.40.
    monkeypatch.setattr(jaxrec.train, "run_search", _fake_search)
    monkeypatch.setattr(jaxrec.train, "train_and_evaluate", _refuse_training)
    runner, row = _runner(tmp_path, monkeypatch, {"bpr_search": [(0.1, 0.20, 0.5), (1.0, 0.40, 0.3)],
                                                  "bpr_search_b": [(0.001, 0.40, 0.9)]})
    assert runner.run_row(row)["final"]["reused"] == "runs/tiny/bpr_search/trial_001"


def _trained(calls):
    def train_and_evaluate(config, folder, **_):
        calls.append(config.train.epochs)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "metrics.json").write_text(json.dumps({"valid": {"recall@20": 0.7}, "test": {"recall@20": 0.6}}))
        return {}
    return train_and_evaluate


def _capped_search(stopped_early, epochs_run):
    def run_search(config, folder, **kwargs):
        summary = _fake_search(config, folder, **kwargs)
        for trial in summary["trials"]:
            path = Path(trial["workdir"]) / "metrics.json"
            metrics = json.loads(path.read_text())
            path.write_text(json.dumps({**metrics, "stopped_early": stopped_early, "epochs_run": epochs_run}))
        return summary
    return run_search


def test_a_trial_that_ran_into_its_searchs_lower_epoch_cap_is_not_the_final_run(tmp_path, monkeypatch):
    # The search trains 3 epochs, the row's config 5: a trial that ran all 3 (not stopped early)
    # is not the 5-epoch run; the final run is trained, at 5 epochs.
    calls = []
    monkeypatch.setattr(jaxrec.train, "run_search", _capped_search(False, 3))
    monkeypatch.setattr(jaxrec.train, "train_and_evaluate", _trained(calls))
    runner, row = _runner(tmp_path, monkeypatch, {"bpr_search": [(0.1, 0.20, 0.5), (1.0, 0.40, 0.3)]},
                          {"train.epochs": 3})
    report = runner.run_row(row)
    assert calls == [5] and report["final"]["ran"] == "runs/tiny/bpr"
    final = records.read(tmp_path / "out" / "records" / "tiny" / "bpr.jsonl")
    assert next(iter(final.runs.values()))["metrics"]["test"]["recall@20"] == 0.6


def test_a_trial_that_stopped_early_below_its_cap_is_the_final_run(tmp_path, monkeypatch):
    # Stopped early at epoch 2 of its 3: 5 epochs would have stopped at the same point.
    monkeypatch.setattr(jaxrec.train, "run_search", _capped_search(True, 2))
    monkeypatch.setattr(jaxrec.train, "train_and_evaluate", _refuse_training)
    runner, row = _runner(tmp_path, monkeypatch, {"bpr_search": [(0.1, 0.20, 0.5), (1.0, 0.40, 0.3)]},
                          {"train.epochs": 3})
    assert runner.run_row(row)["final"]["reused"] == "runs/tiny/bpr_search/trial_001"
