"""Data parallelism: pmap and sharded jit on 4 fake CPU devices match the one-device run."""

import json

import jax
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.train import EpochSampler, StepRunner, TrainConfig, init_state, make_optimizer

BATCH = 64
STEPS = 3


@pytest.fixture(scope="module")
def setup():
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py sets XLA_FLAGS for 4 fake CPU devices)")
    dataset = make_synthetic(80, 60, n_interactions=1200, seed=1)
    built = models.build("bprmf", dataset, embedding_size=8)
    sampler = EpochSampler(dataset, batch_size=BATCH, n_negatives=2, seed=0)
    batches = {k: v[:STEPS] for k, v in sampler.batches(0).items()}
    assert batches["weights"].min() == 1.0  # full batches only: no padding rows
    tx = make_optimizer(TrainConfig(learning_rate=0.05), sampler.steps_per_epoch)
    state = init_state(built.module, built.ctx, sampler.example_batch(), tx, seed=0)
    return built, tx, jax.device_get(state), batches


def _train(setup, parallel, weights, calls=1):
    built, tx, state, batches = setup
    runner = StepRunner(built.module, tx, weights, parallel=parallel, batch_size=BATCH)
    state = runner.put_state(state)
    ctx = runner.put_ctx(built.ctx)
    per_call = STEPS // calls
    losses = []
    for start in range(0, STEPS, per_call):
        chunk = {k: v[start:start + per_call] for k, v in batches.items()}
        state, metrics = runner.run(state, ctx, runner.put_batches(chunk))
        losses.extend(np.asarray(metrics.loss).tolist())
    return jax.device_get(runner.get_state(state)), np.array(losses), runner


def _assert_params_close(a, b):
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-5, atol=2e-6)


def test_sharded_jit_matches_one_device(setup):
    weights = {"bpr": 1.0, "reg": 0.5}
    single, single_losses, _ = _train(setup, "none", weights)
    sharded, sharded_losses, runner = _train(setup, "sharded", weights)
    assert runner.n_devices == 4
    _assert_params_close(single, sharded)
    np.testing.assert_allclose(single_losses, sharded_losses, rtol=1e-5)
    assert int(sharded.step) == STEPS
    # The parameters really moved (the comparison is not between two initial states).
    assert not np.allclose(np.asarray(single.params["user_embedding"]),
                           np.asarray(setup[2].params["user_embedding"]))


def test_pmap_matches_one_device(setup):
    # MMRec's EmbLoss (norms, not squared) included: its sums of squares are reduced over the
    # devices before the square root (jaxrec.losses.batch_sum).
    weights = {"bpr": 1.0, "reg": 0.5}
    single, single_losses, _ = _train(setup, "none", weights)
    pmapped, pmap_losses, runner = _train(setup, "pmap", weights)
    assert runner.n_devices == 4
    _assert_params_close(single, pmapped)
    np.testing.assert_allclose(single_losses, pmap_losses, rtol=1e-5)
    assert int(pmapped.step) == STEPS


def test_pmap_on_one_device_runs_the_one_device_step(setup):
    built, tx, state, batches = setup
    weights = {"bpr": 1.0, "reg": 0.5}
    single, single_losses, _ = _train(setup, "none", weights)
    runner = StepRunner(built.module, tx, weights, parallel="pmap", batch_size=BATCH,
                        devices=jax.local_devices()[:1])
    assert runner.parallel == "none" and "single device" in runner.notice
    out, metrics = runner.run(runner.put_state(state), runner.put_ctx(built.ctx), runner.put_batches(batches))
    out = jax.device_get(runner.get_state(out))
    # The same program as "none": bit-identical, not merely close.
    for x, y in zip(jax.tree.leaves(single.params), jax.tree.leaves(out.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    np.testing.assert_array_equal(single_losses, np.asarray(metrics.loss))
    assert StepRunner(built.module, tx, weights, parallel="pmap", batch_size=BATCH).notice is None


def test_one_call_per_step_equals_one_call_per_epoch(setup):
    weights = {"bpr": 1.0, "reg": 0.5}
    scanned, scanned_losses, _ = _train(setup, "none", weights, calls=1)
    stepped, stepped_losses, runner = _train(setup, "none", weights, calls=STEPS)
    _assert_params_close(scanned, stepped)
    np.testing.assert_allclose(scanned_losses, stepped_losses, rtol=1e-6)
    # Calls with the shapes of earlier ones reuse their compiled program.
    compiled = runner._run._cache_size()
    _train(setup, "none", weights, calls=STEPS)
    _train(setup, "none", weights, calls=1)
    assert runner._run._cache_size() == compiled


def test_batch_must_divide_over_devices(setup):
    built, tx, _, _ = setup
    with pytest.raises(ConfigError, match="does not divide over 4 devices"):
        StepRunner(built.module, tx, {"bpr": 1.0, "reg": 1.0}, parallel="pmap", batch_size=66)


@pytest.mark.parametrize("parallel", ["pmap", "sharded"])
def test_whole_runs_in_parallel_modes_match_one_device(tmp_path, parallel):
    from jaxrec.train import config_from_dict, evaluate_run, train_and_evaluate

    dataset = make_synthetic(80, 60, n_interactions=1200, seed=1)
    raw = {"data": {"synthetic": {}}, "model": {"name": "bprmf", "args": {"embedding_size": 8}},
           "train": {"epochs": 2, "batch_size": 128, "learning_rate": 0.05, "checkpoint_every": 1,
                     "valid_metric": "recall@10"},
           "eval": {"ks": [10], "metrics": ["recall"]},
           "loss_weights": {"reg": 1.0}}  # MMRec's EmbLoss too: exact under pmap
    runs = {}
    for mode in ("none", parallel):
        config = config_from_dict({**raw, "train": {**raw["train"], "parallel": mode}})
        runs[mode] = train_and_evaluate(config, tmp_path / mode, dataset=dataset, quiet=True)
    assert runs[parallel]["devices"]["count"] == 4
    # Each epoch ends with a padded batch.
    losses = {mode: [json.loads(line)["loss"] for line in (tmp_path / mode / "history.jsonl").read_text().splitlines()]
              for mode in runs}
    np.testing.assert_allclose(losses[parallel], losses["none"], rtol=1e-5)
    np.testing.assert_allclose(runs[parallel]["test"]["recall@10"], runs["none"]["test"]["recall@10"], atol=0.02)
    # The checkpoint written from replicated state reloads as one copy.
    reloaded = evaluate_run(tmp_path / parallel, "test", dataset=dataset)
    assert reloaded["metrics"] == runs[parallel]["test"]
