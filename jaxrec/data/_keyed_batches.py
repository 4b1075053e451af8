"""Epoch batches whose every row is a function of ``(seed, epoch, global row position)``.

:class:`TrainBatches` draws an epoch's negatives from one sequential generator, so a row's
negatives depend on every row drawn before it: a process that wants only its share of the
batch has to draw the whole epoch. :class:`KeyedTrainBatches` removes that dependence, so
each process of a multi-process run builds only its rows of every global batch and the
global batch sequence is the same whatever the number of processes:

* the epoch's order of the ``n`` training pairs is ``np.random.default_rng([seed, epoch,
  0x4B4559]).permutation(n)``; global row position ``p`` (batch ``p // B``, row ``p % B``)
  holds pair ``order[p % n]``, with weight 0 when ``p >= n`` (the padding of the last batch);
* the ``j``-th negative of position ``p`` is drawn from uniforms
  ``u = splitmix64(base(seed, epoch) + splitmix64((p * n_neg + j) * 256 + r)) / 2^64`` for
  draw rounds ``r = 0, 1, ...`` (a counter-based generator: any subset of rows is drawn
  alone, in any order, with the same result). Uniform negatives are exact (rank
  ``floor(u * (n_items - deg(user)))`` among the user's non-positives, as
  :func:`sample_negatives`); popularity negatives draw by inverse CDF and redraw hits on a
  positive with the next rounds, then bisect the user's negative mass exactly.

Negatives are drawn, as in :class:`TrainBatches`, only among the items with a training pair
(``negative_items="trained"``, the default; ``"all"``: every item), in the pool's compact ids
(:meth:`PositiveSets.restricted_to`) mapped back; with every item trained the draws are those
of ``"all"`` exactly.

Only the pairs at the requested positions are read (``pairs[index_array]``), so the pairs
can live in any random-access store; the positives that negatives avoid are the whole
training set's (:class:`PositiveSets`).
"""

from __future__ import annotations

import numpy as np

from jaxrec.data._negatives import (
    _REJECTION_ROUNDS,
    _SORT_ABOVE,
    PositiveSets,
    _bisect_negative_mass,
    _free_rank_to_item,
    _popularity_masses,
    _popularity_weights,
    _raise_if_no_negatives,
    in_pool,
    negative_item_pool,
)
from jaxrec.errors import ConfigError, DataError

_ORDER_STREAM = 0x4B4559
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_ROUNDS = 256  # draw rounds per (position, column): the rejection rounds, then the exact ones


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    x = np.asarray(x, np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_uniforms(seed: int, epoch: int, streams: np.ndarray, draw_round: int) -> np.ndarray:
    """Uniforms in ``[0, 1)``, one per entry of ``streams`` (uint64 ids), for one draw round;
    a pure function of its arguments."""
    with np.errstate(over="ignore"):
        base = _splitmix64(np.array([int(seed) % 2**64], np.uint64) + _GOLDEN)
        base = _splitmix64(base + np.uint64(int(epoch) % 2**64))
        ids = np.asarray(streams, np.uint64) * np.uint64(_ROUNDS) + np.uint64(draw_round)
        bits = _splitmix64(base + _splitmix64(ids + _GOLDEN))
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


class KeyedTrainBatches:
    """Fixed-shape epoch batches, any rows of which can be built alone (see the module doc).

    Args:
      pairs: ``(n, 2)`` (user, item) training pairs, or any object with ``len()`` and
        ``pairs[index_array] -> (k, 2)`` (e.g. a random-access record reader).
      n_users, n_items: id space sizes.
      batch_size: rows per global batch ``B``.
      n_neg: negatives per row.
      seed: the run's seed.
      distribution: ``"uniform"`` or ``"popularity"``.
      item_popularity: as :func:`sample_negatives` (default: train counts).
      positives: the items never drawn as a user's negatives (default: built from ``pairs``).
      negative_items: ``"trained"`` (only items among the positives, i.e. with a training pair,
        are drawn) or ``"all"``.
    """

    def __init__(self, pairs, *, n_users: int, n_items: int, batch_size: int, n_neg: int = 1, seed: int = 0,
                 distribution: str = "uniform", item_popularity=None, positives: PositiveSets | None = None,
                 negative_items: str = "trained"):
        if int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if int(n_neg) != n_neg or n_neg < 1:
            raise ConfigError(f"n_neg must be an integer >= 1, got {n_neg!r}")
        if distribution not in ("uniform", "popularity"):
            raise ConfigError(f"distribution must be one of ('uniform', 'popularity'), got {distribution!r}")
        self.pairs = pairs
        self.n = len(pairs)
        if self.n == 0:
            raise DataError("no training pairs to batch", field="train", found="0 pairs", expected="at least one")
        if positives is None:
            everything = np.asarray(pairs[np.arange(self.n)], np.int64)
            positives = PositiveSets.from_pairs(everything[:, 0], everything[:, 1], n_users=n_users, n_items=n_items)
        # The trained items are those among the (training) positives: no second pass over the pairs.
        self.item_pool = negative_item_pool(negative_items, positives.indices, int(n_items))
        self.positives = positives
        self.n_items, self.batch_size, self.n_neg = int(n_items), int(batch_size), int(n_neg)
        self.seed, self.distribution = int(seed), distribution
        # Negatives are drawn in the pool's compact ids (relabeled once here) and mapped back.
        self._draw_positives, weights = in_pool(positives, self.item_pool, item_popularity)
        if distribution == "uniform":  # drawn from every epoch: uniform draws read a lookup table
            self._draw_positives = self._draw_positives.with_free_table()
        self._weights = _popularity_weights(weights, self._draw_positives) if distribution == "popularity" else None

    @classmethod
    def from_dataset(cls, dataset, *, batch_size: int, **options) -> KeyedTrainBatches:
        """Batches over a :class:`MultimodalDataset`'s train split (negatives avoid train positives)."""
        return cls(dataset.split_pairs("train"), n_users=dataset.n_users, n_items=dataset.n_items,
                   batch_size=batch_size, **options)

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's order of the training pairs (position ``p`` holds ``order[p % n]``)."""
        return np.random.default_rng([self.seed, int(epoch), _ORDER_STREAM]).permutation(self.n)

    def rows(self, epoch: int, positions) -> dict[str, np.ndarray]:
        """The rows at global positions ``positions`` (any int array shape ``S``) of epoch
        ``epoch``: ``users``, ``pos_items``, ``weights`` shaped ``S`` and ``neg_items``
        ``S + (n_neg,)``."""
        positions = np.asarray(positions, np.int64)
        shape = positions.shape
        flat = positions.reshape(-1)
        pair_index = self.order(epoch)[flat % self.n]
        if isinstance(self.pairs, np.ndarray):
            pairs = self.pairs[pair_index].astype(np.int64)
        else:  # read a record store in key order (sequential keys read fastest)
            sorted_index, inverse = np.unique(pair_index, return_inverse=True)
            pairs = np.asarray(self.pairs[sorted_index], np.int64)[inverse.reshape(-1)]
        users = pairs[:, 0]
        if users.size > _SORT_ABOVE:
            # Binary searches over the positive keys are bound by memory latency: queries grouped
            # by user hit nearby keys one after another (as in sample_negatives).
            by_user = np.argsort(users, kind="stable")
            negatives = np.empty((users.size, self.n_neg), np.int32)
            negatives[by_user] = self._negatives(epoch, flat[by_user], users[by_user])
        else:
            negatives = self._negatives(epoch, flat, users)
        return {"users": users.astype(np.int32).reshape(shape),
                "pos_items": pairs[:, 1].astype(np.int32).reshape(shape),
                "neg_items": negatives.reshape(*shape, self.n_neg),
                "weights": (flat < self.n).astype(np.float32).reshape(shape)}

    def epoch_rows(self, epoch: int, rows: slice | None = None) -> dict[str, np.ndarray]:
        """The epoch's batches stacked ``(steps, B_local, ...)``, keeping only rows ``rows``
        (a slice of ``range(batch_size)``; default all) of every batch."""
        local = np.arange(self.batch_size)[rows if rows is not None else slice(None)]
        positions = np.arange(len(self))[:, None] * self.batch_size + local[None, :]
        return self.rows(epoch, positions)

    def _negatives(self, epoch: int, positions: np.ndarray, users: np.ndarray) -> np.ndarray:
        drawn = self._pool_negatives(epoch, positions, users)
        return drawn if self.item_pool is None else self.item_pool[drawn].astype(np.int32)

    def _pool_negatives(self, epoch: int, positions: np.ndarray, users: np.ndarray) -> np.ndarray:
        sets, n_neg = self._draw_positives, self.n_neg
        streams = (positions[:, None].astype(np.uint64) * np.uint64(n_neg)
                   + np.arange(n_neg, dtype=np.uint64)[None, :])

        def uniforms(draw_round, which=slice(None)):
            return keyed_uniforms(self.seed, epoch, streams.reshape(-1)[which], draw_round)

        if self.distribution == "uniform":
            n_free = sets.n_items - sets.degrees[users]
            _raise_if_no_negatives(users, n_free <= 0, "the user has every item among its positives")
            ranks = np.minimum((uniforms(0).reshape(streams.shape) * n_free[:, None]).astype(np.int64),
                               n_free[:, None] - 1)
            return _free_rank_to_item(sets, users, ranks)
        cdf, positive_cdf, free_mass = _popularity_masses(self._weights, sets, users)

        def inverse_cdf(u):
            return np.minimum(np.searchsorted(cdf, u * cdf[-1], side="right"), sets.n_items - 1)

        out = inverse_cdf(uniforms(0)).reshape(streams.shape)
        flat_users = np.broadcast_to(users[:, None], out.shape)
        bad = np.flatnonzero(sets.contains(flat_users, out))
        draw_round = 1
        for _ in range(_REJECTION_ROUNDS):
            if bad.size == 0:
                break
            out.flat[bad] = inverse_cdf(uniforms(draw_round, bad))
            draw_round += 1
            bad = bad[sets.contains(flat_users.flat[bad], out.flat[bad])]
        while bad.size:  # exact draws; a retry only on float rounding at a positive's edge
            if draw_round >= _ROUNDS:
                raise RuntimeError("popularity sampling did not settle; item weights may be degenerate")
            row = bad // n_neg
            target = np.minimum(uniforms(draw_round, bad) * free_mass[row], np.nextafter(free_mass[row], 0))
            out.flat[bad] = _bisect_negative_mass(users[row], target, sets, cdf, positive_cdf)
            draw_round += 1
            bad = bad[sets.contains(flat_users.flat[bad], out.flat[bad])]
        return out.astype(np.int32)
