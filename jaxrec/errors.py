"""The exception types jaxrec raises for bad input and failed runs.

Every error about input names where the problem is (file, line, field), what was found
and what was expected, so that a user can fix the input without reading a traceback.
"""

from __future__ import annotations

import os


class JaxrecError(Exception):
    """Base class of every error jaxrec raises on purpose."""


class DataError(JaxrecError, ValueError):
    """Malformed or inconsistent input data.

    Args:
      message: what is wrong, in one sentence.
      path: the file (or folder) the problem is in, if any.
      line: 1-based line number in that file, if known.
      field: the column, array or attribute the problem is in, if any.
      found: what was found (rendered with ``repr`` when not a string).
      expected: what was expected instead.
    """

    def __init__(self, message: str, *, path=None, line=None, field=None, found=None, expected=None):
        self.path = os.fspath(path) if path is not None else None
        self.line = line
        self.field = field
        self.found = found
        self.expected = expected
        where = []
        if self.path is not None:
            where.append(self.path + (f":{line}" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field {field!r}")
        text = (", ".join(where) + ": " if where else "") + message
        if found is not None:
            text += f"; found {found if isinstance(found, str) else repr(found)}"
        if expected is not None:
            text += f"; expected {expected}"
        super().__init__(text)


class ConfigError(JaxrecError, ValueError):
    """An invalid experiment configuration (unknown key, wrong type, bad value)."""


class TrainingDivergedError(JaxrecError, FloatingPointError):
    """A loss or gradient became NaN or infinite during training."""


class ResourceError(JaxrecError, MemoryError):
    """A setting or an input that would need more memory than the machine has (estimated
    before allocating; the message names the setting and the sizes)."""
