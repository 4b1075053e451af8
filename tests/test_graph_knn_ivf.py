"""The inverted-file (IVF) kNN: exact when every cluster is probed, high recall on clustered
data, spherical k-means at a fixed point, settings checks and the cache key."""

import numpy as np
import pytest

from jaxrec.data import Interactions, Modality, MultimodalDataset
from jaxrec.data.graph import (GraphCache, IvfSettings, cache_key, item_knn_neighbours, knn_cache_key, knn_neighbours,
                               spherical_kmeans)
from jaxrec.data.graph._ivf import probe_lists
from jaxrec.errors import ConfigError

from test_graph_knn import brute_force_knn, exact_tie_features


def clustered_features(n, n_centres, dim, noise, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_centres, dim)).astype(np.float32)
    return centres[rng.integers(0, n_centres, n)] + noise * rng.standard_normal((n, dim)).astype(np.float32)


def assert_settings_are_checked_and_keyed(tmp_path, method, settings_type, changed, bad, bad_match):
    """A kNN method's settings (``settings_type``, passed as the keyword ``method``): the method's
    default and each of ``changed`` give cache keys of their own (apart from the exact one); its
    ``threads`` field changes the speed, not the key; ``bad`` raises ``ConfigError(bad_match)``;
    a dict in place of ``settings_type`` raises naming the type; two builds through a
    :class:`GraphCache` store one file and the same lists."""
    features = clustered_features(200, 4, 6, 0.3, 9)
    keys = {knn_cache_key(features, None, k=5), knn_cache_key(features, None, k=5, method=method)}
    keys |= {knn_cache_key(features, None, k=5, method=method, **{method: settings}) for settings in changed}
    assert len(keys) == 2 + len(changed)
    assert knn_cache_key(features, None, k=5, method=method, **{method: settings_type(threads=2)}) == \
        knn_cache_key(features, None, k=5, method=method)
    with pytest.raises(ConfigError, match=bad_match):
        knn_neighbours(features, 5, method=method, **{method: bad})
    with pytest.raises(ConfigError, match=settings_type.__name__):
        knn_neighbours(features, 5, method=method, **{method: bad._asdict()})
    dataset = MultimodalDataset("toy", 2, 200, Interactions(np.array([0]), np.array([1]), np.zeros(1, np.int8)),
                                modalities={"text": Modality("text", features, np.ones(200, bool))})
    cache = GraphCache(tmp_path)
    first = item_knn_neighbours(dataset, "text", k=5, cache=cache, method=method)
    again = item_knn_neighbours(dataset, "text", k=5, cache=cache, method=method)
    assert len(list(tmp_path.glob("knn_neighbours-*.npz"))) == 1
    np.testing.assert_array_equal(first.indices, again.indices)


@pytest.mark.parametrize("include_self", [True, False])
def test_probing_every_cluster_equals_the_brute_force_knn_ties_included(include_self):
    # Exact cosine ties (multiples of 1/4) and duplicates; small query and candidate chunks, so
    # clusters are cut into several padded tiles whose running top-k must keep the id order.
    features = np.concatenate([exact_tie_features(260, 21), clustered_features(140, 5, 8, 0.3, 22)])
    features[[40, 300, 399]] = features[7]
    mask = np.random.default_rng(23).random(400) < 0.9
    mask[[7, 40, 300]] = True
    indices, values, valid = brute_force_knn(features, 8, mask, include_self=include_self)
    settings = IvfSettings(n_clusters=6, n_probe=6, seed=3, sample_size=200, n_iterations=4, query_block=24,
                           candidate_block=100)
    got = knn_neighbours(features, 8, mask=mask, include_self=include_self, method="ivf", ivf=settings)
    np.testing.assert_array_equal(got.valid, valid)
    np.testing.assert_array_equal(got.indices, indices)
    np.testing.assert_allclose(got.similarities, values, atol=1e-6)


def test_recall_on_clustered_data():
    # 40 well-separated directions (centre norm ~4, noise norm ~1.4 in 16 dims): an item's 9
    # nearest items lie in its own planted cluster, which k-means recovers up to splits and
    # merges, so probing the 2 nearest clusters should find almost all of them. Measured
    # recall: 0.999 (n_probe 2), 0.963 (n_probe 1); the bound leaves room for other seeds and
    # platforms while failing for wrong ids or a broken probe order (random: ~0.01).
    features = clustered_features(3000, 40, 16, 0.35, 0)
    exact = knn_neighbours(features, 10).indices
    found = knn_neighbours(features, 10, method="ivf", ivf=IvfSettings(40, 2, sample_size=1000)).indices
    recall = np.mean([np.intersect1d(f[1:], e[1:]).size / 9 for f, e in zip(found, exact)])
    assert recall >= 0.97, recall
    np.testing.assert_array_equal(found[:, 0], np.arange(3000))  # itself first, as the exact builder


def test_every_row_gets_k_neighbours_even_from_tiny_clusters():
    features = clustered_features(300, 30, 6, 0.05, 4)
    got = knn_neighbours(features, 10, method="ivf", ivf=IvfSettings(60, 1, sample_size=300), include_self=False)
    assert got.valid.all()
    assert not np.any(got.indices == np.arange(300)[:, None])
    assert all(np.unique(row).size == 10 for row in got.indices)


def test_spherical_kmeans_reaches_a_fixed_point():
    # At convergence each centroid is the normalized mean of the rows nearest to it.
    units = clustered_features(1200, 8, 10, 0.4, 5)
    units /= np.linalg.norm(units, axis=1, keepdims=True)
    centroids = spherical_kmeans(units, IvfSettings(8, 1, seed=1, sample_size=1200, n_iterations=30).checked(1200))
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    nearest = np.argmax(units.astype(np.float64) @ centroids.T, axis=1)
    for cluster in range(8):
        mean = units[nearest == cluster].astype(np.float64).sum(axis=0)
        np.testing.assert_allclose(centroids[cluster], mean / np.linalg.norm(mean), atol=1e-4)


def test_probe_lists_start_with_the_cluster_and_hold_enough_candidates():
    rng = np.random.default_rng(6)
    centroids = rng.standard_normal((12, 5))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    sizes = rng.integers(0, 4, 12)
    lists = probe_lists(centroids, sizes, 2, 11)
    sims = centroids @ centroids.T
    for cluster, probes in enumerate(lists):
        assert probes[0] == cluster and len(probes) >= 2
        assert sizes[probes].sum() >= 11 or len(probes) == 12
        assert sizes[probes[:-1]].sum() < 11 or len(probes) == 2  # no more than needed
        np.testing.assert_array_equal(np.diff(sims[cluster, probes[1:]]) <= 0, True)  # nearest first


@pytest.mark.parametrize("settings,match", [
    (IvfSettings(0, 1), "n_clusters"), (IvfSettings(4, 5), "n_probe"), (IvfSettings(4, 0), "n_probe"),
    (IvfSettings(500, 1), "exceeds"), (IvfSettings(8, 2, sample_size=4), "sample_size"),
    (IvfSettings(True, 1), "n_clusters"), (IvfSettings(4, 2.5), "n_probe"), (IvfSettings(4, 2, seed=-1), "seed"),
    (IvfSettings(4, 2, n_iterations=0), "n_iterations"), (IvfSettings(4, 2, query_block=0), "query_block"),
])
def test_bad_ivf_settings_raise_config_errors(settings, match):
    features = np.random.default_rng(7).standard_normal((100, 4)).astype(np.float32)
    with pytest.raises(ConfigError, match=match):
        knn_neighbours(features, 3, method="ivf", ivf=settings)


def test_bad_methods_raise_config_errors():
    features = np.ones((10, 3), np.float32)
    with pytest.raises(ConfigError, match="method"):
        knn_neighbours(features, 3, method="annoy")
    with pytest.raises(ConfigError, match="IvfSettings"):
        knn_neighbours(features, 3, method="ivf")
    with pytest.raises(ConfigError, match="IvfSettings"):
        knn_cache_key(features, None, k=3, method="ivf")


def test_the_ivf_settings_are_part_of_the_cache_key(tmp_path):
    rng = np.random.default_rng(8)
    features = clustered_features(200, 4, 6, 0.3, 9)
    mask = rng.random(200) < 0.95
    # The exact key is the key from before the method option existed: old caches stay valid.
    assert knn_cache_key(features, mask, k=5) == cache_key(
        "knn_neighbours", version="1", settings={"k": 5, "include_self": True},
        arrays={"features": features, "mask": mask})
    keys = {knn_cache_key(features, mask, k=5),
            knn_cache_key(features, mask, k=5, method="ivf", ivf=IvfSettings(8, 2)),
            knn_cache_key(features, mask, k=5, method="ivf", ivf=IvfSettings(8, 3)),
            knn_cache_key(features, mask, k=5, method="ivf", ivf=IvfSettings(8, 2, seed=1)),
            knn_cache_key(features, mask, k=5, method="ivf", ivf=IvfSettings(16, 2))}
    assert len(keys) == 5
    dataset = MultimodalDataset("toy", 2, 200, Interactions(np.array([0]), np.array([1]), np.zeros(1, np.int8)),
                                modalities={"text": Modality("text", features, mask)})
    cache = GraphCache(tmp_path)
    ivf = item_knn_neighbours(dataset, "text", k=5, cache=cache, method="ivf", ivf=IvfSettings(8, 1))
    exact = item_knn_neighbours(dataset, "text", k=5, cache=cache)
    assert len(list(tmp_path.glob("knn_neighbours-*.npz"))) == 2
    again = item_knn_neighbours(dataset, "text", k=5, cache=cache, method="ivf", ivf=IvfSettings(8, 1))
    np.testing.assert_array_equal(again.indices, ivf.indices)
    np.testing.assert_array_equal(exact.indices, knn_neighbours(features, 5, mask=mask).indices)


def test_freedom_frozen_graph_by_ivf_probing_every_cluster_equals_the_exact_one():
    from jaxrec import models
    from jaxrec.data import make_synthetic

    data = make_synthetic(30, 80, n_interactions=500, dims={"text": 6, "image": 5}, seed=1)
    kwargs = dict(embedding_size=8, feat_embed_dim=8, knn_k=4, graph_cache="none", dropout=0.0)
    exact = models.build("freedom", data, **kwargs).ctx["item_graph"]
    full = models.build("freedom", data, knn_method="ivf", knn_n_clusters=6, knn_n_probe=6, **kwargs).ctx["item_graph"]
    for a, b in zip(exact, full):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ConfigError, match="knn_n_probe"):
        models.build("freedom", data, knn_method="ivf", knn_n_clusters=6, knn_n_probe=0, **kwargs)
