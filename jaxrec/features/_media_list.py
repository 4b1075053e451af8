"""The item -> media file table of a feature extraction (``IDS.tsv``) and its checks.

``IDS.tsv`` is UTF-8, tab-separated, with the header ``itemID<TAB>path``; each row gives a dense
item id (a non-negative integer, each id at most once) and the path of that item's media file,
relative to the media folder. Row ``k`` of the extracted matrix is item ``k``, for every ``k`` up
to the largest listed id (or ``n_items - 1`` when the dataset's item count is given); items
without a row get a masked (missing) row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from pathlib import Path

import numpy as np

from jaxrec.errors import DataError

HEADER = ("itemID", "path")
ON_ERROR = ("fail", "mask")


class MediaWarning(UserWarning):
    """A media file that could not be used; its item got a masked (missing) row."""


@dataclasses.dataclass(frozen=True)
class MediaList:
    """Which file holds each listed item's media.

    Attributes:
      folder: the media folder the paths are relative to.
      items: (m,) int64 item ids, in file order.
      paths: m paths relative to ``folder``.
      lines: m 1-based line numbers in the ids file (for error messages).
      n_rows: rows of the output matrix (largest id + 1, or the dataset's item count).
      source: the ids file.
      sha256: checksum of the ids file (a resumed extraction must read the same list).
      skipped: ``(line, reason)`` of rows left out under ``on_error="mask"``.
    """

    folder: Path
    items: np.ndarray
    paths: tuple[str, ...]
    lines: tuple[int, ...]
    n_rows: int
    source: Path
    sha256: str
    skipped: tuple[tuple[int, str], ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def file(self, index: int) -> Path:
        """The media file of entry ``index``."""
        return self.folder / self.paths[index]

    def where(self, index: int) -> str:
        """``ids.tsv:LINE (item K, path)`` for messages."""
        return f"{self.source}:{self.lines[index]} (item {int(self.items[index])}, {self.paths[index]})"


def file_sha256(path, *, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_media_list(ids_path, folder, *, n_items: int | None = None, on_error: str = "fail",
                    check_files: bool = True) -> MediaList:
    """Reads and checks ``IDS.tsv`` against the media folder (before anything is extracted).

    Args:
      ids_path: the ``itemID<TAB>path`` table.
      folder: the media folder the paths are relative to.
      n_items: the dataset's item count, when known: the output gets exactly that many rows and
        an id outside ``[0, n_items)`` is not in the dataset.
      on_error: ``"fail"``: an id not in the dataset or a missing file raises; ``"mask"``: that
        row is left out with a :class:`MediaWarning` naming it (its item gets a masked row).
      check_files: check that every listed file exists.

    Returns:
      The :class:`MediaList`.

    Raises:
      DataError: a missing or malformed ids file (naming the line and field), a duplicate id, an
        absolute or escaping path, an id not in the dataset or a missing file (``on_error="fail"``).
    """
    if on_error not in ON_ERROR:
        raise DataError("unknown error policy", field="on_error", found=on_error, expected=" or ".join(ON_ERROR))
    ids_path, folder = Path(ids_path), Path(folder)
    if not folder.is_dir():
        raise DataError("media folder not found", path=folder, found="no such folder" if not folder.exists()
                        else "not a folder", expected="the folder the paths in the ids file are relative to")
    if not ids_path.is_file():
        raise DataError("ids file not found", path=ids_path, found="no such file",
                        expected="a tab-separated file with the header itemID<TAB>path")
    if n_items is not None and (isinstance(n_items, bool) or int(n_items) != n_items or n_items < 1):
        raise DataError("the dataset's item count must be a positive integer", field="n_items", found=n_items)
    try:
        raw = ids_path.read_bytes()
    except OSError as error:  # permissions, a network mount gone
        raise DataError("cannot read the ids file", path=ids_path, found=error.strerror or str(error),
                        expected="a readable tab-separated file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise DataError("ids file is not UTF-8 text", path=ids_path, line=line,
                        found=f"byte {raw[error.start]:#04x} ({error.reason})",
                        expected="UTF-8 (save the table as UTF-8; file names included)") from None
    text = text.removeprefix("\ufeff")  # a byte-order mark (spreadsheets write one) is not part of the header
    lines = text.replace("\r\n", "\n").split("\n")
    header = tuple(field.strip() for field in lines[0].split("\t")) if lines else ()
    if header != HEADER:
        raise DataError("wrong header", path=ids_path, line=1, found="\t".join(header) or "an empty file",
                        expected="itemID<TAB>path")

    items, paths, numbers, skipped, first_line = [], [], [], [], {}
    largest = -1  # the largest listed id in the dataset, file present or not
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise DataError("wrong number of fields", path=ids_path, line=number, found=f"{len(fields)} fields",
                            expected="2 fields: itemID<TAB>path")
        raw_id, rel = fields[0].strip(), fields[1].strip()
        if not (raw_id.isascii() and raw_id.isdigit()):  # str.isdigit alone accepts '²', which int() refuses
            raise DataError("item id must be a non-negative integer", path=ids_path, line=number, field="itemID",
                            found=raw_id or "an empty field", expected="a dense item id (0, 1, 2, ...)")
        item = int(raw_id)
        if item in first_line:
            raise DataError("item listed twice", path=ids_path, line=number, field="itemID",
                            found=f"item {item}, first on line {first_line[item]}", expected="one row per item")
        first_line[item] = number
        if not rel:
            raise DataError("empty path", path=ids_path, line=number, field="path", expected="a file path")
        # A lexical check: "../" and absolute paths leave the folder; a symlink inside it (a subfolder
        # on another disk) is the user's own layout and stays allowed.
        if os.path.isabs(rel) or Path(os.path.normpath(rel)).parts[:1] == ("..",):
            raise DataError("path outside the media folder", path=ids_path, line=number, field="path", found=rel,
                            expected=f"a path relative to {folder}")
        problem = None
        if n_items is None or item < n_items:
            largest = max(largest, item)
        if n_items is not None and item >= n_items:
            problem = f"item {item} is not in the dataset (ids 0..{n_items - 1})"
        elif check_files and not (folder / rel).is_file():
            problem = f"media file not found: {folder / rel}"
        if problem is not None:
            if on_error == "fail":
                raise DataError(problem, path=ids_path, line=number,
                                field="itemID" if problem.startswith("item") else "path",
                                expected="every listed item in the dataset and every file present "
                                         "(or --on-error mask to mask such items)")
            warnings.warn(f"{ids_path}:{number}: {problem}; left out (masked row)", MediaWarning, stacklevel=2)
            skipped.append((number, problem))
            continue
        items.append(item)
        paths.append(rel)
        numbers.append(number)
    if not items:
        raise DataError("no usable rows", path=ids_path, found=f"{len(skipped)} rows left out" if skipped else
                        "only the header", expected="at least one itemID<TAB>path row with a present file")
    n_rows = int(n_items) if n_items is not None else largest + 1
    return MediaList(folder=folder, items=np.asarray(items, np.int64), paths=tuple(paths), lines=tuple(numbers),
                     n_rows=n_rows, source=ids_path, sha256=hashlib.sha256(raw).hexdigest(), skipped=tuple(skipped))
