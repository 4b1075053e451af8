"""Drawing synthetic interactions: per-user activity, Gumbel top-k item choice, ratio splits.

Two samplers draw user u's items without replacement from
:math:`P(i \\mid u) \\propto \\pi_i \\exp(s\\, p_u^\\top q_i)`:

* ``exact``: Gumbel top-k over all items (perturb every logit with Gumbel noise and keep the k
  largest), in chunks of users; cost grows with n_users x n_items.
* ``candidates``: for large catalogues. Draw ``oversample * k`` candidates from the
  popularity prior pi (with replacement), give each draw the score
  :math:`s\\, p_u^\\top q_i + G`, keep each item's best draw, and take the k best items. The
  best of m Gumbel draws is :math:`\\log m + G`, so an item drawn m times competes with weight
  :math:`m \\exp(s\\, p_u^\\top q_i)`, and :math:`m / M \\to \\pi_i`: the choice tends to the
  exact one as the oversampling grows. Cost grows with the number of interactions only
  (popularity draws are O(1) each from a Walker alias table). At the default 8x oversampling
  the choice is flatter than the exact one: on 3,000 users x 4,000 items x 60,000
  interactions, the chosen items' mean logit :math:`s\\, p_u^\\top q_i` is 2.1 against the exact
  sampler's 3.2 (4x gives 1.6, 16x 2.5), while item popularity counts correlate at 0.98.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxrec.errors import ConfigError

_STREAM_EXACT, _STREAM_CANDIDATES, _STREAM_FALLBACK = 5, 6, 7
EXACT_AUTO_CELLS = 1 << 27  # "auto" samples exactly up to ~134M user-item cells (seconds)
_EXACT_CHUNK_CELLS = 1 << 22  # logits per chunk of users in the exact sampler
_CANDIDATE_CHUNK = 1 << 20  # candidate draws per chunk of users
_OVERSAMPLE = 8
_RETRY_GROWTH = 4  # users short of distinct candidates retry with 4x, then 16x, then exactly
_CANDIDATE_ROUNDS = 3


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    """A generator for one named random stream (and chunk) of a seed."""
    return np.random.default_rng([int(seed), *stream])


def user_activity(n_users: int, n_items: int, total: int, min_per_user: int, rng: np.random.Generator) -> np.ndarray:
    """Interactions per user: log-normal activity, at least a floor, at most n_items, summing to ``total``.

    The floor is ``min(min_per_user, n_items, total // n_users)``; the rest is shared in
    proportion to log-normal weights (water-filling around the ``n_items`` cap), and the last
    units go to the users with the largest fractional shares.

    Returns:
      (n_users,) int64 counts with ``counts.sum() == total``.
    """
    if total > n_users * n_items:
        raise ConfigError(f"{total} interactions cannot fit in {n_users} x {n_items} distinct pairs")
    floor = max(0, min(int(min_per_user), n_items, total // n_users))
    counts = np.full(n_users, floor, dtype=np.int64)
    weights = rng.lognormal(0.0, 1.0, size=n_users)
    remaining = total - floor * n_users
    while remaining > 0:  # repeats only when some user hits the n_items cap
        active = counts < n_items
        share = remaining * np.where(active, weights, 0.0) / weights[active].sum()
        add = np.floor(share).astype(np.int64)
        # Largest remainders take the units that flooring left over (fewer than active users).
        leftover = remaining - int(add.sum())
        add[np.argsort(np.where(active, add - share, 1.0), kind="stable")[:leftover]] += 1
        np.minimum(add, n_items - counts, out=add)
        counts += add
        remaining -= int(add.sum())
    return counts


def _gumbel(rng: np.random.Generator, shape) -> np.ndarray:
    # -log(E) with E ~ Exp(1) is standard Gumbel; the ziggurat exponential saves a log.
    with np.errstate(divide="ignore"):
        return -np.log(rng.standard_exponential(shape, dtype=np.float32))


def _exact_chunk(user_rows, user_factors, item_factors, log_popularity, counts, scale, rng):
    """Gumbel top-k over all items for the users in ``user_rows``."""
    k = counts[user_rows]
    kmax = int(k.max(initial=0))
    if kmax == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    logits = user_factors[user_rows] @ item_factors.T
    logits *= np.float32(scale)
    logits += log_popularity
    logits += _gumbel(rng, logits.shape)
    n_items = logits.shape[1]
    if kmax < n_items:
        top = np.argpartition(logits, n_items - kmax, axis=1)[:, n_items - kmax:]
    else:
        top = np.broadcast_to(np.arange(n_items), logits.shape)
    order = np.argsort(-np.take_along_axis(logits, top, axis=1), axis=1, kind="stable")
    top = np.take_along_axis(top, order, axis=1)
    keep = np.arange(kmax)[None, :] < k[:, None]
    return np.repeat(user_rows, k), top[keep]


def _descending_order_key(rows: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """int64 keys sorting by row ascending, then score descending (float32 bits made monotone)."""
    bits = (-scores).astype(np.float32).view(np.int32)
    monotone = np.where(bits < 0, ~bits, bits | np.int32(-(2**31))).view(np.uint32)
    return (rows.astype(np.int64) << 32) | monotone.astype(np.int64)


class _AliasTable(NamedTuple):
    """Walker's alias table: O(1) draws from a fixed categorical distribution."""

    keep_probability: np.ndarray  # (n,) float64
    alias: np.ndarray  # (n,) int64

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        column = rng.integers(0, len(self.alias), size=size)
        return np.where(rng.random(size) < self.keep_probability[column], column, self.alias[column])


def _alias_table(probabilities: np.ndarray) -> _AliasTable:
    """Vose's construction: each column keeps its own item with some probability, else its alias."""
    n = len(probabilities)
    scaled = (probabilities * (n / probabilities.sum())).tolist()
    keep, alias = np.ones(n), np.arange(n)
    small = [i for i, p in enumerate(scaled) if p < 1.0]
    large = [i for i, p in enumerate(scaled) if p >= 1.0]
    while small and large:
        low, high = small.pop(), large[-1]
        keep[low], alias[low] = scaled[low], high
        scaled[high] -= 1.0 - scaled[low]
        if scaled[high] < 1.0:
            small.append(large.pop())
    return _AliasTable(keep, alias)  # columns left in either list keep themselves (rounding)


def _candidate_chunk(user_rows, user_factors, item_factors, popularity: _AliasTable, counts, scale, oversample, rng):
    """Gumbel top-k over popularity-drawn candidates; also returns the users left short."""
    k = counts[user_rows]
    rows = np.repeat(np.arange(len(user_rows)), k * oversample)
    n_items = len(item_factors)
    items = popularity.draw(rng, rows.size)
    scores = np.einsum("ij,ij->i", np.take(user_factors[user_rows], rows, axis=0),
                       np.take(item_factors, items, axis=0)) * np.float32(scale)
    scores += _gumbel(rng, scores.shape)
    # Each (user, item) pair keeps its best draw.
    pair = rows.astype(np.int64) * n_items + items
    order = np.argsort(pair, kind="stable")
    pair = pair[order]
    starts = np.flatnonzero(np.concatenate([[True], pair[1:] != pair[:-1]]))
    best = np.maximum.reduceat(scores[order], starts)
    pair = pair[starts]
    row_of, item_of = np.divmod(pair, n_items)
    # The k best distinct items of each user.
    order = np.argsort(_descending_order_key(row_of, best), kind="stable")
    row_of, item_of = row_of[order], item_of[order]
    distinct = np.bincount(row_of, minlength=len(user_rows))
    rank = np.arange(row_of.size) - np.repeat(np.cumsum(distinct) - distinct, distinct)
    complete = distinct >= k
    keep = (rank < k[row_of]) & complete[row_of]
    return user_rows[row_of[keep]], item_of[keep], user_rows[~complete]


def _chunks_by_budget(user_rows: np.ndarray, cost: np.ndarray, budget: int):
    """Consecutive groups of ``user_rows`` whose summed cost stays within budget (>= 1 user each)."""
    start = 0
    cumulative = np.cumsum(cost)
    while start < len(user_rows):
        spent = cumulative[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(cumulative, spent + budget, side="right")))
        yield user_rows[start:stop]
        start = stop


def resolve_sampler(sampler: str, n_users: int, n_items: int) -> str:
    """The sampler used: ``sampler``, or for ``"auto"`` ``"exact"`` up to
    ``EXACT_AUTO_CELLS`` user-item cells and ``"candidates"`` beyond."""
    if sampler != "auto":
        return sampler
    return "exact" if n_users * n_items <= EXACT_AUTO_CELLS else "candidates"


def sample_interactions(user_factors, item_factors, log_popularity, counts, *, affinity_scale, seed, sampler="auto"):
    """Each user's ``counts[u]`` distinct items, drawn by Gumbel top-k (see the module docstring).

    Args:
      user_factors: (n_users, k) float32.
      item_factors: (n_items, k) float32.
      log_popularity: (n_items,) float32 log prior, normalised.
      counts: (n_users,) int64 items per user, each <= n_items.
      affinity_scale: s, the factor on the dot products.
      seed: the integer seed (random streams per chunk derive from it).
      sampler: ``"exact"``, ``"candidates"`` or ``"auto"``.

    Returns:
      (users, items): two (counts.sum(),) int32 arrays, sorted by user then item.
    """
    n_users, n_items = len(user_factors), len(item_factors)
    sampler = resolve_sampler(sampler, n_users, n_items)
    parts_u, parts_i = [], []
    all_users = np.arange(n_users)
    if sampler == "exact":
        exact_users = all_users
    else:
        popularity = _alias_table(np.exp(log_popularity.astype(np.float64)))
        pending = all_users[counts > 0]
        for round_ in range(_CANDIDATE_ROUNDS):
            oversample = _OVERSAMPLE * _RETRY_GROWTH**round_
            short = []
            for chunk_id, rows in enumerate(_chunks_by_budget(pending, counts[pending] * oversample, _CANDIDATE_CHUNK)):
                users, items, missed = _candidate_chunk(rows, user_factors, item_factors, popularity, counts, affinity_scale,
                                                        oversample, stream_rng(seed, _STREAM_CANDIDATES, round_, chunk_id))
                parts_u.append(users)
                parts_i.append(items)
                short.append(missed)
            pending = np.concatenate(short)
            if pending.size == 0:
                break
        exact_users = pending
    stream = _STREAM_EXACT if sampler == "exact" else _STREAM_FALLBACK
    per_user_cost = np.full(len(exact_users), n_items)
    for chunk_id, rows in enumerate(_chunks_by_budget(exact_users, per_user_cost, _EXACT_CHUNK_CELLS)):
        users, items = _exact_chunk(rows, user_factors, item_factors, log_popularity, counts, affinity_scale,
                                    stream_rng(seed, stream, chunk_id))
        parts_u.append(users)
        parts_i.append(items)
    users = np.concatenate(parts_u).astype(np.int32) if parts_u else np.empty(0, np.int32)
    items = np.concatenate(parts_i).astype(np.int32) if parts_i else np.empty(0, np.int32)
    order = np.argsort(users.astype(np.int64) * n_items + items, kind="stable")
    return users[order], items[order]


def check_split_ratios(ratios) -> tuple[float, float, float]:
    """``(train, valid, test)`` shares as floats; raises ConfigError unless >= 0, summing to 1, train > 0."""
    try:
        ratios = tuple(float(r) for r in ratios)
    except (TypeError, ValueError):
        raise ConfigError(f"split_ratios must be three numbers (train, valid, test), got {ratios!r}") from None
    if len(ratios) != 3 or min(ratios) < 0 or abs(sum(ratios) - 1) > 1e-9 or ratios[0] <= 0:
        raise ConfigError(f"split_ratios must be (train, valid, test) >= 0 summing to 1 with train > 0, got {ratios}")
    return ratios


def split_by_ratio(users: np.ndarray, counts: np.ndarray, ratios, rng: np.random.Generator) -> np.ndarray:
    """Random per-user split: of a user's k rows, round(k * valid) go to valid, round(k * test) to test.

    Rounding is half-up; a user keeps at least one training row (test, then valid, give way).

    Args:
      users: (n,) user id per row, sorted ascending.
      counts: (n_users,) rows per user (``bincount(users)``).
      ratios: (train, valid, test) shares summing to 1.
      rng: the generator for the random order within each user.

    Returns:
      (n,) int8 labels: 0 train, 1 valid, 2 test.
    """
    ratios = check_split_ratios(ratios)
    n_valid = np.floor(counts * ratios[1] + 0.5).astype(np.int64)
    n_test = np.floor(counts * ratios[2] + 0.5).astype(np.int64)
    n_test = np.minimum(n_test, np.maximum(counts - 1, 0))
    n_valid = np.minimum(n_valid, np.maximum(counts - 1 - n_test, 0))
    n_train = counts - n_valid - n_test
    order = np.lexsort((rng.random(len(users)), users))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(len(users), dtype=np.int64)
    rank[order] = np.arange(len(users)) - starts[users[order]]
    labels = np.where(rank < n_train[users], 0, np.where(rank < (n_train + n_valid)[users], 1, 2))
    return labels.astype(np.int8)
