"""Checks shared by the approximate kNN methods' settings (``IvfSettings``, ``HnswSettings``,
``JoinSettings``): every field an integer with a lower bound, and the fields that form the
graph cache key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from jaxrec.errors import ConfigError


def checked_integer_fields(settings: NamedTuple, method: str, minimums: Mapping[str, int]) -> dict[str, int]:
    """The fields of ``settings`` as Python ints, or ``ConfigError`` naming the first field
    that is not an integer (bools refused) at least ``minimums.get(name, 1)``."""
    values = {}
    for name, value in settings._asdict().items():
        minimum = minimums.get(name, 1)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ConfigError(f"{method} kNN: {name} must be an integer >= {minimum}; found {value!r}")
        values[name] = int(value)
    return values


def result_fields(settings: NamedTuple) -> dict[str, int]:
    """The fields that decide the neighbours (all but ``threads``): the cache key's part."""
    return {name: int(value) for name, value in settings._asdict().items() if name != "threads"}
