"""Negative sampling: exhaustive positive checks with Python sets, chi-square distribution checks."""

import dataclasses
from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import sparse, stats

from jaxrec.data import (DevicePositives, Interactions, MultimodalDataset, PositiveSets, TrainBatches,
                         sample_negatives, sample_negatives_jax)
from jaxrec.errors import ConfigError, DataError

N_USERS, N_ITEMS = 40, 25


def random_pairs(seed=0, n=300):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS, n)
    items = rng.integers(0, N_ITEMS, n)
    # User 0 has every item but 2 and 17; user 1 every item but 5: rejection would struggle.
    dense_users = np.r_[np.zeros(N_ITEMS - 2, int), np.ones(N_ITEMS - 1, int)]
    dense_items = np.r_[np.setdiff1d(np.arange(N_ITEMS), [2, 17]), np.setdiff1d(np.arange(N_ITEMS), [5])]
    return np.r_[users, dense_users], np.r_[items, dense_items]


def positive_set(users, items):
    return {(int(u), int(i)) for u, i in zip(users, items)}


def popularity(seed=1):
    return np.random.default_rng(seed).integers(1, 50, N_ITEMS).astype(float)


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_no_negative_is_a_positive(distribution):
    users, items = random_pairs()
    sets = PositiveSets.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    known = positive_set(users, items)
    # Over 2**16 unsorted users the sampler groups queries by user first: both paths are checked.
    query = np.random.default_rng(1).integers(0, N_USERS, 70000)
    negatives = sample_negatives(7, query, N_ITEMS, sets, n_neg=2, distribution=distribution,
                                 item_popularity=popularity() if distribution == "popularity" else None)
    assert negatives.shape == (70000, 2) and negatives.dtype == np.int32
    assert not any((int(u), int(i)) in known for u, row in zip(query, negatives) for i in row)
    assert negatives.min() >= 0 and negatives.max() < N_ITEMS
    # The two near-full users get only their few free items.
    assert set(negatives[query == 0].ravel().tolist()) == {2, 17}
    assert set(negatives[query == 1].ravel().tolist()) == {5}


def test_free_table_gives_each_rank_the_users_rank_th_non_positive_item(monkeypatch):
    """``PositiveSets.with_free_table``: the lookup answers every (user, rank) as the naive list of
    the user's non-positive items does (and as the binary search does, so draws are unchanged);
    a user with every item positive has an empty list; above the cell limit the sets stay as they are."""
    from jaxrec.data import _negatives
    users, items = random_pairs(seed=3)
    users, items = np.r_[users, np.full(N_ITEMS, N_USERS - 1)], np.r_[items, np.arange(N_ITEMS)]  # last user: all
    sets = PositiveSets.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    table = sets.with_free_table()
    assert table is not sets and table.with_free_table() is table
    known = positive_set(users, items)
    query_users, query_ranks = [], []
    for u in range(N_USERS):
        free = [i for i in range(N_ITEMS) if (u, i) not in known]  # naive, in id order
        assert table._free_items[table._free_start[u]:table._free_start[u] + len(free)].tolist() == free
        query_users += [u] * len(free)
        query_ranks += list(range(len(free)))
    q_users, q_ranks = np.array(query_users), np.array(query_ranks)[:, None]
    want = np.array([[i for i in range(N_ITEMS) if (u, i) not in known][r] for u, r in zip(q_users, q_ranks[:, 0])])
    looked_up = _negatives._free_rank_to_item(table, q_users, q_ranks)
    searched = _negatives._free_rank_to_item(sets, q_users, q_ranks)
    assert looked_up.dtype == np.int32
    np.testing.assert_array_equal(looked_up[:, 0], want)
    np.testing.assert_array_equal(searched, looked_up)
    # The same draws with the table as without, users sorted or not.
    for query in (np.random.default_rng(2).integers(0, N_USERS - 1, 5000), np.arange(N_USERS - 1).repeat(30)):
        np.testing.assert_array_equal(sample_negatives(11, query, N_ITEMS, table, n_neg=3),
                                      sample_negatives(11, query, N_ITEMS, sets, n_neg=3))
    monkeypatch.setattr(_negatives, "_FREE_TABLE_CELLS", N_USERS * N_ITEMS - 1)
    assert sets.with_free_table() is sets


def test_train_batches_draw_uniform_negatives_from_the_free_table():
    users, items = random_pairs(seed=4)
    batches = TrainBatches(users, items, n_users=N_USERS, n_items=N_ITEMS, batch_size=64, seed=5)
    assert getattr(batches._draw_positives, "_free_items", None) is not None
    plain = PositiveSets.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    rng_a, rng_b = np.random.default_rng(9), np.random.default_rng(9)
    np.testing.assert_array_equal(batches._draw(rng_a, batches.users), sample_negatives(rng_b, batches.users, N_ITEMS,
                                                                                        plain, n_neg=1))


def test_keyed_batches_draw_uniform_negatives_from_the_free_table():
    from jaxrec.data._keyed_batches import KeyedTrainBatches
    users, items = random_pairs(seed=6)
    pairs = np.stack([users, items], axis=1)
    batches = KeyedTrainBatches(pairs, n_users=N_USERS, n_items=N_ITEMS, batch_size=64, seed=5, n_neg=2)
    assert getattr(batches._draw_positives, "_free_items", None) is not None
    positions = np.arange(len(pairs))
    drawn = batches._pool_negatives(3, positions, users)
    batches._draw_positives = dataclasses.replace(batches._draw_positives)  # the same sets, no table: the search
    assert getattr(batches._draw_positives, "_free_items", None) is None
    np.testing.assert_array_equal(drawn, batches._pool_negatives(3, positions, users))


def chi_square_p(observed_items, allowed, probabilities):
    counts = np.bincount(observed_items, minlength=N_ITEMS)
    assert counts[~allowed].sum() == 0
    expected = probabilities[allowed] * counts.sum()
    return stats.chisquare(counts[allowed], expected).pvalue


def test_uniform_is_uniform_over_negatives():
    positives_of_3 = [0, 4, 9, 10, 11, 24]
    sets = PositiveSets.from_pairs(np.full(6, 3), positives_of_3, n_users=N_USERS, n_items=N_ITEMS)
    allowed = ~np.isin(np.arange(N_ITEMS), positives_of_3)
    draws = sample_negatives(0, np.full(20000, 3), N_ITEMS, sets, n_neg=2).ravel()
    probabilities = allowed / allowed.sum()
    assert chi_square_p(draws, allowed, probabilities) > 1e-3


@pytest.mark.parametrize("heavy", [False, True])
def test_popularity_is_proportional_to_popularity_outside_positives(heavy):
    weights = popularity()
    positives_of_3 = [0, 4, 9, 10, 11, 24]
    if heavy:  # positives hold ~99.99% of the mass: rejection gives up, the exact bisection draws
        weights[positives_of_3] = 1e6
    sets = PositiveSets.from_pairs(np.full(6, 3), positives_of_3, n_users=N_USERS, n_items=N_ITEMS)
    allowed = ~np.isin(np.arange(N_ITEMS), positives_of_3)
    draws = sample_negatives(1, np.full(20000, 3), N_ITEMS, sets, distribution="popularity",
                             item_popularity=weights).ravel()
    probabilities = np.where(allowed, weights, 0) / weights[allowed].sum()
    assert chi_square_p(draws, allowed, probabilities) > 1e-3
    # Zero-popularity items are never drawn.
    weights[1] = 0
    draws = sample_negatives(1, np.full(5000, 3), N_ITEMS, sets, distribution="popularity", item_popularity=weights)
    assert not np.any(draws == 1)


def test_default_popularity_counts_users_per_item():
    users = np.r_[np.zeros(3, int), np.arange(1, 31), np.arange(1, 11)]
    items = np.r_[[0, 1, 2], np.full(30, 3), np.full(10, 4)]
    sets = PositiveSets.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    draws = sample_negatives(0, np.zeros(8000, int), N_ITEMS, sets, distribution="popularity").ravel()
    # User 0 can get item 3 (30 users) or 4 (10 users); items nobody has are never drawn.
    assert set(draws.tolist()) == {3, 4}
    assert abs(np.mean(draws == 3) - 0.75) < 0.03


def test_determinism_by_seed_and_generator():
    users, items = random_pairs()
    sets = PositiveSets.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    query = np.arange(N_USERS).repeat(10)
    for distribution in ("uniform", "popularity"):
        a = sample_negatives(11, query, N_ITEMS, sets, n_neg=3, distribution=distribution)
        b = sample_negatives(np.random.default_rng(11), query, N_ITEMS, sets, n_neg=3, distribution=distribution)
        c = sample_negatives(12, query, N_ITEMS, sets, n_neg=3, distribution=distribution)
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)


def test_csr_input_unsorted_and_repeated():
    users, items = random_pairs()
    matrix = sparse.csr_matrix((np.ones(users.size), (users, items)), shape=(N_USERS, N_ITEMS))
    # Reverse each row's indices: the sampler must normalize them.
    for row in range(N_USERS):
        lo, hi = matrix.indptr[row], matrix.indptr[row + 1]
        matrix.indices[lo:hi] = matrix.indices[lo:hi][::-1].copy()
    query = np.random.default_rng(2).integers(0, N_USERS, 3000)
    negatives = sample_negatives(3, query, N_ITEMS, matrix, n_neg=2)
    known = positive_set(users, items)
    assert not any((int(u), int(i)) in known for u, row in zip(query, negatives) for i in row)
    sets = PositiveSets.from_pairs(np.r_[users, users], np.r_[items, items], n_users=N_USERS, n_items=N_ITEMS)
    assert sets.indices.size == len(known)
    np.testing.assert_array_equal(sets.contains(users, items), True)


def test_users_without_negatives_raise():
    full = PositiveSets.from_pairs(np.zeros(N_ITEMS, int), np.arange(N_ITEMS), n_users=N_USERS, n_items=N_ITEMS)
    with pytest.raises(DataError, match="every item") as info:
        sample_negatives(0, [1, 0, 2], N_ITEMS, full)
    assert "[0]" in str(info.value)
    weights = np.zeros(N_ITEMS)
    weights[:3] = 1.0
    first_three = PositiveSets.from_pairs([5, 5, 5], [0, 1, 2], n_users=N_USERS, n_items=N_ITEMS)
    with pytest.raises(DataError, match="zero popularity"):
        sample_negatives(0, [5], N_ITEMS, first_three, distribution="popularity", item_popularity=weights)
    with pytest.raises(ConfigError):
        sample_negatives(0, [5], N_ITEMS, first_three, distribution="softmax")
    with pytest.raises(DataError, match="out of range"):
        PositiveSets.from_pairs([0], [N_ITEMS], n_users=N_USERS, n_items=N_ITEMS)


SAMPLE_JAX = jax.jit(sample_negatives_jax, static_argnames=("n_neg", "n_candidates"))


def test_jax_uniform_is_exact_and_uniform():
    users, items = random_pairs()
    sets = PositiveSets.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    device = DevicePositives.from_sets(sets)
    # Random users for the exhaustive check, then many draws of user 3 for the chi-square.
    query = np.r_[np.random.default_rng(4).integers(0, N_USERS, 3000), np.full(20000, 3)]
    negatives, exact = SAMPLE_JAX(jax.random.key(0), jnp.asarray(query), device, n_neg=2)
    negatives, exact = np.asarray(negatives), np.asarray(exact)
    known = positive_set(users, items)
    assert exact.all() and negatives.dtype == np.int32 and negatives.shape == (23000, 2)
    assert not any((int(u), int(i)) in known for u, row in zip(query, negatives) for i in row)
    again = SAMPLE_JAX(jax.random.key(0), jnp.asarray(query), device, n_neg=2)[0]
    np.testing.assert_array_equal(negatives, np.asarray(again))
    allowed = ~sets.contains(np.full(N_ITEMS, 3), np.arange(N_ITEMS))
    assert chi_square_p(negatives[3000:].ravel(), allowed, allowed / allowed.sum()) > 1e-3


def test_jax_popularity_flags_fallbacks():
    users, items = random_pairs()
    sets = PositiveSets.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    device = DevicePositives.from_sets(sets)
    weights = popularity()
    cdf = jnp.cumsum(jnp.asarray(weights, jnp.float32))
    query = np.r_[np.full(20000, 3), np.zeros(200, int)]
    negatives, exact = SAMPLE_JAX(jax.random.key(2), jnp.asarray(query), device, item_cdf=cdf, n_candidates=4)
    negatives, exact = np.asarray(negatives)[:, 0], np.asarray(exact)[:, 0]
    known = positive_set(users, items)
    assert not any((int(u), int(i)) in known for u, i in zip(query, negatives))  # fallbacks too
    # User 0 has 2 free items of 25: with 4 candidates most slots fall back, and are flagged.
    assert exact[query == 0].mean() < 0.8
    allowed = ~sets.contains(np.full(N_ITEMS, 3), np.arange(N_ITEMS))
    kept = negatives[(query == 3) & exact]
    assert kept.size > 19000
    probabilities = np.where(allowed, weights, 0) / weights[allowed].sum()
    assert chi_square_p(kept, allowed, probabilities) > 1e-3


def make_train_dataset():
    users, items = random_pairs(seed=5, n=230)
    split = np.zeros(users.size, np.int8)
    split[::9] = 2  # a test interaction must not count as a train positive
    return MultimodalDataset("toy", N_USERS, N_ITEMS, Interactions(users, items, split))


@pytest.mark.parametrize("drop_remainder", [False, True])
def test_train_batches_cover_each_pair_once_with_static_shapes(drop_remainder):
    data = make_train_dataset()
    train = data.split_pairs("train")
    batches = TrainBatches.from_dataset(data, batch_size=32, n_neg=2, seed=3, drop_remainder=drop_remainder)
    epoch = list(batches.epoch(0))
    assert len(epoch) == len(batches) == (train.shape[0] // 32 if drop_remainder else -(-train.shape[0] // 32))
    for batch in epoch:
        assert batch["users"].shape == batch["pos_items"].shape == batch["weights"].shape == (32,)
        assert batch["neg_items"].shape == (32, 2) and batch["neg_items"].dtype == np.int32
    real = [(int(u), int(i)) for b in epoch for u, i, w in zip(b["users"], b["pos_items"], b["weights"]) if w == 1]
    if drop_remainder:
        assert len(real) == len(epoch) * 32 and Counter(real) <= Counter(map(tuple, train.tolist()))
    else:
        assert Counter(real) == Counter(map(tuple, train.tolist()))
        assert sum(b["weights"].sum() for b in epoch) == train.shape[0]
    known = positive_set(train[:, 0], train[:, 1])
    assert not any((int(u), int(i)) in known for b in epoch for u, row in zip(b["users"], b["neg_items"]) for i in row)
    # Test-only pairs are not excluded: they may be drawn as negatives (no leak of held-out data).
    test_only = np.array(sorted(positive_set(*data.split_pairs("test").T) - known))
    assert test_only.size and not batches.positives.contains(test_only[:, 0], test_only[:, 1]).any()


def test_train_batches_are_deterministic_per_epoch():
    data = make_train_dataset()
    a = TrainBatches.from_dataset(data, batch_size=50, seed=9)
    b = TrainBatches.from_dataset(data, batch_size=50, seed=9)
    first, again, second = list(a.epoch(1)), list(b.epoch(1)), list(a.epoch(2))
    for x, y in zip(first, again):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
    assert not np.array_equal(first[0]["users"], second[0]["users"])
    with pytest.raises(ConfigError):
        TrainBatches.from_dataset(data, batch_size=10**6, drop_remainder=True)
