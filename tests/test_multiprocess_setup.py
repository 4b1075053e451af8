"""The keyed epoch sampler (each process builds only its rows) and the launch-argument checks.

The multi-process runs themselves are in ``test_multiprocess.py``; here everything runs in
one process: the property that makes them agree (any split of a global batch into row
ranges rebuilds the same batch), the sampled distributions against counts made in numpy,
and the checks of the command-line arguments.
"""

import itertools

import numpy as np
import pytest

from jaxrec.data import KeyedTrainBatches, PositiveSets
from jaxrec.data._keyed_batches import keyed_uniforms
from jaxrec.errors import ConfigError
from jaxrec.train._data import EpochSampler
from jaxrec.train._distributed import check_arguments


def _pairs(seed=0, n_users=30, n_items=12, n=200):
    rng = np.random.default_rng(seed)
    keys = np.unique(rng.integers(0, n_users, n) * n_items + rng.integers(0, n_items, n))
    return np.stack([keys // n_items, keys % n_items], 1).astype(np.int64), n_users, n_items


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_any_split_of_the_batch_rows_rebuilds_the_same_epoch(distribution):
    pairs, n_users, n_items = _pairs()
    batches = KeyedTrainBatches(pairs, n_users=n_users, n_items=n_items, batch_size=48, n_neg=3, seed=5,
                                distribution=distribution)
    whole = batches.epoch_rows(2)
    for cuts in ([0, 24, 48], [0, 12, 24, 36, 48], [0, 5, 48]):  # 2 and 4 equal processes, and uneven rows
        parts = [batches.epoch_rows(2, slice(a, b)) for a, b in itertools.pairwise(cuts)]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts], axis=1), whole[key])
    # A fresh sampler (another process) draws the same; another epoch draws differently.
    again = KeyedTrainBatches(pairs, n_users=n_users, n_items=n_items, batch_size=48, n_neg=3, seed=5,
                              distribution=distribution).epoch_rows(2)
    for key in whole:
        np.testing.assert_array_equal(again[key], whole[key])
    assert not np.array_equal(batches.epoch_rows(3)["neg_items"], whole["neg_items"])


def test_large_row_sets_drawn_grouped_by_user_equal_small_ones():
    # Over 65536 rows the negatives are drawn with the queries grouped by user; each half of
    # the batch (under the threshold) is drawn in row order: the same rows either way.
    pairs, n_users, n_items = _pairs(3, n_users=2000, n_items=500, n=90_000)
    batches = KeyedTrainBatches(pairs, n_users=n_users, n_items=n_items, batch_size=8192, n_neg=1, seed=2)
    whole = batches.epoch_rows(0)
    assert whole["users"].size > 65536 and whole["users"].size // 2 < 65536
    halves = [batches.epoch_rows(0, slice(0, 4096)), batches.epoch_rows(0, slice(4096, 8192))]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves], axis=1), whole[key])


def test_every_pair_once_per_epoch_padding_weighs_zero_and_negatives_avoid_positives():
    pairs, n_users, n_items = _pairs(1)
    n = len(pairs)
    batches = KeyedTrainBatches(pairs, n_users=n_users, n_items=n_items, batch_size=64, n_neg=2, seed=0)
    rows = batches.epoch_rows(0)
    assert rows["users"].shape == (len(batches), 64) == (-(-n // 64), 64)
    assert rows["neg_items"].shape == (len(batches), 64, 2)
    weights = rows["weights"].reshape(-1)
    np.testing.assert_array_equal(weights, (np.arange(weights.size) < n).astype(np.float32))
    real = weights == 1
    seen = rows["users"].reshape(-1)[real].astype(np.int64) * n_items + rows["pos_items"].reshape(-1)[real]
    np.testing.assert_array_equal(np.sort(seen), np.sort(pairs[:, 0] * n_items + pairs[:, 1]))
    positives = {(int(u), int(i)) for u, i in pairs}
    users = np.repeat(rows["users"].reshape(-1), 2)
    assert not any((int(u), int(i)) in positives for u, i in zip(users, rows["neg_items"].reshape(-1)))


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_negatives_follow_the_distribution_over_non_positives(distribution):
    # One user with positives {0, 3}; 6 items; popularity from the other users' pairs.
    pairs = np.array([[0, 0], [0, 3], [1, 1], [1, 2], [2, 2], [3, 2], [3, 5], [4, 4]])
    batches = KeyedTrainBatches(pairs, n_users=5, n_items=6, batch_size=8, n_neg=50, seed=1,
                                distribution=distribution)
    counts = np.zeros(6)
    for epoch in range(300):
        rows = batches.epoch_rows(epoch)
        counts += np.bincount(rows["neg_items"][rows["users"] == 0].reshape(-1), minlength=6)
    weights = np.ones(6) if distribution == "uniform" else np.bincount(pairs[:, 1], minlength=6).astype(float)
    weights[[0, 3]] = 0
    expected = counts.sum() * weights / weights.sum()
    assert counts[0] == counts[3] == 0
    keep = expected > 0
    chi2 = float(np.sum((counts[keep] - expected[keep]) ** 2 / expected[keep]))
    assert chi2 < 20.5, (counts, expected)  # chi-square, <= 3 degrees of freedom: p < 1e-3


def test_keyed_uniforms_are_uniform_and_pure():
    u = keyed_uniforms(7, 3, np.arange(100_000, dtype=np.uint64), 0)
    assert u.min() >= 0 and u.max() < 1
    hist = np.histogram(u, bins=10, range=(0, 1))[0]
    assert np.all(np.abs(hist - 10_000) < 500)
    np.testing.assert_array_equal(u[500:600], keyed_uniforms(7, 3, np.arange(500, 600, dtype=np.uint64), 0))
    assert not np.array_equal(u[:100], keyed_uniforms(7, 4, np.arange(100, dtype=np.uint64), 0))
    assert not np.array_equal(u[:100], keyed_uniforms(7, 3, np.arange(100, dtype=np.uint64), 1))


def test_positives_given_are_the_ones_avoided():
    pairs, n_users, n_items = _pairs(2)
    extra = PositiveSets.from_pairs(np.r_[pairs[:, 0], 0], np.r_[pairs[:, 1], 11], n_users=n_users, n_items=n_items)
    batches = KeyedTrainBatches(pairs, n_users=n_users, n_items=n_items, batch_size=32, n_neg=4, positives=extra)
    for epoch in range(20):
        rows = batches.epoch_rows(epoch)
        assert not np.any(rows["neg_items"][rows["users"] == 0] == 11)


@pytest.mark.parametrize("sampler", ["shuffle", "keyed"])
def test_epoch_sampler_rows_are_a_slice_of_the_global_batches(sampler):
    from jaxrec.data import make_synthetic

    dataset = make_synthetic(40, 30, n_interactions=400, seed=0)
    epochs = EpochSampler(dataset, batch_size=32, n_negatives=2, seed=4, sampler=sampler)
    whole = epochs.batches(1)
    halves = [epochs.batches(1, slice(0, 16)), epochs.batches(1, slice(16, 32))]
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([h[key] for h in halves], axis=1), whole[key])
    with pytest.raises(ConfigError, match="train.sampler"):
        EpochSampler(dataset, batch_size=32, sampler="random")


@pytest.mark.parametrize("args, message", [
    (("127.0.0.1:1234", None, 0, False), "missing --num-processes"),
    ((None, 2, None, False), "missing --coordinator, --process-id"),
    (("127.0.0.1", 2, 0, False), "expected HOST:PORT"),
    (("127.0.0.1:70000", 2, 0, False), "port in 1..65535"),
    (("127.0.0.1:1234", 2, 2, False), r"--process-id must be in \[0, 2\)"),
    (("127.0.0.1:1234", 0, 0, False), "--num-processes must be >= 1"),
    (("127.0.0.1:1234", 2, 0, True), "do not also pass"),
])
def test_launch_arguments_are_checked(args, message):
    with pytest.raises(ConfigError, match=message):
        check_arguments(*args)


def test_complete_launch_arguments_pass():
    check_arguments("node001:1234", 4, 3, False)
    check_arguments("[::1]:1234", 2, 0, False)
    check_arguments(None, None, None, False)
    check_arguments(None, None, None, True)


def test_launch_failures_are_one_line_errors_naming_the_flag(tmp_path):
    """Run as `jaxrec train` children (JAX aborts a process it cannot connect, so these are
    checked before joining): no cluster for --distributed auto, a coordinator port already
    taken for process 0, no coordinator for process 1 within --distributed-timeout."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "bprmf"}, "data": {"synthetic": {"n_users": 20, "n_items": 10, "n_interactions": 100}},
                                      "train": {"parallel": "sharded", "epochs": 1}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI", "KUBERNETES_"))}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    taken = socket.socket()
    free = socket.socket()
    try:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        free.bind(("127.0.0.1", 0))
        free_port = free.getsockname()[1]
        free.close()  # nothing listens there: process 1 finds no coordinator
        base = [sys.executable, "-m", "jaxrec.cli.main", "train", str(config), "--workdir", str(tmp_path / "w")]
        cases = {
            "auto": (base + ["--distributed", "auto"], "--distributed auto: no cluster environment"),
            "taken": (base + ["--coordinator", f"127.0.0.1:{taken.getsockname()[1]}", "--num-processes", "2",
                              "--process-id", "0"], "process 0 cannot listen on port"),
            "absent": (base + ["--coordinator", f"127.0.0.1:{free_port}", "--num-processes", "2", "--process-id",
                               "1", "--distributed-timeout", "2"], "process 1 of 2 could not reach the coordinator"),
        }
        children = {name: subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True) for name, (command, _) in cases.items()}
        try:
            for name, child in children.items():
                _, err = child.communicate(timeout=180)
                assert child.returncode == 1, (name, err)
                assert cases[name][1] in err and "Traceback" not in err, (name, err)
                assert len(err.strip().splitlines()) == 1, (name, err)
        finally:
            for child in children.values():
                if child.poll() is None:
                    child.kill()
                    child.wait(30)
    finally:
        taken.close()
    assert not (tmp_path / "w").exists()


def test_processes_reading_only_their_rows_from_the_prepared_records_rebuild_the_in_memory_epoch(tmp_path):
    # The train split of a prepared (array_record) dataset, read by random access: each of two
    # "processes" reads only the records of its half of every batch, and together they rebuild
    # the epoch drawn from the in-memory pairs (the same global batches whatever the process count).
    from jaxrec.data import make_synthetic, prepare_tfds
    from jaxrec.data._tfds_reader import PreparedTrainPairs
    from jaxrec.errors import DataError

    dataset = make_synthetic(50, 30, n_interactions=700, seed=4)
    prepare_tfds(dataset, tmp_path, name="keyed")
    train = dataset.split_pairs("train")
    positives = PositiveSets.from_pairs(train[:, 0], train[:, 1], n_users=50, n_items=30)
    options = {"n_users": 50, "n_items": 30, "batch_size": 64, "n_neg": 2, "seed": 7, "positives": positives}
    whole = KeyedTrainBatches(train, **options).epoch_rows(1)
    parts, reads = [], []
    for rows in (slice(0, 32), slice(32, 64)):
        store = PreparedTrainPairs(tmp_path, "keyed")
        assert len(store) == len(train)
        np.testing.assert_array_equal(store[np.array([0, 5, len(train) - 1])], train[[0, 5, len(train) - 1]])
        store.records_read = 0
        batches = KeyedTrainBatches(store, **options)
        parts.append(batches.epoch_rows(1, rows))
        # Only the pairs at this process's positions were read.
        positions = np.arange(len(batches))[:, None] * 64 + np.arange(64)[rows][None, :]
        assert store.records_read == np.unique(batches.order(1)[positions.reshape(-1) % len(train)]).size
        reads.append(store.records_read)
    for key in whole:
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts], axis=1), whole[key])
    assert all(r < len(train) for r in reads) and sum(reads) >= len(train)
    with pytest.raises(DataError, match="out of range"):
        store[np.array([len(train)])]
