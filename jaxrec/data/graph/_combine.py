"""Combining per-modality item graphs with fixed (FREEDOM) or learned (LATTICE) weights.

The graphs are first put on one sparsity pattern, the union of their edges, so that the
combined graph is a weighted sum of aligned weight vectors: static in shape and
differentiable in the modality weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data.graph._edges import Edges
from jaxrec.errors import ConfigError


class GraphStack(NamedTuple):
    """M graphs on a common edge pattern (a pytree; put it in a model's ``ctx``).

    Attributes:
      rows, cols: (E,) int32 union of the graphs' non-zero entries, sorted by (row, col).
      weights: (M, E) float32; ``weights[m]`` is graph m's entry on each union edge (0 where
        graph m has none).
    """

    rows: np.ndarray | jax.Array
    cols: np.ndarray | jax.Array
    weights: np.ndarray | jax.Array


def stack_graphs(graphs: Sequence[Edges], n_nodes: int) -> GraphStack:
    """Aligns edge lists on the union of their non-zero entries (host, numpy).

    Repeated (row, col) entries within one graph are summed, as in the matrix they stand for.

    Args:
      graphs: M >= 1 edge lists over the same ``n_nodes`` nodes (e.g. one kNN graph per
        modality from :func:`knn_edges`).
      n_nodes: the number of nodes.

    Returns:
      :class:`GraphStack` with (E,) rows/cols and (M, E) weights.
    """
    if not graphs:
        raise ConfigError("stack_graphs needs at least one graph")
    keys_per_graph, weights_per_graph = [], []
    for graph in graphs:
        weights = np.asarray(graph.weights, np.float32)
        keep = weights != 0
        keys_per_graph.append(np.asarray(graph.rows, np.int64)[keep] * n_nodes + np.asarray(graph.cols, np.int64)[keep])
        weights_per_graph.append(weights[keep])
    union = np.unique(np.concatenate(keys_per_graph))
    stacked = np.zeros((len(graphs), union.size), np.float32)
    for m, (keys, weights) in enumerate(zip(keys_per_graph, weights_per_graph)):
        stacked[m] = np.bincount(np.searchsorted(union, keys), weights=weights, minlength=union.size)
    return GraphStack((union // n_nodes).astype(np.int32), (union % n_nodes).astype(np.int32), stacked)


def mix_item_graphs(weights: jax.Array, stack: GraphStack) -> Edges:
    r"""A fixed-weight sum of stacked graphs (FREEDOM's modality mixture).

    .. math::  \hat S = \sum_m \alpha_m S_m

    FREEDOM uses :math:`\alpha = (w_{image}, 1 - w_{image})` on the normalized image and text
    kNN graphs (``mm_image_weight``).

    Args:
      weights: (M,) mixing weights :math:`\alpha`.
      stack: the M graphs, from :func:`stack_graphs`.

    Returns:
      ``Edges`` on the union pattern with weights ``weights @ stack.weights``.

    References:
      MMRec ``src/models/freedom.py: __init__`` (``mm_adj``).
    """
    stacked = jnp.asarray(stack.weights)
    weights = jnp.asarray(weights, jnp.result_type(stacked.dtype, jnp.float32))
    if weights.shape != (stacked.shape[0],):
        raise ConfigError(f"need one mixing weight per graph: {stacked.shape[0]}, got shape {weights.shape}")
    return Edges(jnp.asarray(stack.rows), jnp.asarray(stack.cols), weights @ stacked)


def combine_item_graphs(weight_logits: jax.Array, stack: GraphStack) -> Edges:
    r"""A softmax-weighted sum of stacked graphs, differentiable in the logits (LATTICE).

    .. math::  \hat S = \sum_m \operatorname{softmax}(\beta)_m S_m

    LATTICE combines its per-modality graphs this way with a learned :math:`\beta`
    (``modal_weight``, initialized to equal values), both the frozen feature graphs and the
    graphs learned from projected features (the latter re-normalized afterwards with
    :func:`normalize_edges`).

    Args:
      weight_logits: (M,) learnable logits :math:`\beta`.
      stack: the M graphs, from :func:`stack_graphs`.

    Returns:
      ``Edges`` on the union pattern.

    References:
      Zhang et al., *Mining Latent Structures for Multimedia Recommendation*, ACM MM 2021,
      eq. (4); MMRec ``src/models/lattice.py: forward``.
    """
    return mix_item_graphs(jax.nn.softmax(jnp.asarray(weight_logits)), stack)
