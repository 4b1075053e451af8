"""``propagate`` drops every edge whose row or column lies outside ``[0, n)``, as its docstring
says and as the CPU kernel (``csr_propagate``) does -- in both the one-shot and the chunked sum.

Without an explicit mask, XLA's gather clamps an out-of-range column (n -> n - 1) and wraps a
negative one (-1 -> n - 1), and the chunked scatter-add wraps a negative row onto the last node.
The reference is a Python loop over the edges that skips the outside ones.
"""

import jax
import numpy as np
import pytest

from jaxrec.data.graph import Edges, propagate

N = 6
ROWS = np.array([-2, -1, 0, 0, 1, 2, 3, 3, 5, 6, 9], np.int32)   # sorted; -2, -1, 6, 9 outside
COLS = np.array([1, 0, 6, -1, 2, 7, 4, -4, 5, 1, 2], np.int32)   # 6, -1, 7, -4 outside
WEIGHTS = np.arange(1, ROWS.size + 1, dtype=np.float32)


def reference(x):
    out = np.zeros_like(x)
    for r, c, w in zip(ROWS, COLS, WEIGHTS):
        if 0 <= r < N and 0 <= c < N:
            out[r] += w * x[c]
    return out


@pytest.mark.parametrize("chunk_size, indices_are_sorted", [(None, False), (None, True), (4, True)])
def test_edges_outside_the_nodes_add_nothing(chunk_size, indices_are_sorted):
    x = np.random.default_rng(0).normal(size=(N, 3)).astype(np.float32)
    got = propagate(Edges(ROWS, COLS, WEIGHTS), x, chunk_size=chunk_size, indices_are_sorted=indices_are_sorted)
    np.testing.assert_allclose(np.asarray(got), reference(x), rtol=1e-6, atol=1e-6)


def test_the_gradient_ignores_edges_outside_the_nodes():
    x = np.random.default_rng(1).normal(size=(N, 2)).astype(np.float32)
    grad = jax.grad(lambda e: propagate(Edges(ROWS, COLS, WEIGHTS), e, chunk_size=4).sum())(x)
    expected = np.zeros_like(x)
    for r, c, w in zip(ROWS, COLS, WEIGHTS):
        if 0 <= r < N and 0 <= c < N:
            expected[c] += w
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-6)
