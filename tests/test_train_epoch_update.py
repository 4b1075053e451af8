"""The per-epoch hook ``Built.epoch_update(params, ctx, epoch, rng)`` under the trainer: it gets
the current parameters; LATTICE's ``learned_graph: epoch`` recomputes its learned neighbour
lists each epoch as a numpy kNN of the checkpointed parameters' projections says; resume and
``jaxrec evaluate`` reproduce the run exactly."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import make_synthetic
from jaxrec.train import (
    Checkpoints,
    TrainHooks,
    config_from_dict,
    evaluate_run,
    init_state,
    prepare_experiment,
    train_and_evaluate,
)

SYNTHETIC = dict(n_users=40, n_items=30, n_interactions=500, dims={"text": 6, "image": 5}, seed=7)
RAW = {
    "data": {"synthetic": SYNTHETIC},
    "model": {"name": "lattice", "args": {"embedding_size": 8, "feat_embed_dim": 4, "knn_k": 3,
                                          "train_features": False, "learned_graph": "epoch",
                                          "graph_cache": "none"}},
    "train": {"epochs": 3, "batch_size": 128, "learning_rate": 0.05, "patience": 10, "seed": 3,
              "checkpoint_every": 1, "checkpoints_to_keep": 10},
    "eval": {"ks": [10, 20], "metrics": ["recall", "ndcg"]},
}


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(**SYNTHETIC)


def _numpy_neighbours(params, dataset, k):
    """Each modality's top-k cosine neighbours (itself first) of x W + b, side by side."""
    lists = []
    for m, name in enumerate(dataset.modalities):
        x = np.asarray(dataset.modalities[name].features, np.float64)
        layer = params[f"projection_{m}"]
        projected = x @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
        unit = projected / np.linalg.norm(projected, axis=1, keepdims=True)
        sims = unit @ unit.T
        np.fill_diagonal(sims, np.inf)
        lists.append(np.argsort(-sims, axis=1, kind="stable")[:, :k])
    return np.concatenate(lists, axis=1)


def _recording_build(monkeypatch, calls):
    real_build = models.build

    def build(name, dataset, **args):
        built = real_build(name, dataset, **args)
        hook = built.epoch_update

        def recorded(params, ctx, epoch, rng):
            out = hook(params, ctx, epoch, rng)
            calls.append((epoch, jax.tree.map(np.asarray, jax.device_get(params)),
                          np.asarray(out["learned_neighbours"])))
            return out

        return dataclasses.replace(built, epoch_update=recorded)

    monkeypatch.setattr(models, "build", build)


def _without_timing(metrics):
    return {k: v for k, v in metrics.items() if k != "timing"}


def test_lattice_epoch_mode_refreshes_its_graph_from_the_current_parameters(monkeypatch, dataset, tmp_path):
    calls = []
    _recording_build(monkeypatch, calls)
    config = config_from_dict(RAW)
    metrics = train_and_evaluate(config, tmp_path / "run", dataset=dataset, quiet=True)
    assert metrics["epochs_run"] == 3

    # One refresh before epoch 1 (initial parameters), one after each epoch (evaluation and
    # the next epoch), and one for the test at the best epoch if that is not the last.
    epochs = [epoch for epoch, _, _ in calls]
    assert epochs[:4] == [0, 1, 2, 3]
    assert epochs[4:] == ([] if metrics["best_epoch"] == 3 else [metrics["best_epoch"]])

    exp = prepare_experiment(config, dataset)
    initial = init_state(exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx, config.train.seed).params
    checkpoints = Checkpoints(tmp_path / "run" / "checkpoints", read_only=True)
    try:
        saved = {e: checkpoints.restore(exp.target, e)[0].params for e in (1, 2, 3)}
    finally:
        checkpoints.close()
    expected_params = {0: initial, **saved}
    for epoch, params, neighbours in calls:
        # The hook saw exactly the parameters after epoch `epoch` (the initial ones for 0) ...
        jax.tree.map(np.testing.assert_array_equal, params, jax.tree.map(np.asarray, expected_params[epoch]))
        # ... and its lists are the numpy kNN of those parameters' projections.
        np.testing.assert_array_equal(neighbours, _numpy_neighbours(params, dataset, k=3))
    graphs = [neighbours for _, _, neighbours in calls[:4]]
    assert any(not np.array_equal(a, b) for a, b in zip(graphs, graphs[1:])), "the learned graph never changed"
    assert not np.array_equal(graphs[0], np.asarray(exp.built.ctx["learned_neighbours"]))

    # `jaxrec evaluate` recomputes the best epoch's graph and the same test metrics.
    again = evaluate_run(tmp_path / "run", "test", dataset=dataset)
    assert again["epoch"] == metrics["best_epoch"] and again["metrics"] == metrics["test"]


@pytest.mark.parametrize("mode", ["epoch", "mmrec"])  # mmrec: its checkpoints hold the epoch-gated optimizer state
def test_lattice_epoch_mode_resumes_exactly(dataset, tmp_path, mode):
    raw = {**RAW, "model": {**RAW["model"], "args": {**RAW["model"]["args"], "learned_graph": mode,
                                                     "train_features": mode == "mmrec"}}}
    config = config_from_dict(raw)
    reference = train_and_evaluate(config, tmp_path / "reference", dataset=dataset, quiet=True)

    def stop(epoch, row):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_and_evaluate(config, tmp_path / "run", dataset=dataset, quiet=True, hooks=TrainHooks(on_epoch_end=stop))
    resumed = train_and_evaluate(config, tmp_path / "run", dataset=dataset, quiet=True, resume=True)
    assert _without_timing(resumed) == _without_timing(reference)
    rows = [(tmp_path / name / "history.jsonl").read_text().splitlines() for name in ("reference", "run")]
    strip = lambda line: {k: v for k, v in __import__("json").loads(line).items() if "seconds" not in k}  # noqa: E731
    assert [strip(line) for line in rows[0]] == [strip(line) for line in rows[1]]


@jax.jit
def _slow_identity(x):
    """``x`` unchanged, after ~0.1-0.5 s of dependent matrix products (still running when an
    asynchronous caller returns)."""
    def body(_, y):
        return jnp.tanh(y @ y)
    heavy = jax.lax.fori_loop(0, 150, body, jnp.full((384, 384), 1e-3, jnp.float32))
    return x + (jnp.sum(heavy) * 0).astype(x.dtype)


def test_the_hooks_work_is_timed_with_its_epoch_not_with_the_evaluation(monkeypatch, dataset, tmp_path):
    """The context set at an epoch's end is ready when the epoch returns, so its time is in the
    epoch's ``train_seconds`` rather than in the evaluation dispatched after it."""
    real_build = models.build

    def build(name, dataset, **args):
        built = real_build(name, dataset, **args)
        hook = built.epoch_update

        def slow(params, ctx, epoch, rng):
            out = dict(hook(params, ctx, epoch, rng))
            out["learned_neighbours"] = _slow_identity(out["learned_neighbours"])
            return out

        return dataclasses.replace(built, epoch_update=slow)

    monkeypatch.setattr(models, "build", build)
    from jaxrec.train import _loop

    ready_at_return = []
    real_train_epoch = _loop._Run.train_epoch

    def train_epoch(self, epoch):
        row = real_train_epoch(self, epoch)
        leaves = jax.tree.leaves((self.train_ctx, self.eval_ctx))
        ready_at_return.append(all(leaf.is_ready() for leaf in leaves if isinstance(leaf, jax.Array)))
        return row

    monkeypatch.setattr(_loop._Run, "train_epoch", train_epoch)
    metrics = train_and_evaluate(config_from_dict(RAW), tmp_path / "run", dataset=dataset, quiet=True)
    assert metrics["epochs_run"] == 3
    assert ready_at_return == [True, True, True]
