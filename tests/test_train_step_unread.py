"""The train step's ``keep_unread``: parameters the weighted loss never reads keep their values
and optimizer state without their optimizer arithmetic -- the numbers of the full update (zero
gradient, zero state: adam/sgd/adagrad move nothing): those leaves bit for bit, the others up to
the rounding of a differently fused program."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from jaxrec import losses, models
from jaxrec.data import make_synthetic
from jaxrec.train import StepRunner, config_from_dict, init_state, make_runner, prepare_experiment
from jaxrec.train._step import unread_params
from _model_testing import TwoTables


def test_unread_params_finds_exactly_the_leaves_without_a_path_to_the_loss():
    x = jnp.arange(1.0, 4.0)

    def loss(p):
        scanned, _ = jax.lax.scan(lambda c, _: (c * p["in_scan"], None), 1.0, None, length=2)
        total, _ = losses.combine({"used": jnp.sum(p["a"] * x) + scanned, "off": jnp.sum(p["b"] ** 2)},
                                  {"used": 1.0, "off": 0.0})
        return total

    params = {"a": jnp.ones(3), "b": jnp.ones(2), "in_scan": jnp.float32(2.0), "nested": {"never": jnp.ones(4)}}
    assert unread_params(loss, params) == {"a": False, "b": True, "in_scan": False, "nested": {"never": True}}
    # Their gradients are exactly zero, and only theirs.
    grads = jax.grad(loss)(params)
    assert not np.any(np.asarray(grads["b"])) and not np.any(np.asarray(grads["nested"]["never"]))
    assert np.all(np.asarray(grads["a"]) != 0) and float(grads["in_scan"]) != 0


@pytest.mark.parametrize("tx", [optax.adam(0.05), optax.sgd(0.1, momentum=0.9),
                                optax.chain(optax.clip_by_global_norm(0.5), optax.adagrad(0.1))],
                         ids=["adam", "sgd-momentum", "clip-adagrad"])
def test_keep_unread_gives_the_full_updates(tx):
    rng = np.random.default_rng(0)
    batches = models.normalize_batch({"users": rng.integers(0, 6, (7, 4)), "pos_items": rng.integers(0, 6, (7, 4)),
                                      "neg_items": rng.integers(0, 6, (7, 4, 1))})
    module, weights = TwoTables(), {"bpr": 1.0, "side": 0.0}
    start = init_state(module, {}, {k: v[0] for k, v in batches.items()}, tx, 3)
    ends = {}
    for keep in (False, True):
        runner = StepRunner(module, tx, weights, batch_size=4, keep_unread=keep)
        state, metrics = runner.run(runner.put_state(jax.tree.map(np.array, start)), {}, runner.put_batches(batches))
        ends[keep] = jax.device_get((state, metrics))
    (full, full_metrics), (kept, kept_metrics) = ends[False], ends[True]
    _assert_same_state(full, kept, unread=("['v']",))
    assert "side" not in full_metrics.terms and "side" not in kept_metrics.terms  # weight 0: not computed
    np.testing.assert_array_equal(kept.params["v"], start.params["v"])  # never moved ...
    assert not np.array_equal(kept.params["w"], start.params["w"])       # ... the read table did


def test_freedom_with_modality_bpr_off_trains_identically_without_its_feature_arithmetic():
    # FREEDOM's feature tables and projections feed only the modality BPR term: at weight 0 the
    # trainer's runner leaves them out of the optimizer, with the same epoch as the full update.
    raw = {"data": {"synthetic": dict(n_users=40, n_items=30, n_interactions=600, dims={"text": 6, "image": 5},
                                      seed=1)},
           "model": {"name": "freedom", "args": {"embedding_size": 8, "feat_embed_dim": 8, "knn_k": 3,
                                                  "graph_cache": "none", "train_features": True}},
           "train": {"epochs": 1, "batch_size": 64, "learning_rate": 0.01, "seed": 2},
           "loss_weights": {"bpr": 1.0, "modality_bpr": 0.0}}
    config = config_from_dict(raw)
    exp = prepare_experiment(config, dataset=make_synthetic(**raw["data"]["synthetic"]))
    start = init_state(exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx, 2)
    batch = {k: v[0] for k, v in exp.sampler.batches(0, slice(None)).items()}

    def total(params):
        terms = exp.module.apply({"params": params}, exp.built.ctx, models.normalize_batch(batch), False,
                                 method="loss_terms")
        return losses.combine(terms, exp.loss_weights)[0]

    unread = [jax.tree_util.keystr(path) for path, flag in jax.tree_util.tree_leaves_with_path(
        unread_params(total, start.params)) if flag]
    assert unread and all("item_embedding" not in name and "user_embedding" not in name for name in unread), unread
    runner = make_runner(exp)
    plain = StepRunner(exp.module, exp.tx, exp.loss_weights, batch_size=config.train.batch_size,
                       steps_per_epoch=exp.steps_per_epoch)
    ends = []
    for r in (plain, runner):
        state, _ = r.run(r.put_state(jax.tree.map(np.array, start)), r.put_ctx(exp.built.ctx),
                         r.put_batches(exp.sampler.batches(0, slice(None))))
        ends.append(jax.device_get(state))
    _assert_same_state(ends[0], ends[1], unread=tuple(unread))


def _assert_same_state(full, kept, unread):
    """Every leaf of the two states (parameters and optimizer state) equal: bit for bit where
    the path ends in an unread parameter's path, else to float rounding."""
    kept_leaves = {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(kept)}
    full_leaves = jax.tree_util.tree_leaves_with_path(full)
    assert len(full_leaves) == len(kept_leaves)
    for path, a in full_leaves:
        name = jax.tree_util.keystr(path)
        b = kept_leaves[name]
        if any(name.endswith(u) for u in unread):
            np.testing.assert_array_equal(a, b, err_msg=name)
        else:
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7, err_msg=name)


def test_keep_unread_returns_the_unread_leaves_as_they_came_in():
    # The mechanism itself: given a (precondition-breaking) non-zero Adam moment on the unread
    # table, the full update moves it while keep_unread hands it back untouched, state included.
    rng = np.random.default_rng(1)
    batches = models.normalize_batch({"users": rng.integers(0, 6, (2, 4)), "pos_items": rng.integers(0, 6, (2, 4)),
                                      "neg_items": rng.integers(0, 6, (2, 4, 1))})
    module, tx, weights = TwoTables(), optax.adam(0.05), {"bpr": 1.0, "side": 0.0}
    start = init_state(module, {}, {k: v[0] for k, v in batches.items()}, tx, 3)
    adam = start.opt_state[0]
    start = start.replace(opt_state=(adam._replace(mu={**adam.mu, "v": jnp.ones((6, 3))},
                                                   nu={**adam.nu, "v": jnp.ones((6, 3))}),) + tuple(start.opt_state[1:]))
    moved = {}
    for keep in (False, True):
        runner = StepRunner(module, tx, weights, batch_size=4, keep_unread=keep)
        state, _ = runner.run(runner.put_state(jax.tree.map(np.array, start)), {}, runner.put_batches(batches))
        state = jax.device_get(state)
        moved[keep] = (not np.array_equal(state.params["v"], start.params["v"]),
                       not np.all(state.opt_state[0].mu["v"] == 1.0))
    assert moved == {False: (True, True), True: (False, False)}


class _ProductSide(nn.Module):
    """``side`` is a (9, 9) product that only it computes."""

    def setup(self):
        self.w = self.param("w", nn.initializers.normal(1.0), (6, 3))
        self.v = self.param("v", nn.initializers.normal(1.0), (9, 5))

    def encode(self, ctx, train=False):
        return self.w, self.w

    def loss_terms(self, ctx, batch, train=False):
        u, i = self.w[batch["users"]], self.w[batch["pos_items"]]
        return {"bpr": jnp.mean(jnp.sum(u * i, -1) ** 2), "side": jnp.sum(jnp.tanh(self.v @ self.v.T))}


@pytest.mark.parametrize("side_weight", [0.0, 0.5])
def test_a_term_of_weight_0_is_neither_reported_nor_computed(side_weight):
    """What a weight-0 term computes is compiled away with it (MMRec computes it and multiplies by 0)."""
    import re

    from jaxrec.train._step import make_train_step

    rng = np.random.default_rng(1)
    batch = models.normalize_batch({"users": rng.integers(0, 6, 4), "pos_items": rng.integers(0, 6, 4),
                                    "neg_items": rng.integers(0, 6, (4, 1))})
    tx = optax.adam(0.05)
    state = init_state(_ProductSide(), {}, batch, tx, 0)
    step = jax.jit(make_train_step(_ProductSide(), tx, {"bpr": 1.0, "side": side_weight}))
    compiled = step.lower(state, {}, batch).compile().as_text()
    products = [line for line in compiled.splitlines() if re.search(r"= f32\[9,9\]\{[\d,]*\} dot\(", line)]
    _, metrics = step(state, {}, batch)
    if side_weight == 0.0:
        assert products == [] and set(metrics.terms) == {"bpr"}
    else:
        assert products and set(metrics.terms) == {"bpr", "side"}
