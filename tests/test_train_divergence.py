"""NaN/inf in a loss term or a gradient stops the run, names where, and keeps the last good checkpoint."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from jaxrec import models
from jaxrec.data import Interactions, MultimodalDataset
from jaxrec.errors import TrainingDivergedError
from jaxrec.train import Checkpoints, config_from_dict, train_and_evaluate
from jaxrec.train import prepare_experiment


@jax.custom_vjp
def _identity_nan_gradient_below_half(w):
    return w


def _forward(w):
    return w, w


def _backward(w, g):
    return (jnp.where(w < 0.5, jnp.nan, g),)


_identity_nan_gradient_below_half.defvjp(_forward, _backward)


@jax.custom_vjp
def _zero_with_huge_gradient(w):
    return 0.0 * w


def _backward_huge(w, g):
    return (g * jnp.float32(1e38),)


_zero_with_huge_gradient.defvjp(lambda w: (0.0 * w, w), _backward_huge)


class Diverging(nn.Module):
    """A model whose loss breaks at a known SGD step (lr 0.3, w starting at 1).

    ``kind="term"``: term ``boom = log(w)``; w goes 1 -> 0.7 -> 0.2714 -> -0.8335, so the
    term is NaN at update 4. ``kind="gradient"``: ``boom = w`` with a NaN gradient once
    w < 0.5; w goes 1 -> 0.7 -> 0.4, so the gradient is NaN at update 3 (the term is finite).
    ``kind="update"``: ``boom = 0`` with gradient 1e38 (finite); with lr 1 (SGD) w goes
    1 -> -1e38 -> -2e38 -> -3e38 -> -inf: every loss term and gradient is finite, yet update 4
    (the last of epoch 2) leaves w infinite. The item embeddings are scaled by ``sign(w)``
    in ``encode`` so that an infinite w also reaches the scores.
    """

    n_users: int
    n_items: int
    kind: str

    def setup(self):
        self.w = self.param("w", nn.initializers.ones, ())
        self.users = self.param("users", nn.initializers.normal(1.0), (self.n_users, 2))
        self.items = self.param("items", nn.initializers.normal(1.0), (self.n_items, 2))

    def encode(self, ctx, train=False):
        if self.kind == "update":
            return self.users, self.items * (self.w / jnp.abs(self.w))
        return self.users, self.items

    def loss_terms(self, ctx, batch, train=False):
        if self.kind == "update":
            boom = _zero_with_huge_gradient(self.w)
        else:
            boom = jnp.log(self.w) if self.kind == "term" else _identity_nan_gradient_below_half(self.w)
        scores = jnp.sum(self.users[batch["users"]] * self.items[batch["pos_items"]], axis=-1)
        return {"boom": boom, "fit": 0.0 * jnp.mean(scores)}


@models.register("test_diverging")
def _build(dataset, *, kind="term"):
    return models.Built(Diverging(dataset.n_users, dataset.n_items, kind), {}, {"boom": 1.0, "fit": 1.0})


@pytest.fixture(scope="module")
def dataset():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(10), 6)
    items = np.concatenate([rng.choice(12, 6, replace=False) for _ in range(10)])
    split = np.tile([0, 0, 0, 0, 1, 2], 10)  # 40 training rows: 2 batches of 20 per epoch
    return MultimodalDataset("tiny", 10, 12, Interactions(users, items, split))


def _config(kind, *, learning_rate=0.3, checkpoint_every=1, eval_every=1, **loss_weights):
    return config_from_dict({
        "data": {"synthetic": {}},
        "model": {"name": "test_diverging", "args": {"kind": kind}},
        "train": {"epochs": 4, "batch_size": 20, "optimizer": "sgd", "learning_rate": learning_rate,
                  "checkpoint_every": checkpoint_every, "eval_every": eval_every, "valid_metric": "recall@5"},
        "eval": {"ks": [5], "metrics": ["recall"]},
        "loss_weights": loss_weights,
    })


@pytest.mark.parametrize("kind, step, term, what", [
    ("term", 4, "boom", "loss term 'boom' is nan"),
    ("gradient", 3, "gradient", "the gradient has non-finite entries"),
])
def test_divergence_names_epoch_step_and_term_and_keeps_the_last_good_checkpoint(dataset, tmp_path, kind, step,
                                                                                  term, what):
    config = _config(kind)
    workdir = tmp_path / kind
    with pytest.raises(TrainingDivergedError) as info:
        train_and_evaluate(config, workdir, dataset=dataset, quiet=True)
    error = info.value
    assert (error.epoch, error.step, error.term) == (2, step, term)
    message = str(error)
    assert f"epoch 2, step {step} (batch {step - 2} of 2 in the epoch)" in message
    assert what in message
    assert "last good checkpoint (after epoch 1)" in message
    assert "training diverged" in (workdir / "log.txt").read_text()
    assert not (workdir / "metrics.json").exists()
    assert len((workdir / "history.jsonl").read_text().splitlines()) == 1

    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    assert checkpoints.last_epoch() == 1
    state, meta = checkpoints.restore(prepare_experiment(config, dataset).target)
    checkpoints.close()
    # After epoch 1 (two SGD updates of lr 0.3): log-loss 1 -> 0.7 -> 0.7 - 0.3/0.7; identity 1 -> 0.7 -> 0.4.
    expected_w = 0.7 - 0.3 / 0.7 if kind == "term" else 0.4
    np.testing.assert_allclose(float(state.params["w"]), expected_w, rtol=1e-6)
    assert int(state.step) == 2 and meta["epochs_done"] == 1
    assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(state.params))


@pytest.mark.parametrize("checkpoint_every, eval_every", [(1, 1), (5, 1), (5, 3)])
def test_a_finite_step_that_leaves_infinite_parameters_is_divergence_and_is_never_saved(
        dataset, tmp_path, checkpoint_every, eval_every):
    # Update 4, the last of epoch 2, makes w infinite with every loss term and gradient finite.
    # It must not be saved (checkpoint_every=1 saves epoch 2 today), nor surface as "NaN scores"
    # in validation (eval_every=1); the error names the epoch, the step and the parameter, and
    # with no checkpoint on disk yet (checkpoint_every=5) the step is still found exactly.
    config = _config("update", learning_rate=1.0, checkpoint_every=checkpoint_every, eval_every=eval_every)
    workdir = tmp_path / "run"
    with pytest.raises(TrainingDivergedError) as info:
        train_and_evaluate(config, workdir, dataset=dataset, quiet=True)
    error = info.value
    assert (error.epoch, error.step, error.term) == (2, 4, "params['w']")
    message = str(error)
    assert "training diverged at epoch 2, step 4 (batch 2 of 2 in the epoch)" in message
    assert "parameter params['w'] is not finite (every loss term and gradient was)" in message
    checkpoints = Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        saved = checkpoints.epochs()
        assert all(epoch <= 1 for epoch in saved)
        target = prepare_experiment(config, dataset).target
        for epoch in saved:
            state, _ = checkpoints.restore(target, epoch)
            assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(state))
    finally:
        checkpoints.close()
    if checkpoint_every == 1:
        assert "last good checkpoint (after epoch 1)" in message
        np.testing.assert_allclose(float(state.params["w"]), -2e38, rtol=1e-6)
