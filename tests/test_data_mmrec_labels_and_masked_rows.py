"""The MMRec reader and writer on hand-written folders, checked row by row against the files:
x_label codes per row (not only per-split counts), modality order and row-to-item alignment,
and the writer's zero rows for items whose mask is False."""

import numpy as np

from jaxrec.data import Interactions, Modality, MultimodalDataset, read_mmrec, save_mmrec


def test_each_row_keeps_its_own_x_label(tmp_path):
    folder = tmp_path / "lab"
    folder.mkdir()
    labels = [2, 0, 1, 0, 2, 1, 0]
    lines = ["userID\titemID\tx_label"] + [f"{row % 3}\t{row % 4}\t{label}" for row, label in enumerate(labels)]
    (folder / "lab.inter").write_text("\n".join(lines) + "\n")
    dataset = read_mmrec(folder)
    assert dataset.interactions.split.tolist() == labels
    assert dataset.split_pairs("valid").tolist() == [[2, 2], [2, 1]]  # rows 2 and 5, by hand
    assert dataset.split_pairs("test").tolist() == [[0, 0], [1, 0]]  # rows 0 and 4


def test_modalities_are_in_sorted_file_order_and_row_i_is_item_i(tmp_path):
    folder = tmp_path / "mods"
    folder.mkdir()
    (folder / "mods.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n0\t1\t1\n1\t2\t2\n1\t3\t0\n")
    written = {}
    for k, stem in enumerate(["zeta", "alpha", "mid"]):  # created out of sorted order
        array = (np.arange(4, dtype=np.float32)[:, None] + 1) * (k + 1) * np.ones((1, k + 2), np.float32)
        np.save(folder / f"{stem}.npy", array)
        written[stem] = array
    dataset = read_mmrec(folder)
    assert list(dataset.modalities) == ["alpha", "mid", "zeta"]
    for stem, array in written.items():
        modality = dataset.modalities[stem]
        for item in range(4):
            np.testing.assert_array_equal(modality.features[item], array[item])
        assert modality.provenance["encoder"] == stem


def test_save_writes_zero_rows_where_the_mask_is_false(tmp_path):
    features = np.arange(1, 13, dtype=np.float32).reshape(4, 3)  # every row non-zero, missing ones too
    mask = np.array([True, False, True, False])
    dataset = MultimodalDataset("m", 2, 4, Interactions([0, 1, 0, 1], [0, 1, 2, 3], np.array([0, 1, 2, 0], np.int8)),
                                modalities={"img": Modality("img", features, mask)})
    save_mmrec(dataset, tmp_path / "m")
    raw = np.load(tmp_path / "m" / "img.npy")
    expected = features.copy()
    expected[[1, 3]] = 0.0
    np.testing.assert_array_equal(raw, expected)
    back = read_mmrec(tmp_path / "m")
    assert back.modalities["img"].mask.tolist() == [True, False, True, False]
    np.testing.assert_array_equal(back.modalities["img"].features, expected)


def test_social_edges_in_original_ids_map_to_dense_ids_when_the_orders_differ(tmp_path):
    # Dense user 0 is original 30, dense 1 is 10, dense 2 is 20: not the sorted order of the originals.
    folder = tmp_path / "soc"
    folder.mkdir()
    (folder / "soc.inter").write_text("userID\titemID\tx_label\n0\t0\t0\n1\t1\t1\n2\t0\t2\n1\t0\t0\n")
    (folder / "soc_og_ids.inter").write_text("userID\titemID\tx_label\n30\t5\t0\n10\t6\t1\n20\t5\t2\n10\t5\t0\n")
    (folder / "user_friends.dat").write_text("userID\tfriendID\n10\t30\n30\t20\n20\t99\n")
    dataset = read_mmrec(folder)
    assert dataset.user_ids.tolist() == [30, 10, 20]
    # (10, 30) -> (1, 0); (30, 20) -> (0, 2); (20, 99): 99 is no user of the dataset
    assert dataset.social_edges.tolist() == [[1, 0], [0, 2]]
    assert dataset.metadata["social_dropped_edges"] == 1
