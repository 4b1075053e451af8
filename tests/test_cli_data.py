"""``jaxrec data info``: JSON and table output, reader options, and clean errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from jaxrec.cli.main import main


@pytest.fixture
def toy(tmp_path):
    """3 users x 4 items, 6 interactions (4 / 1 / 1), a 5-dim modality with one missing row, 2 friend edges."""
    folder = tmp_path / "toy"
    folder.mkdir()
    (folder / "toy.inter").write_text("userID\titemID\trating\tx_label\n0\t0\t1\t0\n0\t1\t1\t0\n1\t2\t1\t0\n"
                                      "2\t3\t1\t0\n1\t0\t1\t1\n2\t1\t1\t2\n")
    features = np.ones((4, 5), np.float32)
    features[2] = 0
    np.save(folder / "image.npy", features)
    (folder / "user_friends.dat").write_text("userID\tfriendID\n0\t1\n1\t0\n")
    return folder


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_info_json_has_counts_splits_and_modalities(toy, capsys):
    code, out, _ = run(["data", "info", str(toy), "--json"], capsys)
    assert code == 0
    summary = json.loads(out)
    assert (summary["n_users"], summary["n_items"], summary["n_interactions"]) == (3, 4, 6)
    assert summary["splits"] == {"train": 4, "valid": 1, "test": 1}
    assert summary["density"] == pytest.approx(6 / 12)
    assert summary["modalities"] == {"image": 5}
    assert summary["modality_details"]["image"]["missing_rows"] == 1
    assert summary["social_edges"] == 2 and summary["kg"] is None
    assert summary["metadata"]["format"] == "mmrec"


def test_info_table_for_people(toy, capsys):
    code, out, _ = run(["data", "info", str(toy)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("dataset        toy  (mmrec: ")
    assert lines[1] == f"read from      {toy}  (mmrec)"
    assert "interactions   6  (train 4 / valid 1 / test 1)" in lines
    assert "density        50.0000%" in lines
    assert any(line.split()[:3] == ["image", "5", "1"] for line in lines)
    assert "social edges    2" in lines and "knowledge graph none" in lines


def test_reader_options_and_format_flag(toy, capsys):
    _, out, _ = run(["data", "info", str(toy), "--json", "--format", "mmrec", "--option", "social=null",
                     "--option", "zero_rows_missing=false"], capsys)
    summary = json.loads(out)
    assert summary["social_edges"] is None
    assert summary["modality_details"]["image"]["missing_rows"] == 0


def test_kg_sizes_and_needed_split_are_shown_for_recbole(tmp_path, capsys):
    folder = tmp_path / "rb"
    folder.mkdir()
    (folder / "rb.inter").write_text("user_id:token\titem_id:token\nu\ta\nu\tb\nv\ta\n")
    (folder / "rb.kg").write_text("head_id:token\trelation_id:token\ttail_id:token\nea\tr\tx\neb\tr\tx\neb\ts\ty\n")
    (folder / "rb.link").write_text("item_id:token\tentity_id:token\na\tea\nb\teb\n")
    code, out, _ = run(["data", "info", str(folder)], capsys)
    assert code == 0
    assert "knowledge graph 3 triples, 4 entities, 2 relations" in out
    assert "every interaction is train" in out


def test_bad_input_is_one_clean_error_line(toy, capsys):
    (toy / "toy.inter").write_text("userID\titemID\trating\tx_label\n0\t0\t1\t0\n0\tbad\t1\t1\n")
    code, out, err = run(["data", "info", str(toy)], capsys)
    assert code == 1 and out == ""
    assert err.startswith("jaxrec: error: ") and f"{toy / 'toy.inter'}:3, field 'itemID': not a valid number" in err
    assert "Traceback" not in err
    code, _, err = run(["data", "info", str(toy), "--option", "nonsense"], capsys)
    assert code == 1 and "--option expects KEY=VALUE" in err


def test_prepare_into_a_file_is_a_clean_error_and_writes_nothing(toy, tmp_path, capsys):
    not_a_folder = tmp_path / "README.md"
    not_a_folder.write_text("a file\n")
    before = sorted(tmp_path.rglob("*"))
    cases = [
        (not_a_folder, f"--data-dir {not_a_folder}: exists and is not a folder"),
        (not_a_folder / "sub", f"--data-dir {not_a_folder / 'sub'}: cannot create a folder there, "
                               f"{not_a_folder} is a file, not a folder"),
    ]
    for data_dir, expected in cases:
        code, out, err = run(["data", "prepare", str(toy), "--name", "toy", "--data-dir", str(data_dir)], capsys)
        assert code == 1 and out == "" and "Traceback" not in err
        assert err.startswith("jaxrec: error: ") and expected in err
    assert sorted(tmp_path.rglob("*")) == before  # nothing created
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "toy").write_text("a file where the dataset's folder goes\n")
    before = sorted(tmp_path.rglob("*"))
    code, _, err = run(["data", "prepare", str(toy), "--name", "toy", "--data-dir", str(tmp_path / "data")], capsys)
    assert code == 1 and f"{tmp_path / 'data' / 'toy'} exists and is not a folder" in err
    assert sorted(tmp_path.rglob("*")) == before
    assert not_a_folder.read_text() == "a file\n"


def test_data_without_a_command_prints_help(capsys):
    code, out, _ = run(["data"], capsys)
    assert code == 2 and "info" in out


@pytest.mark.shared_data
def test_lfm2k_through_the_installed_command(lfm2k_path):
    done = subprocess.run([sys.executable, "-m", "jaxrec.cli.main", "data", "info", str(lfm2k_path), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["n_users"], summary["n_items"], summary["n_interactions"]) == (1858, 1425, 56345)
    assert summary["splits"] == {"train": 44327, "valid": 4799, "test": 7219}
    assert summary["modalities"] == {"all-MiniLM-L6-v2": 384, "vggish": 128, "whisper": 512}


def test_prepare_takes_the_reader_options_its_hints_name(tmp_path, capsys):
    # A Latin-1 dataset could not be prepared: the reader's hint names --option encoding=latin-1,
    # which only 'data info' took.
    folder = tmp_path / "lat"
    folder.mkdir()
    (folder / "lat.inter").write_bytes(b"user_id:token\titem_id:token\n\xe9\t1\nb\t2\nc\t1\nb\t1\n")
    data_dir = tmp_path / "data"
    code, _, err = run(["data", "prepare", str(folder), "--name", "lat", "--data-dir", str(data_dir)], capsys)
    assert code == 1 and "--option encoding=latin-1 for 'jaxrec data info' and 'jaxrec data prepare'" in err
    code, _, err = run(["data", "prepare", str(folder), "--name", "lat", "--data-dir", str(data_dir),
                        "--option", "encoding=latin-1"], capsys)
    assert code == 0, err
    from jaxrec.data import load_prepared

    prepared = load_prepared(data_dir, "lat")
    assert list(prepared.user_ids) == ["\xe9", "b", "c"] and len(prepared.interactions.users) == 4
