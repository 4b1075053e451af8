"""``update_early_stopping`` against a plain-Python replay of MMRec's rule written here, over many
scripted sequences: ties, plateaus, NaN and BOTH infinities (a non-finite value never improves,
``+inf`` included), patience 0 to 3."""

import math

import numpy as np
import pytest

from jaxrec.train import EarlyStopping, update_early_stopping


def _reference(values, patience):
    """Per evaluation: (improved, best value, best epoch, bad evaluations, stop)."""
    best, best_epoch, bad, out = -math.inf, -1, 0, []
    for epoch, value in enumerate(values, start=1):
        improved = math.isfinite(value) and value > best
        if improved:
            best, best_epoch, bad = value, epoch, 0
        else:
            bad += 1
        out.append((improved, best, best_epoch, bad, bad > patience))
    return out


def test_an_infinite_value_is_never_an_improvement():
    state, improved = update_early_stopping(EarlyStopping(0.3, 2, 0, False), math.inf, 3, patience=5)
    assert not improved and state == EarlyStopping(0.3, 2, 1, False)
    state, improved = update_early_stopping(EarlyStopping(), math.inf, 1, patience=0)
    assert not improved and state == EarlyStopping(-math.inf, -1, 1, True)


@pytest.mark.parametrize("patience", [0, 1, 2, 3])
def test_scripted_sequences_follow_the_reference(patience):
    rng = np.random.default_rng(patience)
    pool = [0.1, 0.2, 0.2, 0.3, 0.25, math.nan, math.inf, -math.inf, 0.0]
    for _ in range(200):
        values = [float(v) for v in rng.choice(pool, size=int(rng.integers(1, 12)))]
        state = EarlyStopping()  # (the trainer stops at the first stop; the rule itself keeps counting)
        for epoch, (value, expected) in enumerate(zip(values, _reference(values, patience)), start=1):
            state, improved = update_early_stopping(state, value, epoch, patience=patience)
            assert (improved, state.best_value, state.best_epoch, state.bad_evals, state.stop) == expected, values
