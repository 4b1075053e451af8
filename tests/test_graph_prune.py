"""FREEDOM's degree-sensitive pruning: kept-graph weights, and sampling laws checked statistically.

The reference law is successive weighted sampling without replacement (what
``torch.multinomial(weights, n, replacement=False)`` draws), computed exactly by enumerating
all ordered draws on a small graph.
"""

import itertools

import jax
import numpy as np
import pytest
from scipy import stats

from jaxrec.data.graph import (BipartiteGraph, DevicePairs, edge_sampling_weights, kept_edge_count,
                               normalized_adjacency, prune_edges, prune_edges_jax)
from jaxrec.data.graph._prune import _largest_mask
from jaxrec.errors import ConfigError

# Degrees differ a lot, so 1/sqrt(d_u d_i) spans a wide range: user 0 and item 0 are hubs.
USERS = np.array([0, 0, 0, 0, 1, 1, 2, 3])
ITEMS = np.array([0, 1, 2, 3, 0, 4, 0, 5])
GRAPH = BipartiteGraph.from_pairs(USERS, ITEMS, n_users=4, n_items=6)


def successive_inclusion_probabilities(weights, n_keep):
    """P(edge e is among the n_keep draws), summing over all ordered draw sequences."""
    weights = np.asarray(weights, np.float64)
    inclusion = np.zeros(weights.size)
    for sequence in itertools.permutations(range(weights.size), n_keep):
        probability, remaining = 1.0, weights.sum()
        for e in sequence:
            probability *= weights[e] / remaining
            remaining -= weights[e]
        inclusion[list(sequence)] += probability
    return inclusion


def kept_pairs(edges, n_users):
    rows, cols = np.asarray(edges.rows), np.asarray(edges.cols)
    user_rows = rows < n_users
    return sorted(zip(rows[user_rows].tolist(), (cols[user_rows] - n_users).tolist()))


def check_kept_graph(edges, graph, n_keep):
    """Sizes, symmetry, sorted rows and 1/sqrt(d'_u d'_i) weights of the kept graph."""
    assert edges.n_edges == 2 * n_keep
    pairs = kept_pairs(edges, graph.n_users)
    assert len(set(pairs)) == n_keep
    assert set(pairs) <= set(zip(graph.users.tolist(), graph.items.tolist()))
    assert np.all(np.diff(np.asarray(edges.rows)) >= 0)
    kept_graph = BipartiteGraph.from_pairs([p[0] for p in pairs], [p[1] for p in pairs],
                                           n_users=graph.n_users, n_items=graph.n_items)
    # The kept graph, normalized from scratch with its own degrees.
    dense = np.zeros((graph.n_nodes, graph.n_nodes))
    du, di = kept_graph.user_degrees(), kept_graph.item_degrees()
    for u, i in pairs:
        dense[u, graph.n_users + i] = dense[graph.n_users + i, u] = 1 / np.sqrt(du[u] * di[i])
    np.testing.assert_allclose(edges.to_dense(graph.n_nodes), dense, rtol=1e-6)


@pytest.mark.parametrize("dropout", [0.3, 0.5, 0.9])
def test_host_pruning_keeps_a_renormalized_subgraph(dropout):
    rng = np.random.default_rng(0)
    users, items = rng.integers(0, 30, 400), rng.integers(0, 50, 400)
    graph = BipartiteGraph.from_pairs(users, items, n_users=30, n_items=50)
    n_keep = kept_edge_count(graph.n_edges, dropout)
    assert n_keep == int(graph.n_edges * (1 - dropout))
    check_kept_graph(prune_edges(graph, dropout=dropout, rng=np.random.default_rng(1)), graph, n_keep)


def test_device_pruning_keeps_a_renormalized_subgraph():
    rng = np.random.default_rng(2)
    graph = BipartiteGraph.from_pairs(rng.integers(0, 30, 400), rng.integers(0, 50, 400), n_users=30, n_items=50)
    for dropout in (0.2, 0.8):  # both top-k branches: keep side and drop side
        n_keep = kept_edge_count(graph.n_edges, dropout)
        prune = jax.jit(lambda key, pairs, n=n_keep: prune_edges_jax(key, pairs, n_users=30, n_items=50, n_keep=n))
        edges = prune(jax.random.key(3), DevicePairs.from_graph(graph))
        check_kept_graph(edges, graph, n_keep)


def test_pruning_is_reproducible_and_zero_dropout_is_the_full_graph():
    a = prune_edges(GRAPH, dropout=0.5, rng=np.random.default_rng(7))
    b = prune_edges(GRAPH, dropout=0.5, rng=np.random.default_rng(7))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    full = prune_edges(GRAPH, dropout=0.0, rng=np.random.default_rng(7))
    np.testing.assert_allclose(full.to_dense(GRAPH.n_nodes), normalized_adjacency(GRAPH).to_dense(GRAPH.n_nodes))
    with pytest.raises(ConfigError):
        prune_edges(GRAPH, dropout=1.0, rng=np.random.default_rng(7))


def chi_square_pvalue(counts, probabilities):
    expected = probabilities * counts.sum()
    return stats.chisquare(counts, expected).pvalue


def test_single_draw_frequencies_are_proportional_to_inverse_sqrt_degrees():
    weights = edge_sampling_weights(GRAPH)
    probabilities = weights / weights.sum()
    draws = 3000
    dropout = 1 - 1.5 / GRAPH.n_edges  # int(E * (1 - dropout)) == 1
    rng = np.random.default_rng(11)
    counts = np.zeros(GRAPH.n_edges)
    index = {pair: e for e, pair in enumerate(zip(GRAPH.users.tolist(), GRAPH.items.tolist()))}
    for _ in range(draws):
        (pair,) = kept_pairs(prune_edges(GRAPH, dropout=dropout, rng=rng), GRAPH.n_users)
        counts[index[pair]] += 1
    assert chi_square_pvalue(counts, probabilities) > 1e-3
    # And not uniform: the hub-hub edge (0, 0) is drawn far less than the leaf edge (3, 5).
    assert counts[index[(0, 0)]] * 2 < counts[index[(3, 5)]]


def test_multi_draw_inclusion_matches_successive_sampling_without_replacement():
    weights = edge_sampling_weights(GRAPH)
    n_keep = 3
    exact = successive_inclusion_probabilities(weights, n_keep)
    dropout = 1 - (n_keep + 0.5) / GRAPH.n_edges
    assert kept_edge_count(GRAPH.n_edges, dropout) == n_keep
    index = {pair: e for e, pair in enumerate(zip(GRAPH.users.tolist(), GRAPH.items.tolist()))}

    host_counts, rng = np.zeros(GRAPH.n_edges), np.random.default_rng(12)
    for _ in range(2000):
        for pair in kept_pairs(prune_edges(GRAPH, dropout=dropout, rng=rng), GRAPH.n_users):
            host_counts[index[pair]] += 1

    pairs = DevicePairs.from_graph(GRAPH)
    draws = 4000
    prune = jax.vmap(lambda key: prune_edges_jax(key, pairs, n_users=4, n_items=6, n_keep=n_keep)[:2])
    rows, cols = (np.asarray(a) for a in jax.jit(prune)(jax.random.split(jax.random.key(13), draws)))
    device_counts = np.zeros(GRAPH.n_edges)
    for r, c in zip(rows[:, :n_keep].ravel(), cols[:, :n_keep].ravel()):
        device_counts[index[(int(r), int(c) - 4)]] += 1

    for counts, n_draws in ((host_counts, 2000), (device_counts, draws)):
        frequency = counts / n_draws
        sigma = np.sqrt(exact * (1 - exact) / n_draws)
        assert np.all(np.abs(frequency - exact) < 4.5 * sigma + 1e-9), (frequency, exact)
    # With-replacement-free inclusion is not proportional to the weights: the test can tell.
    proportional = n_keep * weights / weights.sum()
    assert np.max(np.abs(exact - proportional)) > 0.05


def test_device_selection_of_the_largest_keys_handles_ties_by_index():
    rng = np.random.default_rng(20)
    select = jax.jit(_largest_mask, static_argnums=1)
    for _ in range(3):
        values = rng.choice(np.array([-3.5, -1.0, 0.0, 0.25, 2.0, 7.0, np.inf, -np.inf], np.float32), 60)
        order = np.lexsort((np.arange(60), -values.astype(np.float64)))  # value desc, then index asc
        for count in (0, 1, 13, 30, 59, 60):
            expected = np.zeros(60, bool)
            expected[order[:count]] = True
            np.testing.assert_array_equal(select(values, count), expected)
