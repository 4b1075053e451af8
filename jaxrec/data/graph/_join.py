r"""Approximate all-items cosine kNN by a cluster-blocked join: an inverted file probed per item,
computed list by list as dense matrix products (BLAS).

The kNN graph is a self-join: every item is a query and every item a candidate. Steps:

1. **Spherical k-means** of a seeded sample of the unit rows into ``n_lists`` centroids
   (:math:`c_j \leftarrow \sum_{a_i = j} \hat x_i / \lVert\cdot\rVert`, :math:`a_i =
   \operatorname{argmax}_j \hat x_i^\top c_j`; an emptied list restarts at the worst-served
   sample row).
2. **Probes**: every item's ``n_probe`` most similar centroids, most similar first; the first
   is its own list :math:`L(i)`, where it is stored. (The top ``n_probe`` is found exactly by
   group-max pruning: the maxima of groups of 32 centroids, the best ``n_probe`` groups, then
   the best ``n_probe`` of their members.)
3. **Own lists**: per list, the members' similarity matrix :math:`X_L X_L^\top`; each item's
   best candidates in its own list, and :math:`\tau_i`, the ``k'``-th best of them
   (``k' = k - 1`` non-self neighbours with ``include_self``, else ``k``), a lower bound of its
   final ``k'``-th similarity.
4. **Join**: the items that probe list :math:`L` besides their own form the query block
   :math:`Q_L`; ONE matrix product :math:`S = X_{Q_L} X_L^\top` per list. Rows: a member
   :math:`j` of :math:`L` is a candidate of query :math:`i` where :math:`s_{ij} \ge \tau_i`.
   Columns, the same product read the other way: query :math:`i` is a candidate of member
   :math:`j` where :math:`s_{ij} \ge \tau_j` (unless :math:`j` probes :math:`L(i)`, where the
   pair is met again as a row). So item :math:`i` compares with list :math:`L` if it probes
   :math:`L` OR a member of :math:`L` probes :math:`L(i)`: the reverse direction raises the
   recall at no extra product.
5. **Ranking**: each item's candidates (own-list best and join survivors) ranked by similarity
   descending, then smaller id; the first ``k'`` kept, the item itself first with
   ``include_self``.

The work is one product per list, :math:`\sum_L |Q_L|\,|L|\,d \approx n \cdot
(n\_probe - 1) \cdot (n / n\_lists) \cdot d` multiply-adds in BLAS, plus the
:math:`n \cdot n\_lists \cdot d` of the probes; the threshold keeps a few dozen candidates
per item instead of a top-k per product row. Lists are processed by ``threads`` Python
threads, each with a single-threaded BLAS (``threadpoolctl``, the ``ann`` extra; without it,
one thread and the BLAS's own threads). The result does not depend on ``threads``.

With ``n_probe == n_lists`` every pair is compared and the result is the exact kNN (the same
neighbours as :func:`~jaxrec.data.graph.knn_neighbours` ``method="exact"``, up to the last bits
of float32 products in a different summation order). Similarities are those of the float32
BLAS products.

Measured (``benchmarks/bench_knn.py --ann``; figures in its docstring and ``docs/scaling.md``):
on the scale ladder's 1M x 128 data the defaults (4,096 lists, 12 probed) reach recall@10 0.968
of exact in 78 CPU seconds of 2 threads, under half of hnswlib's at lower recall, where an
inverted file probed per LIST (:mod:`._ivf`) or by a library (faiss's IVF scanning each probed
list per query) did not reach 0.95 in the time.

References:
  Jégou, Douze & Schmid, `Product quantization for nearest neighbor search
  <https://doi.org/10.1109/TPAMI.2010.57>`_, TPAMI 2011 (the inverted file);
  Dhillon & Modha, `Concept decompositions for large sparse text data using clustering
  <https://doi.org/10.1023/A:1007612920971>`_, Machine Learning 2001 (spherical k-means).
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np

from jaxrec.data.graph._settings import checked_integer_fields, result_fields

_GROUP = 32  # centroids per group of the pruned top-n_probe
_CHUNK = 8192  # rows per block of the probe products


class JoinSettings(NamedTuple):
    """Settings of the cluster-blocked join (all but ``threads`` part of the graph cache key).

    Attributes:
      n_lists: k-means lists; 0: the power of two nearest ``n / 256`` (lists of about 256
        items; 4,096 at a million).
      n_probe: lists each item probes, its own included (capped at ``n_lists``).
      seed: seed of the k-means sample and initial centroids.
      sample_per_list: k-means sample rows per list.
      n_iterations: k-means iterations.
      threads: Python threads over the lists (0: ``os.cpu_count()``); the result is the same.
    """

    n_lists: int = 0
    n_probe: int = 12
    seed: int = 0
    sample_per_list: int = 16
    n_iterations: int = 6
    threads: int = 0

    def checked(self) -> "JoinSettings":
        return JoinSettings(**checked_integer_fields(self, "join", {"n_lists": 0, "seed": 0, "threads": 0}))

    def key(self) -> dict:
        """The fields that decide the result (the cache key's part)."""
        return result_fields(self)

    def lists_for(self, n: int) -> int:
        """The number of lists used for ``n`` items."""
        wanted = self.n_lists or 1 << max(0, round(np.log2(max(n, 1) / 256)))
        return max(1, min(int(wanted), n))


def _blas_one_thread():
    """A context in which the BLAS runs one thread (threadpoolctl), or None without it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=1, user_api="blas")


def _kmeans(units: np.ndarray, n_lists: int, settings: JoinSettings) -> np.ndarray:
    rng = np.random.default_rng(settings.seed)
    n = len(units)
    size = min(n, max(n_lists, settings.sample_per_list * n_lists))
    sample = units if size >= n else units[np.sort(rng.choice(n, size, replace=False))]
    centroids = sample[rng.choice(len(sample), n_lists, replace=False)].copy()
    for _ in range(settings.n_iterations):
        labels = np.empty(len(sample), np.int64)
        best = np.empty(len(sample), np.float32)
        for start in range(0, len(sample), _CHUNK):
            sims = sample[start:start + _CHUNK] @ centroids.T
            labels[start:start + _CHUNK] = np.argmax(sims, axis=1)
            best[start:start + _CHUNK] = sims[np.arange(len(sims)), labels[start:start + _CHUNK]]
        counts = np.bincount(labels, minlength=n_lists)
        filled = counts > 0
        sums = np.zeros_like(centroids)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        sums[filled] = np.add.reduceat(sample[np.argsort(labels, kind="stable")], starts[filled], axis=0)
        norms = np.linalg.norm(sums, axis=1)
        centroids = np.where(norms[:, None] > 0, sums / np.where(norms > 0, norms, 1.0)[:, None], 0.0)
        empty = np.flatnonzero(norms == 0)
        if empty.size:  # restart emptied lists at the worst-served rows
            centroids[empty] = sample[np.argsort(best, kind="stable")[:empty.size]]
        centroids = centroids.astype(np.float32)
    return centroids


def _probes(units: np.ndarray, centroids: np.ndarray, n_probe: int, pool) -> np.ndarray:
    """(n, n_probe) most similar centroids of every row, most similar first."""
    n_lists = len(centroids)
    groups = -(-n_lists // _GROUP)  # group g: the centroids g, g + groups, g + 2 groups, ...
    padded = np.zeros((groups * _GROUP, centroids.shape[1]), np.float32)
    padded[:n_lists] = centroids
    probes = np.empty((len(units), n_probe), np.int32)
    pruned = groups > n_probe
    rows_per_block = 1024  # a (1024, n_lists) block of similarities stays in cache

    def block(start):
        sims = units[start:start + rows_per_block] @ padded.T
        sims[:, n_lists:] = -np.inf
        if pruned:  # the top n_probe groups by maximum hold the top n_probe entries
            maxima = sims.reshape(len(sims), _GROUP, groups).max(axis=1)
            best_groups = np.argpartition(maxima, groups - n_probe, axis=1)[:, groups - n_probe:]
            candidates = (best_groups[:, None, :] + groups * np.arange(_GROUP)[:, None]).reshape(len(sims), -1)
            values = np.take_along_axis(sims, candidates, 1)
        else:
            candidates, values = None, sims
        top = np.argpartition(values, values.shape[1] - n_probe, axis=1)[:, values.shape[1] - n_probe:]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(values, top, 1), axis=1, kind="stable"), 1)
        probes[start:start + rows_per_block] = top if candidates is None else np.take_along_axis(candidates, top, 1)

    list(pool.map(block, range(0, len(units), rows_per_block)))
    return probes


def _small(labels: np.ndarray, n_lists: int) -> np.ndarray:
    """List ids as int16 where they fit: numpy's stable sort of 16-bit integers is a radix sort."""
    return labels.astype(np.int16) if n_lists <= np.iinfo(np.int16).max else labels


def _true_flat_indices(mask: np.ndarray) -> np.ndarray:
    """Flat indices of the True entries of a C-contiguous bool array (sparse), by 8-byte words."""
    flat = mask.reshape(-1)
    if flat.size % 8:
        flat = np.concatenate([flat, np.zeros(8 - flat.size % 8, bool)])
    words = np.flatnonzero(flat.view(np.uint64))
    positions = (words[:, None] * 8 + np.arange(8)).reshape(-1)
    return positions[flat[positions]]


def join_top_k(units: np.ndarray, k: int, settings: JoinSettings, *,
               include_self: bool) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k of the unit rows ``units`` among themselves (module docstring).

    Returns:
      ``(values, ids)``, each (n, k): similarities (+inf for the row itself, -inf in empty
      slots) and row ids, similarity descending then smaller id.
    """
    settings = settings.checked()
    units = np.ascontiguousarray(units, np.float32)
    n = len(units)
    wanted = k - 1 if include_self else k  # non-self neighbours
    values = np.full((n, k), -np.inf, np.float32)
    ids = np.zeros((n, k), np.int32)
    if include_self:
        values[:, 0] = np.inf
        ids[:, 0] = np.arange(n)
    if wanted == 0 or n < 2:
        return values, ids
    n_lists = settings.lists_for(n)
    n_probe = min(settings.n_probe, n_lists)
    threads = settings.threads or os.cpu_count() or 1
    limits = _blas_one_thread()
    if limits is None:
        threads, limits = 1, contextlib.nullcontext()
    with limits, ThreadPoolExecutor(threads) as pool:
        centroids = _kmeans(units, n_lists, settings)
        probes = _probes(units, centroids, n_probe, pool)
        own = probes[:, 0].copy()
        order = np.argsort(_small(own, n_lists), kind="stable").astype(np.int32)
        bounds = np.concatenate([[0], np.cumsum(np.bincount(own, minlength=n_lists))])
        members = [order[bounds[c]:bounds[c + 1]] for c in range(n_lists)]

        tau = np.full(n, -np.inf, np.float32)  # -inf where the own list has fewer than `wanted` others

        def own_list(rows):
            if rows.size < 2:
                return None
            sims = units[rows] @ units[rows].T
            np.fill_diagonal(sims, -np.inf)
            if rows.size > wanted:
                tau[rows] = np.partition(sims, rows.size - wanted, axis=1)[:, rows.size - wanted]
            keep = sims >= tau[rows][:, None]  # the best `wanted`, and any tied with the last
            np.fill_diagonal(keep, False)
            hit = _true_flat_indices(keep)
            q, m = np.divmod(hit, rows.size)
            return rows[q], rows[m], sims.reshape(-1)[hit]

        found = [part for part in pool.map(own_list, members) if part is not None]

        # Query blocks: the items probing each list other than their own.
        pairs_query = np.repeat(np.arange(n, dtype=np.int32), n_probe - 1)
        pairs_list = probes[:, 1:].reshape(-1)
        by_list = np.argsort(_small(pairs_list, n_lists), kind="stable")
        queries_sorted = pairs_query[by_list]
        query_bounds = np.concatenate([[0], np.cumsum(np.bincount(pairs_list, minlength=n_lists))])
        del pairs_query, pairs_list, by_list

        def join_list(c):
            rows, queries = members[c], queries_sorted[query_bounds[c]:query_bounds[c + 1]]
            if rows.size == 0 or queries.size == 0:
                return None
            sims = units[queries] @ units[rows].T
            flat = sims.reshape(-1)
            hit = _true_flat_indices(sims >= tau[queries][:, None])  # members as the queries' candidates
            q, m = np.divmod(hit, rows.size)
            found_rows, found_ids, found_values = [queries[q]], [rows[m]], [flat[hit]]
            hit = _true_flat_indices(sims >= tau[rows][None, :])  # queries as the members' candidates
            q, m = np.divmod(hit, rows.size)
            again = (probes[rows[m]] == own[queries[q]][:, None]).any(axis=1)  # met as a row in L(query)
            hit, q, m = hit[~again], q[~again], m[~again]
            found_rows.append(rows[m])
            found_ids.append(queries[q])
            found_values.append(flat[hit])
            return np.concatenate(found_rows), np.concatenate(found_ids), np.concatenate(found_values)

        found += [part for part in pool.map(join_list, range(n_lists)) if part is not None]
    rows = np.concatenate([f[0] for f in found] + [np.zeros(0, np.int32)])
    cols = np.concatenate([f[1] for f in found] + [np.zeros(0, np.int32)])
    sims = np.concatenate([f[2] for f in found] + [np.zeros(0, np.float32)])
    del found
    # Ranking by (row, similarity descending) through a uint64 key: the row, then the
    # similarity's order-preserving bits (ascending bits = descending similarity), so no 3-key
    # lexsort. A plain sort of the keys (much cheaper than an argsort) gives each row's
    # `wanted`-th best bits; only the candidates at or above it (ties included) are argsorted.
    bits = (-sims).view(np.uint32)
    bits = np.where(bits & np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    keys = (rows.astype(np.uint64) << np.uint64(32)) | bits.astype(np.uint64)
    sorted_keys = np.sort(keys)
    starts = np.searchsorted(sorted_keys, np.arange(n + 1, dtype=np.uint64) << np.uint64(32))
    enough = np.diff(starts) >= wanted
    cutoff = np.full(n, np.iinfo(np.uint32).max, np.uint32)
    cutoff[enough] = (sorted_keys[starts[:-1][enough] + wanted - 1] & np.uint64(0xFFFFFFFF)).astype(np.uint32)
    del sorted_keys
    chosen = np.flatnonzero(bits <= cutoff[rows])
    del bits
    ranked = chosen[np.argsort(keys[chosen])]
    del keys
    rows, cols, sims = rows[ranked], cols[ranked], sims[ranked]
    first = np.searchsorted(rows, np.arange(n + 1))
    slot = np.arange(rows.size) - np.repeat(first[:-1], np.diff(first))
    # Where the last kept and the first dropped candidate tie, rank the row's candidates by
    # (similarity descending, smaller id) so that the smaller ids are kept.
    last = first[:-1] + wanted - 1
    tied = np.flatnonzero((last + 1 < first[1:]) & (sims[np.minimum(last, rows.size - 1)] ==
                                                    sims[np.minimum(last + 1, rows.size - 1)]))
    if tied.size:
        entries = np.concatenate([np.arange(first[r], first[r + 1]) for r in tied])
        entries = entries[np.lexsort((cols[entries], -sims[entries], rows[entries]))]
        cols[np.sort(entries)], sims[np.sort(entries)] = cols[entries], sims[entries]
    keep = slot < wanted
    top_ids = np.zeros((n, wanted), np.int32)
    top_values = np.full((n, wanted), -np.inf, np.float32)
    top_ids[rows[keep], slot[keep]] = cols[keep]
    top_values[rows[keep], slot[keep]] = sims[keep]
    tie_order = np.lexsort((top_ids, -top_values), axis=1)  # equal similarities: smaller id first
    values[:, k - wanted:] = np.take_along_axis(top_values, tie_order, 1)
    ids[:, k - wanted:] = np.where(np.isneginf(values[:, k - wanted:]), 0, np.take_along_axis(top_ids, tie_order, 1))
    return values, ids
