"""Shared parsing helpers for the readers: strict delimited tables whose errors name file and line.

Every reader goes through :func:`read_table`. Valid files take a fast path (numpy's C
``loadtxt`` on the whole body at once); when anything fails there, a slow pure-Python pass
walks the rows to find the first bad value, so the :class:`~jaxrec.errors.DataError` it
raises names the file, the 1-based line, the column, what was found and what was expected.
"""

from __future__ import annotations

import csv
import errno
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jaxrec.errors import DataError

# Column kinds understood by DelimitedTable.numbers.
ID, INT, FLOAT, TIME = "id", "int", "float", "time"
_UNIT_SEPARATOR = "\x1f"  # stands in for multi-character delimiters such as MovieLens' "::"
_SHOWN_CHARS = 80


class DataWarning(UserWarning):
    """Input that jaxrec repaired on load (for example duplicate interactions it dropped)."""


def _stat_problem(path: Path) -> tuple[str, str] | None:
    """(message, found) when ``path`` cannot be reached; None when it can be stat()-ed.

    ``Path.exists()`` answers False for a symbolic-link loop, a dangling link and a folder
    without search permission alike; the user needs to know which one it is.
    """
    try:
        path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            return "symbolic link to a missing target", f"a link to {os.readlink(path)!r}, which does not exist"
        return "not found", "no such file or folder"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop", "links that lead back to themselves (os error ELOOP)"
        return "cannot be reached", f"{error.strerror or type(error).__name__} (os error {error.errno})"
    return None


def unreadable(path, error: OSError, *, what: str = "file") -> DataError:
    """The DataError for an ``OSError`` raised while opening or reading ``path``."""
    if isinstance(error, PermissionError):
        return DataError(f"cannot read the {what}: permission denied", path=path,
                         found=f"no read permission for this user (mode {_mode(path)})",
                         expected=f"a {what} this user may read (check its permissions and its folders')")
    if error.errno == errno.ELOOP:
        return DataError(f"{what} is a symbolic link loop", path=path, found="links that lead back to themselves",
                         expected=f"a link to an existing {what}")
    return DataError(f"cannot read the {what}", path=path,
                     found=f"{error.strerror or error} (os error {error.errno})", expected=f"a readable {what}")


def _mode(path) -> str:
    try:
        return oct(os.stat(path).st_mode & 0o777)
    except OSError:
        return "unknown"


def require_file(path, *, what: str = "file") -> Path:
    """``path`` as a Path, or a DataError saying it is missing, unreachable or not a regular file."""
    path = Path(path)
    problem = _stat_problem(path)
    if problem is not None:
        message, found = problem
        raise DataError(f"{what} not found" if message == "not found" else f"{what}: {message}", path=path,
                        found=found, expected=f"an existing {what}")
    if not path.is_file():
        raise DataError(f"{what} is not a regular file", path=path, found="a directory" if path.is_dir() else "not a file",
                        expected=f"a {what}")
    return path


def require_inter_file(path: Path) -> Path:
    """``path`` (a file given for a dataset) when it is a ``.inter`` file, else a DataError."""
    if path.suffix != ".inter":
        raise DataError("not a dataset folder or interaction file", path=path,
                        found=f"a {path.suffix} file" if path.suffix else "a file without the .inter suffix",
                        expected="the dataset folder, or its <name>.inter file")
    return path


def require_folder(path) -> Path:
    path = Path(path)
    problem = _stat_problem(path)
    if problem is not None:
        message, found = problem
        if message == "not found":
            raise DataError("dataset folder not found", path=path, found="no such folder",
                            expected="an existing folder")
        raise DataError(f"dataset folder: {message}", path=path, found=found, expected="an existing folder")
    if not path.is_dir():
        raise DataError("expected a dataset folder", path=path, found="a file", expected="a folder")
    return path


def prepared_tfds_roots(path) -> list[Path]:
    """The ``DATA_DIR/NAME`` folders of datasets prepared by ``jaxrec data prepare`` at ``path``:
    ``path`` itself, the dataset above a table or version folder (or file) inside it, or the datasets of
    a TFDS data directory. Empty when there is none (used to point a user at ``format: tfds``)."""
    path = Path(path)
    for candidate in (path, path.parent, path.parent.parent, path.parent.parent.parent):  # down to a table's file
        if any(candidate.glob("interactions/*/dataset_info.json")):
            return [candidate]
    try:
        return sorted(child for child in path.iterdir() if any(child.glob("interactions/*/dataset_info.json")))
    except OSError:
        return []


def tfds_format_error(path, roots: Sequence[Path], reader: str) -> DataError:
    """The error for a prepared TFDS dataset read as another format (or through the wrong folder)."""
    shown = " or ".join(repr(os.fspath(root)) for root in roots[:3])
    return DataError(f"this is a dataset prepared by 'jaxrec data prepare' (TFDS array_record), not {reader} files",
                     path=path, found="TFDS tables (interactions/<version>/dataset_info.json)",
                     expected=f"format 'tfds' with the path {shown} (in a config: data.format: tfds and data.path; "
                              "for 'jaxrec data info': --format tfds)")


NAME_HINT = ("the reader option name (data.options.name in a config; --option name=NAME for 'jaxrec data info' "
             "and 'jaxrec data prepare')")
FORMAT_HINT = "data.format in a config; --format for 'jaxrec data info' and 'jaxrec data prepare'"


ENCODING_HINT = ("if the file is in another encoding, e.g. Latin-1, pass the reader option encoding='latin-1' "
                 "(data.options.encoding in a config; --option encoding=latin-1 for 'jaxrec data info' and "
                 "'jaxrec data prepare')")


def read_text(path, *, encoding: str = "utf-8") -> str:
    """The file's text with ``\\r\\n`` turned into ``\\n``; empty or undecodable files raise DataError."""
    path = require_file(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise unreadable(path, error) from None
    if not raw.strip():
        raise DataError("empty file", path=path, found=f"{len(raw)} bytes" if raw else "0 bytes",
                        expected="a header and data rows" if path.suffix else "data rows")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        line_start = raw.rfind(b"\n", 0, error.start) + 1
        line = raw.count(b"\n", 0, error.start) + 1
        hint = f" ({ENCODING_HINT})" if encoding.lower().replace("-", "").replace("_", "") == "utf8" else ""
        raise DataError(f"bytes that are not valid {encoding}", path=path, line=line,
                        found=f"{raw[error.start:error.end]!r} at column {error.start - line_start + 1}",
                        expected=f"{encoding} text{hint}") from None
    if text.startswith("\ufeff"):
        text = text[1:]  # a byte-order mark is not part of the first field's name
    return text.replace("\r\n", "\n") if "\r" in text else text


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")


class DelimitedTable:
    """The data rows of a delimited text file, with the column names and each row's line number.

    Build with :func:`read_table`. Columns are looked up by header name; every accessor
    raises a DataError that names this file, the line and the column on bad content.
    """

    def __init__(self, path: Path, header: tuple[str, ...], delimiter: str, body: str,
                 line_numbers: np.ndarray, rows: list[list[str]] | None = None, shown_delimiter: str | None = None):
        self.path = path
        self.header = header
        self.delimiter = delimiter
        self._shown_delimiter = shown_delimiter or delimiter  # "::" where ``delimiter`` stands in for it
        self._body = body  # the data rows joined by "\n", blank lines removed ("" for quoted files)
        self.line_numbers = line_numbers
        self._rows = rows
        self._quoted = rows is not None
        self._flat: list[str] | None = None

    def __len__(self) -> int:
        return int(self.line_numbers.shape[0])

    @property
    def n_columns(self) -> int:
        return len(self.header)

    def has(self, name: str) -> bool:
        return name in self.header

    def index(self, name: str) -> int:
        """Position of column ``name``; a DataError naming the header when it is absent."""
        if name not in self.header:
            raise DataError("missing column", path=self.path, line=1, field=name,
                            found=f"columns {list(self.header)}", expected=f"a column named {name!r}")
        return self.header.index(name)

    def line_of(self, row: int) -> int:
        return int(self.line_numbers[row])

    def rows(self) -> list[list[str]]:
        if self._rows is None:
            self._rows = [line.split(self.delimiter) for line in self._body.split("\n")] if len(self) else []
        return self._rows

    def strings(self, name: str) -> list[str]:
        """Column ``name`` as a list of strings (surrounding whitespace stripped)."""
        column = self.index(name)
        if self._quoted:
            return [row[column].strip() for row in self._rows]
        if self._flat is None:
            # One split of the whole body: every line has exactly n_columns fields (checked on read).
            self._flat = self._body.replace("\n", self.delimiter).split(self.delimiter) if len(self) else []
        values = self._flat[column::self.n_columns]
        padded = any(pattern in self._body for pattern in (f"{self.delimiter} ", f" {self.delimiter}", "\n ", " \n"))
        if padded or self._body[:1] == " " or self._body[-1:] == " ":
            values = [value.strip() for value in values]
        return values

    def error(self, row: int, field: str, message: str, *, found, expected) -> DataError:
        """The DataError for a bad value at ``row``; a row of only whitespace is named as such."""
        fields = self.rows()[row]
        if not any(value.strip() for value in fields):
            return _whitespace_error(self.path, self.line_of(row), self.delimiter.join(fields).replace(
                _UNIT_SEPARATOR, self._shown_delimiter), self.n_columns)
        return DataError(message, path=self.path, line=self.line_of(row), field=field, found=found, expected=expected)

    def numbers(self, kinds: Mapping[str, str]) -> dict[str, np.ndarray]:
        """Numeric columns, parsed together: ``{name: kind}`` with kind ``"id"`` (int64 >= 0),
        ``"int"``, ``"float"`` (finite float64) or ``"time"`` (int64 if all are whole, else
        finite float64)."""
        positions = {name: self.index(name) for name in kinds}
        if not kinds:
            return {}
        columns = None
        if not self._quoted:
            columns = self._numbers_fast(kinds, positions)
        if columns is None:
            columns = {name: self._column_slow(name, positions[name], kind) for name, kind in kinds.items()}
        for name, kind in kinds.items():
            self._check_values(name, kind, columns[name])
        return columns

    def _numbers_fast(self, kinds, positions) -> dict[str, np.ndarray] | None:
        names = list(kinds)
        order = sorted(range(len(names)), key=lambda k: positions[names[k]])  # loadtxt wants usecols ascending
        for time_as_int in (True, False):
            if not time_as_int and TIME not in kinds.values():
                break
            dtype = [(f"c{k}", np.int64 if kinds[names[k]] in (ID, INT) or (kinds[names[k]] == TIME and time_as_int)
                      else np.float64) for k in order]
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("error")  # a silent partial parse must not pass as success
                    table = np.loadtxt(io.StringIO(self._body), dtype=dtype, delimiter=self.delimiter,
                                       comments=None, usecols=[positions[names[k]] for k in order], ndmin=1)
            except (ValueError, OverflowError, UserWarning):
                continue
            if table.shape != (len(self),):
                return None
            return {names[k]: np.ascontiguousarray(table[f"c{k}"]) for k in order}
        return None

    def _column_slow(self, name: str, column: int, kind: str) -> np.ndarray:
        texts = [fields[column].strip() for fields in self.rows()]
        if kind == TIME:
            try:
                return np.asarray([_strict(int, text) for text in texts], dtype=np.int64)
            except (ValueError, OverflowError):
                pass  # fractional timestamps (or a bad value, located below)
        parse = int if kind in (ID, INT) else float
        values = np.empty(len(texts), dtype=np.int64 if parse is int else np.float64)
        for row, text in enumerate(texts):
            try:
                values[row] = _strict(parse, text)
            except (ValueError, OverflowError):
                expected = {ID: "a non-negative integer id", INT: "an integer", FLOAT: "a number",
                            TIME: "a number (timestamp)"}[kind]
                raise self.error(row, name, "not a valid number", found=_shown(text) if text else "an empty field",
                                 expected=expected) from None
        return values

    def _check_values(self, name: str, kind: str, values: np.ndarray) -> None:
        if kind == ID and values.size and values.min() < 0:
            row = int(np.argmax(values < 0))
            raise self.error(row, name, "negative id", found=str(int(values[row])), expected="a non-negative integer id")
        if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
            row = int(np.argmax(~np.isfinite(values)))
            raise self.error(row, name, "not a finite number", found=str(values[row]), expected="a finite number")


def _strict(parse, text: str):
    """``parse(text)``, refusing the digit separators that Python reads ("1_000") but numpy does not."""
    if "_" in text:
        raise ValueError(text)
    return parse(text)


def read_table(path, *, delimiter: str = "\t", header: bool | Sequence[str] = True, encoding: str = "utf-8",
               quoted: bool = False, allow_empty: bool = False) -> DelimitedTable:
    """Reads a delimited text file strictly: every data row must have exactly the header's columns.

    Args:
      path: the file.
      delimiter: field separator; several characters (MovieLens' ``"::"``) are allowed.
      header: True when the first line names the columns, or the column names of a headerless file.
      encoding: text encoding (MovieLens 100K/1M are ``"latin-1"``).
      quoted: parse CSV quoting (``"a, b"`` is one field); slower, for small files with text.
      allow_empty: accept a file with a header and no data rows.

    Returns:
      A :class:`DelimitedTable`. Empty lines are skipped; line numbers stay those of the file.

    Raises:
      DataError: missing, unreadable or empty file, undecodable bytes, duplicate column names,
        a line of only whitespace, or a row with too few or too many fields (naming its line).
    """
    path = Path(path)
    text = read_text(path, encoding=encoding)
    if quoted:
        return _read_quoted(path, text, delimiter, header, allow_empty)
    if len(delimiter) > 1:
        if _UNIT_SEPARATOR in text:
            raise DataError("control character \\x1f in a file with a multi-character delimiter", path=path,
                            line=text.count("\n", 0, text.index(_UNIT_SEPARATOR)) + 1, found="\\x1f",
                            expected="plain text")
        text = text.replace(delimiter, _UNIT_SEPARATOR)
    separator = _UNIT_SEPARATOR if len(delimiter) > 1 else delimiter
    start = 0
    if header is True:
        while not text[start:_line_end(text, start)].strip():
            start = _line_end(text, start) + 1  # blank lines before the header (read_text ensures one exists)
        end = _line_end(text, start)
        names = tuple(name.strip() for name in text[start:end].split(separator))
        start = end + 1
    else:
        names = tuple(header)
    _check_header(path, names, header is True)
    first_line = text.count("\n", 0, start) + 1
    body, line_numbers, counts = _split_lines(text[start:].rstrip("\n\r "), separator, first_line)
    bad = np.flatnonzero(counts != len(names) - 1)
    if bad.size:
        # Lines of only spaces/tabs look blank but are not (empty lines are skipped): name the first.
        # (One with the right number of tabs fails later, in parsing; DelimitedTable.error names it then.)
        bad = np.union1d(bad, _whitespace_rows(body))
        row = int(bad[0])
        line = body.split("\n")[row]
        if not line.strip():
            raise _whitespace_error(path, int(line_numbers[row]), line.replace(_UNIT_SEPARATOR, delimiter),
                                    len(names))
        found_fields = int(counts[row]) + 1
        raise DataError("truncated line" if found_fields < len(names) else "too many fields on a line",
                        path=path, line=int(line_numbers[row]), field=names[min(found_fields, len(names) - 1)],
                        found=f"{found_fields} field(s): {_shown(line.replace(_UNIT_SEPARATOR, delimiter))}",
                        expected=f"{len(names)} fields {list(names)} separated by {delimiter!r}")
    if not len(line_numbers) and not allow_empty:
        raise DataError("no data rows", path=path, found="only a header" if header is True else "only blank lines",
                        expected="at least one data row")
    return DelimitedTable(path, names, separator, body, line_numbers, shown_delimiter=delimiter)


def _whitespace_error(path, line: int, text: str, n_fields: int) -> DataError:
    return DataError("a line of only whitespace", path=path, line=line,
                     found=f"{len(text)} whitespace character(s): {_shown(text)}",
                     expected=f"a data row of {n_fields} fields, or an empty line (delete the whitespace)")


def _line_end(text: str, start: int) -> int:
    end = text.find("\n", start)
    return len(text) if end < 0 else end


def _split_lines(body: str, separator: str, first_line: int) -> tuple[str, np.ndarray, np.ndarray]:
    """(body without empty lines, the file line number of each row, separators on each row)."""
    if not body:
        return "", np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if ord(separator) >= 128:  # rare: count in Python
        lines = body.split("\n")
        kept = [k for k, line in enumerate(lines) if line]
        counts = np.fromiter((lines[k].count(separator) for k in kept), dtype=np.int64, count=len(kept))
        body = body if len(kept) == len(lines) else "\n".join(lines[k] for k in kept)
        return body, first_line + np.asarray(kept, dtype=np.int64), counts
    # ASCII separators and newlines never occur inside multi-byte UTF-8 characters, so bytes will do.
    data = np.frombuffer(body.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    newlines = np.flatnonzero(data == 10)
    starts = np.concatenate([[0], newlines + 1])
    ends = np.concatenate([newlines, [data.size]])
    empty = starts == ends
    running = np.zeros(data.size + 1, dtype=np.int32 if data.size < 2**31 - 1 else np.int64)
    np.cumsum(data == ord(separator), out=running[1:])  # separators before each byte position
    counts = np.diff(running[ends], prepend=0).astype(np.int64)
    line_numbers = np.arange(first_line, first_line + starts.size, dtype=np.int64)
    if empty.any():
        lines = body.split("\n")
        body = "\n".join(line for line in lines if line)
        line_numbers, counts = line_numbers[~empty], counts[~empty]
    return body, line_numbers, counts


_WHITESPACE_BYTES = np.zeros(256, dtype=bool)
_WHITESPACE_BYTES[list(b" \t\v\f\r\n")] = True


def _whitespace_rows(body: str) -> np.ndarray:
    """Indices of the rows of ``body`` (empty lines already removed) that hold only whitespace."""
    if not body:
        return np.zeros(0, dtype=np.int64)
    # ASCII whitespace and newlines never occur inside multi-byte UTF-8 characters, so bytes will do.
    data = np.frombuffer(body.encode("utf-8", "surrogatepass"), dtype=np.uint8)
    starts = np.concatenate([[0], np.flatnonzero(data == 10) + 1])  # no line is empty: reduceat sums each
    visible = np.add.reduceat(~_WHITESPACE_BYTES[data], starts, dtype=np.int64)
    return np.flatnonzero(visible == 0)


def _check_header(path: Path, names: tuple[str, ...], has_header_line: bool) -> None:
    where = 1 if has_header_line else None
    if any(not name for name in names):
        raise DataError("empty column name in the header", path=path, line=where, found=list(names),
                        expected="a name for every column")
    seen = set()
    for name in names:
        if name in seen:
            raise DataError("duplicate column name in the header", path=path, line=where, field=name,
                            found=list(names), expected="distinct column names")
        seen.add(name)


def _read_quoted(path: Path, text: str, delimiter: str, header, allow_empty: bool) -> DelimitedTable:
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, strict=True)
    rows, line_numbers, names = [], [], None if header is True else tuple(header)
    try:
        start = 1
        for fields in reader:
            line, start = start, reader.line_num + 1  # a quoted field may span lines
            if not any(field.strip() for field in fields):
                continue
            if names is None:
                names = tuple(field.strip() for field in fields)
                _check_header(path, names, True)
                continue
            if len(fields) != len(names):
                raise DataError("truncated line" if len(fields) < len(names) else "too many fields on a line",
                                path=path, line=line, field=names[min(len(fields), len(names) - 1)],
                                found=f"{len(fields)} field(s): {_shown(delimiter.join(fields))}",
                                expected=f"{len(names)} fields {list(names)} separated by {delimiter!r}")
            rows.append(fields)
            line_numbers.append(line)
    except csv.Error as error:
        raise DataError("malformed CSV quoting", path=path, line=reader.line_num, found=str(error),
                        expected="fields quoted with matching double quotes") from None
    if names is None:
        raise DataError("empty file", path=path, found="no header", expected="a header and data rows")
    if not rows and not allow_empty:
        raise DataError("no data rows", path=path, found="only a header", expected="at least one data row")
    return DelimitedTable(path, names, delimiter, "", np.asarray(line_numbers, dtype=np.int64), rows)


def dense_ids(values, *, order: str = "sorted") -> tuple[np.ndarray, np.ndarray]:
    """(dense, originals) with ``originals[dense] == values``: ids ``0..n-1`` in sorted or first-seen order.

    ``values`` is an array (``"sorted"``) or any sequence of hashable tokens (``"first_seen"``,
    which hashes instead of sorting, so a million string tokens take a fraction of a second).
    """
    if order == "first_seen":
        index: dict = {}
        dense = np.fromiter((index.setdefault(value, len(index)) for value in values), dtype=np.int64,
                            count=len(values))
        return dense, np.asarray(list(index))
    originals, inverse = np.unique(np.asarray(values), return_inverse=True)
    return inverse.astype(np.int64), originals


def deduplicate(users: np.ndarray, items: np.ndarray, table: DelimitedTable, *, duplicates: str,
                user_field: str, item_field: str, user_ids: np.ndarray | None = None,
                item_ids: np.ndarray | None = None) -> np.ndarray | None:
    """Row indices to keep (the first of each repeated (user, item) pair), or None when all are unique.

    ``duplicates="warn"`` keeps the first occurrence and warns with a :class:`DataWarning`
    naming the repeated lines; ``"error"`` raises a DataError naming the first repeat. The
    message shows the ids as the file writes them: ``user_ids`` / ``item_ids`` (dense id ->
    the file's id) when the reader remapped them.
    """
    if duplicates not in ("warn", "error"):
        raise DataError("unknown duplicates policy", field="duplicates", found=duplicates,
                        expected="'warn' (keep the first, warn) or 'error'")
    if users.size == 0:
        return None
    key = users.astype(np.int64) * (int(items.max()) + 1) + items
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if first.size == key.size:
        return None
    keep = np.zeros(key.size, dtype=bool)
    keep[first] = True
    repeats = np.flatnonzero(~keep)
    row = int(repeats[0])
    original = int(first[inverse[row]])
    user = users[row] if user_ids is None else user_ids[users[row]]
    item = items[row] if item_ids is None else item_ids[items[row]]
    described = (f"({user_field}={user}, {item_field}={item}) on line {table.line_of(row)} "
                 f"repeats line {table.line_of(original)}")
    if duplicates == "error":
        raise DataError("duplicate interaction", path=table.path, line=table.line_of(row),
                        field=f"{user_field}, {item_field}", found=described,
                        expected="each (user, item) pair once (or keep the first with the reader option "
                                 "duplicates='warn': data.options.duplicates in a config, --option duplicates=warn "
                                 "for 'jaxrec data info' and 'jaxrec data prepare')")
    warnings.warn(f"{os.fspath(table.path)}: dropped {repeats.size} duplicate interaction(s), keeping the first "
                  f"of each; first: {described}", DataWarning, stacklevel=3)
    return np.flatnonzero(keep)


def frozen(array) -> np.ndarray:
    """A read-only copy of ``array`` (for id maps stored in metadata)."""
    array = np.array(array)
    array.flags.writeable = False
    return array
