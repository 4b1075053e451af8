"""TFDS storage of any MultimodalDataset: versioned array_record tables that load back bitwise.

:func:`prepare_tfds` writes a dataset as the TFDS builder configs described in
``_tfds_schema`` (items, users, kg, social, interactions) under
``data_dir/<name>/<table>/<version>/``; :func:`load_prepared` reads them back through
``builder.as_data_source()`` into an identical :class:`MultimodalDataset`. The files are plain
TFDS: ``tfds.data_source("<name>/interactions:<version>", split="train", data_dir=...)``
gives random access to the training interactions without jaxrec or TensorFlow.

Atomicity: TFDS writes each config into an ``incomplete.*`` folder and renames it when done.
The interactions config, which carries the manifest, is written last, so its presence commits
the whole dataset; an interrupted preparation leaves no interactions folder, and the next one
clears the leftovers before writing.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.proto import tf_example_pb2

from jaxrec.data._dataset import SPLIT_NAMES, Interactions, Modality, MultimodalDataset
from jaxrec.data._tfds_schema import (COMMIT_TABLE, LAYOUT, TABLE_SPLITS, TABLES, build_manifest, decode_json,
                                      restore_id_map, table_examples, table_features, table_rows)
from jaxrec.errors import ConfigError, DataError

_DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_READ_CHUNK = 8192  # records decoded at a time when loading


class MultimodalDatasetBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """TFDS builder writing one table (builder config) of a :class:`MultimodalDataset`.

    TFDS builders carry a fixed class-level ``name`` and ``VERSION``: get a subclass for a
    dataset name and version from :func:`tfds_builder_class`, then construct it with the
    dataset to write, e.g. ``cls(dataset=data, data_dir=d, config="items")``. Reading needs no
    class: ``tfds.builder_from_directory`` or ``tfds.data_source`` read the prepared folders.
    """

    BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=table, description=f"{table}: one example per row")
                       for table in (COMMIT_TABLE, *[t for t in TABLES if t != COMMIT_TABLE])]
    DEFAULT_BUILDER_CONFIG_NAME = COMMIT_TABLE

    def __init__(self, *, dataset: MultimodalDataset, **kwargs):
        if not isinstance(dataset, MultimodalDataset):
            raise DataError("a TFDS builder needs the MultimodalDataset it writes", field="dataset",
                            found=type(dataset).__name__, expected="a MultimodalDataset (to read, use load_prepared)")
        self._dataset = dataset
        self._manifest = build_manifest(dataset)
        super().__init__(**kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        # TFDS 4.9.10 resolves this for package modules through `importlib_resources`, which it
        # only installs on Python < 3.9; this file is where that lookup would end.
        return tfds.core.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        table = self.builder_config.name
        metadata = {"jaxrec": self._manifest} if table == COMMIT_TABLE else {"jaxrec_layout": LAYOUT}
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"{self._dataset.name!r} as jaxrec TFDS tables; this config: {table}.",
            features=table_features(table, self._manifest),
            disable_shuffling=True,  # rows stay in dataset order; random access needs no shuffle
            metadata=tfds.core.MetadataDict(metadata),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data is in memory
        table = self.builder_config.name
        if table == COMMIT_TABLE:
            sizes = self._dataset.split_sizes()
        else:
            sizes = {TABLE_SPLITS[table][0]: table_rows(self._dataset)[table]}
        # TFDS cannot write an empty split; the manifest records the true sizes.
        return {split: self._generate_examples(table, split) for split in TABLE_SPLITS[table] if sizes[split]}

    def _generate_examples(self, table: str, split: str):
        yield from table_examples(self._dataset, table, split, self._manifest)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _DATASET_NAME.match(name):
        suggestion = re.sub(r"[^a-z0-9_]", "_", str(name).lower()).lstrip("_0123456789") or "dataset"
        raise ConfigError(f"TFDS dataset name {name!r} is not valid: use lower-case letters, digits and "
                          f"underscores, starting with a letter (e.g. {suggestion!r})")
    return name


def _check_version(version) -> tfds.core.Version:
    try:
        return tfds.core.Version(str(version))
    except ValueError:
        raise ConfigError(f"dataset version {version!r} is not valid: expected MAJOR.MINOR.PATCH, e.g. '1.0.0'") from None


def tfds_builder_class(name: str, *, version: str = "1.0.0", release_notes: str | None = None):
    """A :class:`MultimodalDatasetBuilder` subclass with TFDS ``name`` and ``VERSION`` fixed.

    Args:
      name: the TFDS dataset name (lower_snake_case); folders go under ``data_dir/name``.
      version: ``MAJOR.MINOR.PATCH``; each version is prepared into its own folder.
      release_notes: what changed in this version (kept in ``dataset_info.json``).

    Returns:
      A builder class, not registered in TFDS's global registry (so any number of names and
      versions can coexist in one process).
    """
    _check_name(name)
    parsed = _check_version(version)
    from jaxrec import __version__  # the top-level package imports nothing back

    notes = release_notes if release_notes is not None else f"Prepared with jaxrec {__version__}."
    body = {"name": name, "VERSION": parsed, "RELEASE_NOTES": {str(parsed): notes}, "__module__": __name__}
    class_name = "".join(part.capitalize() for part in name.split("_")) + "Builder"
    return types.new_class(class_name, (MultimodalDatasetBuilder,), {"skip_registration": True},
                           lambda namespace: namespace.update(body))


def prepare_tfds(dataset: MultimodalDataset, data_dir, *, name: str | None = None, version: str = "1.0.0",
                 release_notes: str | None = None, overwrite: bool = False) -> Path:
    """Writes ``dataset`` as versioned TFDS array_record tables under ``data_dir/name``.

    Args:
      dataset: any :class:`MultimodalDataset` with at least one interaction.
      data_dir: the TFDS data directory (created if absent).
      name: TFDS dataset name (lower_snake_case); defaults to ``dataset.name``.
      version: ``MAJOR.MINOR.PATCH``.
      release_notes: notes for this version.
      overwrite: replace an already prepared dataset of the same name and version.

    Returns:
      ``data_dir/name``, holding one folder per table, each with a ``<version>`` folder.

    Raises:
      DataError: the version is already prepared (and ``overwrite`` is False), the dataset
        has no interactions, or its metadata holds values that cannot be stored.
      ConfigError: an invalid name or version.
    """
    name = _check_name(dataset.name if name is None else name)
    builder_class = tfds_builder_class(name, version=version, release_notes=release_notes)
    version = str(builder_class.VERSION)
    root = Path(data_dir) / name
    committed = root / COMMIT_TABLE / version
    rows = table_rows(dataset)
    if rows[COMMIT_TABLE] == 0:
        raise DataError("cannot prepare a dataset without interactions", field="interactions", found="0 rows",
                        expected="at least one interaction")
    build_manifest(dataset)  # fails early on metadata that cannot be stored, before touching disk
    if committed.exists():
        if not overwrite:
            raise DataError("this dataset version is already prepared", path=committed, found=f"{name} {version}",
                            expected="a new version (--version) or overwrite=True")
        shutil.rmtree(committed)  # un-commit first, so a crash below never leaves a mixed dataset
    with tempfile.TemporaryDirectory(prefix="jaxrec_tfds_") as scratch:
        for table in TABLES:  # the commit table is last
            shutil.rmtree(root / table / version, ignore_errors=True)  # leftovers of an interrupted run
            if rows[table]:
                builder = builder_class(dataset=dataset, data_dir=str(data_dir), config=table)
                builder.download_and_prepare(download_dir=scratch, file_format="array_record")
    return root


def prepared_versions(data_dir, name: str) -> list[str]:
    """Versions of ``name`` fully prepared in ``data_dir``, oldest first."""
    commit_root = Path(data_dir) / _check_name(name) / COMMIT_TABLE
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


def _read_split(builder, split: str, consume: Callable[[dict], None]) -> int:
    """Feeds ``consume`` the split's columns, a chunk of records at a time; returns the row count.

    Reads raw records through ``builder.as_data_source`` and decodes the bytes-encoded fields
    in bulk: each numeric column of a chunk is one ``np.frombuffer`` of the joined bytes.
    """
    source = builder.as_data_source(split=split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    infos = tfds.core.utils.flatten_nest_dict(builder.info.features.get_tensor_info())
    total = len(source)
    for start in range(0, total, _READ_CHUNK):
        stop = min(start + _READ_CHUNK, total)
        records = source.__getitems__(list(range(start, stop)))
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
    return total


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


def load_prepared(data_dir, name: str, version: str | None = None) -> MultimodalDataset:
    """Loads a dataset written by :func:`prepare_tfds`, bitwise identical to the original.

    Args:
      data_dir: the TFDS data directory given to :func:`prepare_tfds`.
      name: the TFDS dataset name.
      version: ``MAJOR.MINOR.PATCH``; the newest prepared version when None.

    Returns:
      The :class:`MultimodalDataset` (arrays, dtypes, masks, lengths, provenance, metadata,
      id maps, knowledge graph, social edges and user features as they were prepared).

    Raises:
      DataError: nothing prepared there, an unknown version, or incomplete or corrupt tables.
    """
    root = Path(data_dir) / _check_name(name)
    versions = prepared_versions(data_dir, name)
    if not versions:
        raise DataError("no prepared TFDS dataset found", path=root,
                        expected=f"folders {name}/{COMMIT_TABLE}/<version>/ written by `jaxrec data prepare`")
    version = versions[-1] if version is None else str(_check_version(version))
    if version not in versions:
        raise DataError("this version is not prepared", path=root, found=version, expected=f"one of {versions}")
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
    interactions = _load_interactions(builder(COMMIT_TABLE), manifest)
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


def _load_interactions(builder, manifest: dict) -> Interactions:
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
