"""The graph cache: content-sensitive keys, reuse only for identical inputs, atomic files."""

import numpy as np
import pytest

import jaxrec.data.graph._item_graph as item_graph_module
from jaxrec.data import Interactions, Modality, MultimodalDataset
from jaxrec.data.graph import GraphCache, cache_key, default_cache_dir, item_knn_neighbours
from jaxrec.errors import ConfigError


def toy_dataset(features, mask, source=None):
    metadata = {"source": str(source)} if source is not None else {}
    return MultimodalDataset("toy", 2, len(features), Interactions(np.array([0, 1]), np.array([0, 1]), np.zeros(2, np.int8)),
                             modalities={"text": Modality("text", features, mask)}, metadata=metadata)


def features_and_mask(seed=0, n=24):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)).astype(np.float32), rng.random(n) < 0.9


def test_keys_follow_content_not_identity():
    features, mask = features_and_mask()
    settings = {"k": 5, "include_self": True}
    key = cache_key("knn", version="1", settings=settings, arrays={"features": features, "mask": mask})
    same = cache_key("knn", version="1", settings=dict(settings), arrays={"features": features.copy(), "mask": mask.copy()})
    assert key == same
    changed = features.copy()
    changed[3, 2] = np.nextafter(changed[3, 2], np.float32(np.inf))  # one value, one ulp
    flipped = mask.copy()
    flipped[0] = not flipped[0]
    others = [
        cache_key("knn", version="1", settings=settings, arrays={"features": changed, "mask": mask}),
        cache_key("knn", version="1", settings=settings, arrays={"features": features, "mask": flipped}),
        cache_key("knn", version="1", settings={**settings, "k": 6}, arrays={"features": features, "mask": mask}),
        cache_key("knn", version="2", settings=settings, arrays={"features": features, "mask": mask}),
        cache_key("other", version="1", settings=settings, arrays={"features": features, "mask": mask}),
        cache_key("knn", version="1", settings=settings, arrays={"features": features.reshape(12, 10), "mask": mask}),
        cache_key("knn", version="1", settings=settings, arrays={"features": features.astype(np.float64), "mask": mask}),
    ]
    assert len({key, *others}) == len(others) + 1


def test_changed_feature_value_rebuilds_and_identical_data_reuses(tmp_path, monkeypatch):
    calls = []
    real = item_graph_module.knn_neighbours

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(item_graph_module, "knn_neighbours", counting)
    cache = GraphCache(tmp_path / "graphs")
    features, mask = features_and_mask(1)
    first = item_knn_neighbours(toy_dataset(features, mask), "text", k=4, cache=cache)
    again = item_knn_neighbours(toy_dataset(features.copy(), mask.copy()), "text", k=4, cache=cache)
    assert len(calls) == 1, "identical data must be served from the cache"
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)

    changed = features.copy()
    changed[5, 0] += 1.0
    rebuilt = item_knn_neighbours(toy_dataset(changed, mask), "text", k=4, cache=cache)
    assert len(calls) == 2, "a changed feature value must rebuild"
    fresh = real(changed, 4, mask=mask)
    for a, b in zip(rebuilt, fresh):
        np.testing.assert_array_equal(a, b)
    item_knn_neighbours(toy_dataset(features, mask), "text", k=5, cache=cache)
    assert len(calls) == 3, "another k must rebuild"
    assert len(list((tmp_path / "graphs").glob("knn_neighbours-*.npz"))) == 3
    assert not list((tmp_path / "graphs").glob("*.tmp")), "no temporary file may be left behind"


def test_a_file_under_the_wrong_name_or_corrupt_is_never_used(tmp_path):
    cache = GraphCache(tmp_path)
    cache.save("g", "a" * 40, {"x": np.arange(3)})
    cache.path("g", "a" * 40).rename(cache.path("g", "b" * 40))  # a stale or misplaced file
    assert cache.load("g", "b" * 40) is None
    cache.path("g", "c" * 40).write_bytes(b"not a zip file")
    arrays, hit = cache.get_or_build("g", "c" * 40, lambda: {"x": np.arange(4)})
    assert not hit and list(arrays["x"]) == [0, 1, 2, 3]
    arrays, hit = cache.get_or_build("g", "c" * 40, lambda: pytest.fail("must not rebuild"))
    assert hit and list(arrays["x"]) == [0, 1, 2, 3]


def test_failed_write_leaves_neither_file_nor_temporary(tmp_path, monkeypatch):
    cache = GraphCache(tmp_path)

    def broken_savez(file, **arrays):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        cache.save("g", "d" * 40, {"x": np.arange(3)})
    assert list(tmp_path.iterdir()) == []


def test_cache_inside_the_data_folder_is_refused(tmp_path):
    data = tmp_path / "data" / "toy"
    data.mkdir(parents=True)
    (data / "toy.inter").write_text("userID\titemID\n")
    features, mask = features_and_mask(2)
    dataset = toy_dataset(features, mask, source=data)
    with pytest.raises(ConfigError, match="inside the data folder"):
        item_knn_neighbours(dataset, "text", k=3, cache=GraphCache(data / "cache"))
    with pytest.raises(ConfigError, match="inside the data folder"):
        GraphCache(data, forbidden=[data / "toy.inter"])
    item_knn_neighbours(dataset, "text", k=3, cache=GraphCache(tmp_path / "work" / "graphs"))  # beside it is fine


def test_default_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXREC_GRAPH_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("JAXREC_GRAPH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "jaxrec" / "graphs"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert str(default_cache_dir()).endswith(".cache/jaxrec/graphs")
