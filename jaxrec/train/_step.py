"""The jit-compiled train step and its data-parallel forms.

One update: ``params -> model.loss_terms -> weighted sum -> value_and_grad -> optax``.
:class:`StepRunner` compiles it once per run, scanned over a stack of batches so that a
whole epoch (or ``steps_per_call`` batches) is one device call, in one of three modes:

- ``none``: one device, ``jax.jit``.
- ``pmap``: the batch split over devices with ``jax.pmap``. The step is traced inside
  :func:`jaxrec.losses.data_parallel`, so every reduction over batch rows in a model's terms
  (:func:`jaxrec.losses.batch_sum`) sums over all devices before its non-linear part: every
  device computes the terms of the WHOLE batch, and a plain ``lax.pmean`` of the devices'
  gradients is the one-device gradient (``batch_sum``'s gradient is scaled by the device
  count for that). A device whose shard is all padding is fine: its rows weigh 0.
- ``sharded``: ``jax.jit`` over a 1-D device mesh with the batch sharded and the state and
  context replicated (``NamedSharding``); the compiler partitions the global computation,
  so every term means exactly what it means on one device.

Multi-process runs (:mod:`jaxrec.train._distributed`) go through the mesh runner of
:mod:`jaxrec.train._mesh`; :class:`StepRunner` is one process's.

``pmap`` over ONE device computes exactly the one-device updates (every cross-device sum is
over a single shard) at pmap's extra cost per call, so :class:`StepRunner` runs the
``none`` program instead and says so in :attr:`StepRunner.notice`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.extend.core import Var
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrec import losses, models
from jaxrec.errors import ConfigError
from jaxrec.train import _distributed
from jaxrec.train._state import EpochGated, TrainState, optimizer_step

_AXIS = "batch"


class StepMetrics(NamedTuple):
    """What one update reports (stacked over the steps of a call).

    Attributes:
      loss: the weighted sum of the terms.
      terms: name -> unweighted term value.
      grads_finite: whether every gradient entry was finite.
    """

    loss: jax.Array
    terms: dict[str, jax.Array]
    grads_finite: jax.Array


def make_train_step(module, tx: optax.GradientTransformation, loss_weights: Mapping[str, float],
                    *, axis_name: str | None = None, steps_per_epoch: int | None = None,
                    keep_unread: bool = False):
    """``train_step(state, ctx, batch) -> (state, StepMetrics)`` for one batch.

    The weighted sum is :func:`jaxrec.losses.combine`: every term needs a weight, and
    terms with weight 0 are left out of the sum (so that a NaN in an unused term cannot reach
    the parameters) and out of the step's reported terms, so the compiler drops their
    computation too (MMRec computes such a term and multiplies it by 0; FREEDOM's
    ``modality_bpr`` at 0 would project every feature table each step for nothing, see
    docs/scaling.md). The history's ``terms`` are the weighted ones. A ``ctx`` with the key :data:`jaxrec.models.EPOCH_STEP`
    gets it set to ``state.step % steps_per_epoch``, the step's index within its epoch (the
    model contract); without ``steps_per_epoch`` (a runner with no epochs, as online updates)
    the ctx's own value stays (LATTICE's builder puts -1 there: its ``mmrec`` mode
    then recomputes its whole graph at every step). ``tx`` is an optax transformation or a
    :class:`jaxrec.train._state.EpochGated` optimizer (:func:`jaxrec.train.epoch_gated`), which the
    step gives whether its gated parameters have a gradient (:func:`~jaxrec.train._state.optimizer_step`);
    ``keep_unread`` does not apply to the latter.

    ``keep_unread``: parameters that the weighted loss does not read at all (found by tracing it,
    :func:`unread_params`: e.g. FREEDOM's feature tables and projections when ``modality_bpr``
    has weight 0) get an exactly zero gradient, and an optimizer that maps a zero gradient on a
    zero state to a zero update and keeps that state at zero (adam, adamw, sgd, adagrad without
    weight decay; global-norm clipping keeps a zero a zero) would return them unchanged. With
    ``keep_unread`` the step returns them, and their optimizer state, as they came in, so the
    compiler drops their optimizer arithmetic. The same math, provided their optimizer state is
    zero (it starts so, and stays so while the loss does not read them): those leaves bit for
    bit, the others up to the rounding of a differently fused program. The caller vouches for
    the optimizer; one device only (``axis_name`` None; ignored otherwise).
    """
    weights = {name: float(w) for name, w in loss_weights.items()}

    def train_step(state: TrainState, ctx, batch) -> tuple[TrainState, StepMetrics]:
        dropout_key = jax.random.fold_in(state.rng, state.step)
        ctx = with_epoch_step(ctx, state.step, steps_per_epoch)

        def total_loss(params):
            terms = module.apply({"params": params}, ctx, batch, True, method="loss_terms",
                                 rngs={"dropout": dropout_key})
            total, terms = losses.combine(terms, weights)
            # Only the weighted terms leave the step: a term of weight 0 that nothing reads is not computed.
            return jnp.asarray(total, jnp.float32), {name: v for name, v in terms.items() if weights[name] != 0.0}

        with losses.data_parallel(axis_name):
            (loss, terms), grads = jax.value_and_grad(total_loss, has_aux=True)(state.params)
        if axis_name is not None:
            # The terms already span the whole batch (and agree on every device); each device's
            # gradient carries its rows' share times the device count, so the mean is exact.
            grads = jax.lax.pmean(grads, axis_name)
        grads_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        params, opt_state = optimizer_step(tx, grads, state.opt_state, state.params, ctx)
        if keep_unread and axis_name is None and not isinstance(tx, EpochGated):
            unread = unread_params(lambda p: total_loss(p)[0], state.params)
            if any(jax.tree.leaves(unread)):
                params, opt_state = _kept_as_they_were(tx, unread, (params, opt_state),
                                                       (state.params, state.opt_state))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, StepMetrics(loss, dict(terms), grads_finite)

    return train_step


def with_epoch_step(ctx, step, steps_per_epoch: int | None):
    """``ctx`` with :data:`jaxrec.models.EPOCH_STEP` set to ``step % steps_per_epoch`` (the step's
    index within its epoch, the model contract) where ``ctx`` holds that key and the runner has
    epochs (``steps_per_epoch``); else ``ctx`` as it is. Every trainer's step calls this, the
    sequential one and the batched search's alike, so a model's per-epoch schedule (LATTICE's
    ``learned_graph: mmrec``) is the same in both."""
    if steps_per_epoch and isinstance(ctx, Mapping) and models.EPOCH_STEP in ctx:
        return {**ctx, models.EPOCH_STEP: (step % steps_per_epoch).astype(jnp.int32)}
    return ctx


def unread_params(loss_of_params, params):
    """A tree shaped like ``params`` of Python bools: True where the scalar ``loss_of_params(params)``
    does not read the leaf at all (no path from it to the output in the traced program; an
    equation that outputs anything the loss needs counts all its inputs as read, so a call, a
    scan or a custom derivative is taken whole: the answer errs toward "read")."""
    closed = jax.make_jaxpr(loss_of_params)(params)
    program = closed.jaxpr
    needed = {v for v in program.outvars if isinstance(v, Var)}
    for eqn in reversed(program.eqns):
        if eqn.effects or any(isinstance(v, Var) and v in needed for v in eqn.outvars):
            needed.update(v for v in eqn.invars if isinstance(v, Var))
    flags = [v not in needed for v in program.invars]
    return jax.tree.unflatten(jax.tree.structure(params), flags)


class _Both:
    """A pytree leaf holding one optimizer-state leaf after and before the update."""

    __slots__ = ("new", "old")

    def __init__(self, new, old):
        self.new, self.old = new, old


def _kept_as_they_were(tx, unread, updated, before):
    # The unread leaves of the parameters and of every parameter-shaped part of the optimizer
    # state (optax.tree_utils.tree_map_params finds those parts) as they were; the rest updated.
    (new_params, new_opt), (old_params, old_opt) = updated, before
    params = jax.tree.map(lambda skip, new, old: old if skip else new, unread, new_params, old_params)
    both = jax.tree.map(_Both, new_opt, old_opt)
    opt_state = optax.tree_utils.tree_map_params(
        tx, lambda pair, skip: pair.old if skip else pair.new, both, unread,
        transform_non_params=lambda part: jax.tree.map(lambda pair: pair.new, part))
    return params, opt_state


def _scanned(train_step):
    def run_steps(state, ctx, batches):
        return jax.lax.scan(lambda carry, batch: train_step(carry, ctx, batch), state, batches)

    return run_steps


def _sampled(train_step, n_steps: int, select):
    """``run(state, ctx, arrays, epoch, first_step)``: ``n_steps`` updates from step
    ``first_step`` of epoch ``epoch``, the batches built on device from ``arrays``
    (:class:`jaxrec.data.DeviceEpochArrays`) for all the steps at once (one vectorized draw, not
    one per step: fewer, larger kernels) and passed through ``select`` (this device's rows, or a
    sharding constraint), then scanned as :func:`_scanned` scans host batches."""

    def run(state, ctx, arrays, epoch, first_step):
        steps = first_step + jnp.arange(n_steps, dtype=jnp.int32)
        # Already in the contract's layout (int32 indices, (B, n_neg) negatives, float32 weights).
        batches = select(arrays.steps_batches(epoch, steps))
        return jax.lax.scan(lambda carry, batch: train_step(carry, ctx, batch), state, batches)

    return run


@functools.lru_cache(maxsize=16)
def _compiled_sampled(module, tx, loss_weights: tuple, parallel: str, devices: tuple, steps_per_epoch: int | None,
                      keep_unread: bool, n_steps: int):
    # As _compiled_steps, for the fused program of StepRunner.run_sampled.
    weights = dict(loss_weights)
    if parallel == "pmap":
        step = make_train_step(module, tx, weights, axis_name=_AXIS, steps_per_epoch=steps_per_epoch)
        n = len(devices)

        def own_rows(batches):  # every device builds the whole batches (same keys) and keeps its rows
            index = jax.lax.axis_index(_AXIS)
            return {k: jax.lax.dynamic_slice_in_dim(v, index * (v.shape[1] // n), v.shape[1] // n, axis=1)
                    for k, v in batches.items()}

        return jax.pmap(_sampled(step, n_steps, own_rows), axis_name=_AXIS, devices=devices, donate_argnums=0)
    step = make_train_step(module, tx, weights, steps_per_epoch=steps_per_epoch, keep_unread=keep_unread)
    if parallel == "sharded":
        mesh = Mesh(np.asarray(devices), (_AXIS,))

        def constrain(batches):
            def spec(v):  # (steps, B, ...): the rows over the devices
                return NamedSharding(mesh, PartitionSpec(None, _AXIS, *([None] * (v.ndim - 2))))

            return {k: jax.lax.with_sharding_constraint(v, spec(v)) for k, v in batches.items()}

        return jax.jit(_sampled(step, n_steps, constrain), donate_argnums=0,
                       out_shardings=NamedSharding(mesh, PartitionSpec()))
    return jax.jit(_sampled(step, n_steps, lambda batch: batch), donate_argnums=0)


@functools.lru_cache(maxsize=16)
def _compiled_steps(module, tx, loss_weights: tuple, parallel: str, devices: tuple, steps_per_epoch: int | None,
                    keep_unread: bool):
    # Cached on (module, optimizer, weights, mode, devices), all hashable and compared by value
    # (modules, weights) or identity (the cached optimizer): runs in one process that agree on
    # them share one compiled program instead of compiling it again.
    weights = dict(loss_weights)
    if parallel == "pmap":
        step = make_train_step(module, tx, weights, axis_name=_AXIS, steps_per_epoch=steps_per_epoch)
        return jax.pmap(_scanned(step), axis_name=_AXIS, devices=devices, donate_argnums=0)
    step = make_train_step(module, tx, weights, steps_per_epoch=steps_per_epoch, keep_unread=keep_unread)
    if parallel == "sharded":
        replicated = NamedSharding(Mesh(np.asarray(devices), (_AXIS,)), PartitionSpec())
        return jax.jit(_scanned(step), donate_argnums=0, out_shardings=replicated)
    return jax.jit(_scanned(step), donate_argnums=0)


class StepRunner:
    """Runs the scanned train step on stacks of batches in the configured parallel mode.

    Host code sees one state: :meth:`put_state` places it (replicated for ``pmap`` and
    ``sharded``) and :meth:`get_state` returns the single copy to evaluate or save.

    Args:
      module: the model.
      tx: the optimizer.
      loss_weights: weight per term.
      parallel: ``"none"``, ``"pmap"`` or ``"sharded"``.
      batch_size: the global batch size (must divide evenly over the devices).
      devices: devices to use (default: all local devices; one for ``"none"``).
      steps_per_epoch: batches per epoch, for a model whose ctx asks for each step's place in
        its epoch (:func:`make_train_step`).
      keep_unread: leave the parameters the weighted loss never reads, and their optimizer
        state, as they are (:func:`make_train_step`; only for an optimizer that would not move
        them: no weight decay).
    """

    def __init__(self, module, tx, loss_weights, *, parallel: str = "none", batch_size: int,
                 devices=None, steps_per_epoch: int | None = None, keep_unread: bool = False):
        self.parallel = parallel
        _distributed.check_parallel_mode(parallel)
        if parallel == "none":
            self.devices = list(devices or jax.local_devices())[:1]
        else:
            self.devices = list(devices or jax.local_devices())
        # A line for the run's log when the mode asked for is not the one run (else None).
        self.notice: str | None = None
        if parallel == "pmap" and len(self.devices) == 1:
            self.parallel = parallel = "none"
            self.notice = ("train.parallel=pmap on a single device: running the one-device jit step instead "
                           "(the same updates, without pmap's per-call overhead)")
        n = len(self.devices)
        self.mesh = Mesh(np.asarray(self.devices), (_AXIS,))
        self._replicated = NamedSharding(self.mesh, PartitionSpec())
        self._leading = NamedSharding(self.mesh, PartitionSpec(_AXIS))
        if batch_size % n:
            raise ConfigError(f"train.batch_size {batch_size} does not divide over {n} devices in "
                              f"train.parallel={parallel!r} mode; use a multiple of {n}")
        if parallel not in ("none", "pmap", "sharded"):
            raise ConfigError(f"unknown train.parallel {parallel!r}; expected none, pmap or sharded")
        self._key = (module, tx, tuple(sorted(loss_weights.items())), parallel, tuple(self.devices), steps_per_epoch,
                     bool(keep_unread))
        self._run = _compiled_steps(*self._key)
        self.local_device = self.devices[0]  # where host code evaluates
        self.local_rows = slice(0, int(batch_size))  # the rows of each batch this process supplies: all

    def _batch_sharding(self, ndim: int) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(None, _AXIS, *([None] * (ndim - 2))))

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    def put_state(self, state: TrainState) -> TrainState:
        if self.parallel == "pmap":
            n = self.n_devices
            return jax.tree.map(lambda x: jax.device_put(np.stack([np.asarray(x)] * n), self._leading), state)
        if self.parallel == "sharded":
            return jax.device_put(state, self._replicated)
        return jax.device_put(state, self.devices[0])

    def put_ctx(self, ctx):
        return self.put_state(ctx)

    def get_state(self, state: TrainState) -> TrainState:
        """One device-0 copy of a (possibly replicated) state."""
        if self.parallel == "pmap":
            # Device 0's own buffer, reshaped: no gather dispatched on the pmap-sharded array
            # (an eager ``x[0]`` on it aborted the process once in a CI run on fake CPU devices).
            return jax.tree.map(lambda x: x.addressable_shards[0].data.reshape(x.shape[1:]), state)
        if self.parallel == "sharded":
            return jax.device_put(state, self.devices[0])
        return state

    def eval_params(self, state: TrainState):
        """The parameters to evaluate (one device-0 copy)."""
        return self.get_state(state).params

    def put_batches(self, batches: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Place a stack of batches, each array shaped ``(steps, batch_size, ...)``, in the
        contract's layout (:func:`jaxrec.models.normalize_batch`)."""
        batches = models.normalize_batch(batches)
        if self.parallel == "pmap":
            n = self.n_devices

            def split(a):  # (steps, B, ...) -> (devices, steps, B / devices, ...)
                a = np.asarray(a)
                per_device = a.reshape(a.shape[0], n, a.shape[1] // n, *a.shape[2:])
                return jax.device_put(np.moveaxis(per_device, 1, 0), self._leading)

            return {k: split(v) for k, v in batches.items()}
        if self.parallel == "sharded":
            return {k: jax.device_put(np.asarray(v), self._batch_sharding(np.ndim(v))) for k, v in batches.items()}
        return jax.device_put(dict(batches), self.devices[0])

    def run(self, state: TrainState, ctx, batches) -> tuple[TrainState, StepMetrics]:
        """Apply one update per stacked batch; returns the new state and per-step metrics."""
        state, metrics = self._run(state, ctx, batches)
        if self.parallel == "pmap":
            metrics = jax.tree.map(lambda x: x[0], metrics)  # identical on every device after pmean
        elif self.parallel == "sharded":
            # Sharded calls dispatched back to back can deadlock on host-platform devices.
            jax.block_until_ready(state)
        return state, metrics

    def put_sampler(self, arrays):
        """Place a :class:`jaxrec.data.DeviceEpochArrays` for :meth:`run_sampled` (replicated)."""
        return self.put_state(arrays)

    def run_sampled(self, state: TrainState, ctx, arrays, epoch: int, first_step: int,
                    n_steps: int) -> tuple[TrainState, StepMetrics]:
        """``n_steps`` updates from step ``first_step`` of epoch ``epoch`` (0-based), each batch
        computed on device inside the same compiled program (``train.sampler: device``);
        ``arrays`` from :meth:`put_sampler`. The updates are those of :meth:`run` on the
        batches :meth:`jaxrec.data.DeviceTrainBatches.epoch_stacked` returns."""
        run = _compiled_sampled(*self._key, int(n_steps))
        if self.parallel == "pmap":
            n = self.n_devices
            epoch_arg = jax.device_put(np.full(n, epoch, np.int32), self._leading)
            first_arg = jax.device_put(np.full(n, first_step, np.int32), self._leading)
        else:
            epoch_arg, first_arg = np.int32(epoch), np.int32(first_step)
        state, metrics = run(state, ctx, arrays, epoch_arg, first_arg)
        if self.parallel == "pmap":
            metrics = jax.tree.map(lambda x: x[0], metrics)
        elif self.parallel == "sharded":
            jax.block_until_ready(state)
        return state, metrics
