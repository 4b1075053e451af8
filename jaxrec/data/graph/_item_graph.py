"""Item-item kNN graphs of a dataset's modalities, through the on-disk cache."""

from __future__ import annotations

from jaxrec.data._dataset import MultimodalDataset
from jaxrec.data.graph._cache import GraphCache, cache_key
from jaxrec.data.graph._edges import Edges
import numpy as np

from jaxrec.data.graph._hnsw import HnswSettings
from jaxrec.data.graph._ivf import IvfSettings
from jaxrec.data.graph._join import JoinSettings
from jaxrec.data.graph._knn import KnnNeighbours, knn_edges, knn_neighbours, resolve_knn_method
from jaxrec.errors import ConfigError, DataError

# Bump when knn_neighbours' output for the same inputs changes (ranking, ties, self handling).
KNN_VERSION = "1"


def knn_cache_key(features, mask, *, k: int, include_self: bool = True, method: str = "exact",
                  ivf: IvfSettings | None = None, hnsw: HnswSettings | None = None,
                  join: JoinSettings | None = None) -> str:
    """The graph-cache key of :func:`knn_neighbours` of ``features`` and ``mask`` with these settings.

    An exact graph's key is the same as before the ``method`` option existed (its settings
    are k and include_self); an IVF graph's key adds the method and every :class:`IvfSettings`
    field, so graphs from other settings are never reused; an HNSW graph's key adds the
    method and its :meth:`HnswSettings.key` fields, a join graph's the method and its
    :meth:`JoinSettings.key` fields. ``"auto"`` is keyed as the method it resolves to.
    """
    settings = {"k": int(k), "include_self": bool(include_self)}
    n_present = int(np.asarray(features).shape[0] if mask is None else np.count_nonzero(mask))
    method = resolve_knn_method(method, n_present)
    if method == "hnsw":
        settings.update(method="hnsw", **(hnsw or HnswSettings()).checked().key())
    elif method == "join":
        settings.update(method="join", **(join or JoinSettings()).checked().key())
    elif method != "exact":
        if not isinstance(ivf, IvfSettings):
            raise ConfigError(f"kNN method {method!r} needs IvfSettings; found {ivf!r}")
        settings.update(method=str(method), **{name: int(value) for name, value in ivf._asdict().items()})
    return cache_key("knn_neighbours", version=KNN_VERSION, settings=settings,
                     arrays={"features": features, "mask": mask})


def item_knn_neighbours(dataset: MultimodalDataset, modality: str, *, k: int, include_self: bool = True,
                        cache: GraphCache | None = None, block_size: int = 2048, method: str = "exact",
                        ivf: IvfSettings | None = None, hnsw: HnswSettings | None = None,
                        join: JoinSettings | None = None, progress=None) -> KnnNeighbours:
    """:func:`knn_neighbours` of one modality of ``dataset`` (its features and mask), cached.

    Args:
      dataset: the dataset.
      modality: the modality's name; a sequence modality (n_items, T, d) must be pooled to
        (n_items, d) first.
      k, include_self, block_size, method, ivf, hnsw, join, progress: as in :func:`knn_neighbours`.
      cache: a :class:`GraphCache`, or None to build without caching. The key
        (:func:`knn_cache_key`) covers the features' and mask's bytes, k, include_self, the
        method and its IVF settings, and ``KNN_VERSION``; a cache folder inside the dataset's
        or the modality's source folder raises ``ConfigError``.

    Returns:
      :class:`KnnNeighbours` with (n_items, k) arrays.
    """
    if modality not in dataset.modalities:
        raise DataError("unknown modality", field="modality", found=modality,
                        expected=f"one of {list(dataset.modalities)}")
    mod = dataset.modalities[modality]
    if mod.is_sequence:
        raise DataError("kNN graphs need one feature vector per item", field=f"modalities[{modality!r}]",
                        found=f"a sequence modality of shape {mod.features.shape}",
                        expected="(n_items, d): pool the sequence first")

    def build():
        return knn_neighbours(mod.features, k, mask=mod.mask, include_self=include_self, block_size=block_size,
                              method=method, ivf=ivf, hnsw=hnsw, join=join, progress=progress)._asdict()

    if cache is None:
        return KnnNeighbours(**build())
    cache.check_outside(dataset.metadata.get("source"))
    cache.check_outside(mod.provenance.get("source"))
    key = knn_cache_key(mod.features, mod.mask, k=k, include_self=include_self, method=method, ivf=ivf, hnsw=hnsw,
                        join=join)
    arrays, _ = cache.get_or_build("knn_neighbours", key, build,
                                   meta={"dataset": dataset.name, "modality": modality, "k": int(k), "method": method})
    return KnnNeighbours(**arrays)


def item_knn_graph(dataset: MultimodalDataset, modality: str, *, k: int, weighted: bool = False,
                   normalization: str = "sym", include_self: bool = True, missing: str = "isolated",
                   cache: GraphCache | None = None, block_size: int = 2048, method: str = "exact",
                   ivf: IvfSettings | None = None, hnsw: HnswSettings | None = None,
                   join: JoinSettings | None = None) -> Edges:
    """The normalized kNN graph of one modality: :func:`item_knn_neighbours` then :func:`knn_edges`.

    FREEDOM: ``weighted=False, normalization="sym"``; LATTICE: ``weighted=True,
    normalization="sym"`` (see :func:`knn_edges`).
    """
    neighbours = item_knn_neighbours(dataset, modality, k=k, include_self=include_self, cache=cache,
                                     block_size=block_size, method=method, ivf=ivf, hnsw=hnsw, join=join)
    return knn_edges(neighbours, weighted=weighted, normalization=normalization, missing=missing)
