"""LightGCN's multi-layer propagation and layer mean, over an edge list or a fixed graph."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxrec.data.graph._edges import Edges
from jaxrec.data.graph._fixed import FixedGraph, propagate_fixed
from jaxrec.data.graph._propagate import DEFAULT_CHUNK_SIZE, propagate
from jaxrec.errors import ConfigError


def lightgcn_propagate(edges: Edges | FixedGraph, embeddings: jax.Array, n_layers: int, *,
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
    if isinstance(edges, FixedGraph):
        step = functools.partial(propagate_fixed, edges, chunk_size=chunk_size)
    else:
        step = functools.partial(propagate, edges, indices_are_sorted=indices_are_sorted, chunk_size=chunk_size)
    layers = [jnp.asarray(embeddings)]
    for _ in range(int(n_layers)):
        layers.append(step(layers[-1]))
    mean = layers[0] if len(layers) == 1 else jnp.mean(jnp.stack(layers), axis=0)
    return mean, layers
