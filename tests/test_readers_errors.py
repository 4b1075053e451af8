"""Readers' messages for files that cannot be reached or read: each names the real cause.

Unreadable files, symbolic-link loops, lines of only whitespace, another text encoding, a
prepared TFDS folder read as raw files, and valid/test users or items that train never shows.
"""

import builtins
import io
import os
import pathlib
import warnings

import numpy as np
import pytest

from jaxrec.cli.main import main
from jaxrec.data import load, make_synthetic, read_mmrec, read_movielens, read_recbole
from jaxrec.data import DataWarning
from jaxrec.errors import DataError

HEADER = "userID\titemID\trating\tx_label"
GOOD = ["0\t0\t1\t0", "0\t1\t1\t1", "1\t2\t1\t2", "1\t0\t1\t0", "2\t1\t1\t0", "2\t2\t1\t0"]


def mmrec(tmp_path, lines=GOOD, *, header=HEADER, features=None, name="toy") -> pathlib.Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.inter").write_text("\n".join([header, *lines]) + "\n")
    for stem, array in (features or {}).items():
        np.save(folder / f"{stem}.npy", array)
    return folder


def error_of(call, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as caught:
        call(*args, **kwargs)
    return caught.value


def deny(monkeypatch, denied: pathlib.Path):
    """Opening ``denied`` raises PermissionError, as for a file without read permission.

    (The tests run as root in some containers, where chmod 000 does not stop a read.)"""
    real_open, real_io_open, real_read_bytes = builtins.open, io.open, pathlib.Path.read_bytes

    def check(file):
        if isinstance(file, (str, os.PathLike)) and os.path.abspath(os.fspath(file)) == str(denied):
            raise PermissionError(13, "Permission denied", os.fspath(file))

    def fake_open(file, *args, **kwargs):
        check(file)
        return real_open(file, *args, **kwargs)

    def fake_io_open(file, *args, **kwargs):
        check(file)
        return real_io_open(file, *args, **kwargs)

    def fake_read_bytes(self):
        check(self)
        return real_read_bytes(self)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_io_open)
    monkeypatch.setattr(pathlib.Path, "read_bytes", fake_read_bytes)


# ---- unreadable files --------------------------------------------------------------------------


def test_an_unreadable_inter_file_is_a_permission_error_naming_it(tmp_path, monkeypatch):
    folder = mmrec(tmp_path)
    deny(monkeypatch, (folder / "toy.inter").resolve())
    error = error_of(read_mmrec, folder)
    assert error.path.endswith("toy.inter") and "cannot read the file: permission denied" in str(error)
    assert error_of(load, folder).path.endswith("toy.inter")  # format detection reads the header too


def test_an_unreadable_npy_file_is_not_called_corrupt(tmp_path, monkeypatch):
    folder = mmrec(tmp_path, features={"image": np.ones((3, 2), np.float32)})
    deny(monkeypatch, (folder / "image.npy").resolve())
    error = error_of(read_mmrec, folder)
    assert error.path.endswith("image.npy") and "cannot read the feature file: permission denied" in str(error)
    assert "corrupt" not in str(error)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_real_file_permissions(tmp_path):
    folder = mmrec(tmp_path, features={"image": np.ones((3, 2), np.float32)})
    (folder / "image.npy").chmod(0)
    assert "permission denied" in str(error_of(read_mmrec, folder))
    (folder / "image.npy").chmod(0o644)
    (folder / "toy.inter").chmod(0)
    assert "permission denied" in str(error_of(read_mmrec, folder))


# ---- links -------------------------------------------------------------------------------------


def test_a_symbolic_link_loop_is_not_called_missing(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.inter").symlink_to(folder / "toy.inter")
    for call in (lambda: read_mmrec(folder), lambda: read_mmrec(folder, name="toy"), lambda: load(folder)):
        error = error_of(call)
        assert "symbolic link loop" in str(error) and "not found" not in str(error)
        assert error.path.endswith("toy.inter")
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    for call in (read_mmrec, read_recbole, read_movielens, load):
        error = error_of(call, tmp_path / "a")
        assert "dataset folder: symbolic link loop" in str(error), call


def test_a_dangling_link_names_its_target(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.inter").symlink_to(tmp_path / "moved" / "toy.inter")
    error = error_of(read_mmrec, folder, name="toy")
    assert "symbolic link to a missing target" in str(error) and "moved" in str(error)


# ---- whitespace, encodings ---------------------------------------------------------------------


@pytest.mark.parametrize("blank", ["   ", "\t\t\t", " \t "])
def test_a_line_of_only_whitespace_says_so(tmp_path, blank):
    error = error_of(read_mmrec, mmrec(tmp_path, [GOOD[0], blank, *GOOD[1:]]))
    assert error.line == 3 and "a line of only whitespace" in str(error)
    assert "truncated" not in str(error) and "not a valid number" not in str(error)


def test_a_whitespace_line_with_the_right_tabs_in_token_and_text_tables(tmp_path):
    recbole = tmp_path / "rb"
    recbole.mkdir()
    (recbole / "rb.inter").write_text("user_id:token\titem_id:token\na\tb\n \t \nc\td\n")
    error = error_of(read_recbole, recbole)
    assert error.line == 3 and "a line of only whitespace" in str(error) and "empty token" not in str(error)
    from jaxrec.data import read_item_text

    (tmp_path / "t.tsv").write_text("id\ttext\n1\tjazz\n\t\n")
    error = error_of(read_item_text, tmp_path / "t.tsv")
    assert error.line == 3 and "a line of only whitespace" in str(error)


def test_empty_lines_are_still_skipped(tmp_path):
    assert len(read_mmrec(mmrec(tmp_path, [GOOD[0], "", *GOOD[1:]])).interactions) == len(GOOD)


def test_the_encoding_hint_names_an_option_the_readers_take(tmp_path, capsys):
    folder = mmrec(tmp_path, header=HEADER + "\tcaf\xe9")
    (folder / "toy.inter").write_bytes(("\n".join([HEADER + "\tcaf\xe9", *(g + "\t0" for g in GOOD)]) + "\n")
                                       .encode("latin-1"))
    error = error_of(read_mmrec, folder)
    assert error.line == 1 and "encoding='latin-1'" in str(error) and "data.options.encoding" in str(error)
    assert len(read_mmrec(folder, encoding="latin-1").interactions) == len(GOOD)
    assert len(load(folder, encoding="latin-1").interactions) == len(GOOD)
    assert main(["data", "info", str(folder), "--option", "encoding=latin-1"]) == 0  # as the hint says
    assert "interactions   6" in capsys.readouterr().out

    recbole = tmp_path / "rb"
    recbole.mkdir()
    (recbole / "rb.inter").write_bytes("user_id:token\titem_id:token\nj\xfcrgen\tcaf\xe9\n".encode("latin-1"))
    assert "encoding='latin-1'" in str(error_of(read_recbole, recbole))
    assert read_recbole(recbole, encoding="latin-1").item_ids.tolist() == ["caf\xe9"]

    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,10\n")
    (ml / "movies.csv").write_bytes("movieId,title,genres\n1,Caf\xe9 (1999),Drama\n".encode("latin-1"))
    assert "encoding='latin-1'" in str(error_of(read_movielens, ml))
    assert read_movielens(ml, encoding="latin-1").metadata["item_titles"].tolist() == ["Caf\xe9 (1999)"]


# ---- a prepared TFDS folder read as raw files --------------------------------------------------


def fake_prepared(data_dir: pathlib.Path, name="tiny") -> pathlib.Path:
    """The marker ``jaxrec data prepare`` commits a dataset with (the tables are not needed here)."""
    version = data_dir / name / "interactions" / "1.0.0"
    version.mkdir(parents=True)
    (version / "dataset_info.json").write_text("{}")
    return data_dir / name


def test_a_prepared_tfds_folder_read_as_mmrec_points_at_format_tfds(tmp_path):
    root = fake_prepared(tmp_path / "tfds")
    for call in (lambda: read_mmrec(root), lambda: read_recbole(root), lambda: load(root, format="mmrec"),
                 lambda: load(tmp_path / "tfds"), lambda: load(root / "interactions" / "1.0.0")):
        message = str(error_of(call))
        assert "prepared by 'jaxrec data prepare'" in message and "data.format: tfds" in message
        assert repr(os.fspath(root)) in message and "pass name=" not in message


def test_training_from_a_prepared_folder_without_format_tfds(tmp_path, capsys):
    root = fake_prepared(tmp_path / "tfds")
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{name: bprmf}}\ndata: {{path: {root}, format: mmrec}}\ntrain: {{epochs: 1}}\n")
    assert main(["train", str(config), "--workdir", str(tmp_path / "run"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "data.format: tfds" in err and "Traceback" not in err and "pass name=" not in err


def test_the_duplicates_hint_is_worded_for_configs_too(tmp_path):
    message = str(error_of(read_mmrec, mmrec(tmp_path, [*GOOD, GOOD[0]]), duplicates="error"))
    assert "data.options.duplicates" in message and "pass duplicates=" not in message


def test_the_interaction_file_choice_is_worded_for_configs_too(tmp_path):
    folder = mmrec(tmp_path)
    (folder / "other.inter").write_text((folder / "toy.inter").read_text())
    (folder / "toy.inter").rename(folder / "third.inter")
    message = str(error_of(read_mmrec, folder))
    assert "data.options.name" in message and "pass name=" not in message


# ---- valid / test users and items that train never shows ---------------------------------------


def test_users_and_items_unseen_in_train_are_reported(tmp_path, capsys):
    # User 3 is only in test; item 3 only in valid.
    folder = mmrec(tmp_path, [*GOOD, "3\t1\t1\t2", "0\t3\t1\t1"])
    assert main(["data", "info", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "warning: 1 item(s) (e.g. 3) of the valid split have no train interaction" in out
    assert "warning: 1 user(s) (e.g. 3) of the test split have no train interaction" in out
    assert main(["data", "info", str(folder), "--json"]) == 0
    assert '"users": 1' in capsys.readouterr().out

    from jaxrec.train._config import DataConfig
    from jaxrec.train._data import load_dataset

    with pytest.warns(DataWarning) as caught:  # both, so neither leaks into the run's warning summary
        load_dataset(DataConfig(path=str(folder)))
    messages = [str(w.message) for w in caught]
    assert any("1 user(s) (e.g. 3) of the test split" in m for m in messages), messages
    assert any("1 item(s) (e.g. 3) of the valid split" in m for m in messages), messages


def test_a_clean_split_and_a_cold_start_split_do_not_warn(tmp_path, capsys):
    assert main(["data", "info", str(mmrec(tmp_path))]) == 0
    assert "warning" not in capsys.readouterr().out
    from jaxrec.data import split_dataset
    from jaxrec.data._split_coverage import unseen_messages

    cold = split_dataset(make_synthetic(40, 30, n_interactions=600), "cold_start_items", holdout=0.2)
    assert not any("item(s)" in message for message in unseen_messages(cold))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        from jaxrec.train._config import DataConfig
        from jaxrec.train._data import load_dataset

        load_dataset(DataConfig(path=str(mmrec(tmp_path, name="clean"))))


@pytest.mark.parametrize("header, blamed", [("user_id:token\titem_id:token\trating:flot", "rating:flot"),
                                            ("user_id:token\titem_id\trating:float", "item_id")])
def test_a_misspelt_recbole_type_is_named_not_read_as_mmrec(tmp_path, header, blamed):
    # A RecBole file with one misspelt or missing type was detected as MMRec's layout, whose
    # reader then asked for a 'userID' column the user never meant to have.
    folder = tmp_path / "typo"
    folder.mkdir()
    (folder / "typo.inter").write_text(header + "\n1\t2\t3\n")
    with pytest.raises(DataError, match=f"field '{blamed}': malformed RecBole header field"):
        load(folder)
    # MMRec's plain header is still MMRec's.
    assert mmrec(tmp_path).name == "toy" and load(tmp_path / "toy").metadata["format"] == "mmrec"
