"""Checks of what callers pass to :class:`~jaxrec.serve.Recommender`: ids, list lengths,
histories and events. Each failure is a ``DataError`` naming the field."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from jaxrec.errors import DataError


def ids(values, field: str, upper: int, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim == 0:
        array = array.reshape(1)
    if array.ndim != 1 or array.size == 0:
        raise DataError(f"{field} must be a non-empty list of {what} ids", field=field,
                        found=f"shape {array.shape}", expected="(n,) integers")
    integral_floats = array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array))
    if array.dtype.kind not in "iu" and not integral_floats:
        raise DataError(f"{field} must hold integer {what} ids", field=field, found=f"dtype {array.dtype}",
                        expected="integers")
    bad = (array < 0) | (array >= upper)  # before any cast: a huge id must not wrap around
    if bad.any():
        value = array[bad][0]
        raise DataError(f"unknown {what} id", field=field, found=int(value) if integral_floats or
                        array.dtype.kind in "iu" else value, expected=f"an id in [0, {upper})")
    return array.astype(np.int64)


def check_k(k) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError("k must be a positive integer", field="k", found=repr(k), expected="an integer >= 1")
    return int(k)


def candidate_mask(snapshot, candidates):
    """``(mask over the item capacity, number of rankable items)``: all real items, or ``candidates``."""
    if candidates is None:
        return snapshot.candidate_mask, snapshot.n_items
    chosen = np.unique(ids(candidates, "candidates", snapshot.n_items, "item"))
    mask = np.zeros(snapshot.learner.cap_items, bool)
    mask[chosen] = True
    return jax.device_put(mask), int(chosen.size)


def histories(lists, n_items: int) -> list[np.ndarray]:
    """Each history as sorted distinct int32 item ids (non-empty, known items)."""
    histories = lists
    if isinstance(histories, np.ndarray) and histories.ndim == 2:
        histories = list(histories)
    if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence) or not histories:
        raise DataError("histories must be a non-empty list of item-id lists", field="histories",
                        found=type(histories).__name__, expected="[[item ids], ...]")
    out = []
    for row, history in enumerate(histories):
        if isinstance(history, (str, bytes)) or not isinstance(history, (Sequence, np.ndarray)) or len(history) == 0:
            raise DataError("each history must be a non-empty list of item ids", field=f"histories[{row}]",
                            found=repr(history)[:80], expected="a non-empty list of item ids")
        out.append(np.unique(ids(history, f"histories[{row}]", n_items, "item")).astype(np.int32))
    return out


def parse_events(events, *, n_users: int, n_items: int) -> np.ndarray:
    """``events`` (an int ``(n, 2)`` array of (user, item), or a list of ``{"user_id", "item_id"}``)
    as an ``(n, 2)`` int32 array. Ids up to ``count + n - 1`` are new users or items (a call
    cannot add more ids than it has events)."""
    counts = {"user_id": n_users, "item_id": n_items}
    if isinstance(events, Sequence) and events and isinstance(events[0], Mapping):
        n = len(events)
        rows = []
        for index, event in enumerate(events):
            if not isinstance(event, Mapping) or set(event) != {"user_id", "item_id"}:
                raise DataError("an event must be {'user_id': int, 'item_id': int}", field=f"events[{index}]",
                                found=repr(event)[:80], expected="exactly the keys user_id and item_id")
            for key in ("user_id", "item_id"):
                value = event[key]
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                    raise DataError("event ids must be integers", field=f"events[{index}].{key}",
                                    found=repr(value)[:40], expected="an integer id >= 0")
                if not 0 <= int(value) < counts[key] + n:  # checked as Python ints: no overflow
                    raise DataError(f"event {key} out of range", field=f"events[{index}].{key}", found=int(value),
                                    expected=f"a known id in [0, {counts[key]}) or a new one below {counts[key] + n}")
            rows.append((event["user_id"], event["item_id"]))
        return np.asarray(rows, np.int64).astype(np.int32)
    array = np.asarray(events)
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
        raise DataError("events must be an (n, 2) integer array of (user_id, item_id) rows or a list of "
                        "{'user_id', 'item_id'} dicts", field="events", found=f"shape {array.shape}",
                        expected="(n, 2) with n >= 1")
    if array.dtype.kind not in "iu":
        raise DataError("event ids must be integers", field="events",
                        found=f"dtype {array.dtype}" + (" (ids past int64, or mixed types)" if array.dtype == object
                                                        else ""), expected="integers")
    n = len(array)
    for column, field in enumerate(("user_id", "item_id")):
        ids = array[:, column]
        bad = (ids < 0) | (ids >= counts[field] + n)  # in the array's own dtype: no wrap-around
        if bad.any():
            raise DataError(f"event {field} out of range", field=f"events.{field}", found=int(ids[bad][0]),
                            expected=f"a known id in [0, {counts[field]}) or a new one below {counts[field] + n}")
    return array.astype(np.int32)
