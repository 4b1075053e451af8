"""RecBole atomic files: token remapping, float_seq item features, KG triples through the link file."""

import numpy as np
import pytest

from jaxrec.data import DataWarning, load, read_mmrec, read_recbole, save_mmrec
from jaxrec.errors import DataError


def write_atomic(folder, files):
    folder.mkdir(parents=True, exist_ok=True)
    for suffix, lines in files.items():
        (folder / f"{folder.name}.{suffix}").write_text("\n".join(lines) + "\n")
    return folder


INTER = ["user_id:token\titem_id:token\trating:float\ttimestamp:float",
         "u9\tm2\t4\t100", "u1\tm1\t3.5\t101", "u9\tm7\t1\t102", "u1\tm2\t5\t103", "u5\tm7\t2\t104"]
ITEM = ["item_id:token\tgenre:token_seq\temb:float_seq\tyear:float",
        "m7\tdrama comedy\t0.5 1.5\t1999", "m2\taction\t-1 2\t2001", "m99\tnone\t9 9\t1990"]
KG = ["head_id:token\trelation_id:token\ttail_id:token",
      "e2\tdirected_by\tp1", "e7\tstarring\tp2", "p1\tborn_in\tcity", "e2\tstarring\tp2"]
LINK = ["item_id:token\tentity_id:token", "m2\te2", "m7\te7", "m99\te99"]


def test_tokens_are_remapped_in_order_of_first_appearance(tmp_path):
    dataset = read_recbole(write_atomic(tmp_path / "ml", {"inter": INTER}))
    np.testing.assert_array_equal(dataset.user_ids, ["u9", "u1", "u5"])
    np.testing.assert_array_equal(dataset.item_ids, ["m2", "m1", "m7"])
    np.testing.assert_array_equal(dataset.interactions.pairs(), [[0, 0], [1, 1], [0, 2], [1, 0], [2, 2]])
    np.testing.assert_array_equal(dataset.interactions.ratings, np.float32([4, 3.5, 1, 5, 2]))
    np.testing.assert_array_equal(dataset.interactions.timestamps, [100, 101, 102, 103, 104])
    assert dataset.split_sizes() == {"train": 5, "valid": 0, "test": 0}
    assert dataset.metadata["needs_split"] is True and dataset.metadata["format"] == "recbole"
    assert dataset.modalities == {} and dataset.kg_triples is None


def test_float_seq_item_columns_become_modalities_with_a_mask(tmp_path):
    dataset = read_recbole(write_atomic(tmp_path / "ml", {"inter": INTER, "item": ITEM}))
    assert list(dataset.modalities) == ["emb"]
    emb = dataset.modalities["emb"]
    np.testing.assert_array_equal(emb.features, np.float32([[-1, 2], [0, 0], [0.5, 1.5]]))  # m2, m1, m7
    np.testing.assert_array_equal(emb.mask, [True, False, True])  # m1 has no .item row; m99 has no interactions
    assert read_recbole(tmp_path / "ml", item_features=None).modalities == {}
    assert list(read_recbole(tmp_path / "ml", item_features=["emb"]).modalities) == ["emb"]


def test_kg_triples_join_heads_to_items_through_the_link_file(tmp_path):
    dataset = read_recbole(write_atomic(tmp_path / "ml", {"inter": INTER, "kg": KG, "link": LINK}))
    entities = list(dataset.metadata["entity_ids"])
    relations = list(dataset.metadata["relation_ids"])
    assert entities == ["e2", "p1", "e7", "p2", "city"]  # file order, reading each row head then tail
    assert relations == ["directed_by", "starring", "born_in"]
    # hand-worked: item m2 (dense 0) = e2, item m7 (dense 2) = e7; p1 -born_in-> city has no item head
    expected = [[0, 0, entities.index("p1")], [2, 1, entities.index("p2")], [0, 1, entities.index("p2")]]
    np.testing.assert_array_equal(dataset.kg_triples, expected)
    assert (dataset.n_entities, dataset.n_relations) == (5, 3)
    assert dataset.metadata["kg_triples_without_item_head"] == 1
    assert dataset.metadata["links_unused"] == 1  # m99 never interacted
    np.testing.assert_array_equal(dataset.metadata["item_entity"], [entities.index("e2"), -1, entities.index("e7")])
    assert dataset.summary()["kg"] == {"triples": 3, "entities": 5, "relations": 3}


def test_kg_without_link_file_is_an_error(tmp_path):
    folder = write_atomic(tmp_path / "ml", {"inter": INTER, "kg": KG})
    with pytest.raises(DataError, match=r"ml\.link.*not found"):
        read_recbole(folder)


def test_duplicate_tokens_pairs_are_dropped_with_a_warning_or_rejected(tmp_path):
    folder = write_atomic(tmp_path / "d", {"inter": INTER + ["u9\tm2\t2\t105"]})
    with pytest.warns(DataWarning, match="line 7 repeats line 2"):
        assert len(read_recbole(folder).interactions) == 5
    with pytest.raises(DataError, match=r"d\.inter:7.*duplicate interaction"):
        read_recbole(folder, duplicates="error")


def test_auto_detection_tells_recbole_from_mmrec(tmp_path):
    folder = write_atomic(tmp_path / "ml", {"inter": INTER, "item": ITEM})
    dataset = load(folder)
    assert dataset.metadata["format"] == "recbole" and dataset.n_items == 3


def test_malformed_typed_header_names_the_field(tmp_path):
    folder = write_atomic(tmp_path / "h", {"inter": ["user_id:token\titem_id:tok", "a\tb"]})
    with pytest.raises(DataError, match=r"h\.inter:1, field 'item_id:tok': malformed RecBole header field"):
        read_recbole(folder)


def test_float_seq_of_a_different_length_names_the_line(tmp_path):
    item = ["item_id:token\temb:float_seq", "m2\t1 2", "m7\t1 2 3"]
    folder = write_atomic(tmp_path / "s", {"inter": INTER, "item": item})
    with pytest.raises(DataError, match=r"s\.item:3, field 'emb': float_seq of a different length; found 3 values; "
                                        r"expected 2 values, as on line 2"):
        read_recbole(folder)
    (folder / "s.item").write_text("item_id:token\temb:float_seq\nm2\t1 x\n")
    with pytest.raises(DataError, match=r"s\.item:2, field 'emb': not a number in a float_seq field; found 'x'"):
        read_recbole(folder)


def test_unsplit_recbole_data_round_trips_through_the_mmrec_layout(tmp_path):
    first = read_recbole(write_atomic(tmp_path / "ml", {"inter": INTER, "item": ITEM}))
    save_mmrec(first, tmp_path / "out")
    again = read_mmrec(tmp_path / "out")
    assert again.metadata["needs_split"] is True
    np.testing.assert_array_equal(again.user_ids, first.user_ids)
    np.testing.assert_array_equal(again.item_ids, first.item_ids)
    np.testing.assert_array_equal(again.interactions.pairs(), first.interactions.pairs())
    np.testing.assert_array_equal(again.interactions.split, first.interactions.split)
    np.testing.assert_array_equal(again.interactions.ratings, first.interactions.ratings)
    np.testing.assert_array_equal(again.interactions.timestamps, first.interactions.timestamps)
    np.testing.assert_array_equal(again.modalities["emb"].features, first.modalities["emb"].features)
    np.testing.assert_array_equal(again.modalities["emb"].mask, first.modalities["emb"].mask)


def test_padded_and_non_ascii_tokens(tmp_path):
    folder = write_atomic(tmp_path / "pad", {"inter": ["user_id:token\titem_id:token", " u1 \tcafé", "u2\tnaïve ",
                                                       "u1\tnaïve"]})
    dataset = read_recbole(folder)
    np.testing.assert_array_equal(dataset.user_ids, ["u1", "u2"])
    np.testing.assert_array_equal(dataset.item_ids, ["café", "naïve"])
    np.testing.assert_array_equal(dataset.interactions.pairs(), [[0, 0], [1, 1], [0, 1]])
