"""MMRec's dataset layout: ``<name>.inter`` plus one ``.npy`` feature matrix per modality.

The layout (as in MMRec's ``data/<name>/`` folders)::

    <name>.inter           tab-separated, header ``userID itemID rating [timestamp] x_label``;
                           ids are dense 0-based (largest id below max(100,000, 10 x the
                           distinct ids)), x_label is 0 train / 1 valid / 2 test
    <modality>.npy         (n_items, d) float features, row i = item i
    <name>_og_ids.inter    optional, row-aligned with <name>.inter, holding the original ids
    user_friends.dat       optional social file (header ``userID friendID``) in original ids

:func:`save_mmrec` writes the same layout, atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from jaxrec.data._dataset import SPLIT_NAMES, Interactions, Modality, MultimodalDataset, check_id_density
from jaxrec.data._io import FLOAT, ID, INT, TIME, DataWarning, deduplicate, read_table, require_file, \
    require_folder, require_inter_file, unreadable, NAME_HINT, prepared_tfds_roots, tfds_format_error
from jaxrec.errors import DataError

DEFAULT_SOCIAL_FILE = "user_friends.dat"
_OG_SUFFIX = "_og_ids"
_UNKNOWN = {"i": -1, "U": ""}  # the original id of a dense id that no interaction shows


def read_mmrec(
    path,
    *,
    name: str | None = None,
    modalities: Mapping[str, str] | None = None,
    social="auto",
    duplicates: str = "warn",
    zero_rows_missing: bool = True,
    user_field: str = "userID",
    item_field: str = "itemID",
    rating_field: str = "rating",
    timestamp_field: str = "timestamp",
    split_field: str = "x_label",
    encoding: str = "utf-8",
) -> MultimodalDataset:
    """Reads an MMRec dataset folder into a :class:`MultimodalDataset`.

    Args:
      path: the dataset folder, or its ``.inter`` file.
      name: the dataset name, which picks ``<name>.inter``; default: the folder's name when
        such a file exists, else the folder's only ``.inter`` file.
      modalities: ``{modality_name: file_name}`` of the ``.npy`` files to load, in order;
        default: every ``.npy`` in the folder, named by file stem, in sorted order.
      social: ``"auto"`` loads ``user_friends.dat`` when present, a path loads that file,
        None skips. Its ids are the original ids when ``<name>_og_ids.inter`` exists (they are
        mapped through it; friends outside the dataset are dropped) and the dense ids otherwise.
      duplicates: ``"warn"`` keeps the first of repeated (user, item) rows and warns;
        ``"error"`` rejects them.
      zero_rows_missing: an all-zero feature row marks that item's modality as missing
        (MMRec fills missing features with zeros).
      user_field, item_field, rating_field, timestamp_field, split_field: column names.
      encoding: text encoding of the ``.inter``, og-ids and social files (e.g. ``"latin-1"``).

    Returns:
      The dataset; features are float32 (float64 files are converted, the original dtype is
      kept in each modality's provenance), ratings float32, timestamps int64 or float64.
      ``user_ids`` / ``item_ids`` hold the original ids when the og-ids file is present: int64
      when every id there is written as a plain integer, else str (``"007"`` stays ``"007"``).

    Raises:
      DataError: naming the file, line and column of any malformed input, or an ``x_label``
        column that leaves the train, valid or test split empty.
    """
    folder, inter_path = _resolve_inter(path, name)
    name = inter_path.stem
    table = read_table(inter_path, encoding=encoding)
    kinds = {user_field: ID, item_field: ID}
    optional = {rating_field: FLOAT, timestamp_field: TIME, split_field: INT}
    kinds.update({field: kind for field, kind in optional.items() if table.has(field)})
    columns = table.numbers(kinds)
    users, items = columns[user_field], columns[item_field]
    split = _split_labels(table, columns.get(split_field), split_field)

    features = _load_modalities(folder, modalities)
    n_items = _count_items(table, items, features, item_field)
    n_users = int(users.max()) + 1
    check_id_density(users, n_users, user_field, inter_path, table.line_of)
    if not features:
        check_id_density(items, n_items, item_field, inter_path, table.line_of)
    user_ids, item_ids = _original_ids(folder, name, table, users, items, n_users, n_items, user_field, item_field,
                                       encoding)

    keep = deduplicate(users, items, table, duplicates=duplicates, user_field=user_field, item_field=item_field)
    rows = slice(None) if keep is None else keep
    interactions = Interactions(
        users[rows], items[rows], split[rows],
        None if rating_field not in columns else columns[rating_field][rows],
        None if timestamp_field not in columns else columns[timestamp_field][rows])
    if split_field in columns:
        _require_every_split(table, interactions.split, split_field)

    social_edges, social_meta = _read_social(folder, social, user_ids, n_users, encoding)
    metadata = {
        "source": os.fspath(folder), "format": "mmrec", "inter_file": inter_path.name,
        "split_method": "x_label column" if split_field in columns else "none",
        "duplicates_dropped": 0 if keep is None else int(len(users) - len(keep)),
        **social_meta,
    }
    if split_field not in columns:
        metadata["needs_split"] = True
    if user_ids is not None:
        metadata["original_ids_file"] = f"{name}{_OG_SUFFIX}.inter"
    return MultimodalDataset(
        name=name, n_users=n_users, n_items=n_items, interactions=interactions,
        modalities={m: _as_modality(m, array, source, dtype, zero_rows_missing)
                    for m, (array, source, dtype) in features.items()},
        social_edges=social_edges, user_ids=user_ids, item_ids=item_ids, metadata=metadata)


def _resolve_inter(path, name: str | None) -> tuple[Path, Path]:
    path = Path(path)
    if path.is_file():
        return path.parent, require_inter_file(path)
    folder = require_folder(path)
    if name is not None:
        return folder, require_file(folder / f"{name}.inter", what="interaction file")
    if (folder / f"{folder.name}.inter").is_file():
        return folder, folder / f"{folder.name}.inter"
    candidates = sorted(p for p in folder.glob("*.inter") if not p.stem.endswith(_OG_SUFFIX))
    if len(candidates) != 1:
        if not candidates and (roots := prepared_tfds_roots(folder)):
            raise tfds_format_error(folder, roots, "MMRec")
        raise DataError("cannot tell which interaction file to read", path=folder, field="name",
                        found=[p.name for p in candidates] or "no .inter file",
                        expected=f"exactly one <name>.inter (or choose one with {NAME_HINT})")
    return folder, candidates[0]


def _split_labels(table, labels: np.ndarray | None, split_field: str) -> np.ndarray:
    if labels is None:
        return np.zeros(len(table), dtype=np.int8)
    bad = np.flatnonzero((labels < 0) | (labels > 2))
    if bad.size:
        raise table.error(int(bad[0]), split_field, "unknown split label", found=str(int(labels[bad[0]])),
                          expected="0 (train), 1 (valid) or 2 (test)")
    return labels.astype(np.int8)


def _require_every_split(table, split: np.ndarray, split_field: str) -> None:
    counts = np.bincount(split, minlength=3)
    for code, split_name in enumerate(SPLIT_NAMES):
        if counts[code] == 0:
            raise DataError(f"the {split_name} split is empty", path=table.path, field=split_field,
                            found=f"no rows with {split_field}={code} (counts train/valid/test: {counts.tolist()})",
                            expected=f"at least one {split_name} interaction")


def _load_modalities(folder: Path, modalities: Mapping[str, str] | None) -> dict:
    if modalities is None:
        modalities = {p.stem: p.name for p in sorted(folder.glob("*.npy"))}
    loaded = {}
    for modality, file_name in modalities.items():
        file_path = folder / file_name
        array = load_feature_matrix(file_path)
        loaded[modality] = (array, file_path, str(array.dtype))
    return loaded


def load_feature_matrix(path) -> np.ndarray:
    """A 2-D float feature matrix from ``.npy``, or a DataError naming the file and the problem."""
    path = require_file(path, what="feature file")
    try:
        handle = open(path, "rb")  # opened apart from parsing: an unreadable file is not a corrupt one
    except OSError as error:
        raise unreadable(path, error, what="feature file") from None
    try:
        with handle:
            array = np.load(handle, allow_pickle=False)
    except ValueError as error:
        raise DataError("cannot read the .npy feature file", path=path, found=str(error),
                        expected="a numeric array saved with numpy.save (no Python objects)") from None
    except (OSError, EOFError) as error:
        raise DataError("corrupt or truncated .npy feature file", path=path, found=str(error) or "end of file",
                        expected="a complete numpy .npy file") from None
    if not isinstance(array, np.ndarray):
        raise DataError("not a single array", path=path, found=type(array).__name__, expected="one .npy array")
    if array.dtype.kind != "f":
        raise DataError("features must be floating point", path=path, field="dtype", found=str(array.dtype),
                        expected="float16, float32 or float64")
    if array.ndim != 2:
        raise DataError("features must be a matrix with one row per item", path=path, field="shape",
                        found=str(array.shape), expected="(n_items, d)")
    if array.shape[1] == 0:
        raise DataError("features have no columns", path=path, field="shape", found=str(array.shape),
                        expected="(n_items, d) with d >= 1")
    finite = np.isfinite(array)
    if not finite.all():
        row, column = (int(k) for k in np.argwhere(~finite)[0])
        raise DataError("features contain NaN or inf", path=path, field=f"row {row} (item {row}), column {column}",
                        found=str(array[row, column]), expected="finite values (write zeros for missing items)")
    limit = np.finfo(np.float32).max  # beyond it a value would become inf as float32
    if array.dtype.itemsize > 4 and array.size and max(array.max(), -array.min()) > limit:
        row, column = (int(k) for k in np.argwhere(np.abs(array) > limit)[0])
        raise DataError("feature value beyond the float32 range", path=path, field=f"row {row} (item {row}), "
                        f"column {column}", found=f"{float(array[row, column])!r} ({array.dtype})",
                        expected=f"values within +-{float(limit):.4g} (features are stored as float32)")
    return array


def _count_items(table, items: np.ndarray, features: dict, item_field: str) -> int:
    if not features:
        return int(items.max()) + 1
    (first_name, (first, first_path, _)), *others = features.items()
    for modality, (array, path, _) in others:
        if array.shape[0] != first.shape[0]:
            raise DataError("feature row count does not match the other modalities", path=path, field="shape",
                            found=f"{array.shape[0]} rows", expected=f"{first.shape[0]} rows, one per item, as in "
                            f"{first_path.name}")
    n_items = first.shape[0]
    beyond = np.flatnonzero(items >= n_items)
    if beyond.size:
        row = int(beyond[0])
        raise table.error(row, item_field, "item id beyond the feature rows", found=str(int(items[row])),
                          expected=f"ids below {n_items} (the row count of {first_path.name})")
    return n_items


def _as_modality(name: str, array: np.ndarray, source: Path, dtype: str, zero_rows_missing: bool) -> Modality:
    features = array.astype(np.float32, copy=False)
    # Zero rows as written in the file: a float64 row of tiny values is not missing once cast.
    mask = np.any(array != 0, axis=1) if zero_rows_missing else np.ones(len(features), dtype=bool)
    provenance = {"encoder": source.stem, "source": os.fspath(source), "original_dtype": dtype}
    if dtype != "float32":
        provenance["converted_to"] = "float32"
    return Modality(name, features, mask, provenance=provenance)


def _original_ids(folder: Path, name: str, table, users, items, n_users: int, n_items: int,
                  user_field: str, item_field: str, encoding: str = "utf-8"):
    og_path = folder / f"{name}{_OG_SUFFIX}.inter"
    if not og_path.is_file():
        return None, None
    og = read_table(og_path, encoding=encoding)
    if len(og) != len(table):
        raise DataError("original-ids file is not row-aligned with the interaction file", path=og_path,
                        found=f"{len(og)} rows", expected=f"{len(table)} rows, as in {table.path.name}")
    return (_id_map(og, users, _id_column(og, user_field), n_users, user_field),
            _id_map(og, items, _id_column(og, item_field), n_items, item_field))


def _id_column(table, field: str, *, as_strings: bool | None = None) -> np.ndarray:
    """Original ids: int64 when every value is written as a plain integer (or ``as_strings`` is
    False), else str, so that ``"007"`` keeps its spelling and stays apart from ``"7"``."""
    if as_strings is None:
        try:
            numbers = table.numbers({field: INT})[field]
        except DataError:
            as_strings = True
        else:
            if table.strings(field) == [str(value) for value in numbers.tolist()]:
                return numbers
            as_strings = True  # leading zeros or a sign: the spelling is the id
    if as_strings:
        return np.asarray(table.strings(field), dtype=str)
    return table.numbers({field: INT})[field]


def _id_map(og, dense: np.ndarray, original: np.ndarray, count: int, field: str) -> np.ndarray:
    """dense id -> original id, checked one-to-one; dense ids with no interaction get -1 (or "")."""
    mapping = np.full(count, _UNKNOWN[original.dtype.kind], dtype=original.dtype if original.dtype.kind == "U"
                      else np.int64)
    mapping[dense] = original
    clash = np.flatnonzero(mapping[dense] != original)
    if clash.size:
        row = int(clash[0])
        raise og.error(row, field, "one dense id maps to two original ids", found=f"{original[row]} for dense id "
                       f"{dense[row]}, which another line maps to {mapping[dense[row]]}",
                       expected="the same original id on every line of a dense id")
    known = mapping[mapping != _UNKNOWN[original.dtype.kind]]
    values, counts = np.unique(known, return_counts=True)
    if values.size != known.size:
        repeated = values[np.argmax(counts > 1)]
        dense_ids = np.flatnonzero(mapping == repeated)[:2].tolist()
        raise DataError("two dense ids map to the same original id", path=og.path, field=field,
                        found=f"original id {repeated} for dense ids {dense_ids}", expected="a one-to-one id map")
    return mapping


def _read_social(folder: Path, social, user_ids: np.ndarray | None, n_users: int, encoding: str = "utf-8"):
    if social is None or social is False:
        return None, {}
    if isinstance(social, str) and social == "auto":
        path = folder / DEFAULT_SOCIAL_FILE
        if not path.is_file():
            return None, {}
    else:
        path = Path(social)
        if not path.is_absolute() and not path.exists():
            path = folder / path
    table = read_table(path, allow_empty=True, encoding=encoding)
    if table.n_columns < 2:
        raise DataError("a social file needs two columns", path=path, line=1, found=list(table.header),
                        expected="a header like 'userID friendID'")
    user_name, friend_name = table.header[:2]
    as_strings = user_ids is not None and user_ids.dtype.kind == "U"
    pairs = np.stack([_id_column(table, user_name, as_strings=as_strings),
                      _id_column(table, friend_name, as_strings=as_strings)], axis=1)
    meta = {"social_file": path.name, "social_ids": "original" if user_ids is not None else "dense"}
    if user_ids is None:
        for k, field in enumerate((user_name, friend_name)):
            bad = np.flatnonzero((pairs[:, k] < 0) | (pairs[:, k] >= n_users))
            if bad.size:
                raise table.error(int(bad[0]), field, "user id outside the dataset", found=str(int(pairs[bad[0], k])),
                                  expected=f"dense user ids in [0, {n_users}) (no {_OG_SUFFIX} file to map original ids)")
        return pairs, {**meta, "social_dropped_edges": 0}
    known = user_ids != _UNKNOWN[user_ids.dtype.kind]
    order = np.argsort(user_ids[known])
    originals, dense = user_ids[known][order], np.flatnonzero(known)[order]
    position = np.clip(np.searchsorted(originals, pairs), 0, max(len(originals) - 1, 0))
    found = originals[position] == pairs if len(originals) else np.zeros_like(pairs, dtype=bool)
    inside = found.all(axis=1)
    return dense[position[inside]], {**meta, "social_dropped_edges": int((~inside).sum())}


def save_mmrec(dataset: MultimodalDataset, folder, *, overwrite: bool = False) -> Path:
    """Writes ``dataset`` as an MMRec folder, atomically (a temporary folder beside it, then a rename).

    Writes ``<name>.inter`` (userID, itemID, [rating], [timestamp], x_label; no x_label when
    every row is train, i.e. the dataset has not been split), one
    ``<modality>.npy`` (float32) per 2-D modality with zeros on rows whose mask is False, and,
    when the dataset has both id maps, ``<name>_og_ids.inter``; social edges go to
    ``user_friends.dat`` (in original ids when there are id maps). Reading the folder back with
    :func:`read_mmrec` gives the same arrays; a split dataset with an empty split is refused, as
    :func:`read_mmrec` would refuse the folder. KG triples, user features and sequence
    modalities have no place in this layout: they are left out with a :class:`DataWarning`.

    Returns:
      The folder written.

    Raises:
      DataError: the folder exists (without ``overwrite``), or the dataset is split with an
        empty split.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise DataError("target folder exists", path=folder, found="an existing folder",
                        expected="a new path (or overwrite=True)")
    counts = np.bincount(dataset.interactions.split, minlength=3)
    if counts[1:].any() and not counts.all():  # read_mmrec refuses an x_label column with an empty split
        raise DataError("an MMRec x_label column needs every split", path=folder, field="interactions.split",
                        found=f"counts train/valid/test: {counts.tolist()}",
                        expected="train, valid and test interactions, or an unsplit dataset (all train)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        _write_mmrec(dataset, staging)
        if folder.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
            os.replace(folder, retired / folder.name)
            os.replace(staging, folder)
            shutil.rmtree(retired)
        else:
            os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _write_mmrec(dataset: MultimodalDataset, folder: Path) -> None:
    inter = dataset.interactions
    has_maps = dataset.user_ids is not None and dataset.item_ids is not None
    _write_inter(folder / f"{dataset.name}.inter", inter, inter.users, inter.items)
    if has_maps:
        _write_inter(folder / f"{dataset.name}{_OG_SUFFIX}.inter", inter,
                     dataset.user_ids[inter.users], dataset.item_ids[inter.items])
    elif dataset.user_ids is not None or dataset.item_ids is not None:
        warnings.warn("only one of user_ids / item_ids is set: original ids are not written", DataWarning, stacklevel=3)
    for name, modality in dataset.modalities.items():
        if modality.is_sequence:
            warnings.warn(f"sequence modality {name!r} is not written (MMRec .npy files are 2-D)", DataWarning,
                          stacklevel=3)
            continue
        if os.sep in name or name.startswith("."):
            raise DataError("modality name cannot be a file name", field="modalities", found=name,
                            expected="a name without path separators")
        features = np.where(modality.mask[:, None], modality.features, np.float32(0))
        if np.any(~np.any(features[modality.mask] != 0, axis=1)):
            warnings.warn(f"modality {name!r} has all-zero rows on present items: they will read back as missing",
                          DataWarning, stacklevel=3)
        np.save(folder / f"{name}.npy", features.astype(np.float32))
    if dataset.social_edges is not None:
        edges = dataset.social_edges
        if has_maps:
            edges = dataset.user_ids[edges]
        np.savetxt(folder / DEFAULT_SOCIAL_FILE, edges, fmt="%s", delimiter="\t", header="userID\tfriendID",
                   comments="")
    for what, present in (("kg_triples", dataset.kg_triples is not None),
                          ("user_features", dataset.user_features is not None)):
        if present:
            warnings.warn(f"{what} are not written: the MMRec layout has no place for them", DataWarning,
                          stacklevel=3)


def _write_inter(path: Path, inter: Interactions, users: np.ndarray, items: np.ndarray) -> None:
    columns, formats, names = [users, items], ["%s", "%s"], ["userID", "itemID"]
    if inter.ratings is not None:
        columns.append(inter.ratings.astype(np.float64))
        formats.append("%.9g")  # 9 significant digits round-trip any float32
        names.append("rating")
    if inter.timestamps is not None:
        columns.append(inter.timestamps)
        formats.append("%d" if inter.timestamps.dtype.kind in "iu" else "%.17g")
        names.append("timestamp")
    if np.any(inter.split != 0):  # an unsplit dataset (all train) is written without x_label, so it reads back unsplit
        columns.append(inter.split)
        formats.append("%d")
        names.append("x_label")
    lines = ["\t".join(names)]
    template = "\t".join(formats)
    lines.extend(template % row for row in zip(*(c.tolist() for c in columns)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
