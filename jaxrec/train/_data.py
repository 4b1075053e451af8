"""The data side of a run: load the dataset a config names, select modalities and roles,
and draw each epoch's batches reproducibly from ``(seed, epoch)``."""

from __future__ import annotations

import os

import numpy as np

from jaxrec import data as jdata
from jaxrec.data import MultimodalDataset
from jaxrec.data import warn_unseen_in_train
from jaxrec.errors import ConfigError, DataError
from jaxrec.models import normalize_batch
from jaxrec.train._config import DataConfig
from jaxrec.train._state import example_batch


def load_dataset(config: DataConfig) -> MultimodalDataset:
    """The dataset of ``config``: ``data.path`` read with ``data.format`` and
    ``data.options``, or the synthetic generator called with ``data.synthetic``; then
    re-split when ``data.split`` asks; then ``data.feature_transform`` applied."""
    if config.path is not None:
        if not os.path.lexists(config.path):  # a broken link or link loop: the reader says which
            raise DataError("dataset path does not exist", path=config.path, field="data.path",
                            expected="a dataset folder or file (relative paths resolve against the current directory)")
        dataset = jdata.load(config.path, format=config.format, **config.options)
    elif not config.synthetic:
        dataset = jdata.default_dataset()
    else:
        try:
            dataset = jdata.make_synthetic(**config.synthetic)
        except TypeError as error:
            raise ConfigError(f"data.synthetic: {error}") from None
    return finish_dataset(dataset, config)


def finish_dataset(dataset: MultimodalDataset, config: DataConfig) -> MultimodalDataset:
    """The loaded ``dataset`` re-split when ``data.split`` asks, then ``data.feature_transform``
    applied (a warning for items or users unseen in train)."""
    if config.split is not None:
        params = dict(config.split)
        try:
            dataset = jdata.split_dataset(dataset, params.pop("method"), **params)
        except ConfigError as error:
            raise ConfigError(f"data.split: {error}") from None
    if config.feature_transform:
        dataset = jdata.transform_features(dataset, config.feature_transform)
    warn_unseen_in_train(dataset)
    return dataset


def candidate_items(dataset: MultimodalDataset, split: str):
    """The items ``split`` ranks: its held-out items after a cold-start split, else all (None)."""
    if dataset.metadata.get("split_method") != "cold_start_items":
        return None
    return getattr(jdata.cold_items(dataset), split)


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
    """An epoch's batches stacked for one scanned device call.

    ``sampler="shuffle"`` wraps :class:`jaxrec.data.TrainBatches`: every epoch visits the
    training interactions in a fresh order drawn from ``np.random.default_rng([seed, epoch])``,
    in ``ceil(n / batch_size)`` batches of exactly ``batch_size`` rows, each positive with
    ``n_negatives`` negatives outside the user's training items. ``sampler="keyed"`` wraps
    :class:`jaxrec.data.KeyedTrainBatches`: the same batch shapes and distribution, but every
    row is a function of ``(seed, epoch, global row position)`` alone, so each process of a
    multi-process run builds only its own rows. With either, the global batch sequence is the
    same whatever the number of processes (``shuffle`` by drawing the whole epoch in every
    process and keeping its rows). The last batch is filled up with rows of weight 0
    (``weights``), so every batch has one static shape; by the model contract
    (``jaxrec.models._registry``) those rows count for nothing, which is exactly MMRec's
    partial last batch. A resumed run redraws epoch ``e`` identically.
    ``sampler="device"`` wraps :class:`jaxrec.data.DeviceTrainBatches`: the same shapes,
    padding and distribution, with the pair order and the negatives computed on device from
    ``(seed, epoch, step)``, so the trainer runs each epoch as one compiled program that builds
    its batches itself (:meth:`jaxrec.train.StepRunner.run_sampled`; :attr:`device_arrays`).
    It is for accelerators (GPU/TPU), where copying each epoch's batches to the device and
    dispatching the calls cost more than drawing them; :meth:`batches` still returns the
    same batches on the host for anything that wants them (the mesh runner, searches).

    Negatives are drawn only among the items with a training interaction
    (``negative_items="trained"``, the default; ``"all"`` draws among every item). An item
    that has no training interaction is never a positive, so as a negative it is only ever
    pushed down: its ID vector learns nothing but "rank me last", and models that spread ID
    vectors over content neighbours (FREEDOM) carry that to the items like it. When every item
    has a training interaction the two settings draw exactly the same batches.

    Args:
      dataset: the dataset (its training split is sampled).
      batch_size: rows per (global) batch.
      n_negatives: negatives per positive.
      method: ``"uniform"`` or ``"popularity"`` (items in proportion to their training count).
      seed: the run's seed.
      sampler: ``"shuffle"``, ``"keyed"`` or ``"device"``.
      negative_items: ``"trained"`` or ``"all"`` (``train.negative_items``).
    """

    def __init__(self, dataset: MultimodalDataset, *, batch_size: int, n_negatives: int = 1,
                 method: str = "uniform", seed: int = 0, sampler: str = "shuffle",
                 negative_items: str = "trained"):
        if sampler not in ("shuffle", "keyed", "device"):
            raise ConfigError(f"train.sampler must be 'shuffle', 'keyed' or 'device', got {sampler!r}")
        if negative_items not in jdata.NEGATIVE_ITEMS:
            raise ConfigError(f"train.negative_items must be 'trained' (negatives only among items with a train "
                              f"interaction) or 'all' (among every item), got {negative_items!r}")
        self.sampler = sampler
        kind = {"shuffle": jdata.TrainBatches, "keyed": jdata.KeyedTrainBatches,
                "device": jdata.DeviceTrainBatches}[sampler]
        self._batches = kind.from_dataset(dataset, batch_size=batch_size, n_neg=n_negatives, seed=seed,
                                          distribution=method, negative_items=negative_items)
        self.batch_size = int(batch_size)
        self.n_negatives = int(n_negatives)
        self.steps_per_epoch = len(self._batches)

    @property
    def device_arrays(self):
        """``sampler="device"``: the :class:`jaxrec.data.DeviceEpochArrays` the epoch program
        reads (host arrays; ``StepRunner.put_sampler`` places them); else None."""
        return self._batches.arrays if self.sampler == "device" else None

    def example_batch(self) -> dict[str, np.ndarray]:
        """A batch of zeros with the shapes and dtypes of the real ones."""
        return normalize_batch(example_batch(self.batch_size, self.n_negatives))

    def batches(self, epoch: int, rows: slice | None = None) -> dict[str, np.ndarray]:
        """Epoch ``epoch``'s (0-based) batches stacked: ``users``, ``pos_items``, ``weights``
        ``(steps, B)`` and ``neg_items`` ``(steps, B, n_negatives)``; with ``rows`` (a slice
        of ``range(batch_size)``) only those rows of every batch (a process's share)."""
        if self.sampler == "keyed":
            return normalize_batch(self._batches.epoch_rows(epoch, rows))
        if self.sampler == "device":
            stacked = self._batches.epoch_stacked(epoch)
            return normalize_batch(stacked if rows is None else {k: v[:, rows] for k, v in stacked.items()})
        batches = list(self._batches.epoch(epoch))
        stacked = {key: np.stack([batch[key] for batch in batches]) for key in batches[0]}
        if rows is not None:
            stacked = {key: value[:, rows] for key, value in stacked.items()}
        return normalize_batch(stacked)
