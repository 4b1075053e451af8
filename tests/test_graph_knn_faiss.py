"""The faiss inverted-file kNN: recall against the brute-force kNN, the exact builder's ranking
and self rule on what it finds, masks, the cache key, the error without faiss, and FREEDOM
built with it."""

import sys

import numpy as np
import pytest

from jaxrec.data import Interactions, Modality, MultimodalDataset
from jaxrec.data.graph import FaissIvfSettings, GraphCache, item_knn_neighbours, knn_cache_key, knn_neighbours
from jaxrec.errors import ConfigError

from test_graph_knn import brute_force_knn
from test_graph_knn_ivf import clustered_features

pytest.importorskip("faiss", reason="faiss-cpu (the optional 'ann' extra) is not installed")


def _recall(found, exact):
    return np.mean([np.intersect1d(f[1:], e[1:]).size / (exact.shape[1] - 1) for f, e in zip(found, exact)])


def test_recall_and_ranking_against_the_brute_force_knn():
    # 2,000 clustered rows, 32 lists, 8 probed: measured recall of the 9 non-self neighbours 1.0;
    # 1 probed list (a quarter of the candidates' lists missed) stays well below 0.999.
    features = clustered_features(2000, 16, 12, 0.6, 0)
    indices, _, _ = brute_force_knn(features, 10)
    got = knn_neighbours(features, 10, method="faiss", faiss=FaissIvfSettings(n_list=32, n_probe=8))
    assert _recall(got.indices, indices) >= 0.95
    assert got.valid.all()
    np.testing.assert_array_equal(got.indices[:, 0], np.arange(2000))  # itself first
    assert np.all(got.similarities[:, 0] == 1.0)
    units = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = np.einsum("nd,nkd->nk", units, units[got.indices])[:, 1:]
    np.testing.assert_allclose(got.similarities[:, 1:], sims, atol=1e-5)
    assert np.all(np.diff(got.similarities[:, 1:], axis=1) <= 0)
    # Every list probed: the exact lists (ties by smaller id, as the exact builder).
    every = knn_neighbours(features[:500], 10, method="faiss", faiss=FaissIvfSettings(n_list=8, n_probe=8))
    np.testing.assert_array_equal(every.indices, brute_force_knn(features[:500], 10)[0])
    # Fewer probes find fewer true neighbours: the probe setting is honoured.
    narrow = knn_neighbours(features, 10, method="faiss", faiss=FaissIvfSettings(n_list=128, n_probe=1))
    assert _recall(narrow.indices, indices) < _recall(got.indices, indices)


def test_masked_items_excluding_self_and_small_catalogues():
    features = clustered_features(400, 8, 6, 0.4, 1)
    mask = np.random.default_rng(2).random(400) < 0.8
    indices, _, valid = brute_force_knn(features, 6, mask, include_self=False)
    got = knn_neighbours(features, 6, mask=mask, include_self=False, method="faiss",
                         faiss=FaissIvfSettings(n_list=8, n_probe=8))
    np.testing.assert_array_equal(got.valid, valid)
    np.testing.assert_array_equal(got.indices[mask], indices[mask])
    assert np.all(got.indices[~mask] == np.arange(400)[~mask, None])
    # Fewer items than k: invalid trailing slots holding the row's own id.
    tiny = knn_neighbours(np.random.default_rng(3).standard_normal((4, 3)), 6, method="faiss")
    np.testing.assert_array_equal(tiny.valid, np.arange(6)[None, :].repeat(4, 0) < 4)
    np.testing.assert_array_equal(tiny.indices[:, 0], np.arange(4))
    assert np.all(tiny.indices[:, 4:] == np.arange(4)[:, None])


def test_settings_checked_cache_key_and_missing_library(tmp_path, monkeypatch):
    features = clustered_features(200, 4, 6, 0.3, 9)
    assert len({knn_cache_key(features, None, k=5), knn_cache_key(features, None, k=5, method="faiss"),
                knn_cache_key(features, None, k=5, method="hnsw")}) == 3
    with pytest.raises(ConfigError, match="faiss kNN: n_probe must be an integer >= 1"):
        knn_neighbours(features, 5, method="faiss", faiss=FaissIvfSettings(n_probe=0))
    with pytest.raises(ConfigError, match="FaissIvfSettings"):
        knn_neighbours(features, 5, method="faiss", faiss={"n_list": 8})
    dataset = MultimodalDataset("toy", 2, 200, Interactions(np.array([0]), np.array([1]), np.zeros(1, np.int8)),
                                modalities={"text": Modality("text", features, np.ones(200, bool))})
    cache = GraphCache(tmp_path)
    first = item_knn_neighbours(dataset, "text", k=5, cache=cache, method="faiss")
    again = item_knn_neighbours(dataset, "text", k=5, cache=cache, method="faiss")
    assert len(list(tmp_path.glob("knn_neighbours-*.npz"))) == 1
    np.testing.assert_array_equal(first.indices, again.indices)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    with pytest.raises(ConfigError, match=r'needs the optional faiss-cpu package: pip install "jaxrec\[ann\]"'):
        knn_neighbours(np.eye(5, dtype=np.float32), 2, method="faiss")


def test_freedom_builds_with_faiss():
    import jax

    from jaxrec import models
    from jaxrec.data import make_synthetic

    data = make_synthetic(40, 60, n_interactions=500, dims={"text": 6, "image": 5}, seed=4)
    # 60 items: the default 4,096 lists are capped at 60 and 16 probed; the lists differ from the
    # exact ones only where a true neighbour lies in an unprobed list, so compare by recall.
    freedom = models.build("freedom", data, knn_k=3, modalities=["image", "text"], graph_cache="none",
                           knn_method="faiss")
    reference = models.build("freedom", data, knn_k=3, modalities=["image", "text"], graph_cache="none")
    def edge_set(built):
        graph = built.ctx["item_graph"]
        rows, cols, weights = (np.asarray(a) for a in (graph.rows, graph.cols, graph.weights))
        return set(zip(rows[weights > 0].tolist(), cols[weights > 0].tolist()))

    got, want = edge_set(freedom), edge_set(reference)
    assert len(got & want) >= 0.9 * len(want)
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(freedom.ctx)
               if np.issubdtype(np.asarray(leaf).dtype, np.floating))
