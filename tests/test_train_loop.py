"""train_and_evaluate: determinism, resume after a hard kill, outputs, early stopping, guards."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from jaxrec.data import make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.train import Checkpoints, config_from_dict, dump_config, load_config, train_and_evaluate
from jaxrec.train import prepare_experiment

from _scripted_validation import parameter_fingerprint, script_validation

DATA_ARGS = dict(n_users=120, n_items=80, n_interactions=2400, seed=2)
RAW = {
    "data": {"synthetic": DATA_ARGS},
    "model": {"name": "bprmf", "args": {"embedding_size": 8}},
    "train": {"epochs": 6, "batch_size": 256, "learning_rate": 0.02, "patience": 10, "seed": 5,
              "checkpoint_every": 2},
    "eval": {"ks": [10, 20], "metrics": ["recall", "ndcg", "precision", "map"]},
    "loss_weights": {"reg": 0.01},
}


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(**DATA_ARGS)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, dataset):
    """One uninterrupted run that several tests compare against."""
    workdir = tmp_path_factory.mktemp("reference")
    metrics = train_and_evaluate(config_from_dict(RAW), workdir, dataset=dataset, quiet=True)
    return workdir, metrics


def _without_timing(metrics):
    return {k: v for k, v in metrics.items() if k != "timing"}


def _clock_reading(value) -> bool:
    """A duration as the run records it: a finite non-negative float (its value is the clock's)."""
    return isinstance(value, float) and math.isfinite(value) and value >= 0


def _history(workdir):
    rows = [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]


def test_outputs_of_a_run(reference):
    workdir, metrics = reference
    assert metrics["epochs_run"] == 6 and 1 <= metrics["best_epoch"] <= 6
    assert set(metrics["test"]) == {f"{m}@{k}" for m in ("recall", "ndcg", "precision", "map") for k in (10, 20)}
    assert metrics["valid"]["recall@20"] == max(row["valid"]["recall@20"] for row in _history(workdir))
    assert metrics["n_params"] == (120 + 80) * 8
    assert metrics["devices"]["count"] == 1 and metrics["devices"]["parallel"] == "none"
    # wall-clock readings: only their presence and form are checked (their values are the clock's)
    timing = metrics["timing"]
    assert {"train_seconds_per_epoch", "eval_seconds", "total_seconds"} <= set(timing)
    assert all(_clock_reading(timing[k]) for k in ("train_seconds_per_epoch", "eval_seconds", "total_seconds"))
    assert json.loads((workdir / "metrics.json").read_text()) == metrics
    history = _history(workdir)
    assert [row["epoch"] for row in history] == [1, 2, 3, 4, 5, 6]
    assert set(history[0]) >= {"epoch", "loss", "terms", "valid", "best_epoch"}
    assert set(history[0]["terms"]) == {"bpr", "reg"}
    np.testing.assert_allclose(history[0]["loss"], history[0]["terms"]["bpr"] + 0.01 * history[0]["terms"]["reg"],
                               rtol=1e-5)
    assert history[-1]["loss"] < history[0]["loss"]
    saved = yaml.safe_load((workdir / "config.yaml").read_text())
    assert saved["train"]["learning_rate"] == 0.02 and saved["model"]["args"] == {"embedding_size": 8}
    assert load_config(workdir / "config.yaml").train.seed == 5
    assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "epoch 6" in (workdir / "log.txt").read_text()


def test_test_every_epoch_ranks_test_beside_valid_and_steers_nothing(reference, dataset, tmp_path):
    """eval.test_every_epoch: every history row also holds the test split's metrics (from the
    encoding valid's ranking used); the run is otherwise the reference's, bit for bit (valid rows,
    losses, best epoch, the reported valid and test), and the best epoch's row holds exactly the
    test metrics the run reports, which the end of the run recomputes on the restored best state; a
    killed and resumed run ends with the same rows."""
    from jaxrec.train import evaluate_run

    ref_dir, ref_metrics = reference
    raw = {**RAW, "eval": {**RAW["eval"], "test_every_epoch": True}}
    workdir = tmp_path / "run"
    metrics = train_and_evaluate(config_from_dict(raw), workdir, dataset=dataset, quiet=True)
    assert _without_timing(metrics) == _without_timing(ref_metrics)
    history = _history(workdir)
    assert [{k: v for k, v in row.items() if k != "test"} for row in history] == _history(ref_dir)
    assert all(set(row["test"]) == set(metrics["test"]) for row in history)
    assert len({row["test"]["recall@20"] for row in history}) > 1  # each epoch its own parameters
    best_row = history[metrics["best_epoch"] - 1]
    assert best_row["epoch"] == metrics["best_epoch"] and best_row["test"] == metrics["test"]
    assert evaluate_run(workdir, "test", dataset=dataset)["metrics"] == best_row["test"]
    rows = [json.loads(line) for line in (workdir / "history.jsonl").read_text().splitlines()]
    assert all(_clock_reading(row["eval_seconds"]) for row in rows)
    # Killed after epoch 3 (its newest checkpoint: epoch 2) and resumed: the same rows, test included.
    from jaxrec.train import TrainHooks

    def stop(epoch, row):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config_from_dict(raw), tmp_path / "killed", dataset=dataset, quiet=True,
                           hooks=TrainHooks(on_epoch_end=stop))
    resumed = train_and_evaluate(config_from_dict(raw), tmp_path / "killed", dataset=dataset, quiet=True, resume=True)
    assert _without_timing(resumed) == _without_timing(metrics)
    assert _history(tmp_path / "killed") == history


def test_test_every_epoch_must_be_a_boolean():
    with pytest.raises(ConfigError, match=r"eval.test_every_epoch.*expects bool"):
        config_from_dict({**RAW, "eval": {**RAW["eval"], "test_every_epoch": "yes"}})


def test_epochs_train_on_their_own_batches(reference, dataset):
    """The trainer draws each epoch's batches ahead, while the previous epoch's call runs: the
    losses are those of a plain loop over ``sampler.batches(epoch)``, epoch by epoch."""
    import jax

    from jaxrec.train import StepRunner, init_state

    workdir, _ = reference
    exp = prepare_experiment(config_from_dict(RAW), dataset)
    runner = StepRunner(exp.module, exp.tx, exp.loss_weights, batch_size=exp.config.train.batch_size)
    state = runner.put_state(init_state(exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx,
                                        exp.config.train.seed))
    ctx, losses = runner.put_ctx(exp.built.ctx), []
    for epoch in range(RAW["train"]["epochs"]):
        state, metrics = runner.run(state, ctx, runner.put_batches(exp.sampler.batches(epoch)))
        losses.append(float(np.mean(jax.device_get(metrics.loss))))
    assert [row["loss"] for row in _history(workdir)] == pytest.approx(losses, rel=1e-6)


def test_same_seed_same_numbers(reference, dataset, tmp_path):
    workdir, metrics = reference
    again = train_and_evaluate(config_from_dict(RAW), tmp_path / "again", dataset=dataset, quiet=True)
    assert _without_timing(again) == _without_timing(metrics)
    assert _history(tmp_path / "again") == _history(workdir)
    other_seed = config_from_dict({**RAW, "train": {**RAW["train"], "seed": 6}})
    different = train_and_evaluate(other_seed, tmp_path / "other", dataset=dataset, quiet=True)
    assert different["valid"] != metrics["valid"]


def test_resume_after_hard_kill_ends_exactly_like_an_uninterrupted_run(reference, dataset, tmp_path):
    config_path = tmp_path / "config.yaml"
    config_path.write_text(dump_config(config_from_dict(RAW)))
    workdir = tmp_path / "killed"
    # A separate process that dies abruptly (no cleanup, no flush) right after epoch 3;
    # with checkpoint_every=2 the newest checkpoint on disk is epoch 2.
    script = textwrap.dedent(f"""
        import os
        from jaxrec.data import make_synthetic
        from jaxrec.train import TrainHooks, load_config, train_and_evaluate
        hooks = TrainHooks(on_epoch_end=lambda epoch, row: os._exit(17) if epoch == 3 else None)
        train_and_evaluate(load_config({str(config_path)!r}), {str(workdir)!r},
                           dataset=make_synthetic(**{DATA_ARGS!r}), quiet=True, hooks=hooks)
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert killed.returncode == 17, killed.stderr
    assert not (workdir / "metrics.json").exists()
    assert len(_history(workdir)) == 3
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    assert checkpoints.last_epoch() == 2
    checkpoints.close()

    with pytest.raises(ConfigError, match="already holds a run"):
        train_and_evaluate(config_from_dict(RAW), workdir, dataset=dataset, quiet=True)
    changed = config_from_dict({**RAW, "train": {**RAW["train"], "learning_rate": 0.03}})
    with pytest.raises(ConfigError, match="train.learning_rate: 0.02 -> 0.03"):
        train_and_evaluate(changed, workdir, dataset=dataset, resume=True, quiet=True)

    resumed = train_and_evaluate(load_config(config_path), workdir, dataset=dataset, resume=True, quiet=True)
    reference_dir, reference_metrics = reference
    assert _without_timing(resumed) == _without_timing(reference_metrics)
    assert _history(workdir) == _history(reference_dir)
    assert "resuming" in (workdir / "log.txt").read_text()


def test_early_stopping_reports_test_at_the_best_valid_epoch(monkeypatch, dataset, tmp_path):
    # Scripted validation values: best at epoch 2; epochs 3, 4, 5 do not beat it strictly,
    # so with patience 2 training stops after epoch 5. Test "metrics" are a fingerprint of
    # the parameters they were computed from, to check which epoch's parameters they used.
    script_validation(monkeypatch, [0.1, 0.3, 0.2, 0.3, 0.25, 0.9, 0.9])
    raw = {**RAW, "train": {**RAW["train"], "epochs": 20, "patience": 2, "checkpoint_every": 3},
           "eval": {"ks": [20], "metrics": ["recall"]}}
    config = config_from_dict(raw)
    metrics = train_and_evaluate(config, tmp_path / "run", dataset=dataset, quiet=True)
    assert (metrics["best_epoch"], metrics["epochs_run"], metrics["stopped_early"]) == (2, 5, True)
    assert metrics["valid"] == {"recall@20": 0.3}

    checkpoints = Checkpoints(tmp_path / "run" / "checkpoints", read_only=True)
    assert 2 in checkpoints.epochs() and 5 in checkpoints.epochs()  # the best and the last
    state, meta = checkpoints.restore(prepare_experiment(config, dataset).target, 2)
    checkpoints.close()
    assert meta["epochs_done"] == 2
    assert metrics["test"]["recall@20"] == parameter_fingerprint(state.params)


def test_a_config_error_surfaces_before_training(dataset, tmp_path):
    raw = {**RAW, "loss_weights": {"regg": 0.1}}
    with pytest.raises(ConfigError, match="no loss term 'regg'; did you mean 'reg'"):
        train_and_evaluate(config_from_dict(raw), tmp_path / "run", dataset=dataset, quiet=True)
    with pytest.raises(ConfigError, match="unknown model 'bprnf'"):
        train_and_evaluate(config_from_dict({**RAW, "model": {"name": "bprnf"}}), tmp_path / "run2",
                           dataset=dataset, quiet=True)
    assert not os.path.exists(tmp_path / "run" / "metrics.json")


def test_ctx_epoch_step_is_each_steps_place_in_its_epoch():
    # A ctx holding models.EPOCH_STEP gets each step's index within its epoch (state.step modulo
    # the epoch's steps), across calls; a runner that does not know the epoch length keeps the
    # ctx's own value.
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from jaxrec import models
    from jaxrec.train import StepRunner, init_state

    class Probe(nn.Module):
        def setup(self):
            self.w = self.param("w", nn.initializers.ones, (2,))

        def encode(self, ctx, train=False):
            return self.w[None, :], self.w[None, :]

        def loss_terms(self, ctx, batch, train=False):
            return {"bpr": jnp.sum(self.w ** 2) * jnp.mean(batch["weights"]),
                    "seen": jnp.asarray(ctx[models.EPOCH_STEP], jnp.float32)}

    ctx = {models.EPOCH_STEP: jnp.zeros((), jnp.int32)}
    batch = models.normalize_batch({"users": np.zeros((5, 4)), "pos_items": np.zeros((5, 4)),
                                    "neg_items": np.zeros((5, 4))})
    tx, weights = optax.sgd(0.1), {"bpr": 1.0, "seen": 1.0}  # reported (weighted); it reads no parameter
    runner = StepRunner(Probe(), tx, weights, batch_size=4, steps_per_epoch=3)
    state = runner.put_state(init_state(Probe(), ctx, {k: v[0] for k, v in batch.items()}, tx, 0))
    state, first = runner.run(state, ctx, runner.put_batches(batch))
    host = jax.device_get(state)  # the next call donates the state
    _, second = runner.run(state, ctx, runner.put_batches({k: v[:2] for k, v in batch.items()}))
    assert np.asarray(first.terms["seen"]).tolist() == [0, 1, 2, 0, 1]
    assert np.asarray(second.terms["seen"]).tolist() == [2, 0]
    blind = StepRunner(Probe(), tx, weights, batch_size=4)
    _, kept = blind.run(blind.put_state(host), {models.EPOCH_STEP: jnp.int32(7)}, blind.put_batches(batch))
    assert np.asarray(kept.terms["seen"]).tolist() == [7] * 5
