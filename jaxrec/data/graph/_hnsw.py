r"""Approximate item kNN by a hierarchical navigable small-world graph (hnswlib), for catalogues
where the exact :math:`O(n^2)` scan is too slow.

Every item is inserted into an HNSW index of its unit rows (inner product = cosine), then each
item queries the index for its k + 1 nearest rows. The found candidates' similarities are
recomputed in float32 from the unit rows and ranked as the exact builder ranks them
(similarity descending, then smaller id; the item itself first with ``include_self``), so
the result differs from the exact one only where HNSW missed a true neighbour.

Why this library: on the scale ladder's synthetic data (128-d, k = 10, recall of the 9
non-self neighbours; ``benchmarks/bench_knn.py --ann``), hnswlib reached the recall of our
JAX inverted file (:mod:`._ivf`) at a fraction of its CPU time, and was ahead of usearch and
faiss's HNSW at equal settings; faiss's inverted file needs ever more probes as n grows. The
cluster-blocked join (:mod:`._join`) builds the same all-items graph at a fraction of
hnswlib's CPU time and is the default approximate method (``knn_method: auto``); hnswlib
stays for ``method="hnsw"``. The measured figures are in ``benchmarks/bench_knn.py``'s
docstring.

hnswlib is an optional dependency (``pip install "jaxrec[ann]"``). With ``threads=1``
(default) the index, hence the neighbours, is deterministic for a given seed; more threads
build faster but insert in a racy order.

References:
  Malkov & Yashunin, `Efficient and robust approximate nearest neighbor search using
  Hierarchical Navigable Small World graphs <https://arxiv.org/abs/1603.09320>`_, TPAMI 2020.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxrec.data.graph._settings import checked_integer_fields, result_fields
from jaxrec.errors import ConfigError


class HnswSettings(NamedTuple):
    """Settings of the HNSW kNN (all but ``threads`` part of the graph cache key).

    Attributes:
      m: links per node (hnswlib's ``M``).
      ef_construction: candidate list size while inserting.
      ef_search: candidate list size while querying (raised to k + 1 when smaller).
      seed: hnswlib's ``random_seed`` (the level draw).
      threads: insertion and query threads (1: deterministic).
    """

    m: int = 12
    ef_construction: int = 48
    ef_search: int = 24
    seed: int = 0
    threads: int = 1

    def checked(self) -> "HnswSettings":
        return HnswSettings(**checked_integer_fields(self, "hnsw", {"seed": 0, "m": 2}))

    def key(self) -> dict:
        """The fields that decide the result (the cache key's part)."""
        return result_fields(self)


def import_hnswlib():
    """The ``hnswlib`` module, or ``ConfigError`` saying how to install it."""
    try:
        import hnswlib
    except ImportError as error:
        raise ConfigError("kNN method 'hnsw' needs the optional hnswlib package: pip install \"jaxrec[ann]\" "
                          "(or choose knn_method 'exact' or 'ivf')") from error
    return hnswlib


def hnsw_top_k(units: np.ndarray, k: int, settings: HnswSettings, *,
               include_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k of the unit rows ``units`` among themselves (module docstring).

    Returns:
      ``(values, ids)``, each (n, k): similarities (+inf for the row itself, -inf in empty
      slots) and row ids, similarity descending then smaller id.
    """
    hnswlib = import_hnswlib()
    settings = settings.checked()
    n, dim = units.shape
    index = hnswlib.Index(space="ip", dim=dim)
    index.init_index(max_elements=n, M=settings.m, ef_construction=settings.ef_construction,
                     random_seed=settings.seed)
    index.add_items(units, np.arange(n), num_threads=settings.threads)
    wanted = min(n, k + 1)
    index.set_ef(max(settings.ef_search, wanted))
    values = np.full((n, k), -np.inf, np.float32)
    ids = np.zeros((n, k), np.int32)
    for start in range(0, n, 65536):
        stop = min(n, start + 65536)
        found, _ = index.knn_query(units[start:stop], k=wanted, num_threads=settings.threads)
        found = found.astype(np.int64)
        own = np.arange(start, stop)[:, None]
        sims = np.einsum("nd,nkd->nk", units[start:stop], units[found]).astype(np.float32)
        sims = np.where(found == own, np.inf if include_self else -np.inf, sims)
        if include_self:  # the item itself, even where the index did not return it
            missing = ~(found == own).any(axis=1)
            found = np.concatenate([found, own], axis=1)
            sims = np.concatenate([sims, np.where(missing, np.inf, -np.inf)[:, None].astype(np.float32)], axis=1)
        order = np.lexsort((found, -sims), axis=1)[:, :k]  # last key first: similarity desc, then id
        values[start:stop, :order.shape[1]] = np.take_along_axis(sims, order, axis=1)
        ids[start:stop, :order.shape[1]] = np.take_along_axis(found, order, axis=1)
    return values, ids
