"""Negatives only among items with a train interaction (``negative_items``), against naive numpy.

Reference: for a row of user ``u`` the allowed negatives are ``trained & ~positives(u)``, with
probability ``w_i / sum(w over allowed)`` (``w = 1`` uniform). The draws of many epochs are
counted per (user, item) cell and compared with the expected counts by a chi-square test with
fixed seeds; with every item trained the batches must equal those of ``"all"`` bit for bit.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxrec.data import (DevicePositives, Interactions, KeyedTrainBatches, MultimodalDataset, PositiveSets,
                         TrainBatches, sample_negatives, sample_negatives_jax, trained_item_pool)
from jaxrec.errors import ConfigError, DataError
from jaxrec.train._config import config_from_dict
from jaxrec.train._data import EpochSampler

N_USERS, N_ITEMS = 12, 15
UNTRAINED = np.array([3, 8, 14])  # items that only appear in test


def dataset(untrained=UNTRAINED, seed=0):
    rng = np.random.default_rng(seed)
    trained = np.setdiff1d(np.arange(N_ITEMS), untrained)
    users = np.r_[np.arange(N_USERS).repeat(4), [0, 0, 0, 0, 0, 0]]
    items = np.r_[rng.choice(trained, N_USERS * 4), trained[:6]]  # user 0 holds most trained items
    split = np.zeros(users.size, np.int8)
    test_users = np.arange(untrained.size) if untrained.size else np.zeros(0, int)
    users, items = np.r_[users, test_users], np.r_[items, untrained]
    split = np.r_[split, np.full(untrained.size, 2, np.int8)]
    return MultimodalDataset("pool", N_USERS, N_ITEMS, Interactions(users, items, split))


def expected_probabilities(data, weights=None):
    """(n_users, n_items) naive per-user draw probabilities: trained, non-positive items."""
    train = data.split_pairs("train")
    trained = np.zeros(N_ITEMS, bool)
    trained[train[:, 1]] = True
    positive = np.zeros((N_USERS, N_ITEMS), bool)
    positive[train[:, 0], train[:, 1]] = True
    w = np.ones(N_ITEMS) if weights is None else np.asarray(weights, float)
    mass = np.where(trained[None, :] & ~positive, w[None, :], 0.0)
    return mass / mass.sum(axis=1, keepdims=True)


def chi_square_over_cells(users, negatives, probabilities):
    counts = np.zeros((N_USERS, N_ITEMS))
    np.add.at(counts, (np.repeat(users, negatives.shape[1]), negatives.ravel()), 1)
    rows = np.bincount(users, minlength=N_USERS) * negatives.shape[1]
    expected = rows[:, None] * probabilities
    assert counts[expected == 0].sum() == 0  # untrained items and positives: never drawn
    cells = expected > 0
    return stats.chisquare(counts[cells], expected[cells]).pvalue


def all_rows(batches, epochs, keyed):
    users, negatives = [], []
    for epoch in range(epochs):
        if keyed:
            rows = batches.epoch_rows(epoch)
            real = rows["weights"].ravel() == 1
            users.append(rows["users"].reshape(-1)[real])
            negatives.append(rows["neg_items"].reshape(-1, batches.n_neg)[real])
        else:
            for batch in batches.epoch(epoch):
                real = batch["weights"] == 1
                users.append(batch["users"][real])
                negatives.append(batch["neg_items"][real])
    return np.concatenate(users), np.concatenate(negatives)


@pytest.mark.parametrize("keyed", [False, True])
@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_untrained_items_are_never_drawn_and_the_rest_follow_the_distribution(keyed, distribution):
    data = dataset()
    weights = np.random.default_rng(3).integers(1, 9, N_ITEMS).astype(float)
    weights[UNTRAINED] = 50.0  # heavy, yet never drawn
    kind = KeyedTrainBatches if keyed else TrainBatches
    batches = kind.from_dataset(data, batch_size=16, n_neg=4, seed=5, distribution=distribution,
                                item_popularity=weights if distribution == "popularity" else None)
    np.testing.assert_array_equal(batches.item_pool, np.setdiff1d(np.arange(N_ITEMS), UNTRAINED))
    users, negatives = all_rows(batches, 60, keyed)
    assert not np.isin(negatives, UNTRAINED).any()
    probabilities = expected_probabilities(data, weights if distribution == "popularity" else None)
    assert chi_square_over_cells(users, negatives, probabilities) > 1e-3
    # "all": the untrained items come back, as every non-positive item of the user.
    everything = kind.from_dataset(data, batch_size=16, n_neg=4, seed=5, negative_items="all")
    assert everything.item_pool is None
    assert np.isin(all_rows(everything, 5, keyed)[1], UNTRAINED).any()


@pytest.mark.parametrize("keyed", [False, True])
@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_every_item_trained_draws_exactly_what_all_items_draw(keyed, distribution):
    data = dataset(untrained=np.zeros(0, int))
    assert np.bincount(data.split_pairs("train")[:, 1], minlength=N_ITEMS).min() > 0
    kind = KeyedTrainBatches if keyed else TrainBatches
    pooled = kind.from_dataset(data, batch_size=16, n_neg=3, seed=7, distribution=distribution)
    plain = kind.from_dataset(data, batch_size=16, n_neg=3, seed=7, distribution=distribution, negative_items="all")
    assert pooled.item_pool is None
    for epoch in range(3):
        a = pooled.epoch_rows(epoch) if keyed else {k: np.stack([b[k] for b in pooled.epoch(epoch)])
                                                     for k in ("users", "pos_items", "neg_items", "weights")}
        b = plain.epoch_rows(epoch) if keyed else {k: np.stack([b[k] for b in plain.epoch(epoch)])
                                                    for k in ("users", "pos_items", "neg_items", "weights")}
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    if not keyed:  # and both are the pre-pool definition: one sample_negatives call per epoch, then a shuffle
        rng = np.random.default_rng([7, 0])
        expected = sample_negatives(rng, plain.users, N_ITEMS, plain.positives, n_neg=3, distribution=distribution)
        order = rng.permutation(plain.users.size)
        rows = order[np.arange(len(plain) * 16) % order.size]
        got = np.concatenate([b["neg_items"] for b in pooled.epoch(0)])
        np.testing.assert_array_equal(got, expected[rows])


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_sample_negatives_with_a_pool(distribution):
    data = dataset()
    train = data.split_pairs("train")
    sets = PositiveSets.from_pairs(train[:, 0], train[:, 1], n_users=N_USERS, n_items=N_ITEMS)
    pool = trained_item_pool(train[:, 1], N_ITEMS)
    users = np.tile(np.arange(N_USERS), 3000)
    weights = np.arange(1, N_ITEMS + 1, dtype=float) if distribution == "popularity" else None
    drawn = sample_negatives(2, users, N_ITEMS, sets, n_neg=2, distribution=distribution,
                             item_popularity=weights, item_pool=pool)
    assert drawn.dtype == np.int32
    assert chi_square_over_cells(users, drawn, expected_probabilities(data, weights)) > 1e-3
    # The whole range as the pool draws exactly what no pool draws.
    np.testing.assert_array_equal(
        sample_negatives(4, users, N_ITEMS, sets, distribution=distribution, item_popularity=weights,
                         item_pool=np.arange(N_ITEMS)),
        sample_negatives(4, users, N_ITEMS, sets, distribution=distribution, item_popularity=weights))


def test_restricted_positive_sets_match_a_naive_relabeling():
    rng = np.random.default_rng(1)
    users, items = rng.integers(0, N_USERS, 80), rng.integers(0, N_ITEMS, 80)
    sets = PositiveSets.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    pool = np.array([0, 2, 5, 6, 11, 13])
    compact = sets.restricted_to(pool)
    naive = {(u, int(np.flatnonzero(pool == i)[0])) for u, i in zip(users.tolist(), items.tolist()) if i in pool}
    got = {(u, int(i)) for u in range(N_USERS) for i in compact.indices[compact.indptr[u]:compact.indptr[u + 1]]}
    assert got == naive and compact.n_items == pool.size


def test_device_sampler_with_a_pool():
    data = dataset()
    train = data.split_pairs("train")
    sets = PositiveSets.from_pairs(train[:, 0], train[:, 1], n_users=N_USERS, n_items=N_ITEMS)
    pool = trained_item_pool(train[:, 1], N_ITEMS)
    sample = jax.jit(sample_negatives_jax, static_argnames=("n_neg", "n_candidates"))
    users = np.tile(np.arange(N_USERS), 2000)
    negatives, exact = sample(jax.random.key(0), jnp.asarray(users), DevicePositives.from_sets(sets, pool), n_neg=2)
    negatives = np.asarray(negatives)
    assert np.asarray(exact).all()
    assert chi_square_over_cells(users, negatives, expected_probabilities(data)) > 1e-3
    weights = np.arange(1, N_ITEMS + 1, dtype=np.float32)
    device = DevicePositives.from_sets(sets, pool)
    drawn, exact = sample(jax.random.key(1), jnp.asarray(users), device,
                          item_cdf=jnp.cumsum(jnp.asarray(weights[pool])), n_candidates=8)
    drawn, exact = np.asarray(drawn)[:, 0], np.asarray(exact)[:, 0]
    assert exact.mean() > 0.9
    probabilities = expected_probabilities(data, weights)
    assert chi_square_over_cells(users[exact], drawn[exact][:, None], probabilities) > 1e-3
    with pytest.raises(DataError, match="item_cdf"):  # a cdf over every item, not the pool
        sample(jax.random.key(1), jnp.asarray(users), device, item_cdf=jnp.cumsum(jnp.asarray(weights)))
    # The whole range as the pool draws what no pool draws.
    whole = DevicePositives.from_sets(sets, np.arange(N_ITEMS))
    np.testing.assert_array_equal(np.asarray(sample(jax.random.key(2), jnp.asarray(users), whole)[0]),
                                  np.asarray(sample(jax.random.key(2), jnp.asarray(users),
                                                    DevicePositives.from_sets(sets))[0]))


def test_bad_settings_name_the_setting():
    data = dataset()
    with pytest.raises(ConfigError, match="negative_items"):
        TrainBatches.from_dataset(data, batch_size=8, negative_items="trained_only")
    with pytest.raises(ConfigError, match="negative_items"):
        KeyedTrainBatches.from_dataset(data, batch_size=8, negative_items="none")
    with pytest.raises(ConfigError, match="train.negative_items"):
        EpochSampler(data, batch_size=8, negative_items="yes")
    with pytest.raises(ConfigError, match="train.negative_items"):
        config_from_dict({"model": {"name": "bpr"}, "data": {"synthetic": {}}, "train": {"negative_items": "train"}})
    assert config_from_dict({"model": {"name": "bpr"}, "data": {"synthetic": {}}}).train.negative_items == "trained"
    sets = PositiveSets.from_pairs([0], [1], n_users=1, n_items=4)
    for bad in ([2, 1], [0, 4], [], [1.0, 2.0]):
        with pytest.raises(DataError, match="item pool"):
            sample_negatives(0, [0], 4, sets, item_pool=np.array(bad))
    # The epoch sampler: trained pool by default, every item with "all".
    users = all_rows(EpochSampler(data, batch_size=8, n_negatives=2)._batches, 3, False)[1]
    assert not np.isin(users, UNTRAINED).any()
