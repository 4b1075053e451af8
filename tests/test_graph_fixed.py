"""FixedGraph / propagate_fixed: forward and gradients against dense numpy matrices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec.data import graph as jgraph
from jaxrec.errors import DataError


def _graph(normalization, seed=0, n_users=7, n_items=9):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users - 1, 30)          # the last user has no edge
    items = rng.integers(0, n_items, 30)
    bip = jgraph.BipartiteGraph.from_pairs(users, items, n_users=n_users, n_items=n_items)
    return bip, jgraph.normalized_adjacency(bip, normalization=normalization)


def _dense_normalized(bip, normalization):
    """D^-1/2 A D^-1/2 or D^-1 A of the 0/1 bipartite matrix, written out densely."""
    n = bip.n_nodes
    a = np.zeros((n, n))
    a[bip.users, bip.items + bip.n_users] = 1.0
    a[bip.items + bip.n_users, bip.users] = 1.0
    deg = a.sum(1)
    inv = np.where(deg > 0, 1.0 / np.where(deg > 0, deg, 1.0), 0.0)
    if normalization == "sym":
        return np.sqrt(inv)[:, None] * a * np.sqrt(inv)[None, :]
    return inv[:, None] * a


@pytest.mark.parametrize("normalization,symmetric", [("sym", True), ("rw", False)])
@pytest.mark.parametrize("chunk_size", [None, 16])
def test_forward_and_gradient_match_dense(normalization, symmetric, chunk_size):
    bip, edges = _graph(normalization)
    dense = _dense_normalized(bip, normalization)
    graph = jgraph.fixed_graph(edges, symmetric=symmetric).to_device()
    assert (graph.transposed is None) == symmetric
    x = np.random.default_rng(1).normal(size=(bip.n_nodes, 3)).astype(np.float32)
    target = np.random.default_rng(2).normal(size=(bip.n_nodes, 3))

    y = jgraph.propagate_fixed(graph, x, chunk_size=chunk_size)
    np.testing.assert_allclose(np.asarray(y), dense @ x, rtol=1e-5, atol=1e-6)

    # L = sum(target * tanh(A (A x))): dL/dx = A^T [(1 - tanh^2) * target] propagated back twice
    def loss(x):
        h = jgraph.propagate_fixed(graph, jgraph.propagate_fixed(graph, x, chunk_size=chunk_size),
                                   chunk_size=chunk_size)
        return jnp.sum(jnp.asarray(target, jnp.float32) * jnp.tanh(h))

    h1 = dense @ x
    h2 = dense @ h1
    expected = dense.T @ (dense.T @ ((1 - np.tanh(h2) ** 2) * target))
    np.testing.assert_allclose(np.asarray(jax.grad(loss)(jnp.asarray(x))), expected, rtol=1e-4, atol=1e-5)


def test_lightgcn_propagate_accepts_fixed_graph():
    bip, edges = _graph("sym", seed=3)
    dense = _dense_normalized(bip, "sym")
    graph = jgraph.fixed_graph(edges, symmetric=True).to_device()
    x = np.random.default_rng(4).normal(size=(bip.n_nodes, 4)).astype(np.float32)
    mean, layers = jgraph.lightgcn_propagate(graph, x, 2)
    np.testing.assert_allclose(np.asarray(mean), (x + dense @ x + dense @ dense @ x) / 3, rtol=1e-5, atol=1e-6)
    assert len(layers) == 3
    grad = jax.grad(lambda x: jnp.sum(jgraph.lightgcn_propagate(graph, x, 2)[0][:, 0]))(jnp.asarray(x))
    ones = np.zeros_like(x, dtype=np.float64)
    ones[:, 0] = 1.0
    np.testing.assert_allclose(np.asarray(grad), (ones + dense.T @ ones + dense.T @ dense.T @ ones) / 3,
                               rtol=1e-5, atol=1e-6)


def test_fixed_graph_inside_jit_as_argument():
    bip, edges = _graph("rw", seed=5)
    dense = _dense_normalized(bip, "rw")
    graph = jgraph.fixed_graph(edges).to_device()
    x = np.random.default_rng(6).normal(size=(bip.n_nodes, 2)).astype(np.float32)
    grad = jax.jit(jax.grad(lambda g, x: jnp.sum(jgraph.propagate_fixed(g, x) ** 2), argnums=1))(graph, x)
    np.testing.assert_allclose(np.asarray(grad), 2 * dense.T @ (dense @ x), rtol=1e-4, atol=1e-5)


def test_symmetric_claim_is_checked_and_rows_must_be_sorted():
    bip, edges = _graph("rw", seed=7)
    with pytest.raises(DataError, match="symmetric"):
        jgraph.fixed_graph(edges, symmetric=True)
    reversed_edges = jgraph.Edges(edges.rows[::-1], edges.cols[::-1], edges.weights[::-1])
    with pytest.raises(DataError, match="row-sorted"):
        jgraph.fixed_graph(reversed_edges)
