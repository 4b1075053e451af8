"""Top-k recommendation lists for chosen users (the ranking behind the metrics, for serving)."""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxrec.errors import ConfigError, DataError
from jaxrec.eval import _evaluate, _pairs, _ranking


def top_k_items(
    user_emb: Any,
    item_emb: Any,
    users,
    *,
    k: int,
    exclude_pairs=None,
    candidate_items=None,
    batch_size: int | None = None,
    score_fn=None,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best items of each user, ranked on device exactly as the evaluation ranks.

    Scores come from the inner product (or ``score_fn``); each user's ``exclude_pairs`` items
    and every non-candidate item are set to ``-inf``; ``lax.top_k`` orders by descending
    score and, among equal scores, ascending item id. Slots that only an excluded or ``-inf``
    item could fill (fewer than ``k`` rankable items) hold item ``-1`` and score ``-inf``.

    Args:
      user_emb: ``(num_users, d)`` user embeddings (or a pytree for ``score_fn``).
      item_emb: ``(num_items, d)`` item embeddings (or a pytree for ``score_fn``).
      users: ``(n,)`` distinct int user ids to rank for.
      k: list length, a positive int (may exceed the number of items).
      exclude_pairs: optional ``(e, 2)`` int (user, item) pairs never to recommend
        (typically everything the user has interacted with).
      candidate_items: optional 1-D item ids; only these are recommended.
      batch_size: users per device batch (None: automatic).
      score_fn: optional jittable ``(users (B,), user_emb, item_emb) -> (B, num_items)``.

    Returns:
      ``(items, scores)``: ``(n, k)`` int32 item ids (``-1`` for empty slots) and ``(n, k)``
      scores (``-inf`` for empty slots), best first.

    Raises:
      DataError: bad ids, duplicate users, or NaN scores. ConfigError: bad ``k``.
    """
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"k must be a positive int; found {k!r}")
    score_fn, num_items, num_users = _evaluate.resolve_scorer(user_emb, item_emb, score_fn)
    users = np.asarray(users)
    if users.ndim != 1 or users.size == 0 or not np.issubdtype(users.dtype, np.integer):
        raise DataError("users must be a non-empty 1-D integer array", field="users",
                        found=f"{users.dtype} of shape {users.shape}", expected="int shape (n,)")
    upper = num_users if num_users is not None else np.iinfo(np.int32).max
    if users.min() < 0 or users.max() >= upper:
        bad = int(users[(users < 0) | (users >= upper)][0])
        raise DataError("user id out of range", field="users", found=f"user id {bad}",
                        expected=f"0 <= user id < {upper}")
    num_distinct = _pairs.sorted_unique(users).size
    if num_distinct != users.size:
        raise DataError("users must be distinct", field="users",
                        found=f"{users.size - num_distinct} repeated ids",
                        expected="distinct user ids")
    candidate_mask = _evaluate.candidate_mask_of(candidate_items, num_items)
    pair_users, pair_items = _pairs.as_pairs(exclude_pairs, field="exclude_pairs",
                                             num_items=num_items)
    positions = _pairs.positions_of(pair_users, users)
    useful = positions >= 0
    positions, pair_items = _pairs.unique_pairs(positions[useful], pair_items[useful], num_items)

    batch_size = _evaluate.check_batch_size(batch_size, num_items, users.size)
    arrays = _evaluate.layout_batches(users, batch_size, {"exclude": (positions, pair_items)})
    list_len = min(int(k), num_items)
    top_scores, top_items, num_nan = _ranking.split_top_k(
        arrays, candidate_mask, user_emb, item_emb, score_fn=score_fn, k=list_len)
    if int(np.asarray(num_nan).sum()):
        raise DataError("the model produced NaN scores for rankable items", field="scores",
                        found=f"{int(np.asarray(num_nan).sum())} NaN scores",
                        expected="finite scores (or -inf)")
    top_scores = np.asarray(top_scores).reshape(-1, list_len)[: users.size]
    top_items = np.asarray(top_items).reshape(-1, list_len)[: users.size].astype(np.int32)
    top_items[top_scores == -np.inf] = -1
    if list_len < k:
        pad = ((0, 0), (0, int(k) - list_len))
        top_scores = np.pad(top_scores, pad, constant_values=-np.inf)
        top_items = np.pad(top_items, pad, constant_values=-1)
    return top_items, top_scores
