"""The experiment scripts check their arguments before any work: one error line, a non-zero
exit, nothing written (experiments/coldstart_baselines.py, missing_modality.py, feature_probe.py)."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "experiments"))
import coldstart_baselines  # noqa: E402
import feature_probe  # noqa: E402
import missing_modality  # noqa: E402


def _exit_code(main, argv) -> int:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    return raised.value.code


@pytest.mark.parametrize("argv, message", [
    (["--config", "/tmp/nope-jaxrec.yaml"], "--config /tmp/nope-jaxrec.yaml: no such config file"),
    (["--runs", "/tmp/norecords-jaxrec"], "--runs /tmp/norecords-jaxrec: no such folder"),
    (["--config", str(ROOT / "experiments/configs/lfm2k/bpr.yaml")], "data.split is not a cold_start_items split"),
])
def test_coldstart_baselines_refuses_bad_arguments_before_computing(tmp_path, capsys, argv, message):
    out = tmp_path / "coldstart.json"
    assert _exit_code(coldstart_baselines.main, [*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not out.exists()


def test_coldstart_baselines_refuses_an_out_folder_and_an_empty_runs_folder(tmp_path, capsys):
    assert _exit_code(coldstart_baselines.main, ["--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path}: is a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _exit_code(coldstart_baselines.main, ["--runs", str(tmp_path / "empty"),
                                                 "--out", str(tmp_path / "c.json")]) == 2
    assert "no run records (*.jsonl) there" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()


@pytest.mark.parametrize("config, message", [
    ("experiments/configs/lfm2k/bpr.yaml", "model.name is 'bprmf'; expected gan"),
    ("/tmp/nope-jaxrec.yaml", "--config: "),
])
def test_missing_modality_refuses_a_config_it_cannot_run(tmp_path, capsys, config, message):
    out = tmp_path / "mm.json"
    assert missing_modality.main(["--config", str(ROOT / config), "--out", str(out),
                                  "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "runs").exists()


def test_missing_modality_refuses_an_out_folder(tmp_path, capsys):
    assert missing_modality.main(["--out", str(tmp_path), "--runs", str(tmp_path / "runs")]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_feature_probe_takes_a_dataset_name_and_names_its_output_after_it(tmp_path, capsys, monkeypatch):
    assert feature_probe.dataset_folder("tiktok") == feature_probe.DATA / "tiktok"
    assert feature_probe.dataset_folder(str(tmp_path)) == tmp_path
    assert feature_probe.main(["--dataset", "tiktk"]) == 2
    assert "--dataset tiktk: no dataset folder" in capsys.readouterr().err
    # A dataset folder of another name: the default output is named after it, never tiktok's file.
    folder = tmp_path / "lfm2k"
    folder.mkdir()
    written = []
    from jaxrec import data
    from jaxrec.errors import DataError

    def fail(path, *a, **k):
        written.append(path)
        raise DataError("not a dataset")

    monkeypatch.setattr(data, "load", fail)
    assert feature_probe.main(["--dataset", str(folder)]) == 2
    assert "not a dataset" in capsys.readouterr().err and written == [folder]
    monkeypatch.setattr(feature_probe, "write_json_atomic", lambda target, result: written.append(target))
    monkeypatch.setattr(data, "load", lambda path: _TinyData())
    assert feature_probe.main(["--dataset", str(folder)]) == 0
    assert written[-1] == feature_probe.HERE / "results" / "lfm2k_feature_probe.json"
    capsys.readouterr()


class _TinyData:
    """Enough of a dataset for feature_probe: 4 users, 30 items, one modality."""

    def __init__(self):
        import numpy as np

        rng = np.random.default_rng(0)
        self.n_items = 30
        self.modality_names = ["image"]
        self.modalities = {"image": type("M", (), {"features": rng.normal(size=(30, 4))})()}
        self._pairs = {"train": np.array([[u, i] for u in range(4) for i in range(u, u + 5)]),
                       "test": np.array([[u, 20 + u] for u in range(4)])}

    def split_pairs(self, split):
        return self._pairs[split]
