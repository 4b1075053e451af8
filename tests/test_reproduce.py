"""experiments/reproduce.py: one command from a grid file to the results table, under --output only."""

import importlib.util
import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import reproduce
from _model_testing import record_built_features

DATA = {"synthetic": {"n_users": 60, "n_items": 40, "n_interactions": 900, "seed": 2}}


def _config(name: str, **extra) -> dict:
    return {"model": {"name": name, "args": {"embedding_size": 8}}, "data": DATA,
            "train": {"epochs": 50, "batch_size": 128, "learning_rate": 0.05, "patience": 2, "seed": 5,
                      "checkpoint_every": 100},
            "eval": {"ks": [10, 20], "metrics": ["recall", "ndcg"]}, **extra}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A dataset of two rows: BPR-MF with a 2-trial grid, LightGCN as a single run."""
    root = tmp_path_factory.mktemp("reproduce")
    configs = root / "configs"
    configs.mkdir()
    (configs / "bpr.yaml").write_text(yaml.safe_dump(_config("bprmf", loss_weights={"reg": 0.01})))
    (configs / "lightgcn.yaml").write_text(yaml.safe_dump(_config("lightgcn")))
    grids = root / "grids.yaml"
    grids.write_text(yaml.safe_dump({
        "dataset": "tiny", "configs": str(configs),
        "warm": {"bpr": {"searches": {"bpr_search": {"grid": {"loss_weights.reg": [0.001, 3.0]}}}},
                 "lightgcn": {"set": {"model.args.n_layers": 1}}}}))
    return root, grids


def _tree_state():
    """Every file under experiments/ (size, mtime) and git's view of the work tree."""
    files = {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in (ROOT / "experiments").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts}
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                            capture_output=True, text=True, check=False).stdout
    return files, status


@pytest.fixture(scope="module")
def reproduced(setup):
    root, grids = setup
    before = _tree_state()
    out = root / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "reproduce.py"), "tiny", "--grids", str(grids),
                           "--output", str(out), "--max-epochs", "6", "--quiet", "--anchors", str(root / "none")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, done.stdout, before, _tree_state()


def _changed(before: dict, after: dict) -> set[str]:
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}


def test_the_repository_is_left_untouched(reproduced):
    """Nothing under experiments/ changed, and git sees the same work tree.

    Other trainings (a developer's runs while the suite runs) write under ``experiments/runs/``; a change
    there is allowed unless it is this reproduction's (its dataset is "tiny", so its runs would be
    ``experiments/runs/tiny/...``).
    """
    _, _, (files_before, status_before), (files_after, status_after) = reproduced
    runs = ROOT / "experiments" / "runs"
    foreign = {path for path in _changed(files_before, files_after)
               if Path(path).is_relative_to(runs) and "tiny" not in Path(path).relative_to(runs).parts}
    assert _changed(files_before, files_after) - foreign == set()
    assert not any("tiny" in Path(path).parts for path in files_after if path not in files_before)
    assert status_before == status_after


def test_runs_records_and_table_land_under_output(reproduced):
    out, stdout, _, _ = reproduced
    assert sorted(p.name for p in (out / "records" / "tiny").iterdir()) == ["bpr.jsonl", "bpr_search.jsonl",
                                                                          "lightgcn.jsonl"]
    table = (out / "results" / "tiny.md").read_text()
    search = json.loads((out / "runs" / "tiny" / "bpr_search" / "search.json").read_text())
    trials = search["trials"]
    assert [t["setting"] for t in trials] == [{"loss_weights.reg": 0.001}, {"loss_weights.reg": 3.0}]
    # The winner, recomputed here from the trials' valid recall@20 alone.
    winner = max(trials, key=lambda t: (t["valid"]["recall@20"], -t["trial"]))
    bpr_row = next(line for line in table.splitlines() if line.startswith("| bpr |"))
    assert f"**{winner['test']['recall@20']:.4f}**" in bpr_row
    assert f"loss_weights.reg={winner['setting']['loss_weights.reg']}" in bpr_row
    lightgcn = json.loads((out / "runs" / "tiny" / "lightgcn" / "metrics.json").read_text())
    lightgcn_row = next(line for line in table.splitlines() if line.startswith("| lightgcn |"))
    assert f"**{lightgcn['test']['recall@20']:.4f}**" in lightgcn_row
    assert lightgcn["epochs_run"] <= 6
    config = yaml.safe_load((out / "runs" / "tiny" / "lightgcn" / "config.yaml").read_text())
    assert config["model"]["args"]["n_layers"] == 1 and config["train"]["epochs"] == 6
    # Stage times: printed and written.
    times = json.loads((out / "runs" / "tiny" / "reproduce.json").read_text())
    assert [s["stage"] for s in times["stages"]] == ["bpr", "lightgcn", "results table"]
    # stage durations are wall-clock readings: only their form is checked (finite non-negative floats)
    assert all(isinstance(s["seconds"], float) and math.isfinite(s["seconds"]) and s["seconds"] >= 0
               for s in times["stages"])
    assert "| bpr |" in stdout and "| total |" in stdout


def test_the_final_run_is_the_winning_trial_when_it_is_the_same_run(reproduced):
    out, _, _, _ = reproduced
    times = json.loads((out / "runs" / "tiny" / "reproduce.json").read_text())
    bpr = times["stages"][0]
    search = json.loads((out / "runs" / "tiny" / "bpr_search" / "search.json").read_text())
    assert bpr["final"]["reused"] == f"runs/tiny/bpr_search/trial_{search['best']['trial']:03d}"
    assert bpr["searches"][0]["batched"] == "2 trials in 1 batched program(s)"
    final = [json.loads(line) for line in (out / "records" / "tiny" / "bpr.jsonl").read_text().splitlines()]
    assert final[0]["kind"] == "run" and final[1]["metrics"]["test"] == search["best"]["test"]


def test_an_existing_output_is_refused_before_anything_runs(setup, reproduced, capsys):
    _, grids = setup
    out = reproduced[0]
    assert reproduce.main(["tiny", "--grids", str(grids), "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.mark.parametrize("body, message", [
    ({"warm": {"bpr": {"searches": {"bpr_grid": {"grid": {"loss_weights.reg": [1.0]}}}}}},
     "warm.bpr.searches.bpr_grid: a search's record name must be bpr_search"),
    ({"warm": {"bpr": {"searches": {"bpr_search": {"grid": {"loss_weights.reg": []}}}}}},
     "warm.bpr.searches.bpr_search.grid.loss_weights.reg: expected a non-empty list"),
    ({"warm": {"nothing": {}}}, "warm.nothing.config:"),
    ({"warm": {"bpr": {"sets": {}}}}, "warm.bpr: unknown key(s) ['sets']"),
    ({"coldstart": {"baselines": {"cfg": "bpr.yaml"}}}, "coldstart.baselines: expected true, false or {config: FILE}"),
    ({"coldstart": {"baselines": "yes"}}, "coldstart.baselines: expected true, false or {config: FILE}"),
    ({"coldstart": {"baselines": {"config": "absent.yaml"}}}, "coldstart.baselines.config:"),
])
def test_bad_grid_files_are_named_with_the_field(setup, tmp_path, capsys, body, message):
    root, _ = setup
    grids = tmp_path / "grids.yaml"
    grids.write_text(yaml.safe_dump({"dataset": "tiny", "configs": str(root / "configs"), **body}))
    assert reproduce.main(["tiny", "--grids", str(grids), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(grids) in err and message in err
    assert not (tmp_path / "out").exists()


def test_only_names_an_unknown_row(setup, tmp_path, capsys):
    _, grids = setup
    assert reproduce.main(["tiny", "--grids", str(grids), "--output", str(tmp_path / "o"), "--only", "bprr"]) == 2
    assert "--only bprr: not a row or stage" in capsys.readouterr().err


def test_the_lfm2k_grid_file_covers_every_config_and_matches_the_records():
    """Every lfm2k config is a row, and every search of the grid file is the grid its committed
    record ran (the record's trials' settings, in order)."""
    plan = reproduce.load_plan("lfm2k")
    listed = {row.config.name for row in plan.warm}
    assert listed == {p.name for p in (ROOT / "experiments/configs/lfm2k").glob("*.yaml")}
    checked = 0
    for row in plan.warm + plan.coldstart:
        for search in row.searches:
            expected = [dict(zip(search.grid, values)) for values in itertools.product(*search.grid.values())]
            path = ROOT / "experiments/records/lfm2k" / row.group / f"{search.name}.jsonl"
            header = json.loads(path.read_text().splitlines()[0])
            settings = [t["setting"] for t in header["search"]["trials"]]
            assert settings == expected, search.name
            checked += 1
    assert checked == 32  # 21 warm searches, 11 cold-start ones


def test_without_a_grid_file_every_config_is_a_row_and_its_grid_its_search(tmp_path):
    configs = tmp_path / "configs" / "other"
    (configs / "coldstart").mkdir(parents=True)
    (configs / "bpr.yaml").write_text(yaml.safe_dump(_config("bprmf", grid={"loss_weights.reg": [0.1, 1.0]})))
    (configs / "lightgcn.yaml").write_text(yaml.safe_dump(_config("lightgcn")))
    (configs / "coldstart" / "vbpr.yaml").write_text(yaml.safe_dump(_config("vbpr")))
    plan = reproduce.load_plan("other", experiments=tmp_path)
    assert plan.source == "configs" and plan.missing_modality is None and plan.coldstart_baselines
    assert [(r.name, [(s.name, s.grid) for s in r.searches]) for r in plan.warm] == [
        ("bpr", [("bpr_search", {"loss_weights.reg": [0.1, 1.0]})]), ("lightgcn", [])]
    assert [(r.label, r.searches) for r in plan.coldstart] == [("coldstart/vbpr", [])]
    with pytest.raises(reproduce.GridFileError, match="no configs folder"):
        reproduce.load_plan("absent", experiments=tmp_path)


def test_the_tiktok_grid_file_has_a_row_per_record_and_matches_the_records():
    """Every TikTok config with a committed record is a row; each search is the grid its record
    ran (trial for trial, in order), and each row without a search has its single-run record."""
    plan = reproduce.load_plan("tiktok")
    records_dir = ROOT / "experiments/records/tiktok"
    for group, rows in (("", plan.warm), ("coldstart", plan.coldstart)):
        recorded = {p.stem.split("_search")[0] for p in (records_dir / group).glob("*.jsonl")}
        assert {row.name for row in rows} == recorded, group
        for row in rows:
            if not row.searches:
                header = json.loads((records_dir / group / f"{row.name}.jsonl").read_text().splitlines()[0])
                assert header["kind"] == "run", row.label
            for search in row.searches:
                header = json.loads((records_dir / group / f"{search.name}.jsonl").read_text().splitlines()[0])
                expected = [dict(zip(search.grid, values)) for values in itertools.product(*search.grid.values())]
                assert [t["setting"] for t in header["search"]["trials"]] == expected, search.name
    assert plan.coldstart_baselines and plan.missing_modality is None


@pytest.mark.parametrize("dataset", ["lfm2k", "tiktok"])
def test_configs_whose_grid_is_in_the_grid_file_cite_it(dataset):
    plan = reproduce.load_plan(dataset)
    rows = [row for row in plan.warm + plan.coldstart if row.searches]
    assert rows
    for row in rows:
        header = [line for line in row.config.read_text().splitlines() if line.startswith("#")]
        assert reproduce.grid_citation(plan, row) in header, row.config
    assert reproduce.grid_citation(plan, rows[0]).startswith(f"# Grid: experiments/grids/{dataset}.yaml, warm.")


def test_a_search_over_data_keys_trains_each_trial_on_its_own_data(tmp_path, monkeypatch):
    """A grid over data.feature_transform: the Runner shares one loaded dataset across runs with
    the same data section, but a trial with another section must train on its own features."""
    import numpy as np

    from jaxrec.train import _data, load_config

    built = record_built_features(monkeypatch)
    config = tmp_path / "bpr.yaml"
    config.write_text(yaml.safe_dump(_config("bprmf", loss_weights={"reg": 0.01})))
    grid = {"data.feature_transform": [{}, {"image": "standardize"}]}
    row = reproduce.Row("bpr", "", config, {}, [reproduce.Search("bpr_search", grid, {})])
    plan = reproduce.Plan("tiny", "test", [row], [], False, None)
    runner = reproduce.Runner(plan, tmp_path / "out", max_epochs=2, batched="auto", resume=False, quiet=True)
    runner.run_row(row)
    raw = np.asarray(_data.load_dataset(load_config(config).data).modalities["image"].features, np.float64)
    standardized = (raw - raw.mean(axis=0)) / raw.std(axis=0)  # numpy, every row present
    trials = built[:2]  # the final run (when it is not the winning trial reused) builds after them
    assert np.allclose(trials[0], raw)
    assert np.allclose(trials[1], standardized, atol=1e-5)
    search = json.loads((tmp_path / "out" / "runs" / "tiny" / "bpr_search" / "search.json").read_text())
    assert [t["setting"] for t in search["trials"]] == [{"data.feature_transform": v} for v in grid["data.feature_transform"]]


def test_the_coldstart_baselines_use_the_feature_models_split_and_modalities(lfm2k_path):
    """The grid files name the config the baselines read (coldstart/vbpr.yaml: the feature
    models' two modalities), and the committed lfm2k baseline figures are what
    coldstart_baselines.py computes from it. The first row, BPR-MF, names no modalities: its
    config would give the baselines every modality of the folder (whisper as well), which is what
    reproduce.py passed before the grid file named the config."""
    import coldstart_baselines

    for dataset in ("lfm2k", "tiktok"):
        plan = reproduce.load_plan(dataset)
        assert plan.baselines_config == ROOT / f"experiments/configs/{dataset}/coldstart/vbpr.yaml"
    plan = reproduce.load_plan("lfm2k")
    dataset, _, protocol = coldstart_baselines.load_split(plan.baselines_config)
    assert list(dataset.modalities) == ["all-MiniLM-L6-v2", "vggish"]
    first, _, _ = coldstart_baselines.load_split(plan.coldstart[0].config)
    assert "whisper" in first.modalities  # what the first row's config would have given
    committed = {row["name"]: row for row in
                 json.loads((ROOT / "experiments/results/lfm2k_coldstart.json").read_text())["rows"]}
    knn = coldstart_baselines.feature_knn(dataset, coldstart_baselines.jdata.cold_items(dataset), protocol)
    assert knn["setting"] == committed["feature_knn"]["setting"]
    for split in ("valid", "test"):
        assert knn[split]["recall@20"] == pytest.approx(committed["feature_knn"][split]["recall@20"], abs=1e-6)


@pytest.mark.parametrize("where", [".", "experiments/records", "experiments"])
def test_an_output_inside_the_project_is_refused(setup, capsys, where):
    _, grids = setup
    before = _tree_state()
    assert reproduce.main(["tiny", "--grids", str(grids), "--output", str(ROOT / where)]) == 2
    assert "inside the project folder" in capsys.readouterr().err
    assert _tree_state() == before


def test_an_output_that_is_a_file_is_refused_before_anything_runs(setup, tmp_path, capsys):
    _, grids = setup
    a_file = tmp_path / "results.txt"
    a_file.write_text("mine")
    for output in (a_file, a_file / "sub"):
        assert reproduce.main(["tiny", "--grids", str(grids), "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert f"{a_file} is a file, not a folder" in err and "Traceback" not in err
    assert a_file.read_text() == "mine"


@pytest.mark.parametrize("row, message", [
    ({"config": "bpr.yaml", "set": {"train.learning_rat": 0.01}}, "warm.bpr_fast (bpr.yaml with its set): override "
                                                                  "'train.learning_rat'"),
    ({"config": "bpr.yaml", "searches": {"bpr_fast_search": {"grid": {"loss_weights.reg": [0.1]},
                                                             "set": {"train.epochz": 3}}}},
     "warm.bpr_fast.searches.bpr_fast_search: override 'train.epochz'"),
    ({"config": "bpr.yaml", "searches": {"bpr_fast_search": {"grid": {"train.learning_rat": [0.1, 0.2]}}}},
     "warm.bpr_fast.searches.bpr_fast_search: "),  # a grid key: the search's config names it
    ({"config": "bpr.yaml", "set": {"model.args.embeding_size": 8}}, "model 'bprmf' has no argument 'embeding_size'"),
    ({"config": "bpr.yaml", "searches": {"bpr_fast_search": {"grid": {"model.args.embedding_sise": [4, 8]}}}},
     "warm.bpr_fast.searches.bpr_fast_search: trial 0 ({'model.args.embedding_sise': 4}): model 'bprmf' has no "
     "argument 'embedding_sise'"),
    ({"config": "bpr.yaml", "set": {"model.name": "bprm"}}, "unknown model 'bprm'"),
])
def test_config_errors_of_any_row_are_refused_before_the_first_row_runs(setup, tmp_path, capsys, row, message):
    root, _ = setup
    grids = tmp_path / "grids.yaml"
    grids.write_text(yaml.safe_dump({"dataset": "tiny", "configs": str(root / "configs"),
                                     "warm": {"lightgcn": {}, "bpr_fast": row}}))
    assert reproduce.main(["tiny", "--grids", str(grids), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {grids}: ") and message in err and "Traceback" not in err
    assert any(typo in err for typo in ("train.learning_rat", "train.epochz", "embeding_size", "embedding_sise",
                                        "'bprm'")) and err.count("\n") == 1
    assert not (tmp_path / "out").exists()  # not even the first row ran


def test_a_failing_row_is_an_error_line_and_the_finished_stages_are_kept(setup, tmp_path, capsys):
    """A loss weight the model has no term for is only seen when the model is built (the row's
    turn): an error line, exit 1, and the stage times of the rows that finished plus the failed one."""
    root, _ = setup
    grids = tmp_path / "grids.yaml"
    grids.write_text(yaml.safe_dump({"dataset": "tiny", "configs": str(root / "configs"), "warm": {
        "lightgcn": {"set": {"model.args.n_layers": 1}},
        "bpr": {"searches": {"bpr_search": {"grid": {"loss_weights.regg": [0.1]}}}}}}, sort_keys=False))
    out = tmp_path / "out"
    assert reproduce.main(["tiny", "--grids", str(grids), "--output", str(out), "--max-epochs", "1", "--quiet"]) == 1
    captured = capsys.readouterr()
    assert "error: bpr: " in captured.err and "regg" in captured.err and "Traceback" not in captured.err
    times = json.loads((out / "runs" / "tiny" / "reproduce.json").read_text())
    assert times["finished"] is False
    assert [(s["stage"], s.get("failed", False)) for s in times["stages"]] == [("lightgcn", False), ("bpr", True)]
    assert "| lightgcn |" in captured.out and "FAILED" in captured.out
    assert (out / "records" / "tiny" / "lightgcn.jsonl").exists() and not (out / "results").exists()


def test_the_missing_modality_section_takes_the_scripts_options_only(tmp_path, capsys, monkeypatch):
    configs = ROOT / "experiments" / "configs" / "lfm2k"
    grids = tmp_path / "grids.yaml"
    for section, message in (({"config": "gan.yaml", "scenario": ["warm"]}, "missing_modality: unknown key(s) "
                                                                             "['scenario']"),
                             ({"scenarios": ["hot"]}, "missing_modality.scenarios: expected a non-empty list of "
                                                      "warm, cold_start"),
                             ({"seeds": [1, 1]}, "missing_modality.seeds: a seed listed twice")):
        grids.write_text(yaml.safe_dump({"dataset": "tiny", "configs": str(configs), "missing_modality": section}))
        assert reproduce.main(["tiny", "--grids", str(grids), "--output", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err
    grids.write_text(yaml.safe_dump({"dataset": "tiny", "configs": str(configs), "missing_modality": {
        "seeds": [7], "scenarios": ["warm"], "skip_training": True}}))
    called = []
    monkeypatch.setattr(reproduce, "_script", lambda name, options: called.append((name, options)))
    assert reproduce.main(["tiny", "--grids", str(grids), "--output", str(tmp_path / "o"), "--max-epochs", "2"]) == 0
    (name, options), (last, table) = called
    assert name == "missing_modality.py" and last == "make_results.py"
    assert options[options.index("--seeds"):] == ["--seeds", "7", "--scenarios", "warm", "--skip-training",
                                                  "--max-epochs", "2"]
    assert table[-2:] == ["--max-epochs", "2"]


def test_coldstart_rows_of_a_dataset_without_baseline_rows_are_refused_before_running(setup, tmp_path, capsys):
    root, _ = setup
    configs = tmp_path / "configs"
    (configs / "coldstart").mkdir(parents=True)
    (configs / "bpr.yaml").write_text((root / "configs" / "bpr.yaml").read_text())
    (configs / "coldstart" / "bprmf.yaml").write_text((root / "configs" / "bpr.yaml").read_text())
    grids = tmp_path / "grids.yaml"
    grids.write_text(yaml.safe_dump({"dataset": "mini", "configs": str(configs), "warm": {"bpr": {}},
                                     "coldstart": {"rows": {"bprmf": {}}}}))
    assert reproduce.main(["mini", "--grids", str(grids), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "coldstart.baselines: experiments/coldstart_baselines.py has model rows for lfm2k, tiktok only" in err
    assert not (tmp_path / "out").exists()


def _bench_table_arithmetic():
    spec = importlib.util.spec_from_file_location("bench_table_arithmetic",
                                                  ROOT / "benchmarks" / "bench_table_arithmetic.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_table_arithmetic_benchmark_counts_what_reproduce_trained(setup, reproduced):
    """``benchmarks/bench_table_arithmetic.py`` lists the runs the reproduction trained (the final
    bpr run is its winning trial, reused: not counted again) with the epochs their run folders
    report, and counts the ranking's inner products as ``2 n_items d`` per ranked user."""
    bench = _bench_table_arithmetic()
    _, grids = setup
    out = reproduced[0]
    runs = bench.table_runs("tiny", out / "records" / "tiny", grids)
    folders = out / "runs" / "tiny"
    search = json.loads((folders / "bpr_search" / "search.json").read_text())
    expected = [("bpr", f"trial_{t['trial']:03d}",
                 json.loads((folders / "bpr_search" / f"trial_{t['trial']:03d}" / "metrics.json").read_text())
                 ["epochs_run"]) for t in search["trials"]]
    expected.append(("lightgcn", "lightgcn", json.loads((folders / "lightgcn" / "metrics.json").read_text())["epochs_run"]))
    assert [(r["row"], r["name"], r["epochs"]) for r in runs] == expected
    assert "reused" in json.loads((folders / "reproduce.json").read_text())["stages"][0]["final"]
    # eval_every is 1: valid ranked after every epoch, test once at the end
    assert all(r["evaluations"] == {"valid": r["epochs"], "test": 1} for r in runs)

    configs = {bench.shape_key(r["config"]): r["config"] for r in runs}
    assert len(configs) == 2  # the two bpr trials differ in a non-zero loss weight only: one program
    counts = bench._count_in_child(configs)
    bpr, lightgcn = (counts[bench.shape_key(r["config"])] for r in (runs[0], runs[-1]))
    n_items, d = DATA["synthetic"]["n_items"], 8
    assert bpr["score_flops_per_user"] == lightgcn["score_flops_per_user"] == 2 * n_items * d
    assert bpr["encode_flops"] == 0  # BPR-MF's eval embeddings are its tables
    # LightGCN's one layer multiplies and adds the d values of every training pair, both ways
    from jaxrec.train import config_from_dict, prepare_experiment

    n_train = len(prepare_experiment(config_from_dict(runs[-1]["config"])).dataset.split_pairs("train"))
    assert lightgcn["encode_flops"] >= 2 * 2 * n_train * d
    assert bpr["flops_per_step"] > 0 and bpr["conditionals"] == lightgcn["conditionals"] == 0
    assert 0 < bpr["users"]["valid"] <= DATA["synthetic"]["n_users"]
    flops = bench.run_flops(runs[0], bpr)
    assert flops["train"] == bpr["flops_per_step"] * bpr["steps_per_epoch"] * runs[0]["epochs"]
    ranking = (runs[0]["epochs"] * bpr["users"]["valid"] + bpr["users"]["test"]) * 2 * n_items * d
    assert flops["eval"] == flops["eval_dot"] == pytest.approx(ranking)


def test_the_table_arithmetic_benchmark_names_a_missing_record(setup, tmp_path):
    bench = _bench_table_arithmetic()
    _, grids = setup
    with pytest.raises(bench.RecordsMissing, match=r"bpr_search\.jsonl: no such run record; run experiments/reproduce"):
        bench.table_runs("tiny", tmp_path / "empty", grids)


def test_the_table_arithmetic_benchmark_counts_one_program_per_shape():
    """Seeds, learning rates, epochs and a loss weight's non-zero value change no shape; a weight
    of 0 (its term left out) and a model argument do."""
    bench = _bench_table_arithmetic()
    base = _config("bprmf", loss_weights={"bpr": 1.0, "reg": 0.01})
    same = _config("bprmf", loss_weights={"bpr": 1.0, "reg": 2.0})
    same["train"].update(seed=9, learning_rate=0.5, epochs=3, patience=7)
    zero = _config("bprmf", loss_weights={"bpr": 1.0, "reg": 0.0})
    wider = _config("bprmf", loss_weights={"bpr": 1.0, "reg": 0.01})
    wider["model"]["args"]["embedding_size"] = 16
    assert bench.shape_key(base) == bench.shape_key(same)
    assert len({bench.shape_key(c) for c in (base, zero, wider)}) == 3
