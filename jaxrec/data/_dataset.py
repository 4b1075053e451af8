"""The immutable in-memory dataset every other part of jaxrec reads from.

A :class:`MultimodalDataset` holds dense integer ids (users ``0..n_users-1``, items
``0..n_items-1``), the interactions with their split labels, and named item modalities. It is
validated once, at construction; its arrays are read-only, so a dataset can be shared freely.

Ids index embedding tables directly, so they must be dense: ``n_users`` (``n_items``) may be
at most ``max(100,000, 10 x the distinct user (item) ids in the interactions)`` and below
2**31, unless user features (item feature rows) back that many rows anyway. A sparser id
(say user 2**40 among a thousand users) would ask for terabytes; it is refused, naming the
file and line where a reader knows them (:func:`check_id_density`).
Transformations (splits, filters, preprocessing) return new datasets via :meth:`replace`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxrec.errors import DataError

TRAIN, VALID, TEST = 0, 1, 2
SPLIT_NAMES = ("train", "valid", "test")
SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    if array.flags.writeable:
        array = array.copy() if array.base is not None else array
        array.flags.writeable = False
    return array


def _as_int_array(values, field: str, source: str | None) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DataError("ids must be whole numbers", path=source, field=field,
                            found=f"dtype {array.dtype} with non-integer values", expected="integers")
    elif array.dtype.kind not in "iu":
        raise DataError("ids must be integers", path=source, field=field,
                        found=f"dtype {array.dtype}", expected="an integer array")
    return array.astype(np.int64 if array.size and np.abs(array).max() >= 2**31 else np.int32)


def _check_id_range(ids: np.ndarray, upper: int, field: str, source: str | None) -> None:
    if ids.size == 0:
        return
    low, high = int(ids.min()), int(ids.max())
    if low < 0:
        raise DataError("ids must be non-negative", path=source, field=field,
                        found=f"id {low} at row {int(np.argmin(ids))}", expected=f"ids in [0, {upper})")
    if high >= upper:
        raise DataError("id beyond the declared count", path=source, field=field,
                        found=f"id {high} at row {int(np.argmax(ids))}", expected=f"ids in [0, {upper})")


# Ids index embedding tables directly, so a count (one more than the largest id) is memory:
# it may exceed the ids actually used only by a bounded factor (a few gaps are fine).
DENSE_ID_SLACK = 100_000
DENSE_ID_FACTOR = 10
MAX_ID_COUNT = 2**31 - 1


def check_id_density(ids: np.ndarray, count: int, field: str, source=None, line_of=None) -> None:
    """Refuse ids too sparse to index a table: ``count`` (the table's rows, largest id + 1)
    must be at most ``max(DENSE_ID_SLACK, DENSE_ID_FACTOR x distinct ids)`` and below
    2**31. ``line_of(row)`` turns a row into a file line for the message."""
    if count <= DENSE_ID_SLACK or ids.size == 0:
        return
    distinct = None
    if count <= DENSE_ID_FACTOR * ids.size + DENSE_ID_SLACK:  # else too sparse whatever the distinct count
        seen = np.zeros(count, dtype=bool)
        seen[ids] = True
        distinct = int(np.count_nonzero(seen))
        if count <= max(DENSE_ID_SLACK, DENSE_ID_FACTOR * distinct) and count <= MAX_ID_COUNT:
            return
    if distinct is None:
        distinct = int(np.unique(ids).size)
    row = int(np.argmax(ids))
    where = {"line": line_of(row)} if line_of is not None else {}
    found = f"id {int(ids[row])}" + ("" if line_of is not None else f" at row {row}") + \
        f" with only {distinct:,} distinct ids: a table of {count:,} rows"
    raise DataError("ids too sparse to index a table", path=source, field=field, found=found,
                    expected=f"ids below max({DENSE_ID_SLACK:,}, {DENSE_ID_FACTOR} x the distinct ids) = "
                    f"{max(DENSE_ID_SLACK, DENSE_ID_FACTOR * distinct):,}; map the original ids to 0..n-1 first",
                    **where)


@dataclasses.dataclass(frozen=True)
class Interactions:
    """User-item interactions with split labels (one row per interaction).

    Attributes:
      users: (n,) int32 dense user ids.
      items: (n,) int32 dense item ids.
      split: (n,) int8 labels, 0 = train, 1 = valid, 2 = test.
      ratings: optional (n,) float32 explicit ratings (implicit data: all ones or None).
      timestamps: optional (n,) int64 or float64 times.
    """

    users: np.ndarray
    items: np.ndarray
    split: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.users.shape[0])

    def select(self, rows: np.ndarray) -> "Interactions":
        """The interactions at ``rows`` (a boolean mask or an index array)."""
        pick = lambda a: None if a is None else a[rows]  # noqa: E731
        return Interactions(self.users[rows], self.items[rows], self.split[rows],
                            pick(self.ratings), pick(self.timestamps))

    def pairs(self, split: str | int | None = None) -> np.ndarray:
        """(n, 2) array of (user, item) for one split (``None``: all rows)."""
        rows = slice(None) if split is None else self.split == _split_code(split)
        return np.stack([self.users[rows], self.items[rows]], axis=1)


@dataclasses.dataclass(frozen=True)
class Modality:
    """One item modality: a feature row per item, and which items have it.

    Attributes:
      name: the modality's name (``"text"``, ``"audio"``, ``"vggish"`` ...).
      features: (n_items, d) float32, or (n_items, T, d) float32 for a sequence modality
        (video frames, audio segments), padded past each item's length.
      mask: (n_items,) bool, True where the item has this modality. Rows of missing items
        hold zeros (or a fill value after preprocessing) and must not be trusted.
      lengths: for sequence modalities, (n_items,) int32 valid steps per item; else None.
      provenance: where the features came from: ``encoder``, ``version``, ``source``,
        ``dim`` and any preprocessing applied (``preprocessing`` list).
    """

    name: str
    features: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray | None = None
    provenance: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.features.shape[-1])

    @property
    def is_sequence(self) -> bool:
        return self.features.ndim == 3

    @property
    def n_missing(self) -> int:
        return int(self.mask.size - np.count_nonzero(self.mask))


def _split_code(split: str | int) -> int:
    if isinstance(split, str):
        if split not in SPLIT_CODES:
            raise DataError("unknown split name", field="split", found=split, expected=f"one of {SPLIT_NAMES}")
        return SPLIT_CODES[split]
    return int(split)


@dataclasses.dataclass(frozen=True)
class MultimodalDataset:
    """Interactions, item modalities and side information with dense integer ids.

    Construct through a reader (``jaxrec.data.load``) or directly; either way the whole
    dataset is validated here, once, and its arrays become read-only.

    Attributes:
      name: dataset name.
      n_users, n_items: counts; ids are dense in ``[0, n)``.
      interactions: :class:`Interactions` with split labels.
      modalities: name -> :class:`Modality`, in a fixed order.
      user_features: optional (n_users, d) float32.
      kg_triples: optional (n, 3) int32 rows of (item, relation, entity); entity ids are
        their own space of size ``n_entities`` (items linked to entities appear as
        entities too when the source says so).
      n_entities, n_relations: sizes of the knowledge graph's id spaces (0 without KG).
      social_edges: optional (n, 2) int32 directed (user, user) pairs.
      user_ids, item_ids: optional arrays mapping dense id -> original id (as strings or
        ints), kept from id remapping.
      metadata: free-form description: ``source``, ``format``, ``split_method`` ...
    """

    name: str
    n_users: int
    n_items: int
    interactions: Interactions
    modalities: Mapping[str, Modality] = dataclasses.field(default_factory=dict)
    user_features: np.ndarray | None = None
    kg_triples: np.ndarray | None = None
    n_entities: int = 0
    n_relations: int = 0
    social_edges: np.ndarray | None = None
    user_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        source = self.metadata.get("source") if isinstance(self.metadata, Mapping) else None
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        for count_name in ("n_users", "n_items", "n_entities", "n_relations"):
            value = getattr(self, count_name)
            if int(value) != value or value < 0:
                raise DataError("counts must be non-negative integers", path=source, field=count_name,
                                found=value, expected="an integer >= 0")
            set_(count_name, int(value))
        set_("interactions", self._validated_interactions(self.interactions, source))
        set_("modalities", types.MappingProxyType(
            {name: self._validated_modality(name, mod, source) for name, mod in dict(self.modalities).items()}))
        if self.user_features is not None:
            feats = np.asarray(self.user_features)
            if feats.ndim != 2 or feats.shape[0] != self.n_users:
                raise DataError("user features need one row per user", path=source, field="user_features",
                                found=f"shape {feats.shape}", expected=f"({self.n_users}, d)")
            set_("user_features", _frozen(_finite_float32(feats, "user_features", source)))
        if self.kg_triples is not None:
            triples = _as_int_array(self.kg_triples, "kg_triples", source)
            if triples.ndim != 2 or triples.shape[1] != 3:
                raise DataError("knowledge-graph triples must be rows of (item, relation, entity)",
                                path=source, field="kg_triples", found=f"shape {triples.shape}", expected="(n, 3)")
            _check_id_range(triples[:, 0], self.n_items, "kg_triples.item", source)
            _check_id_range(triples[:, 1], max(self.n_relations, 1) if len(triples) else 0, "kg_triples.relation", source)
            _check_id_range(triples[:, 2], self.n_entities, "kg_triples.entity", source)
            set_("kg_triples", _frozen(triples.astype(np.int32)))
        if self.social_edges is not None:
            edges = _as_int_array(self.social_edges, "social_edges", source)
            if edges.ndim != 2 or edges.shape[1] != 2:
                raise DataError("social edges must be rows of (user, friend)", path=source,
                                field="social_edges", found=f"shape {edges.shape}", expected="(n, 2)")
            _check_id_range(edges.ravel(), self.n_users, "social_edges", source)
            set_("social_edges", _frozen(edges.astype(np.int32)))
        for ids_name, count in (("user_ids", self.n_users), ("item_ids", self.n_items)):
            ids = getattr(self, ids_name)
            if ids is not None:
                ids = np.asarray(ids)
                if ids.shape != (count,):
                    raise DataError("id map needs one original id per dense id", path=source, field=ids_name,
                                    found=f"shape {ids.shape}", expected=f"({count},)")
                set_(ids_name, _frozen(ids))
        set_("metadata", types.MappingProxyType(dict(self.metadata)))

    def _validated_interactions(self, inter: Interactions, source) -> Interactions:
        users = _as_int_array(inter.users, "userID", source)
        items = _as_int_array(inter.items, "itemID", source)
        split = np.asarray(inter.split)
        n = users.shape[0]
        for field, array in (("userID", users), ("itemID", items), ("split", split)):
            if array.shape != (n,):
                raise DataError("interaction columns must be 1-D and of equal length", path=source,
                                field=field, found=f"shape {array.shape}", expected=f"({n},)")
        _check_id_range(users, self.n_users, "userID", source)
        _check_id_range(items, self.n_items, "itemID", source)
        if self.user_features is None:  # (feature rows back the count otherwise)
            check_id_density(users, self.n_users, "userID", source)
        if not self.modalities:
            check_id_density(items, self.n_items, "itemID", source)
        if split.size and (split.dtype.kind not in "iu" or split.min() < 0 or split.max() > 2):
            bad = split[(split < 0) | (split > 2)] if split.dtype.kind in "iu" else split[:1]
            raise DataError("split labels must be 0 (train), 1 (valid) or 2 (test)", path=source,
                            field="x_label", found=bad[:3].tolist(), expected="values in {0, 1, 2}")
        ratings = None
        if inter.ratings is not None:
            ratings = np.asarray(inter.ratings)
            if ratings.shape != (n,):
                raise DataError("ratings must have one value per interaction", path=source, field="rating",
                                found=f"shape {ratings.shape}", expected=f"({n},)")
            ratings = _frozen(_finite_float32(ratings, "rating", source))
        timestamps = None
        if inter.timestamps is not None:
            timestamps = np.asarray(inter.timestamps)
            if timestamps.shape != (n,):
                raise DataError("timestamps must have one value per interaction", path=source,
                                field="timestamp", found=f"shape {timestamps.shape}", expected=f"({n},)")
            if timestamps.dtype.kind not in "iuf":
                raise DataError("timestamps must be numeric", path=source, field="timestamp",
                                found=f"dtype {timestamps.dtype}", expected="numbers")
            timestamps = _frozen(timestamps.astype(np.int64 if timestamps.dtype.kind in "iu" else np.float64))
        return Interactions(_frozen(users.astype(np.int32)), _frozen(items.astype(np.int32)),
                            _frozen(split.astype(np.int8)), ratings, timestamps)

    def _validated_modality(self, name: str, mod: Modality, source) -> Modality:
        where = mod.provenance.get("source", source) if isinstance(mod.provenance, Mapping) else source
        field = f"modalities[{name!r}]"
        if not isinstance(name, str) or not name or name != mod.name:
            raise DataError("modality key and name must be the same non-empty string", path=where, field=field,
                            found=mod.name, expected=repr(name))
        features = np.asarray(mod.features)
        if features.ndim not in (2, 3):
            raise DataError("modality features must be (n_items, d) or (n_items, T, d)", path=where, field=field,
                            found=f"shape {features.shape}", expected=f"({self.n_items}, d) or ({self.n_items}, T, d)")
        if features.shape[0] != self.n_items:
            raise DataError("feature rows must match the number of items", path=where, field=field,
                            found=f"{features.shape[0]} rows", expected=f"{self.n_items} rows (one per item)")
        features = _finite_float32(features, field, where)
        mask = np.asarray(mod.mask)
        if mask.shape != (self.n_items,) or mask.dtype != np.bool_:
            raise DataError("modality mask must be a boolean per item", path=where, field=f"{field}.mask",
                            found=f"{mask.dtype} {mask.shape}", expected=f"bool ({self.n_items},)")
        lengths = None
        if features.ndim == 3:
            if mod.lengths is None:
                raise DataError("a sequence modality needs per-item lengths", path=where, field=f"{field}.lengths",
                                found="None", expected=f"int ({self.n_items},)")
            lengths = _as_int_array(mod.lengths, f"{field}.lengths", where)
            if lengths.shape != (self.n_items,) or (lengths.size and (lengths.min() < 0 or lengths.max() > features.shape[1])):
                raise DataError("sequence lengths must be in [0, T] per item", path=where, field=f"{field}.lengths",
                                found=f"shape {lengths.shape}, range [{lengths.min() if lengths.size else '-'}, "
                                f"{lengths.max() if lengths.size else '-'}]", expected=f"({self.n_items},) in [0, {features.shape[1]}]")
            lengths = _frozen(lengths.astype(np.int32))
        elif mod.lengths is not None:
            raise DataError("only sequence modalities (n_items, T, d) take lengths", path=where,
                            field=f"{field}.lengths", found="lengths for a 2-D modality", expected="None")
        provenance = dict(mod.provenance)
        provenance["dim"] = int(features.shape[-1])
        return Modality(name, _frozen(features), _frozen(mask), lengths, types.MappingProxyType(provenance))

    # ---- views ------------------------------------------------------------------------

    @property
    def modality_names(self) -> tuple[str, ...]:
        return tuple(self.modalities)

    def split_pairs(self, split: str | int) -> np.ndarray:
        """(n, 2) int32 (user, item) pairs of one split: ``"train"``, ``"valid"`` or ``"test"``."""
        return self.interactions.pairs(split)

    def split_sizes(self) -> dict[str, int]:
        counts = np.bincount(self.interactions.split, minlength=3)
        return {name: int(counts[code]) for code, name in enumerate(SPLIT_NAMES)}

    @property
    def density(self) -> float:
        cells = self.n_users * self.n_items
        return len(self.interactions) / cells if cells else 0.0

    def replace(self, **changes) -> "MultimodalDataset":
        """A new dataset with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def with_modality(self, modality: Modality) -> "MultimodalDataset":
        """A new dataset with ``modality`` added or replacing the one of the same name."""
        modalities = dict(self.modalities)
        modalities[modality.name] = modality
        return self.replace(modalities=modalities)

    def select_modalities(self, names) -> "MultimodalDataset":
        """A new dataset keeping only the named modalities, in the given order."""
        missing = [n for n in names if n not in self.modalities]
        if missing:
            raise DataError("unknown modality", field="modalities", found=missing,
                            expected=f"names among {list(self.modalities)}")
        return self.replace(modalities={n: self.modalities[n] for n in names})

    def summary(self) -> dict[str, Any]:
        """Counts and sizes as plain JSON-able values (what ``jaxrec data info`` prints)."""
        return {
            "name": self.name,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_interactions": len(self.interactions),
            "splits": self.split_sizes(),
            "density": self.density,
            "has_ratings": self.interactions.ratings is not None,
            "has_timestamps": self.interactions.timestamps is not None,
            "modalities": {name: m.dim for name, m in self.modalities.items()},
            "modality_details": {
                name: {"dim": m.dim, "shape": list(m.features.shape), "missing_rows": m.n_missing,
                       "sequence": m.is_sequence,
                       "provenance": {k: v for k, v in m.provenance.items() if _jsonable(v)}}
                for name, m in self.modalities.items()
            },
            "kg": None if self.kg_triples is None else {
                "triples": int(len(self.kg_triples)), "entities": self.n_entities, "relations": self.n_relations},
            "social_edges": None if self.social_edges is None else int(len(self.social_edges)),
            "user_features": None if self.user_features is None else int(self.user_features.shape[1]),
            "metadata": {k: v for k, v in self.metadata.items() if _jsonable(v)},
        }

    def __repr__(self) -> str:
        mods = ", ".join(f"{n}:{m.dim}" for n, m in self.modalities.items())
        return (f"MultimodalDataset({self.name!r}, users={self.n_users}, items={self.n_items}, "
                f"interactions={len(self.interactions)} {self.split_sizes()}, modalities=[{mods}])")


def _finite_float32(array: np.ndarray, field: str, source) -> np.ndarray:
    if array.dtype.kind not in "fiu":
        raise DataError("features must be numeric", path=source, field=field,
                        found=f"dtype {array.dtype}", expected="a float array")
    array = array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0]
        raise DataError("features contain NaN or inf", path=source, field=field,
                        found=f"{array[tuple(bad)]} at index {tuple(int(i) for i in bad)}",
                        expected="finite values (mark missing rows with the modality mask instead)")
    return array


def _jsonable(value) -> bool:
    return isinstance(value, (str, int, float, bool, type(None), list, tuple, dict))
