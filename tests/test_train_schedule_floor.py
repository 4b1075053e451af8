"""Learning-rate schedules that decay to ``min_learning_rate``, by the closed forms:
cosine ``m + (lr - m) (1 + cos(pi t / T)) / 2`` and warm-up then cosine (linear from 0 over the
warm-up, then the cosine from ``lr`` down to ``m``), ``T`` = epochs x steps per epoch. The batched
search trains each trial with the unit-rate optimizer times the trial's rate, so that form must
give the same rates (its floor is ``m / lr``)."""

import math

import pytest

from jaxrec.train import TrainConfig, learning_rate_schedule
from jaxrec.train._batched_search import _unit_train_config

SPE, EPOCHS, LR, FLOOR = 10, 4, 0.1, 0.01
T = SPE * EPOCHS


def _cosine(t):
    return FLOOR + (LR - FLOOR) * 0.5 * (1 + math.cos(math.pi * min(t, T) / T))


def _warmup_cosine(t, warmup=SPE):
    if t < warmup:
        return LR * t / warmup
    return FLOOR + (LR - FLOOR) * 0.5 * (1 + math.cos(math.pi * min(t - warmup, T - warmup) / (T - warmup)))


@pytest.mark.parametrize("schedule, expected", [("cosine", _cosine), ("warmup_cosine", _warmup_cosine)])
def test_decaying_schedules_end_at_the_floor(schedule, expected):
    config = TrainConfig(schedule=schedule, learning_rate=LR, min_learning_rate=FLOOR, warmup_epochs=1, epochs=EPOCHS)
    direct = learning_rate_schedule(config, SPE)
    unit = learning_rate_schedule(_unit_train_config(config), SPE)
    counts = (0, 5, 10, 20, 30, 39, 40, 55)
    want = [expected(t) for t in counts]
    assert want[-1] == pytest.approx(FLOOR)
    assert [float(direct(t)) for t in counts] == pytest.approx(want, rel=1e-5, abs=1e-8)
    assert [LR * float(unit(t)) for t in counts] == pytest.approx(want, rel=1e-5, abs=1e-8)
