"""Epoch batches at the edges of the padding rule, against counts and orders computed here:
a last batch holding a single pair, the padding rows (the epoch's first pairs, weight 0), and the
keyed sampler's documented per-epoch order ``default_rng([seed, epoch, 0x4B4559]).permutation(n)``."""

from collections import Counter

import numpy as np
import pytest

from jaxrec.data import KeyedTrainBatches, TrainBatches


def _pairs(n, n_users=13, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.choice(n_users * n_items, size=n, replace=False)
    return np.stack([keys // n_items, keys % n_items], axis=1).astype(np.int64), n_users, n_items


@pytest.mark.parametrize("n, batch_size", [(33, 8), (65, 16), (17, 16), (9, 8)])
def test_a_last_batch_with_a_single_pair_is_kept_and_padded(n, batch_size):
    pairs, n_users, n_items = _pairs(n)
    batches = TrainBatches(pairs[:, 0], pairs[:, 1], n_users=n_users, n_items=n_items, batch_size=batch_size, seed=2)
    expected_batches = n // batch_size + (n % batch_size > 0)
    epoch = list(batches.epoch(0))
    assert len(batches) == len(epoch) == expected_batches
    real = Counter()
    for batch in epoch:
        for user, item, weight in zip(batch["users"].tolist(), batch["pos_items"].tolist(), batch["weights"].tolist()):
            if weight == 1.0:
                real[(user, item)] += 1
            else:
                assert weight == 0.0
    assert real == Counter(map(tuple, pairs.tolist()))  # every pair exactly once, the lone last one included
    last = epoch[-1]["weights"]
    assert last.tolist() == [1.0] * (n - (expected_batches - 1) * batch_size) + [0.0] * (expected_batches * batch_size - n)
    # padding rows repeat the epoch's first pairs, in order
    flat_users = np.concatenate([b["users"] for b in epoch])
    flat_items = np.concatenate([b["pos_items"] for b in epoch])
    pad = expected_batches * batch_size - n
    for k in range(pad):
        assert (flat_users[n + k], flat_items[n + k]) == (flat_users[k % n], flat_items[k % n])


def test_drop_remainder_drops_only_the_partial_batch():
    pairs, n_users, n_items = _pairs(33)
    batches = TrainBatches(pairs[:, 0], pairs[:, 1], n_users=n_users, n_items=n_items, batch_size=8, seed=2,
                           drop_remainder=True)
    epoch = list(batches.epoch(0))
    assert len(batches) == len(epoch) == 4
    assert all(b["weights"].tolist() == [1.0] * 8 for b in epoch)
    seen = Counter((u, i) for b in epoch for u, i in zip(b["users"].tolist(), b["pos_items"].tolist()))
    assert sum(seen.values()) == 32 and max(seen.values()) == 1
    assert set(seen) <= set(map(tuple, pairs.tolist()))


@pytest.mark.parametrize("n, batch_size", [(50, 16), (49, 7)])
def test_keyed_batches_follow_the_documented_order_of_each_epoch(n, batch_size):
    pairs, n_users, n_items = _pairs(n, seed=1)
    seed = 11
    batches = KeyedTrainBatches(pairs, n_users=n_users, n_items=n_items, batch_size=batch_size, seed=seed)
    steps = -(-n // batch_size)
    orders = []
    for epoch in range(3):
        order = np.random.default_rng([seed, epoch, 0x4B4559]).permutation(n)
        orders.append(order)
        rows = batches.epoch_rows(epoch)
        positions = np.arange(steps * batch_size)
        expected = pairs[order[positions % n]]
        np.testing.assert_array_equal(rows["users"].reshape(-1), expected[:, 0])
        np.testing.assert_array_equal(rows["pos_items"].reshape(-1), expected[:, 1])
        np.testing.assert_array_equal(rows["weights"].reshape(-1), (positions < n).astype(np.float32))
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[1], orders[2])
