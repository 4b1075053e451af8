"""The tag knowledge graph: a hand-worked table, bad input, and lfm2k's KG against an independent
pass over the raw files (skipped when the shared data is absent)."""

import csv

import numpy as np
import pytest

from jaxrec.data import Interactions, MultimodalDataset, load
from jaxrec.datasets import add_tag_kg, tag_kg_triples
from jaxrec.errors import DataError


def _dataset(item_ids):
    n = len(item_ids)
    inter = Interactions(np.zeros(n, int), np.arange(n), np.zeros(n, int))
    return MultimodalDataset("d", 1, n, inter, item_ids=np.asarray(item_ids))


def test_hand_worked_table(tmp_path):
    table = tmp_path / "tags.tsv"
    table.write_text("artistID\ttext\n"
                     "10\trock, pop,rock,,indie\n"     # rock twice, an empty tag, padding
                     "20\tpop,jazz\n"
                     "30\trock,jazz,pop\n"
                     "99\trock,jazz\n"                 # not a dataset item: does not count
                     "40\tsolo\n")
    dataset = add_tag_kg(_dataset([30, 10, 20, 40, 50]), table, min_count=2)
    # item counts over the dataset: rock 2 (30, 10), pop 3, jazz 2, indie 1, solo 1
    np.testing.assert_array_equal(dataset.metadata["entity_ids"], ["pop", "jazz", "rock"])
    expected = [[0, 0, 0], [0, 0, 1], [0, 0, 2],   # item 0 = artist 30
                [1, 0, 0], [1, 0, 2],              # item 1 = artist 10
                [2, 0, 0], [2, 0, 1]]              # item 2 = artist 20; 40 (solo) and 50 keep none
    np.testing.assert_array_equal(dataset.kg_triples, expected)
    assert (dataset.n_entities, dataset.n_relations) == (3, 1)
    assert list(dataset.metadata["relation_ids"]) == ["tagged"]
    assert dataset.metadata["kg_stats"] == {
        "items_with_text": 4, "tags_before_filter": 5, "triples_before_filter": 9, "tags": 3, "triples": 7,
        "items_with_kept_tags": 3, "items_without_kept_tags": 2}
    assert add_tag_kg(_dataset([30, 10, 20, 40, 50]), table, min_count=1).n_entities == 5


def test_bad_input(tmp_path):
    table = tmp_path / "tags.tsv"
    table.write_text("artistID\ttext\n1\trock\n")
    with pytest.raises(DataError, match="no dataset item"):
        add_tag_kg(_dataset([5, 6]), table)
    with pytest.raises(DataError, match="min_count"):
        tag_kg_triples(_dataset([1]), {"1": "rock"}, min_count=0)
    with_kg = add_tag_kg(_dataset([1]), table, min_count=1)
    with pytest.raises(DataError, match="already has a knowledge graph"):
        add_tag_kg(with_kg, table)
    broken = tmp_path / "broken.tsv"
    broken.write_text("artistID\ttext\n1\trock\n1\tpop\n")
    with pytest.raises(DataError, match=r"broken\.tsv:3.*listed twice"):
        add_tag_kg(_dataset([1]), broken)


def _independent_lfm2k_tags(folder):
    """{original artist id: set of tags} for lfm2k's items, read with csv/str only: dense item
    ids come from lfm2k.inter, their original ids from the row-aligned lfm2k_og_ids.inter."""
    with open(folder / "lfm2k.inter") as dense, open(folder / "lfm2k_og_ids.inter") as original:
        rows = zip(csv.DictReader(dense, delimiter="\t"), csv.DictReader(original, delimiter="\t"))
        original_of = {int(d["itemID"]): int(o["itemID"]) for d, o in rows}
    with open(folder / "lfm2k_text.tsv", newline="") as f:
        tags_of = {int(row["artistID"]): {t.strip() for t in row["text"].split(",") if t.strip()}
                   for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)}
    return original_of, {item: tags_of.get(original, set()) for item, original in original_of.items()}


@pytest.mark.parametrize("min_count", [5, 20])
def test_lfm2k_tag_kg_matches_an_independent_pass(lfm2k_path, min_count):
    original_of, tags = _independent_lfm2k_tags(lfm2k_path)
    counts = {}
    for item_tags in tags.values():
        for tag in item_tags:
            counts[tag] = counts.get(tag, 0) + 1
    kept = {tag for tag, count in counts.items() if count >= min_count}
    expected_pairs = {(original_of[item], tag) for item, item_tags in tags.items() for tag in item_tags & kept}

    dataset = add_tag_kg(load(lfm2k_path), lfm2k_path / "lfm2k_text.tsv", min_count=min_count)
    names = dataset.metadata["entity_ids"]
    got_pairs = {(int(dataset.item_ids[h]), str(names[t])) for h, _, t in dataset.kg_triples.tolist()}
    assert dataset.n_items == len(original_of)
    assert dataset.n_entities == len(kept) and set(names.tolist()) == kept
    assert len(dataset.kg_triples) == len(expected_pairs) and got_pairs == expected_pairs
    assert dataset.metadata["kg_stats"]["tags_before_filter"] == len(counts)
    assert dataset.metadata["kg_stats"]["triples_before_filter"] == sum(counts.values())
    # entities ordered by item count (ties by name); the counts are the independent ones
    per_entity = np.bincount(dataset.kg_triples[:, 2], minlength=dataset.n_entities)
    assert per_entity.tolist() == [counts[str(name)] for name in names]
    assert np.all(np.diff(per_entity) <= 0)
    if min_count == 5:  # the figures the module docstring quotes
        assert (dataset.n_entities, len(dataset.kg_triples)) == (1260, 33462)
        assert dataset.metadata["kg_stats"]["items_with_kept_tags"] == 1422
