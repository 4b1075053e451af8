"""The train state and the optimizer built from a config.

The state is a pytree (params, optimizer state, step counter, base PRNG key), so one
``jax.jit`` / ``jax.pmap`` call can take and return it, and Orbax can save it whole.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jaxrec import models
from jaxrec.errors import ConfigError
from jaxrec.train._config import TrainConfig


@struct.dataclass
class TrainState:
    """Everything a train step reads and writes.

    Attributes:
      step: int32 scalar, optimizer updates applied so far.
      params: the model's parameter pytree.
      opt_state: the optax state.
      rng: (2,) uint32 base key; the dropout key of update ``s`` is ``fold_in(rng, s)``, so
        no key is carried from step to step and a resumed run draws the same keys.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def learning_rate_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The learning rate as a function of the update count.

    - ``constant``: :math:`\\eta`.
    - ``cosine``: cosine decay from :math:`\\eta` to ``min_learning_rate`` over all epochs.
    - ``warmup_cosine``: linear warm-up from 0 over ``warmup_epochs``, then cosine decay.
    - ``exponential``: MMRec's per-epoch rule :math:`\\eta\\,r^{e / E}` with
      :math:`r` = ``decay_rate``, :math:`E` = ``decay_epochs`` and :math:`e` the epoch index.
    """
    lr = config.learning_rate
    total = max(1, config.epochs * steps_per_epoch)
    if config.schedule == "constant":
        return optax.constant_schedule(lr)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(lr, decay_steps=total, alpha=config.min_learning_rate / lr)
    if config.schedule == "warmup_cosine":
        warmup = int(round(config.warmup_epochs * steps_per_epoch))
        if warmup >= total:
            raise ConfigError(f"train.warmup_epochs ({config.warmup_epochs}) must be shorter than "
                              f"train.epochs ({config.epochs})")
        return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=total,
                                                  end_value=config.min_learning_rate)
    if config.schedule == "exponential":
        rate, period = config.decay_rate, config.decay_epochs

        def exponential(count):
            epoch = jnp.asarray(count // steps_per_epoch, jnp.float32)  # a traced count or a host int
            return lr * rate ** (epoch / period)

        return exponential
    raise ConfigError(f"unknown train.schedule {config.schedule!r}")


_OPTIMIZER_FIELDS = ("optimizer", "learning_rate", "momentum", "weight_decay", "clip_norm", "schedule",
                     "warmup_epochs", "decay_rate", "decay_epochs", "min_learning_rate", "epochs")


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> optax.GradientTransformation:
    """The optax transformation the config asks for.

    ``weight_decay`` is coupled L2 (added to the gradient before the moments, as
    ``torch.optim.Adam/SGD/Adagrad(weight_decay=...)`` and so MMRec do) for ``adam``,
    ``sgd`` and ``adagrad``, and decoupled for ``adamw``. ``clip_norm`` clips the global
    gradient norm first. ``adagrad`` starts its accumulator at 0 with eps 1e-10 (torch's
    defaults, not optax's). Equal settings give the same (identical) object, so that
    compiled steps that take it as a static argument are reused across runs in a process.
    """
    settings = tuple(getattr(config, name) for name in _OPTIMIZER_FIELDS)
    return _optimizer(settings, int(steps_per_epoch))


@functools.lru_cache(maxsize=32)
def _optimizer(settings: tuple, steps_per_epoch: int) -> optax.GradientTransformation:
    config = TrainConfig(**dict(zip(_OPTIMIZER_FIELDS, settings)))
    schedule = learning_rate_schedule(config, steps_per_epoch)
    parts = []
    if config.clip_norm is not None:
        parts.append(optax.clip_by_global_norm(config.clip_norm))
    coupled_decay = config.weight_decay and config.optimizer != "adamw"
    if coupled_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    if config.optimizer == "adam":
        parts.append(optax.adam(schedule))
    elif config.optimizer == "adamw":
        parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
    elif config.optimizer == "sgd":
        parts.append(optax.sgd(schedule, momentum=config.momentum or None))
    elif config.optimizer == "adagrad":
        parts.append(optax.adagrad(schedule, initial_accumulator_value=0.0, eps=1e-10))
    else:
        raise ConfigError(f"unknown train.optimizer {config.optimizer!r}")
    return parts[0] if len(parts) == 1 else optax.chain(*parts)


class EpochGatedState(NamedTuple):
    """:func:`epoch_gated`'s state: the update count (every step) and the two groups' states."""

    count: jax.Array
    rest: Any
    gated: Any


class EpochGated(NamedTuple):
    """``init(params) -> state`` and ``apply(grads, state, params, *, has_gradient=True,
    scale=None) -> (params, state)``: the update applied (times ``scale``), ``has_gradient`` (a
    bool scalar) saying whether the gated parameters have a gradient in this step; a skipped step
    leaves them untouched. See :func:`epoch_gated`."""

    init: Callable
    apply: Callable


def epoch_gated(config: TrainConfig, steps_per_epoch: int, gated_params: Callable) -> EpochGated:
    r"""The config's optimizer, with the parameters ``gated_params(params)`` marks (a tree of
    Python bools) updated only in the steps where they have a gradient, torch-style.

    torch's optimizers skip a parameter whose ``.grad`` is None: no update, and its state
    (Adam's moments and its own step count, hence its bias corrections) is left as it was.
    LATTICE's ``learned_graph: mmrec`` relies on it in MMRec: the item graph's parameters (the
    feature tables, projections and modality weights) reach the loss only in an epoch's first
    step. An optax optimizer instead sees a zero gradient there and still moves them by their
    decaying momentum, with the global count's bias corrections. Here the marked leaves get an
    optimizer state of their own (the config's optimizer at learning rate 1, its update scaled
    by the schedule at the global update count: every optimizer jaxrec builds is linear in the
    learning rate, see :func:`make_optimizer`) that is updated, inside a ``lax.cond``, only when
    ``has_gradient`` is true; otherwise the marked leaves and their state stay as they were.
    The other leaves get the config's optimizer as usual. ``clip_norm`` (a global norm over
    both groups) is refused: torch would clip over the parameters with a gradient, which this
    split does not model.
    """
    if config.clip_norm is not None:
        raise ConfigError("train.clip_norm cannot be combined with a model whose parameters get a gradient only "
                          "in an epoch's first step (LATTICE's learned_graph: mmrec)")
    rest_tx = make_optimizer(config, steps_per_epoch)
    unit = dataclasses.replace(config, learning_rate=1.0, schedule="constant", min_learning_rate=0.0)
    gated_tx = make_optimizer(unit, steps_per_epoch)
    schedule = learning_rate_schedule(config, steps_per_epoch)

    def flags_of(params):  # per leaf of params (flattened): marked or not
        return jax.tree.structure(params).flatten_up_to(gated_params(params))

    def split(tree, params, flags):  # (the unmarked leaves, the marked leaves) of a params-shaped tree
        leaves = jax.tree.structure(params).flatten_up_to(tree)
        return tuple(x for x, f in zip(leaves, flags) if not f), tuple(x for x, f in zip(leaves, flags) if f)

    def merge(rest, gated, flags, params):
        rest, gated = iter(rest), iter(gated)
        return jax.tree.structure(params).unflatten([next(gated) if f else next(rest) for f in flags])

    def init(params):
        rest, gated = split(params, params, flags_of(params))
        return EpochGatedState(jnp.zeros([], jnp.int32), rest_tx.init(rest), gated_tx.init(gated))

    def apply(grads, state, params, *, has_gradient=True, scale=None):
        flags = flags_of(params)
        rest_grads, gated_grads = split(grads, params, flags)
        rest_params, gated_now = split(params, params, flags)
        rest_updates, rest_state = rest_tx.update(rest_grads, state.rest, rest_params)
        rate = schedule(state.count)
        if scale is not None:
            rate = rate * scale
            rest_updates = tuple((u * scale).astype(u.dtype) for u in rest_updates)

        def step(_):
            out, new_state = gated_tx.update(gated_grads, state.gated, gated_now)
            return optax.apply_updates(gated_now, tuple((u * rate).astype(u.dtype) for u in out)), new_state

        gated_new, gated_state = jax.lax.cond(jnp.asarray(has_gradient, bool), step,
                                              lambda _: (gated_now, state.gated), None)
        return (merge(optax.apply_updates(rest_params, rest_updates), gated_new, flags, params),
                EpochGatedState(state.count + 1, rest_state, gated_state))

    return EpochGated(init, apply)


def model_optimizer(config: TrainConfig, steps_per_epoch: int, built) -> Any:
    """The optimizer a run of ``built`` trains with: :func:`make_optimizer`, or
    :func:`epoch_gated` for a model with ``epoch_start_params``."""
    if built.epoch_start_params is None:
        return make_optimizer(config, steps_per_epoch)
    return _epoch_gated_cached(tuple(getattr(config, name) for name in _OPTIMIZER_FIELDS), int(steps_per_epoch),
                               built.epoch_start_params)


@functools.lru_cache(maxsize=16)
def _epoch_gated_cached(settings: tuple, steps_per_epoch: int, gated_params: Callable) -> EpochGated:
    # One object per settings and marker, so that compiled steps keyed on it are reused.
    return epoch_gated(TrainConfig(**dict(zip(_OPTIMIZER_FIELDS, settings))), steps_per_epoch, gated_params)


def optimizer_step(tx, grads, opt_state, params, ctx, scale=None):
    """A train step's ``(params, opt_state)`` after the update of ``tx`` (times ``scale``, the
    batched search's per-trial learning rate). An :class:`EpochGated` optimizer also gets whether
    the gated parameters have a gradient (``ctx[EPOCH_STEP] <= 0``; always, for a ctx without
    that key) and leaves them untouched when not."""
    if isinstance(tx, EpochGated):
        has_gradient = True
        if isinstance(ctx, Mapping) and models.EPOCH_STEP in ctx:
            has_gradient = jnp.asarray(ctx[models.EPOCH_STEP]) <= 0
        return tx.apply(grads, opt_state, params, has_gradient=has_gradient, scale=scale)
    updates, opt_state = tx.update(grads, opt_state, params)
    if scale is not None:
        updates = jax.tree.map(lambda u: (u * scale).astype(u.dtype), updates)
    return optax.apply_updates(params, updates), opt_state


def init_entry_points(module, ctx, batch):
    """A method for ``module.init(..., method=init_entry_points)`` that runs both entry
    points (``encode`` and ``loss_terms``), so that parameters used by only one exist."""
    return module.encode(ctx, False), module.loss_terms(ctx, batch, False)


def init_state(module, ctx: Mapping, example_batch: Mapping, tx: optax.GradientTransformation,
               seed: int) -> TrainState:
    """A fresh state: parameters from ``seed``, optimizer state, step 0 (one compiled call).

    The seed (0 <= seed < 2^32, as the config allows) is a traced argument: one compilation per
    model serves every seed (a search over ``train.seed``), and ``PRNGKey`` of the traced uint32
    gives the key of the Python integer (tested)."""
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2^32); found {seed}")
    return _init_state_compiled(module, ctx, example_batch, tx, np.uint32(seed))


@functools.partial(jax.jit, static_argnums=(0, 3))
def _init_state_compiled(module, ctx, example_batch, tx, seed) -> TrainState:
    return _init_state(module, ctx, example_batch, tx, seed)


def _init_state(module, ctx, example_batch, tx, seed: int) -> TrainState:
    init_key, dropout_key, base_key = jax.random.split(jax.random.PRNGKey(seed), 3)
    variables = module.init({"params": init_key, "dropout": dropout_key}, ctx, example_batch,
                            method=init_entry_points)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=base_key)


def abstract_state(module, ctx, example_batch, tx, seed: int) -> TrainState:
    """The state's shapes and dtypes, without allocating it (``jax.eval_shape``)."""
    return jax.eval_shape(lambda c, b: _init_state(module, c, b, tx, seed), ctx, example_batch)


def leaf_name(path) -> str:
    """A pytree path as text: ``params['items']``, ``opt_state[0].mu['items']``."""
    text = ""
    for entry in path:
        if isinstance(entry, jax.tree_util.GetAttrKey):
            text += f".{entry.name}" if text else entry.name
        elif isinstance(entry, jax.tree_util.DictKey):
            text += f"[{entry.key!r}]" if text else str(entry.key)
        elif isinstance(entry, jax.tree_util.SequenceKey):
            text += f"[{entry.idx}]"
        else:
            text += str(entry)
    return text or "(root)"


@jax.jit
def _finite_leaves(leaves):
    return [jnp.all(jnp.isfinite(leaf)) for leaf in leaves]


def host_view(leaf) -> np.ndarray | None:
    """``leaf`` as a NumPy array when it already lives in host memory -- a NumPy array or
    scalar, or a ``jax.Array`` whose shards are all this process's CPU devices (no transfer; a
    sharded one is assembled) -- else None (an accelerator's array, or a global array that
    other processes share: reduce those where they are)."""
    if isinstance(leaf, jax.Array):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        if not leaf.is_fully_addressable or any(d.platform != "cpu" for d in leaf.devices()):
            return None
        return np.asarray(leaf)
    if isinstance(leaf, (np.ndarray, np.generic, int, float, bool)):
        return np.asarray(leaf)
    return None


def non_finite_leaves(tree) -> list[str]:
    """Names (:func:`leaf_name`) of the floating-point leaves of ``tree`` holding a NaN or an
    infinity, in tree order; ``[]`` when all are finite. Leaves in host memory
    (:func:`host_view`: every array of a CPU run) are checked with NumPy where they are; the
    others by one compiled reduction per tree structure where they are (nothing is gathered)."""
    paths, leaves = [], []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            paths.append(path)
            leaves.append(leaf)
    if not leaves:
        return []
    views = [host_view(leaf) for leaf in leaves]
    if all(view is not None for view in views):
        # No compilation for a new tree structure (XLA took ~0.5 s for a model's state).
        finite = [bool(np.isfinite(view).all()) for view in views]
    else:
        finite = jax.device_get(_finite_leaves(leaves))
    return [leaf_name(path) for path, ok in zip(paths, finite) if not ok]


def count_params(params) -> int:
    """Number of scalars in a parameter pytree (works on abstract shapes too)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


def example_batch(batch_size: int, n_negatives: int) -> dict[str, np.ndarray]:
    """A batch with the shapes and dtypes of the trainer's batches (for initialization and
    shape checks): ``users``, ``pos_items`` (B,) int32, ``neg_items`` (B, n_neg) int32 and
    ``weights`` (B,) float32 (0 marks padding rows of an epoch's last batch)."""
    return {
        "users": np.zeros((batch_size,), np.int32),
        "pos_items": np.zeros((batch_size,), np.int32),
        "neg_items": np.zeros((batch_size, n_negatives), np.int32),
        "weights": np.ones((batch_size,), np.float32),
    }
