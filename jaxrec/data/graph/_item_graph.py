"""Item-item kNN graphs of a dataset's modalities, through the on-disk cache."""

from __future__ import annotations

from jaxrec.data._dataset import MultimodalDataset
from jaxrec.data.graph._cache import GraphCache, cache_key
from jaxrec.data.graph._edges import Edges
from jaxrec.data.graph._knn import KnnNeighbours, knn_edges, knn_neighbours
from jaxrec.errors import DataError

# Bump when knn_neighbours' output for the same inputs changes (ranking, ties, self handling).
KNN_VERSION = "1"


def item_knn_neighbours(dataset: MultimodalDataset, modality: str, *, k: int, include_self: bool = True,
                        cache: GraphCache | None = None, block_size: int = 2048, progress=None) -> KnnNeighbours:
    """:func:`knn_neighbours` of one modality of ``dataset`` (its features and mask), cached.

    Args:
      dataset: the dataset.
      modality: the modality's name; a sequence modality (n_items, T, d) must be pooled to
        (n_items, d) first.
      k, include_self, block_size, progress: as in :func:`knn_neighbours`.
      cache: a :class:`GraphCache`, or None to build without caching. The key covers the
        features' and mask's bytes, k, include_self and ``KNN_VERSION``; a cache folder inside
        the dataset's or the modality's source folder raises ``ConfigError``.

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
                              progress=progress)._asdict()

    if cache is None:
        return KnnNeighbours(**build())
    cache.check_outside(dataset.metadata.get("source"))
    cache.check_outside(mod.provenance.get("source"))
    key = cache_key("knn_neighbours", version=KNN_VERSION, settings={"k": int(k), "include_self": bool(include_self)},
                    arrays={"features": mod.features, "mask": mod.mask})
    arrays, _ = cache.get_or_build("knn_neighbours", key, build,
                                   meta={"dataset": dataset.name, "modality": modality, "k": int(k)})
    return KnnNeighbours(**arrays)


def item_knn_graph(dataset: MultimodalDataset, modality: str, *, k: int, weighted: bool = False,
                   normalization: str = "sym", include_self: bool = True, missing: str = "isolated",
                   cache: GraphCache | None = None, block_size: int = 2048) -> Edges:
    """The normalized kNN graph of one modality: :func:`item_knn_neighbours` then :func:`knn_edges`.

    FREEDOM: ``weighted=False, normalization="sym"``; LATTICE: ``weighted=True,
    normalization="sym"`` (see :func:`knn_edges`).
    """
    neighbours = item_knn_neighbours(dataset, modality, k=k, include_self=include_self, cache=cache,
                                     block_size=block_size)
    return knn_edges(neighbours, weighted=weighted, normalization=normalization, missing=missing)
