"""The cluster-blocked join kNN: recall against an independent brute-force kNN, the exact result
when every list is probed (ties included), the edge list of the other methods, masks and
excluded self, "auto", the cache key, threads, and LATTICE / FREEDOM built with it."""

import sys

import numpy as np

from jaxrec.data.graph import JoinSettings, knn_cache_key, knn_edges, knn_neighbours, resolve_knn_method
from jaxrec.data.graph import _knn

from test_graph_knn import brute_force_knn, exact_tie_features
from test_graph_knn_ivf import assert_settings_are_checked_and_keyed, clustered_features

from _model_testing import assert_lattice_and_freedom_build_the_exact_graphs


def _recall(found, exact):
    return np.mean([np.intersect1d(f[1:], e[1:]).size / (exact.shape[1] - 1) for f, e in zip(found, exact)])


def test_recall_and_ranking_against_the_brute_force_knn():
    # Unclustered 16-d Gaussian rows, the hard case for an inverted file: 32 lists, 6 probed
    # per item. Measured recall of the 9 non-self neighbours 0.93 (0.83 with 4 probed, 1.0
    # with all 32); a random graph gives ~0.003.
    features = np.random.default_rng(0).standard_normal((3000, 16)).astype(np.float32)
    indices, values, _ = brute_force_knn(features, 10)
    got = knn_neighbours(features, 10, method="join", join=JoinSettings(n_lists=32, n_probe=6))
    assert _recall(got.indices, indices) >= 0.9
    assert got.valid.all()
    np.testing.assert_array_equal(got.indices[:, 0], np.arange(3000))  # itself first
    assert np.all(got.similarities[:, 0] == 1.0)
    # What it found is ranked like the exact builder: similarity descending, exact values.
    units = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = np.einsum("nd,nkd->nk", units, units[got.indices])[:, 1:]
    np.testing.assert_allclose(got.similarities[:, 1:], sims, atol=1e-5)
    assert np.all(np.diff(got.similarities[:, 1:], axis=1) <= 0)
    # Every list probed: every pair compared, the exact lists.
    full = knn_neighbours(features, 10, method="join", join=JoinSettings(n_lists=32, n_probe=32))
    np.testing.assert_array_equal(full.indices, indices)
    np.testing.assert_allclose(full.similarities, values, atol=1e-5)


def test_all_lists_probed_is_exact_with_ties_and_the_same_edge_list():
    # Cosines are exact multiples of 1/4: many exact ties, resolved to the smaller id.
    features = exact_tie_features(500, 1)
    indices, _, _ = brute_force_knn(features, 7)
    got = knn_neighbours(features, 7, method="join", join=JoinSettings(n_lists=8, n_probe=8))
    np.testing.assert_array_equal(got.indices, indices)
    exact = knn_neighbours(features, 7)
    for weighted in (False, True):
        a, b = knn_edges(got, weighted=weighted), knn_edges(exact, weighted=weighted)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.cols, b.cols)
        np.testing.assert_allclose(a.weights, b.weights, atol=1e-6)


def test_masked_items_and_excluding_self():
    features = clustered_features(400, 8, 6, 0.4, 1)
    mask = np.random.default_rng(2).random(400) < 0.8
    indices, _, valid = brute_force_knn(features, 6, mask, include_self=False)
    got = knn_neighbours(features, 6, mask=mask, include_self=False, method="join",
                         join=JoinSettings(n_lists=8, n_probe=4))
    np.testing.assert_array_equal(got.valid, valid)
    assert not np.any((got.indices == np.arange(400)[:, None]) & got.valid)
    assert np.all(mask[got.indices[got.valid]])  # no neighbour lacks the modality
    present = np.flatnonzero(mask)
    assert np.mean([np.intersect1d(got.indices[i], indices[i]).size / 6 for i in present]) >= 0.95
    assert np.all(got.indices[~mask] == np.arange(400)[~mask, None])


def test_fewer_items_than_k_leave_invalid_slots():
    got = knn_neighbours(np.random.default_rng(3).standard_normal((4, 3)), 6, method="join")
    np.testing.assert_array_equal(got.valid, np.arange(6)[None, :].repeat(4, 0) < 4)
    np.testing.assert_array_equal(got.indices[:, 0], np.arange(4))
    assert all(sorted(row[:4]) == [0, 1, 2, 3] for row in got.indices.tolist())
    assert np.all(got.indices[:, 4:] == np.arange(4)[:, None])  # invalid slots hold the row's own id


def test_auto_is_exact_for_small_catalogues_and_join_for_large(monkeypatch):
    features = clustered_features(300, 5, 6, 0.3, 4)
    assert resolve_knn_method("auto", 300) == "exact"
    assert resolve_knn_method("auto", 10**6) == "join"
    np.testing.assert_array_equal(knn_neighbours(features, 5, method="auto").indices,
                                  knn_neighbours(features, 5).indices)
    monkeypatch.setattr(_knn, "AUTO_APPROXIMATE_FROM", 100)
    assert knn_cache_key(features, None, k=5, method="auto") == knn_cache_key(features, None, k=5, method="join")
    np.testing.assert_array_equal(knn_neighbours(features, 5, method="auto").indices,
                                  knn_neighbours(features, 5, method="join").indices)


def test_threads_and_threadpoolctl_change_nothing(monkeypatch):
    features = np.random.default_rng(5).standard_normal((2000, 12)).astype(np.float32)
    settings = JoinSettings(n_lists=16, n_probe=3)
    one = knn_neighbours(features, 8, method="join", join=settings._replace(threads=1))
    two = knn_neighbours(features, 8, method="join", join=settings._replace(threads=2))
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)  # import threadpoolctl now raises ImportError
    without = knn_neighbours(features, 8, method="join", join=settings._replace(threads=2))
    for other in (two, without):
        np.testing.assert_array_equal(one.indices, other.indices)
        np.testing.assert_array_equal(one.similarities, other.similarities)


def test_settings_are_checked_and_part_of_the_cache_key(tmp_path):
    assert_settings_are_checked_and_keyed(tmp_path, "join", JoinSettings, (JoinSettings(n_lists=8), JoinSettings(n_probe=3)), JoinSettings(n_probe=0),
                                          "join kNN: n_probe must be an integer >= 1")


def test_lattice_and_freedom_build_with_join():
    # 60 items: one list, every pair compared.
    assert_lattice_and_freedom_build_the_exact_graphs("join")
