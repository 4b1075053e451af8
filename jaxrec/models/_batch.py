"""The one batch layout every model receives (see the contract in ``jaxrec.models._registry``)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxrec.errors import DataError

_INDEX_KEYS = ("users", "pos_items", "neg_items")


def normalize_batch(batch: Mapping) -> dict[str, np.ndarray]:
    """``batch`` in the contract's layout: int32 ``users`` (..., B), ``pos_items`` (..., B),
    ``neg_items`` (..., B, n) and float32 ``weights`` (..., B), any leading axes (stacked steps)
    kept.

    A ``neg_items`` without the negatives axis (one negative per row) gains it; missing
    ``weights`` are all 1 (every row real); other entries (``ratings``) pass through.

    Raises:
      DataError: a missing key or shapes that do not agree.
    """
    missing = [key for key in _INDEX_KEYS if key not in batch]
    if missing:
        raise DataError("a training batch lacks a field", field=f"batch[{missing[0]!r}]", found="no such key",
                        expected="users, pos_items and neg_items")
    out = {key: np.asarray(value) for key, value in batch.items()}
    users = out["users"].astype(np.int32)
    shape = users.shape
    negatives = out["neg_items"].astype(np.int32)
    if negatives.shape == shape:
        negatives = negatives[..., None]
    weights = np.ones(shape, np.float32) if "weights" not in out else out["weights"].astype(np.float32)
    for key, value, expected in (("pos_items", out["pos_items"], shape), ("weights", weights, shape),
                                 ("neg_items", negatives, shape + negatives.shape[-1:])):
        if value.shape != expected or negatives.ndim != len(shape) + 1:
            raise DataError("training batch fields do not agree", field=f"batch[{key!r}]",
                            found=f"shape {value.shape}", expected=f"shape {expected} (users are {shape})")
    out.update(users=users, pos_items=out["pos_items"].astype(np.int32), neg_items=negatives, weights=weights)
    return out
