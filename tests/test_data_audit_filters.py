"""User-level audit of the filters: per-item metadata of the readers follows the renumbering."""

import numpy as np

from jaxrec.data import k_core, load


def test_k_core_renumbers_recbole_item_entity_links(tmp_path):
    folder = tmp_path / "kg"
    folder.mkdir()
    # i1 has one interaction (dropped by a 2-core); i2 and i3 two each.
    (folder / "kg.inter").write_text(
        "user_id:token\titem_id:token\nu1\ti1\nu1\ti2\nu2\ti2\nu1\ti3\nu2\ti3\n")
    (folder / "kg.kg").write_text("head_id:token\trelation_id:token\ttail_id:token\n"
                                  "e1\tr\te9\ne2\tr\te9\ne3\tr\te9\n")
    (folder / "kg.link").write_text("item_id:token\tentity_id:token\ni1\te1\ni2\te2\ni3\te3\n")
    data = load(folder)
    entities = data.metadata["entity_ids"].tolist()
    filtered = k_core(data, user_k=1, item_k=2)
    assert filtered.item_ids.tolist() == ["i2", "i3"]
    # By hand: i2 -> e2, i3 -> e3, in the entity numbering of the KG file.
    linked = [entities[e] for e in filtered.metadata["item_entity"].tolist()]
    assert linked == ["e2", "e3"]
    assert filtered.kg_triples[:, 0].tolist() == [0, 1]


def test_k_core_renumbers_movielens_titles(tmp_path):
    folder = tmp_path / "ml-1m"
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::1\n1::20::4::2\n2::20::3::3\n1::30::1::4\n2::30::2::5\n")
    (folder / "movies.dat").write_text("10::Ten::Drama\n20::Twenty::Comedy\n30::Thirty::Drama\n")
    filtered = k_core(load(folder), user_k=1, item_k=2)
    assert filtered.item_ids.tolist() == [20, 30]
    assert filtered.metadata["item_titles"].tolist() == ["Twenty", "Thirty"]
    assert np.array_equal(filtered.modalities["genre"].features, [[1, 0], [0, 1]])  # Comedy, Drama
