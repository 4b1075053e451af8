"""Exact top-k of similarity tiles: group-max pruning and an order-preserving merge.

Shared by the exact tiled kNN (:mod:`._knn`), the inverted-file kNN (:mod:`._ivf`) and
LATTICE's learned graph. Ranking is by value descending, then by smaller index/id.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxrec.errors import ConfigError


def tile_top_k(values: jax.Array, k: int, *, axis: int = 1, group_size: int = 8) -> tuple[jax.Array, jax.Array]:
    r"""The k largest entries of every row (``axis=1``) or column (``axis=0``) of a 2-D tile, exactly.

    Ranked by value descending, then by smaller index (``lax.top_k``'s rule), with group-max
    pruning: the line is cut into groups of ``group_size`` consecutive entries, and

    .. math::
      \operatorname{top}_k(v) \subseteq \bigcup_{G \in \operatorname{top}_k(\{\max G\})} G

    because an entry of a group G outside the k best groups (by maximum, then by group index)
    is preceded by the maxima of those k groups, each larger, or equal and at a smaller index.
    So a cheap max over groups, a top-k of the (line, n_groups) maxima, a gather of the k
    chosen groups (in index order, so that ``lax.top_k``'s lower-index rule still means
    lower id) and a top-k of those ``k * group_size`` candidates give exactly
    ``lax.top_k(values, k)``: same values, same indices, ties included. Columns are pruned
    without transposing the tile.

    Args:
      values: (rows, cols) tile (a traced array inside ``jit``); ``-inf`` marks masked entries.
      k: entries to keep per line (static), ``k <= ``the line length.
      axis: 1 for each row's top-k, 0 for each column's.
      group_size: entries per group (static); lines with at most k groups use ``lax.top_k``.

    Returns:
      ``(top_values, indices)``, each (lines, k): the line's largest values, descending, and
      their positions along ``axis``.
    """
    if axis not in (0, 1):
        raise ConfigError(f"tile_top_k: axis must be 0 or 1, got {axis!r}")
    length = values.shape[axis]
    n_groups = -(-length // group_size)
    if group_size <= 1 or n_groups <= k:
        return jax.lax.top_k(values.T if axis == 0 else values, k)
    pad = n_groups * group_size - length
    if pad:  # -inf padding is never chosen before a real entry, and real entries keep their index
        widths = ((0, pad), (0, 0)) if axis == 0 else ((0, 0), (0, pad))
        values = jnp.pad(values, widths, constant_values=-jnp.inf)
    if axis == 1:
        n_lines = values.shape[0]
        maxima = values.reshape(n_lines, n_groups, group_size).max(axis=2)
    else:
        n_lines = values.shape[1]
        maxima = values.reshape(n_groups, group_size, n_lines).max(axis=1).T
    _, groups = jax.lax.top_k(maxima, k)
    groups = jnp.sort(groups, axis=1)  # candidates in index order: lax.top_k's tie rule stays "smaller id"
    positions = groups[:, :, None] * group_size + jnp.arange(group_size, dtype=groups.dtype)
    lines = jnp.arange(n_lines, dtype=groups.dtype)[:, None, None]
    candidates = values[lines, positions] if axis == 1 else values[positions, lines]
    top_values, slots = jax.lax.top_k(candidates.reshape(n_lines, k * group_size), k)
    return top_values, jnp.take_along_axis(positions.reshape(n_lines, k * group_size), slots, axis=1)


def merge_later_ids(best_values, best_ids, new_values, new_ids, k: int):
    """The k best of a running top-k and a new one whose ids all exceed the running ones.

    Args:
      best_values, best_ids: (lines, k) running top-k (value descending, then smaller id).
      new_values, new_ids: (lines, k) top-k of candidates with larger ids than any in ``best``.
      k: entries kept.

    Returns:
      ``(values, ids)``, each (lines, k), in the same order.
    """
    # Every candidate in ``new`` has a larger id than every entry of ``best`` (the caller
    # visits ids in increasing order), so with ``best`` first, lax.top_k's lower-position rule
    # ranks exact ties by smaller id: a top-k of 2k entries instead of a two-key sort.
    values = jnp.concatenate([best_values, new_values], axis=1)
    ids = jnp.concatenate([best_ids, new_ids], axis=1)
    top_values, slots = jax.lax.top_k(values, k)
    return top_values, jnp.take_along_axis(ids, slots, axis=1)
