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
the same, at a fraction of the cost on XLA:CPU (whose top-k sorts each row on one thread).
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
    if not jnp.issubdtype(scores.dtype, jnp.floating):
        scores = scores.astype(jnp.float32)  # integer scores cannot hold -inf
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


def slot_ranks(scores: jax.Array, slots: jax.Array) -> tuple[jax.Array, jax.Array]:
    r"""Each slot item's 0-based place in its row's ranking, as ``lax.top_k`` orders it.

    .. math::  r_{bs} = \#\{j : x_{bj} > x_{b i_s}\} + \#\{j < i_s : x_{bj} = x_{b i_s}\}

    Args:
      scores: ``(B, num_items)`` masked scores (``-0.0`` already made ``+0.0``).
      slots: ``(B, S)`` item ids, ``-1`` for an unused slot (its rank is meaningless).

    Returns:
      ``(slot_scores, ranks)``, both ``(B, S)``.
    """
    items = jnp.maximum(slots, 0)
    slot_scores = jnp.take_along_axis(scores, items, axis=1)
    ids = jnp.arange(scores.shape[1], dtype=items.dtype)[None, :]

    def one_slot(_, column):
        value, item = column
        ahead = (scores > value[:, None]) | ((scores == value[:, None]) & (ids < item[:, None]))
        return None, jnp.sum(ahead, axis=1, dtype=jnp.int32)

    # A loop of (B, num_items) counts: written as one (B, S, num_items) reduction, XLA:CPU's fused
    # loop ran about 6x slower.
    _, ranks = jax.lax.scan(one_slot, None, (slot_scores.T, items.T))
    return slot_scores, ranks.T


def _hits_from_ranks(scores: jax.Array, slots: jax.Array, list_len: int) -> jax.Array:
    """``(B, list_len)`` bool hit matrix of the top-``list_len`` lists, read off the ranks of the
    held-out items in ``slots`` (``-1`` unused); a ``-inf`` item is never a hit."""
    slot_scores, ranks = slot_ranks(scores, slots)
    counted = (slots >= 0) & (slot_scores > -jnp.inf)
    ranks = jnp.where(counted, ranks, list_len)  # never equal to a list position
    return jnp.any(ranks[:, None, :] == jnp.arange(list_len, dtype=ranks.dtype)[None, :, None], axis=-1)


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
            scores, num_nan = _masked_batch(score_fn, batch["users"], user_emb, item_emb, batch["exclude_rows"],
                                            batch["exclude_items"], candidate_mask, evaluated)
            hits = _hits_from_ranks(scores, batch["rank_slots"], list_len)
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
