"""Run records (experiments/records.py): packing keeps what the tables need, reading rejects
malformed files by line, and the committed results table regenerates from the committed records."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from jaxrec import train

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
ANCHORS = ROOT / ".." / "shared" / "anchors"


sys.path.insert(0, str(EXPERIMENTS))
import make_results  # noqa: E402  (experiments/make_results.py)
import records  # noqa: E402  (experiments/records.py)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real (tiny) training run's workdir, made by the trainer."""
    workdir = tmp_path_factory.mktemp("run") / "bprmf"
    config = train.config_from_dict({
        "data": {"synthetic": {"n_users": 60, "n_items": 40, "n_interactions": 900, "seed": 0}},
        "model": {"name": "bprmf", "args": {"embedding_size": 8}},
        "train": {"epochs": 3, "batch_size": 128, "seed": 0},
        "eval": {"ks": [10, 20]},
    })
    train.train_and_evaluate(config, workdir, quiet=True)
    return workdir


def test_pack_keeps_config_final_metrics_and_a_compact_history(tiny_run, tmp_path):
    output = tmp_path / "bprmf.jsonl"
    records.write(records.pack(tiny_run), output)
    record = records.read(output)
    assert record.kind == "run" and list(record.runs) == ["bprmf"]
    run = record.runs["bprmf"]
    assert run["metrics"] == json.loads((tiny_run / "metrics.json").read_text())
    assert run["config"] == yaml.safe_load((tiny_run / "config.yaml").read_text())
    history = [json.loads(line) for line in (tiny_run / "history.jsonl").read_text().splitlines() if line.strip()]
    assert [row["epoch"] for row in run["history"]] == [row["epoch"] for row in history] == [1, 2, 3]
    for packed, full in zip(run["history"], history):
        assert packed["loss"] == full["loss"] and packed["terms"] == full["terms"]
        assert packed["valid"] == {k: v for k, v in full["valid"].items() if k in records.HISTORY_METRICS}
        assert set(packed["valid"]) == {"recall@10", "recall@20", "ndcg@10", "ndcg@20"}


def test_pack_a_search_names_trials_by_folder_and_finds_the_winner(tiny_run, tmp_path):
    search = tmp_path / "bprmf_search"
    for index in range(2):
        trial = search / f"trial_{index:03d}"
        trial.mkdir(parents=True)
        for name in ("metrics.json", "history.jsonl", "config.yaml"):
            (trial / name).write_bytes((tiny_run / name).read_bytes())
    (search / "search.json").write_text(json.dumps({
        "valid_metric": "recall@20", "n_trials": 2,
        "trials": [{"trial": i, "workdir": f"/somewhere/else/trial_{i:03d}", "setting": {"loss_weights.reg": r}}
                   for i, r in ((0, 1.0), (1, 0.1))],
        "best": {"trial": 1, "workdir": "/somewhere/else/trial_001", "setting": {"loss_weights.reg": 0.1}}}))
    output = tmp_path / "bprmf_search.jsonl"
    records.write(records.pack(search), output)
    record = records.read(output)
    assert record.kind == "search" and list(record.runs) == ["trial_000", "trial_001"]
    assert [t["workdir"] for t in record.search["trials"]] == ["trial_000", "trial_001"]
    assert record.winner() is record.runs["trial_001"]


def test_pack_a_group_of_runs_and_searches_names_each_trial_by_its_search(tiny_run, tmp_path):
    # experiments/missing_modality.py: one search over the seeds per fill, beside plain runs.
    group = tmp_path / "missing_modality"
    for folder in (group / "single", group / "full" / "trial_000", group / "full" / "trial_001"):
        folder.mkdir(parents=True)
        for name in ("metrics.json", "history.jsonl", "config.yaml"):
            (folder / name).write_bytes((tiny_run / name).read_bytes())
    (group / "full" / "search.json").write_text(json.dumps({"valid_metric": "recall@20", "trials": []}))
    (group / "full" / "trial_002").mkdir()  # an unfinished trial (no metrics.json) is not a run
    (group / "scratch").mkdir()  # neither a run nor a search
    output = tmp_path / "missing_modality.jsonl"
    records.write(records.pack(group), output)
    record = records.read(output)
    assert record.kind == "runs" and list(record.runs) == ["full/trial_000", "full/trial_001", "single"]
    assert record.runs["full/trial_001"]["metrics"] == json.loads((tiny_run / "metrics.json").read_text())


def test_unfinished_or_unknown_folders_are_refused_by_name(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("model: {name: bprmf}\n")
    with pytest.raises(records.RecordError, match="half"):
        records.pack(tmp_path / "half")


def test_malformed_record_files_are_rejected_naming_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"format": records.FORMAT, "kind": "run", "name": "bad"}) + "\n{not json\n")
    with pytest.raises(records.RecordError, match=r"bad.jsonl:2"):
        records.read(path)
    path.write_text(json.dumps({"kind": "run"}) + "\n")
    with pytest.raises(records.RecordError, match=r"bad.jsonl:1"):
        records.read(path)


@pytest.mark.parametrize("dataset", ["lfm2k", "tiktok"])
def test_committed_results_table_regenerates_from_the_committed_records(dataset):
    """The table in experiments/results/<dataset>.md is exactly what make_results renders from
    the records in experiments/records/<dataset> (nothing typed by hand, nothing stale)."""
    if not (ANCHORS / f"mmrec_{dataset}.json").exists():
        pytest.skip(f"MMRec anchors not found at {ANCHORS.resolve()} (they live in ../shared beside the project)")
    expected = (EXPERIMENTS / "results" / f"{dataset}.md").read_text(encoding="utf-8")
    assert make_results.build_report(dataset, ANCHORS) == expected


@pytest.mark.parametrize("path", sorted((EXPERIMENTS / "results").glob("*_unseen_items.json")), ids=lambda p: p.name)
def test_committed_unseen_item_rows_score_the_runs_the_records_choose_now(path):
    """Every row of a committed unseen-items file scored the run its model's record chooses today
    (same record file, same best epoch and test recall@20), and every chosen run has a row: a
    record regenerated without rescoring its row (three were, before 2026-12-05) fails here."""
    import unseen_items  # experiments/unseen_items.py

    dataset = path.name[: -len("_unseen_items.json")]
    result = json.loads(path.read_text())
    rows = {row["model"]: row for row in result["rows"]}
    chosen = make_results.collect_runs(EXPERIMENTS / "records" / dataset)
    found = {record.path.resolve(): record for record in records.records_in(EXPERIMENTS / "records" / dataset)}
    left_out = {entry["model"] for entry in result.get("not_scored", [])}
    assert set(rows) | left_out == set(chosen)
    for model, row in rows.items():
        _, info = chosen[model]
        record = found[(EXPERIMENTS / info["source"]).resolve()]
        run = record.winner() if record.kind == "search" else next(iter(record.runs.values()))
        assert row["record"] == info["source"], model
        assert row["fingerprint"] == unseen_items._fingerprint(run), model


def test_unseen_item_metrics_match_a_numpy_count_on_the_restricted_pairs(tiny_run):
    """experiments/unseen_items.py: recall and ndcg of a run on the held-out pairs of a chosen
    item subset equal a plain numpy ranking of the same embeddings (train items masked)."""
    import unseen_items  # experiments/unseen_items.py

    experiment, state, _ = train.restore_best(tiny_run)
    dataset = experiment.dataset
    user_emb, item_emb = (np.asarray(a) for a in train.make_encoder(experiment.module)(state.params,
                                                                                      experiment.built.ctx))
    items = np.zeros(dataset.n_items, bool)
    items[::3] = True  # a third of the items stand for "unseen in train"
    got = unseen_items.subset_metrics(tiny_run, items, ks=(5, 10), metrics=("recall", "ndcg"))
    train_pairs = dataset.split_pairs("train")
    for split in ("valid", "test"):
        target = dataset.split_pairs(split)
        target = target[items[target[:, 1]]]
        recalls, ndcgs = {5: [], 10: []}, {5: [], 10: []}
        for user in np.unique(target[:, 0]):
            scores = user_emb[user] @ item_emb.T
            scores[train_pairs[train_pairs[:, 0] == user, 1]] = -np.inf
            relevant = set(target[target[:, 0] == user, 1].tolist())
            order = np.argsort(-scores, kind="stable")
            for k in (5, 10):
                hits = [int(item) in relevant for item in order[:k]]
                recalls[k].append(sum(hits) / len(relevant))
                ideal = sum(1 / np.log2(r + 2) for r in range(min(k, len(relevant))))
                ndcgs[k].append(sum(h / np.log2(r + 2) for r, h in enumerate(hits)) / ideal)
        assert got[split]["num_users"] == len(np.unique(target[:, 0])) > 0
        for k in (5, 10):
            assert got[split][f"recall@{k}"] == pytest.approx(np.mean(recalls[k]), abs=1e-6)
            assert got[split][f"ndcg@{k}"] == pytest.approx(np.mean(ndcgs[k]), abs=1e-6)
    chance = unseen_items.chance_recall(dataset, "test", items, 10)
    counts = np.bincount(train_pairs[:, 0], minlength=dataset.n_users)[np.unique(target[:, 0])]
    assert chance == pytest.approx(np.mean(np.minimum(10, dataset.n_items - counts) / (dataset.n_items - counts)))


def test_packed_configs_carry_no_absolute_data_path():
    # abspath, not resolve(): a ../shared that is a symbolic link (a clone beside a linked shared/) stays as written
    config = {"data": {"path": os.path.abspath(ROOT / ".." / "shared" / "data" / "lfm2k")}, "model": {"name": "bprmf"}}
    assert records.portable_config(config)["data"]["path"] == "../shared/data/lfm2k"
    assert records.portable_config({"data": {"path": "rel/x"}})["data"]["path"] == "rel/x"
    for path in (EXPERIMENTS / "records").rglob("*.jsonl"):
        for run in records.read(path).runs.values():
            data_path = ((run.get("config") or {}).get("data") or {}).get("path")
            assert data_path is None or not Path(data_path).is_absolute(), (path, data_path)


def _copy_run(source: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in ("metrics.json", "history.jsonl", "config.yaml"):
        (folder / name).write_bytes((source / name).read_bytes())
    return folder


def test_an_unfinished_search_is_refused_and_the_cli_writes_nothing(tiny_run, tmp_path, capsys):
    search = tmp_path / "bprmf_search"
    _copy_run(tiny_run, search / "trial_000")
    (search / "search.json").write_text(json.dumps({
        "valid_metric": "recall@20", "n_trials": 7, "best": None,
        "trials": [{"trial": 0, "workdir": "trial_000", "setting": {"loss_weights.reg": 1.0}}]}))
    with pytest.raises(records.RecordError, match="1 of 7 trials finished: an unfinished search cannot be packed"):
        records.pack(search)
    output = tmp_path / "out.jsonl"
    assert records.main(["pack", str(search), str(output)]) == 2
    assert "an unfinished search cannot be packed" in capsys.readouterr().err
    assert not output.exists()
    # All trials there but no winner recorded: still unfinished.
    (search / "search.json").write_text(json.dumps({"valid_metric": "recall@20", "n_trials": 1, "best": None,
                                                    "trials": [{"trial": 0, "workdir": "trial_000"}]}))
    with pytest.raises(records.RecordError, match="no winning trial"):
        records.pack(search)


def test_the_runs_of_a_reused_trial_are_found_from_the_record(tiny_run, tmp_path):
    """reproduce.py packs a final run that IS a search's winning trial from
    runs/<ds>/<model>_search/trial_NNN: unseen_items / popularity_buckets find it there (from the
    record's ``source``, or for an older record without one, from the search record's trial with
    the same metrics), not at runs/<ds>/<model>."""
    import unseen_items

    runs = tmp_path / "runs" / "tiny"
    trial = _copy_run(tiny_run, runs / "bprmf_search" / "trial_001")
    line = records.pack(trial, "bprmf")
    assert line[0]["source"] == str(trial.resolve())
    records.write(line, tmp_path / "bprmf.jsonl")
    final = records.read(tmp_path / "bprmf.jsonl")
    assert final.source == str(trial.resolve())
    elsewhere = tmp_path / "moved" / "tiny"  # the runs moved: found under --runs by <search>/<trial>
    _copy_run(tiny_run, elsewhere / "bprmf_search" / "trial_001")
    assert unseen_items.run_folder(final, elsewhere) == elsewhere / "bprmf_search" / "trial_001"
    assert unseen_items.run_folder(final, runs) == trial
    # A record packed before "source" was kept: the search record's trial with the run's metrics.
    old = tmp_path / "old.jsonl"
    records.write([{k: v for k, v in line[0].items() if k != "source"}, line[1]], old)
    old_final = records.read(old)
    assert old_final.source is None
    (runs / "bprmf_search" / "search.json").write_text(json.dumps({
        "valid_metric": "recall@20", "n_trials": 1, "trials": [{"trial": 1, "workdir": "trial_001", "setting": {}}],
        "best": {"trial": 1, "workdir": "trial_001", "setting": {}}}))
    records.write(records.pack(runs / "bprmf_search"), tmp_path / "bprmf_search.jsonl")
    search = records.read(tmp_path / "bprmf_search.jsonl")
    assert unseen_items.run_folder(old_final, elsewhere, [search]) == elsewhere / "bprmf_search" / "trial_001"
    assert unseen_items.run_folder(old_final, elsewhere) == elsewhere / "bprmf"  # nothing to go by: as before
    unseen_items._check_same_run(unseen_items.run_folder(old_final, elsewhere, [search]), old_final.runs["bprmf"])
