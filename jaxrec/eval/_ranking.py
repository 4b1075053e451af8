"""Device side of full ranking: score a user batch, mask, ``lax.top_k``, hit matrix, metric sums.

One jitted program runs a ``lax.scan`` over all user batches of a split, so a full evaluation
is a single dispatch, and every batch has the same static shapes (the last batch is padded),
so the program compiles once per split layout and is reused across calls (epochs).

Ordering contract: ``jax.lax.top_k`` documents that among equal values the lower index comes
first, so equal scores are ranked by ascending item id. ``-0.0`` and ``+0.0`` are made equal
first (XLA's sort orders ``-0.0`` below ``+0.0``). An item whose score is ``-inf`` after
masking (excluded, not a candidate, or scored ``-inf`` by the model) is never a hit: it only
fills a list that has fewer rankable items than ``k``.

When each user has at most :data:`MAX_RANK_SLOTS` held-out items (``rank_slots``), the hits are
found without ``lax.top_k``: a held-out item's place in the list is the number of items ranked
ahead of it (higher score, or equal score and lower id), one (B, num_items) compare-and-count
per slot. That is the position ``lax.top_k`` gives it, so the hits -- and every metric -- are
the same, at a fraction of the cost on XLA:CPU (whose top-k sorts each row on one thread). The
counts read the unmasked scores and subtract the excluded items ahead (:func:`slot_ranks`), and
the first slot's count carries the NaN check, so the scores are read once per slot and no
masked copy is written. The metrics are then read off those places
(:func:`jaxrec.eval._metrics.placed_ranking_metrics`), not off a (B, max k) hit matrix: the
same terms, NDCG's and MAP's summed in another order (equal to float32 rounding).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jaxrec.eval import _metrics

ScoreFn = Callable[[jax.Array, Any, Any], jax.Array]

# Up to this many held-out items per user, hits come from counted ranks instead of lax.top_k
# (the counts cost one pass over the scores per slot; a top-50 about 17 passes' worth on CPU).
MAX_RANK_SLOTS = 12


def dot_product_scores(users: jax.Array, user_emb: jax.Array, item_emb: jax.Array) -> jax.Array:
    r"""Inner-product scores of a user batch against every item.

    .. math::
      s_{bi} = \langle e_{u_b}, e_i \rangle

    Computed at ``Precision.HIGHEST`` so that GPUs do not round through TF32 (rankings must
    not depend on the accelerator); on CPU this is the ordinary float32 product.

    Args:
      users: ``(B,)`` int user ids.
      user_emb: ``(num_users, d)`` user embeddings.
      item_emb: ``(num_items, d)`` item embeddings.

    Returns:
      ``(B, num_items)`` scores.
    """
    return jnp.matmul(user_emb[users], item_emb.T, precision=jax.lax.Precision.HIGHEST)


def _float_scores(scores: jax.Array) -> jax.Array:
    """The scores as floats: integer scores cannot hold ``-inf`` (nor NaN)."""
    return scores if jnp.issubdtype(scores.dtype, jnp.floating) else scores.astype(jnp.float32)


def masked_scores(
    scores: jax.Array,
    exclude_rows: jax.Array,
    exclude_items: jax.Array,
    candidate_mask: jax.Array,
) -> jax.Array:
    """Sets excluded (row, item) entries and non-candidate items to ``-inf``.

    Args:
      scores: ``(B, num_items)`` scores.
      exclude_rows: ``(E,)`` batch rows to exclude; ``B`` marks a padding slot (dropped).
      exclude_items: ``(E,)`` item ids to exclude.
      candidate_mask: ``(num_items,)`` bool, False for items that may not be ranked.

    Returns:
      ``(B, num_items)`` scores with ``-0.0`` made ``+0.0`` and the masked entries ``-inf``.
    """
    scores = _float_scores(scores)
    # Canonical zero: XLA's top_k puts -0.0 below +0.0, numpy and users treat them as equal.
    scores = jnp.where(scores == 0, jnp.zeros((), scores.dtype), scores)
    scores = scores.at[exclude_rows, exclude_items].set(-jnp.inf, mode="drop")
    return jnp.where(candidate_mask[None, :], scores, -jnp.inf)


def _masked_batch(score_fn, users, user_emb, item_emb, exclude_rows, exclude_items, candidate_mask, row_valid):
    scores = score_fn(users, user_emb, item_emb)
    scores = masked_scores(scores, exclude_rows, exclude_items, candidate_mask)
    return scores, jnp.sum(jnp.isnan(scores) & row_valid[:, None])


def _ranked_batch(score_fn, users, user_emb, item_emb, exclude_rows, exclude_items,
                  candidate_mask, row_valid, list_len):
    scores, num_nan = _masked_batch(score_fn, users, user_emb, item_emb, exclude_rows, exclude_items,
                                    candidate_mask, row_valid)
    top_scores, top_items = jax.lax.top_k(scores, list_len)
    return scores.shape, top_scores, top_items, num_nan


# The rank count of a row's first slot also carries its NaN count, as ``rank + PACK * nans`` in
# one int32 sum (one pass over the scores instead of two), where ``num_items * (num_items + 2)``
# fits in int32 (up to 46,339 items); larger catalogues count the NaNs in a pass of their own.
_INT32_MAX = 2**31 - 1
# Integers below this are exact in float32, and so is any sum of them that stays below it.
_FLOAT_EXACT = 2**24


def _packs_nan_count(num_items: int) -> bool:
    return num_items * (num_items + 2) <= _INT32_MAX


def slot_ranks(scores: jax.Array, slots: jax.Array, candidate_mask: jax.Array, exclude_rows: jax.Array,
               exclude_items: jax.Array, row_valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""Each slot item's 0-based place in its row's ranking, as ``lax.top_k`` orders the masked
    scores (:func:`masked_scores`), counted on the UNMASKED scores.

    With :math:`R_b` the row's rankable items (candidates not excluded for the row),

    .. math::  r_{bs} = \#\{j \in R_b : x_{bj} > x_{b i_s}\} + \#\{j \in R_b : j < i_s,\ x_{bj} = x_{b i_s}\}

    counted as the candidates ahead minus the row's excluded candidates ahead (the exclusion
    pairs are distinct, as :func:`jaxrec.eval.prepare_split` lays them out; gathered, E of
    them per batch), so no masked copy of the (B, num_items) block is written. Masked entries
    are ``-inf`` in the top-k, so they rank behind every slot that counts (finite or
    ``+inf``); a slot item that is itself masked, or scored ``-inf``, is not counted. IEEE
    comparison makes ``-0.0`` equal to ``+0.0``, as the top-k's canonical zeros do.

    Args:
      scores: ``(B, num_items)`` scores, NOT masked.
      slots: ``(B, S)`` item ids, ``-1`` for an unused slot.
      candidate_mask: ``(num_items,)`` bool.
      exclude_rows, exclude_items: ``(E,)`` excluded (row, item) pairs, distinct; row ``B``
        marks a padding entry.
      row_valid: ``(B,)`` bool, the rows whose NaN scores count.

    Returns:
      ``(ranks, counted, num_nan)``: ``(B, S)`` int32 ranks, ``(B, S)`` bool (a held-out slot
      whose item is rankable and scored above ``-inf``), and the number of NaN scores on
      rankable entries of the valid rows.
    """
    num_rows, num_items = scores.shape
    items = jnp.maximum(slots, 0)
    slot_scores = jnp.take_along_axis(scores, items, axis=1)
    ids = jnp.arange(num_items, dtype=items.dtype)[None, :]
    candidates = candidate_mask[None, :]
    # The excluded entries, gathered: (E,) rows, items, scores; padding entries count nowhere.
    in_batch = exclude_rows < num_rows
    e_rows = jnp.where(in_batch, exclude_rows, 0)
    e_items = jnp.clip(exclude_items, 0, num_items - 1)
    e_counts = in_batch & candidate_mask[e_items]
    e_scores = scores[e_rows, e_items]
    slot_excluded = jnp.zeros(slots.shape, jnp.int32).at[e_rows].add(
        (e_counts[:, None] & (items[e_rows] == e_items[:, None])).astype(jnp.int32)) > 0
    counted = (slots >= 0) & candidate_mask[items] & ~slot_excluded & (slot_scores > -jnp.inf)
    pack = num_items + 1 if _packs_nan_count(num_items) else 0
    nan_entries = (candidates & jnp.isnan(scores)).astype(jnp.int32)
    e_nans = (e_counts & jnp.isnan(e_scores)).astype(jnp.int32)

    def rankable_sum(entries, e_entries, most):
        """Per row: ``entries`` (each at most ``most``) summed over the candidates, less the row's
        excluded entries."""
        if most * num_items < _FLOAT_EXACT:
            # A float32 product with a ones vector, exact below 2**24: XLA:CPU writes an int32 row
            # sum's input out and reduces it in reduce-window passes, ~1.2x slower per count.
            total = jnp.matmul(entries.astype(jnp.float32), jnp.ones(num_items, jnp.float32),
                               precision=jax.lax.Precision.HIGHEST).astype(jnp.int32)
        else:
            total = jnp.sum(entries, axis=1, dtype=jnp.int32)
        return total - jnp.zeros(num_rows, jnp.int32).at[e_rows].add(e_entries)

    def ahead_count(value, item, with_nans):
        ahead = candidates & ((scores > value[:, None]) | ((scores == value[:, None]) & (ids < item[:, None])))
        e_ahead = e_counts & ((e_scores > value[e_rows]) | ((e_scores == value[e_rows]) & (e_items < item[e_rows])))
        entries, e_entries = ahead.astype(jnp.int32), e_ahead.astype(jnp.int32)
        if with_nans:
            entries, e_entries = entries + pack * nan_entries, e_entries + pack * e_nans
        return rankable_sum(entries, e_entries, 1 + pack if with_nans else 1)

    first = ahead_count(slot_scores[:, 0], items[:, 0], with_nans=bool(pack))
    if pack:
        nans, first = first // pack, first % pack
    else:
        nans = rankable_sum(nan_entries, e_nans, 1)
    ranks = first[:, None]
    if slots.shape[1] > 1:
        # A loop of (B, num_items) counts: written as one (B, S, num_items) reduction, XLA:CPU's
        # fused loop ran about 6x slower.
        _, rest = jax.lax.scan(lambda _, column: (None, ahead_count(*column, with_nans=False)), None,
                               (slot_scores[:, 1:].T, items[:, 1:].T))
        ranks = jnp.concatenate([ranks, rest.T], axis=1)
    return ranks, counted, jnp.sum(jnp.where(row_valid, nans, 0))


@functools.partial(jax.jit, static_argnames=("score_fn", "ks", "metric_names", "list_len"))
def split_metric_sums(
    batches: dict[str, jax.Array],
    candidate_mask: jax.Array,
    user_emb: Any,
    item_emb: Any,
    *,
    score_fn: ScoreFn,
    ks: tuple[int, ...],
    metric_names: tuple[str, ...],
    list_len: int,
) -> tuple[jax.Array, jax.Array]:
    """Per-batch sums of every (metric, k) over the evaluated users of each batch.

    Args:
      batches: per-batch arrays with a leading ``num_batches`` axis: ``users`` (B,),
        ``num_relevant`` (B,) (0 on padding rows), ``exclude_rows``/``exclude_items`` (E,),
        ``target_rows``/``target_items`` (T,), and optionally ``target_slots`` or
        ``rank_slots`` (B, S) (each row's held-out items, -1 padded), which replace the
        (B, num_items) target scatter: ``target_slots`` by comparing the top-k list with them,
        ``rank_slots`` by counting their ranks instead of a top-k (:func:`slot_ranks`).
      candidate_mask: ``(num_items,)`` bool.
      user_emb, item_emb: passed to ``score_fn`` (jit arguments, never constants).
      score_fn: ``(users (B,), user_emb, item_emb) -> (B, num_items)`` scores.
      ks: list cut-offs.
      metric_names: names known to ``_metrics.ranking_metrics``.
      list_len: ``min(max(ks), num_items)``, the length of the ranked list.

    Returns:
      ``(sums, num_nan)``: ``(num_batches, len(metric_names) * len(ks))`` float32 sums in
      metric-major order, and ``(num_batches,)`` counts of NaN scores among rankable entries.
    """

    def one_batch(carry, batch):
        num_relevant = batch["num_relevant"]
        evaluated = num_relevant > 0
        if "rank_slots" in batch:  # very few held-out items per user: their ranks, no top-k
            scores = _float_scores(score_fn(batch["users"], user_emb, item_emb))
            ranks, counted, num_nan = slot_ranks(scores, batch["rank_slots"], candidate_mask, batch["exclude_rows"],
                                                 batch["exclude_items"], evaluated)
            # The held-out items' places give the metrics directly (no (B, list_len) hit matrix).
            per_user = _metrics.placed_ranking_metrics(jnp.where(counted, ranks, max(ks)), num_relevant, ks=ks,
                                                       metrics=metric_names)
        else:
            shape, top_scores, top_items, num_nan = _ranked_batch(
                score_fn, batch["users"], user_emb, item_emb, batch["exclude_rows"],
                batch["exclude_items"], candidate_mask, evaluated, list_len)
            if "target_slots" in batch:  # few held-out items per user: compare the list with them
                listed = jnp.any(top_items[:, :, None] == batch["target_slots"][:, None, :], axis=-1)
            else:
                targets = jnp.zeros(shape, bool).at[batch["target_rows"], batch["target_items"]].set(
                    True, mode="drop")
                listed = jnp.take_along_axis(targets, top_items, axis=1)
            hits = listed & (top_scores > -jnp.inf)
            per_user = _metrics.ranking_metrics(hits, num_relevant, ks=ks, metrics=metric_names)
        sums = [jnp.sum(jnp.where(evaluated[:, None], per_user[name], 0.0), axis=0)
                for name in metric_names]
        return carry, (jnp.concatenate(sums), num_nan)

    _, (sums, num_nan) = jax.lax.scan(one_batch, None, batches)
    return sums, num_nan


@functools.partial(jax.jit, static_argnames=("score_fn", "k"))
def split_top_k(
    batches: dict[str, jax.Array],
    candidate_mask: jax.Array,
    user_emb: Any,
    item_emb: Any,
    *,
    score_fn: ScoreFn,
    k: int,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Top-``k`` items and scores of every user batch (see :func:`split_metric_sums`).

    Returns:
      ``(top_scores, top_items, num_nan)`` of shapes ``(num_batches, B, k)`` twice and
      ``(num_batches,)``.
    """

    def one_batch(carry, batch):
        _, top_scores, top_items, num_nan = _ranked_batch(
            score_fn, batch["users"], user_emb, item_emb, batch["exclude_rows"],
            batch["exclude_items"], candidate_mask, batch["row_valid"], k)
        return carry, (top_scores, top_items, num_nan)

    _, out = jax.lax.scan(one_batch, None, batches)
    return out
