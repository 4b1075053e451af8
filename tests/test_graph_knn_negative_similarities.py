"""Exact kNN when an item's k neighbours must include NEGATIVE cosine similarities.

Items are 2-D directions spread around the circle, so each has only about half the others at a
positive similarity; with k close to the number of items the tail of every list is negative.
The tiled scan pads its last block with zero rows (similarity 0 to everything): they must
never outrank a real item, whatever the block size. The reference is a dense float64
similarity matrix ranked by (similarity descending, id ascending) in plain numpy.
"""

import numpy as np
import pytest

from jaxrec.data.graph import knn_neighbours

N = 13


def features():
    angles = 2 * np.pi * np.arange(N) / N + 0.1 * np.sin(np.arange(N))  # distinct, no exact ties
    return np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32) * np.linspace(0.5, 3, N)[:, None]


def brute_force(x, k, mask, include_self):
    units = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    sims = units @ units.T
    indices = np.repeat(np.arange(N)[:, None], k, 1)
    valid = np.zeros((N, k), bool)
    values = np.zeros((N, k))
    for i in np.flatnonzero(mask):
        others = [j for j in np.flatnonzero(mask) if j != i]
        ranked = sorted(others, key=lambda j: (-sims[i, j], j))
        listed = ([i] if include_self else []) + ranked
        listed = listed[:k]
        indices[i, :len(listed)] = listed
        valid[i, :len(listed)] = True
        values[i, :len(listed)] = [1.0 if j == i else sims[i, j] for j in listed]
    return indices, values, valid


@pytest.mark.parametrize("include_self", [True, False])
@pytest.mark.parametrize("block_size", [8, 1000])
@pytest.mark.parametrize("masked", [False, True])
def test_negative_neighbours_are_ranked_and_padding_never_is(include_self, block_size, masked):
    x = features()
    mask = np.ones(N, bool)
    if masked:
        mask[[3, 8]] = False
    k = 10
    got = knn_neighbours(x, k, mask=mask, include_self=include_self, block_size=block_size)
    indices, values, valid = brute_force(x, k, mask, include_self)
    assert (values[valid] < 0).sum() >= N  # every list reaches into negative similarities
    np.testing.assert_array_equal(got.valid, valid)
    np.testing.assert_array_equal(np.where(valid, got.indices, -1), np.where(valid, indices, -1))
    np.testing.assert_allclose(got.similarities, values, atol=1e-5)
