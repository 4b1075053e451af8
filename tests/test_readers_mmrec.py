"""MMRec reader and writer: the real lfm2k folder, tiny hand-made folders, and save/load round trips."""

import warnings

import numpy as np
import pytest

from jaxrec.data import DataWarning, Interactions, Modality, MultimodalDataset, load, read_mmrec, save_mmrec
from jaxrec.errors import DataError


def write_folder(folder, inter_lines, features=None, *, name=None, extra=None):
    """An MMRec folder: ``<name>.inter`` from lines, ``.npy`` files from arrays, other text files."""
    folder.mkdir(parents=True, exist_ok=True)
    name = name or folder.name
    (folder / f"{name}.inter").write_text("\n".join(inter_lines) + "\n")
    for stem, array in (features or {}).items():
        np.save(folder / f"{stem}.npy", array)
    for file_name, lines in (extra or {}).items():
        (folder / file_name).write_text("\n".join(lines) + "\n")
    return folder


# ---- the real data ----------------------------------------------------------------------------


@pytest.mark.shared_data
def test_lfm2k_counts_splits_and_modalities(lfm2k_path):
    dataset = read_mmrec(lfm2k_path)
    assert (dataset.name, dataset.n_users, dataset.n_items) == ("lfm2k", 1858, 1425)
    assert dataset.split_sizes() == {"train": 44327, "valid": 4799, "test": 7219}
    assert {name: m.dim for name, m in dataset.modalities.items()} == {
        "all-MiniLM-L6-v2": 384, "vggish": 128, "whisper": 512}
    vggish = dataset.modalities["vggish"]
    assert vggish.features.dtype == np.float32
    assert vggish.provenance["original_dtype"] == "float64"
    assert vggish.provenance["encoder"] == "vggish"
    assert vggish.provenance["source"].endswith("vggish.npy")
    raw = np.load(lfm2k_path / "vggish.npy")
    np.testing.assert_array_equal(vggish.features, raw.astype(np.float32))
    assert all(m.mask.all() for m in dataset.modalities.values())


@pytest.mark.shared_data
def test_lfm2k_interactions_match_a_plain_python_parse(lfm2k_path):
    dataset = read_mmrec(lfm2k_path, social=None)
    lines = (lfm2k_path / "lfm2k.inter").read_text().splitlines()[1:]
    rows = np.array([[int(x) for x in line.split("\t")] for line in lines])
    np.testing.assert_array_equal(dataset.interactions.users, rows[:, 0])
    np.testing.assert_array_equal(dataset.interactions.items, rows[:, 1])
    np.testing.assert_array_equal(dataset.interactions.ratings, rows[:, 2].astype(np.float32))
    np.testing.assert_array_equal(dataset.interactions.split, rows[:, 3])
    assert dataset.social_edges is None


@pytest.mark.shared_data
def test_lfm2k_original_ids_and_social_join_match_a_naive_join(lfm2k_path):
    dataset = read_mmrec(lfm2k_path)
    dense = [line.split("\t") for line in (lfm2k_path / "lfm2k.inter").read_text().splitlines()[1:]]
    original = [line.split("\t") for line in (lfm2k_path / "lfm2k_og_ids.inter").read_text().splitlines()[1:]]
    user_of = {int(o[0]): int(d[0]) for d, o in zip(dense, original)}
    item_of = {int(o[1]): int(d[1]) for d, o in zip(dense, original)}
    assert {int(og): u for u, og in enumerate(dataset.user_ids)} == user_of
    assert {int(og): i for i, og in enumerate(dataset.item_ids)} == item_of
    friends = [line.split("\t") for line in (lfm2k_path / "user_friends.dat").read_text().splitlines()[1:]]
    expected = [(user_of[int(a)], user_of[int(b)]) for a, b in friends if int(a) in user_of and int(b) in user_of]
    np.testing.assert_array_equal(dataset.social_edges, np.array(expected))
    assert dataset.metadata["social_dropped_edges"] == len(friends) - len(expected) > 0


@pytest.mark.shared_data
def test_lfm2k_round_trip_gives_identical_arrays(lfm2k_path, tmp_path):
    first = read_mmrec(lfm2k_path)
    save_mmrec(first, tmp_path / "copy")
    second = read_mmrec(tmp_path / "copy", name="lfm2k")
    _assert_same_arrays(first, second)
    assert sorted(p.name for p in (tmp_path / "copy").iterdir()) == [
        "all-MiniLM-L6-v2.npy", "lfm2k.inter", "lfm2k_og_ids.inter", "user_friends.dat", "vggish.npy", "whisper.npy"]


def _assert_same_arrays(first: MultimodalDataset, second: MultimodalDataset):
    assert (first.n_users, first.n_items) == (second.n_users, second.n_items)
    for field in ("users", "items", "split", "ratings", "timestamps"):
        a, b = getattr(first.interactions, field), getattr(second.interactions, field)
        assert (a is None) == (b is None), field
        if a is not None:
            assert a.dtype == b.dtype, field
            np.testing.assert_array_equal(a, b, err_msg=field)
    assert list(first.modalities) == list(second.modalities)
    for name in first.modalities:
        np.testing.assert_array_equal(first.modalities[name].features, second.modalities[name].features)
        np.testing.assert_array_equal(first.modalities[name].mask, second.modalities[name].mask)
    for field in ("social_edges", "user_ids", "item_ids"):
        a, b = getattr(first, field), getattr(second, field)
        assert (a is None) == (b is None), field
        if a is not None:
            np.testing.assert_array_equal(a, b, err_msg=field)


# ---- small hand-made folders -------------------------------------------------------------------


def test_tiny_folder_with_timestamps_and_modality_mapping(tmp_path):
    image = np.arange(12, dtype=np.float64).reshape(3, 4) + 1
    folder = write_folder(tmp_path / "toy", [
        "userID\titemID\trating\ttimestamp\tx_label",
        "0\t2\t4.5\t1000\t0", "1\t0\t3\t1001\t0", "1\t1\t1\t1002\t1", "0\t0\t2\t1003\t2",
    ], {"img_feat": image})
    dataset = read_mmrec(folder, modalities={"image": "img_feat.npy"})
    assert (dataset.n_users, dataset.n_items) == (2, 3)
    np.testing.assert_array_equal(dataset.interactions.pairs(), [[0, 2], [1, 0], [1, 1], [0, 0]])
    np.testing.assert_array_equal(dataset.interactions.ratings, np.float32([4.5, 3, 1, 2]))
    assert dataset.interactions.timestamps.dtype == np.int64
    np.testing.assert_array_equal(dataset.interactions.timestamps, [1000, 1001, 1002, 1003])
    assert dataset.split_sizes() == {"train": 2, "valid": 1, "test": 1}
    assert list(dataset.modalities) == ["image"]
    np.testing.assert_array_equal(dataset.modalities["image"].features, image.astype(np.float32))
    assert dataset.modalities["image"].provenance["encoder"] == "img_feat"
    assert dataset.user_ids is None and dataset.item_ids is None


def test_all_zero_feature_rows_are_missing_unless_told_otherwise(tmp_path):
    features = np.array([[1.0, 2.0], [0.0, 0.0], [0.5, 0.0]], dtype=np.float32)
    folder = write_folder(tmp_path / "z", ["userID\titemID\tx_label", "0\t0\t0", "0\t1\t1", "0\t2\t2"],
                          {"text": features})
    np.testing.assert_array_equal(read_mmrec(folder).modalities["text"].mask, [True, False, True])
    assert read_mmrec(folder, zero_rows_missing=False).modalities["text"].mask.all()
    assert read_mmrec(folder).summary()["modality_details"]["text"]["missing_rows"] == 1


def test_without_split_column_everything_is_train_and_a_split_is_needed(tmp_path):
    folder = write_folder(tmp_path / "nosplit", ["userID\titemID", "0\t1", "2\t0"])
    dataset = read_mmrec(folder)
    assert dataset.split_sizes() == {"train": 2, "valid": 0, "test": 0}
    assert dataset.metadata["needs_split"] is True and dataset.metadata["split_method"] == "none"
    assert (dataset.n_users, dataset.n_items) == (3, 2)  # ids are dense: max + 1


def test_more_feature_rows_than_interacted_items_keeps_all_rows(tmp_path):
    folder = write_folder(tmp_path / "cold", ["userID\titemID\tx_label", "0\t0\t0", "1\t1\t1", "1\t0\t2"],
                          {"v": np.ones((4, 2), np.float32)})
    assert read_mmrec(folder).n_items == 4


def test_duplicates_keep_the_first_with_a_warning(tmp_path):
    folder = write_folder(tmp_path / "dup", ["userID\titemID\trating\tx_label", "0\t0\t5\t0", "0\t1\t4\t0",
                                             "0\t0\t1\t2", "1\t0\t3\t1", "1\t1\t2\t2"])
    with pytest.warns(DataWarning, match=r"dup\.inter: dropped 1 duplicate .*line 4 repeats line 2"):
        dataset = read_mmrec(folder)
    np.testing.assert_array_equal(dataset.interactions.pairs(), [[0, 0], [0, 1], [1, 0], [1, 1]])
    np.testing.assert_array_equal(dataset.interactions.ratings, [5, 4, 3, 2])  # the first (0, 0) row kept
    assert dataset.metadata["duplicates_dropped"] == 1


def test_social_file_in_dense_ids_without_an_og_file(tmp_path):
    folder = write_folder(tmp_path / "soc", ["userID\titemID\tx_label", "0\t0\t0", "1\t0\t1", "2\t0\t2"],
                          extra={"user_friends.dat": ["userID\tfriendID", "0\t2", "2\t0", "1\t2"]})
    dataset = read_mmrec(folder)
    np.testing.assert_array_equal(dataset.social_edges, [[0, 2], [2, 0], [1, 2]])
    assert dataset.metadata["social_ids"] == "dense"
    assert read_mmrec(folder, social=None).social_edges is None


def test_explicit_social_path_and_original_ids(tmp_path):
    folder = write_folder(tmp_path / "og", ["userID\titemID\tx_label", "0\t0\t0", "1\t1\t1", "0\t1\t2"],
                          extra={"og_og_ids.inter": ["userID\titemID\tx_label", "10\t7\t0", "30\t9\t1", "10\t9\t2"],
                                 "friends.tsv": ["a\tb", "30\t10", "10\t99", "10\t30"]})
    dataset = read_mmrec(folder, social="friends.tsv")
    np.testing.assert_array_equal(dataset.user_ids, [10, 30])
    np.testing.assert_array_equal(dataset.item_ids, [7, 9])
    np.testing.assert_array_equal(dataset.social_edges, [[1, 0], [0, 1]])  # (10, 99): 99 is not a user
    assert dataset.metadata["social_dropped_edges"] == 1


def test_save_is_atomic_and_refuses_to_overwrite_by_default(tmp_path):
    dataset = read_mmrec(write_folder(tmp_path / "src", ["userID\titemID\tx_label", "0\t0\t0", "1\t0\t1", "1\t1\t2"],
                                      {"t": np.eye(2, dtype=np.float32)}))
    target = save_mmrec(dataset, tmp_path / "out")
    with pytest.raises(DataError, match="target folder exists"):
        save_mmrec(dataset, target)
    (target / "stale.npy").write_bytes(b"old")
    save_mmrec(dataset, target, overwrite=True)
    assert sorted(p.name for p in target.iterdir()) == ["src.inter", "t.npy"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folders left


def test_round_trip_of_a_constructed_dataset_with_float_times_and_masks(tmp_path):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, 3)).astype(np.float32)
    mask = np.array([True, False, True, True, False])
    features[~mask] = 0
    dataset = MultimodalDataset(
        name="made", n_users=3, n_items=5,
        interactions=Interactions(users=np.array([0, 1, 2, 2, 0]), items=np.array([4, 3, 2, 1, 0]),
                                  split=np.array([0, 0, 1, 2, 0]),
                                  ratings=rng.random(5).astype(np.float32), timestamps=rng.random(5) * 1e9),
        modalities={"text": Modality("text", features, mask)},
        user_ids=np.array(["u7", "u8", "u9"]), item_ids=np.array(["a", "b", "c", "d", "e"]),
        social_edges=np.array([[0, 1], [2, 0]]))
    save_mmrec(dataset, tmp_path / "made")
    again = read_mmrec(tmp_path / "made")
    _assert_same_arrays(dataset, again)
    assert again.user_ids.dtype.kind == "U"


def test_save_warns_about_what_the_layout_cannot_hold(tmp_path):
    dataset = MultimodalDataset(
        name="kg", n_users=1, n_items=2,
        interactions=Interactions(np.array([0, 0, 0]), np.array([0, 1, 1]), np.array([0, 1, 2])),
        kg_triples=np.array([[0, 0, 0]]), n_entities=1, n_relations=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_mmrec(dataset, tmp_path / "kg")
    assert any("kg_triples are not written" in str(w.message) for w in caught)


def test_load_dispatches_mmrec_and_rejects_unknown_options(tmp_path):
    folder = write_folder(tmp_path / "auto", ["userID\titemID\tx_label", "0\t0\t0", "0\t1\t1", "0\t2\t2"])
    assert load(folder).metadata["format"] == "mmrec"
    assert load(folder / "auto.inter", format="mmrec").n_items == 3
    from jaxrec.errors import ConfigError
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['socal'\] for the mmrec reader"):
        load(folder, socal=None)
