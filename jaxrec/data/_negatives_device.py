"""Negative sampling on device: :class:`PositiveSets` as jax arrays and a jittable sampler.

The same two rules as the host sampler (``jaxrec.data._negatives``), with fixed shapes:
uniform negatives exactly (the ``r``-th negative is ``r`` plus the number of the user's
positives whose gap ``p_i - i`` is ``<= r``, found by bisection in the user's CSR segment),
popularity negatives by inverse CDF with a fixed number of candidates per slot. Built with an
item pool (e.g. :func:`jaxrec.data._negatives.trained_item_pool`), it draws in the pool's
compact ids and maps back through the pool, as the host samplers do.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data._negatives import PositiveSets, check_item_pool
from jaxrec.errors import DataError


@dataclasses.dataclass(frozen=True)
class DevicePositives:
    """:class:`PositiveSets` as device arrays, a pytree for jitted samplers.

    Attributes:
      indptr: (n_users + 1,) int32. indices: (nnz,) int32. gaps: (nnz,) int32, the number
        of negatives below each positive (``p_i - i`` within the user).
      pool: (m,) int32 item ids negatives are drawn from, or None (every item); the other
        arrays then hold the positives in the pool's compact ids ``0 .. m - 1``.
      n_items: static size of the id space drawn from (``m`` with a pool). search_steps:
        static bisection steps, enough for the longest user (``ceil(log2(max_degree + 1))``).
    """

    indptr: jax.Array
    indices: jax.Array
    gaps: jax.Array
    pool: jax.Array | None
    n_items: int
    search_steps: int

    @classmethod
    def from_sets(cls, sets: PositiveSets, item_pool=None) -> "DevicePositives":
        """``sets`` on device; with ``item_pool`` (sorted, distinct ids) negatives are drawn only there."""
        pool = None
        if item_pool is not None:
            pool = jnp.asarray(check_item_pool(item_pool, sets.n_items), jnp.int32)
            sets = sets.restricted_to(item_pool)
        if sets.indices.size >= 2**31:
            raise DataError("too many positives for int32 device arrays", field="positives",
                            found=sets.indices.size, expected="fewer than 2**31")
        max_degree = int(sets.degrees.max()) if sets.n_users else 0
        rows = np.repeat(np.arange(sets.n_users, dtype=np.int64), sets.degrees)
        gaps = sets._gap_keys - rows * sets.n_items
        return cls(jnp.asarray(sets.indptr, jnp.int32), jnp.asarray(sets.indices, jnp.int32),
                   jnp.asarray(gaps, jnp.int32), pool, sets.n_items, max(1, math.ceil(math.log2(max_degree + 1))))


jax.tree_util.register_dataclass(DevicePositives, data_fields=["indptr", "indices", "gaps", "pool"],
                                 meta_fields=["n_items", "search_steps"])


def _upper_bound(values: jax.Array, start: jax.Array, end: jax.Array, target: jax.Array, steps: int) -> jax.Array:
    """First position in ``values[start:end]`` (sorted) holding a value > ``target``."""
    last = values.shape[0] - 1

    def step(_, bounds):
        low, high = bounds
        active = low < high
        middle = (low + high) // 2
        go_right = values[jnp.clip(middle, 0, max(last, 0))] <= target
        return jnp.where(active & go_right, middle + 1, low), jnp.where(active & ~go_right, middle, high)

    start, end = (jnp.broadcast_to(bound, target.shape) for bound in (start, end))
    low, _ = jax.lax.fori_loop(0, steps + 1, step, (start, end))
    return low


def sample_negatives_jax(
    key: jax.Array,
    users: jax.Array,
    positives: DevicePositives,
    *,
    n_neg: int = 1,
    item_cdf: jax.Array | None = None,
    n_candidates: int = 8,
) -> tuple[jax.Array, jax.Array]:
    """Jittable negative sampling with fixed shapes, on device.

    Uniform (``item_cdf=None``): exact, as :func:`sample_negatives` (the ``r``-th negative is
    ``r`` plus the count of gaps ``<= r``, found by bisection inside the user's segment).
    Popularity: ``n_candidates`` draws per slot by inverse CDF; the first non-positive one is
    kept, and a slot whose candidates are all positives falls back to a uniform negative and
    is flagged.

    Args:
      key: a PRNG key.
      users: (n,) int32 user ids.
      positives: :class:`DevicePositives`.
      n_neg: negatives per user (static).
      item_cdf: optional (n_items,) float32 cumulative item weights (``jnp.cumsum(pop)``);
        with a pool, over the pool's items in order (``jnp.cumsum(pop[pool])``).
      n_candidates: candidates per slot for popularity sampling (static).

    Returns:
      ``(negatives, exact)``: (n, n_neg) int32 items and (n, n_neg) bool, False where the
      draw fell back to uniform (popularity) or the user has no negative at all (the item is
      then meaningless).
    """
    if item_cdf is not None and item_cdf.shape != (positives.n_items,):
        raise DataError("item_cdf must hold one cumulative weight per item drawn from", field="item_cdf",
                        found=f"shape {item_cdf.shape}", expected=f"({positives.n_items},)"
                        + (" (the pool's items)" if positives.pool is not None else ""))
    negatives, exact = _draw(key, users, positives, n_neg, item_cdf, n_candidates)
    return (negatives if positives.pool is None else positives.pool[negatives]), exact


def _draw(key, users, positives: DevicePositives, n_neg: int, item_cdf, n_candidates: int):
    users = jnp.asarray(users, jnp.int32)
    start, end = positives.indptr[users][:, None], positives.indptr[users + 1][:, None]
    n_free = positives.n_items - (end - start)
    uniform_key, candidate_key = jax.random.split(key)
    ranks = jax.random.randint(uniform_key, (users.shape[0], n_neg), 0, jnp.maximum(n_free, 1))
    below = _upper_bound(positives.gaps, start, end, ranks, positives.search_steps) - start
    uniform = ranks + below
    has_negative = jnp.broadcast_to(n_free > 0, uniform.shape)
    if item_cdf is None:
        return uniform.astype(jnp.int32), has_negative
    draws = jax.random.uniform(candidate_key, (users.shape[0], n_neg, n_candidates)) * item_cdf[-1]
    candidates = jnp.searchsorted(item_cdf, draws, side="right", method="scan_unrolled")
    candidates = jnp.minimum(candidates, positives.n_items - 1)
    s3, e3 = start[..., None], end[..., None]
    after = _upper_bound(positives.indices, s3, e3, candidates, positives.search_steps)
    is_positive = (after > s3) & (positives.indices[jnp.maximum(after - 1, 0)] == candidates)
    first_free = jnp.argmax(~is_positive, axis=-1)
    found = jnp.take_along_axis(~is_positive, first_free[..., None], axis=-1)[..., 0]
    chosen = jnp.take_along_axis(candidates, first_free[..., None], axis=-1)[..., 0]
    return jnp.where(found, chosen, uniform).astype(jnp.int32), found & has_negative


def popularity_masses(sets: PositiveSets, weights) -> tuple[np.ndarray, np.ndarray]:
    """``(cdf, local)`` int32 for :func:`sample_popularity_negatives_jax` from integer item
    weights (the default popularity, training counts, is one): ``cdf`` (n_items,) the
    cumulative weights, ``local`` (nnz,) each positive's cumulative weight within its user's
    segment (inclusive), so that no sum exceeds the total weight.

    Raises:
      DataError: weights that are not integers >= 0, or a total of ``2**31`` or more.
    """
    weights = np.asarray(weights)
    if (weights.shape != (sets.n_items,) or np.any(weights < 0) or not np.all(np.isfinite(weights))
            or np.any(weights != np.round(weights))):
        raise DataError("exact device popularity sampling needs one integer weight >= 0 per item",
                        field="item_popularity", found=f"shape {weights.shape}", expected=f"({sets.n_items},) integers")
    weights = weights.astype(np.int64)
    cdf = np.cumsum(weights)
    if cdf.size and cdf[-1] >= 2**31:
        raise DataError("item weights too large for int32 device sampling", field="item_popularity",
                        found=f"total {int(cdf[-1])}", expected="a total below 2**31")
    running = np.cumsum(weights[sets.indices])
    segment_start = np.repeat(np.concatenate([[0], running])[sets.indptr[:-1]], sets.degrees)
    return cdf.astype(np.int32), (running - segment_start).astype(np.int32)


def sample_popularity_negatives_jax(key: jax.Array, users: jax.Array, positives: DevicePositives, cdf: jax.Array,
                                    local: jax.Array, *, n_neg: int = 1) -> tuple[jax.Array, jax.Array]:
    """Exact popularity negatives on device, with integer weights (:func:`popularity_masses`).

    .. math::
        P(i \\mid u) = \\frac{w_i [i \\notin \\mathcal{P}_u]}{M_u}, \\qquad
        M_u = \\sum_j w_j [j \\notin \\mathcal{P}_u]

    A target ``t`` is drawn uniformly among the integers ``0 .. M_u - 1`` and the item is the
    smallest ``x`` whose cumulative weight over the user's non-positives exceeds ``t`` (a
    bisection over item ids, each probe counting the user's positives up to ``x`` by an inner
    bisection in its CSR segment): no rejection, no candidate limit, integer arithmetic only,
    so the draw is exact (up to ``jax.random.randint``'s ``span / 2**64``-order bias).
    With a pool the ids are the pool's compact ones and are mapped back, as
    :func:`sample_negatives_jax` does.

    Returns:
      ``(negatives, exact)``: (n, n_neg) int32 items; (n, n_neg) bool, False where the user
      has no weight outside its positives (the item is then meaningless).
    """
    users = jnp.asarray(users, jnp.int32)
    start, end = positives.indptr[users][:, None], positives.indptr[users + 1][:, None]
    last_local = local[jnp.clip(end - 1, 0, max(local.shape[0] - 1, 0))] if local.shape[0] else jnp.zeros_like(end)
    free_mass = cdf[-1] - jnp.where(end > start, last_local, 0)
    target = jax.random.randint(key, (users.shape[0], n_neg), 0, jnp.maximum(free_mass, 1))
    n = positives.n_items
    start2, end2 = (jnp.broadcast_to(bound, target.shape) for bound in (start, end))

    def step(_, bounds):
        low, high = bounds
        middle = (low + high) // 2
        after = _upper_bound(positives.indices, start2, end2, middle, positives.search_steps)
        upto = local[jnp.clip(after - 1, 0, max(local.shape[0] - 1, 0))] if local.shape[0] else jnp.zeros_like(after)
        negative_mass = cdf[middle] - jnp.where(after > start2, upto, 0)
        above = negative_mass > target
        return jnp.where(above, low, middle + 1), jnp.where(above, middle, high)

    low = jnp.zeros(target.shape, jnp.int32)
    high = jnp.full(target.shape, n - 1, jnp.int32)
    low, _ = jax.lax.fori_loop(0, max(1, math.ceil(math.log2(max(n, 2)))) + 1, step, (low, high))
    negatives = low if positives.pool is None else positives.pool[low]
    return negatives.astype(jnp.int32), jnp.broadcast_to(free_mass > 0, target.shape)
