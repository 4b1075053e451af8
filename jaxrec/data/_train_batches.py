"""Fixed-shape epoch batches of (user, positive item, negative items) for pairwise training.

The padding rule: the epoch's last partial batch is filled up to the batch size with rows of
weight 0 (or dropped with ``drop_remainder``), so every batch has the same static shapes and
nothing recompiles; how a model counts rows is the model contract's (``jaxrec.models``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from jaxrec.data._negatives import PositiveSets, _read_only, in_pool, negative_item_pool, sample_negatives
from jaxrec.errors import ConfigError, DataError


class TrainBatches:
    """Epochs of fixed-size (user, positive item, negative items) batches.

    Each epoch shuffles the training pairs with ``np.random.default_rng([seed, epoch])``,
    draws all of the epoch's negatives in one vectorized call (excluding each user's
    ``positives``), and cuts fixed-size batches. The same seed and epoch give the same batches,
    so a resumed run sees what an uninterrupted one would.

    The last partial batch is either dropped (``drop_remainder=True``) or filled up to
    ``batch_size`` with pairs from the start of the epoch whose ``weights`` are 0, so every
    batch has the same shapes (no re-compilation) and padded rows contribute nothing to a
    weighted loss.

    Each batch is a dict of numpy arrays:
      ``users`` (B,) int32, ``pos_items`` (B,) int32, ``neg_items`` (B, n_neg) int32,
      ``weights`` (B,) float32 (1 for real rows, 0 for padding).

    Args:
      users, items: (n,) training pairs.
      n_users, n_items: id space sizes.
      batch_size: rows per batch.
      n_neg: negatives per pair.
      seed: base seed; epoch ``e`` uses ``[seed, e]``.
      distribution, item_popularity: as in :func:`sample_negatives`.
      drop_remainder: drop the last partial batch instead of padding it.
      positives: items never to draw as a user's negatives; default the training pairs.
      negative_items: ``"trained"`` (default): negatives are drawn only among the items with
        a training pair here, since an item without one only ever gets pushed down and its
        score learns nothing but that; ``"all"``: among every item. When every item has a
        training pair the two draw exactly the same batches.
    """

    def __init__(self, users, items, *, n_users: int, n_items: int, batch_size: int, n_neg: int = 1,
                 seed: int = 0, distribution: str = "uniform", item_popularity=None,
                 drop_remainder: bool = False, positives: PositiveSets | None = None,
                 negative_items: str = "trained"):
        users, items = np.asarray(users, np.int32), np.asarray(items, np.int32)
        # Kept grouped by user so that each epoch's negatives need no sort (see sample_negatives).
        by_user = np.argsort(users, kind="stable")
        self.users, self.items = _read_only(users[by_user]), _read_only(items[by_user])
        if int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if self.users.size == 0:
            raise DataError("no training pairs to batch", field="train", found="0 pairs", expected="at least one")
        if drop_remainder and self.users.size < batch_size:
            raise ConfigError(f"drop_remainder with batch_size {batch_size} > {self.users.size} training "
                              "pairs leaves no batch; lower batch_size or pad")
        self.positives = positives if positives is not None else PositiveSets.from_pairs(
            self.users, self.items, n_users=n_users, n_items=n_items)
        self.n_items, self.batch_size, self.n_neg = int(n_items), int(batch_size), int(n_neg)
        self.seed, self.distribution, self.drop_remainder = int(seed), distribution, bool(drop_remainder)
        self.item_popularity = item_popularity
        # Negatives are drawn in the pool's compact ids (relabeled once here) and mapped back.
        self.item_pool = negative_item_pool(negative_items, self.items, self.n_items)
        self._draw_positives, self._draw_popularity = in_pool(self.positives, self.item_pool, item_popularity)
        if distribution == "uniform":  # drawn from every epoch: uniform draws read a lookup table
            self._draw_positives = self._draw_positives.with_free_table()
        # Fail now, not at the first epoch, on settings the sampler rejects.
        self._draw(0, self.users[:1])

    @classmethod
    def from_dataset(cls, dataset, *, batch_size: int, **options) -> "TrainBatches":
        """Batches over a :class:`MultimodalDataset`'s train split (negatives exclude train positives)."""
        train = dataset.split_pairs("train")
        return cls(train[:, 0], train[:, 1], n_users=dataset.n_users, n_items=dataset.n_items,
                   batch_size=batch_size, **options)

    def _draw(self, rng, users) -> np.ndarray:
        negatives = sample_negatives(rng, users, self._draw_positives.n_items, self._draw_positives,
                                     n_neg=self.n_neg, distribution=self.distribution,
                                     item_popularity=self._draw_popularity)
        return negatives if self.item_pool is None else self.item_pool[negatives].astype(np.int32)

    def __len__(self) -> int:
        whole, rest = divmod(self.users.size, self.batch_size)
        return whole + (rest > 0 and not self.drop_remainder)

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches of epoch ``epoch`` (0-based), in order."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        # Negatives are drawn per pair in user order, then everything is shuffled together:
        # the same distribution as drawing after the shuffle, without sorting the queries.
        negatives = self._draw(rng, self.users)
        order = rng.permutation(self.users.size)
        n_rows = len(self) * self.batch_size
        rows = order[np.arange(n_rows) % order.size]  # padding wraps to the epoch's first pairs
        weights = (np.arange(n_rows) < order.size).astype(np.float32)
        users, items, negatives = self.users[rows], self.items[rows], negatives[rows]
        for begin in range(0, n_rows, self.batch_size):
            batch = slice(begin, begin + self.batch_size)
            yield {"users": users[batch], "pos_items": items[batch], "neg_items": negatives[batch],
                   "weights": weights[batch]}
