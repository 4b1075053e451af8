"""User-item graph normalization and propagation against dense numpy matrices built by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrec.data import Interactions, MultimodalDataset
from jaxrec.data.graph import (BipartiteGraph, Edges, bipartite_graph, edge_sampling_weights, lightgcn_propagate,
                               normalize_edges, normalized_adjacency, propagate, propagate_bcoo, to_bcoo)
from jaxrec.errors import ConfigError, DataError

N_USERS, N_ITEMS = 7, 9


def random_pairs(seed=0, n=30):
    rng = np.random.default_rng(seed)
    users = rng.integers(0, N_USERS - 1, n)  # the last user has no interaction
    items = rng.integers(0, N_ITEMS - 1, n)  # nor does the last item
    return np.r_[users, users[:5]], np.r_[items, items[:5]]  # and some pairs repeat


def dense_adjacency(users, items, self_loops=False):
    n = N_USERS + N_ITEMS
    adjacency = np.zeros((n, n))
    for u, i in zip(users, items):
        adjacency[u, N_USERS + i] = adjacency[N_USERS + i, u] = 1.0
    return adjacency + np.eye(n) if self_loops else adjacency


def dense_normalized(adjacency, kind):
    degree = adjacency.sum(axis=1)
    with np.errstate(divide="ignore"):
        inv_sqrt = np.where(degree > 0, degree ** -0.5, 0.0)
        inv = np.where(degree > 0, 1.0 / degree, 0.0)
    if kind == "sym":
        return inv_sqrt[:, None] * adjacency * inv_sqrt[None, :]
    return inv[:, None] * adjacency


@pytest.mark.parametrize("kind,self_loops", [("sym", False), ("sym", True), ("rw", True), ("rw", False), ("none", False)])
def test_normalized_adjacency_matches_dense(kind, self_loops):
    users, items = random_pairs()
    graph = BipartiteGraph.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    edges = normalized_adjacency(graph, normalization=kind, self_loops=self_loops)
    adjacency = dense_adjacency(users, items, self_loops)
    expected = adjacency if kind == "none" else dense_normalized(adjacency, kind)
    np.testing.assert_allclose(edges.to_dense(N_USERS + N_ITEMS), expected, rtol=1e-6, atol=1e-7)
    assert np.all(np.diff(edges.rows) >= 0), "rows must come sorted"
    assert edges.n_edges == 2 * len({(u, i) for u, i in zip(users, items)}) + self_loops * (N_USERS + N_ITEMS)


def test_sym_weight_is_inverse_sqrt_degree_product():
    users, items = random_pairs(1)
    graph = BipartiteGraph.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    pairs = sorted({(int(u), int(i)) for u, i in zip(users, items)})
    deg_u = {u: sum(1 for p in pairs if p[0] == u) for u, _ in pairs}
    deg_i = {i: sum(1 for p in pairs if p[1] == i) for _, i in pairs}
    expected = [1 / np.sqrt(deg_u[u] * deg_i[i]) for u, i in pairs]
    assert list(zip(graph.users.tolist(), graph.items.tolist())) == pairs
    np.testing.assert_allclose(edge_sampling_weights(graph), expected, rtol=1e-6)


def test_bipartite_graph_uses_only_the_training_split():
    users = np.array([0, 0, 1, 2, 2])
    items = np.array([1, 2, 0, 2, 1])
    split = np.array([0, 1, 0, 2, 0], np.int8)
    dataset = MultimodalDataset("toy", 3, 3, Interactions(users, items, split))
    graph = bipartite_graph(dataset)
    assert list(zip(graph.users.tolist(), graph.items.tolist())) == [(0, 1), (1, 0), (2, 1)]
    assert graph.n_nodes == 6


def test_bad_pairs_raise_data_errors():
    with pytest.raises(DataError, match="items"):
        BipartiteGraph.from_pairs(np.array([0]), np.array([N_ITEMS]), n_users=N_USERS, n_items=N_ITEMS)
    with pytest.raises(DataError, match="integers"):
        BipartiteGraph.from_pairs(np.array([0.5]), np.array([1]), n_users=N_USERS, n_items=N_ITEMS)
    with pytest.raises(ConfigError):
        normalized_adjacency(BipartiteGraph.from_pairs([0], [0], n_users=1, n_items=1), normalization="l1")


@pytest.mark.parametrize("chunk_size", [None, 7, 64])
def test_propagate_matches_dense_product(chunk_size):
    users, items = random_pairs(2)
    graph = BipartiteGraph.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    edges = normalized_adjacency(graph).to_device()
    embeddings = np.random.default_rng(3).standard_normal((graph.n_nodes, 5)).astype(np.float32)
    expected = dense_normalized(dense_adjacency(users, items), "sym") @ embeddings
    for sorted_flag in (False, True):
        fn = jax.jit(lambda e, x, s=sorted_flag: propagate(e, x, indices_are_sorted=s, chunk_size=chunk_size))
        np.testing.assert_allclose(fn(edges, embeddings), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(propagate_bcoo(to_bcoo(edges, graph.n_nodes), embeddings), expected, rtol=1e-5, atol=1e-6)


def test_propagate_sums_repeated_edges_and_ignores_padding():
    edges = Edges(np.array([0, 0, 1, 2]), np.array([1, 1, 2, 0]), np.array([0.5, 0.25, 2.0, 0.0], np.float32))
    x = np.array([[1.0], [10.0], [100.0]], np.float32)
    np.testing.assert_allclose(propagate(edges, x), [[7.5], [200.0], [0.0]])


def test_lightgcn_layer_mean_and_layers():
    users, items = random_pairs(4)
    graph = BipartiteGraph.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    edges = normalized_adjacency(graph).to_device()
    e0 = np.random.default_rng(5).standard_normal((graph.n_nodes, 4))
    a = dense_normalized(dense_adjacency(users, items), "sym")
    mean, layers = jax.jit(lambda e, x: lightgcn_propagate(e, x, 3, chunk_size=16))(edges, e0.astype(np.float32))
    expected_layers = [e0, a @ e0, a @ a @ e0, a @ a @ a @ e0]
    assert len(layers) == 4
    for got, want in zip(layers, expected_layers):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mean, sum(expected_layers) / 4, rtol=1e-5, atol=1e-6)
    mean0, layers0 = lightgcn_propagate(edges, e0, 0)
    np.testing.assert_allclose(mean0, e0, rtol=1e-6)
    assert len(layers0) == 1
    with pytest.raises(ConfigError):
        lightgcn_propagate(edges, e0, -1)


def test_propagation_gradients():
    users, items = random_pairs(6)
    graph = BipartiteGraph.from_pairs(users, items, n_users=N_USERS, n_items=N_ITEMS)
    edges = normalized_adjacency(graph)
    a = dense_normalized(dense_adjacency(users, items), "sym")
    x = np.random.default_rng(7).standard_normal((graph.n_nodes, 3))
    loss = lambda emb: jnp.sum(lightgcn_propagate(edges.to_device(), emb, 2, chunk_size=8)[0] ** 2)  # noqa: E731
    m = (np.eye(len(a)) + a + a @ a) / 3
    np.testing.assert_allclose(jax.grad(loss)(x.astype(np.float32)), 2 * m.T @ m @ x, rtol=1e-4, atol=1e-5)
    with jax.enable_x64(True):
        check_grads(jax.jit(lambda w, emb: propagate(Edges(edges.rows, edges.cols, w), emb, chunk_size=8)),
                    (jnp.asarray(edges.weights, jnp.float64), jnp.asarray(x)), order=1, modes=["rev"])


def test_normalize_edges_on_device_matches_dense_for_directed_weighted_graphs():
    rng = np.random.default_rng(8)
    n = 6
    rows = np.repeat(np.arange(n), 3)
    cols = rng.integers(0, n, rows.size)
    weights = rng.uniform(-0.2, 1.0, rows.size).astype(np.float32)
    weights[rows == 5] = -0.5  # a negative row sum: MMRec would produce NaN, we give 0
    dense = np.zeros((n, n))
    np.add.at(dense, (rows, cols), weights)
    degree = dense.sum(axis=1)
    safe = np.where(degree > 0, degree, 1.0)
    expected = {"sym": np.where(degree > 0, safe ** -0.5, 0.0)[:, None] * dense * np.where(degree > 0, safe ** -0.5, 0.0),
                "rw": np.where(degree > 0, 1.0 / safe, 0.0)[:, None] * dense}
    for kind in ("sym", "rw"):
        got = jax.jit(lambda e, k=kind: normalize_edges(e, n, normalization=k))(Edges(rows, cols, weights))
        np.testing.assert_allclose(Edges(rows, cols, got.weights).to_dense(n), expected[kind], rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(got.weights)[rows == 5] == 0)
    with jax.enable_x64(True):
        positive = jnp.asarray(np.abs(weights) + 0.1, jnp.float64)
        check_grads(jax.jit(lambda w: normalize_edges(Edges(rows, cols, w), n).weights), (positive,), order=1,
                    modes=["rev"])
