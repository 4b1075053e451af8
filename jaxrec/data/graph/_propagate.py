"""Sparse propagation of node embeddings over an edge list, and LightGCN's layer mean."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import sparse as jsparse

from jaxrec.data.graph._edges import Edges
from jaxrec.errors import ConfigError


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


def lightgcn_propagate(edges: Edges, embeddings: jax.Array, n_layers: int, *,
                       indices_are_sorted: bool = False, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> tuple[jax.Array, list[jax.Array]]:
    r"""LightGCN's multi-layer propagation, returning the layer mean and every layer.

    .. math::

      E^{(0)} = E, \qquad E^{(l+1)} = \hat A E^{(l)}, \qquad
      \bar E = \frac{1}{L+1} \sum_{l=0}^{L} E^{(l)}

    Args:
      edges: the normalized adjacency :math:`\hat A` (e.g. :func:`normalized_adjacency`), or a
        constant :class:`~jaxrec.data.graph.FixedGraph` (propagated by
        :func:`~jaxrec.data.graph.propagate_fixed`: the gradient goes over its sorted
        transpose; ``indices_are_sorted`` is implied).
      embeddings: (n_users + n_items, d) layer-0 embeddings, users first.
      n_layers: :math:`L \ge 0`, a Python int.
      indices_are_sorted, chunk_size: see :func:`propagate`.

    Returns:
      ``(mean, layers)``: the (n, d) layer mean and the list of the ``L + 1`` (n, d) layers
      :math:`E^{(0)}, \dots, E^{(L)}`.

    References:
      He et al., *LightGCN: Simplifying and Powering Graph Convolution Network for
      Recommendation*, SIGIR 2020, eqs. (3)-(4); MMRec ``src/models/freedom.py: forward``.
    """
    if int(n_layers) != n_layers or n_layers < 0:
        raise ConfigError(f"n_layers must be a non-negative integer, got {n_layers!r}")
    from jaxrec.data.graph._fixed import FixedGraph, propagate_fixed  # _fixed imports this module

    if isinstance(edges, FixedGraph):
        step = functools.partial(propagate_fixed, edges, chunk_size=chunk_size)
    else:
        step = functools.partial(propagate, edges, indices_are_sorted=indices_are_sorted, chunk_size=chunk_size)
    layers = [jnp.asarray(embeddings)]
    for _ in range(int(n_layers)):
        layers.append(step(layers[-1]))
    mean = layers[0] if len(layers) == 1 else jnp.mean(jnp.stack(layers), axis=0)
    return mean, layers
