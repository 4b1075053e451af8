r"""A conditional GAN that generates a missing modality row from what else is known about the item.

Generator and discriminator are MLPs. With :math:`c` an item's condition (its other
modalities, their presence bits and its collaborative ID embedding), :math:`y` the target
modality row and :math:`z \sim \mathcal{N}(0, I)`:

.. math::
  \mathcal{L}_D &= \tfrac{1}{B}\textstyle\sum_b \operatorname{softplus}(-D(c_b, y_b))
                 + \operatorname{softplus}(D(c_b, G(c_b, z_b))), \\
  \mathcal{L}_G &= \lambda_\text{adv}\,\tfrac{1}{B}\textstyle\sum_b \operatorname{softplus}(-D(c_b, G(c_b, z_b)))
                 + \lambda_\text{rec}\,\tfrac{1}{B d}\textstyle\sum_b \lVert G(c_b, z_b) - y_b\rVert_p^p,

the non-saturating GAN losses of a conditional GAN (the discriminator judges (condition,
row) pairs, so a generated row must fit ITS item) plus a reconstruction term (``p`` = 2 or 1)
on rows whose target is known, as in pix2pix. Each step updates D once (on a fresh batch and
fresh noise), then G once against the updated D, with two Adam(W) optimizers
(:math:`\beta_1 = 0.5`, the usual GAN setting). Batches are drawn on device, uniformly with
replacement from the training rows, and a chunk of ``eval_every`` steps is one
``lax.scan`` inside one jitted call; everything follows from the PRNG key.

Some present rows are artificially masked: a ``holdout`` share of the rows whose target is
known is never trained on, and after each chunk the generator's reconstruction of those rows
(the mean of ``n_samples`` draws of :math:`G(c, z)`) is scored; the parameters of the chunk
with the lowest held-out mean squared error are kept. That is the model selection, and the
held-out error is an honest estimate of the error on truly missing rows.

References:
  Goodfellow et al., `Generative Adversarial Nets <https://arxiv.org/abs/1406.2661>`_, 2014;
  Mirza and Osindero, `Conditional Generative Adversarial Nets <https://arxiv.org/abs/1411.1784>`_,
  2014; Isola et al., `Image-to-Image Translation with Conditional Adversarial Networks (pix2pix)
  <https://arxiv.org/abs/1611.07004>`_, CVPR 2017.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

from jaxrec.errors import ConfigError, DataError, TrainingDivergedError

RECONSTRUCTIONS = ("l2", "l1")


class MLP(nn.Module):
    """``Dense -> leaky ReLU`` per hidden width, then a linear ``Dense(out_dim)``."""

    hidden_dims: tuple[int, ...]
    out_dim: int

    @nn.compact
    def __call__(self, x):
        for width in self.hidden_dims:
            x = nn.leaky_relu(nn.Dense(width)(x), 0.2)
        return nn.Dense(self.out_dim)(x)


class Generator(nn.Module):
    """:math:`G(c, z)`: (B, c) conditions and (B, noise_dim) noise -> (B, out_dim) rows."""

    hidden_dims: tuple[int, ...]
    out_dim: int

    @nn.compact
    def __call__(self, condition, noise):
        return MLP(self.hidden_dims, self.out_dim)(jnp.concatenate([condition, noise], axis=-1))


class Discriminator(nn.Module):
    """:math:`D(c, y)`: (B, c) conditions and (B, d) rows -> (B,) logits (real > 0)."""

    hidden_dims: tuple[int, ...]

    @nn.compact
    def __call__(self, condition, row):
        return MLP(self.hidden_dims, 1)(jnp.concatenate([condition, row], axis=-1))[:, 0]


class GANState(NamedTuple):
    """Both players' parameters and optimizer states."""

    generator: Any
    discriminator: Any
    generator_opt: Any
    discriminator_opt: Any


class GANResult(NamedTuple):
    """What :func:`train_gan` returns.

    Attributes:
      generator: the generator module.
      params: its selected parameters (lowest held-out error).
      noise_dim: the noise width.
      best_step: the step the parameters are from.
      holdout_rows: (n_holdout,) ids of the present rows held out of training.
      history: one dict per chunk: ``step``, mean ``d_loss``, ``g_adversarial``,
        ``g_reconstruction`` over the chunk, ``holdout_mse``.
    """

    generator: Generator
    params: Any
    noise_dim: int
    best_step: int
    holdout_rows: np.ndarray
    history: list


def gan_losses(generator, discriminator, g_params, d_params, condition, target, g_noise, d_noise, *,
               reconstruction: str = "l2"):
    """``(d_loss, g_adversarial, g_reconstruction)`` for one batch (module docstring), each
    with the other player's parameters held fixed (``stop_gradient``): differentiate
    ``d_loss`` for D and ``g_adversarial``, ``g_reconstruction`` for G."""
    fake_for_d = jax.lax.stop_gradient(generator.apply(g_params, condition, d_noise))
    d_loss = (jnp.mean(jax.nn.softplus(-discriminator.apply(d_params, condition, target)))
              + jnp.mean(jax.nn.softplus(discriminator.apply(d_params, condition, fake_for_d))))
    fake = generator.apply(g_params, condition, g_noise)
    g_adversarial = jnp.mean(jax.nn.softplus(-discriminator.apply(jax.lax.stop_gradient(d_params), condition, fake)))
    error = fake - target
    g_reconstruction = jnp.mean(jnp.abs(error)) if reconstruction == "l1" else jnp.mean(jnp.square(error))
    return d_loss, g_adversarial, g_reconstruction


@functools.partial(jax.jit, static_argnames=("generator", "noise_dim", "n_samples"))
def generate(generator, params, condition, key, *, noise_dim: int, n_samples: int = 16) -> jax.Array:
    """The mean of ``n_samples`` generated rows per condition: (n, c) -> (n, d), an estimate of
    :math:`\\mathbb{E}_z\\, G(c, z)` (the minimum-squared-error fill under the generator)."""
    noise = jax.random.normal(key, (n_samples, condition.shape[0], noise_dim))
    return jnp.mean(jax.vmap(lambda z: generator.apply(params, condition, z))(noise), axis=0)


def _optimizers(learning_rates: tuple[float, float], weight_decay: float):
    return tuple(optax.adamw(rate, b1=0.5, b2=0.999, weight_decay=weight_decay) for rate in learning_rates)


@functools.lru_cache(maxsize=32)
def _make_chunk(generator, discriminator, learning_rates, weight_decay, *, noise_dim, batch_size, steps,
                adversarial_weight, reconstruction_weight, reconstruction):
    # Cached on hashable settings (modules compare by value), so that fits with the same
    # settings share one compiled program.
    g_tx, d_tx = _optimizers(learning_rates, weight_decay)

    def step(state: GANState, key, condition, target, train_rows):
        d_key, g_key, d_noise_key, g_noise_key, fake_key = jax.random.split(key, 5)
        d_rows = train_rows[jax.random.randint(d_key, (batch_size,), 0, train_rows.shape[0])]
        g_rows = train_rows[jax.random.randint(g_key, (batch_size,), 0, train_rows.shape[0])]
        d_noise = jax.random.normal(d_noise_key, (batch_size, noise_dim))
        g_noise = jax.random.normal(g_noise_key, (batch_size, noise_dim))

        def d_objective(d_params):
            return gan_losses(generator, discriminator, state.generator, d_params, condition[d_rows],
                              target[d_rows], d_noise, d_noise, reconstruction=reconstruction)[0]

        d_loss, d_grads = jax.value_and_grad(d_objective)(state.discriminator)
        d_updates, d_opt = d_tx.update(d_grads, state.discriminator_opt, state.discriminator)
        d_params = optax.apply_updates(state.discriminator, d_updates)

        def g_objective(g_params):
            _, adversarial, rec = gan_losses(generator, discriminator, g_params, d_params, condition[g_rows],
                                             target[g_rows], g_noise, g_noise, reconstruction=reconstruction)
            return adversarial_weight * adversarial + reconstruction_weight * rec, (adversarial, rec)

        (_, (adversarial, rec)), g_grads = jax.value_and_grad(g_objective, has_aux=True)(state.generator)
        g_updates, g_opt = g_tx.update(g_grads, state.generator_opt, state.generator)
        g_params = optax.apply_updates(state.generator, g_updates)
        finite = jnp.isfinite(d_loss) & jnp.isfinite(adversarial) & jnp.isfinite(rec)
        return GANState(g_params, d_params, g_opt, d_opt), jnp.stack([d_loss, adversarial, rec, finite])

    @jax.jit
    def run_chunk(state, key, condition, target, train_rows):
        keys = jax.random.split(key, steps)
        return jax.lax.scan(lambda s, k: step(s, k, condition, target, train_rows), state, keys)

    return run_chunk


def _check(value, name, low, *, integer=True, allow_low=False):
    bad = isinstance(value, bool) or (integer and not isinstance(value, (int, np.integer)))
    if bad or not (value > low or (allow_low and value == low)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"GAN fill: {name} must be {kind} {'>=' if allow_low else '>'} {low}; found {value!r}")


def train_gan(condition, target, present, key, *, holdout: float = 0.1, noise_dim: int = 16,
              hidden_dims=(256, 256), steps: int = 3000, batch_size: int = 256, eval_every: int = 100,
              generator_learning_rate: float = 1e-3, discriminator_learning_rate: float = 1e-3,
              adversarial_weight: float = 0.05, reconstruction_weight: float = 1.0, reconstruction: str = "l2",
              weight_decay: float = 0.0, n_samples: int = 16) -> GANResult:
    """Trains the conditional GAN on the rows whose target is present (module docstring).

    Args:
      condition: (n, c) float32 conditions of all n rows.
      target: (n, d) float32 targets (rows where ``present`` is False are ignored).
      present: (n,) bool, True where the target row is known.
      key: PRNG key; the same key gives the same result.
      holdout: share of the present rows masked out of training and used to select the step.
      noise_dim: width of :math:`z`.
      hidden_dims: hidden widths of both MLPs.
      steps: training steps (each one D and one G update).
      batch_size: rows per batch.
      eval_every: steps per jitted chunk; the held-out error is scored after each.
      generator_learning_rate, discriminator_learning_rate: the two Adam learning rates.
      adversarial_weight: :math:`\\lambda_\\text{adv}` (0 trains a plain regressor).
      reconstruction_weight: :math:`\\lambda_\\text{rec}`.
      reconstruction: ``"l2"`` or ``"l1"``.
      weight_decay: decoupled weight decay of both optimizers (AdamW); with about a thousand
        training rows and a wide condition the generator overfits quickly without it.
      n_samples: noise draws averaged when scoring held-out rows.

    Returns:
      :class:`GANResult`.

    Raises:
      DataError: mismatched shapes, non-finite inputs, or fewer than 2 present rows.
      ConfigError: a bad option.
      TrainingDivergedError: a loss became NaN or infinite.
    """
    condition, target = np.asarray(condition, np.float32), np.asarray(target, np.float32)
    present = np.asarray(present, bool)
    n = condition.shape[0]
    if condition.ndim != 2 or target.ndim != 2 or target.shape[0] != n or present.shape != (n,):
        raise DataError("GAN inputs must be (n, c) conditions, (n, d) targets and (n,) present flags",
                        field="condition/target/present", found=f"{condition.shape}, {target.shape}, {present.shape}",
                        expected="matching first dimensions")
    for name, array in (("condition", condition), ("target", target[present])):
        if not np.all(np.isfinite(array)):
            raise DataError("GAN inputs must be finite", field=name, found="NaN or inf", expected="finite values")
    if reconstruction not in RECONSTRUCTIONS:
        raise ConfigError(f"GAN fill: reconstruction must be one of {RECONSTRUCTIONS}; found {reconstruction!r}")
    for value, name in ((noise_dim, "noise_dim"), (steps, "steps"), (batch_size, "batch_size"),
                        (eval_every, "eval_every"), (n_samples, "n_samples")):
        _check(value, name, 0)
    for value, name in ((generator_learning_rate, "generator_learning_rate"),
                        (discriminator_learning_rate, "discriminator_learning_rate")):
        _check(value, name, 0, integer=False)
    for value, name in ((adversarial_weight, "adversarial_weight"), (reconstruction_weight, "reconstruction_weight"),
                        (weight_decay, "weight_decay")):
        _check(value, name, 0, integer=False, allow_low=True)
    if not 0 <= holdout < 1:
        raise ConfigError(f"GAN fill: holdout must be in [0, 1); found {holdout!r}")
    hidden_dims = tuple(int(h) for h in hidden_dims)
    rows = np.flatnonzero(present)
    if rows.size < 2:
        raise DataError("too few present rows to train the GAN on", field="present", found=f"{rows.size} rows",
                        expected="at least 2")
    split_key, init_key, train_key, score_key = jax.random.split(key, 4)
    shuffled = rows[np.asarray(jax.random.permutation(split_key, rows.size))]
    n_holdout = min(int(round(holdout * rows.size)), rows.size - 1)
    holdout_rows, train_rows = np.sort(shuffled[:n_holdout]), np.sort(shuffled[n_holdout:])

    generator, discriminator = Generator(hidden_dims, target.shape[1]), Discriminator(hidden_dims)
    g_key, d_key = jax.random.split(init_key)
    g_params = jax.jit(generator.init)(g_key, condition[:1], jnp.zeros((1, noise_dim)))  # one compiled call
    d_params = jax.jit(discriminator.init)(d_key, condition[:1], target[:1])
    learning_rates = (float(generator_learning_rate), float(discriminator_learning_rate))
    g_tx, d_tx = _optimizers(learning_rates, float(weight_decay))
    state = GANState(g_params, d_params, g_tx.init(g_params), d_tx.init(d_params))
    run_chunk = _make_chunk(generator, discriminator, learning_rates, float(weight_decay), noise_dim=int(noise_dim),
                            batch_size=int(batch_size),
                            steps=eval_every, adversarial_weight=float(adversarial_weight),
                            reconstruction_weight=float(reconstruction_weight), reconstruction=reconstruction)
    device_condition, device_target = jnp.asarray(condition), jnp.asarray(np.where(present[:, None], target, 0.0))
    device_train = jnp.asarray(train_rows, jnp.int32)
    held_condition, held_target = jnp.asarray(condition[holdout_rows]), jnp.asarray(target[holdout_rows])

    history, best = [], (np.inf, 0, g_params)
    n_chunks = -(-steps // eval_every)
    for chunk in range(n_chunks):
        state, metrics = run_chunk(state, jax.random.fold_in(train_key, chunk), device_condition, device_target,
                                   device_train)
        metrics = np.asarray(metrics)
        step = (chunk + 1) * eval_every
        if not metrics[:, 3].all():
            bad = int(np.argmin(metrics[:, 3]))
            raise TrainingDivergedError(f"GAN fill: a loss became NaN or infinite at step {chunk * eval_every + bad + 1}")
        record = {"step": step, "d_loss": float(metrics[:, 0].mean()), "g_adversarial": float(metrics[:, 1].mean()),
                  "g_reconstruction": float(metrics[:, 2].mean())}
        if holdout_rows.size:
            filled = generate(generator, state.generator, held_condition, score_key, noise_dim=noise_dim,
                              n_samples=n_samples)
            record["holdout_mse"] = float(jnp.mean(jnp.square(filled - held_target)))
            score = record["holdout_mse"]
        else:
            score = -step  # nothing held out: keep the last step
        history.append(record)
        if score < best[0]:
            best = (score, step, state.generator)
    return GANResult(generator, jax.device_get(best[2]), int(noise_dim), int(best[1]), holdout_rows, history)
