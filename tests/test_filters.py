"""k-core filtering and dense re-indexing, against a set-based Python k-core and original-id round trips."""

import json
from collections import Counter

import numpy as np
import pytest

from jaxrec.data import (Interactions, Modality, MultimodalDataset, cold_items, cold_start_item_split,
                         compact_ids, filter_interactions, k_core)
from jaxrec.errors import ConfigError, DataError


def make_dataset(seed=0, n_users=60, n_items=50, n=300):
    rng = np.random.default_rng(seed)
    # Skewed activity so that several rounds of pruning are needed.
    users = np.minimum(rng.geometric(0.08, n) - 1, n_users - 1)
    items = np.minimum(rng.geometric(0.07, n) - 1, n_items - 1)
    inter = Interactions(users, items, rng.integers(0, 3, n).astype(np.int8),
                         ratings=np.arange(n, dtype=np.float32))  # row tags
    lengths = rng.integers(0, 4, n_items)
    modalities = {
        "text": Modality("text", rng.normal(size=(n_items, 3)), rng.random(n_items) < 0.8),
        "frames": Modality("frames", rng.normal(size=(n_items, 4, 2)), lengths > 0, lengths),
    }
    kg = np.column_stack([rng.integers(0, n_items, 60), rng.integers(0, 3, 60), rng.integers(0, 20, 60)])
    social = rng.integers(0, n_users, (80, 2))
    return MultimodalDataset("toy", n_users, n_items, inter, modalities, user_features=rng.normal(size=(n_users, 2)),
                             kg_triples=kg, n_entities=20, n_relations=3, social_edges=social,
                             item_ids=np.array([f"i{j}" for j in range(n_items)]))


def naive_k_core(pairs, user_k, item_k):
    """Removes one offending node at a time with Python sets until none is left."""
    rows = list(range(len(pairs)))
    while True:
        user_count = Counter(pairs[r][0] for r in rows)
        item_count = Counter(pairs[r][1] for r in rows)
        bad_users = {u for u, c in user_count.items() if c < user_k}
        bad_items = {i for i, c in item_count.items() if c < item_k}
        if not bad_users and not bad_items:
            return rows
        # One node per step (a different order from the vectorized rounds: the k-core is unique).
        if bad_users:
            drop = min(bad_users)
            rows = [r for r in rows if pairs[r][0] != drop]
        else:
            drop = min(bad_items)
            rows = [r for r in rows if pairs[r][1] != drop]


@pytest.mark.parametrize("user_k,item_k", [(3, 3), (5, 2), (2, 6)])
def test_k_core_matches_a_naive_k_core(user_k, item_k):
    data = make_dataset()
    pairs = list(zip(data.interactions.users.tolist(), data.interactions.items.tolist()))
    kept_rows = naive_k_core(pairs, user_k, item_k)
    out = k_core(data, user_k=user_k, item_k=item_k)
    tags = out.interactions.ratings.astype(int)
    assert sorted(tags.tolist()) == kept_rows
    # Ids map back to the original ones, and labels travel with their rows.
    np.testing.assert_array_equal(out.user_ids[out.interactions.users], data.interactions.users[tags])
    np.testing.assert_array_equal(out.item_ids[out.interactions.items], data.item_ids[data.interactions.items[tags]])
    np.testing.assert_array_equal(out.interactions.split, data.interactions.split[tags])
    assert np.bincount(out.interactions.users).min() >= user_k
    assert np.bincount(out.interactions.items).min() >= item_k
    assert out.n_users == np.unique(data.interactions.users[tags]).size
    assert out.metadata["filters"][-1]["name"] == "k_core"
    assert out.metadata["filters"][-1]["rounds"] >= 2  # the cascade is exercised
    assert out.metadata["filters"][-1]["interactions_removed"] == len(pairs) - len(kept_rows)
    json.dumps(out.summary())


def test_k_core_cascade_by_hand():
    # A 2x2 block (users 0-1 x items 0-1) with a chain hanging off it: user 2 has one item,
    # so removing it leaves item 2 with one user, then user 1's third interaction goes too.
    users = [0, 0, 1, 1, 1, 2, 3, 3]
    items = [0, 1, 0, 1, 2, 2, 3, 3]  # user 3 / item 3: a repeated pair counts twice
    data = MultimodalDataset("chain", 4, 4, Interactions(users, items, np.zeros(8, np.int8)))
    out = k_core(data, 2)
    assert out.n_users == 3 and out.n_items == 3
    assert sorted(zip(out.user_ids[out.interactions.users].tolist(), out.item_ids[out.interactions.items].tolist())) \
        == [(0, 0), (0, 1), (1, 0), (1, 1), (3, 3), (3, 3)]
    assert out.metadata["filters"][-1]["rounds"] == 2


def test_everything_indexed_by_user_or_item_follows_the_remap():
    data = make_dataset(seed=1)
    out = k_core(data, 3)
    old_user = out.user_ids.astype(int)
    old_item = np.array([int(s[1:]) for s in out.item_ids])
    for name, mod in out.modalities.items():
        before = data.modalities[name]
        np.testing.assert_array_equal(mod.features, before.features[old_item])
        np.testing.assert_array_equal(mod.mask, before.mask[old_item])
        if before.lengths is not None:
            np.testing.assert_array_equal(mod.lengths, before.lengths[old_item])
    np.testing.assert_array_equal(out.user_features, data.user_features[old_user])
    want_kg = {(f"i{i}", r, e) for i, r, e in data.kg_triples.tolist() if i in set(old_item.tolist())}
    got_kg = {(out.item_ids[i], r, e) for i, r, e in out.kg_triples.tolist()}
    assert got_kg == want_kg and out.n_entities == data.n_entities
    kept = set(old_user.tolist())
    want_social = Counter((a, b) for a, b in data.social_edges.tolist() if a in kept and b in kept)
    got_social = Counter((int(old_user[a]), int(old_user[b])) for a, b in out.social_edges.tolist())
    assert got_social == want_social


def test_filters_compose_original_ids():
    data = make_dataset(seed=2)
    once = k_core(data, 2)
    twice = k_core(once, 4)
    direct = k_core(data, 4)
    np.testing.assert_array_equal(twice.item_ids, direct.item_ids)
    np.testing.assert_array_equal(twice.user_ids, direct.user_ids)
    assert [f["name"] for f in twice.metadata["filters"]] == ["k_core", "k_core"]


def test_compact_ids_and_filter_interactions():
    data = make_dataset(seed=3)
    compact = compact_ids(data)
    assert compact.n_users == np.unique(data.interactions.users).size
    np.testing.assert_array_equal(compact.user_ids[compact.interactions.users], data.interactions.users)
    keep = data.interactions.items % 2 == 0
    even = filter_interactions(data, keep, reason="even_items")
    assert np.all(np.array([int(s[1:]) for s in even.item_ids]) % 2 == 0)
    assert len(even.interactions) == keep.sum() and even.metadata["filters"][-1]["name"] == "even_items"
    with pytest.raises(DataError):
        filter_interactions(data, keep[:-1], reason="short")


def test_cold_items_follow_a_later_filter():
    data = make_dataset(seed=4)
    split, cold = cold_start_item_split(data, holdout=0.3, seed=0)
    out = k_core(split, 2)
    back = cold_items(out)
    want = {f"i{i}" for i in cold.all.tolist()} & set(out.item_ids.tolist())
    assert set(out.item_ids[back.all].tolist()) == want


def test_k_core_errors():
    data = make_dataset()
    with pytest.raises(DataError, match="no interaction survives"):
        k_core(data, 1000)
    with pytest.raises(ConfigError):
        k_core(data, 0)
