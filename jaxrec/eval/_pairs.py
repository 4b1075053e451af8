"""Host-side checks and layout of (user, item) pair arrays for batched ranking.

Pairs (items to exclude, held-out items) arrive as ``(n, 2)`` integer numpy arrays. For
the device they are regrouped by user batch and padded to one static width, so that a
single compiled program scatters them into a dense ``(batch_size, num_items)`` block per
batch. Padding slots carry the row index ``batch_size``, which is out of bounds and dropped
by the scatter (``mode="drop"``); no dense ``num_users x num_items`` matrix is ever built.
"""

from __future__ import annotations

import numpy as np

from jaxrec.errors import DataError


def as_pairs(pairs, *, field: str, num_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Checks an ``(n, 2)`` array of (user, item) ids and returns its two int64 columns.

    Args:
      pairs: ``(n, 2)`` integer array-like, or None for no pairs.
      field: the argument name, for error messages.
      num_items: item ids must lie in ``[0, num_items)``; user ids must be >= 0 (their upper
        bound, the number of user embeddings, is checked when the split is evaluated).

    Returns:
      ``(users, items)``, two ``(n,)`` int64 arrays.

    Raises:
      DataError: wrong shape or dtype, or an id out of range (naming the first bad row).
    """
    if pairs is None:
        empty = np.zeros((0,), np.int64)
        return empty, empty
    array = np.asarray(pairs)
    if array.size == 0:
        empty = np.zeros((0,), np.int64)
        return empty, empty
    if array.ndim != 2 or array.shape[1] != 2:
        raise DataError(
            "pairs must be an (n, 2) array of (user, item) ids",
            field=field, found=f"shape {array.shape}", expected="shape (n, 2)",
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            "pair ids must be integers", field=field, found=f"dtype {array.dtype}",
            expected="an integer dtype",
        )
    users = array[:, 0].astype(np.int64)
    items = array[:, 1].astype(np.int64)
    _check_range(users, field=field, what="user", upper=None)
    _check_range(items, field=field, what="item", upper=num_items)
    return users, items


def _check_range(ids: np.ndarray, *, field: str, what: str, upper: int | None) -> None:
    bad = ids < 0 if upper is None else (ids < 0) | (ids >= upper)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        expected = f"0 <= {what} id" + (f" < {upper}" if upper is not None else "")
        raise DataError(
            f"{what} id out of range in row {row}", field=field,
            found=f"{what} id {int(ids[row])}", expected=expected,
        )


def as_item_ids(items, *, field: str, num_items: int) -> np.ndarray:
    """Checks a 1-D array of item ids and returns the sorted unique ids as int64."""
    array = np.asarray(items)
    if array.ndim != 1:
        raise DataError(
            "item ids must be a 1-D array", field=field, found=f"shape {array.shape}",
            expected="shape (n,)",
        )
    if array.size == 0:
        raise DataError(
            "the candidate item set is empty", field=field, found="0 items",
            expected="at least one item id",
        )
    if not np.issubdtype(array.dtype, np.integer):
        raise DataError(
            "item ids must be integers", field=field, found=f"dtype {array.dtype}",
            expected="an integer dtype",
        )
    ids = array.astype(np.int64)
    _check_range(ids, field=field, what="item", upper=num_items)
    return sorted_unique(ids)


def positions_of(users: np.ndarray, ordered_users: np.ndarray) -> np.ndarray:
    """Position of each entry of ``users`` in ``ordered_users`` (unique ids); -1 when absent."""
    if ordered_users.size == 0:
        return np.full(users.shape, -1, np.int64)
    order = np.argsort(ordered_users, kind="stable")
    sorted_users = ordered_users[order]
    slot = np.searchsorted(sorted_users, users)
    slot_clipped = np.minimum(slot, sorted_users.size - 1)
    found = sorted_users[slot_clipped] == users
    return np.where(found, order[slot_clipped], -1)


def unique_pairs(positions: np.ndarray, items: np.ndarray, num_items: int):
    """Drops duplicate (position, item) pairs; returns them sorted by position, then item."""
    codes = sorted_unique(positions.astype(np.int64) * num_items + items)
    return codes // num_items, codes % num_items


def sorted_unique(values: np.ndarray) -> np.ndarray:
    """``np.unique`` by sort and neighbour compare (numpy 2's hash-based unique is slower here)."""
    values = np.sort(values)
    first = np.ones(values.size, bool)
    first[1:] = values[1:] != values[:-1]
    return values[first]


def layout_by_batch(
    positions: np.ndarray, items: np.ndarray, *, batch_size: int, num_batches: int
) -> tuple[np.ndarray, np.ndarray]:
    """Groups pairs by user batch and pads each group to one width.

    Args:
      positions: ``(n,)`` position of each pair's user in the evaluation order.
      items: ``(n,)`` item id of each pair.
      batch_size: users per batch; position ``p`` is row ``p % batch_size`` of batch
        ``p // batch_size``.
      num_batches: number of batches.

    Returns:
      ``(rows, items)``, two ``(num_batches, width)`` int32 arrays; padding slots hold row
      ``batch_size`` (out of bounds, dropped by the device scatter) and item 0. ``width`` is
      the largest number of pairs in one batch (at least 1).
    """
    batch = positions // batch_size
    order = np.argsort(batch, kind="stable")
    batch = batch[order]
    counts = np.bincount(batch, minlength=num_batches)
    width = max(int(counts.max(initial=0)), 1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(batch.size) - starts[batch]
    rows = np.full((num_batches, width), batch_size, np.int32)
    cols = np.zeros((num_batches, width), np.int32)
    rows[batch, slot] = positions[order] % batch_size
    cols[batch, slot] = items[order]
    return rows, cols
