"""Splits, checked against per-user Python loops written out independently of the vectorized code."""

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from jaxrec.data import (ColdStartItems, Interactions, MultimodalDataset, cold_items, cold_start_item_split,
                         keep_given_split, leave_one_out_split, ratio_split, split_dataset)
from jaxrec.errors import ConfigError, DataError


def make_dataset(history_lengths, *, n_items=60, seed=0, timestamps=True, tie_every=0, float_times=False):
    """One user per entry of ``history_lengths``; ``ratings`` carry the row number to track rows."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(len(history_lengths)), history_lengths)
    rng.shuffle(users)  # rows of a user are scattered, as in a real file
    items = rng.integers(0, n_items, users.size)
    times = rng.permutation(users.size) * 10
    if tie_every:
        times = times // (10 * tie_every)  # many equal timestamps
    if float_times:  # floats take the rank path of the order key
        times = times * 1e9 + 0.25
    inter = Interactions(users, items, np.zeros(users.size, np.int8),
                         ratings=np.arange(users.size, dtype=np.float32),
                         timestamps=times if timestamps else None)
    return MultimodalDataset("toy", len(history_lengths), n_items, inter, metadata={"source": "toy.inter"})


def mmrec_labels_for_count(n):
    """MMRec preprocessing/1splitting.ipynb, copied rule for one user (after its shuffle)."""
    if n <= 2:  # MMRec's data is 5-core; jaxrec keeps such users in train (documented extension)
        return [0] * n
    if n < 10:
        return [0] * (n - 2) + [1] + [2]
    val_test_len = int(n * 0.2)
    train_len = n - val_test_len
    val_len = val_test_len // 2
    test_len = val_test_len - val_len
    return [0] * train_len + [1] * val_len + [2] * test_len


LENGTHS = list(range(1, 41)) + [57, 99, 100, 101, 123]


def test_ratio_split_counts_follow_mmrec_rule():
    data = make_dataset(LENGTHS)
    out = ratio_split(data, seed=3)
    for user, n in enumerate(LENGTHS):
        got = Counter(out.interactions.split[out.interactions.users == user].tolist())
        want = Counter(mmrec_labels_for_count(n))
        assert got == want, (n, got, want)


def test_random_order_is_a_seeded_shuffle_within_each_user():
    data = make_dataset([10] * 4)
    first = ratio_split(data, seed=1).interactions.split
    np.testing.assert_array_equal(first, ratio_split(data, seed=1).interactions.split)
    assert not np.array_equal(first, ratio_split(data, seed=2).interactions.split)
    # Over many seeds every interaction of a 10-item user is test about 1/10 of the time.
    test_hits = np.zeros(len(data.interactions))
    n_seeds = 400
    for seed in range(n_seeds):
        test_hits += ratio_split(data, seed=seed).interactions.split == 2
    share = test_hits / n_seeds
    assert np.all(np.abs(share - 0.1) < 0.06), share


@pytest.mark.parametrize("tie_every,float_times", [(0, False), (7, False), (7, True)])
def test_chronological_split_matches_a_per_user_loop(tie_every, float_times):
    data = make_dataset(LENGTHS, tie_every=tie_every, float_times=float_times)
    out = ratio_split(data, order="time")
    inter = data.interactions
    expected = np.full(len(inter), -1)
    rows_of = defaultdict(list)
    for row, user in enumerate(inter.users.tolist()):
        rows_of[user].append(row)
    for user, rows in rows_of.items():
        ordered = sorted(rows, key=lambda r: inter.timestamps[r])  # stable: ties keep row order
        for row, label in zip(ordered, mmrec_labels_for_count(len(rows))):
            expected[row] = label
    np.testing.assert_array_equal(out.interactions.split, expected)


def test_chronological_split_without_timestamps_names_the_field():
    data = make_dataset([5, 6], timestamps=False)
    with pytest.raises(DataError, match="timestamp") as info:
        ratio_split(data, order="time")
    assert info.value.field == "timestamp"


def test_custom_ratios_without_valid():
    data = make_dataset([20, 30, 4])
    out = ratio_split(data, (0.7, 0.0, 0.3), seed=0)
    split, users = out.interactions.split, out.interactions.users
    assert not np.any(split == 1)
    # n=20: floor(6) test; n=30: floor(9) test; n=4 (short): one test.
    assert [int(np.sum((users == u) & (split == 2))) for u in range(3)] == [6, 9, 1]
    assert out.metadata["split_params"]["ratios"] == pytest.approx([0.7, 0.0, 0.3])


def test_split_records_metadata_and_leaves_input_alone():
    data = make_dataset([12, 15])
    before = data.interactions.split.copy()
    out = ratio_split(data, (8, 1, 1), order="random", seed=5)
    np.testing.assert_array_equal(data.interactions.split, before)
    assert out.metadata["split_method"] == "ratio"
    assert out.metadata["split_params"] == {"ratios": [0.8, 0.1, 0.1], "order": "random", "seed": 5,
                                            "short_history": 10}
    assert out.metadata["source"] == "toy.inter"
    json.dumps(out.summary())
    # The rows themselves are unchanged; only labels are new.
    np.testing.assert_array_equal(out.interactions.ratings, data.interactions.ratings)


@pytest.mark.parametrize("bad", [(0.8, 0.1), (0.0, 0.5, 0.5), (1.0, 0.0, 0.0), (0.8, -0.1, 0.3)])
def test_bad_ratios_raise_config_error(bad):
    with pytest.raises(ConfigError):
        ratio_split(make_dataset([12]), bad)


def test_empty_split_is_named():
    with pytest.raises(DataError, match="valid split is empty"):
        ratio_split(make_dataset([2, 2, 1]))  # too short: everything stays in train


def test_keep_given_split_validates_each_split():
    data = make_dataset([6, 6])
    labels = np.array([0, 0, 2, 2] + [0] * 8, np.int8)
    given = data.replace(interactions=Interactions(data.interactions.users, data.interactions.items, labels))
    with pytest.raises(DataError, match="valid") as info:
        keep_given_split(given)
    assert info.value.field == "split['valid']"
    labels[1] = 1
    kept = keep_given_split(data.replace(
        interactions=Interactions(data.interactions.users, data.interactions.items, labels)))
    np.testing.assert_array_equal(kept.interactions.split, labels)
    assert kept.metadata["split_method"] == "given"


@pytest.mark.parametrize("order", ["time", "random"])
def test_leave_one_out(order):
    data = make_dataset([1, 2, 3, 4, 9, 15])
    out = leave_one_out_split(data, order=order, seed=2)
    inter = out.interactions
    for user, n in enumerate([1, 2, 3, 4, 9, 15]):
        rows = np.flatnonzero(inter.users == user)
        labels = inter.split[rows]
        if n < 3:
            assert np.all(labels == 0)
            continue
        assert Counter(labels.tolist()) == Counter({0: n - 2, 1: 1, 2: 1})
        if order == "time":
            ordered = rows[np.argsort(inter.timestamps[rows], kind="stable")]
            assert inter.split[ordered[-1]] == 2 and inter.split[ordered[-2]] == 1
    assert out.metadata["split_method"] == "leave_one_out"


def test_cold_start_item_split_holds_items_out_entirely():
    data = make_dataset([25] * 20, n_items=50)
    out, cold = cold_start_item_split(data, holdout=0.2, seed=4)
    inter = out.interactions
    interacted = np.unique(data.interactions.items)
    n_held = round(0.2 * interacted.size)
    assert cold.valid.size == n_held // 2 and cold.test.size == n_held - n_held // 2
    assert np.intersect1d(cold.valid, cold.test).size == 0
    for item in interacted.tolist():
        labels = set(inter.split[inter.items == item].tolist())
        if item in set(cold.valid.tolist()):
            assert labels == {1}
        elif item in set(cold.test.tolist()):
            assert labels == {2}
        else:
            assert labels == {0}
    back = cold_items(out)
    np.testing.assert_array_equal(back.valid, cold.valid)
    np.testing.assert_array_equal(back.test, cold.test)
    assert isinstance(back, ColdStartItems) and back.all.size == n_held
    json.dumps(out.summary())
    again, _ = cold_start_item_split(data, holdout=0.2, seed=4)
    np.testing.assert_array_equal(again.interactions.split, inter.split)
    other, cold_other = cold_start_item_split(data, holdout=0.2, seed=5)
    assert not np.array_equal(cold_other.all, cold.all)


def test_cold_items_requires_a_cold_split_and_a_new_split_forgets_it():
    data = make_dataset([25] * 8, n_items=30)
    with pytest.raises(DataError, match="cold-start"):
        cold_items(data)
    out, _ = cold_start_item_split(data)
    with pytest.raises(DataError):
        cold_items(ratio_split(out))
    with pytest.raises(ConfigError):
        cold_start_item_split(data, holdout=1.5)


def test_split_dataset_dispatches_by_name():
    data = make_dataset([12, 14, 30])
    np.testing.assert_array_equal(split_dataset(data, "ratio", seed=1).interactions.split,
                                  ratio_split(data, seed=1).interactions.split)
    assert split_dataset(data, "cold_start_items", holdout=0.3).metadata["split_method"] == "cold_start_items"
    with pytest.raises(ConfigError, match="unknown split method"):
        split_dataset(data, "temporal_global")
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['holdout'\] for split method 'ratio'; "
                                          r"it takes \['ratios', 'order', 'seed', 'short_history'\]"):
        split_dataset(data, "ratio", holdout=0.1)
    with pytest.raises(ConfigError, match=r"\['ratios'\] for split method 'cold_start_items'; it takes \['holdout', 'seed'\]"):
        split_dataset(data, "cold_start_items", ratios=[0.8, 0.1, 0.1])


@pytest.mark.parametrize("method, params, message", [
    ("ratio", {"ratios": 0.8}, "ratios must be three finite numbers"),
    ("ratio", {"ratios": "811"}, "ratios must be three finite numbers"),
    ("ratio", {"ratios": ["a", "b", "c"]}, "ratios must be three finite numbers"),
    ("ratio", {"seed": "abc"}, "seed must be an integer >= 0, got 'abc'"),
    ("ratio", {"seed": 1.5}, "seed must be an integer >= 0"),
    ("ratio", {"short_history": "x"}, "short_history must be an integer >= 0"),
    ("leave_one_out", {"seed": -1}, "seed must be an integer >= 0, got -1"),
    ("cold_start_items", {"seed": "abc"}, "seed must be an integer >= 0"),
    ("cold_start_items", {"holdout": "abc"}, "holdout must be in \\(0, 1\\)"),
])
def test_split_parameters_of_the_wrong_kind_are_config_errors(method, params, message):
    # A config's YAML gives any kind of value: these were raw TypeErrors / ValueErrors.
    with pytest.raises(ConfigError, match=message):
        split_dataset(make_dataset([12, 14, 30]), method, **params)


def test_a_config_split_error_names_data_split():
    from jaxrec.train._config import DataConfig
    from jaxrec.train._data import finish_dataset
    with pytest.raises(ConfigError, match="^data.split: seed must be an integer"):
        finish_dataset(make_dataset([12, 14, 30]), DataConfig(split={"method": "ratio", "seed": "x"}))
