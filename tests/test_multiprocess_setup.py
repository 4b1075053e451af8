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
    taken for process 0, no coordinator for process 1 within --distributed-timeout, and a mode
    other than sharded for --num-processes 2 (refused at once: it waited for the other process
    for the whole --distributed-timeout before)."""
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
        other = socket.socket()
        other.bind(("127.0.0.1", 0))
        other_port = other.getsockname()[1]
        other.close()
        base = [sys.executable, "-m", "jaxrec.cli.main", "train", str(config), "--workdir", str(tmp_path / "w")]
        cases = {
            "auto": (base + ["--distributed", "auto"], "--distributed auto: no cluster environment"),
            "taken": (base + ["--coordinator", f"127.0.0.1:{taken.getsockname()[1]}", "--num-processes", "2",
                              "--process-id", "0"], "process 0 cannot listen on port"),
            "absent": (base + ["--coordinator", f"127.0.0.1:{free_port}", "--num-processes", "2", "--process-id",
                               "1", "--distributed-timeout", "2"], "process 1 of 2 could not reach the coordinator"),
            "pmap": (base + ["--set", "train.parallel=pmap", "--coordinator", f"127.0.0.1:{other_port}",
                             "--num-processes", "2", "--process-id", "0", "--distributed-timeout", "120"],
                     "a multi-process run needs train.parallel: sharded (found 'pmap')"),
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


@pytest.mark.parametrize("n, n_shards", [(0, 1), (1, 2), (7, 3), (958, 2), (1000, 7), (5, 8)])
def test_the_train_record_shards_cover_every_record_once_in_order_with_sizes_one_apart(n, n_shards):
    from jaxrec.train._per_process import shard_bounds

    bounds = [shard_bounds(n, i, n_shards) for i in range(n_shards)]
    owner = np.concatenate([np.full(stop - start, i) for i, (start, stop) in enumerate(bounds)]).astype(int)
    # Naive: record k belongs to the shard whose range holds it, scanning the shards in order.
    naive = [next(i for i, (start, stop) in enumerate(bounds) if start <= k < stop) for k in range(n)]
    assert owner.tolist() == naive and len(owner) == n
    assert np.all(np.diff(owner) >= 0)
    sizes = [stop - start for start, stop in bounds]
    assert set(sizes) <= {n // n_shards, -(-n // n_shards)}


@pytest.mark.parametrize("with_extras", [False, True])
def test_train_shards_read_apart_and_joined_in_any_order_give_the_whole_dataset_bitwise(tmp_path, with_extras):
    from jaxrec.data import load_prepared, load_prepared_side, make_synthetic, prepare_tfds, read_train_shard

    dataset = make_synthetic(40, 25, n_interactions=500, seed=6)
    if with_extras:  # ratings and float64 timestamps travel through the shards too
        inter = dataset.interactions
        rng = np.random.default_rng(0)
        dataset = dataset.replace(interactions=type(inter)(inter.users, inter.items, inter.split,
                                                           rng.random(len(inter.users)).astype(np.float32),
                                                           rng.random(len(inter.users)) * 1e9))
    prepare_tfds(dataset, tmp_path, name="shards")
    train = dataset.split_pairs("train")
    shards = [read_train_shard(tmp_path, "shards", None, i, 3) for i in range(3)]
    assert all(total == len(train) for _, total in shards)
    for i, (columns, _) in enumerate(shards):
        start, stop = len(train) * i // 3, len(train) * (i + 1) // 3
        # Train record k is the k-th train interaction in dataset order.
        np.testing.assert_array_equal(np.stack([columns["user"], columns["item"]], 1), train[start:stop])
        positions = np.flatnonzero(dataset.interactions.split == 0)[start:stop]
        np.testing.assert_array_equal(columns["index"], positions)
    joined = {key: np.concatenate([shards[i][0][key] for i in (2, 0, 1)]) for key in shards[0][0]}
    rebuilt, whole = load_prepared_side(tmp_path, "shards", None, joined), load_prepared(tmp_path, "shards")
    for field in ("users", "items", "split", "ratings", "timestamps"):
        a, b, c = (getattr(d.interactions, field) for d in (rebuilt, whole, dataset))
        if c is None:
            assert a is None and b is None
        else:
            assert a.dtype == c.dtype and np.array_equal(a, c) and np.array_equal(b, c), field
    for name, modality in dataset.modalities.items():
        np.testing.assert_array_equal(rebuilt.modalities[name].features, modality.features)
    # A shard missing: the coverage check names the interactions left out.
    from jaxrec.errors import DataError

    with pytest.raises(DataError, match="exactly once"):
        load_prepared_side(tmp_path, "shards", None, shards[0][0])


def _example(fields: dict[str, bytes]) -> bytes:
    from tensorflow_datasets.proto import tf_example_pb2

    example = tf_example_pb2.Example()
    for key in fields:
        example.features.feature[key].bytes_list.value.append(fields[key])
    return example.SerializeToString(deterministic=True)


def _hand_encoded_example(fields: list[tuple[str, bytes]]) -> bytes:
    """A tf.train.Example written by hand, its map entries in the order given (protobuf's own
    serializer sorts them)."""

    def delimited(number: int, payload: bytes) -> bytes:
        size, varint = len(payload), b""
        while True:
            varint += bytes([(size & 0x7F) | (0x80 if size > 0x7F else 0)])
            size >>= 7
            if not size:
                break
        return bytes([number << 3 | 2]) + varint + payload

    entries = b"".join(delimited(1, delimited(1, key.encode()) + delimited(2, delimited(1, delimited(1, value))))
                       for key, value in fields)
    return delimited(1, entries)


def test_the_fixed_layout_decoding_equals_parsing_every_record_and_declines_what_it_cannot_prove():
    from types import SimpleNamespace

    from jaxrec.data._tfds_reader import _fixed_layout_columns

    infos = {"index": SimpleNamespace(np_dtype=np.int64, shape=()), "user": SimpleNamespace(np_dtype=np.int32, shape=()),
             "vec": SimpleNamespace(np_dtype=np.float32, shape=(3,))}
    rng = np.random.default_rng(2)
    rows = [{"index": np.int64(i).tobytes(), "user": np.int32(rng.integers(0, 2**31 - 1)).tobytes(),
             "vec": rng.standard_normal(3).astype(np.float32).tobytes()} for i in range(300)]
    # Large values make protobuf varint lengths differ by record in nothing here: all fields are bytes.
    columns = _fixed_layout_columns([_example(r) for r in rows], infos)
    assert columns is not None, "records of one fixed layout were declined (fell back to parsing)"
    np.testing.assert_array_equal(columns["index"], np.arange(300))
    np.testing.assert_array_equal(columns["user"], [np.frombuffer(r["user"], np.int32)[0] for r in rows])
    np.testing.assert_array_equal(columns["vec"], np.stack([np.frombuffer(r["vec"], np.float32) for r in rows]))
    assert columns["vec"].shape == (300, 3) and columns["index"].dtype == np.int64
    # Declined: a record whose fields are in another order (same length), a value of another
    # length, a missing field, an unknown field, an object column.
    from tensorflow_datasets.proto import tf_example_pb2

    swapped = [_example(r) for r in rows[:5]] + [_hand_encoded_example([(k, rows[5][k]) for k in ("vec", "user", "index")])]
    assert swapped[0] == _hand_encoded_example(list(rows[0].items()))  # the encoder writes what protobuf writes
    parsed = tf_example_pb2.Example.FromString(swapped[5]).features.feature
    assert parsed["user"].bytes_list.value[0] == rows[5]["user"]
    assert len({len(r) for r in swapped}) == 1 and _fixed_layout_columns(swapped, infos) is None
    assert _fixed_layout_columns([_example(rows[0]), _example({**rows[1], "user": b"\0" * 5})], infos) is None
    assert _fixed_layout_columns([_example({k: v for k, v in rows[0].items() if k != "vec"})], infos) is None
    assert _fixed_layout_columns([_example({**rows[0], "extra": b"1234"})], infos) is None
    assert _fixed_layout_columns([_example(rows[0])], {**infos, "id": SimpleNamespace(np_dtype=np.object_, shape=())}) \
        is None


def test_per_process_read_settings_are_checked():
    from jaxrec.train._config import DataConfig, config_from_dict
    from jaxrec.train._per_process import enabled

    with pytest.raises(ConfigError, match="data.per_process_read"):
        config_from_dict({"model": {"name": "bprmf"}, "data": {"synthetic": {}, "per_process_read": "yes"}})
    assert config_from_dict({"model": {"name": "bprmf"},
                             "data": {"synthetic": {}, "per_process_read": True}}).data.per_process_read is True
    with pytest.raises(ConfigError, match="per_process_read: true needs a dataset prepared"):
        enabled(DataConfig(synthetic={}, per_process_read=True))
    # auto and one process: off; false: off whatever the data.
    assert not enabled(DataConfig(synthetic={}))
    assert not enabled(DataConfig(path="/nonexistent", format="tfds", per_process_read=False))
    assert enabled(DataConfig(path="/nonexistent", format="tfds", per_process_read=True))
