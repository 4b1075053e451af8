"""The data side of a run: load the dataset a config names, select modalities and roles,
and draw each epoch's batches reproducibly from ``(seed, epoch)``."""

from __future__ import annotations

import os

import numpy as np

from jaxrec import data as jdata
from jaxrec.data import MultimodalDataset
from jaxrec.errors import ConfigError, DataError
from jaxrec.train._config import DataConfig


def load_dataset(config: DataConfig) -> MultimodalDataset:
    """The dataset of ``config``: ``data.path`` read with ``data.format``, or the synthetic
    generator called with ``data.synthetic``."""
    if config.path is not None:
        if not os.path.exists(config.path):
            raise DataError("dataset path does not exist", path=config.path, field="data.path",
                            expected="a dataset folder or file (relative paths resolve against the current directory)")
        return jdata.load(config.path, format=config.format)
    args = dict(config.synthetic or {})
    if not args:
        return jdata.default_dataset()
    try:
        return jdata.make_synthetic(**args)
    except TypeError as error:
        raise ConfigError(f"data.synthetic: {error}") from None


def select_modalities(dataset: MultimodalDataset, config: DataConfig) -> MultimodalDataset:
    """Keep ``data.modalities`` (all when null) and rename those named in ``data.roles``
    (role -> modality) to their role."""
    if config.modalities is not None:
        dataset = dataset.select_modalities(config.modalities)
    if not config.roles:
        return dataset
    available = dict(dataset.modalities)
    renamed = {}
    for role, name in config.roles.items():
        if name not in available:
            raise ConfigError(f"data.roles.{role}: no modality {name!r} in the dataset "
                              f"(it has {', '.join(available) or 'none'})")
        renamed[name] = role
    modalities = {}
    for name, modality in available.items():
        new_name = renamed.get(name, name)
        if new_name in modalities:
            raise ConfigError(f"data.roles: two modalities would be named {new_name!r}")
        modalities[new_name] = jdata.Modality(new_name, modality.features, modality.mask, modality.lengths,
                                              dict(modality.provenance, original_name=name))
    return dataset.replace(modalities=modalities)


class EpochSampler:
    """Shuffled training batches with sampled negatives, a pure function of ``(seed, epoch)``.

    Every epoch visits the training interactions in a fresh random order, in
    ``ceil(n / batch_size)`` batches of exactly ``batch_size`` rows (the last one filled up
    from the start of the order, so that every batch has one static shape), each positive
    with ``n_negatives`` negatives drawn by :func:`jaxrec.data.sample_negatives` (never one of
    the user's training items). A resumed run redraws epoch ``e`` identically.

    Args:
      dataset: the dataset (its training split is sampled).
      batch_size: rows per batch.
      n_negatives: negatives per positive.
      method: ``"uniform"`` or ``"popularity"`` (items in proportion to their training count).
      seed: the run's seed.
    """

    def __init__(self, dataset: MultimodalDataset, *, batch_size: int, n_negatives: int = 1,
                 method: str = "uniform", seed: int = 0):
        self.pairs = dataset.split_pairs("train")
        if len(self.pairs) == 0:
            raise DataError("no training interactions to sample", field="x_label", expected="train rows")
        self.batch_size = int(batch_size)
        self.n_negatives = int(n_negatives)
        self.seed = int(seed)
        self.steps_per_epoch = -(-len(self.pairs) // self.batch_size)
        self._negatives = _NegativeSampler(self.pairs, n_items=dataset.n_items, method=method)

    def example_batch(self) -> dict[str, np.ndarray]:
        return {"users": np.zeros(self.batch_size, np.int32), "pos_items": np.zeros(self.batch_size, np.int32),
                "neg_items": np.zeros((self.batch_size, self.n_negatives), np.int32)}

    def batches(self, epoch: int) -> dict[str, np.ndarray]:
        """Epoch ``epoch``'s batches stacked: ``users``/``pos_items`` ``(steps, B)`` and
        ``neg_items`` ``(steps, B, n_negatives)`` int32."""
        rng = np.random.default_rng([self.seed, int(epoch)])
        n, steps, size = len(self.pairs), self.steps_per_epoch, self.batch_size
        order = rng.permutation(n)
        order = np.concatenate([order, order[: steps * size - n]])
        users = self.pairs[order, 0].astype(np.int32)
        items = self.pairs[order, 1].astype(np.int32)
        negatives = self._negatives.sample(users, self.n_negatives, rng)
        return {"users": users.reshape(steps, size), "pos_items": items.reshape(steps, size),
                "neg_items": negatives.reshape(steps, size, self.n_negatives).astype(np.int32)}


class _NegativeSampler:
    # Vectorized rejection sampling: draw for every row at once, redraw only the rows that hit
    # one of their user's training items, until none does.
    def __init__(self, pairs: np.ndarray, *, n_items: int, method: str):
        self.n_items = int(n_items)
        self.known = np.unique(pairs[:, 0].astype(np.int64) * self.n_items + pairs[:, 1])
        counts = np.bincount(pairs[:, 1], minlength=self.n_items)
        # As MMRec, negatives come from the items seen in training.
        self.items = np.flatnonzero(counts)
        if method == "uniform":
            self.probs = None
        elif method == "popularity":
            self.probs = counts[self.items] / counts.sum()
        else:
            raise ConfigError(f"unknown train.negative_sampling {method!r}; expected uniform or popularity")
        per_user = np.bincount(pairs[:, 0])
        if per_user.size and per_user.max() >= self.items.size:
            user = int(np.argmax(per_user))
            raise DataError("a user has interacted with every training item, so no negative exists",
                            field="train", found=f"user {user} with {per_user[user]} items",
                            expected=f"fewer than {self.items.size} items per user")

    def sample(self, users: np.ndarray, n_negatives: int, rng: np.random.Generator) -> np.ndarray:
        users = np.repeat(users.astype(np.int64), n_negatives)
        out = self.items[rng.choice(self.items.size, size=users.size, p=self.probs)]
        todo = np.arange(users.size)
        while todo.size:
            codes = users[todo] * self.n_items + out[todo]
            slot = np.minimum(np.searchsorted(self.known, codes), self.known.size - 1)
            todo = todo[self.known[slot] == codes]
            out[todo] = self.items[rng.choice(self.items.size, size=todo.size, p=self.probs)]
        return out.reshape(-1, n_negatives)
