"""Sparse propagation of node embeddings over an edge list (LightGCN's layers over it:
:mod:`jaxrec.data.graph._lightgcn`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse

from jaxrec.data.graph._edges import Edges


DEFAULT_CHUNK_SIZE = 2**18


def propagate(edges: Edges, embeddings: jax.Array, *, indices_are_sorted: bool = False,
              chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> jax.Array:
    r"""One sparse matrix product :math:`\hat A E`, by segment sums over the edge list.

    .. math::

      (\hat A E)_i = \sum_{e:\, r_e = i} w_e\, E_{c_e}

    The number of nodes is ``embeddings.shape[0]`` (static under ``jit``); edges to or from
    nodes outside ``[0, n)`` are dropped. Differentiable in ``embeddings`` and in the weights.
    Graphs with more than ``chunk_size`` edges are summed chunk by chunk in a ``lax.scan``
    that adds into one (n, d) buffer: the (E, d) message array of a one-shot
    ``segment_sum`` never exists, which on CPU was 2-3x faster for a 20M-edge graph and
    saves its 5 GB (``benchmarks/bench_knn.py --propagation``).

    Args:
      edges: (E,) rows, cols and weights of the square matrix :math:`\hat A`.
      embeddings: (n, d) node embeddings.
      indices_are_sorted: promise that ``edges.rows`` is non-decreasing (as produced by
        :func:`normalized_adjacency`, :func:`knn_edges` and :func:`prune_edges`).
      chunk_size: edges per chunk; ``None`` sums all edges at once.

    Returns:
      (n, d) propagated embeddings, in ``embeddings.dtype``.
    """
    embeddings = jnp.asarray(embeddings)
    rows, cols = jnp.asarray(edges.rows), jnp.asarray(edges.cols)
    weights = jnp.asarray(edges.weights, embeddings.dtype)
    n_nodes, n_edges = embeddings.shape[0], rows.shape[0]
    # An edge outside [0, n) adds nothing: XLA's gather would clamp (or wrap) its column and the
    # chunked scatter-add wrap a negative row, so its weight is zeroed and its ids clipped (a
    # monotone map: sorted rows stay sorted). Edges inside are summed exactly as before.
    inside = (rows >= 0) & (rows < n_nodes) & (cols >= 0) & (cols < n_nodes)
    weights = jnp.where(inside, weights, jnp.zeros((), weights.dtype))
    rows, cols = jnp.clip(rows, 0, max(n_nodes - 1, 0)), jnp.clip(cols, 0, max(n_nodes - 1, 0))
    if chunk_size is None or n_edges <= chunk_size:
        return jax.ops.segment_sum(weights[:, None] * embeddings[cols], rows, num_segments=n_nodes,
                                   indices_are_sorted=indices_are_sorted)
    pad = -n_edges % chunk_size
    # Padding edges repeat the last row (keeping rows sorted) with weight 0.
    rows = jnp.pad(rows, (0, pad), mode="edge").reshape(-1, chunk_size)
    cols = jnp.pad(cols, (0, pad)).reshape(-1, chunk_size)
    weights = jnp.pad(weights, (0, pad)).reshape(-1, chunk_size)

    def add_chunk(total, chunk):
        chunk_rows, chunk_cols, chunk_weights = chunk
        messages = chunk_weights[:, None] * embeddings[chunk_cols]
        return total.at[chunk_rows].add(messages, indices_are_sorted=indices_are_sorted), None

    total, _ = jax.lax.scan(add_chunk, jnp.zeros_like(embeddings), (rows, cols, weights))
    return total


def to_bcoo(edges: Edges, n_nodes: int) -> jsparse.BCOO:
    """The edge list as an (n_nodes, n_nodes) ``jax.experimental.sparse.BCOO`` matrix."""
    indices = jnp.stack([jnp.asarray(edges.rows, jnp.int32), jnp.asarray(edges.cols, jnp.int32)], axis=1)
    return jsparse.BCOO((jnp.asarray(edges.weights, jnp.float32), indices), shape=(n_nodes, n_nodes))


def propagate_bcoo(matrix: jsparse.BCOO, embeddings: jax.Array) -> jax.Array:
    r"""The same product :math:`\hat A E` through ``BCOO @ dense`` (see :func:`propagate`).

    Benchmarked against :func:`propagate` in ``benchmarks/bench_knn.py --propagation``; the
    segment-sum form is the default (it was as fast or faster on CPU).
    """
    return matrix @ jnp.asarray(embeddings)
