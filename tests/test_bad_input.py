"""Every malformed input ends in one DataError naming the file, the line or field, what was found and expected."""

import numpy as np
import pytest

from jaxrec.data import load, read_item_text, read_mmrec, read_movielens, read_recbole
from jaxrec.errors import DataError

HEADER = "userID\titemID\trating\tx_label"
GOOD = ["0\t0\t1\t0", "0\t1\t1\t1", "1\t2\t1\t2", "1\t0\t1\t0"]


def mmrec(tmp_path, lines=None, features=None, *, raw: bytes | None = None):
    """A folder 'toy' with toy.inter (header + lines, or raw bytes) and .npy files."""
    folder = tmp_path / "toy"
    folder.mkdir(exist_ok=True)
    if raw is None:
        raw = ("\n".join([HEADER, *(GOOD if lines is None else lines)]) + "\n").encode()
    (folder / "toy.inter").write_bytes(raw)
    for stem, array in (features or {}).items():
        np.save(folder / f"{stem}.npy", array, allow_pickle=True)
    return folder


def error_of(call, *args, **kwargs) -> DataError:
    with pytest.raises(DataError) as caught:
        call(*args, **kwargs)
    return caught.value


# ---- missing files and columns ------------------------------------------------------------------


def test_missing_folder_and_missing_inter_file(tmp_path):
    error = error_of(read_mmrec, tmp_path / "nowhere")
    assert error.path.endswith("nowhere") and "dataset folder not found" in str(error)
    error = error_of(read_mmrec, tmp_path)
    assert "cannot tell which interaction file" in str(error) and "no .inter file" in str(error)
    error = error_of(read_mmrec, tmp_path, name="ghost")
    assert error.path.endswith("ghost.inter") and "interaction file not found" in str(error)


def test_missing_feature_file_named_in_modalities(tmp_path):
    error = error_of(read_mmrec, mmrec(tmp_path), modalities={"image": "image_feat.npy"})
    assert error.path.endswith("image_feat.npy") and "feature file not found" in str(error)


def test_missing_column_names_the_header(tmp_path):
    folder = mmrec(tmp_path, raw=b"userID\titem\trating\n0\t0\t1\n")
    error = error_of(read_mmrec, folder)
    assert (error.line, error.field) == (1, "itemID")
    assert str(error) == (f"{folder / 'toy.inter'}:1, field 'itemID': missing column; found columns "
                          "['userID', 'item', 'rating']; expected a column named 'itemID'")


# ---- bad values in the interaction file -----------------------------------------------------------


@pytest.mark.parametrize("row, field, value, message, expected", [
    ("u7\t0\t1\t0", "userID", "'u7'", "not a valid number", "a non-negative integer id"),
    ("0\t1.5\t1\t0", "itemID", "'1.5'", "not a valid number", "a non-negative integer id"),
    ("0\t\t1\t0", "itemID", "an empty field", "not a valid number", "a non-negative integer id"),
    ("0\t-2\t1\t0", "itemID", "-2", "negative id", "a non-negative integer id"),
    ("-1\t0\t1\t0", "userID", "-1", "negative id", "a non-negative integer id"),
    ("0\t0\tfive\t0", "rating", "'five'", "not a valid number", "a number"),
    ("0\t0\tnan\t0", "rating", "nan", "not a finite number", "a finite number"),
    ("0\t0\t1\t3", "x_label", "3", "unknown split label", "0 (train), 1 (valid) or 2 (test)"),
])
def test_bad_value_names_line_field_found_and_expected(tmp_path, row, field, value, message, expected):
    folder = mmrec(tmp_path, [GOOD[0], GOOD[1], row, GOOD[2]])
    error = error_of(read_mmrec, folder)
    assert (error.path, error.line, error.field) == (str(folder / "toy.inter"), 4, field)
    assert str(error) == f"{folder / 'toy.inter'}:4, field '{field}': {message}; found {value}; expected {expected}"


def test_truncated_line_and_extra_fields_name_the_line(tmp_path):
    folder = mmrec(tmp_path, [GOOD[0], "0\t1", GOOD[2]])
    error = error_of(read_mmrec, folder)
    assert (error.line, error.field) == (3, "rating")
    assert "truncated line; found 2 field(s): '0\\t1'; expected 4 fields ['userID', 'itemID', 'rating', " \
           "'x_label'] separated by '\\t'" in str(error)
    folder = mmrec(tmp_path, [GOOD[0], GOOD[1], "1\t2\t1\t2\t9"])
    error = error_of(read_mmrec, folder)
    assert error.line == 4 and "too many fields on a line; found 5 field(s)" in str(error)


def test_line_numbers_count_blank_lines_and_crlf(tmp_path):
    folder = mmrec(tmp_path, raw=f"{HEADER}\r\n0\t0\t1\t0\r\n\r\n0\t1\t1\t1\r\n0\tx\t1\t2\r\n".encode())
    error = error_of(read_mmrec, folder)
    assert (error.line, error.field, error.found) == (5, "itemID", "'x'")


def test_non_utf8_bytes_name_line_and_column(tmp_path):
    folder = mmrec(tmp_path, raw=HEADER.encode() + b"\n0\t0\t1\t0\n0\t\xff1\t1\t0\n")
    error = error_of(read_mmrec, folder)
    assert error.line == 3
    assert str(error) == (f"{folder / 'toy.inter'}:3: bytes that are not valid utf-8; found b'\\xff' at column 3; "
                          "expected utf-8 text (if the file is in another encoding, e.g. Latin-1, pass the reader "
                          "option encoding='latin-1' (data.options.encoding in a config; --option encoding=latin-1 "
                          "for 'jaxrec data info' and 'jaxrec data prepare'))")


@pytest.mark.parametrize("raw, found", [(b"", "0 bytes"), (b"\n\n", "2 bytes")])
def test_empty_file(tmp_path, raw, found):
    folder = mmrec(tmp_path, raw=raw)
    assert str(error_of(read_mmrec, folder)) == (f"{folder / 'toy.inter'}: empty file; found {found}; "
                                                 "expected a header and data rows")


def test_header_without_rows(tmp_path):
    error = error_of(read_mmrec, mmrec(tmp_path, []))
    assert "no data rows; found only a header; expected at least one data row" in str(error)


def test_duplicate_interactions_rejected_on_request(tmp_path):
    folder = mmrec(tmp_path, [*GOOD, "0\t1\t1\t2"])
    error = error_of(read_mmrec, folder, duplicates="error")
    assert (error.line, error.field) == (6, "userID, itemID")
    assert "duplicate interaction; found (userID=0, itemID=1) on line 6 repeats line 3" in str(error)
    assert "unknown duplicates policy" in str(error_of(read_mmrec, folder, duplicates="drop"))


def test_a_split_with_no_rows_is_named(tmp_path):
    folder = mmrec(tmp_path, ["0\t0\t1\t0", "0\t1\t1\t2", "1\t2\t1\t0"])
    error = error_of(read_mmrec, folder)
    assert error.field == "x_label"
    assert "the valid split is empty; found no rows with x_label=1 (counts train/valid/test: [2, 0, 1])" in str(error)


# ---- bad feature files ---------------------------------------------------------------------------


def test_item_ids_beyond_the_feature_rows(tmp_path):
    folder = mmrec(tmp_path, [*GOOD, "1\t5\t1\t0"], {"text": np.ones((3, 2), np.float32)})
    error = error_of(read_mmrec, folder)
    assert (error.line, error.field) == (6, "itemID")
    assert "item id beyond the feature rows; found 5; expected ids below 3 (the row count of text.npy)" in str(error)


def test_feature_row_counts_that_disagree(tmp_path):
    folder = mmrec(tmp_path, features={"a": np.ones((3, 2), np.float32), "b": np.ones((4, 5), np.float32)})
    error = error_of(read_mmrec, folder)
    assert error.path.endswith("b.npy") and error.field == "shape"
    assert "feature row count does not match the other modalities; found 4 rows; expected 3 rows, one per item, " \
           "as in a.npy" in str(error)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_name_row_and_column(tmp_path, bad):
    features = np.ones((3, 4))
    features[1, 2] = bad
    error = error_of(read_mmrec, mmrec(tmp_path, features={"audio": features}))
    assert error.path.endswith("audio.npy") and error.field == "row 1 (item 1), column 2"
    assert f"features contain NaN or inf; found {bad}" in str(error)


@pytest.mark.parametrize("array, field, found", [
    (np.ones((3, 2), np.int64), "dtype", "int64"),
    (np.ones((3, 2), np.complex64), "dtype", "complex64"),
    (np.array([["a", "b"]] * 3), "dtype", "<U1"),
    (np.ones(3, np.float32), "shape", "(3,)"),
    (np.ones((3, 2, 2), np.float32), "shape", "(3, 2, 2)"),
])
def test_wrong_dtype_or_shape_of_a_feature_file(tmp_path, array, field, found):
    error = error_of(read_mmrec, mmrec(tmp_path, features={"f": array}))
    assert error.path.endswith("f.npy") and error.field == field and f"; found {found};" in str(error)


def test_pickled_and_truncated_npy_files(tmp_path):
    folder = mmrec(tmp_path, features={"obj": np.array([{"a": 1}, None], dtype=object)})
    error = error_of(read_mmrec, folder)
    assert error.path.endswith("obj.npy") and "cannot read the .npy feature file" in str(error)
    (folder / "obj.npy").unlink()
    np.save(folder / "cut.npy", np.ones((3, 8), np.float32))
    (folder / "cut.npy").write_bytes((folder / "cut.npy").read_bytes()[:100])
    error = error_of(read_mmrec, folder)
    assert error.path.endswith("cut.npy") and ".npy" in str(error)


# ---- original ids and the social file -------------------------------------------------------------


def test_og_ids_must_be_row_aligned_and_consistent(tmp_path):
    folder = mmrec(tmp_path)
    (folder / "toy_og_ids.inter").write_text(HEADER + "\n7\t70\t1\t0\n")
    assert "not row-aligned with the interaction file; found 1 rows; expected 4 rows" in str(error_of(read_mmrec, folder))
    (folder / "toy_og_ids.inter").write_text("\n".join([HEADER, "7\t70\t1\t0", "7\t71\t1\t1", "8\t72\t1\t2",
                                                        "7\t70\t1\t0"]) + "\n")
    error = error_of(read_mmrec, folder)
    assert (error.line, error.field) == (4, "userID")
    assert "one dense id maps to two original ids; found 8 for dense id 1, which another line maps to 7" in str(error)


def test_social_ids_outside_the_users_without_og_file(tmp_path):
    folder = mmrec(tmp_path)
    (folder / "user_friends.dat").write_text("userID\tfriendID\n0\t1\n1\t9\n")
    error = error_of(read_mmrec, folder)
    assert error.path.endswith("user_friends.dat") and (error.line, error.field) == (3, "friendID")
    assert "user id outside the dataset; found 9; expected dense user ids in [0, 2)" in str(error)


# ---- other readers ----------------------------------------------------------------------------------


def test_recbole_missing_and_empty_token_columns(tmp_path):
    folder = tmp_path / "rb"
    folder.mkdir()
    (folder / "rb.inter").write_text("user_id:token\titem:token\nu1\ti1\n")
    error = error_of(read_recbole, folder)
    assert (error.line, error.field) == (1, "item_id") and "expected a column 'item_id:token'" in str(error)
    (folder / "rb.inter").write_text("user_id:token\titem_id:token\nu1\ti1\n \ti2\n")
    error = error_of(read_recbole, folder)
    assert (error.line, error.field) == (3, "user_id") and "empty token" in str(error)


def test_movielens_genre_flag_and_csv_quoting(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.data").write_text("1\t1\t5\t10\n")
    (folder / "u.item").write_text("1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 18 + ["2"]) + "\n")
    error = error_of(read_movielens, folder)
    assert (error.line, error.field) == (1, "Western") and "genre flag is not 0 or 1; found 2" in str(error)
    latest = tmp_path / "ml-latest"
    latest.mkdir()
    (latest / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,5\n")
    (latest / "movies.csv").write_text('movieId,title,genres\n1,"Toy Story (1995),Comedy\n')
    error = error_of(read_movielens, latest)
    assert error.path.endswith("movies.csv") and "malformed CSV quoting" in str(error)


def test_text_table_in_latin1_read_as_utf8(tmp_path):
    (tmp_path / "t.tsv").write_bytes("id\ttext\n1\tok\n2\tcaf\xe9\n".encode("latin-1"))
    error = error_of(read_item_text, tmp_path / "t.tsv")
    assert error.line == 3 and "not valid utf-8; found b'\\xe9' at column 6" in str(error)
    assert read_item_text(tmp_path / "t.tsv", encoding="latin-1")["2"] == "caf\xe9"


def test_unknown_format_and_undetectable_folder(tmp_path):
    error = error_of(load, tmp_path, format="parquet")
    assert error.field == "format" and "unknown dataset format; found 'parquet'" in str(error)
    assert "cannot tell the dataset format" in str(error_of(load, tmp_path))


def test_line_numbers_stay_right_after_multibyte_characters(tmp_path):
    folder = tmp_path / "mb"
    folder.mkdir()
    (folder / "mb.inter").write_text("user_id:token\titem_id:token\nü\tß\n\n日本\t語\nü語\n", encoding="utf-8")
    error = error_of(read_recbole, folder)
    assert (error.line, error.field) == (5, "item_id:token")
    assert "truncated line; found 1 field(s): 'ü語'" in str(error)


def test_a_line_of_spaces_is_named_not_silently_skipped(tmp_path):
    error = error_of(read_mmrec, mmrec(tmp_path, [GOOD[0], "   ", GOOD[1]]))
    assert error.line == 3 and "a line of only whitespace; found 3 whitespace character(s): '   '" in str(error)
