"""Full-ranking evaluation of a split: every evaluated user against every (candidate) item.

:func:`prepare_split` does the host work once (checks, dedup, grouping the pairs by user
batch, padding to static shapes, one transfer to the device); :func:`evaluate_prepared`
scores, masks, ranks and averages on device in one compiled program; :func:`evaluate_split`
is both in one call. A trainer that evaluates every epoch prepares each split once and calls
:func:`evaluate_prepared` with the new embeddings: same shapes, no re-compilation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.errors import ConfigError, DataError
from jaxrec.eval import _metrics, _pairs, _ranking

DEFAULT_KS = (5, 10, 20, 50)
DEFAULT_METRICS = ("recall", "ndcg", "precision", "map", "hit", "mrr")
# "recall2" is MMRec's micro-averaged recall: sum of hits over sum of |T_u|.
KNOWN_METRICS = DEFAULT_METRICS + ("recall2",)

# Scores of one batch are a dense (batch_size, num_items) block. On an accelerator about 2**24
# entries (64 MiB in float32) keeps the matmul efficient without straining its memory. On CPU
# the block is re-read by every pass after the matmul (masking, rank counts, top-k), so it
# should stay in cache: about 2**20 entries (4 MiB); but each block also reads the whole item
# table, so a large catalogue keeps at least 32 users per block while that block stays within
# 2**25 entries (128 MiB). Measured figures: benchmarks/bench_eval.py.
_BLOCK_ENTRIES = 2**24
_CPU_BLOCK_ENTRIES = 2**20
_CPU_MIN_USERS = 32
_CPU_MAX_BLOCK_ENTRIES = 2**25
_MAX_AUTO_BATCH = 4096
# Up to this many held-out items per user, hits are found by comparing the top-k list with
# each row's padded target slots (B x k x S compares); above it, by a scattered target matrix.
_MAX_TARGET_SLOTS = 64


class EvalSplit(NamedTuple):
    """A split laid out for batched full ranking (built by :func:`prepare_split`).

    Attributes:
      batches: device arrays with a leading ``num_batches`` axis: ``users`` ``(B,)``,
        ``num_relevant`` ``(B,)`` (0 on padding rows), ``exclude_rows``/``exclude_items``
        ``(E,)`` (distinct pairs, on candidate items: the rank counts subtract them) and
        ``target_rows``/``target_items`` ``(T,)`` (row ``B`` marks padding);
        and, when no user has more than ``_MAX_TARGET_SLOTS`` held-out items,
        ``target_slots`` ``(B, S)``: each row's held-out items, ``-1`` in unused slots (the
        ranking then reads hits off the top-k list against these instead of scattering a
        ``(B, num_items)`` target matrix); ``rank_slots`` instead when none has more than
        ``_ranking.MAX_RANK_SLOTS``: the hits are then read off the held-out items' counted
        ranks, without a top-k).
      candidate_mask: ``(num_items,)`` bool device array, True for rankable items.
      num_items: number of items scored.
      batch_size: users per batch ``B``.
      num_users: number of evaluated users (those with at least one held-out candidate item).
      num_targets: number of distinct held-out (user, item) pairs evaluated.
      num_dropped_targets: held-out pairs dropped because their item is not a candidate.
      max_user_id: the largest user id referenced, checked against the embeddings.
    """

    batches: dict[str, jax.Array]
    candidate_mask: jax.Array
    num_items: int
    batch_size: int
    num_users: int
    num_targets: int
    num_dropped_targets: int
    max_user_id: int


def auto_batch_size(num_items: int, num_users: int, platform: str | None = None) -> int:
    """Users per batch so that one score block has about ``2**24`` entries on an accelerator,
    ``2**20`` on CPU (``platform``, default: the default device's), at most 4096 users and at
    least 8 (on CPU at least 32 while the block stays within ``2**25`` entries)."""
    platform = jax.default_backend() if platform is None else platform
    num_items = max(num_items, 1)
    if platform == "cpu":
        entries, least = _CPU_BLOCK_ENTRIES, min(_CPU_MIN_USERS, max(8, _CPU_MAX_BLOCK_ENTRIES // num_items))
    else:
        entries, least = _BLOCK_ENTRIES, 8
    size = max(least, min(_MAX_AUTO_BATCH, entries // num_items))
    return max(1, min(size, num_users))


def check_batch_size(batch_size: int | None, num_items: int, num_users: int) -> int:
    if batch_size is None:
        return auto_batch_size(num_items, num_users)
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, (bool, np.bool_)) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive int or None; found {batch_size!r}")
    return max(1, min(int(batch_size), num_users))


def layout_batches(users: np.ndarray, batch_size: int, pair_groups: dict) -> dict[str, np.ndarray]:
    """Pads the user list to whole batches and lays out each group of (position, item) pairs.

    Args:
      users: ``(n,)`` user ids in evaluation order.
      batch_size: users per batch.
      pair_groups: name -> ``(positions, items)``; each becomes ``{name}_rows`` and
        ``{name}_items`` of shape ``(num_batches, width)``.

    Returns:
      dict of numpy arrays with a leading ``num_batches`` axis, including ``users`` and
      ``row_valid`` ``(num_batches, batch_size)``.
    """
    num_batches = -(-users.size // batch_size)
    padded = num_batches * batch_size
    batch_users = np.zeros(padded, np.int32)
    batch_users[: users.size] = users
    row_valid = np.zeros(padded, bool)
    row_valid[: users.size] = True
    out = {
        "users": batch_users.reshape(num_batches, batch_size),
        "row_valid": row_valid.reshape(num_batches, batch_size),
    }
    for name, (positions, items) in pair_groups.items():
        rows, cols = _pairs.layout_by_batch(
            positions, items, batch_size=batch_size, num_batches=num_batches)
        out[f"{name}_rows"], out[f"{name}_items"] = rows, cols
    return out


def target_slots(positions: np.ndarray, items: np.ndarray, batch_shape: tuple[int, int], width: int) -> np.ndarray:
    """``(num_batches, B, width)`` int32: the items of each evaluation position's pairs, ``-1``
    in unused slots (``positions`` as in :func:`_pairs.layout_by_batch`; pairs distinct)."""
    slots = np.full((batch_shape[0] * batch_shape[1], max(width, 1)), -1, np.int32)
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    slot = np.arange(ordered.size) - np.searchsorted(ordered, ordered)  # rank within its position
    slots[ordered, slot] = items[order]
    return slots.reshape(*batch_shape, -1)


def candidate_mask_of(candidate_items, num_items: int) -> np.ndarray:
    mask = np.ones(num_items, bool)
    if candidate_items is not None:
        mask[:] = False
        ids = _pairs.as_item_ids(candidate_items, field="candidate_items", num_items=num_items)
        mask[ids] = True
    return mask


def prepare_split(
    *,
    num_items: int,
    train_pairs,
    target_pairs,
    extra_exclude_pairs=None,
    candidate_items=None,
    batch_size: int | None = None,
) -> EvalSplit:
    """Lays out one split for :func:`evaluate_prepared` (host work, done once per split).

    The evaluated users are those with at least one held-out pair whose item is a candidate,
    in ascending id order. Each user's items in ``train_pairs`` and ``extra_exclude_pairs``
    are excluded from its ranking; duplicate pairs count once.

    Args:
      num_items: number of items the scores cover; every item id must be below it.
      train_pairs: ``(n, 2)`` int (user, item) pairs to exclude (the training interactions).
      target_pairs: ``(m, 2)`` int held-out (user, item) pairs, the ground truth.
      extra_exclude_pairs: optional ``(e, 2)`` more pairs to exclude (e.g. validation
        interactions at test time, see :func:`jaxrec.eval.protocol_pairs`).
      candidate_items: optional 1-D item ids; only these are ranked (cold-start evaluation).
        Held-out pairs on other items are dropped (counted in ``num_dropped_targets``).
      batch_size: users per batch; None picks :func:`auto_batch_size`'s (about ``2**20 / num_items``
        on CPU, ``2**24 / num_items`` on an accelerator).

    Returns:
      an :class:`EvalSplit` whose arrays are on the default device.

    Raises:
      DataError: malformed pairs, ids out of range, or no held-out candidate pair at all.
      ConfigError: a bad ``batch_size``.
    """
    if not isinstance(num_items, (int, np.integer)) or num_items < 1:
        raise ConfigError(f"num_items must be a positive int; found {num_items!r}")
    num_items = int(num_items)
    candidate_mask = candidate_mask_of(candidate_items, num_items)

    target_users, target_items = _pairs.as_pairs(
        target_pairs, field="target_pairs", num_items=num_items)
    is_candidate = candidate_mask[target_items]
    kept_users, kept_items = target_users[is_candidate], target_items[is_candidate]
    users = _pairs.sorted_unique(kept_users)
    if users.size == 0:
        on_candidates = "" if candidate_items is None else " on a candidate item"
        raise DataError(
            "no held-out pair to evaluate", field="target_pairs",
            found=f"{target_users.size} pairs, {kept_users.size}{on_candidates}",
            expected=f"at least one (user, item) pair{on_candidates}",
        )
    target_pos, target_item = _pairs.unique_pairs(
        _pairs.positions_of(kept_users, users), kept_items, num_items)
    num_relevant = np.bincount(target_pos, minlength=users.size)

    exclude_users, exclude_items = [], []
    for field, pairs in (("train_pairs", train_pairs),
                         ("extra_exclude_pairs", extra_exclude_pairs)):
        pair_users, pair_items = _pairs.as_pairs(pairs, field=field, num_items=num_items)
        exclude_users.append(pair_users)
        exclude_items.append(pair_items)
    exclude_users, exclude_items = np.concatenate(exclude_users), np.concatenate(exclude_items)
    exclude_pos = _pairs.positions_of(exclude_users, users)
    # Pairs of users outside the split, or on non-candidate items, change no ranking.
    useful = (exclude_pos >= 0) & candidate_mask[exclude_items]
    exclude_pos, exclude_item = _pairs.unique_pairs(
        exclude_pos[useful], exclude_items[useful], num_items)

    batch_size = check_batch_size(batch_size, num_items, users.size)
    arrays = layout_batches(users, batch_size, {
        "exclude": (exclude_pos, exclude_item),
        "target": (target_pos, target_item),
    })
    relevant = np.zeros(arrays["users"].size, np.int32)
    relevant[: users.size] = num_relevant
    arrays["num_relevant"] = relevant.reshape(arrays["users"].shape)
    del arrays["row_valid"]  # num_relevant > 0 marks the real rows
    if int(num_relevant.max()) <= _MAX_TARGET_SLOTS:
        # Very few per user: the ranking counts their ranks instead of a top-k (same hits).
        key = "rank_slots" if int(num_relevant.max()) <= _ranking.MAX_RANK_SLOTS else "target_slots"
        arrays[key] = target_slots(target_pos, target_item, arrays["users"].shape, int(num_relevant.max()))
    max_user_id = int(max(users.max(), exclude_users.max(initial=0)))
    return EvalSplit(
        # device_put, not jnp.asarray: the latter compiles a small program per new shape.
        batches=jax.device_put(arrays),
        candidate_mask=jax.device_put(candidate_mask),
        num_items=num_items,
        batch_size=batch_size,
        num_users=int(users.size),
        num_targets=int(target_pos.size),
        num_dropped_targets=int((~is_candidate).sum()),
        max_user_id=max_user_id,
    )


def check_ks(ks) -> tuple[int, ...]:
    """The distinct cut-offs in order, as Python ints: one int or a sequence of them (numpy too)."""
    return _metrics.check_cutoffs(ks, distinct=True)


def check_metrics(metrics) -> tuple[str, ...]:
    """The distinct metric names in order, lower-cased: one name or a sequence of them."""
    return _metrics.check_metric_names(metrics, KNOWN_METRICS)


def resolve_scorer(user_emb, item_emb, score_fn, num_items_hint: int | None = None):
    """Checks the scoring inputs; returns ``(score_fn, num_items, num_users or None)``."""
    if score_fn is None:
        user_shape, item_shape = np.shape(user_emb), np.shape(item_emb)
        for field, shape in (("user_emb", user_shape), ("item_emb", item_shape)):
            if len(shape) != 2:
                raise DataError("embeddings must be a 2-D array", field=field,
                                found=f"shape {shape}", expected="shape (n, d)")
        if user_shape[1] != item_shape[1]:
            raise DataError(
                "user and item embeddings must have the same width", field="item_emb",
                found=f"shape {item_shape}",
                expected=f"(num_items, {user_shape[1]}) to match user_emb {user_shape}")
        return _ranking.dot_product_scores, int(item_shape[0]), int(user_shape[0])
    probe = jax.ShapeDtypeStruct((2,), jnp.int32)
    out = jax.eval_shape(score_fn, probe, user_emb, item_emb)
    if len(out.shape) != 2 or out.shape[0] != 2 or not jnp.issubdtype(out.dtype, jnp.floating):
        raise DataError(
            "score_fn must return float scores of shape (batch, num_items)", field="score_fn",
            found=f"{out.dtype} of shape {out.shape} for a batch of 2 users",
            expected=f"float of shape (2, {num_items_hint or 'num_items'})")
    num_users = None
    if hasattr(user_emb, "ndim") and getattr(user_emb, "ndim", 0) >= 1:
        num_users = int(user_emb.shape[0])
    return score_fn, int(out.shape[1]), num_users


def evaluate_prepared(
    split: EvalSplit,
    user_emb: Any,
    item_emb: Any,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    score_fn=None,
) -> dict[str, float | int]:
    """Ranks every evaluated user of a prepared split and averages the metrics on device.

    Args:
      split: from :func:`prepare_split` (or :func:`jaxrec.eval.prepare_protocol`).
      user_emb: ``(num_users, d)`` user embeddings, or any pytree ``score_fn`` reads.
      item_emb: ``(num_items, d)`` item embeddings, or any pytree ``score_fn`` reads.
      ks: list cut-offs; ``k`` above the number of rankable items is allowed (the list is
        read as padded with non-hits; precision still divides by ``k``).
      metrics: names among ``recall, ndcg, precision, map, hit, mrr, recall2``.
      score_fn: optional jittable ``(users (B,) int32, user_emb, item_emb) -> (B, num_items)``;
        default inner product. ``user_emb`` and ``item_emb`` reach it as jit arguments; a
        scorer that only needs the user ids can be passed as ``lambda users, *_: f(users)``
        (arrays it closes over become compile-time constants). Keep the same function object
        across calls: it is a static argument of the compiled program (a new lambda each call
        means a new compilation).

    Returns:
      ``{"recall@20": float, ...}`` for every (metric, k), averaged over evaluated users
      (``recall2`` over held-out pairs), plus ``num_users``, ``num_targets`` and
      ``num_dropped_targets`` (ints).

    Raises:
      DataError: embeddings of the wrong shape, or NaN scores on rankable items.
      ConfigError: unknown metric or bad ``ks``.
    """
    ks, metrics = check_ks(ks), check_metrics(metrics)
    score_fn, device_metrics, list_len = _scoring_for(split, user_emb, item_emb, score_fn, metrics, ks, "")
    sums, num_nan = _ranking.split_metric_sums(
        split.batches, split.candidate_mask, user_emb, item_emb, score_fn=score_fn, ks=ks,
        metric_names=device_metrics, list_len=list_len)
    return _metrics_from_sums(split, np.asarray(sums, np.float64).sum(0), int(np.asarray(num_nan).sum()),
                              ks, metrics)


def evaluate_prepared_many(
    split: EvalSplit,
    user_embs: Any,
    item_embs: Any,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    active: Sequence[bool] | None = None,
) -> list[dict[str, float | int] | None]:
    """:func:`evaluate_prepared` for ``T`` models at once, in ONE compiled call.

    Used by batched hyper-parameter search: trials that share shapes are ranked together in
    one program (``lax.map`` over the trial axis, not ``vmap``: XLA:CPU runs the batched
    gathers and scatters of a vmapped ranking no faster than ``T`` unbatched ones), so
    evaluating ``T`` trials costs one dispatch instead of ``T``, and trials marked inactive
    (early-stopped) are skipped inside it.

    Args:
      split: from :func:`prepare_split` (or :func:`jaxrec.eval.prepare_protocol`).
      user_embs: ``(T, num_users, d)`` (or a list of ``T`` tables, stacked).
      item_embs: ``(T, num_items, d)`` (or a list of ``T`` tables, stacked).
      ks, metrics: as for :func:`evaluate_prepared`.
      active: ``(T,)`` bools (default all true); an inactive model is not ranked.

    Returns:
      One entry per model, in order: what :func:`evaluate_prepared` returns for that model's
      embeddings, or None for an inactive model.
    """
    ks, metrics = check_ks(ks), check_metrics(metrics)
    # A list or tuple of T tables is a pytree to jax, not one (T, ...) array: stack it.
    user_embs, item_embs = (jnp.stack(embs) if isinstance(embs, (list, tuple)) else embs
                            for embs in (user_embs, item_embs))
    if np.ndim(user_embs) != 3 or np.ndim(item_embs) != 3 or np.shape(user_embs)[0] != np.shape(item_embs)[0]:
        raise DataError("expected stacked embeddings", field="user_embs/item_embs",
                        found=f"shapes {np.shape(user_embs)} and {np.shape(item_embs)}",
                        expected="(T, num_users, d) and (T, num_items, d) with the same T")
    n_models = np.shape(user_embs)[0]
    active = np.ones(n_models, bool) if active is None else np.asarray(active, bool)
    if active.shape != (n_models,):
        raise DataError("one active flag per model expected", field="active", found=f"shape {active.shape}",
                        expected=f"({n_models},)")
    # The checks need one model's shapes only: `user_embs[0]` on a device array would compile and run
    # a slice program per call.
    score_fn, device_metrics, list_len = _scoring_for(split, _one_model(user_embs), _one_model(item_embs), None,
                                                      metrics, ks, "s")
    sums, num_nan = _many_metric_sums(split.batches, split.candidate_mask, user_embs, item_embs, active,
                                      score_fn=score_fn, ks=ks, metric_names=device_metrics, list_len=list_len)
    sums, num_nan = np.asarray(sums, np.float64).sum(1), np.asarray(num_nan).sum(1)
    return [_metrics_from_sums(split, sums[t], int(num_nan[t]), ks, metrics) if active[t] else None
            for t in range(n_models)]


def _one_model(stacked) -> jax.ShapeDtypeStruct:
    """The shape and dtype of one model's array in a ``(T, ...)`` stack."""
    return jax.ShapeDtypeStruct(np.shape(stacked)[1:], getattr(stacked, "dtype", np.float32))


def _scoring_for(split: EvalSplit, user_emb, item_emb, score_fn, metrics, ks, plural: str):
    """``(score_fn, device metric names, list length)`` for ranking ``split``; embeddings that do
    not fit the split raise ``DataError`` naming ``user_emb``/``item_emb`` (+ ``plural``)."""
    score_fn, num_items, num_users = resolve_scorer(user_emb, item_emb, score_fn, split.num_items)
    if num_items != split.num_items:
        raise DataError("scores cover a different number of items than the split was prepared for",
                        field=f"item_emb{plural}", found=f"{num_items} items", expected=f"{split.num_items} items")
    if num_users is not None and split.max_user_id >= num_users:
        raise DataError("a pair refers to a user without an embedding", field=f"user_emb{plural}",
                        found=f"{num_users} user rows", expected=f"more than {split.max_user_id}")
    device_metrics = tuple(m if m != "recall2" else "hits" for m in metrics)
    return score_fn, device_metrics, min(max(ks), num_items)


@functools.partial(jax.jit, static_argnames=("score_fn", "ks", "metric_names", "list_len"))
def _many_metric_sums(batches, candidate_mask, user_embs, item_embs, active, *, score_fn, ks, metric_names,
                      list_len):
    def one(args):
        user_emb, item_emb, is_active = args

        def rank(_):
            return _ranking.split_metric_sums(batches, candidate_mask, user_emb, item_emb, score_fn=score_fn, ks=ks,
                                              metric_names=metric_names, list_len=list_len)

        shapes = jax.eval_shape(rank, None)
        return jax.lax.cond(is_active, rank,
                            lambda _: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes), None)

    return jax.lax.map(one, (user_embs, item_embs, active))


def _metrics_from_sums(split: EvalSplit, sums: np.ndarray, num_nan: int, ks, metrics) -> dict[str, float | int]:
    if num_nan:
        raise DataError("the model produced NaN scores for rankable items", field="scores",
                        found=f"{num_nan} NaN scores", expected="finite scores (or -inf)")
    result: dict[str, float | int] = {}
    column = 0
    for name in metrics:
        denominator = split.num_targets if name == "recall2" else split.num_users
        for k in ks:
            result[f"{name}@{k}"] = float(sums[column] / denominator)
            column += 1
    result["num_users"] = split.num_users
    result["num_targets"] = split.num_targets
    result["num_dropped_targets"] = split.num_dropped_targets
    return result


def evaluate_split(
    user_emb: Any,
    item_emb: Any,
    *,
    train_pairs,
    target_pairs,
    extra_exclude_pairs=None,
    ks: Sequence[int] = DEFAULT_KS,
    metrics: Sequence[str] = DEFAULT_METRICS,
    batch_size: int | None = None,
    candidate_items=None,
    score_fn=None,
) -> dict[str, float | int]:
    r"""Full-ranking top-k evaluation of one split (MMRec protocol by default).

    For every user :math:`u` with held-out items :math:`T_u` (users without any are skipped),
    all items are scored (:math:`s_{ui} = \langle e_u, e_i \rangle` or ``score_fn``), the
    user's ``train_pairs`` and ``extra_exclude_pairs`` items and every non-candidate item are
    set to :math:`-\infty`, and ``lax.top_k`` picks the list. Equal scores are ranked by
    ascending item id; ``-inf`` entries are never hits. Each metric is averaged over users:

    .. math::
      M@k = \frac{1}{|U_{\mathrm{eval}}|} \sum_{u \in U_{\mathrm{eval}}} M@k(u)

    with the per-user definitions of :func:`recall_at_k`, :func:`ndcg_at_k`,
    :func:`precision_at_k`, :func:`map_at_k`, :func:`hit_rate_at_k`, :func:`mrr_at_k`
    (MMRec's recall/NDCG/precision/MAP; RecBole's hit/MRR); ``recall2`` is
    :math:`\sum_u \mathrm{hits}_u / \sum_u |T_u|`.

    Args:
      user_emb: ``(num_users, d)`` user embeddings (or a pytree for ``score_fn``).
      item_emb: ``(num_items, d)`` item embeddings (or a pytree for ``score_fn``).
      train_pairs: ``(n, 2)`` int (user, item) pairs excluded from each user's ranking.
      target_pairs: ``(m, 2)`` int held-out pairs (validation or test split).
      extra_exclude_pairs: optional ``(e, 2)`` pairs also excluded (Cornac-style test).
      ks: list cut-offs (default 5, 10, 20, 50).
      metrics: default ``recall, ndcg, precision, map, hit, mrr``; also ``recall2``.
      batch_size: users per batch (default: :func:`auto_batch_size`'s).
      candidate_items: optional 1-D item ids; only they are ranked and only held-out pairs
        on them count (cold-start evaluation of new items).
      score_fn: optional jittable ``(users, user_emb, item_emb) -> (B, num_items)``.

    Returns:
      ``{"recall@5": ..., "ndcg@20": ..., "num_users": ..., "num_targets": ...,
      "num_dropped_targets": ...}``.

    References:
      Zhou et al., *A Comprehensive Survey on Multimodal Recommender Systems: Taxonomy,
      Evaluation, and Future Directions* (MMRec), 2023: ``src/common/trainer.py::evaluate``
      and ``src/utils/topk_evaluator.py`` in https://github.com/enoche/MMRec.
    """
    _, num_items, _ = resolve_scorer(user_emb, item_emb, score_fn)
    split = prepare_split(
        num_items=num_items, train_pairs=train_pairs, target_pairs=target_pairs,
        extra_exclude_pairs=extra_exclude_pairs, candidate_items=candidate_items,
        batch_size=batch_size)
    return evaluate_prepared(split, user_emb, item_emb, ks=ks, metrics=metrics, score_fn=score_fn)
