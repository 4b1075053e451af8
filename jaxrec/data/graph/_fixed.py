r"""A fixed sparse matrix propagated with an exact, sorted transpose for its gradient.

:func:`~jaxrec.data.graph.propagate` is a gather of the source rows and a sorted
``segment_sum`` into the target rows; differentiated by JAX, its gradient in the embeddings is
the transposed product computed as a scatter-add into the UNSORTED source rows, the slow part
of a graph model's backward pass on CPU. A graph that is a constant of the step (a context
array, not a function of the parameters) has a known transpose, so:

.. math::

  y = \hat A x, \qquad \frac{\partial L}{\partial x} = \hat A^\top \frac{\partial L}{\partial y},

and :math:`\hat A^\top` is propagated as one more row-sorted edge list (the same gather and
sorted segment sum as the forward pass). For a symmetric matrix (the ``"sym"``-normalized
user-item adjacency, with or without FREEDOM's pruning) :math:`\hat A^\top = \hat A` and the
transpose is the graph itself; for MMGCN's :math:`D^{-1} A` it is :math:`A D^{-1}`, built once on
the host (:func:`fixed_graph`).

The weights of a :class:`FixedGraph` get NO gradient (zero cotangent): use it only for graphs
that do not depend on the parameters (LATTICE's learned item graph keeps
:func:`~jaxrec.data.graph.propagate`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import numpy as np

from jaxrec.data.graph import _csr_native
from jaxrec.data.graph._edges import Edges
from jaxrec.data.graph._propagate import DEFAULT_CHUNK_SIZE, propagate
from jaxrec.errors import DataError


class FixedGraph(NamedTuple):
    """A constant square matrix and its transpose, both row-sorted edge lists (a pytree).

    Attributes:
      edges: :math:`\\hat A`, rows non-decreasing.
      transposed: :math:`\\hat A^\\top`, rows non-decreasing; ``None`` when :math:`\\hat A` is
        symmetric (the transpose is ``edges`` itself).
      starts, transposed_starts: optional CSR row starts of ``edges`` / ``transposed``
        (:func:`row_starts`, for any number of rows: :func:`propagate_fixed` pads or cuts them
        to the embeddings' rows); ``None``: computed in the step when needed (a binary search
        per row, ~0.1 ms on lfm2k's graph: :func:`fixed_graph` stores them).
    """

    edges: Edges
    transposed: Edges | None = None
    starts: jax.Array | np.ndarray | None = None
    transposed_starts: jax.Array | np.ndarray | None = None

    @property
    def rows(self):
        return self.edges.rows

    @property
    def cols(self):
        return self.edges.cols

    @property
    def weights(self):
        return self.edges.weights

    @property
    def n_edges(self) -> int:
        return self.edges.n_edges

    def to_dense(self, n_nodes: int) -> np.ndarray:
        """The (n_nodes, n_nodes) float64 matrix :math:`\\hat A`, for tests and small graphs only."""
        return self.edges.to_dense(n_nodes)

    def to_device(self) -> "FixedGraph":
        def device(starts):
            return None if starts is None else jax.numpy.asarray(starts, jax.numpy.int32)

        return FixedGraph(self.edges.to_device(), None if self.transposed is None else self.transposed.to_device(),
                          device(self.starts), device(self.transposed_starts))


def row_starts(rows, n_rows: int):
    """The (n_rows + 1,) CSR starts of row-sorted ``rows``: entry r is the index of row r's first
    edge (rows outside ``[0, n_rows)`` fall outside every row). numpy in, numpy out (host);
    a jax array in, jax out (in a jitted builder)."""
    xp = np if isinstance(rows, np.ndarray) else jax.numpy
    return xp.searchsorted(rows, xp.arange(n_rows + 1, dtype=rows.dtype), side="left").astype(xp.int32)


def _check_sorted(rows: np.ndarray, name: str) -> None:
    if rows.size and np.any(rows[1:] < rows[:-1]):
        raise DataError("edge rows must be non-decreasing (row-sorted)", field=name, found="unsorted rows",
                        expected="rows sorted as normalized_adjacency / knn_edges produce them")


def fixed_graph(edges: Edges, *, symmetric: bool = False) -> FixedGraph:
    """A :class:`FixedGraph` of host ``edges`` (row-sorted): the transpose is sorted once here.

    Args:
      edges: the row-sorted edge list of :math:`\\hat A` (numpy arrays).
      symmetric: promise that :math:`\\hat A^\\top = \\hat A` (same entries both ways), e.g. the
        ``"sym"``-normalized user-item adjacency; no transpose is stored. Checked on the host.

    Returns:
      host arrays; call ``.to_device()`` for a model's ``ctx``.
    """
    rows, cols, weights = (np.asarray(a) for a in edges)
    _check_sorted(rows, "edges.rows")
    n_rows = int(max(rows.max(), cols.max())) + 1 if rows.size else 0
    order = np.lexsort((rows, cols))          # by col, then row: the transpose's row order
    transposed = Edges(cols[order].astype(np.int32), rows[order].astype(np.int32), weights[order].astype(np.float32))
    if symmetric:
        forward = np.lexsort((cols, rows))
        if not (np.array_equal(rows[forward], transposed.rows) and np.array_equal(cols[forward], transposed.cols)
                and np.allclose(weights[forward], transposed.weights, rtol=1e-6, atol=0.0)):
            raise DataError("graph declared symmetric is not", field="edges", found="A^T != A",
                            expected="the same weight on (r, c) and (c, r)")
        return FixedGraph(Edges(rows, cols, weights), None, row_starts(rows, n_rows))
    return FixedGraph(Edges(rows, cols, weights), transposed, row_starts(rows, n_rows),
                      row_starts(transposed.rows, n_rows))


def _starts_for(starts, n: int):
    """Row starts of ``n`` rows from stored ones of any length (rows past the stored ones are empty)."""
    if starts.shape[0] >= n + 1:
        return starts[:n + 1]
    return jax.numpy.concatenate([starts, jax.numpy.broadcast_to(starts[-1:], (n + 1 - starts.shape[0],))])


def _product(edges: Edges, starts, embeddings: jax.Array, chunk_size: int | None) -> jax.Array:
    """``edges @ embeddings``: the CSR custom call on CPU where it is available (the same values, bit
    for bit; :mod:`jaxrec.data.graph._csr_native`), XLA's gather and sorted scatter-add otherwise."""
    def xla(x):
        return propagate(edges, x, indices_are_sorted=True, chunk_size=chunk_size)

    if not (_csr_native.dtype_supported(embeddings) and _csr_native.native_available()):
        return xla(embeddings)
    n = embeddings.shape[0]
    starts = row_starts(jax.numpy.asarray(edges.rows, jax.numpy.int32), n) if starts is None else _starts_for(
        jax.numpy.asarray(starts, jax.numpy.int32), n)
    return jax.lax.platform_dependent(
        embeddings, cpu=lambda x: _csr_native.csr_propagate(starts, edges.cols, edges.weights, x), default=xla)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _propagate_fixed(graph: FixedGraph, embeddings: jax.Array, chunk_size: int | None) -> jax.Array:
    return _product(graph.edges, graph.starts, embeddings, chunk_size)


def _fwd(graph, embeddings, chunk_size):
    return _propagate_fixed(graph, embeddings, chunk_size), graph


def _bwd(chunk_size, graph, cotangent):
    if graph.transposed is None:
        transposed, starts = graph.edges, graph.starts
    else:
        transposed, starts = graph.transposed, graph.transposed_starts
    zero_graph = jax.tree.map(_zero_cotangent, graph)
    return zero_graph, _product(transposed, starts, cotangent, chunk_size)


def _zero_cotangent(leaf):
    leaf = jax.numpy.asarray(leaf)
    if jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact):
        return jax.numpy.zeros_like(leaf)
    return np.zeros(leaf.shape, dtype=jax.dtypes.float0)


_propagate_fixed.defvjp(_fwd, _bwd)


def propagate_fixed(graph: FixedGraph, embeddings: jax.Array, *, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> jax.Array:
    r""":math:`\hat A E` as :func:`~jaxrec.data.graph.propagate`, with the gradient
    :math:`\hat A^\top G` propagated over the sorted transpose (see the module docstring).
    On CPU both products run the CSR custom call of :mod:`jaxrec.data.graph._csr_native` where
    it builds (the same sums in the same order; float32), XLA's path elsewhere.

    Args:
      graph: a :class:`FixedGraph` (device arrays), a constant of the step.
      embeddings: (n, d) node embeddings.
      chunk_size: edges per chunk; ``None`` sums all edges at once.

    Returns:
      (n, d) propagated embeddings; gradient in ``embeddings`` only.
    """
    return _propagate_fixed(graph, jax.numpy.asarray(embeddings), chunk_size)
