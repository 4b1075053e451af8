"""The HNSW kNN (hnswlib): recall against the brute-force kNN, the exact builder's ranking and
self rule on what it finds, masks, the cache key, the error without hnswlib, and
LATTICE / FREEDOM built with it."""

import sys

import numpy as np
import pytest

from jaxrec.data.graph import HnswSettings, knn_neighbours
from jaxrec.errors import ConfigError

from test_graph_knn import brute_force_knn
from test_graph_knn_ivf import assert_settings_are_checked_and_keyed, clustered_features

from _model_testing import assert_lattice_and_freedom_build_the_exact_graphs

pytest.importorskip("hnswlib", reason="hnswlib (the optional 'ann' extra) is not installed")


def _recall(found, exact):
    return np.mean([np.intersect1d(f[1:], e[1:]).size / (exact.shape[1] - 1) for f, e in zip(found, exact)])


def test_recall_and_ranking_against_the_brute_force_knn():
    # Unclustered Gaussian rows (the hard case for an inverted file). Measured recall of the
    # 9 non-self neighbours: 0.99+ with the default settings; a random graph gives ~0.01.
    features = np.random.default_rng(0).standard_normal((1500, 16)).astype(np.float32)
    indices, values, valid = brute_force_knn(features, 10)
    got = knn_neighbours(features, 10, method="hnsw")
    assert _recall(got.indices, indices) >= 0.95
    assert got.valid.all()
    np.testing.assert_array_equal(got.indices[:, 0], np.arange(1500))  # itself first
    assert np.all(got.similarities[:, 0] == 1.0)
    # What it found is ranked like the exact builder: similarity descending, exact values.
    units = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = np.einsum("nd,nkd->nk", units, units[got.indices])[:, 1:]
    np.testing.assert_allclose(got.similarities[:, 1:], sims, atol=1e-5)
    assert np.all(np.diff(got.similarities[:, 1:], axis=1) <= 0)
    # A search list as large as the catalogue finds the exact lists.
    wide = knn_neighbours(features[:300], 10, method="hnsw", hnsw=HnswSettings(m=16, ef_construction=300,
                                                                              ef_search=300))
    np.testing.assert_array_equal(wide.indices, brute_force_knn(features[:300], 10)[0])


def test_masked_items_and_excluding_self():
    features = clustered_features(400, 8, 6, 0.4, 1)
    mask = np.random.default_rng(2).random(400) < 0.8
    indices, _, valid = brute_force_knn(features, 6, mask, include_self=False)
    got = knn_neighbours(features, 6, mask=mask, include_self=False, method="hnsw")
    np.testing.assert_array_equal(got.valid, valid)
    assert not np.any((got.indices == np.arange(400)[:, None]) & got.valid)
    assert np.all(mask[got.indices[got.valid]])  # no neighbour lacks the modality
    present = np.flatnonzero(mask)
    hits = [np.intersect1d(got.indices[i], indices[i]).size / 6 for i in present]
    assert np.mean(hits) >= 0.95
    assert np.all(got.indices[~mask] == np.arange(400)[~mask, None])


def test_fewer_items_than_k_leave_invalid_slots():
    got = knn_neighbours(np.random.default_rng(3).standard_normal((4, 3)), 6, method="hnsw")
    np.testing.assert_array_equal(got.valid, np.arange(6)[None, :].repeat(4, 0) < 4)
    np.testing.assert_array_equal(got.indices[:, 0], np.arange(4))
    assert all(sorted(row[:4]) == [0, 1, 2, 3] for row in got.indices.tolist())
    assert np.all(got.indices[:, 4:] == np.arange(4)[:, None])  # invalid slots hold the row's own id


def test_settings_are_checked_and_part_of_the_cache_key(tmp_path):
    assert_settings_are_checked_and_keyed(tmp_path, "hnsw", HnswSettings, (HnswSettings(m=8), HnswSettings(ef_search=50)), HnswSettings(m=1),
                                          "hnsw kNN: m must be an integer >= 2")


def test_a_clear_error_without_hnswlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "hnswlib", None)  # import hnswlib now raises ImportError
    with pytest.raises(ConfigError, match=r'needs the optional hnswlib package: pip install "jaxrec\[ann\]"'):
        knn_neighbours(np.eye(5, dtype=np.float32), 2, method="hnsw")


def test_lattice_and_freedom_build_with_hnsw():
    # 60 items, search lists of 24: HNSW finds the exact lists.
    assert_lattice_and_freedom_build_the_exact_graphs("hnsw")
    from jaxrec import models
    from jaxrec.data import make_synthetic

    data = make_synthetic(40, 60, n_interactions=500, dims={"text": 6, "image": 5}, seed=4)
    with pytest.raises(ConfigError, match="apply to knn_method 'ivf' only"):
        models.build("freedom", data, knn_k=3, graph_cache="none", knn_method="hnsw", knn_n_clusters=4,
                     knn_n_probe=2)
