"""Epoch batches drawn on device: the pair order and the negatives inside the train program.

:class:`TrainBatches` draws an epoch on the host and ships it to the device; here the epoch is
a pure function of device arrays and ``(seed, epoch, step)`` (:class:`DeviceEpochArrays`), so
a trainer can scan over the steps of an epoch with each batch built inside the same compiled
program (``jaxrec.train.StepRunner.run_sampled``): nothing crosses from the host per epoch
but two integers. For accelerators, where the host->device copy of every epoch and the
per-call dispatch cost more than the sampling itself.

The same epoch as :class:`TrainBatches` in distribution (not in the drawn values):

* the order of the ``n`` training pairs is ``jax.random.permutation`` of ``0 .. n - 1`` under
  a key from ``(seed, epoch)``; global row position ``p`` (batch ``p // B``, row ``p % B``)
  holds pair ``order[p % n]``, with weight 0 when ``p >= n`` (the padding rule: the last batch
  is filled with the epoch's first pairs at weight 0);
* the negatives of step ``s`` are drawn for its ``B`` rows with the key ``fold_in(key(seed,
  epoch), s)``: uniform among the user's non-positives in the pool (exact,
  :func:`sample_negatives_jax`), or in proportion to the items' training counts
  (exact, integer arithmetic, :func:`sample_popularity_negatives_jax`), drawn with replacement.

The item pool is ``negative_items``' (``"trained"``: items with a training pair; ``"all"``),
as in :class:`TrainBatches`. Every array stays int32; the training pairs must fit in int32.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.data._negatives import PositiveSets, _popularity_weights, _raise_if_no_negatives, negative_item_pool
from jaxrec.data._negatives_device import (
    DevicePositives,
    popularity_masses,
    sample_negatives_jax,
    sample_popularity_negatives_jax,
)
from jaxrec.errors import ConfigError, DataError

_EPOCH_STREAM = 0x0DE71CE  # separates these keys from the other uses of the run's seed


@dataclasses.dataclass(frozen=True)
class DeviceEpochArrays:
    """Everything an epoch's batches are computed from, a pytree (jit argument, never a constant).

    Attributes:
      users, items: (n,) int32 training pairs (grouped by user).
      positives: :class:`DevicePositives` over the negative pool.
      key: (2,) uint32, ``jax.random.PRNGKey(seed)``.
      cdf, local: int32 popularity masses (:func:`popularity_masses`), or None for uniform.
      batch_size, n_neg, steps: static shapes (``steps = ceil(n / batch_size)``).
    """

    users: jax.Array
    items: jax.Array
    positives: DevicePositives
    key: jax.Array
    cdf: jax.Array | None
    local: jax.Array | None
    batch_size: int
    n_neg: int
    steps: int

    @property
    def n_pairs(self) -> int:
        return int(self.users.shape[0])

    def epoch_key(self, epoch) -> jax.Array:
        base = jax.random.fold_in(jnp.asarray(self.key, jnp.uint32), _EPOCH_STREAM)
        return jax.random.fold_in(base, jnp.asarray(epoch, jnp.int32))

    def order(self, epoch) -> jax.Array:
        """(steps * B,) int32 pair index of every row position of epoch ``epoch`` (0-based)."""
        permutation = jax.random.permutation(jax.random.fold_in(self.epoch_key(epoch), 0), self.n_pairs)
        positions = jnp.arange(self.steps * self.batch_size, dtype=jnp.int32)
        return permutation.astype(jnp.int32)[positions % self.n_pairs]

    def batch(self, order: jax.Array, epoch, step) -> dict[str, jax.Array]:
        """Batch ``step`` of the epoch whose :meth:`order` is ``order`` (the contract's layout)."""
        step = jnp.asarray(step, jnp.int32)
        positions = step * self.batch_size + jnp.arange(self.batch_size, dtype=jnp.int32)
        rows = jax.lax.dynamic_slice_in_dim(order, step * self.batch_size, self.batch_size)
        users = self.users[rows]
        key = jax.random.fold_in(jax.random.fold_in(self.epoch_key(epoch), 1), step)
        if self.cdf is None:
            negatives, _ = sample_negatives_jax(key, users, self.positives, n_neg=self.n_neg)
        else:
            negatives, _ = sample_popularity_negatives_jax(key, users, self.positives, self.cdf, self.local,
                                                           n_neg=self.n_neg)
        return {"users": users, "pos_items": self.items[rows], "neg_items": negatives,
                "weights": (positions < self.n_pairs).astype(jnp.float32)}

    def steps_batches(self, epoch, steps: jax.Array) -> dict[str, jax.Array]:
        """Batches ``steps`` ((k,) int32) of epoch ``epoch`` stacked: ``(k, B)`` and ``(k, B, n_neg)``
        arrays, drawn in one vectorized call (the same values as :meth:`batch` step by step)."""
        order = self.order(epoch)
        return jax.vmap(lambda step: self.batch(order, epoch, step))(steps)

    def epoch_batches(self, epoch) -> dict[str, jax.Array]:
        """Every batch of the epoch stacked: ``(steps, B)`` and ``(steps, B, n_neg)`` arrays."""
        return self.steps_batches(epoch, jnp.arange(self.steps, dtype=jnp.int32))


jax.tree_util.register_dataclass(DeviceEpochArrays, data_fields=["users", "items", "positives", "key", "cdf", "local"],
                                 meta_fields=["batch_size", "n_neg", "steps"])


@jax.jit
def _materialize(arrays: DeviceEpochArrays, epoch):
    return arrays.epoch_batches(epoch)


class DeviceTrainBatches:
    """Epochs of fixed-size batches computed on device (see the module docstring).

    The arrays a trainer's program reads are :attr:`arrays` (host numpy; the runner places
    them); :meth:`epoch` / :meth:`epoch_stacked` compute the same batches in one jitted call
    and bring them to the host, for any consumer of host batches (pmap-free replays, searches,
    tests).

    Args: as :class:`TrainBatches` (``distribution``: ``"uniform"`` or ``"popularity"``, the
    latter with the default weights, the items' training counts; no ``drop_remainder``).
    """

    def __init__(self, users, items, *, n_users: int, n_items: int, batch_size: int, n_neg: int = 1,
                 seed: int = 0, distribution: str = "uniform", negative_items: str = "trained"):
        users, items = np.asarray(users, np.int32), np.asarray(items, np.int32)
        if int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if int(n_neg) != n_neg or n_neg < 1:
            raise ConfigError(f"n_neg must be an integer >= 1, got {n_neg!r}")
        if distribution not in ("uniform", "popularity"):
            raise ConfigError(f"distribution must be 'uniform' or 'popularity', got {distribution!r}")
        if users.size == 0:
            raise DataError("no training pairs to batch", field="train", found="0 pairs", expected="at least one")
        if users.size >= 2**31 - int(batch_size):
            raise DataError("too many training pairs for int32 device batches", field="train",
                            found=f"{users.size} pairs", expected="fewer than 2**31")
        by_user = np.argsort(users, kind="stable")
        users, items = users[by_user], items[by_user]
        sets = PositiveSets.from_pairs(users, items, n_users=n_users, n_items=n_items)
        pool = negative_item_pool(negative_items, items, int(n_items))
        drawn = sets if pool is None else sets.restricted_to(pool)
        trained_users = np.unique(users)
        cdf = local = None
        if distribution == "popularity":
            weights = _popularity_weights(None, sets)
            cdf, local = popularity_masses(drawn, weights if pool is None else weights[pool])
            positive_mass = np.zeros(sets.n_users, np.int64)
            nonempty = drawn.degrees > 0
            positive_mass[nonempty] = local[drawn.indptr[1:][nonempty] - 1]
            stuck = cdf[-1] - positive_mass[trained_users] <= 0
            _raise_if_no_negatives(trained_users, stuck, "every item outside the user's positives has zero popularity")
        else:
            _raise_if_no_negatives(trained_users, drawn.degrees[trained_users] >= drawn.n_items,
                                   "the user has every item among its positives")
        positives = jax.tree.map(np.asarray, DevicePositives.from_sets(sets, pool))
        self.batch_size, self.n_neg, self.seed = int(batch_size), int(n_neg), int(seed)
        self.distribution, self.n_items = distribution, int(n_items)
        self.item_pool = pool
        steps = -(-users.size // self.batch_size)
        self.arrays = DeviceEpochArrays(users, items, positives, np.asarray(jax.random.PRNGKey(self.seed)),
                                        cdf, local, self.batch_size, self.n_neg, steps)
        self._placed: DeviceEpochArrays | None = None

    @classmethod
    def from_dataset(cls, dataset, *, batch_size: int, **options) -> "DeviceTrainBatches":
        """Batches over a :class:`MultimodalDataset`'s train split (negatives exclude train positives)."""
        train = dataset.split_pairs("train")
        return cls(train[:, 0], train[:, 1], n_users=dataset.n_users, n_items=dataset.n_items,
                   batch_size=batch_size, **options)

    def __len__(self) -> int:
        return self.arrays.steps

    def epoch_stacked(self, epoch: int) -> dict[str, np.ndarray]:
        """Epoch ``epoch``'s (0-based) batches stacked, on the host."""
        if self._placed is None:
            self._placed = jax.device_put(self.arrays)
        return {key: np.asarray(value) for key, value in _materialize(self._placed, np.int32(epoch)).items()}

    def epoch(self, epoch: int) -> Iterator[dict[str, np.ndarray]]:
        """The batches of epoch ``epoch`` (0-based), in order."""
        stacked = self.epoch_stacked(epoch)
        for step in range(len(self)):
            yield {key: value[step] for key, value in stacked.items()}
