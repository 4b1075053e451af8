"""A 2-D device mesh ``(data, model)``: row-sharded embedding tables, data-parallel batches.

``train: {parallel: sharded, mesh: {data: D, model: M}}`` arranges the ``D * M`` devices in a
``jax.sharding.Mesh`` with axes ``("data", "model")`` and runs the scanned train step of
:mod:`jaxrec.train._step` through ``jax.jit`` with explicit in/out shardings:

- **Tables** -- every leaf of the train state whose LEADING dimension equals the dataset's
  ``n_users`` or ``n_items`` (user/item embedding tables, per-item feature tables and biases,
  and, by the same rule, their optimizer moments) -- are split by rows over ``model``:
  ``NamedSharding(mesh, P("model", None, ...))``. No model declares anything: the rule reads
  the shapes (:func:`table_rows`). A leaf that happens to match without being a table is
  sharded all the same, which changes where its rows live, never a result.
- Every other leaf (dense layers, the step counter, the PRNG key) and the model context are
  replicated; each stacked batch ``(steps, B, ...)`` is split over ``data`` along ``B``
  (``B`` must be a multiple of ``D``).

The compiler (GSPMD) partitions the one-device program, so every loss term and gradient is
the one-device value up to float rounding: an embedding lookup becomes a masked local gather
plus a sum over ``model``, its gradient a local scatter-add into the device's rows, the
optimizer update is elementwise on each device's rows.

**Padding.** A sharded dimension must divide by ``M``, so a table of ``n`` rows is stored
with ``ceil(n / M) * M`` rows, the extra rows zero. Inside the compiled step the state is
cut back to ``n`` rows before the model sees it (the model's own shapes are unchanged) and
padded again after the update: the padding rows get zero gradients, so zero Adam moments and
zero updates, and stay zero. Host code never sees padding: :meth:`MeshStepRunner.get_state`
returns the ``n``-row state. Checkpoints store the padded, sharded state as it is (each
process writes its shards) with the logical shapes beside it; a restore reads into any
mesh's padded layout (:mod:`jaxrec.train._checkpoint`).

**Models that need the whole table.** Graph models (lightgcn, freedom, lattice, bm3, lgmrec,
mgcn, mmgcn) propagate over all users and items in every step; with ``M > 1`` the compiler
all-gathers the sharded tables for the propagation (see ``docs/scaling.md``): results are
unchanged (tested), the stored tables and optimizer moments stay ``1/M`` per device, but the
step's peak memory holds the full propagated matrices as with ``M = 1``.

Evaluation ranks users sharded over ``data`` against the item table sharded over ``model``
(:func:`jaxrec.eval.evaluate_prepared_sharded`: top-k per shard, then merged).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec import eval as jeval
from jaxrec import models
from jaxrec.errors import ConfigError
from jaxrec.train import _distributed
from jaxrec.train._state import TrainState, leaf_name
from jaxrec.train._step import StepMetrics, StepRunner, make_train_step

DATA = "data"
MODEL = "model"
_NEVER_TABLES = ("step", "rng")


def mesh_shape(mesh: Mapping[str, int] | None, n_devices: int, *, where: str = "") -> tuple[int, int]:
    """``(D, M)`` from ``train.mesh`` (``None``: all devices on ``data``).

    ``data`` may be left out: it is then ``n_devices // model``.

    Raises:
      ConfigError: unknown axis names, non-positive sizes, or ``D * M`` different from the
        number of devices.
    """
    if mesh is None:
        return n_devices, 1
    unknown = sorted(set(mesh) - {DATA, MODEL})
    if unknown:
        raise ConfigError(f"{where}train.mesh has unknown axis {unknown[0]!r}; expected {{data: D, model: M}}")
    for axis, size in mesh.items():
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ConfigError(f"{where}train.mesh.{axis} must be a positive int; found {size!r}")
    model = mesh.get(MODEL, 1)
    if DATA not in mesh:
        if n_devices % model:
            raise ConfigError(f"{where}train.mesh.model={model} does not divide the {n_devices} devices")
        return n_devices // model, model
    data = mesh[DATA]
    if data * model != n_devices:
        raise ConfigError(f"{where}train.mesh {{data: {data}, model: {model}}} needs data * model = {data * model} "
                          f"devices; this run has {n_devices} (jax.device_count()); set data * model to "
                          f"{n_devices}, e.g. {{data: {n_devices // math.gcd(n_devices, model)}, "
                          f"model: {math.gcd(n_devices, model)}}}")
    return data, model


def check_mesh(train_config, *, where: str = "") -> tuple[int, int]:
    """``(D, M)`` of a train config against this machine, with the batch check: raises
    :class:`ConfigError` before anything is built (see :func:`mesh_shape`)."""
    if train_config.mesh is not None and train_config.parallel != "sharded":
        raise ConfigError(f"{where}train.mesh needs train.parallel: sharded (found {train_config.parallel!r})")
    data, model = mesh_shape(train_config.mesh, jax.device_count(), where=where)
    if train_config.batch_size % data:
        raise ConfigError(f"{where}train.batch_size {train_config.batch_size} does not divide over the mesh's "
                          f"data axis of {data}; use a multiple of {data}")
    return data, model


def make_mesh(data: int, model: int, devices=None) -> Mesh:
    """A ``(data, model)`` mesh of ``devices`` (default ``jax.devices()``), the model axis the
    inner one (neighbouring devices, the fastest links, exchange the table rows)."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != data * model:
        raise ConfigError(f"a mesh of {data} x {model} needs {data * model} devices; got {len(devices)}")
    return jax.make_mesh((data, model), (DATA, MODEL), axis_types=(AxisType.Auto, AxisType.Auto), devices=devices)


def table_rows(shape: tuple[int, ...], rows: Iterable[int]) -> int | None:
    """The table rule: a leaf of ``shape`` is a table when its leading dimension is one of
    ``rows`` (``n_users``, ``n_items``); returns that row count, else None."""
    return int(shape[0]) if len(shape) >= 1 and int(shape[0]) in set(rows) else None


class TableLayout:
    """Which leaves of a pytree are tables (:func:`table_rows`) and how they are padded.

    Args:
      abstract: the tree at its logical shapes (arrays or ``ShapeDtypeStruct``).
      rows: the table row counts (``n_users``, ``n_items``).
      model_size: ``M``; tables are padded to a multiple of it.
    """

    def __init__(self, abstract, rows: Iterable[int], model_size: int):
        rows = tuple(rows)
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(abstract)
        self.names = [leaf_name(path) for path, _ in flat]
        self.shapes = [tuple(leaf.shape) for _, leaf in flat]
        self.dtypes = [np.dtype(leaf.dtype) for _, leaf in flat]
        # A train state's step counter and PRNG key are never tables, whatever their shape.
        self.rows = [None if name in _NEVER_TABLES else table_rows(shape, rows)
                     for name, shape in zip(self.names, self.shapes)]
        self.model_size = model_size
        self.padded = [None if r is None else -(-r // model_size) * model_size for r in self.rows]

    def tables(self) -> dict[str, int]:
        """Leaf name -> logical row count, for the table leaves."""
        return {name: r for name, r in zip(self.names, self.rows) if r is not None}

    def padded_shapes(self) -> list[tuple[int, ...]]:
        return [shape if p is None else (p, *shape[1:]) for shape, p in zip(self.shapes, self.padded)]

    def specs(self):
        """Tree of ``PartitionSpec``: tables ``P(model, None, ...)``, others ``P()``."""
        return self.treedef.unflatten([
            P() if r is None else P(MODEL, *([None] * (len(shape) - 1))) for r, shape in zip(self.rows, self.shapes)])

    def shardings(self, mesh: Mesh):
        return jax.tree.map(lambda spec: NamedSharding(mesh, spec), self.specs(),
                            is_leaf=lambda x: isinstance(x, P))

    def pad(self, tree):
        """Tables padded with zero rows (traceable; numpy leaves stay numpy)."""
        leaves = self.treedef.flatten_up_to(tree)
        out = []
        for leaf, r, p in zip(leaves, self.rows, self.padded):
            if r is not None and p != r and leaf.shape[0] == r:
                width = [(0, p - r)] + [(0, 0)] * (leaf.ndim - 1)
                leaf = np.pad(leaf, width) if isinstance(leaf, np.ndarray) else jnp.pad(leaf, width)
            out.append(leaf)
        return self.treedef.unflatten(out)

    def unpad(self, tree):
        """Tables cut back to their logical rows (traceable)."""
        leaves = self.treedef.flatten_up_to(tree)
        return self.treedef.unflatten([leaf if r is None or leaf.shape[0] == r else leaf[:r]
                                       for leaf, r in zip(leaves, self.rows)])


def _host(x) -> np.ndarray:
    """A global array's value on the host (gathered across processes when not all local)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _place(host_tree, shardings):
    """Each process builds only its addressable shards from the host value."""
    def put(x, sharding):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(put, host_tree, shardings)


@functools.lru_cache(maxsize=16)
def _compiled_mesh_steps(module, tx, loss_weights: tuple, mesh: Mesh, layout_key, steps_per_epoch: int | None):
    layout = _LAYOUTS[layout_key]
    step = make_train_step(module, tx, dict(loss_weights), steps_per_epoch=steps_per_epoch)
    state_sharding = layout.shardings(mesh)

    def run_steps(state, ctx, batches):
        def body(padded, batch):
            new_state, metrics = step(layout.unpad(padded), ctx, batch)
            padded = jax.lax.with_sharding_constraint(layout.pad(new_state), state_sharding)
            return padded, metrics

        return jax.lax.scan(body, state, batches)

    replicated = NamedSharding(mesh, P())
    batch_rows = NamedSharding(mesh, P(None, DATA))  # (steps, B, ...): B over data
    return jax.jit(run_steps, donate_argnums=0, in_shardings=(state_sharding, replicated, batch_rows),
                   out_shardings=(state_sharding, replicated))


# Layouts by a hashable key (the compiled steps are cached on it).
_LAYOUTS: dict[tuple, TableLayout] = {}


def _layout_key(layout: TableLayout) -> tuple:
    key = (layout.treedef, tuple(layout.shapes), tuple(map(str, layout.dtypes)), tuple(layout.rows),
           layout.model_size)
    _LAYOUTS.setdefault(key, layout)
    return key


class MeshStepRunner:
    """:class:`~jaxrec.train.StepRunner`'s interface on a ``(data, model)`` mesh.

    The state on device is padded and sharded (module docstring); :meth:`get_state` gives
    the logical state on this process's first device, :meth:`put_state` takes a logical
    state (host or device) and places it.

    Args:
      module, tx, loss_weights: as for :class:`~jaxrec.train.StepRunner`.
      target: the abstract train state (``Experiment.target``), at logical shapes.
      n_users, n_items: the table row counts.
      data, model: the mesh shape ``(D, M)``; ``D * M`` devices.
      batch_size: the global batch size (a multiple of ``D``).
      devices: the devices (default ``jax.devices()``).
      steps_per_epoch: batches per epoch, for a model whose ctx asks for each step's place in
        its epoch (:func:`jaxrec.train.make_train_step`), as for
        :class:`~jaxrec.train.StepRunner`; a run passes it (:func:`make_runner`).
    """

    parallel = "sharded"

    def __init__(self, module, tx, loss_weights, *, target, n_users: int, n_items: int, data: int, model: int,
                 batch_size: int, devices=None, steps_per_epoch: int | None = None):
        if batch_size % data:
            raise ConfigError(f"train.batch_size {batch_size} does not divide over the mesh's data axis of {data}; "
                              f"use a multiple of {data}")
        self.mesh = make_mesh(data, model, devices)
        self.devices = list(self.mesh.devices.flat)
        self.data_size, self.model_size = data, model
        self.module = module
        self.layout = TableLayout(target, (n_users, n_items), model)
        self.params_layout = TableLayout(target.params, (n_users, n_items), model)
        self.n_users, self.n_items = n_users, n_items
        self._state_shardings = self.layout.shardings(self.mesh)
        self._replicated = NamedSharding(self.mesh, P())
        self._run = _compiled_mesh_steps(module, tx, tuple(sorted(loss_weights.items())), self.mesh,
                                         _layout_key(self.layout), steps_per_epoch)
        # A multi-process run (the mesh spans every process's devices): this process's first
        # device (host code evaluates there) and its rows of each global batch.
        self.batch_size = int(batch_size)
        self.multiprocess = _distributed.is_multiprocess()
        self.local_device = next(d for d in self.devices if d.process_index == jax.process_index())
        self.local_rows = _distributed.local_rows(self._batch_sharding(2), (1, self.batch_size), 1)

    def _batch_sharding(self, ndim: int) -> NamedSharding:
        return NamedSharding(self.mesh, P(None, DATA, *([None] * (ndim - 2))))

    @property
    def n_devices(self) -> int:
        return len(self.devices)

    def put_state(self, state: TrainState) -> TrainState:
        """A logical state (host or device arrays) padded and placed on the mesh; a state
        already placed (:meth:`init_state`) is returned as it is."""
        if _is_placed(state, self._state_shardings, self.layout.padded_shapes()):
            return state
        return _place(self.layout.pad(jax.tree.map(_host, state)), self._state_shardings)

    def restore_target(self, target):
        """``target`` (the abstract logical state) at the mesh's padded shapes with the mesh's
        shardings: Orbax reads each device's rows straight into place (tables row-sharded,
        everything else replicated), whatever mesh or process count wrote the checkpoint."""
        leaves = [jax.ShapeDtypeStruct(shape, leaf.dtype, sharding=sharding)
                  for leaf, shape, sharding in zip(jax.tree.leaves(target), self.layout.padded_shapes(),
                                                   jax.tree.leaves(self._state_shardings))]
        return jax.tree.unflatten(jax.tree.structure(target), leaves)

    def checkpoint_state(self, state: TrainState, *, copy: bool = False):
        """``(tree, logical shapes)`` to checkpoint: the state as it is on the mesh (padded,
        sharded; each process writes its own shards), or a copy on the same devices (the
        next step donates the original's buffers)."""
        if copy:
            state = _copy_placed(state)
        return state, self.layout.shapes

    def logical_params(self, params):
        """Placed (padded) parameters as the model sees them: unpadded, on this process's
        first device (gathered from every process)."""
        if _is_placed(params, self.params_layout.shardings(self.mesh), self.params_layout.padded_shapes()):
            return jax.device_put(self.params_layout.unpad(jax.tree.map(_host, params)), self.local_device)
        return params

    def init_state(self, module, ctx, example_batch, tx, seed: int) -> TrainState:
        """:func:`jaxrec.train.init_state` computed directly into the padded, sharded layout: no
        device ever holds a whole table. The same values (JAX's partitionable threefry draws
        the same numbers whatever the sharding)."""
        init = _sharded_init(module, tx, int(seed), self.mesh, _layout_key(self.layout))
        return init(self.put_ctx(ctx), jax.device_put(example_batch, self._replicated))

    def put_ctx(self, ctx):
        if self.multiprocess:  # one process's device arrays cannot be sent to the others' devices: via the host
            ctx = jax.tree.map(lambda x: np.asarray(x) if isinstance(x, jax.Array) and x.is_fully_addressable
                               else x, ctx)
        return jax.device_put(ctx, self._replicated)

    def get_state(self, state: TrainState) -> TrainState:
        """The logical (unpadded) state on this process's first device."""
        host = self.layout.unpad(jax.tree.map(_host, state))
        return jax.device_put(host, self.local_device)

    def eval_params(self, state: TrainState):
        """The parameters as they are on the mesh (padded, sharded), for :meth:`evaluate`."""
        return state.params

    def put_batches(self, batches: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Place stacked batches ``(steps, B, ...)``; in a multi-process run each process passes
        only its rows, ``(steps, B_local, ...)`` (:attr:`local_rows`)."""
        batches = models.normalize_batch(batches)
        if self.multiprocess:
            return {k: _distributed.global_array(self._batch_sharding(np.ndim(v)), v, (
                np.shape(v)[0], self.batch_size, *np.shape(v)[2:])) for k, v in batches.items()}
        return {k: jax.device_put(np.asarray(v), self._batch_sharding(np.ndim(v))) for k, v in batches.items()}

    def run(self, state: TrainState, ctx, batches) -> tuple[TrainState, StepMetrics]:
        state, metrics = self._run(state, ctx, batches)
        # Sharded calls dispatched back to back can deadlock on host-platform devices.
        jax.block_until_ready(state)
        if self.multiprocess:  # replicated over every process's devices: read the local copy
            metrics = jax.tree.map(_distributed.host_copy, metrics)
        return state, metrics

    def encode(self, params, ctx):
        """``(user_emb, item_emb)`` in eval mode, each padded to a multiple of ``M`` rows and
        row-sharded over ``model``; ``params`` logical or padded, anywhere."""
        shardings = self.params_layout.shardings(self.mesh)
        if not _is_placed(params, shardings, self.params_layout.padded_shapes()):
            # a logical state (a checkpoint's, the pending best): pad and place it
            params = _place(self.params_layout.pad(jax.tree.map(_host, params)), shardings)
        return _sharded_encoder(self.module, self.mesh, _layout_key(self.params_layout))(params, self.put_ctx(ctx))

    def evaluate(self, experiment, params, ctx, split_layout) -> dict[str, Any]:
        """:func:`jaxrec.train.evaluate_params` on the mesh: same metrics, tables never
        gathered (:func:`jaxrec.eval.evaluate_prepared_sharded`)."""
        user_emb, item_emb = self.encode(params, ctx)
        cfg = experiment.config.eval
        return jeval.evaluate_prepared_sharded(split_layout, user_emb, item_emb, mesh=self.mesh, ks=cfg.ks,
                                         metrics=cfg.metrics)


def _is_placed(tree, shardings, shapes) -> bool:
    leaves = jax.tree.leaves(tree)
    return len(leaves) == len(shapes) and all(
        isinstance(leaf, jax.Array) and leaf.sharding == sharding and tuple(leaf.shape) == tuple(shape)
        for leaf, sharding, shape in zip(leaves, jax.tree.leaves(shardings), shapes))


@jax.jit
def _copy_placed(tree):
    return jax.tree.map(jnp.copy, tree)  # outputs keep the inputs' shardings


@functools.lru_cache(maxsize=8)
def _sharded_init(module, tx, seed: int, mesh: Mesh, layout_key):
    from jaxrec.train._state import _init_state

    layout = _LAYOUTS[layout_key]
    return jax.jit(lambda ctx, batch: layout.pad(_init_state(module, ctx, batch, tx, seed)),
                   out_shardings=layout.shardings(mesh))


@functools.lru_cache(maxsize=16)
def _sharded_encoder(module, mesh: Mesh, layout_key):
    layout = _LAYOUTS[layout_key]
    rows = NamedSharding(mesh, P(MODEL, None))
    model_size = mesh.shape[MODEL]

    def encode(params, ctx):
        user_emb, item_emb = module.apply({"params": layout.unpad(params)}, ctx, False, method="encode")
        pad = lambda x: jnp.pad(x, [(0, -x.shape[0] % model_size), (0, 0)])  # noqa: E731
        return pad(user_emb), pad(item_emb)

    return jax.jit(encode, out_shardings=(rows, rows))


def make_runner(experiment):
    """The step runner of an experiment's ``train.parallel`` (and ``train.mesh``)."""
    tcfg = experiment.config.train
    if tcfg.parallel != "sharded":
        # Without weight decay every optimizer the config offers leaves a parameter with a zero
        # gradient and a zero state where it is, so the step may skip the ones the loss never reads.
        return StepRunner(experiment.module, experiment.tx, experiment.loss_weights, parallel=tcfg.parallel,
                          batch_size=tcfg.batch_size, steps_per_epoch=experiment.steps_per_epoch,
                          keep_unread=not tcfg.weight_decay)
    data, model = check_mesh(tcfg)
    return MeshStepRunner(experiment.module, experiment.tx, experiment.loss_weights, target=experiment.target,
                          n_users=experiment.dataset.n_users, n_items=experiment.dataset.n_items, data=data,
                          model=model, batch_size=tcfg.batch_size, steps_per_epoch=experiment.steps_per_epoch)


def initial_state(runner, experiment):
    """A fresh state for ``runner``: built in place on the mesh for a :class:`MeshStepRunner`
    (:meth:`MeshStepRunner.init_state`), else :func:`jaxrec.train.init_state`."""
    exp = experiment
    args = (exp.module, exp.built.ctx, exp.sampler.example_batch(), exp.tx, exp.config.train.seed)
    if isinstance(runner, MeshStepRunner):
        return runner.init_state(*args)
    from jaxrec.train._state import init_state

    return init_state(*args)


def restore_target(runner, target):
    """The tree a checkpoint of ``target``'s logical shapes is read into for ``runner``
    (:meth:`Checkpoints.restore`'s ``read_as``): the mesh's padded shapes and shardings for a
    :class:`MeshStepRunner` (Orbax reads each device's rows), else ``target`` itself."""
    return runner.restore_target(target) if isinstance(runner, MeshStepRunner) else target


def checkpoint_state(runner, state, *, copy: bool = False):
    """``(tree, logical shapes or None)`` to pass to :meth:`Checkpoints.save`: a mesh's state
    as it is on the devices (nothing gathered), else a host copy of the one logical state."""
    if isinstance(runner, MeshStepRunner):
        return runner.checkpoint_state(state, copy=copy)
    return jax.tree.map(lambda x: np.array(x, copy=True), runner.get_state(state)), None


def logical_params(runner, params):
    """Parameters as the model sees them (a mesh's placed, padded parameters unpadded)."""
    return runner.logical_params(params) if isinstance(runner, MeshStepRunner) else params


def _device_bytes(x) -> int:
    """The most bytes of ``x`` that one device holds (from its addressable shards)."""
    per_device: dict = {}
    for shard in x.addressable_shards:
        per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values())


def sharding_report(runner, state, experiment) -> dict[str, Any]:
    """``metrics.json``'s ``"sharding"``: the mesh, the process count, and per table (param
    path) the bytes one device holds (read from the arrays' addressable shards, padding
    included) and the table's logical size."""
    if isinstance(runner, MeshStepRunner):
        mesh = {DATA: runner.data_size, MODEL: runner.model_size}
    else:
        mesh = {DATA: runner.n_devices if runner.parallel != "none" else 1, MODEL: 1}
    rows = (experiment.dataset.n_users, experiment.dataset.n_items)
    per_device, total = {}, {}
    target = jax.tree_util.tree_flatten_with_path(experiment.target.params)[0]
    live = jax.tree.leaves(state.params)
    for (path, abstract), leaf in zip(target, live):
        if table_rows(abstract.shape, rows) is None:
            continue
        name = leaf_name(path)
        per_device[name] = _device_bytes(leaf)
        total[name] = int(math.prod(abstract.shape)) * np.dtype(abstract.dtype).itemsize
    state_bytes = {}
    for leaf in jax.tree.leaves(state):
        for shard in leaf.addressable_shards:
            state_bytes[shard.device] = state_bytes.get(shard.device, 0) + shard.data.nbytes
    return {"mesh": mesh, "processes": jax.process_count(), "table_bytes_per_device": per_device,
            "table_bytes_total": total, "state_bytes_per_device": max(state_bytes.values()) if state_bytes else 0}
