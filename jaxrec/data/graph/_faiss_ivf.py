r"""Approximate item kNN by faiss's inverted file (IVF-Flat), for catalogues where the exact
:math:`O(n^2)` scan is too slow.

Spherical k-means (faiss ``Kmeans``, ``n_iter`` rounds on ``train_per_list * n_list`` sampled
unit rows) gives ``n_list`` centroids. One matrix product ranks the centroids for every item;
its best centroid is the list it is stored in, and its ``n_probe`` best are the lists it
searches (``search_preassigned``: the assignment is computed once for storing and querying,
where ``add`` then ``search`` would compute it twice). Each item queries its k + 1 nearest
rows; the candidates' similarities are recomputed in float32 from the unit rows and ranked as
the exact builder ranks them (similarity descending, then smaller id; the item itself first
with ``include_self``), so the result differs from the exact one only where a true neighbour
lies in an unprobed list.

Why this library: see :mod:`._hnsw` and ``benchmarks/bench_knn.py --ann`` (figures in its
docstring).

faiss is an optional dependency (``pip install "jaxrec[ann]"``). Queries are independent, so
the neighbours do not depend on ``threads``; the k-means is seeded.

References:
  Jégou, Douze & Schmid, `Product quantization for nearest neighbor search
  <https://doi.org/10.1109/TPAMI.2010.57>`_ (the inverted file), TPAMI 2011; Douze et al.,
  `The Faiss library <https://arxiv.org/abs/2401.08281>`_, 2024.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxrec.errors import ConfigError


class FaissIvfSettings(NamedTuple):
    """Settings of the faiss IVF kNN (all but ``threads`` part of the graph cache key).

    Attributes:
      n_list: inverted lists (k-means centroids); capped at the number of items.
      n_probe: lists each item searches (capped at ``n_list``).
      train_per_list: sampled rows per centroid for the k-means.
      n_iter: k-means rounds.
      seed: the sample and k-means seed.
      threads: faiss's OpenMP threads (0: faiss's default).
    """

    n_list: int = 4096
    n_probe: int = 16
    train_per_list: int = 16
    n_iter: int = 8
    seed: int = 0
    threads: int = 0

    def checked(self) -> "FaissIvfSettings":
        values = {}
        for name, value in self._asdict().items():
            minimum = 0 if name in ("seed", "threads") else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                raise ConfigError(f"faiss kNN: {name} must be an integer >= {minimum}; found {value!r}")
            values[name] = int(value)
        return FaissIvfSettings(**values)

    def key(self) -> dict:
        """The fields that decide the result (the cache key's part)."""
        return {name: int(value) for name, value in self._asdict().items() if name != "threads"}


def import_faiss():
    """The ``faiss`` module, or ``ConfigError`` saying how to install it."""
    try:
        import faiss
    except ImportError as error:
        raise ConfigError("kNN method 'faiss' needs the optional faiss-cpu package: pip install \"jaxrec[ann]\" "
                          "(or choose knn_method 'exact' or 'hnsw')") from error
    return faiss


def rank_candidates(units: np.ndarray, start: int, found: np.ndarray, k: int, *,
                    include_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """(values, ids), each (rows, k), of the candidate ids ``found`` (rows, c) of the rows
    ``start, start + 1, ...``: float32 similarities recomputed from ``units``, ranked by
    similarity descending then smaller id, the row itself first (+inf) with ``include_self``
    (added where the candidates lack it) and dropped (-inf) otherwise; -1 ids (no candidate)
    rank last as -inf."""
    rows = found.shape[0]
    own = np.arange(start, start + rows)[:, None]
    empty = found < 0
    found = np.where(empty, own, found).astype(np.int64)
    sims = np.einsum("nd,nkd->nk", units[start:start + rows], units[found]).astype(np.float32)
    sims = np.where(found == own, np.inf if include_self else -np.inf, sims)
    sims = np.where(empty, -np.inf, sims).astype(np.float32)
    if include_self:  # the item itself, even where the index did not return it
        missing = ~((found == own) & ~empty).any(axis=1)
        found = np.concatenate([found, own], axis=1)
        sims = np.concatenate([sims, np.where(missing, np.inf, -np.inf)[:, None].astype(np.float32)], axis=1)
    order = np.lexsort((found, -sims), axis=1)[:, :k]  # last key first: similarity desc, then id
    values = np.full((rows, k), -np.inf, np.float32)
    ids = np.zeros((rows, k), np.int32)
    values[:, :order.shape[1]] = np.take_along_axis(sims, order, axis=1)
    ids[:, :order.shape[1]] = np.take_along_axis(found, order, axis=1)
    return values, ids


def faiss_ivf_top_k(units: np.ndarray, k: int, settings: FaissIvfSettings, *,
                    include_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k of the unit rows ``units`` among themselves (module docstring).

    Returns:
      ``(values, ids)``, each (n, k): similarities (+inf for the row itself, -inf in empty
      slots) and row ids, similarity descending then smaller id.
    """
    faiss = import_faiss()
    settings = settings.checked()
    units = np.ascontiguousarray(units, np.float32)
    n, dim = units.shape
    n_list = min(settings.n_list, n)
    n_probe = min(settings.n_probe, n_list)
    if settings.threads:
        faiss.omp_set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    sample = units[np.sort(rng.choice(n, min(n, settings.train_per_list * n_list), replace=False))]
    kmeans = faiss.Kmeans(dim, n_list, niter=settings.n_iter, spherical=True, seed=settings.seed,
                          max_points_per_centroid=max(settings.train_per_list, 1), min_points_per_centroid=1,
                          verbose=False)
    kmeans.train(sample)
    del sample
    quantizer = faiss.IndexFlatIP(dim)
    quantizer.add(np.ascontiguousarray(kmeans.centroids, np.float32))
    index = faiss.IndexIVFFlat(quantizer, dim, n_list, faiss.METRIC_INNER_PRODUCT)
    index.is_trained = True
    wanted = min(n, k + 1)
    values = np.full((n, k), -np.inf, np.float32)
    ids = np.zeros((n, k), np.int32)
    # One ranking of the centroids per item: its best list stores it, its n_probe best are searched.
    chunk = 65536
    probes = []
    centroid_sims = []
    for start in range(0, n, chunk):
        sims, lists = quantizer.search(units[start:start + chunk], n_probe)
        probes.append(lists)
        centroid_sims.append(sims)
    probes = np.concatenate(probes)
    centroid_sims = np.concatenate(centroid_sims)
    primary = np.ascontiguousarray(probes[:, 0], np.int64)  # kept alive while faiss reads its pointer
    index.add_core(n, faiss.swig_ptr(units), None, faiss.swig_ptr(primary))
    index.nprobe = n_probe
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        _, found = index.search_preassigned(units[start:stop], wanted, np.ascontiguousarray(probes[start:stop]),
                                            np.ascontiguousarray(centroid_sims[start:stop]))
        values[start:stop], ids[start:stop] = rank_candidates(units, start, found, k, include_self=include_self)
    return values, ids
