"""Early stopping on a validation metric (bigger is better), as a state plus a pure update."""

from __future__ import annotations

import math
from typing import NamedTuple


class EarlyStopping(NamedTuple):
    """Where early stopping stands.

    Attributes:
      best_value: the best validation value so far (``-inf`` before the first evaluation).
      best_epoch: the epoch (1-based, as the trainer counts them) that reached it, -1 before the first evaluation.
      bad_evals: evaluations in a row since the last strict improvement.
      stop: whether training should stop now.
    """

    best_value: float = -math.inf
    best_epoch: int = -1
    bad_evals: int = 0
    stop: bool = False


def update_early_stopping(state: EarlyStopping, value: float, epoch: int, *,
                          patience: int) -> tuple[EarlyStopping, bool]:
    """Record one validation value; returns the new state and whether it improved.

    MMRec's rule: a value strictly above the best resets the count; otherwise the count
    grows, and training stops once it exceeds ``patience``. A non-finite value never
    counts as an improvement.
    """
    if math.isfinite(value) and value > state.best_value:
        return EarlyStopping(float(value), int(epoch), 0, False), True
    bad = state.bad_evals + 1
    return EarlyStopping(state.best_value, state.best_epoch, bad, bad > patience), False
