"""Per-user top-k ranking metrics computed from a hit matrix.

Every function takes ``hits``, a ``(..., list_len)`` array whose entry ``[u, i]`` says whether
the item at rank ``i + 1`` of user ``u``'s recommendation list is one of the user's held-out
(relevant) items, and ``num_relevant``, the ``(...,)`` number of held-out items of each user
(``|T_u|``). They return one value per user; averaging over the evaluated users is the
caller's job (:func:`jaxrec.eval.evaluate_split` does it on device).

A list shorter than ``k`` (fewer than ``k`` rankable items) is read as padded with non-hits,
so every metric is defined for every ``k >= 1``. Users with ``num_relevant == 0`` get 0 from
every metric; they are never part of an evaluation average (MMRec evaluates only the users
that have held-out items in the split).

The definitions are MMRec's (``src/utils/metrics.py`` in enoche/MMRec) for recall, NDCG,
precision and MAP, and RecBole's for hit rate and MRR, which MMRec's evaluator docstring
lists but does not implement. Where MMRec departs from a textbook definition the docstring
says so.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxrec.errors import ConfigError, DataError


def check_cutoffs(ks, *, distinct: bool = False) -> tuple[int, ...]:
    """The cut-offs as Python ints: one int or a sequence of them (numpy ints too); ``distinct``:
    each once, in order."""
    given = ks
    if isinstance(ks, (int, np.integer)):
        ks = (ks,)
    elif isinstance(ks, str):  # tuple("10") would read as the cut-offs "1" and "0"
        ks = None
    else:
        try:
            ks = tuple(ks)
        except TypeError:
            ks = None
    if not ks or not all(isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)) and k >= 1
                         for k in ks):
        raise ConfigError(f"ks (k) must be a positive int or a non-empty sequence of them; found {given!r}")
    ints = tuple(int(k) for k in ks)
    return tuple(dict.fromkeys(ints)) if distinct else ints


def check_metric_names(metrics, known) -> tuple[str, ...]:
    """The distinct metric names in order, lower-cased (one name or a sequence of them), each in
    ``known``."""
    given = metrics
    if isinstance(metrics, str):
        metrics = (metrics,)
    try:
        metrics = tuple(str(m).lower() for m in metrics)
    except TypeError:
        raise ConfigError(f"metrics must be a metric name or a sequence of them; found {given!r} "
                          f"(known: {', '.join(known)})") from None
    unknown = [name for name in metrics if name not in known]
    if not metrics or unknown:
        raise ConfigError(f"unknown ranking metric(s) {unknown or given!r} in metrics; known: {', '.join(known)}")
    return tuple(dict.fromkeys(metrics))


def _hits_at_k(hits: jax.Array, k: int) -> jax.Array:
    """The first ``k`` columns of ``hits`` as float32, padding a shorter list with non-hits."""
    hits = hits.astype(jnp.float32)
    list_len = hits.shape[-1]
    if list_len >= k:
        return hits[..., :k]
    padding = [(0, 0)] * (hits.ndim - 1) + [(0, k - list_len)]
    return jnp.pad(hits, padding)


def _relevant(num_relevant: ArrayLike, hits: jax.Array) -> jax.Array:
    num_relevant = jnp.asarray(num_relevant)
    if num_relevant.shape != hits.shape[:-1]:
        raise DataError(
            "num_relevant must have one entry per row of hits",
            field="num_relevant",
            found=f"shape {num_relevant.shape}",
            expected=f"shape {hits.shape[:-1]} (hits of shape {hits.shape} without its rank axis)",
        )
    return num_relevant.astype(jnp.float32)


def _safe_divide(numerator: jax.Array, denominator: jax.Array) -> jax.Array:
    """numerator / denominator, and 0 where the denominator is 0."""
    safe = jnp.where(denominator > 0, denominator, 1.0)
    return jnp.where(denominator > 0, numerator / safe, 0.0)


def ranking_metrics(
    hits: ArrayLike,
    num_relevant: ArrayLike,
    *,
    ks: Sequence[int],
    metrics: Sequence[str] = ("recall", "ndcg", "precision", "map", "hit", "mrr"),
) -> dict[str, jax.Array]:
    r"""Several per-user ranking metrics at several cut-offs in one pass over the hit matrix.

    Every metric is read off running sums over the ranked list taken at columns ``k - 1``, so
    the cost does not grow with the number of cut-offs. The formulas are those of
    :func:`recall_at_k`, :func:`ndcg_at_k`, :func:`precision_at_k`, :func:`map_at_k`,
    :func:`hit_rate_at_k`, :func:`mrr_at_k` and :func:`hits_at_k` (names ``recall``,
    ``ndcg``, ``precision``, ``map``, ``hit``, ``mrr``, ``hits``).

    Args:
      hits: ``(..., list_len)`` bool or 0/1; ``hits[..., i]`` is 1 when rank ``i + 1`` holds
        a held-out item. A list shorter than ``k`` is padded with non-hits.
      num_relevant: ``(...,)`` number of held-out items ``|T_u|`` of each user.
      ks: cut-offs, positive ints (or one int).
      metrics: metric names, case-insensitive (or one name).

    Returns:
      name -> ``(..., len(ks))`` float32 per-user values (0 where ``num_relevant == 0``).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec.eval import ranking_metrics
      >>> out = ranking_metrics(jnp.array([[0, 1, 1]]), jnp.array([2]), ks=(1, 3))
      >>> out["recall"].tolist(), out["mrr"].tolist()
      ([[0.0, 1.0]], [[0.0, 0.5]])
    """
    ks, metrics = check_cutoffs(ks), check_metric_names(metrics, tuple(_FORMULAS))
    hits = jnp.asarray(hits)
    if hits.ndim < 1:
        raise DataError(
            "hits must have a rank axis", field="hits", found=f"shape {hits.shape}",
            expected="shape (..., list_len)",
        )
    relevant = _relevant(num_relevant, hits)
    return _ranking_metrics(hits, relevant, ks=ks, metrics=metrics)


@functools.partial(jax.jit, static_argnames=("ks", "metrics"))
def _ranking_metrics(hits: jax.Array, relevant: jax.Array, *, ks, metrics) -> dict[str, jax.Array]:
    ranked = _RankedList(_hits_at_k(hits, max(ks)), ks)
    relevant = relevant[..., None]
    return {name: _FORMULAS[name](ranked, relevant) for name in metrics}


def placed_ranking_metrics(places: jax.Array, num_relevant: jax.Array, *, ks: tuple[int, ...],
                           metrics: tuple[str, ...]) -> dict[str, jax.Array]:
    r""":func:`ranking_metrics` read off the places of the held-out items instead of a hit matrix.

    ``places`` is ``(..., S)``: each held-out item's 0-based place in the ranked list, or any
    value ``>= max(ks)`` for one that is not a hit at any cut-off (not rankable, or too far
    down); the places below ``max(ks)`` are distinct (one item per place). The hit matrix is
    ``hits[..., i] = 1`` iff some place equals ``i``, so every metric is the same sum over the
    same terms, taken over the ``S`` held-out items instead of the ``max(ks)`` list places:
    :math:`O(S^2)` per user instead of :math:`O(\max(k)^2)` (MAP's hits-so-far). The values
    are equal up to the order of a float sum (NDCG's and MAP's terms; the others are exact).

    Args:
      places: ``(..., S)`` int places.
      num_relevant: ``(...,)`` number of held-out items ``|T_u|``.
      ks, metrics: as for :func:`ranking_metrics` (checked by the caller).

    Returns:
      name -> ``(..., len(ks))`` float32 per-user values.
    """
    ranked = _PlacedHits(places, ks)
    relevant = jnp.asarray(num_relevant).astype(jnp.float32)[..., None]
    return {name: _FORMULAS[name](ranked, relevant) for name in metrics}


class _Cutoffs:
    """The constants of a list of ``max(ks)`` places and its cut-offs."""

    def __init__(self, ks: tuple[int, ...]):
        self.list_len = max(ks)
        self.ranks = np.arange(1, self.list_len + 1, dtype=np.float32)
        self.discounts = (1.0 / np.log2(self.ranks + 1.0)).astype(np.float32)
        self.k = np.asarray(ks, np.float32)

    def ideal_dcg(self, relevant: jax.Array) -> jax.Array:
        """``(..., len(ks))``: DCG of min(|T_u|, k) hits at the top."""
        ideal_len = jnp.minimum(relevant, self.k)[..., None]  # (..., len(ks), 1)
        return jnp.sum(jnp.where(self.ranks <= ideal_len, self.discounts, 0.0), axis=-1)


class _RankedList(_Cutoffs):
    """A padded hit list and the constants of its cut-offs.

    Sums over the top k are masked broadcast reductions against a static ``(len(ks), L)``
    table rather than cumulative sums read at columns k - 1: same numbers, and XLA compiles
    the masked reductions several times faster than cumsum + gather.
    """

    def __init__(self, top: jax.Array, ks: tuple[int, ...]):
        super().__init__(ks)
        self.top = top  # (..., max(ks)): padded by _hits_at_k
        self.within = np.arange(self.list_len)[None, :] < np.asarray(ks)[:, None]  # (len(ks), L)
        self.hits = self.sum_top_k(top)

    def sum_top_k(self, per_rank: jax.Array) -> jax.Array:
        """``(..., L) -> (..., len(ks))``: the sum over ranks 1..k for every k."""
        return jnp.sum(jnp.where(self.within, per_rank[..., None, :], 0.0), axis=-1)

    def dcg(self) -> jax.Array:
        """``(..., len(ks))``: the discounted hits within each cut-off."""
        return self.sum_top_k(self.top * self.discounts)

    def precision_sum(self) -> jax.Array:
        """``(..., len(ks))``: the precision at each hit's rank, summed over the hits within k."""
        at_or_before = self.ranks[None, :] <= self.ranks[:, None]  # [i, j]: rank j <= rank i
        hits_so_far = jnp.sum(jnp.where(at_or_before, self.top[..., None, :], 0.0), axis=-1)
        return self.sum_top_k(hits_so_far / self.ranks * self.top)

    def first_reciprocal(self) -> jax.Array:
        """``(..., len(ks))``: 1 / the first hit's rank within k (0 without one)."""
        # For 0/1 hits the largest hit / rank within the top k is 1 / (rank of the first hit).
        reciprocal = self.top / self.ranks
        return jnp.max(jnp.where(self.within, reciprocal[..., None, :], 0.0), axis=-1)


class _PlacedHits(_Cutoffs):
    """The hits of a list given by the held-out items' places (:func:`placed_ranking_metrics`):
    each sum over the list's hits is a sum over the items whose place is within the cut-off."""

    def __init__(self, places: jax.Array, ks: tuple[int, ...]):
        super().__init__(ks)
        self.places = jnp.minimum(places, self.list_len)  # max(ks): a hit at no cut-off
        self.inside = self.places[..., None, :] < np.asarray(ks)[:, None]  # (..., len(ks), S)
        self.hits = self.sum_inside(jnp.ones(self.places.shape, jnp.float32))

    def sum_inside(self, per_item: jax.Array) -> jax.Array:
        """``(..., S) -> (..., len(ks))``: the sum over the items placed within each k."""
        return jnp.sum(jnp.where(self.inside, per_item[..., None, :], 0.0), axis=-1)

    def _rank(self) -> jax.Array:
        return (self.places + 1).astype(jnp.float32)  # 1-based; max(ks) + 1 for a non-hit

    def dcg(self) -> jax.Array:
        discounts = jnp.take(self.discounts, jnp.minimum(self.places, self.list_len - 1))
        return self.sum_inside(discounts)

    def precision_sum(self) -> jax.Array:
        # Hits at places 0..p of an item placed at p: the items placed no lower (places are distinct).
        hits_so_far = jnp.sum((self.places[..., None, :] <= self.places[..., :, None])
                              & (self.places[..., None, :] < self.list_len), axis=-1).astype(jnp.float32)
        return self.sum_inside(hits_so_far / self._rank())

    def first_reciprocal(self) -> jax.Array:
        return jnp.max(jnp.where(self.inside, (1.0 / self._rank())[..., None, :], 0.0), axis=-1)


def _recall(ranked, relevant):
    return _safe_divide(ranked.hits, relevant)


def _precision(ranked, relevant):
    return jnp.where(relevant > 0, ranked.hits / ranked.k, 0.0)


def _ndcg(ranked, relevant):
    return _safe_divide(ranked.dcg(), ranked.ideal_dcg(relevant))


def _map(ranked, relevant):
    return _safe_divide(ranked.precision_sum(), jnp.minimum(relevant, ranked.k))


def _hit(ranked, relevant):
    return jnp.where((relevant > 0) & (ranked.hits > 0), 1.0, 0.0)


def _mrr(ranked, relevant):
    return jnp.where(relevant > 0, ranked.first_reciprocal(), 0.0)


def _hits(ranked, relevant):
    return jnp.where(relevant > 0, ranked.hits, 0.0)


_FORMULAS = {
    "recall": _recall,
    "ndcg": _ndcg,
    "precision": _precision,
    "map": _map,
    "hit": _hit,
    "mrr": _mrr,
    "hits": _hits,
}


def _one(name: str, hits: ArrayLike, num_relevant: ArrayLike, k: int) -> jax.Array:
    return ranking_metrics(hits, num_relevant, ks=(k,), metrics=(name,))[name][..., 0]


def recall_at_k(hits: ArrayLike, num_relevant: ArrayLike, *, k: int) -> jax.Array:
    r"""Recall at ``k``: the share of a user's held-out items found in the top ``k``.

    .. math::
      \mathrm{Recall@}k(u) = \frac{\sum_{i=1}^{k} \mathrm{rel}_u(i)}{|T_u|}

    The denominator is ``|T_u|`` even when ``|T_u| > k`` (MMRec ``recall_``), so a user with
    more held-out items than ``k`` cannot reach 1. Some libraries divide by
    :math:`\min(k, |T_u|)` instead; MMRec and Cornac do not.

    Args:
      hits: ``(..., list_len)`` bool or 0/1; ``hits[..., i]`` is 1 when rank ``i + 1`` holds
        a held-out item.
      num_relevant: ``(...,)`` number of held-out items ``|T_u|`` of each user.
      k: list cut-off, a positive int.

    Returns:
      ``(...,)`` float32 recall per user (0 where ``num_relevant == 0``).

    References:
      Zhou et al., *A Comprehensive Survey on Multimodal Recommender Systems* (MMRec), 2023;
      ``src/utils/metrics.py::recall_`` in https://github.com/enoche/MMRec.
    """
    return _one("recall", hits, num_relevant, k)


def precision_at_k(hits: ArrayLike, num_relevant: ArrayLike, *, k: int) -> jax.Array:
    r"""Precision at ``k``: the share of the top ``k`` slots that hold a held-out item.

    .. math::
      \mathrm{Precision@}k(u) = \frac{1}{k} \sum_{i=1}^{k} \mathrm{rel}_u(i)

    The denominator is ``k`` even when fewer than ``k`` items could be ranked (MMRec
    ``precision_``), so the value is 0 for users without held-out items and at most
    :math:`\min(k, |T_u|) / k`.

    Args:
      hits: ``(..., list_len)`` bool or 0/1 hit matrix (see :func:`recall_at_k`).
      num_relevant: ``(...,)`` number of held-out items of each user.
      k: list cut-off, a positive int.

    Returns:
      ``(...,)`` float32 precision per user (0 where ``num_relevant == 0``).

    References:
      ``src/utils/metrics.py::precision_`` in https://github.com/enoche/MMRec.
    """
    return _one("precision", hits, num_relevant, k)


def ndcg_at_k(hits: ArrayLike, num_relevant: ArrayLike, *, k: int) -> jax.Array:
    r"""Normalised discounted cumulative gain at ``k`` with binary relevance.

    .. math::
      \mathrm{DCG@}k(u) = \sum_{i=1}^{k} \frac{\mathrm{rel}_u(i)}{\log_2(i + 1)}, \qquad
      \mathrm{IDCG@}k(u) = \sum_{i=1}^{\min(|T_u|, k)} \frac{1}{\log_2(i + 1)}, \qquad
      \mathrm{NDCG@}k(u) = \frac{\mathrm{DCG@}k(u)}{\mathrm{IDCG@}k(u)}

    This is what MMRec's ``ndcg_`` computes. Its docstring writes the gain as
    :math:`2^{\mathrm{rel}} - 1` (equal to ``rel`` for binary relevance) and the ideal DCG as a
    sum over all ``k`` positions, but the code truncates the ideal list at
    :math:`\min(|T_u|, k)` positions, the textbook ideal ranking, as done here.

    Args:
      hits: ``(..., list_len)`` bool or 0/1 hit matrix (see :func:`recall_at_k`).
      num_relevant: ``(...,)`` number of held-out items of each user.
      k: list cut-off, a positive int.

    Returns:
      ``(...,)`` float32 NDCG per user in [0, 1] (0 where ``num_relevant == 0``).

    References:
      Järvelin & Kekäläinen, *Cumulated gain-based evaluation of IR techniques*, TOIS 2002;
      ``src/utils/metrics.py::ndcg_`` in https://github.com/enoche/MMRec.
    """
    return _one("ndcg", hits, num_relevant, k)


def map_at_k(hits: ArrayLike, num_relevant: ArrayLike, *, k: int) -> jax.Array:
    r"""Average precision at ``k`` (its mean over users is MAP@k), MMRec's normalisation.

    .. math::
      P_u(i) = \frac{1}{i} \sum_{j=1}^{i} \mathrm{rel}_u(j), \qquad
      \mathrm{AP@}k(u) = \frac{1}{\min(|T_u|, k)} \sum_{i=1}^{k} P_u(i)\, \mathrm{rel}_u(i)

    The textbook average precision of a full ranking divides by :math:`|T_u|`; MMRec's
    ``map_`` divides by :math:`\min(|T_u|, k)` so that a user with more held-out items than
    ``k`` can still reach 1.

    Args:
      hits: ``(..., list_len)`` bool or 0/1 hit matrix (see :func:`recall_at_k`).
      num_relevant: ``(...,)`` number of held-out items of each user.
      k: list cut-off, a positive int.

    Returns:
      ``(...,)`` float32 AP@k per user in [0, 1] (0 where ``num_relevant == 0``).

    References:
      ``src/utils/metrics.py::map_`` in https://github.com/enoche/MMRec.
    """
    return _one("map", hits, num_relevant, k)


def hit_rate_at_k(hits: ArrayLike, num_relevant: ArrayLike, *, k: int) -> jax.Array:
    r"""Hit rate at ``k``: 1 when at least one held-out item is in the top ``k``, else 0.

    .. math::
      \mathrm{Hit@}k(u) = \mathbb{1}\Big[\sum_{i=1}^{k} \mathrm{rel}_u(i) > 0\Big]

    MMRec's evaluator does not implement it; this is RecBole's ``hit_``.

    Args:
      hits: ``(..., list_len)`` bool or 0/1 hit matrix (see :func:`recall_at_k`).
      num_relevant: ``(...,)`` number of held-out items of each user.
      k: list cut-off, a positive int.

    Returns:
      ``(...,)`` float32 0/1 per user.

    References:
      ``recbole/evaluator/metrics.py::Hit`` in https://github.com/RUCAIBox/RecBole.
    """
    return _one("hit", hits, num_relevant, k)


def mrr_at_k(hits: ArrayLike, num_relevant: ArrayLike, *, k: int) -> jax.Array:
    r"""Reciprocal rank at ``k`` of the first held-out item (its mean over users is MRR@k).

    .. math::
      \mathrm{RR@}k(u) = \frac{1}{\min\{i \le k : \mathrm{rel}_u(i) = 1\}}
      \quad (0 \text{ when no held-out item is in the top } k)

    MMRec's evaluator does not implement it; this is RecBole's ``mrr_``.

    Args:
      hits: ``(..., list_len)`` bool or 0/1 hit matrix (see :func:`recall_at_k`).
      num_relevant: ``(...,)`` number of held-out items of each user.
      k: list cut-off, a positive int.

    Returns:
      ``(...,)`` float32 reciprocal rank per user in [0, 1].

    References:
      Voorhees, *The TREC-8 question answering track report*, 1999;
      ``recbole/evaluator/metrics.py::MRR`` in https://github.com/RUCAIBox/RecBole.
    """
    return _one("mrr", hits, num_relevant, k)


def hits_at_k(hits: ArrayLike, num_relevant: ArrayLike, *, k: int) -> jax.Array:
    r"""Number of held-out items in the top ``k``: the numerator of MMRec's ``recall2``.

    .. math::
      \mathrm{Hits@}k(u) = \sum_{i=1}^{k} \mathrm{rel}_u(i)

    MMRec's ``recall2_`` is the micro average
    :math:`\sum_u \mathrm{Hits@}k(u) / \sum_u |T_u|`, which
    :func:`jaxrec.eval.evaluate_split` reports as ``recall2@k``.

    Args:
      hits: ``(..., list_len)`` bool or 0/1 hit matrix (see :func:`recall_at_k`).
      num_relevant: ``(...,)`` number of held-out items of each user.
      k: list cut-off, a positive int.

    Returns:
      ``(...,)`` float32 hit count per user.

    References:
      ``src/utils/metrics.py::recall2_`` in https://github.com/enoche/MMRec.
    """
    return _one("hits", hits, num_relevant, k)


# Name used in metric keys ("recall@20") -> per-user function.
RANKING_METRICS = {
        "recall": recall_at_k,
        "ndcg": ndcg_at_k,
        "precision": precision_at_k,
        "map": map_at_k,
        "hit": hit_rate_at_k,
        "mrr": mrr_at_k,
}
