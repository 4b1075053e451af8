"""What a MultimodalDataset looks like as TFDS tables: feature specs, rows, and the manifest.

A dataset becomes up to five TFDS builder configs ("tables"), one example per row:

==============  ====================  ===================================================
config          splits                one example per
==============  ====================  ===================================================
items           items                 item: index, original_id, each modality's row/mask/length
users           users                 user: index, original_id, user features
kg              triples               knowledge-graph triple: index, item, relation, entity
social          edges                 social edge: index, user, friend
interactions    train / valid / test  interaction: index (row position), user, item, rating,
                                      timestamp; the manifest (all dataset-level facts) lives
                                      in this config's metadata, and it is written last
==============  ====================  ===================================================

Every numeric field is a ``tfds.features.Tensor`` with ``encoding="bytes"``: raw bytes of the
array's own dtype, so int8 labels, float64 timestamps and float32 features come back bitwise
(the default encoding would widen ints to int64 and narrow float64 to float32). String ids are
``Tensor(dtype=object)`` (UTF-8 bytes). Free-form metadata and provenance go through a small
tagged-JSON codec that keeps tuples, numpy scalars and small arrays exact.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxrec.data._dataset import SPLIT_NAMES, MultimodalDataset
from jaxrec.errors import DataError

LAYOUT = "jaxrec-tfds-1"  # bump when the tables below change incompatibly
COMMIT_TABLE = "interactions"
TABLE_SPLITS = {"items": ("items",), "users": ("users",), "kg": ("triples",), "social": ("edges",),
                COMMIT_TABLE: SPLIT_NAMES}
TABLES = tuple(TABLE_SPLITS)  # preparation order: the commit table comes last
_SAFE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


def _scalar(dtype) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(), dtype=np.dtype(dtype), encoding=tfds.features.Encoding.BYTES)


def _array(shape, dtype=np.float32) -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=tuple(shape), dtype=np.dtype(dtype), encoding=tfds.features.Encoding.BYTES)


# ---- tagged JSON for metadata and provenance ----------------------------------------------


def encode_json(value: Any, field: str) -> Any:
    """A JSON-able form of ``value`` from which :func:`decode_json` rebuilds it exactly."""
    if isinstance(value, np.generic) and value.dtype.kind in "biufU":  # before str/float: np.float64 is a float
        return {"__numpy_scalar__": value.dtype.str, "value": value.item()}
    if value is None or type(value) in (bool, int, float, str):  # exact types: subclasses would come back changed
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        data = np.ascontiguousarray(value)
        return {"__ndarray__": value.dtype.str, "shape": list(value.shape),
                "base64": base64.b64encode(data.tobytes()).decode("ascii")}
    if isinstance(value, np.ndarray) and value.dtype.kind == "U":  # names: RecBole entities, MovieLens titles
        return {"__ndarray__": value.dtype.str, "shape": list(value.shape), "strings": value.ravel().tolist()}
    if isinstance(value, list):
        return [encode_json(v, f"{field}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [encode_json(v, f"{field}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, Mapping):
        items = [(encode_json(k, f"{field} key"), encode_json(v, f"{field}[{k!r}]")) for k, v in value.items()]
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return dict(items)
        return {"__mapping__": [list(pair) for pair in items]}
    raise DataError("metadata value cannot be stored", field=field, found=f"{type(value).__name__} {value!r:.80}",
                    expected="None, bool, int, float, str, list, tuple, mappings, numpy scalars, numeric or str arrays")


def decode_json(value: Any) -> Any:
    """Inverse of :func:`encode_json`."""
    if isinstance(value, list):
        return [decode_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tuple__" in value:
        return tuple(decode_json(v) for v in value["__tuple__"])
    if "__mapping__" in value:
        return {_hashable(decode_json(k)): decode_json(v) for k, v in value["__mapping__"]}
    if "__numpy_scalar__" in value:
        return np.dtype(value["__numpy_scalar__"]).type(value["value"])
    if "__ndarray__" in value and "strings" in value:
        return np.asarray(value["strings"], dtype=np.dtype(value["__ndarray__"])).reshape(value["shape"])
    if "__ndarray__" in value:
        raw = base64.b64decode(value["base64"])
        return np.frombuffer(raw, dtype=np.dtype(value["__ndarray__"])).reshape(value["shape"]).copy()
    return {k: decode_json(v) for k, v in value.items()}


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


# ---- id maps (dense id -> original id) ----------------------------------------------------


def id_map_spec(ids: np.ndarray | None, field: str) -> dict | None:
    """How an id map is stored: ``kind`` (number, str, bytes) and its exact dtype."""
    if ids is None:
        return None
    if ids.dtype.kind in "biuf":
        return {"kind": "number", "dtype": ids.dtype.str}
    if ids.dtype.kind in "US":
        return {"kind": {"U": "str", "S": "bytes"}[ids.dtype.kind], "dtype": ids.dtype.str}
    if ids.dtype.kind == "O":
        types = {type(v) for v in ids.tolist()}
        if types <= {int} and (not ids.size or -(2**63) <= min(ids.tolist()) and max(ids.tolist()) < 2**63):
            return {"kind": "object-int", "dtype": "|O"}
        if types == {str} or types == {bytes}:
            return {"kind": "object-" + types.pop().__name__, "dtype": "|O"}
    raise DataError("original ids cannot be stored", field=field, found=f"dtype {ids.dtype}",
                    expected="numbers, str or bytes (all of one type)")


def _id_feature(spec: dict) -> tfds.features.Tensor:
    if spec["kind"] == "number":
        return _scalar(spec["dtype"])
    if spec["kind"] == "object-int":
        return _scalar(np.int64)
    return tfds.features.Tensor(shape=(), dtype=np.object_)


def _id_value(spec: dict, value):
    if spec["kind"] in ("str", "object-str"):
        return str(value).encode("utf-8")
    if spec["kind"] in ("bytes", "object-bytes"):
        return bytes(value)
    if spec["kind"] == "object-int":
        return np.int64(value)
    return value


def restore_id_map(spec: dict, values) -> np.ndarray:
    """The id map from its stored column (a numeric array, or a list of bytes)."""
    kind = spec["kind"]
    if kind == "number":
        return np.asarray(values, dtype=np.dtype(spec["dtype"]))
    if kind in ("str", "bytes"):
        decoded = [v.decode("utf-8") for v in values] if kind == "str" else list(values)
        return np.array(decoded, dtype=np.dtype(spec["dtype"])) if decoded else np.empty(0, np.dtype(spec["dtype"]))
    restored = np.empty(len(values), dtype=object)
    restored[:] = {"object-int": lambda: [int(v) for v in values],
                   "object-str": lambda: [v.decode("utf-8") for v in values],
                   "object-bytes": lambda: list(values)}[kind]()
    return restored


# ---- the manifest -------------------------------------------------------------------------


def modality_keys(dataset: MultimodalDataset) -> dict[str, str]:
    """Modality name -> feature key: the name when it is a safe key, else ``modality_<position>``."""
    keys = {}
    for position, name in enumerate(dataset.modalities):
        key = name if _SAFE_KEY.match(name) else f"modality_{position}"
        keys[name] = key if key not in keys.values() else f"modality_{position}"
    return keys


def table_rows(dataset: MultimodalDataset) -> dict[str, int]:
    """Rows per table; a table with no rows is not written."""
    inter = dataset.interactions
    has_item_rows = bool(dataset.modalities) or dataset.item_ids is not None
    has_user_rows = dataset.user_features is not None or dataset.user_ids is not None
    return {"items": dataset.n_items if has_item_rows else 0,
            "users": dataset.n_users if has_user_rows else 0,
            "kg": 0 if dataset.kg_triples is None else len(dataset.kg_triples),
            "social": 0 if dataset.social_edges is None else len(dataset.social_edges),
            COMMIT_TABLE: len(inter)}


def build_manifest(dataset: MultimodalDataset) -> dict:
    """Everything about the dataset that is not a per-row table, as plain JSON."""
    inter = dataset.interactions
    keys = modality_keys(dataset)
    return {
        "layout": LAYOUT,
        "name": dataset.name,
        "counts": {"users": dataset.n_users, "items": dataset.n_items, "entities": dataset.n_entities,
                   "relations": dataset.n_relations, "interactions": len(inter)},
        "split_sizes": dataset.split_sizes(),
        "rows": table_rows(dataset),
        "ratings": inter.ratings is not None,
        "timestamps_dtype": None if inter.timestamps is None else inter.timestamps.dtype.str,
        "modalities": [{"name": name, "key": keys[name], "shape": list(mod.features.shape[1:]),
                        "provenance": encode_json(dict(mod.provenance), f"modalities[{name!r}].provenance")}
                       for name, mod in dataset.modalities.items()],
        "user_features_dim": None if dataset.user_features is None else int(dataset.user_features.shape[1]),
        "kg_present": dataset.kg_triples is not None,
        "social_present": dataset.social_edges is not None,
        "user_ids": id_map_spec(dataset.user_ids, "user_ids"),
        "item_ids": id_map_spec(dataset.item_ids, "item_ids"),
        "metadata": encode_json(dict(dataset.metadata), "metadata"),
    }


# ---- per-table features and rows ----------------------------------------------------------


def table_features(table: str, manifest: dict) -> tfds.features.FeaturesDict:
    """The TFDS features of one table, from the manifest alone."""
    if table == COMMIT_TABLE:
        spec = {"index": _scalar(np.int64), "user": _scalar(np.int32), "item": _scalar(np.int32)}
        if manifest["ratings"]:
            spec["rating"] = _scalar(np.float32)
        if manifest["timestamps_dtype"]:
            spec["timestamp"] = _scalar(manifest["timestamps_dtype"])
    elif table in ("items", "users"):
        spec = {"index": _scalar(np.int32)}
        if manifest[f"{table[:-1]}_ids"]:
            spec["original_id"] = _id_feature(manifest[f"{table[:-1]}_ids"])
        if table == "items" and manifest["modalities"]:
            spec["modalities"] = tfds.features.FeaturesDict({
                m["key"]: tfds.features.FeaturesDict(
                    {"features": _array(m["shape"]), "mask": _scalar(np.bool_),
                     **({"length": _scalar(np.int32)} if len(m["shape"]) == 2 else {})})
                for m in manifest["modalities"]})
        if table == "users" and manifest["user_features_dim"] is not None:
            spec["features"] = _array((manifest["user_features_dim"],))
    elif table == "kg":
        spec = {"index": _scalar(np.int64), "item": _scalar(np.int32), "relation": _scalar(np.int32),
                "entity": _scalar(np.int32)}
    elif table == "social":
        spec = {"index": _scalar(np.int64), "user": _scalar(np.int32), "friend": _scalar(np.int32)}
    else:
        raise DataError("unknown table", field="table", found=table, expected=f"one of {TABLES}")
    return tfds.features.FeaturesDict(spec)


def table_examples(dataset: MultimodalDataset, table: str, split: str, manifest: dict) -> Iterator[tuple[int, dict]]:
    """(key, example) pairs of one split of one table, in row order (the key is the row)."""
    if table == COMMIT_TABLE:
        inter = dataset.interactions
        for row in np.flatnonzero(inter.split == SPLIT_NAMES.index(split)):
            example = {"index": np.int64(row), "user": inter.users[row], "item": inter.items[row]}
            if inter.ratings is not None:
                example["rating"] = inter.ratings[row]
            if inter.timestamps is not None:
                example["timestamp"] = inter.timestamps[row]
            yield int(row), example
    elif table in ("items", "users"):
        ids, id_spec = (dataset.item_ids, manifest["item_ids"]) if table == "items" else (dataset.user_ids, manifest["user_ids"])
        modalities = [(m["key"], dataset.modalities[m["name"]]) for m in manifest["modalities"]] if table == "items" else []
        for row in range(dataset.n_items if table == "items" else dataset.n_users):
            example = {"index": np.int32(row)}
            if ids is not None:
                example["original_id"] = _id_value(id_spec, ids[row])
            if modalities:
                example["modalities"] = {
                    key: {"features": mod.features[row], "mask": mod.mask[row],
                          **({"length": mod.lengths[row]} if mod.lengths is not None else {})}
                    for key, mod in modalities}
            if table == "users" and dataset.user_features is not None:
                example["features"] = dataset.user_features[row]
            yield row, example
    elif table == "kg":
        for row, (item, relation, entity) in enumerate(dataset.kg_triples):
            yield row, {"index": np.int64(row), "item": item, "relation": relation, "entity": entity}
    elif table == "social":
        for row, (user, friend) in enumerate(dataset.social_edges):
            yield row, {"index": np.int64(row), "user": user, "friend": friend}
