"""Optimizers against numpy re-implementations of torch's update rules, schedules, early stopping."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrec.train import EarlyStopping, TrainConfig, learning_rate_schedule, make_optimizer, update_early_stopping

A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.1], [0.0, 0.1, 1.0]])
B = np.array([1.0, -2.0, 0.5])
P0 = np.array([0.3, -0.2, 0.8])


def _grad(p):  # gradient of the quadratic 1/2 p'Ap - b'p
    return A @ p - B


def _run_optax(config: TrainConfig, steps: int = 4, steps_per_epoch: int = 2) -> np.ndarray:
    tx = make_optimizer(config, steps_per_epoch)
    with jax.enable_x64():
        params = jnp.asarray(P0)
        state = tx.init(params)
        for _ in range(steps):
            updates, state = tx.update(jnp.asarray(_grad(np.asarray(params))), state, params)
            params = optax.apply_updates(params, updates)
        return np.asarray(params)


def _torch_adam(lr, wd, steps, decoupled=False, b1=0.9, b2=0.999, eps=1e-8):
    p, m, v = P0.copy(), np.zeros(3), np.zeros(3)
    for t in range(1, steps + 1):
        g = _grad(p) + (0.0 if decoupled else wd * p)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        step = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        p = p - lr * (step + (wd * p if decoupled else 0.0))
    return p


def test_adam_weight_decay_is_coupled_like_torch():
    config = TrainConfig(optimizer="adam", learning_rate=0.05, weight_decay=0.1)
    np.testing.assert_allclose(_run_optax(config), _torch_adam(0.05, 0.1, 4), rtol=1e-10)


def test_adamw_weight_decay_is_decoupled():
    config = TrainConfig(optimizer="adamw", learning_rate=0.05, weight_decay=0.1)
    np.testing.assert_allclose(_run_optax(config), _torch_adam(0.05, 0.1, 4, decoupled=True), rtol=1e-10)
    assert not np.allclose(_run_optax(config), _torch_adam(0.05, 0.1, 4))


def test_sgd_momentum_matches_torch():
    p, buf = P0.copy(), None
    for _ in range(4):
        g = _grad(p) + 0.01 * p
        buf = g if buf is None else 0.9 * buf + g
        p = p - 0.1 * buf
    config = TrainConfig(optimizer="sgd", learning_rate=0.1, momentum=0.9, weight_decay=0.01)
    np.testing.assert_allclose(_run_optax(config), p, rtol=1e-10)


def test_adagrad_starts_from_zero_like_torch():
    p, total = P0.copy(), np.zeros(3)
    for _ in range(4):
        g = _grad(p)
        total += g * g
        p = p - 0.5 * g / (np.sqrt(total) + 1e-10)
    np.testing.assert_allclose(_run_optax(TrainConfig(optimizer="adagrad", learning_rate=0.5)), p, rtol=1e-8)


def test_clip_norm_bounds_the_update():
    config = TrainConfig(optimizer="sgd", learning_rate=1.0, clip_norm=0.5)
    tx = make_optimizer(config, 1)
    grads = jnp.array([30.0, 40.0])  # norm 50
    updates, _ = tx.update(grads, tx.init(jnp.zeros(2)), jnp.zeros(2))
    np.testing.assert_allclose(np.asarray(updates), [-0.3, -0.4], rtol=1e-6)


def test_schedules_by_hand():
    spe = 10
    exponential = learning_rate_schedule(TrainConfig(schedule="exponential", learning_rate=0.1, decay_rate=0.5,
                                                     decay_epochs=2), spe)
    # MMRec's LambdaLR rule: lr * rate ** (epoch / decay_epochs), stepped once per epoch.
    for count, epoch in [(0, 0), (9, 0), (10, 1), (25, 2), (49, 4)]:
        np.testing.assert_allclose(float(exponential(jnp.asarray(count))), 0.1 * 0.5 ** (epoch / 2), rtol=1e-6)
    cosine = learning_rate_schedule(TrainConfig(schedule="cosine", learning_rate=0.1, min_learning_rate=0.01,
                                                epochs=4), spe)
    np.testing.assert_allclose([float(cosine(c)) for c in (0, 20, 40)],
                               [0.1, 0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi / 2)), 0.01], rtol=1e-5)
    warm = learning_rate_schedule(TrainConfig(schedule="warmup_cosine", learning_rate=0.1, warmup_epochs=1,
                                              epochs=3), spe)
    np.testing.assert_allclose([float(warm(c)) for c in (0, 5, 10, 30)], [0.0, 0.05, 0.1, 0.0], atol=1e-7)
    constant = learning_rate_schedule(TrainConfig(learning_rate=0.3), spe)
    assert float(constant(123)) == pytest.approx(0.3)


def test_early_stopping_follows_mmrecs_rule():
    # Strict improvement resets the count; stop once it EXCEEDS patience (MMRec's early_stopping).
    state, improvements, stops = EarlyStopping(), [], []
    for epoch, value in enumerate([0.1, 0.3, 0.2, 0.3, float("nan"), 0.29], start=1):
        state, improved = update_early_stopping(state, value, epoch, patience=2)
        improvements.append(improved)
        stops.append(state.stop)
    assert improvements == [True, True, False, False, False, False]
    assert stops == [False, False, False, False, True, True]
    assert (state.best_value, state.best_epoch) == (0.3, 2)


def _torch_adam_skipping(grads_per_step, has_grad, lr_at_step, wd=0.0, b1=0.9, b2=0.999, eps=1e-8):
    """torch.optim.Adam on one parameter whose ``.grad`` is None in the steps where
    ``has_grad`` is False: skipped (no update, its moments and own step count unchanged)."""
    p, m, v, t = P0.copy(), np.zeros(3), np.zeros(3), 0
    history = []
    for s, present in enumerate(has_grad):
        if present:
            t += 1
            g = grads_per_step(p) + wd * p
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            p = p - lr_at_step(s) * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        history.append(p.copy())
    return history


@pytest.mark.parametrize("scale", [None, 0.5])  # 0.5: the batched search's per-trial rate factor
@pytest.mark.parametrize("schedule", ["constant", "exponential"])
def test_epoch_gated_skips_a_parameter_like_torch(schedule, scale):
    """``epoch_gated``: the marked leaf follows torch's Adam with its grad None outside the
    epochs' first steps (own step count, moments kept, the schedule at the global step, times
    ``scale``); the other leaf is the plain optimizer at that rate, updated every step."""
    import dataclasses

    from jaxrec.train import epoch_gated

    config = TrainConfig(optimizer="adam", learning_rate=0.05, weight_decay=0.01, schedule=schedule,
                         decay_rate=0.5, decay_epochs=1)
    factor = 1.0 if scale is None else scale
    steps_per_epoch, n_steps = 3, 9
    tx = epoch_gated(config, steps_per_epoch, lambda params: {"gated": True, "plain": False})
    plain = make_optimizer(dataclasses.replace(config, learning_rate=0.05 * factor), steps_per_epoch)
    schedule_fn = learning_rate_schedule(config, steps_per_epoch)
    has_grad = [s % steps_per_epoch == 0 for s in range(n_steps)]
    with jax.enable_x64():
        params = {"gated": jnp.asarray(P0), "plain": jnp.asarray(P0)}
        state, plain_state, plain_params = tx.init(params), plain.init(params["plain"]), jnp.asarray(P0)
        gated_history = []
        for s in range(n_steps):
            grads = {"gated": jnp.asarray(_grad(np.asarray(params["gated"]))) * has_grad[s],  # zero: no gradient
                     "plain": jnp.asarray(_grad(np.asarray(params["plain"])))}
            params, state = tx.apply(grads, state, params, has_gradient=has_grad[s], scale=scale)
            gated_history.append(np.asarray(params["gated"]))
            plain_updates, plain_state = plain.update(grads["plain"], plain_state, plain_params)
            plain_params = optax.apply_updates(plain_params, plain_updates)
        expected = _torch_adam_skipping(_grad, has_grad, lambda s: factor * float(schedule_fn(s)), wd=0.01)
        np.testing.assert_allclose(np.asarray(gated_history), np.asarray(expected), rtol=1e-10)
        np.testing.assert_allclose(np.asarray(params["plain"]), np.asarray(plain_params), rtol=1e-12)
    # Between first steps the gated leaf does not move at all (optax's plain Adam would, by momentum).
    assert np.array_equal(gated_history[1], gated_history[0]) and not np.array_equal(gated_history[3], gated_history[2])


def test_epoch_gated_refuses_clip_norm():
    from jaxrec.errors import ConfigError
    from jaxrec.train import epoch_gated

    with pytest.raises(ConfigError, match="clip_norm"):
        epoch_gated(TrainConfig(clip_norm=1.0), 2, lambda params: params)


def test_init_state_compiles_once_for_every_seed_and_keys_as_the_python_integer():
    """The seed is a traced uint32: one program for any seed, the same state as PRNGKey(int) (the
    whole 32-bit range the config allows, above 2^31 included)."""
    from jaxrec import models
    from jaxrec.data import make_synthetic
    from jaxrec.train import _state

    dataset = make_synthetic(40, 30, n_interactions=400, seed=1)
    built = models.build("bprmf", dataset, embedding_size=4)
    batch = _state.example_batch(16, 1)
    tx = optax.adam(1e-2)
    _state._init_state_compiled.clear_cache()
    for seed in (0, 7, 2**31 + 3, 2**32 - 1):
        got = _state.init_state(built.module, built.ctx, batch, tx, seed)
        # The reference: the Python integer closed over, as a static seed was before.
        want = jax.jit(lambda ctx, b, seed=seed: _state._init_state(built.module, ctx, b, tx, seed))(built.ctx, batch)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _state._init_state_compiled._cache_size() == 1
    first = _state.init_state(built.module, built.ctx, batch, tx, 0).params
    other = _state.init_state(built.module, built.ctx, batch, tx, 1).params
    assert not np.array_equal(np.asarray(jax.tree.leaves(first)[0]), np.asarray(jax.tree.leaves(other)[0]))
    with pytest.raises(ValueError, match="seed"):
        _state.init_state(built.module, built.ctx, batch, tx, 2**32)
