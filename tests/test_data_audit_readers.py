"""User-level audit of the readers: ids spelt with leading zeros, a file given for the dataset
folder, and duplicate-interaction messages in the file's own ids."""

import warnings

import numpy as np
import pytest

from jaxrec.data import DataWarning, align_item_text, load, read_item_text, read_mmrec, read_recbole
from jaxrec.errors import DataError


def _mmrec_with_zero_padded_original_ids(folder):
    folder.mkdir()
    (folder / "og.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n1\t2\t2\n1\t0\t0\n")
    (folder / "og_og_ids.inter").write_text(
        "userID\titemID\tx_label\n0042\t007\t0\n0042\t7\t1\n5\t010\t2\n5\t007\t0\n")
    (folder / "user_friends.dat").write_text("userID\tfriendID\n0042\t5\n5\t0042\n")
    (folder / "text.tsv").write_text("id\ttext\n007\tbond\n7\tseven\n010\tten\n")
    return folder


def test_original_ids_with_leading_zeros_keep_their_spelling(tmp_path):
    folder = _mmrec_with_zero_padded_original_ids(tmp_path / "og")
    data = read_mmrec(folder)
    # By hand from the two row-aligned files: dense item 0 <-> "007", 1 <-> "7", 2 <-> "010".
    assert data.item_ids.tolist() == ["007", "7", "010"]
    assert data.user_ids.tolist() == ["0042", "5"]
    assert data.social_edges.tolist() == [[0, 1], [1, 0]]
    texts = align_item_text(data, read_item_text(folder / "text.tsv"))
    assert texts == ["bond", "seven", "ten"]


def test_plain_integer_original_ids_stay_integers(tmp_path):
    folder = tmp_path / "plain"
    folder.mkdir()
    (folder / "plain.inter").write_text("userID\titemID\n0\t0\n1\t1\n")
    (folder / "plain_og_ids.inter").write_text("userID\titemID\n10\t700\n30\t9\n")
    data = read_mmrec(folder)
    assert data.item_ids.dtype == np.int64 and data.item_ids.tolist() == [700, 9]
    assert data.user_ids.tolist() == [10, 30]


@pytest.mark.parametrize("fmt", ["auto", "mmrec", "recbole"])
def test_a_feature_file_given_as_the_dataset_is_refused_by_name(tmp_path, fmt):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "ds.inter").write_text("userID\titemID\n0\t0\n1\t1\n")
    np.save(folder / "v.npy", np.ones((2, 3), np.float32))
    with pytest.raises(DataError) as error:
        load(folder / "v.npy", format=fmt)
    message = str(error.value)
    assert "v.npy" in message and ".inter" in message and "utf-8" not in message
    assert "v.inter" not in message  # not a made-up file name


def test_inter_file_path_still_reads(tmp_path):
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "ds.inter").write_text("userID\titemID\n0\t0\n1\t1\n")
    assert load(folder / "ds.inter").n_users == 2


def test_duplicate_messages_show_the_ids_written_in_the_file(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("196\t242\t3\t1\n186\t302\t3\t2\n196\t242\t5\t3\n")
    with pytest.raises(DataError) as error:
        load(folder, duplicates="error")
    assert "user=196, item=242" in str(error.value) and ":3" in str(error.value)
    recbole = tmp_path / "rb"
    recbole.mkdir()
    (recbole / "rb.inter").write_text("user_id:token\titem_id:token\nu9\ti5\nu2\ti3\nu9\ti5\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = read_recbole(recbole)
    assert len(data.interactions) == 2
    (message,) = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert "user_id=u9, item_id=i5" in message and "line 4 repeats line 2" in message


def _mmrec_with_features(folder, features):
    folder.mkdir()
    (folder / f"{folder.name}.inter").write_text("userID\titemID\n0\t0\n1\t1\n")
    np.save(folder / "v.npy", features)
    return folder


def test_float64_features_beyond_float32_are_refused_naming_the_cell(tmp_path):
    features = np.ones((2, 3))
    features[1, 2] = -1e300
    folder = _mmrec_with_features(tmp_path / "big", features)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no overflow warning on the way
        with pytest.raises(DataError) as error:
            read_mmrec(folder)
    message = str(error.value)
    assert "v.npy" in message and "row 1" in message and "column 2" in message and "-1e+300" in message


def test_missing_rows_are_the_zero_rows_of_the_file(tmp_path):
    features = np.zeros((3, 2))
    features[0] = 1.0
    features[1, 1] = 1e-50  # not zero in the file, zero once cast to float32
    data = read_mmrec(_mmrec_with_features(tmp_path / "tiny", features))
    assert data.modalities["v"].mask.tolist() == [True, True, False]
    np.testing.assert_array_equal(data.modalities["v"].features, features.astype(np.float32))


def test_a_feature_matrix_without_columns_is_refused(tmp_path):
    folder = _mmrec_with_features(tmp_path / "empty", np.zeros((2, 0), np.float32))
    with pytest.raises(DataError, match="no columns") as error:
        read_mmrec(folder)
    assert "v.npy" in str(error.value) and "(2, 0)" in str(error.value)


def test_save_mmrec_round_trips_zero_padded_tokens(tmp_path):
    from jaxrec.data import save_mmrec

    folder = tmp_path / "tok"
    folder.mkdir()
    (folder / "tok.inter").write_text("user_id:token\titem_id:token\n01\t007\n01\t7\n2\t007\n")
    data = read_recbole(folder)
    back = read_mmrec(save_mmrec(data, tmp_path / "saved"))
    assert back.item_ids.tolist() == ["007", "7"] and back.user_ids.tolist() == ["01", "2"]
    assert back.item_ids[back.interactions.items].tolist() == ["007", "7", "007"]


def test_save_mmrec_refuses_a_split_it_could_not_read_back(tmp_path):
    import dataclasses

    from jaxrec.data import make_synthetic, save_mmrec

    data = make_synthetic(20, 15, n_interactions=200, dims={"a": 3})
    split = data.interactions.split.copy()
    split[split == 1] = 0  # train and test only
    no_valid = data.replace(interactions=dataclasses.replace(data.interactions, split=split))
    with pytest.raises(DataError, match="every split") as error:
        save_mmrec(no_valid, tmp_path / "out")
    assert "[" in str(error.value) and not (tmp_path / "out").exists()
    assert not list(tmp_path.iterdir())  # nothing half-written
    unsplit = data.replace(interactions=dataclasses.replace(data.interactions, split=np.zeros_like(split)))
    assert read_mmrec(save_mmrec(unsplit, tmp_path / "unsplit")).metadata["needs_split"]
