"""TFDS's own output ("Downloading and preparing dataset", progress bars) appears only when asked for."""

from jaxrec.cli.main import main
from jaxrec.data import load, make_synthetic, prepare_tfds, save_mmrec


def test_prepare_is_quiet_unless_verbose(tmp_path, capfd):
    from tensorflow_datasets.core.utils import tqdm_utils

    data = make_synthetic(30, 20, n_interactions=200, dims={"text": 4}, seed=1)
    before = tqdm_utils._active
    prepare_tfds(data, tmp_path / "quiet", name="tiny")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert tqdm_utils._active == before  # the user's own TFDS setting is left as it was
    prepare_tfds(data, tmp_path / "loud", name="tiny", verbose=True)
    out, err = capfd.readouterr()
    assert "Downloading and preparing dataset" in out and "downloaded and prepared" in out


def test_cli_prepare_prints_only_its_summary(tmp_path, capfd):
    folder = save_mmrec(make_synthetic(30, 20, n_interactions=200, seed=2), tmp_path / "raw")
    assert main(["data", "prepare", str(folder), "--name", "tiny", "--data-dir", str(tmp_path / "tfds")]) == 0
    out, err = capfd.readouterr()
    assert out.startswith("prepared ") and "Downloading" not in out and "Generating" not in err
    assert "Shuffling" not in err and "%|" not in err
    assert len(load(tmp_path / "tfds" / "tiny").interactions) == 200


def test_prepare_leaves_nothing_in_the_temporary_folder(tmp_path, monkeypatch):
    # TFDS makes a metadata folder per new builder and never removes it: prepare_tfds has it
    # made in its own scratch folder, so the system's temporary folder is as it was.
    import tempfile

    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    data = make_synthetic(30, 20, n_interactions=200, dims={"text": 4}, seed=1)
    root = prepare_tfds(data, tmp_path / "tfds", name="tiny")
    assert len(load(root).interactions) == 200
    assert sorted(p.name for p in system_tmp.iterdir()) == []
    assert tempfile.gettempdir() == str(system_tmp)  # the redirect is undone
