r"""Graphs with a fixed number of entries per row (kNN graphs), as (n, K) neighbour tables.

A kNN graph's row :math:`i` lists exactly :math:`K` entries: neighbour ids :math:`N_{ij}` and
weights :math:`W_{ij}` (an unused slot has weight 0). Kept as two (n, K) arrays instead of an
edge list, the row sums are plain sums over an axis, and only the column side needs a gather;
the same (row, column) pair may appear in several slots (e.g. the k-lists of two modalities
side by side), and the entries are then summed, as :class:`Edges` does.

:func:`propagate_neighbours` and :func:`neighbour_cosine` work in row chunks when the
(n, K, d) gathered rows would be large: each chunk's function is rematerialized
(``jax.checkpoint``), so the backward pass keeps only each chunk's (c, K) inputs and
recomputes its gather instead of storing all n K d gathered values -- the difference that
lets LATTICE's learned graph train at a million items (``benchmarks/bench_scale.py``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrec.data.graph._edges import Edges, check_normalization
from jaxrec.errors import ConfigError

DEFAULT_CHUNK_ENTRIES = 2**20  # rows per chunk = this // K: (2**20, d) gathered floats per chunk


def _rows_per_chunk(n: int, k: int, chunk_entries: int | None) -> int:
    if chunk_entries is None:
        return n
    if isinstance(chunk_entries, bool) or int(chunk_entries) != chunk_entries or chunk_entries < 1:
        raise ConfigError(f"chunk_entries must be a positive integer or None, got {chunk_entries!r}")
    return max(1, min(n, int(chunk_entries) // max(k, 1)))


def _check(neighbours, weights=None):
    if neighbours.ndim != 2:
        raise ConfigError(f"neighbour table must be (n, K); got shape {neighbours.shape}")
    if weights is not None and weights.shape != neighbours.shape:
        raise ConfigError(f"neighbour weights must match the neighbour table {neighbours.shape}; "
                          f"got {weights.shape}")


def _row_chunks(fn, rows_per_chunk: int, n: int, *row_arrays):
    """``fn(row_ids, *chunks)`` over row chunks, concatenated to n rows; rematerialized per
    chunk when there is more than one."""
    if rows_per_chunk >= n:
        return fn(jnp.arange(n, dtype=jnp.int32), *row_arrays)
    n_chunks = -(-n // rows_per_chunk)
    pad = n_chunks * rows_per_chunk - n
    # Padding rows point at row 0 with weight 0; their outputs are dropped.
    stacked = [jnp.pad(a, ((0, pad),) + ((0, 0),) * (a.ndim - 1)).reshape(n_chunks, rows_per_chunk, *a.shape[1:])
               for a in row_arrays]
    ids = jnp.minimum(jnp.arange(n_chunks * rows_per_chunk, dtype=jnp.int32), n - 1).reshape(n_chunks, -1)
    out = jax.lax.map(jax.checkpoint(lambda xs: fn(*xs)), (ids, *stacked))
    return out.reshape(n_chunks * rows_per_chunk, *out.shape[2:])[:n]


def propagate_neighbours(neighbours: jax.Array, weights: jax.Array, embeddings: jax.Array, *,
                         chunk_entries: int | None = DEFAULT_CHUNK_ENTRIES) -> jax.Array:
    r"""One product :math:`A E` of the neighbour-table matrix :math:`A` and embeddings.

    .. math::  (A E)_i = \sum_{j=1}^{K} W_{ij}\, E_{N_{ij}}

    Equal to :func:`propagate` over :func:`neighbour_edges` of the same table. Differentiable in
    ``weights`` and ``embeddings``.

    Args:
      neighbours: (n, K) int32 column ids in ``[0, n)``.
      weights: (n, K) entries (0 for an unused slot).
      embeddings: (n, d).
      chunk_entries: table entries per chunk (rows per chunk = ``chunk_entries // K``); chunks
        are rematerialized in the backward pass. ``None``: all rows at once.

    Returns:
      (n, d) in ``embeddings.dtype``.
    """
    neighbours, embeddings = jnp.asarray(neighbours), jnp.asarray(embeddings)
    weights = jnp.asarray(weights, embeddings.dtype)
    _check(neighbours, weights)
    n, k = neighbours.shape

    def rows(_, ids, w):
        return jnp.einsum("ck,ckd->cd", w, embeddings[ids])

    return _row_chunks(rows, _rows_per_chunk(n, k, chunk_entries), n, neighbours, weights)


def neighbour_cosine(features: jax.Array, neighbours: jax.Array, *,
                     chunk_entries: int | None = DEFAULT_CHUNK_ENTRIES) -> jax.Array:
    r"""Cosine similarity of each row and each of its listed neighbours, differentiably.

    .. math::  S_{ij} = \frac{x_i^\top x_{N_{ij}}}{\lVert x_i\rVert\, \lVert x_{N_{ij}}\rVert}

    (0 where either vector is zero); the same values as :func:`cosine_edge_weights` on
    :func:`neighbour_edges`.

    Args:
      features: (n, d) rows.
      neighbours: (n, K) int32 ids.
      chunk_entries: as in :func:`propagate_neighbours`.

    Returns:
      (n, K) similarities.
    """
    features, neighbours = jnp.asarray(features), jnp.asarray(neighbours)
    _check(neighbours)
    squared = jnp.sum(features * features, axis=1)
    inv_norm = jnp.where(squared > 0, jax.lax.rsqrt(jnp.where(squared > 0, squared, 1.0)), 0.0)
    # A barrier keeps the normalization out of the gather's fusion (XLA CPU otherwise fused it
    # into the backward scatter: 3x slower gradient at 1,425 x 20).
    units = jax.lax.optimization_barrier(features * inv_norm[:, None])
    n, k = neighbours.shape

    def rows(row_ids, ids):
        return jnp.einsum("cd,ckd->ck", units[row_ids], units[ids])

    return _row_chunks(rows, _rows_per_chunk(n, k, chunk_entries), n, neighbours)


def normalize_neighbour_weights(neighbours: jax.Array, weights: jax.Array, *,
                                normalization: str = "sym") -> jax.Array:
    r"""Degree-normalized table weights (as :func:`normalize_edges`), differentiably.

    .. math::  d_i = \sum_j W_{ij}, \qquad
      W'_{ij} = d_i^{-1/2} W_{ij} d_{N_{ij}}^{-1/2} \text{ ("sym")}, \quad d_i^{-1} W_{ij} \text{ ("rw")}

    with :math:`d^{-p} := 0` where :math:`d \le 0`.
    """
    check_normalization(normalization)
    neighbours, weights = jnp.asarray(neighbours), jnp.asarray(weights)
    _check(neighbours, weights)
    if normalization == "none":
        return weights
    degrees = jnp.sum(weights, axis=1)
    positive = degrees > 0
    safe = jnp.where(positive, degrees, 1.0)
    if normalization == "rw":
        return jnp.where(positive, 1.0 / safe, 0.0)[:, None] * weights
    scale = jnp.where(positive, jax.lax.rsqrt(safe), 0.0)
    return scale[:, None] * weights * scale[neighbours]


def neighbour_edges(neighbours: jax.Array, weights: jax.Array) -> Edges:
    """The table as a row-sorted :class:`Edges` list of n K entries (for inspection and tests)."""
    neighbours, weights = jnp.asarray(neighbours), jnp.asarray(weights)
    _check(neighbours, weights)
    n, k = neighbours.shape
    return Edges(jnp.repeat(jnp.arange(n, dtype=jnp.int32), k), neighbours.reshape(-1).astype(jnp.int32),
                 weights.reshape(-1))
