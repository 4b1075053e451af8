"""train.sampler: device -- epoch order and negatives drawn on device inside the train program.

Checked against naive numpy/python: the order is a bijection, each epoch covers every pair
exactly once (padding at weight 0), negatives avoid the user's positives and stay in the pool,
their frequencies match the naive per-user probabilities (chi-square), the fused epoch program
makes the updates of the same batches fed from the host (one device, pmap, sharded), same
seed -> same run, and a short BPR run learns as well as with the host sampler.
"""

import collections
import dataclasses
import json

import jax
import numpy as np
import pytest
from scipy import stats

from jaxrec import models
from jaxrec.data import DeviceTrainBatches, make_synthetic, popularity_masses
from jaxrec.data import PositiveSets
from jaxrec.errors import ConfigError, DataError
from jaxrec.train import EpochSampler, StepRunner, TrainConfig, config_from_dict, init_state, make_optimizer
from jaxrec.train import train_and_evaluate

N_USERS, N_ITEMS = 30, 40


def _pairs(seed=0):
    """Random train pairs where items 35..39 never occur (so the 'trained' pool is a strict subset)."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(N_USERS):
        degree = rng.integers(1, 12)
        chosen = rng.choice(35, size=degree, replace=False, p=np.linspace(1, 3, 35) / np.linspace(1, 3, 35).sum())
        users += [user] * degree
        items += chosen.tolist()
    return np.array(users), np.array(items)


@jax.jit
def _order(arrays, epoch):
    return arrays.order(epoch)


@pytest.mark.parametrize("n_pairs,batch_size", [(1, 4), (7, 3), (12, 4), (100, 16), (5, 64)])
def test_order_is_a_bijection_with_wrapping_padding(n_pairs, batch_size):
    users = np.arange(n_pairs) % 5
    items = np.arange(n_pairs) // 5
    batches = DeviceTrainBatches(users, items, n_users=5, n_items=n_pairs // 5 + 2, batch_size=batch_size,
                                 negative_items="all")
    steps = -(-n_pairs // batch_size)
    assert len(batches) == steps
    for epoch in (0, 3):
        order = np.asarray(_order(jax.device_put(batches.arrays), epoch))
        assert order.shape == (steps * batch_size,)
        assert sorted(order[:n_pairs].tolist()) == list(range(n_pairs))  # every pair exactly once
        for position in range(n_pairs, steps * batch_size):  # padding wraps to the epoch's first pairs
            assert order[position] == order[position % n_pairs]
    if n_pairs > 3:
        first, other = (np.asarray(_order(jax.device_put(batches.arrays), e))[:n_pairs] for e in (0, 1))
        assert not np.array_equal(first, other)


def test_vectorized_steps_are_the_step_by_step_batches():
    users, items = _pairs()
    arrays = jax.device_put(DeviceTrainBatches(users, items, n_users=N_USERS, n_items=N_ITEMS, batch_size=16,
                                               n_neg=2, seed=1, distribution="popularity").arrays)
    stacked = jax.jit(lambda a: a.epoch_batches(2))(arrays)
    one = jax.jit(lambda a, step: a.batch(a.order(2), 2, step))
    for step in range(arrays.steps):
        for key, value in one(arrays, step).items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(stacked[key][step]))


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
@pytest.mark.parametrize("negative_items", ["trained", "all"])
def test_each_epoch_covers_every_pair_once_and_negatives_are_allowed(distribution, negative_items):
    users, items = _pairs()
    batches = DeviceTrainBatches(users, items, n_users=N_USERS, n_items=N_ITEMS, batch_size=16, n_neg=3, seed=4,
                                 distribution=distribution, negative_items=negative_items)
    positives = collections.defaultdict(set)
    for u, i in zip(users, items):
        positives[int(u)].add(int(i))
    pool = set(items.tolist()) if negative_items == "trained" else set(range(N_ITEMS))
    seen_negatives = set()
    for epoch in range(3):
        stacked = batches.epoch_stacked(epoch)
        assert stacked["neg_items"].shape == (len(batches), 16, 3)
        real = stacked["weights"].reshape(-1) == 1.0
        assert set(np.unique(stacked["weights"]).tolist()) <= {0.0, 1.0}
        assert real.sum() == users.size and real[:users.size].all()  # padding only at the end
        drawn = collections.Counter(zip(stacked["users"].reshape(-1)[real].tolist(),
                                        stacked["pos_items"].reshape(-1)[real].tolist()))
        assert drawn == collections.Counter(zip(users.tolist(), items.tolist()))
        for user, negatives in zip(stacked["users"].reshape(-1), stacked["neg_items"].reshape(-1, 3)):
            for item in negatives.tolist():
                assert item not in positives[int(user)] and item in pool
                seen_negatives.add(item)
    if negative_items == "all" and distribution == "uniform":
        assert seen_negatives & set(range(35, 40))  # untrained items are drawn when allowed


def _naive_probabilities(users, items, user, distribution, negative_items):
    weights = np.bincount(items, minlength=N_ITEMS).astype(float) if distribution == "popularity" \
        else np.ones(N_ITEMS)
    allowed = np.ones(N_ITEMS, bool)
    allowed[items[users == user]] = False
    if negative_items == "trained":
        allowed &= np.isin(np.arange(N_ITEMS), items)
    p = weights * allowed
    return p / p.sum()


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
@pytest.mark.parametrize("negative_items", ["trained", "all"])
def test_negative_frequencies_match_the_naive_probabilities(distribution, negative_items):
    users, items = _pairs(1)
    batches = DeviceTrainBatches(users, items, n_users=N_USERS, n_items=N_ITEMS, batch_size=8, n_neg=2, seed=3,
                                 distribution=distribution, negative_items=negative_items)
    draws = 8000
    degrees = np.bincount(users, minlength=N_USERS)
    for user in (int(np.argmax(degrees)), int(np.argmin(degrees))):
        # The epoch program's own arrays, with every pair replaced by one of this user's: one batch of all draws.
        arrays = dataclasses.replace(batches.arrays, users=np.full(draws, user, np.int32),
                                     items=np.zeros(draws, np.int32), batch_size=draws, steps=1)
        stacked = jax.jit(lambda a: a.epoch_batches(0))(arrays)
        observed = np.bincount(np.asarray(stacked["neg_items"]).reshape(-1), minlength=N_ITEMS)
        expected = _naive_probabilities(users, items, user, distribution, negative_items) * observed.sum()
        assert observed[expected == 0].sum() == 0
        keep = expected > 0
        result = stats.chisquare(observed[keep], expected[keep])
        assert result.pvalue > 1e-3, (user, result)


def test_popularity_masses_are_exact_integers_and_reject_bad_weights():
    sets = PositiveSets.from_pairs([0, 0, 1], [1, 3, 0], n_users=2, n_items=4)
    cdf, local = popularity_masses(sets, np.array([2, 5, 0, 7]))
    assert cdf.tolist() == [2, 7, 7, 14]
    assert local.tolist() == [5, 12, 2]  # user 0: items 1, 3 -> 5, 5 + 7; user 1: item 0 -> 2
    with pytest.raises(DataError, match="integer weight"):
        popularity_masses(sets, np.array([0.5, 1, 1, 1]))


def test_a_user_without_possible_negatives_is_named():
    with pytest.raises(DataError, match="every item among its positives"):
        DeviceTrainBatches([0, 0, 1], [0, 1, 0], n_users=2, n_items=2, batch_size=2, negative_items="all")


@pytest.fixture(scope="module")
def small_model():
    dataset = make_synthetic(80, 60, n_interactions=1200, seed=1)
    built = models.build("bprmf", dataset, embedding_size=8)
    sampler = EpochSampler(dataset, batch_size=64, n_negatives=2, seed=0, sampler="device")
    tx = make_optimizer(TrainConfig(learning_rate=0.05), sampler.steps_per_epoch)
    state = jax.device_get(init_state(built.module, built.ctx, sampler.example_batch(), tx, seed=0))
    return built, sampler, tx, state


def _fused(small_model, parallel, epochs=2, per_call=None):
    built, sampler, tx, state = small_model
    weights = {"bpr": 1.0, "reg": 0.5}
    runner = StepRunner(built.module, tx, weights, parallel=parallel, batch_size=64,
                        steps_per_epoch=sampler.steps_per_epoch)
    state, ctx, arrays = runner.put_state(state), runner.put_ctx(built.ctx), runner.put_sampler(sampler.device_arrays)
    per_call = per_call or sampler.steps_per_epoch
    losses = []
    for epoch in range(epochs):
        for first in range(0, sampler.steps_per_epoch, per_call):
            n = min(per_call, sampler.steps_per_epoch - first)
            state, metrics = runner.run_sampled(state, ctx, arrays, epoch, first, n)
            losses += np.asarray(metrics.loss).tolist()
    return jax.device_get(runner.get_state(state)), np.array(losses), runner


def _host_fed(small_model, epochs=2):
    built, sampler, tx, state = small_model
    runner = StepRunner(built.module, tx, {"bpr": 1.0, "reg": 0.5}, batch_size=64)
    state, ctx, losses = runner.put_state(state), runner.put_ctx(built.ctx), []
    for epoch in range(epochs):
        state, metrics = runner.run(state, ctx, runner.put_batches(sampler.batches(epoch)))
        losses += np.asarray(metrics.loss).tolist()
    return jax.device_get(state), np.array(losses)


def _assert_close(a, b):
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)


def test_fused_epochs_make_the_updates_of_the_same_batches_fed_from_the_host(small_model):
    host, host_losses = _host_fed(small_model)
    fused, fused_losses, _ = _fused(small_model, "none")
    chunked, chunked_losses, _ = _fused(small_model, "none", per_call=4)  # steps_per_call: a shorter last call
    assert int(fused.step) == 2 * small_model[1].steps_per_epoch
    for state, losses in ((fused, fused_losses), (chunked, chunked_losses)):
        _assert_close(host, state)
        np.testing.assert_allclose(losses, host_losses, rtol=1e-5)
    assert not np.allclose(np.asarray(host.params["user_embedding"]),
                           np.asarray(small_model[3].params["user_embedding"]))


@pytest.mark.parametrize("parallel", ["pmap", "sharded"])
def test_fused_epochs_on_four_devices_match_one_device(small_model, parallel):
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py sets XLA_FLAGS for 4 fake CPU devices)")
    single, single_losses, _ = _fused(small_model, "none")
    multi, multi_losses, runner = _fused(small_model, parallel)
    assert runner.n_devices == 4
    _assert_close(single, multi)
    np.testing.assert_allclose(single_losses, multi_losses, rtol=1e-5)


DATA_ARGS = dict(n_users=150, n_items=100, n_interactions=3000, seed=7)
RAW = {
    "data": {"synthetic": DATA_ARGS},
    "model": {"name": "bprmf", "args": {"embedding_size": 16}},
    "train": {"epochs": 10, "batch_size": 256, "learning_rate": 0.05, "patience": 20, "seed": 5,
              "checkpoint_every": 4, "sampler": "device"},
    "eval": {"ks": [20], "metrics": ["recall", "ndcg"]},
}


def _run(tmp_path, name, **train):
    config = config_from_dict({**RAW, "train": {**RAW["train"], **train}})
    metrics = train_and_evaluate(config, tmp_path / name, dataset=make_synthetic(**DATA_ARGS), quiet=True)
    rows = [json.loads(line) for line in (tmp_path / name / "history.jsonl").read_text().splitlines()]
    return metrics, [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


def test_device_sampler_runs_are_deterministic_and_learn_like_shuffle(tmp_path):
    metrics, history = _run(tmp_path, "device")
    again, again_history = _run(tmp_path, "again")
    assert history == again_history
    assert again["test"] == metrics["test"] and again["valid"] == metrics["valid"]
    _, other_seed = _run(tmp_path, "other", seed=6)
    assert other_seed[0]["loss"] != history[0]["loss"]
    shuffle, _ = _run(tmp_path, "shuffle", sampler="shuffle")
    # Same model, data and budget: the two samplers draw the same distribution, so the
    # accuracy is comparable (not equal: different draws); both far above chance (20/100 items).
    device_recall, shuffle_recall = metrics["test"]["recall@20"], shuffle["test"]["recall@20"]
    assert abs(device_recall - shuffle_recall) <= 0.15 * shuffle_recall, (device_recall, shuffle_recall)
    chance = 20 / 100
    assert device_recall > 1.6 * chance and shuffle_recall > 1.6 * chance
    assert history[-1]["loss"] < history[0]["loss"]


def test_config_accepts_device_and_names_it_in_errors():
    assert config_from_dict({**RAW}).train.sampler == "device"
    with pytest.raises(ConfigError, match="device"):
        config_from_dict({**RAW, "train": {**RAW["train"], "sampler": "gpu"}})


def test_the_mesh_runner_falls_back_to_host_fed_device_batches_with_a_notice(tmp_path):
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py sets XLA_FLAGS for 4 fake CPU devices)")
    short = {"epochs": 2, "checkpoint_every": 2}
    fused, fused_history = _run(tmp_path, "fused", **short)
    mesh, mesh_history = _run(tmp_path, "mesh", parallel="sharded", mesh={"data": 2, "model": 2}, **short)
    assert "no fused epoch program" in (tmp_path / "mesh" / "log.txt").read_text()
    assert "no fused epoch program" not in (tmp_path / "fused" / "log.txt").read_text()
    # The same batches: the same losses as the fused one-device program (up to float summation order).
    np.testing.assert_allclose([row["loss"] for row in mesh_history], [row["loss"] for row in fused_history],
                               rtol=1e-4)
