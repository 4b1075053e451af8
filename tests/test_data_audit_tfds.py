"""User-level audit of `jaxrec data prepare`: datasets with named entities / titles, and
re-running into an existing folder after an interruption."""

import numpy as np
import pytest

from jaxrec.data import _tfds_schema, load, load_prepared, make_synthetic, prepare_tfds, prepared_versions


def _write_recbole_kg(folder):
    folder.mkdir()
    (folder / "kgset.inter").write_text(
        "user_id:token\titem_id:token\trating:float\n"
        "u9\ti5\t4\nu2\ti3\t3.5\nu9\ti3\t2\nu1\ti7\t1\n")
    (folder / "kgset.item").write_text(
        "item_id:token\temb:float_seq\ni3\t1 2 3\ni99\t0 0 1\ni5\t4 5 6\n")
    (folder / "kgset.kg").write_text(
        "head_id:token\trelation_id:token\ttail_id:token\n"
        "e3\tr1\te5\ne5\tr2\te3\ne100\tr1\te3\ne7\tr3\te100\n")
    (folder / "kgset.link").write_text("item_id:token\tentity_id:token\ni3\te3\ni5\te5\ni99\te100\ni7\te7\n")
    return folder


def test_recbole_kg_with_entity_names_prepares_and_loads_back(tmp_path):
    data = load(_write_recbole_kg(tmp_path / "kgset"))
    prepare_tfds(data, tmp_path / "tfds", name="kgset")
    back = load(tmp_path / "tfds" / "kgset", format="tfds")
    # Expected from the files by hand: tokens in first-seen order.
    items = ["i5", "i3", "i7"]
    entities = ["e3", "e5", "e100", "e7"]
    relations = ["r1", "r2", "r3"]
    triples = [(items.index(i), relations.index(r), entities.index(t))
               for h, r, t in [("e3", "r1", "e5"), ("e5", "r2", "e3"), ("e100", "r1", "e3"), ("e7", "r3", "e100")]
               for i in [{"e3": "i3", "e5": "i5", "e7": "i7"}.get(h)] if i is not None]
    assert back.item_ids.tolist() == items
    assert back.kg_triples.tolist() == [list(t) for t in triples]
    assert back.metadata["entity_ids"].tolist() == entities
    assert back.metadata["relation_ids"].tolist() == relations
    assert back.metadata["entity_ids"].dtype == data.metadata["entity_ids"].dtype
    assert back.metadata["item_entity"].tolist() == [1, 0, 3]  # i5 -> e5, i3 -> e3, i7 -> e7
    emb = back.modalities["emb"]
    assert emb.features.tolist() == [[4, 5, 6], [1, 2, 3], [0, 0, 0]] and emb.mask.tolist() == [True, True, False]
    assert back.interactions.ratings.tolist() == [4.0, 3.5, 2.0, 1.0]


def test_movielens_titles_prepare_and_load_back(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::100\n2::20::4::200\n")
    (folder / "movies.dat").write_bytes("10::Am\xe9lie (2001)::Comedy|Romance\n20::B::Drama\n".encode("latin-1"))
    data = load(folder)
    prepare_tfds(data, tmp_path / "tfds", name="ml")
    back = load_prepared(tmp_path / "tfds", "ml")
    assert back.metadata["item_titles"].tolist() == ["Am\xe9lie (2001)", "B"]
    assert back.modalities["genre"].features.tolist() == [[1, 0, 1], [0, 1, 0]]  # Comedy, Drama, Romance


def test_interrupted_overwrite_keeps_the_prepared_version(tmp_path, monkeypatch):
    first = make_synthetic(20, 15, n_interactions=100, seed=5, dims={"a": 2})
    prepare_tfds(first, tmp_path, name="again")
    expected_users = first.interactions.users.copy()
    expected_features = first.modalities["a"].features.copy()
    real_examples = _tfds_schema.table_examples

    def failing_examples(dataset, table, split, manifest):
        for count, pair in enumerate(real_examples(dataset, table, split, manifest)):
            if table == "interactions" and count == 20:
                raise KeyboardInterrupt("simulated Ctrl-C while writing")
            yield pair

    monkeypatch.setattr("jaxrec.data._tfds_builder.table_examples", failing_examples)
    second = make_synthetic(25, 18, n_interactions=130, seed=6, dims={"a": 2})
    with pytest.raises(KeyboardInterrupt):
        prepare_tfds(second, tmp_path, name="again", overwrite=True)
    assert prepared_versions(tmp_path, "again") == ["1.0.0"]
    back = load_prepared(tmp_path, "again")
    assert back.n_users == 20 and back.n_items == 15
    np.testing.assert_array_equal(back.interactions.users, expected_users)
    np.testing.assert_array_equal(back.modalities["a"].features, expected_features)
    monkeypatch.setattr("jaxrec.data._tfds_builder.table_examples", real_examples)
    prepare_tfds(second, tmp_path, name="again", overwrite=True)
    assert load_prepared(tmp_path, "again").n_users == 25


def test_leftovers_of_a_killed_run_are_cleared(tmp_path):
    # What a SIGKILL-ed run leaves (no Python cleanup ran): TFDS incomplete.* folders and a staging folder.
    for table in ("items", "interactions"):
        (tmp_path / "killed" / table / "incomplete.ABC123_1.0.0").mkdir(parents=True)
        (tmp_path / "killed" / table / "incomplete.ABC123_1.0.0" / "junk").write_bytes(b"x" * 100)
    (tmp_path / ".killed-1.0.0.xyz.partial" / "killed").mkdir(parents=True)
    data = make_synthetic(10, 8, n_interactions=40, seed=1, dims={"a": 2})
    prepare_tfds(data, tmp_path, name="killed")
    assert not list(tmp_path.rglob("incomplete*"))
    assert not list(tmp_path.glob(".killed-*"))
    assert load_prepared(tmp_path, "killed").n_users == 10


@pytest.mark.parametrize("inside", ["", "interactions/1.0.0", "items/1.0.0/dataset_info.json"])
def test_format_tfds_with_a_folder_above_or_inside_names_the_dataset_folder(tmp_path, inside):
    from jaxrec.errors import DataError

    prepare_tfds(make_synthetic(10, 8, n_interactions=40, seed=1, dims={"a": 2}), tmp_path, name="here")
    with pytest.raises(DataError) as error:
        load(tmp_path / "here" / inside if inside else tmp_path, format="tfds")
    assert repr(str(tmp_path / "here")) in str(error.value)


def test_preparing_into_a_file_is_refused_by_name(tmp_path):
    from jaxrec.errors import DataError

    data = make_synthetic(10, 8, n_interactions=40, seed=1, dims={"a": 2})
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="into a file"):
        prepare_tfds(data, tmp_path / "file", name="x")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "x").write_text("x")
    with pytest.raises(DataError, match="into a file") as error:
        prepare_tfds(data, tmp_path / "dir", name="x")
    assert str(tmp_path / "dir" / "x") in str(error.value)
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["x"]
