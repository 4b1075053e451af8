"""``data.per_process_read``: each process of a multi-process run reads only its shard of the
train records of a prepared (TFDS / array_record) dataset.

With ``N`` processes and ``n`` train records, process ``i`` reads, by random access, only the
train records ``[n i // N, n (i + 1) // N)`` (:func:`shard_bounds`): decoding the train
records is the bulk of loading a prepared dataset, and it is divided ``N`` ways. The shards
are then exchanged (one all-gather of their bytes over the processes), so every process
holds the identical :class:`~jaxrec.data.MultimodalDataset` that reading everything gives:
the positives that negatives avoid, a graph model's adjacency and the evaluation masks need
every user's train items, and the global batch sequence is a function of the seed alone
(``train.sampler``), whatever the number of processes. The items, users, graphs and the valid
and test records are read by every process (:func:`jaxrec.data._tfds_reader.load_prepared_side`).

``auto`` (the default) reads per process when the data is a prepared dataset (``data.format:
tfds``, or ``auto`` finding one) and the run has more than one process; ``true`` insists (a
ConfigError for data that is not a prepared dataset); ``false`` reads every record on every
process.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

from jaxrec.data import MultimodalDataset
from jaxrec.errors import ConfigError
from jaxrec.train import _distributed
from jaxrec.train._config import DataConfig

SETTINGS = ("auto", True, False)


@dataclasses.dataclass(frozen=True)
class ReadReport:
    """What this run's processes read of the train records: ``records_read[i]`` by process ``i``
    of ``train_records`` in all."""

    per_process: bool
    train_records: int
    records_read: tuple[int, ...]

    def asdict(self) -> dict:
        return {"per_process_read": self.per_process, "train_records": self.train_records,
                "train_records_read": list(self.records_read)}


def shard_bounds(n: int, shard: int, n_shards: int) -> tuple[int, int]:
    """``[start, stop)`` of shard ``shard`` of ``n`` records in ``n_shards`` contiguous shards
    whose sizes differ by at most one and cover ``range(n)`` once."""
    return n * shard // n_shards, n * (shard + 1) // n_shards


def _is_prepared(config: DataConfig) -> bool:
    if config.path is None or config.format not in ("auto", "tfds"):
        return False
    if config.format == "tfds":
        return True
    from jaxrec.data import detect_format

    return os.path.isdir(config.path) and detect_format(config.path) == "tfds"


def enabled(config: DataConfig) -> bool:
    """Whether this run reads per process (see the module doc); ConfigError for ``true`` on data
    that is not a prepared dataset."""
    setting = config.per_process_read
    if setting is False:
        return False
    prepared = _is_prepared(config)
    if setting is True and not prepared:
        raise ConfigError("data.per_process_read: true needs a dataset prepared by `jaxrec data prepare` "
                          f"(data.format: tfds, or a DATA_DIR/NAME folder it wrote); data.path is {config.path!r} "
                          f"with data.format {config.format!r}")
    return prepared and (setting is True or _distributed.process_count() > 1)


def _gather_columns(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every process's columns concatenated in process order (all processes must call it).

    Exchanged as raw bytes (``uint8``), so int64 and float64 columns cross unchanged without
    JAX's 64-bit mode."""
    if not _distributed.is_multiprocess():
        return columns
    rows = int(next(iter(columns.values())).shape[0])
    counts = _distributed.allgather(np.array([rows], np.int64)).reshape(-1)
    width = max(int(counts.max()), 1)
    out = {}
    for key in sorted(columns):
        value = np.ascontiguousarray(columns[key])
        item = value.dtype.itemsize * int(np.prod(value.shape[1:], dtype=np.int64))
        padded = np.zeros(width * item, np.uint8)
        padded[:rows * item] = np.frombuffer(value.tobytes(), np.uint8)
        gathered = _distributed.allgather(padded)
        out[key] = np.concatenate([
            np.frombuffer(gathered[i, :int(counts[i]) * item].tobytes(), value.dtype).reshape(-1, *value.shape[1:])
            for i in range(len(counts))])
    return out


def load(config: DataConfig) -> tuple[MultimodalDataset, ReadReport | None]:
    """``(dataset, report)``: the dataset of ``config``, its train records read per process when
    :func:`enabled` (then the report says how many each process read), else as
    :func:`jaxrec.train._data.load_dataset` reads it (report None)."""
    from jaxrec.data import load_prepared_side, read_train_shard
    from jaxrec.train._data import finish_dataset, load_dataset

    on = enabled(config)
    # Every process must take the same path (the shard exchange is a collective): a process
    # that sees other files would otherwise wait for the others forever.
    _distributed.check_same_everywhere(f"per_process_read={on}", "whether the data is a prepared dataset "
                                       "(data.per_process_read; is data.path the same folder on every host?)")
    if not on:
        return load_dataset(config), None
    options = dict(config.options)
    version = options.pop("version", None)
    if options:
        raise ConfigError(f"data.options: a prepared dataset takes only 'version'; found {sorted(options)}")
    path = Path(config.path)
    shard, n_shards = _distributed.process_index(), _distributed.process_count()
    columns, total = read_train_shard(path.parent, path.name, version, shard, n_shards)
    read = int(columns["index"].shape[0])
    dataset = load_prepared_side(path.parent, path.name, version, _gather_columns(columns))
    counts = tuple(int(c) for c in _distributed.allgather(np.array([read], np.int64)).reshape(-1))
    return finish_dataset(dataset, config), ReadReport(True, total, counts)
