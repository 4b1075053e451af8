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
    assert "is not a jaxrec run" in capsys.readouterr().err


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