"""RecBole's atomic files: ``.inter``, ``.item``, ``.kg`` and ``.link`` with typed headers.

Each file is tab-separated with a header of ``name:type`` fields, type one of ``token``,
``token_seq``, ``float`` or ``float_seq`` (sequences are space-separated inside the field)::

    ml.inter   user_id:token  item_id:token  rating:float  timestamp:float
    ml.item    item_id:token  genre:token_seq  emb:float_seq
    ml.kg      head_id:token  relation_id:token  tail_id:token
    ml.link    item_id:token  entity_id:token

Tokens are remapped to dense ids in order of first appearance (as RecBole does, without its
padding id 0); the token of each dense id is kept (``user_ids``, ``item_ids``, and
``metadata["entity_ids"]`` / ``metadata["relation_ids"]``). Atomic files carry no split, so
every interaction is labelled train and ``metadata["needs_split"]`` is True.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jaxrec.data._dataset import Interactions, Modality, MultimodalDataset
from jaxrec.data._io import FLOAT, TIME, DelimitedTable, deduplicate, dense_ids, frozen, read_table, \
    require_file, require_folder, require_inter_file, NAME_HINT, prepared_tfds_roots, tfds_format_error
from jaxrec.errors import DataError

FIELD_TYPES = ("token", "token_seq", "float", "float_seq")


def read_recbole(
    path,
    *,
    name: str | None = None,
    item_features: str | Sequence[str] | None = "auto",
    duplicates: str = "warn",
    user_field: str = "user_id",
    item_field: str = "item_id",
    rating_field: str = "rating",
    timestamp_field: str = "timestamp",
    entity_field: str = "entity_id",
    head_field: str = "head_id",
    relation_field: str = "relation_id",
    tail_field: str = "tail_id",
    encoding: str = "utf-8",
) -> MultimodalDataset:
    """Reads a folder of RecBole atomic files into a :class:`MultimodalDataset`.

    Args:
      path: the dataset folder (or its ``.inter`` file); files are ``<name>.<suffix>``.
      name: dataset name; default: the folder name when ``<folder>.inter`` exists, else the
        only ``.inter`` in the folder.
      item_features: ``float_seq`` columns of ``<name>.item`` to load as modalities (one each,
        named after the column): ``"auto"`` for all of them, a list of names, or None.
      duplicates: ``"warn"`` keeps the first of repeated (user, item) rows; ``"error"`` rejects.
      user_field, item_field, rating_field, timestamp_field: ``.inter`` column names.
      entity_field: the entity column of ``.link``.
      head_field, relation_field, tail_field: ``.kg`` column names.
      encoding: text encoding of every atomic file (e.g. ``"latin-1"``).

    Returns:
      The dataset, all interactions in the train split. Items are those of ``.inter``; a
      feature modality's mask is False for items without a ``.item`` row. With ``.kg`` and
      ``.link`` present, ``kg_triples`` holds (item, relation, entity) for every triple whose
      head entity is linked to an item; entities and relations have their own dense ids.

    Raises:
      DataError: naming the file, line and field of any malformed input.
    """
    folder, name = _resolve(path, name)
    inter = _read_typed(folder / f"{name}.inter", encoding)
    user_tokens = _tokens(inter, user_field)
    item_tokens = _tokens(inter, item_field)
    numeric = {field: kind for field, kind in ((rating_field, FLOAT), (timestamp_field, TIME))
               if inter.table.has(_typed_name(inter, field))}
    columns = inter.table.numbers({_typed_name(inter, f): kind for f, kind in numeric.items()})
    users, user_ids = dense_ids(user_tokens, order="first_seen")
    items, item_ids = dense_ids(item_tokens, order="first_seen")
    keep = deduplicate(users, items, inter.table, duplicates=duplicates, user_field=user_field, item_field=item_field,
                       user_ids=user_ids, item_ids=item_ids)
    rows = slice(None) if keep is None else keep
    rating = columns.get(_typed_name(inter, rating_field)) if rating_field in numeric else None
    timestamp = columns.get(_typed_name(inter, timestamp_field)) if timestamp_field in numeric else None
    interactions = Interactions(users[rows], items[rows], np.zeros(len(users), np.int8)[rows],
                                None if rating is None else rating[rows], None if timestamp is None else timestamp[rows])

    metadata = {"source": os.fspath(folder), "format": "recbole", "inter_file": f"{name}.inter",
                "split_method": "none", "needs_split": True,
                "duplicates_dropped": 0 if keep is None else int(len(users) - len(keep))}
    item_position = {token: k for k, token in enumerate(item_ids.tolist())}
    modalities = {}
    item_path = folder / f"{name}.item"
    if item_features is not None and item_path.is_file():
        modalities = _item_modalities(_read_typed(item_path, encoding), item_field, item_features, item_position)
    elif item_features not in (None, "auto"):
        require_file(item_path, what="item file")

    kg = {}
    if (folder / f"{name}.kg").is_file():
        kg = _knowledge_graph(folder, name, item_position, item_field, entity_field,
                              head_field, relation_field, tail_field, encoding)
        metadata.update(kg.pop("metadata"))
    return MultimodalDataset(name=name, n_users=len(user_ids), n_items=len(item_ids), interactions=interactions,
                             modalities=modalities, user_ids=user_ids, item_ids=item_ids, metadata=metadata, **kg)


class _TypedTable:
    """A RecBole file: the table plus each column's declared type, by bare field name."""

    def __init__(self, table: DelimitedTable):
        self.table = table
        self.types = {}
        self.columns = {}
        for column, declared in enumerate(table.header):
            field, _, field_type = declared.partition(":")
            if not field or field_type not in FIELD_TYPES:
                raise DataError("malformed RecBole header field", path=table.path, line=1, field=declared,
                                found=declared, expected=f"name:type with type in {list(FIELD_TYPES)}")
            self.types[field] = field_type
            self.columns[field] = declared


def _read_typed(path: Path, encoding: str = "utf-8") -> _TypedTable:
    return _TypedTable(read_table(path, encoding=encoding))


def _typed_name(typed: _TypedTable, field: str) -> str:
    return typed.columns.get(field, field)


def _tokens(typed: _TypedTable, field: str, *, expected_type: str = "token") -> list[str]:
    if field not in typed.columns:
        raise DataError("missing column", path=typed.table.path, line=1, field=field,
                        found=f"columns {list(typed.table.header)}", expected=f"a column '{field}:{expected_type}'")
    if typed.types[field] != expected_type:
        raise DataError("wrong column type", path=typed.table.path, line=1, field=field,
                        found=typed.columns[field], expected=f"'{field}:{expected_type}'")
    values = typed.table.strings(typed.columns[field])
    if "" in values:
        row = values.index("")
        raise typed.table.error(row, field, "empty token", found="an empty field", expected="a token")
    return values


def _resolve(path, name: str | None) -> tuple[Path, str]:
    path = Path(path)
    if path.is_file():
        return path.parent, require_inter_file(path).stem
    folder = require_folder(path)
    if name is not None:
        require_file(folder / f"{name}.inter", what="interaction file")
        return folder, name
    if (folder / f"{folder.name}.inter").is_file():
        return folder, folder.name
    candidates = sorted(folder.glob("*.inter"))
    if len(candidates) != 1:
        if not candidates and (roots := prepared_tfds_roots(folder)):
            raise tfds_format_error(folder, roots, "RecBole")
        raise DataError("cannot tell which interaction file to read", path=folder, field="name",
                        found=[p.name for p in candidates] or "no .inter file",
                        expected=f"exactly one <name>.inter (or choose one with {NAME_HINT})")
    return folder, candidates[0].stem


def _item_modalities(item: _TypedTable, item_field: str, wanted, item_position: dict) -> dict:
    sequences = [field for field, kind in item.types.items() if kind == "float_seq"]
    names = sequences if wanted == "auto" else list(wanted)
    for field in names:
        if field not in sequences:
            raise DataError("not a float_seq column of the item file", path=item.table.path, line=1, field=field,
                            found=f"columns {list(item.table.header)}", expected=f"one of {sequences}")
    if not names:
        return {}
    tokens = _tokens(item, item_field)
    rows, targets = [], []
    seen = {}
    for row, token in enumerate(tokens):
        if token in seen:
            raise item.table.error(row, item_field, "item listed twice", found=f"{token!r} again (first on line "
                                   f"{item.table.line_of(seen[token])})", expected="one row per item")
        seen[token] = row
        if token in item_position:
            rows.append(row)
            targets.append(item_position[token])
    modalities = {}
    for field in names:
        values = item.table.strings(item.columns[field])
        features = _float_sequences(item.table, field, [values[r] for r in rows], rows)
        matrix = np.zeros((len(item_position), features.shape[1]), dtype=np.float32)
        mask = np.zeros(len(item_position), dtype=bool)
        matrix[targets] = features
        mask[targets] = True
        modalities[field] = Modality(field, matrix, mask, provenance={
            "encoder": field, "source": os.fspath(item.table.path), "original_dtype": "float_seq text"})
    return modalities


def _float_sequences(table: DelimitedTable, field: str, values: list[str], rows: list[int]) -> np.ndarray:
    parsed, width = [], None
    for value, row in zip(values, rows):
        try:
            vector = [float(x) for x in value.split()]
        except ValueError:
            bad = next(x for x in value.split() if not _is_float(x))
            raise table.error(row, field, "not a number in a float_seq field", found=repr(bad),
                              expected="space-separated numbers") from None
        if width is None:
            width = len(vector)
        if len(vector) != width or not vector:
            raise table.error(row, field, "float_seq of a different length", found=f"{len(vector)} values",
                              expected=f"{width} values, as on line {table.line_of(rows[0])}" if width else
                              "at least one value")
        parsed.append(vector)
    array = np.asarray(parsed, dtype=np.float64).reshape(len(parsed), width or 0)
    finite = np.isfinite(array)
    if not finite.all():
        row, column = (int(k) for k in np.argwhere(~finite)[0])
        raise table.error(rows[row], field, "not a finite number in a float_seq field",
                          found=f"{array[row, column]} at position {column}", expected="finite numbers")
    return array.astype(np.float32)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _knowledge_graph(folder: Path, name: str, item_position: dict, item_field: str, entity_field: str,
                     head_field: str, relation_field: str, tail_field: str, encoding: str = "utf-8") -> dict:
    kg = _read_typed(folder / f"{name}.kg", encoding)
    link_path = require_file(folder / f"{name}.link", what="item-entity link file (needed with a .kg file)")
    link = _read_typed(link_path, encoding)
    heads, tails = _tokens(kg, head_field), _tokens(kg, tail_field)
    entities, entity_ids = dense_ids([token for pair in zip(heads, tails) for token in pair], order="first_seen")
    relations, relation_ids = dense_ids(_tokens(kg, relation_field), order="first_seen")
    head_entities, tail_entities = entities[0::2], entities[1::2]

    entity_position = {token: k for k, token in enumerate(entity_ids.tolist())}
    item_of_entity = np.full(len(entity_ids), -1, dtype=np.int64)
    entity_of_item = np.full(len(item_position), -1, dtype=np.int64)
    link_items, link_entities = _tokens(link, item_field), _tokens(link, entity_field)
    unused_links = 0
    for row, (item_token, entity_token) in enumerate(zip(link_items, link_entities)):
        item, entity = item_position.get(item_token), entity_position.get(entity_token)
        if item is None or entity is None:
            unused_links += 1  # an item without interactions, or an entity outside the KG
            continue
        if entity_of_item[item] >= 0 or item_of_entity[entity] >= 0:
            raise link.table.error(row, f"{item_field}, {entity_field}", "item or entity linked twice",
                                   found=f"{item_token!r} -> {entity_token!r}",
                                   expected="each item linked to one entity and each entity to one item")
        entity_of_item[item], item_of_entity[entity] = entity, item
    head_items = item_of_entity[head_entities]
    kept = head_items >= 0
    triples = np.stack([head_items[kept], relations[kept], tail_entities[kept]], axis=1)
    return {
        "kg_triples": triples, "n_entities": len(entity_ids), "n_relations": len(relation_ids),
        "metadata": {"kg_file": f"{name}.kg", "link_file": link_path.name,
                     "kg_triples_without_item_head": int((~kept).sum()), "links_unused": unused_links,
                     "entity_ids": frozen(entity_ids), "relation_ids": frozen(relation_ids),
                     "item_entity": frozen(entity_of_item)},
    }
