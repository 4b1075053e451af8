"""Ratio, chronological, leave-one-out and cold-start splits at their boundaries, against rules
computed independently here: exact fractions for the ratio counts (no float floors), a stable
per-user Python sort for time order (ms/us/ns timestamps spanning more than 2**32 units included), and the
cold-start docstring's sizes for an odd number of held-out items."""

import math
from collections import Counter, defaultdict
from fractions import Fraction

import numpy as np
import pytest

from jaxrec.data import Interactions, MultimodalDataset, cold_start_item_split, leave_one_out_split, ratio_split


def _dataset(lengths, *, times=None, n_items=80, seed=0):
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(len(lengths)), lengths)
    rng.shuffle(users)
    items = rng.integers(0, n_items, users.size)
    inter = Interactions(users, items, np.zeros(users.size, np.int8), timestamps=times)
    return MultimodalDataset("toy", len(lengths), n_items, inter)


def _exact_counts(n, ratios, short_history):
    """(train, valid, test) of one user, from the docstring's formulas in exact rationals."""
    train, valid, test = (Fraction(str(r)) for r in ratios)
    total = train + valid + test
    valid, test = valid / total, test / total
    held_splits = int(valid > 0) + int(test > 0)
    if n <= held_splits:  # nothing would be left to train on: everything stays in train
        n_valid = n_test = 0
    elif n < short_history:
        n_valid, n_test = int(valid > 0), int(test > 0)
    else:
        n_eval = math.floor(n * (valid + test))
        n_valid = math.floor(n_eval * valid / (valid + test))
        n_test = n_eval - n_valid
    return n - n_valid - n_test, n_valid, n_test


LENGTHS = list(range(1, 41))


@pytest.mark.parametrize("ratios", [(0.6, 0.2, 0.2), (0.2, 0.3, 0.5), (0.25, 0.15, 0.6), (0.7, 0.15, 0.15),
                                    (0.8, 0.1, 0.1), (0.1, 0.35, 0.55)])
@pytest.mark.parametrize("short_history", [0, 5, 10])
def test_ratio_counts_are_the_exact_floors_including_the_short_history_boundary(ratios, short_history):
    data = _dataset(LENGTHS)
    out = ratio_split(data, ratios, seed=1, short_history=short_history)
    split, users = out.interactions.split, out.interactions.users
    for user, n in enumerate(LENGTHS):
        got = np.bincount(split[users == user], minlength=3).tolist()
        assert tuple(got) == _exact_counts(n, ratios, short_history), (ratios, short_history, n, got)


def test_a_user_with_exactly_short_history_interactions_follows_the_ratio_rule():
    # n = short_history = 10 with 60/20/20: 6 train, 2 valid, 2 test (the one-each rule would give 8/1/1).
    out = ratio_split(_dataset([10, 10]), (0.6, 0.2, 0.2), seed=0, short_history=10)
    for user in range(2):
        assert Counter(out.interactions.split[out.interactions.users == user].tolist()) == {0: 6, 1: 2, 2: 2}


def _expected_by_time(users, times, counts_for):
    """Per-user stable sort by time (ties keep row order); the last rows get the held-out labels."""
    rows_of = defaultdict(list)
    for row, user in enumerate(users.tolist()):
        rows_of[user].append(row)
    expected = np.full(users.size, -1)
    for user, rows in rows_of.items():
        ordered = sorted(rows, key=lambda r: int(times[r]))
        n_train, n_valid, n_test = counts_for(len(rows))
        for position, row in enumerate(ordered):
            expected[row] = 0 if position < n_train else (1 if position < n_train + n_valid else 2)
    return expected


def _wide_times(size, seed, unit_per_second, seconds):
    """int64 timestamps (ms, us or ns) over ``seconds``: a span beyond 2**32 units, with exact ties."""
    rng = np.random.default_rng(seed)
    times = 1_600_000_000 * unit_per_second + rng.integers(0, seconds, size) * unit_per_second
    tied = times[1::7].size
    times[1::7] = times[0::7][:tied]  # some exact ties
    assert times.max() - times.min() > 2**32
    return times.astype(np.int64)


# Spans just above 2**32 (ms over 60 days), about 2**36 (us over a day) and about 2**49 (ns over a week).
WIDE = pytest.mark.parametrize("unit_per_second, seconds", [(1_000, 60 * 86_400), (1_000_000, 86_400),
                                                            (1_000_000_000, 7 * 86_400)])


@WIDE
def test_chronological_ratio_split_with_wide_integer_timestamps(unit_per_second, seconds):
    lengths = [3, 7, 10, 12, 25, 40]
    probe = _dataset(lengths)
    times = _wide_times(len(probe.interactions), 2, unit_per_second, seconds)
    data = _dataset(lengths, times=times)
    out = ratio_split(data, order="time")
    expected = _expected_by_time(data.interactions.users, times, lambda n: _exact_counts(n, (0.8, 0.1, 0.1), 10))
    np.testing.assert_array_equal(out.interactions.split, expected)


@WIDE
def test_leave_one_out_with_wide_integer_timestamps_holds_out_the_latest(unit_per_second, seconds):
    lengths = [1, 2, 3, 5, 9, 30]
    probe = _dataset(lengths)
    times = _wide_times(len(probe.interactions), 3, unit_per_second, seconds)
    data = _dataset(lengths, times=times)
    out = leave_one_out_split(data, order="time")
    expected = _expected_by_time(data.interactions.users, times, lambda n: (n, 0, 0) if n < 3 else (n - 2, 1, 1))
    np.testing.assert_array_equal(out.interactions.split, expected)


def test_leave_one_out_ties_keep_row_order():
    # User 0, rows 0..4 at times 5, 9, 9, 9, 1: by time, ties in row order, the sequence is rows
    # 4, 0, 1, 2, 3, so row 3 (the last of the tied rows) is test and row 2 valid. User 1: three
    # rows at one time: the last row is test, the one before it valid.
    data = MultimodalDataset("ties", 2, 5, Interactions(
        [0, 0, 0, 0, 0, 1, 1, 1], [0, 1, 2, 3, 4, 0, 1, 2], np.zeros(8, np.int8),
        timestamps=np.array([5, 9, 9, 9, 1, 3, 3, 3])))
    assert leave_one_out_split(data, order="time").interactions.split.tolist() == [0, 0, 1, 2, 0, 0, 1, 2]


@pytest.mark.parametrize("n_items, holdout", [(23, 0.3), (17, 0.3), (31, 0.15)])
def test_cold_start_sizes_follow_the_docstring_for_odd_counts(n_items, holdout):
    # Every item interacted; round(holdout * n) held out (not floor), the first half rounded down valid.
    users = np.repeat(np.arange(10), n_items)
    items = np.tile(np.arange(n_items), 10)
    data = MultimodalDataset("cold", 10, n_items, Interactions(users, items, np.zeros(users.size, np.int8)))
    n_held = int(Fraction(str(holdout)) * n_items + Fraction(1, 2))  # round half up; no .5 case here
    assert n_held % 2 == 1
    out, cold = cold_start_item_split(data, holdout=holdout, seed=3)
    assert (cold.valid.size, cold.test.size) == (n_held // 2, n_held - n_held // 2)
    item_split = {}
    for item, label in zip(out.interactions.items.tolist(), out.interactions.split.tolist()):
        item_split.setdefault(item, set()).add(label)
    assert sum(labels == {1} for labels in item_split.values()) == n_held // 2
    assert sum(labels == {2} for labels in item_split.values()) == n_held - n_held // 2
    assert sum(labels == {0} for labels in item_split.values()) == n_items - n_held
