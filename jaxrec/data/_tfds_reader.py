"""Reading TFDS tables written by ``prepare_tfds`` back into an identical MultimodalDataset.

See :mod:`jaxrec.data._tfds` for the public API and ``_tfds_schema`` for the tables.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from jaxrec.data._dataset import SPLIT_NAMES, Interactions, Modality, MultimodalDataset
from jaxrec.data._tfds_builder import check_name, check_version
from jaxrec.data._tfds_schema import COMMIT_TABLE, LAYOUT, decode_json, restore_id_map
from jaxrec.errors import DataError

_READ_CHUNK = 8192  # records decoded at a time when loading


def prepared_versions(data_dir, name: str) -> list[str]:
    """See :func:`jaxrec.data.prepared_versions`."""
    commit_root = Path(data_dir) / check_name(name) / COMMIT_TABLE
    if not commit_root.is_dir():
        return []
    found = []
    for child in commit_root.iterdir():
        try:
            parsed = tfds.core.Version(child.name)
        except ValueError:
            continue  # e.g. an incomplete.* folder being written right now
        if (child / "dataset_info.json").exists():
            found.append(parsed)
    return [str(v) for v in sorted(found)]


def split_length(builder, split: str) -> int:
    """The number of records in ``split`` (read from the record files' index, no decoding)."""
    return len(builder.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES))


def _read_split(builder, split: str, consume: Callable[[dict], None], rows: tuple[int, int] | None = None) -> int:
    """Feeds ``consume`` the split's columns, a chunk of records at a time; returns the row count.

    Reads raw records through ``builder.as_data_source`` and decodes the bytes-encoded fields
    in bulk: each numeric column of a chunk is one ``np.frombuffer`` of the joined bytes. With
    ``rows = (start, stop)`` only the records at those positions are read (random access).
    """
    source = builder.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    infos = tfds.core.utils.flatten_nest_dict(builder.info.features.get_tensor_info())
    first, end = (0, len(source)) if rows is None else rows
    for start in range(first, end, _READ_CHUNK):
        stop = min(start + _READ_CHUNK, end)
        records = source.__getitems__(list(range(start, stop)))
        fixed = _fixed_layout_columns(records, infos)
        if fixed is not None:
            consume(fixed)
            continue
        features = [tf_example_pb2.Example.FromString(record).features.feature for record in records]
        columns = {}
        for key, info in infos.items():
            try:
                values = [feature[key].bytes_list.value[0] for feature in features]
            except (KeyError, IndexError):
                raise DataError("record lacks a field", path=builder.data_dir, field=key,
                                found=f"split {split!r} rows {start}..{stop - 1}", expected="bytes-encoded fields") from None
            if info.np_dtype == np.object_:
                columns[key] = values
                continue
            joined = b"".join(values)
            dtype = np.dtype(info.np_dtype)
            if len(joined) != (stop - start) * dtype.itemsize * int(np.prod(info.shape, dtype=np.int64)):
                raise DataError("field size does not match its declared shape", path=builder.data_dir, field=key,
                                found=f"{len(joined)} bytes in rows {start}..{stop - 1}",
                                expected=f"{dtype} {info.shape} per row")
            columns[key] = np.frombuffer(joined, dtype=dtype).reshape(stop - start, *info.shape)
        consume(columns)
    return end - first


def _length_fields(buffer: bytes, start: int, stop: int) -> list[tuple[int, int, int]] | None:
    """``(field number, value start, value stop)`` of each length-delimited field of the
    protobuf message in ``buffer[start:stop]``; None on any other wire type or a malformed
    message."""

    def varint(at: int) -> tuple[int, int]:
        value = shift = 0
        while at < stop:
            byte = buffer[at]
            value |= (byte & 0x7F) << shift
            at += 1
            if not byte & 0x80:
                return value, at
            shift += 7
        raise ValueError

    fields, at = [], start
    try:
        while at < stop:
            tag, at = varint(at)
            if tag & 7 != 2:
                return None
            size, at = varint(at)
            if at + size > stop:
                return None
            fields.append((tag >> 3, at, at + size))
            at += size
    except ValueError:
        return None
    return fields


def _value_spans(record: bytes) -> dict[str, tuple[int, int]] | None:
    """``{key: (start, stop)}``: where each feature's single bytes value lies in a serialized
    ``tf.train.Example`` (Example.features -> Features.feature map entries -> key and
    Feature.bytes_list -> BytesList.value); None for any other shape."""
    spans = {}
    for number, a, b in _length_fields(record, 0, len(record)) or [(0, 0, 0)]:
        if number != 1:
            return None
        for entry_number, c, d in _length_fields(record, a, b) or []:
            entry = _length_fields(record, c, d) if entry_number == 1 else None
            if not entry or [n for n, _, _ in entry] != [1, 2]:
                return None
            key = record[entry[0][1]:entry[0][2]].decode("utf-8", "replace")
            inner = _length_fields(record, entry[1][1], entry[1][2])
            if not inner or len(inner) != 1 or inner[0][0] != 1:  # bytes_list
                return None
            values = _length_fields(record, inner[0][1], inner[0][2])
            if not values or len(values) != 1 or values[0][0] != 1:
                return None
            spans[key] = values[0][1:]
    return spans or None


def _fixed_layout_columns(records: list[bytes], infos: dict) -> dict[str, np.ndarray] | None:
    """The chunk's columns decoded without parsing every record, or None when that cannot be
    proved exact (then every record is parsed).

    When every field is numeric with a fixed shape and the records are byte strings of one
    length whose bytes outside the first record's field values (the protobuf framing: tags,
    lengths, keys) are identical in every record, every record has the first one's layout, so
    each column is one slice of the records stacked as an ``(n, L)`` uint8 array. The value
    offsets come from walking the first record's wire format.
    """
    if not records or any(info.np_dtype == np.object_ for info in infos.values()):
        return None
    length = len(records[0])
    if any(len(record) != length for record in records):
        return None
    spans = _value_spans(records[0])
    if spans is None or set(spans) != set(infos):
        return None
    framing = np.ones(length, bool)
    for key, info in infos.items():
        a, b = spans[key]
        if b - a != np.dtype(info.np_dtype).itemsize * int(np.prod(info.shape, dtype=np.int64)):
            return None
        framing[a:b] = False
    stacked = np.frombuffer(b"".join(records), np.uint8).reshape(len(records), length)
    if not (stacked[:, framing] == stacked[0, framing]).all():
        return None
    return {key: np.ascontiguousarray(stacked[:, slice(*spans[key])]).view(np.dtype(info.np_dtype))
            .reshape(len(records), *info.shape) for key, info in infos.items()}


class _Coverage:
    """Checks that row indices read from storage hit every position exactly once."""

    def __init__(self, n: int, path):
        self.seen = np.zeros(n, dtype=np.int32)
        self.path = path

    def add(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self.seen)):
            raise DataError("row index out of range", path=self.path, field="index",
                            found=int(index.max()), expected=f"indices in [0, {len(self.seen)})")
        np.add.at(self.seen, index, 1)
        return index

    def check(self) -> None:
        if not np.all(self.seen == 1):
            bad = int(np.flatnonzero(self.seen != 1)[0])
            raise DataError("stored rows do not cover the dataset exactly once", path=self.path, field="index",
                            found=f"row {bad} stored {int(self.seen[bad])} times", expected="once")


def _prepared_version(data_dir, name: str, version: str | None) -> tuple[Path, str]:
    """(the dataset's root folder, the prepared version to read: ``version`` or the latest), or
    ``DataError`` when nothing or not that version is prepared."""
    root = Path(data_dir) / check_name(name)
    versions = prepared_versions(data_dir, name)
    if not versions:
        raise DataError("no prepared TFDS dataset found", path=root,
                        expected=f"folders {name}/{COMMIT_TABLE}/<version>/ written by `jaxrec data prepare`")
    version = versions[-1] if version is None else str(check_version(version))
    if version not in versions:
        raise DataError("this version is not prepared", path=root, found=version, expected=f"one of {versions}")
    return root, version


def load_prepared(data_dir, name: str, version: str | None = None) -> MultimodalDataset:
    """See :func:`jaxrec.data.load_prepared`."""
    return load_prepared_side(data_dir, name, version)


def read_train_shard(data_dir, name: str, version: str | None, shard: int, n_shards: int
                     ) -> tuple[dict[str, np.ndarray], int]:
    """``(columns, n_train)``: the interaction columns (``index``, ``user``, ``item`` and, when
    stored, ``rating`` / ``timestamp``) of train records ``[n_train * shard // n_shards,
    n_train * (shard + 1) // n_shards)``, read by random access (no other record is read)."""
    root, version = _prepared_version(data_dir, name, version)
    builder = tfds.builder_from_directory(root / COMMIT_TABLE / version)
    total = split_length(builder, "train")
    rows = (total * shard // n_shards, total * (shard + 1) // n_shards)
    chunks: list[dict] = []
    _read_split(builder, "train", chunks.append, rows)
    infos = tfds.core.utils.flatten_nest_dict(builder.info.features.get_tensor_info())
    columns = {key: (np.concatenate([c[key] for c in chunks]) if chunks else np.empty(0, np.dtype(info.np_dtype)))
               for key, info in infos.items()}
    return columns, total


def load_prepared_side(data_dir, name: str, version: str | None = None,
                       train_columns: dict[str, np.ndarray] | None = None) -> MultimodalDataset:
    """:func:`load_prepared` with the train records given instead of read: ``train_columns``
    holds every train record's columns (as :func:`read_train_shard` returns them, the shards
    of all processes concatenated, in any order); the items, users, graphs and the valid and
    test records are read from ``data_dir``. ``None`` reads the train records too."""
    root, version = _prepared_version(data_dir, name, version)
    builders = {}

    def builder(table: str):
        if table not in builders:
            folder = root / table / version
            if not (folder / "dataset_info.json").exists():
                raise DataError("prepared dataset is incomplete: a table is missing", path=folder,
                                expected=f"the {table!r} table listed in the manifest; prepare the dataset again")
            builders[table] = tfds.builder_from_directory(folder)
        return builders[table]

    manifest = dict(builder(COMMIT_TABLE).info.metadata).get("jaxrec")
    if not isinstance(manifest, dict) or manifest.get("layout") != LAYOUT:
        raise DataError("not a jaxrec TFDS dataset (or another layout version)", path=root / COMMIT_TABLE / version,
                        field="metadata.jaxrec.layout", found=None if not isinstance(manifest, dict) else manifest.get("layout"),
                        expected=LAYOUT)
    counts, rows = manifest["counts"], manifest["rows"]
    interactions = _load_interactions(builder(COMMIT_TABLE), manifest, train_columns)
    modalities, item_ids = _load_items(builder("items") if rows["items"] else None, manifest)
    user_features, user_ids = _load_users(builder("users") if rows["users"] else None, manifest)
    kg = _load_pairs(builder("kg"), "triples", ("item", "relation", "entity"), rows["kg"]) if rows["kg"] else None
    social = _load_pairs(builder("social"), "edges", ("user", "friend"), rows["social"]) if rows["social"] else None
    if kg is None and manifest["kg_present"]:
        kg = np.empty((0, 3), dtype=np.int32)
    if social is None and manifest["social_present"]:
        social = np.empty((0, 2), dtype=np.int32)
    return MultimodalDataset(
        name=manifest["name"], n_users=counts["users"], n_items=counts["items"], interactions=interactions,
        modalities=modalities, user_features=user_features, kg_triples=kg, n_entities=counts["entities"],
        n_relations=counts["relations"], social_edges=social, user_ids=user_ids, item_ids=item_ids,
        metadata=decode_json(manifest["metadata"]),
    )


def _load_interactions(builder, manifest: dict, train_columns: dict | None = None) -> Interactions:
    n = manifest["counts"]["interactions"]
    users, items = np.empty(n, np.int32), np.empty(n, np.int32)
    split = np.empty(n, np.int8)
    ratings = np.empty(n, np.float32) if manifest["ratings"] else None
    timestamps = np.empty(n, np.dtype(manifest["timestamps_dtype"])) if manifest["timestamps_dtype"] else None
    coverage = _Coverage(n, builder.data_dir)
    for code, split_name in enumerate(SPLIT_NAMES):
        if not manifest["split_sizes"][split_name]:
            continue

        def consume(columns, code=code):
            index = coverage.add(columns["index"])
            users[index], items[index], split[index] = columns["user"], columns["item"], code
            if ratings is not None:
                ratings[index] = columns["rating"]
            if timestamps is not None:
                timestamps[index] = columns["timestamp"]

        if split_name == "train" and train_columns is not None:
            consume(train_columns)
        else:
            _read_split(builder, split_name, consume)
    coverage.check()
    return Interactions(users, items, split, ratings, timestamps)


def _load_items(builder, manifest: dict):
    n = manifest["counts"]["items"]
    specs = manifest["modalities"]
    features = {m["key"]: np.empty((n, *m["shape"]), np.float32) for m in specs}
    masks = {m["key"]: np.empty(n, np.bool_) for m in specs}
    lengths = {m["key"]: np.empty(n, np.int32) for m in specs if len(m["shape"]) == 2}
    id_column = _IdColumn(manifest["item_ids"], n) if manifest["item_ids"] else None
    if builder is not None:
        coverage = _Coverage(n, builder.data_dir)

        def consume(columns):
            index = coverage.add(columns["index"])
            for key in features:
                features[key][index] = columns[f"modalities/{key}/features"]
                masks[key][index] = columns[f"modalities/{key}/mask"]
                if key in lengths:
                    lengths[key][index] = columns[f"modalities/{key}/length"]
            if id_column is not None:
                id_column.put(index, columns["original_id"])

        _read_split(builder, "items", consume)
        coverage.check()
    modalities = {m["name"]: Modality(m["name"], features[m["key"]], masks[m["key"]], lengths.get(m["key"]),
                                      decode_json(m["provenance"])) for m in specs}
    item_ids = None if id_column is None else id_column.restore()
    return modalities, item_ids


def _load_users(builder, manifest: dict):
    n, dim = manifest["counts"]["users"], manifest["user_features_dim"]
    user_features = None if dim is None else np.empty((n, dim), np.float32)
    id_column = _IdColumn(manifest["user_ids"], n) if manifest["user_ids"] else None
    if builder is not None:
        coverage = _Coverage(n, builder.data_dir)

        def consume(columns):
            index = coverage.add(columns["index"])
            if user_features is not None:
                user_features[index] = columns["features"]
            if id_column is not None:
                id_column.put(index, columns["original_id"])

        _read_split(builder, "users", consume)
        coverage.check()
    user_ids = None if id_column is None else id_column.restore()
    return user_features, user_ids


class _IdColumn:
    """Original ids gathered by row index: a numeric array, or a list of stored bytes."""

    def __init__(self, spec: dict, n: int):
        self.spec = spec
        numeric = spec["kind"] in ("number", "object-int")
        self.values = np.empty(n, np.dtype(spec["dtype"]) if spec["kind"] == "number" else np.int64) if numeric else [None] * n

    def put(self, index: np.ndarray, values) -> None:
        if isinstance(self.values, np.ndarray):
            self.values[index] = values
        else:
            for position, value in zip(index.tolist(), values):
                self.values[position] = value

    def restore(self) -> np.ndarray:
        return restore_id_map(self.spec, self.values)


def _load_pairs(builder, split: str, fields: tuple[str, ...], n: int) -> np.ndarray:
    out = np.empty((n, len(fields)), np.int32)
    coverage = _Coverage(n, builder.data_dir)

    def consume(columns):
        index = coverage.add(columns["index"])
        for position, field in enumerate(fields):
            out[index, position] = columns[field]

    _read_split(builder, split, consume)
    coverage.check()
    return out


class PreparedTrainPairs:
    """The train split of a prepared dataset as a random-access store of (user, item) pairs.

    ``len(pairs)`` is the number of train interactions; ``pairs[index_array]`` reads and
    decodes only the records at those positions (array_record random access), shaped
    ``index_array.shape + (2,)``. The tables are written unshuffled, so record ``k`` is the
    ``k``-th train interaction in dataset order: ``pairs[k]`` equals
    ``MultimodalDataset.split_pairs("train")[k]``, and :class:`~jaxrec.data.KeyedTrainBatches`
    over this store (with the training positives given) draws the batches it draws over the
    in-memory pairs. Each process of a multi-process run then reads only the records of its
    rows of every global batch. :attr:`records_read` counts the records read so far.

    Raises:
      DataError: no prepared dataset (as :func:`load_prepared`), or a position outside the split.
    """

    def __init__(self, data_dir, name: str, version: str | None = None):
        root, version = _prepared_version(data_dir, name, version)
        self._builder = tfds.builder_from_directory(root / COMMIT_TABLE / version)
        self._source = self._builder.as_data_source(split="train",
                                                    deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
        self._infos = tfds.core.utils.flatten_nest_dict(self._builder.info.features.get_tensor_info())
        self._dtypes = {key: np.dtype(self._infos[key].np_dtype) for key in ("user", "item")}
        self.n = len(self._source)
        self.records_read = 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index) -> np.ndarray:
        index = np.asarray(index, np.int64)
        flat = index.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.n):
            raise DataError("train record position out of range", path=self._builder.data_dir, field="index",
                            found=f"positions {int(flat.min())}..{int(flat.max())}", expected=f"0..{self.n - 1}")
        records = self._source.__getitems__(flat.tolist()) if flat.size else []
        self.records_read += len(records)
        out = np.empty((flat.size, 2), np.int64)
        fixed = _fixed_layout_columns(records, self._infos)
        if fixed is not None:  # no per-record parse
            out[:, 0], out[:, 1] = fixed["user"], fixed["item"]
            return out.reshape(*index.shape, 2)
        features = [tf_example_pb2.Example.FromString(record).features.feature for record in records]
        for column, key in enumerate(("user", "item")):
            joined = b"".join(feature[key].bytes_list.value[0] for feature in features)
            out[:, column] = np.frombuffer(joined, dtype=self._dtypes[key])
        return out.reshape(*index.shape, 2)
