"""Sparse graphs as fixed-size edge lists, and their degree normalizations.

A graph on ``n`` nodes is an :class:`Edges` triple of equal-length arrays: edge ``e`` carries
``weights[e]`` from node ``cols[e]`` into node ``rows[e]``, i.e. the matrix entry
``A[rows[e], cols[e]]``. Repeated (row, col) pairs add up. Padding edges carry weight 0, so a
graph whose edge count varies (pruned, masked) still has a static shape under ``jit``.

The normalizations follow MMRec, computing the degree of a node as the sum of the weights of
its ROW (its out-going entries), for square and symmetric graphs alike:

* ``"sym"``: :math:`D^{-1/2} A D^{-1/2}`, MMRec's ``compute_normalized_laplacian`` (LATTICE,
  FREEDOM) and LightGCN's user-item normalization;
* ``"rw"``: :math:`D^{-1} A`, LATTICE's user-item ``normalized_adjacency_single``;
* ``"none"``: the weights unchanged.

A node with no positive degree gets factor 0 (MMRec maps the ``inf`` of ``0^{-1/2}`` to 0;
its negative row sums, possible for similarity-weighted kNN graphs, would give NaN there).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.errors import ConfigError

NORMALIZATIONS = ("sym", "rw", "none")


class Edges(NamedTuple):
    """A sparse square matrix as an edge list (a pytree: pass it inside a model's ``ctx``).

    Attributes:
      rows: (E,) int32 target node of each edge (the matrix row).
      cols: (E,) int32 source node of each edge (the matrix column).
      weights: (E,) float32 entry values; 0 for padding edges.
    """

    rows: np.ndarray | jax.Array
    cols: np.ndarray | jax.Array
    weights: np.ndarray | jax.Array

    @property
    def n_edges(self) -> int:
        return int(self.rows.shape[0])

    def to_dense(self, n_nodes: int) -> np.ndarray:
        """The (n_nodes, n_nodes) float64 matrix, for tests and small graphs only."""
        dense = np.zeros((n_nodes, n_nodes))
        np.add.at(dense, (np.asarray(self.rows), np.asarray(self.cols)), np.asarray(self.weights, np.float64))
        return dense

    def to_device(self) -> "Edges":
        """The same edges as jax arrays (int32 indices, float32 weights)."""
        return Edges(jnp.asarray(self.rows, jnp.int32), jnp.asarray(self.cols, jnp.int32),
                     jnp.asarray(self.weights, jnp.float32))


def check_normalization(normalization: str) -> str:
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown graph normalization {normalization!r}; expected one of {NORMALIZATIONS}")
    return normalization


def _inverse_power(degrees, power: float, xp):
    positive = degrees > 0
    safe = xp.where(positive, degrees, 1.0)
    return xp.where(positive, safe ** power, 0.0)


def normalize_edges_host(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, n_nodes: int, *,
                         normalization: str) -> np.ndarray:
    """Host (numpy) twin of :func:`normalize_edges`: the normalized float32 weights."""
    check_normalization(normalization)
    weights = np.asarray(weights, np.float64)
    if normalization == "none":
        return weights.astype(np.float32)
    degrees = np.bincount(rows, weights=weights, minlength=n_nodes)
    if normalization == "rw":
        return (_inverse_power(degrees, -1.0, np)[rows] * weights).astype(np.float32)
    scale = _inverse_power(degrees, -0.5, np)
    return (scale[rows] * weights * scale[cols]).astype(np.float32)


def normalize_edges(edges: Edges, n_nodes: int, *, normalization: str = "sym") -> Edges:
    r"""Degree-normalizes an edge list, on device and differentiably in the weights.

    .. math::

      d_i = \sum_{e: r_e = i} w_e, \qquad
      w'_e = \begin{cases}
        d_{r_e}^{-1/2}\, w_e\, d_{c_e}^{-1/2} & \text{"sym"} \\
        d_{r_e}^{-1}\, w_e & \text{"rw"}
      \end{cases}

    with :math:`d^{-p} := 0` where :math:`d \le 0`. LATTICE re-normalizes its learned,
    softmax-weighted item graph this way at every graph update.

    Args:
      edges: (E,) rows, cols and weights.
      n_nodes: the number of nodes (static: it sizes the degree vector).
      normalization: ``"sym"``, ``"rw"`` or ``"none"`` (keyword-only).

    Returns:
      ``Edges`` with the same rows and cols and the normalized (E,) weights.

    References:
      Zhang et al., *Mining Latent Structures for Multimedia Recommendation*, ACM MM 2021;
      MMRec ``src/utils/utils.py: compute_normalized_laplacian, get_sparse_laplacian``.
    """
    check_normalization(normalization)
    rows, cols = jnp.asarray(edges.rows), jnp.asarray(edges.cols)
    weights = jnp.asarray(edges.weights)
    if normalization == "none":
        return Edges(rows, cols, weights)
    degrees = jax.ops.segment_sum(weights, rows, num_segments=n_nodes)
    if normalization == "rw":
        return Edges(rows, cols, _inverse_power(degrees, -1.0, jnp)[rows] * weights)
    scale = _inverse_power(degrees, -0.5, jnp)
    return Edges(rows, cols, scale[rows] * weights * scale[cols])
