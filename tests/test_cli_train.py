"""The command line: jaxrec train / evaluate / runs compare / search / demo."""

import json
from pathlib import Path

import pytest
import yaml

from jaxrec.cli.main import main

CONFIG = {
    "model": {"name": "bprmf", "args": {"embedding_size": 8}},
    "data": {"synthetic": {"n_users": 100, "n_items": 70, "n_interactions": 2000, "seed": 1}},
    "train": {"epochs": 4, "batch_size": 256, "learning_rate": 0.02, "seed": 3},
    "eval": {"ks": [10, 20]},
    "loss_weights": {"reg": 0.01},
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    config_path = folder / "bpr.yaml"
    config_path.write_text(yaml.safe_dump(CONFIG))
    workdir = folder / "run"
    assert main(["train", str(config_path), "--workdir", str(workdir), "--quiet", "--set", "train.epochs=3"]) == 0
    return config_path, workdir


def test_train_writes_a_run_with_the_overrides(trained):
    _, workdir = trained
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3 and metrics["model"] == "bprmf"
    assert yaml.safe_load((workdir / "config.yaml").read_text())["train"]["epochs"] == 3


def test_evaluate_reproduces_metrics_json(trained, capsys):
    _, workdir = trained
    metrics = json.loads((workdir / "metrics.json").read_text())
    capsys.readouterr()
    for split in ("test", "valid"):
        assert main(["evaluate", str(workdir), "--split", split, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["epoch"] == metrics["best_epoch"]
        assert result["metrics"] == metrics[split]
    assert main(["evaluate", str(workdir)]) == 0
    out = capsys.readouterr().out
    assert f"| recall@20 | {metrics['test']['recall@20']:.4f} |" in out


def test_runs_compare_prints_one_row_per_run(trained, tmp_path, capsys):
    config_path, workdir = trained
    other = tmp_path / "other"
    assert main(["train", str(config_path), "--workdir", str(other), "--quiet", "--set", "train.epochs=2",
                 "--set", "train.seed=4"]) == 0
    capsys.readouterr()
    assert main(["runs", "compare", str(workdir), str(other)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| run | model | dataset | seed |") and len(lines) == 4
    recall = json.loads((other / "metrics.json").read_text())["test"]["recall@20"]
    assert str(other) in lines[3] and f"{recall:.4f}" in lines[3]


def test_errors_are_one_line_with_a_suggestion(trained, capsys):
    config_path, workdir = trained
    assert main(["train", str(config_path), "--set", "train.lerning_rate=0.1", "--workdir", str(workdir)]) == 1
    assert "did you mean 'train.learning_rate'" in capsys.readouterr().err
    assert main(["train", str(config_path), "--workdir", str(workdir), "--quiet"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    assert main(["evaluate", str(config_path.parent)]) == 1
    assert "is not a jaxrec run: config.yaml is missing" in capsys.readouterr().err
    # A mistyped folder or a file was also called "config.yaml is missing".
    assert main(["evaluate", str(workdir) + "_typo"]) == 1
    assert capsys.readouterr().err.strip().endswith("is not a jaxrec run: no such folder")
    assert main(["evaluate", str(config_path)]) == 1
    assert capsys.readouterr().err.strip().endswith("is not a jaxrec run: it is a file, not a run folder")


def test_search_command_runs_every_trial_and_names_the_winner(tmp_path, capsys):
    config_path = tmp_path / "grid.yaml"
    config_path.write_text(yaml.safe_dump({**CONFIG, "train": {**CONFIG["train"], "epochs": 2},
                                           "grid": {"loss_weights.reg": [0.0, 0.1]}}))
    assert main(["search", str(config_path), "--workdir", str(tmp_path / "search"), "--quiet"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "search" / "search.json").read_text())
    assert len(summary["trials"]) == 2
    for trial in summary["trials"]:
        run = json.loads((tmp_path / "search" / f"trial_{trial['trial']:03d}" / "metrics.json").read_text())
        assert run["valid"] == trial["valid"]
    best = max(summary["trials"], key=lambda t: t["valid"]["recall@20"])
    assert summary["best"]["trial"] == best["trial"]
    assert f"winner (by valid recall@20): trial {best['trial']}" in out


def test_demo_smoke(capsys):
    assert main(["demo", "--size", "tiny", "--epochs", "2", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "jaxrec demo: vbpr on synthetic" in out
    assert "| recall@20 |" in out and "| ndcg@10 |" in out


def test_demo_refusals_speak_its_own_options(trained, tmp_path, capsys):
    # The demo has no --resume, yet a --workdir holding a run said "pass --resume"; --epochs 0
    # was blamed on "config key 'train.epochs'", and a file at --workdir was "File exists".
    _, workdir = trained
    (tmp_path / "a_file").write_text("x")
    cases = [(["--workdir", str(workdir)], f"--workdir {workdir}: the folder is not empty"),
             (["--workdir", str(tmp_path / "a_file")], "exists and is not a folder"),
             (["--epochs", "0"], "--epochs 0: expected a positive number of epochs")]
    for extra, message in cases:
        assert main(["demo", "--size", "tiny", "--quiet", *extra]) == 1
        err = capsys.readouterr().err
        assert message in err and "--resume to" not in err and "train.epochs" not in err
    assert (tmp_path / "a_file").read_text() == "x"


def test_lfm2k_config_runs_on_the_real_data(lfm2k_path, tmp_path):
    config = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "lfm2k" / "bpr.yaml"
    assert main(["train", str(config), "--workdir", str(tmp_path / "run"), "--quiet",
                 "--set", f"data.path={lfm2k_path}", "--set", "train.epochs=1", "--set", "eval.ks=[20]",
                 "--set", "eval.metrics=[recall]"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["dataset"] == "lfm2k" and metrics["n_params"] == (1858 + 1425) * 64
    assert metrics["loss_weights"] == {"bpr": 1.0, "reg": 1.0}
    assert 0.0 < metrics["test"]["recall@20"] < 1.0


def test_the_demo_runs_its_packaged_config_with_only_the_asked_overrides():
    from jaxrec.cli.demo import DEMO_CONFIG_PATH, demo_config
    from jaxrec.train import config_to_dict, load_config

    base = config_to_dict(load_config(DEMO_CONFIG_PATH))
    assert base["model"]["name"] == "vbpr" and config_to_dict(demo_config()) == base
    tiny = config_to_dict(demo_config("tiny", 3))
    assert tiny["train"] == {**base["train"], "epochs": 3}
    assert tiny["data"]["synthetic"]["n_users"] == 200 and base["data"]["synthetic"] == {}
    assert {k: v for k, v in tiny.items() if k not in ("train", "data")} == \
        {k: v for k, v in base.items() if k not in ("train", "data")}

def _copy_run_with_metrics(workdir: Path, folder: Path, text: str) -> Path:
    import shutil

    copy = folder / "copy"
    shutil.copytree(workdir, copy)
    (copy / "metrics.json").write_text(text)
    return copy


@pytest.mark.parametrize("text, expected", [
    ("[1, 2]\n", "metrics.json: expected a JSON object (a run's metrics, as 'jaxrec train' writes them); "
                 "found a list"),
    ('{"best_epoch": "2"}\n', "metrics.json, field 'best_epoch': expected an integer or null; found '2'"),
])
def test_evaluate_of_a_misshapen_metrics_json_is_a_clean_error(trained, tmp_path, capsys, text, expected):
    _, workdir = trained
    copy = _copy_run_with_metrics(workdir, tmp_path, text)
    capsys.readouterr()
    assert main(["evaluate", str(copy)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"jaxrec: error: {copy.resolve() / 'metrics.json'}") and expected in err
    assert "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("text", ["[1, 2]\n", '{"valid": [1]}\n', '"done"\n'])
def test_runs_compare_skips_a_misshapen_metrics_json_with_a_note(trained, tmp_path, capsys, text):
    _, workdir = trained
    copy = _copy_run_with_metrics(workdir, tmp_path, text)
    capsys.readouterr()
    assert main(["runs", "compare", str(workdir), str(copy)]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert str(workdir) in lines[2] and not any(line.startswith(f"| {copy}") for line in lines)
    assert "Skipped 1 folder(s) without a finished run:" in out
    assert f"- {copy}: {copy / 'metrics.json'}" in out and "expected" in out
    assert main(["runs", "compare", str(copy)]) == 1  # nothing left to compare: a clean error
    err = capsys.readouterr().err
    assert err.startswith("jaxrec: error: no finished run to compare: ") and "Traceback" not in err


def test_runs_compare_skips_a_search_json_of_the_wrong_shape(trained, tmp_path, capsys):
    _, workdir = trained
    search = tmp_path / "search"
    search.mkdir()
    (search / "search.json").write_text("[1, 2]\n")
    capsys.readouterr()
    assert main(["runs", "compare", str(workdir), str(search)]) == 0
    out = capsys.readouterr().out
    assert f"- {search}: {search / 'search.json'}: expected a JSON object" in out


def test_a_config_holding_a_list_is_a_clean_error_also_with_set(tmp_path, capsys):
    config = tmp_path / "list.yaml"
    config.write_text("- a\n- b\n")
    for extra in ([], ["--set", "train.epochs=2"]):
        assert main(["train", str(config), "--workdir", str(tmp_path / "run"), "--quiet", *extra]) == 1
        err = capsys.readouterr().err
        assert err == f"jaxrec: error: {config}: a config must be a mapping of sections; found ['a', 'b']\n"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, expected", [
    ("train.epoch=5", "--set train.epoch=5: unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
    ("trian.epochs=5", "--set trian.epochs=5: unknown config key 'trian'; did you mean 'train'?"),
    ("train.epochs.x=5", "--set train.epochs.x=5: unknown config key 'train.epochs.x' ('train.epochs' takes a "
                         "value of type int, not a section of keys)"),
    ("train={epoch: 5}", "--set train={epoch: 5}: unknown config key 'train.epoch'; did you mean 'train.epochs'?"),
    ("train.epochs=five", "--set train.epochs=five: config key 'train.epochs' expects int; found 'five' (str)"),
    ("loss_weights.reg=x", "--set loss_weights.reg=x: config key 'loss_weights.reg' expects float; found 'x'"),
    ("grid.train.seed=3", "--set grid.train.seed=3: config key 'grid.train.seed' expects list; found 3 (int)"),
])
def test_a_bad_set_is_blamed_on_the_set_not_the_file(trained, tmp_path, capsys, override, expected):
    config_path, _ = trained
    capsys.readouterr()
    assert main(["train", str(config_path), "--workdir", str(tmp_path / "run"), "--quiet",
                 "--set", "train.epochs=2", "--set", override]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"jaxrec: error: {expected}") and str(config_path) not in err
    assert not (tmp_path / "run").exists()


def test_set_errors_leave_the_file_blamed_for_its_own_keys(tmp_path):
    from jaxrec.errors import ConfigError
    from jaxrec.train import load_config

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "train": {"epoch": 2}}))
    with pytest.raises(ConfigError, match=rf"^{config}: unknown config key 'train.epoch'"):
        load_config(config, ["train.seed=1"])
    config.write_text(yaml.safe_dump(CONFIG))
    # an override a later one replaces is not checked; free-form sections take any key
    loaded = load_config(config, ["train.epochs=abc", "train.epochs=2", "model.args.anything=1"])
    assert loaded.train.epochs == 2 and loaded.model.args["anything"] == 1
    with pytest.raises(ConfigError, match=r"^override 'train\.epoch': unknown config key"):
        load_config(config, [("train.epoch", 2)])
