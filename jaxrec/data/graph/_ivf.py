r"""Approximate cosine kNN by an inverted file (IVF): spherical k-means, then probed clusters.

For catalogues where the exact tiled kNN (:mod:`._knn`, :math:`O(n^2 d)`) is too slow -- a
million items on two CPU cores. Steps:

1. **Spherical k-means** on a seeded sample of the unit rows: centroids start at distinct
   sample rows; each iteration assigns rows to the most similar centroid (argmax of
   :math:`\hat x^\top c`, ties to the lower cluster) and sets each centroid to its members'
   normalized mean; an emptied cluster restarts at the sample row least similar to its own
   centroid (deterministic).
2. **Assignment** of every item to its most similar centroid.
3. **Probing**: each cluster's queries (its members) are compared with the members of the
   ``n_probe`` clusters whose centroids are most similar to its centroid (itself first),
   extended by the next nearest clusters until at least k + 1 candidates exist, so every
   row gets k valid neighbours when the modality has more than k items.
4. **Tiles**: queries in chunks of at most ``query_block`` rows against candidates (sorted
   by id) in chunks of at most ``candidate_block`` columns; chunk lengths are padded to
   powers of two, so ``jit`` compiles a handful of shapes, not one per cluster. Each tile's
   exact top-k (:func:`~jaxrec.data.graph.tile_top_k`) is merged into the chunk's running
   top-k with the same rule as the exact builder: similarity descending, then smaller id.

With ``n_probe == n_clusters`` every item is a candidate of every query, and the result
equals the exact :func:`~jaxrec.data.graph.knn_neighbours`. Otherwise a true neighbour is
missed when it lies in a cluster that is not probed; the recall is measured by
``benchmarks/bench_knn.py --ivf``. Work is about :math:`n \cdot (n\_probe / n\_clusters)
\cdot n \cdot d` (times the imbalance of the cluster sizes) instead of :math:`n^2 d / 2`.

Measured on the scale ladder's synthetic data (128-d, k = 10, recall of the 9 non-self
neighbours; a shared 2-core machine): at 100,000 items, exact 41 CPU s; IVF
``n_clusters:n_probe`` 256:4 recall 0.56 (5.8 CPU s), 256:8 0.66 (5.8), 256:16 0.79 (8.1),
1024:8 0.55 (11.5), 1024:16 0.68 (12.3), 1024:32 0.81 (13.8). At 1,000,000 items, 1024:32:
346 CPU s (795 s wall under load), recall 0.82 on 1,000 sampled items; LATTICE's learned
64-d projections: 319 CPU s, recall 0.85. These features are a noisy view of a continuous
16-d latent space, with no cluster structure to exploit; clustered data does far better
(0.999 at 2 of 40 probed in ``tests/test_graph_knn_ivf.py``).

The cluster-blocked join of :mod:`._join` (the default approximate method, ``knn_method:
auto``) and the HNSW index of :mod:`._hnsw` (hnswlib) do better on the same data; this
inverted file stays for ``method="ivf"``. Its weak point is the probe order: clusters are
probed by centroid-to-centroid similarity per query CLUSTER, not per query item (faiss's
inverted file, probing per item, reached recall 0.95 at 16 of 1,024 clusters at 100,000 items
of this data); the join probes per item and still computes one product per list.

References:
  Jégou, Douze & Schmid, `Product quantization for nearest neighbor search
  <https://doi.org/10.1109/TPAMI.2010.57>`_, TPAMI 2011 (the inverted file, IVF);
  Dhillon & Modha, `Concept decompositions for large sparse text data using clustering
  <https://doi.org/10.1023/A:1007612920971>`_, Machine Learning 2001 (spherical k-means).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.graph._settings import checked_integer_fields
from jaxrec.data.graph._top_k import merge_later_ids, tile_top_k
from jaxrec.errors import ConfigError


class IvfSettings(NamedTuple):
    """Settings of the inverted-file kNN (all part of the graph cache key).

    Attributes:
      n_clusters: k-means clusters (about :math:`\\sqrt{n}` balances the work).
      n_probe: clusters probed per query cluster, 1 <= n_probe <= n_clusters.
      seed: seed of the k-means sample and initial centroids.
      sample_size: rows the k-means is fitted on (capped at the number of items).
      n_iterations: k-means iterations.
      query_block, candidate_block: largest query and candidate chunk of one tile.
    """

    n_clusters: int
    n_probe: int
    seed: int = 0
    sample_size: int = 65536
    n_iterations: int = 10
    query_block: int = 1024
    candidate_block: int = 8192

    def checked(self, n_present: int) -> "IvfSettings":
        """The settings as ints, or ``ConfigError`` naming the bad one."""
        settings = IvfSettings(**checked_integer_fields(self, "ivf", {"seed": 0}))
        if settings.n_probe > settings.n_clusters:
            raise ConfigError(f"ivf kNN: n_probe ({settings.n_probe}) must not exceed n_clusters "
                              f"({settings.n_clusters})")
        if settings.n_clusters > n_present:
            raise ConfigError(f"ivf kNN: n_clusters ({settings.n_clusters}) exceeds the {n_present} items "
                              "that have the modality")
        if settings.sample_size < settings.n_clusters:
            raise ConfigError(f"ivf kNN: sample_size ({settings.sample_size}) must be at least n_clusters "
                              f"({settings.n_clusters})")
        return settings


_ASSIGN_CHUNK = 16384


@jax.jit
def _nearest_centroid(rows, centroids):
    sims = jnp.matmul(rows, centroids.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.argmax(sims, axis=1).astype(jnp.int32), jnp.max(sims, axis=1)


def _assign(units: np.ndarray, centroids: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most similar centroid and that similarity, in fixed-size chunks (one compile)."""
    labels = np.empty(len(units), np.int32)
    best = np.empty(len(units), np.float32)
    chunk = min(_ASSIGN_CHUNK, len(units))
    for start in range(0, len(units), chunk):
        rows = units[start:start + chunk]
        if len(rows) < chunk:
            rows = np.concatenate([rows, np.zeros((chunk - len(rows), units.shape[1]), np.float32)])
        found, sims = _nearest_centroid(jnp.asarray(rows), centroids)
        stop = min(start + chunk, len(units))
        labels[start:stop] = np.asarray(found)[:stop - start]
        best[start:stop] = np.asarray(sims)[:stop - start]
    return labels, best


@functools.partial(jax.jit, static_argnames=("n_clusters",))
def _cluster_sums(rows, labels, *, n_clusters: int):
    return jax.ops.segment_sum(rows, labels, num_segments=n_clusters)


def spherical_kmeans(units: np.ndarray, settings: IvfSettings) -> np.ndarray:
    r"""(n_clusters, d) unit centroids of a seeded sample of the unit rows ``units``.

    .. math::  c_j \leftarrow \frac{\sum_{i: a_i = j} \hat x_i}{\lVert \sum_{i: a_i = j} \hat x_i \rVert},
      \qquad a_i = \operatorname{argmax}_j \hat x_i^\top c_j

    Args:
      units: (n, d) float32 unit rows (zero rows allowed).
      settings: checked :class:`IvfSettings`.

    Returns:
      (n_clusters, d) float32 centroids.
    """
    rng = np.random.default_rng(settings.seed)
    n = len(units)
    sample = units if settings.sample_size >= n else units[np.sort(rng.choice(n, settings.sample_size, replace=False))]
    centroids = sample[rng.choice(len(sample), settings.n_clusters, replace=False)].astype(np.float32)
    device_sample = jnp.asarray(sample)
    for _ in range(settings.n_iterations):
        labels, best = _assign(sample, jnp.asarray(centroids))
        sums = np.asarray(_cluster_sums(device_sample, jnp.asarray(labels), n_clusters=settings.n_clusters))
        norms = np.linalg.norm(sums, axis=1)
        empty = np.flatnonzero(norms == 0)
        centroids = (sums / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)
        if empty.size:  # restart emptied clusters at the worst-served rows
            centroids[empty] = sample[np.argsort(best, kind="stable")[:empty.size]]
    return centroids


def probe_lists(centroids: np.ndarray, sizes: np.ndarray, n_probe: int, min_candidates: int) -> list[np.ndarray]:
    """Per cluster, the clusters it probes: itself, then by centroid similarity (ties: lower id),
    at least ``n_probe`` of them and more until they hold ``min_candidates`` items."""
    sims = centroids.astype(np.float64) @ centroids.T.astype(np.float64)
    np.fill_diagonal(sims, np.inf)
    lists = []
    for cluster in range(len(centroids)):
        order = np.lexsort((np.arange(len(centroids)), -sims[cluster]))
        enough = np.searchsorted(np.cumsum(sizes[order]), min_candidates) + 1
        lists.append(order[:max(n_probe, min(enough, len(order)))])
    return lists


def _bucket(n: int, smallest: int, largest: int) -> int:
    return min(largest, max(smallest, 1 << max(0, int(n - 1).bit_length())))


@functools.partial(jax.jit, static_argnames=("k", "include_self", "group_size"))
def _probe_tile(units, query_ids, candidate_ids, n_candidates, state, *, k: int, include_self: bool,
                group_size: int):
    queries, candidates = units[query_ids], units[candidate_ids]
    sims = jnp.matmul(queries, candidates.T, precision=jax.lax.Precision.HIGHEST)
    real = jnp.arange(candidate_ids.shape[0]) < n_candidates
    sims = jnp.where(real[None, :], sims, -jnp.inf)
    itself = (query_ids[:, None] == candidate_ids[None, :]) & real[None, :]
    # +inf ranks the item itself first (replaced by similarity 1 at the end), as the exact builder.
    sims = jnp.where(itself, jnp.inf if include_self else -jnp.inf, sims)
    values, positions = tile_top_k(sims, k, axis=1, group_size=group_size)
    return merge_later_ids(*state, values, candidate_ids[positions], k)


def ivf_top_k(units: np.ndarray, k: int, settings: IvfSettings, *, include_self: bool, group_size: int,
              progress: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k of the unit rows ``units`` among themselves (module docstring).

    Args:
      units: (n, d) float32 unit rows.
      k: neighbours per row.
      settings: checked :class:`IvfSettings`.
      include_self: keep each row as its own first neighbour (+inf), or exclude it.
      group_size: of the pruned tile top-k.
      progress: optional ``fn(clusters_done, n_clusters)``.

    Returns:
      ``(values, ids)``, each (n, k): similarities (+inf for the row itself, -inf in empty
      slots) and row ids, similarity descending then smaller id.
    """
    n = len(units)
    centroids = spherical_kmeans(units, settings)
    device_units = jnp.asarray(units)
    labels, _ = _assign(units, jnp.asarray(centroids))
    order = np.argsort(labels, kind="stable")  # members of each cluster, ascending ids
    sizes = np.bincount(labels, minlength=settings.n_clusters)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    members = [order[bounds[c]:bounds[c + 1]] for c in range(settings.n_clusters)]
    probes = probe_lists(centroids, sizes, settings.n_probe, k + 1)
    values = np.full((n, k), -np.inf, np.float32)
    ids = np.zeros((n, k), np.int32)
    smallest_columns = 1 << int(max(k, 64) - 1).bit_length()
    for cluster in range(settings.n_clusters):
        queries = members[cluster]
        if queries.size:
            candidates = np.sort(np.concatenate([members[p] for p in probes[cluster]])).astype(np.int32)
            for q0 in range(0, queries.size, settings.query_block):
                chunk = queries[q0:q0 + settings.query_block]
                rows = _bucket(chunk.size, 64, settings.query_block)
                query_ids = np.zeros(rows, np.int32)
                query_ids[:chunk.size] = chunk
                state = (jnp.full((rows, k), -jnp.inf, jnp.float32),
                         jnp.full((rows, k), np.iinfo(np.int32).max, jnp.int32))
                for c0 in range(0, candidates.size, settings.candidate_block):
                    part = candidates[c0:c0 + settings.candidate_block]
                    columns = _bucket(part.size, smallest_columns, max(settings.candidate_block, smallest_columns))
                    candidate_ids = np.zeros(columns, np.int32)
                    candidate_ids[:part.size] = part
                    state = _probe_tile(device_units, jnp.asarray(query_ids), jnp.asarray(candidate_ids),
                                        jnp.int32(part.size), state, k=k, include_self=include_self,
                                        group_size=group_size)
                values[chunk] = np.asarray(state[0])[:chunk.size]
                ids[chunk] = np.asarray(state[1])[:chunk.size]
        if progress is not None:
            progress(cluster + 1, settings.n_clusters)
    return values, ids
