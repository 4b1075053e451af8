r"""Batched hyper-parameter search: the trials of a grid trained together as ONE program.

Settings that change no shape -- loss weights (hence regularization strengths), the learning
rate, the seed and the model arguments a model registers as traced -- can share one compiled
train step: the parameters and optimizer states of
the ``T`` trials are stacked on a leading trial axis, with each trial's loss weights and
learning rate as traced arrays. One device call then advances every trial by a whole epoch
(a loop over the trials of ``lax.scan`` over the epoch's batches -- not ``vmap``, which
XLA:CPU runs far slower here, see :func:`_make_epoch_fn`), and one call ranks every trial's
users for validation (:func:`jaxrec.eval.evaluate_prepared_many`). What the trials share is
paid once: start-up, data loading, compilation, the epoch's batches (trials with one seed
draw the same ones), the evaluation layout, and one dispatch and host sync per epoch. Host
work overlaps the device's: the next epoch's batches are drawn while an epoch runs, the
validation and test programs compile on a helper thread during epoch 1, and the trials'
``curves.png`` are drawn on it while the test evaluations and checkpoints run.

Each trial early-stops on its own validation metric with MMRec's rule: a stopped trial is
skipped inside the program (``lax.cond`` on its active flag: no compute, state unchanged),
so nothing is recompiled when trials stop at different epochs; the search ends when every
trial has stopped or reached ``train.epochs``.

The learning rate enters as a factor after the optimizer: the step uses the optimizer built
with learning rate 1 (and ``min_learning_rate`` divided by the trial's rate) and multiplies its
update by the trial's rate :math:`\eta_t`. Every optimizer and schedule jaxrec builds is
linear in :math:`\eta` (Adam, AdamW with decoupled decay, SGD with momentum and Adagrad
scale their update by the schedule last; coupled weight decay and clipping act on the
gradient before), so this is the same update up to float rounding.

A loss term of weight 0 in a trial is left out of that trial's trace, as a sequential run
leaves it out, and with no weight decay the parameters only it reads skip the optimizer as in
a sequential run (``keep_unread``): the trials with the same weight-0 terms share a variant of
the step, and the program picks each trial's variant (``lax.switch``), so a grid that tries a
term at 0 and on (FREEDOM's ``modality_bpr``) trains its 0 trials at their own cost.
Deviations from sequential trials, each by float rounding only: the loss weights are traced
values instead of Python numbers, and the learning rate multiplies the unit-rate update. The
test compares both ways on the same grid.

Model arguments a model registers as traced (``jaxrec.models.register(traced_args=...)``:
dropout rates, LGMRec's ``alpha`` and ``keep_rate``, the contrastive temperature) are batched
too: each trial's values enter the program as traced scalars and the module is cloned with
them per trial (:func:`_with_args`), in training, in the validation ranking, and (as Python
numbers, the module the trial's own run builds) for its test evaluation. Their arithmetic on
a float32 value instead of a Python number may round differently in the last bit. A dropout
rate of 0, which a Python number leaves out, runs as an all-kept mask in the program (the
same values; the contract test checks each argument there). A grid that also varies other keys (the number of layers, a
fusion's form, ... change the compiled program) runs one batched program per value of those
keys (:func:`batch_groups`): a 3 x 2 grid of a loss weight by such a model argument is two
programs of three trials. A model with an epoch hook (``Built.epoch_update``: FREEDOM's pruned graph,
LATTICE's learned graph) gets each trial's own context, computed by the hook exactly as a
sequential run computes it and stacked on the trial axis where the hook changes it
(:class:`_TrialContexts`). Not batched (the search runs those trials one after another
instead, saying why): a group of one trial and ``train.parallel`` other than ``none``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import eval as jeval
from jaxrec.errors import ConfigError, TrainingDivergedError
from jaxrec.train import _data, _distributed, _outputs
from jaxrec.train._checkpoint import Checkpoints
from jaxrec.train._config import ExperimentConfig
from jaxrec.train._config_io import dump_config
from jaxrec.train._early_stopping import EarlyStopping, update_early_stopping
from jaxrec.train._progress import Progress
from jaxrec.train._setup import (
    epoch_context,
    evaluate_params,
    make_encoder,
    metrics_at_k,
    prepare_eval_splits,
    prepare_experiment,
    resolve_loss_weights,
)
from jaxrec.train._state import _OPTIMIZER_FIELDS, EpochGated, init_state, model_optimizer, optimizer_step
from jaxrec.train._step import _kept_as_they_were, unread_params, with_epoch_step

BATCHABLE_KEYS = ("train.learning_rate", "train.seed")
_ARGS = "model.args."


def _batchable_key(key: str, traced: Collection[str] = ()) -> bool:
    return key.startswith("loss_weights.") or key in BATCHABLE_KEYS or (
        key.startswith(_ARGS) and key[len(_ARGS):] in traced)


def traced_model_args(configs: Sequence[ExperimentConfig]) -> frozenset[str]:
    """The model arguments the trials' model lets vary within one program
    (``jaxrec.models.register(traced_args=...)``); empty when the trials' models differ."""
    from jaxrec.models import traced_args

    names = {c.model.name for c in configs}
    return frozenset(traced_args(next(iter(names)))) if len(names) == 1 else frozenset()


def _unit_train_config(train_config):
    """The optimizer settings with learning rate 1 (``min_learning_rate`` scaled alike)."""
    lr = train_config.learning_rate
    return dataclasses.replace(train_config, learning_rate=1.0, min_learning_rate=train_config.min_learning_rate / lr)


def _fixed_part(setting: Mapping[str, Any], traced: Collection[str] = ()) -> str:
    """The part of a trial's setting that changes the compiled program (a comparable key); the
    model arguments in ``traced`` (:func:`traced_model_args`) do not."""
    return repr(sorted((key, repr(value)) for key, value in setting.items() if not _batchable_key(key, traced)))


def program_keys(settings: Sequence[Mapping[str, Any]], traced: Collection[str] = ()) -> list[str]:
    """The keys whose values split ``settings`` into programs (:func:`batch_groups`), for notices."""
    keys = sorted({key for setting in settings for key in setting})
    return [key for key in keys if len({_fixed_part({key: s.get(key)}, traced) for s in settings}) > 1]


def batch_groups(settings: Sequence[Mapping[str, Any]],
                 traced: Collection[str] = ()) -> list[list[int]]:
    """The trials' indices grouped by the settings that change the program (model arguments
    other than the ``traced`` ones, batch size, ...): the trials of one group differ only in what
    can be batched, in grid order within a group and groups ordered by their first trial."""
    groups: dict[str, list[int]] = {}
    for index, setting in enumerate(settings):
        groups.setdefault(_fixed_part(setting, traced), []).append(index)
    return list(groups.values())


def batching_obstacle(settings: Sequence[Mapping[str, Any]], configs: Sequence[ExperimentConfig]) -> str | None:
    """Why these trials cannot train as one program (None when they can).

    Checked from the configs alone.
    """
    if len(configs) < 2:
        return "a single trial"
    traced = traced_model_args(configs)
    varied = program_keys(settings, traced)
    if varied:
        extra = f", {', '.join(_ARGS + a for a in sorted(traced))}" if traced else ""
        return (f"the grid varies {', '.join(varied)}; only loss_weights.*, train.learning_rate, train.seed{extra} "
                "can share one compiled program")
    parallel = {c.train.parallel for c in configs}
    if parallel != {"none"}:
        return f"train.parallel is {', '.join(sorted(parallel))}; batched trials run on one device"
    units = {tuple(getattr(_unit_train_config(c.train), f) for f in _OPTIMIZER_FIELDS) for c in configs}
    if len(units) > 1:
        return ("the learning-rate schedules differ by more than a factor (min_learning_rate is not "
                "proportional to learning_rate across trials)")
    return None


def _stack(trees):
    # On the host: stacking on the device would compile a program per leaf shape.
    return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _slice(tree, index: int):
    # On the host, for the same reason (``x[index]`` on the device compiles per shape); ``tree``
    # is fetched whole once by the caller (``jax.device_get``), not once per trial.
    return jax.tree.map(lambda x: np.array(np.asarray(x)[index], copy=True), tree)


@functools.partial(jax.jit, donate_argnums=0)
def _keep_best(best, states, improved):
    """The stacked best states with each improved trial's row replaced by its current state: one
    device call per epoch, instead of fetching the whole stack to the host per improved trial."""
    def select(b, s):
        return jnp.where(improved.reshape((-1,) + (1,) * (s.ndim - 1)), s, b)

    return jax.tree.map(select, best, states)


class _TrialContexts:
    """The model's context per trial, for models with an epoch hook (``Built.epoch_update``).

    The hook is applied per trial, on the host, exactly as a sequential run applies it
    (:func:`~jaxrec.train._setup.epoch_context` of the trial's parameters, seed and epoch
    index). The context's leaves that the hook returns unchanged (the same objects as the built
    context's: features, fixed graphs) stay one shared copy; the ones it replaces (FREEDOM's
    pruned graph, LATTICE's learned neighbours) are stacked on a leading trial axis
    (``varying``), and :meth:`merge` rebuilds trial ``t``'s context inside the program. Without
    a hook ``varying`` is empty and every trial reads the built context.
    """

    def __init__(self, built, seeds: Sequence[int]):
        self.built, self.seeds = built, list(seeds)
        self.base_leaves, self.treedef = jax.tree.flatten(built.ctx)
        self.indices: tuple[int, ...] = ()
        self.varying: tuple = ()

    def update(self, params_stack, epoch_index: int, active: Sequence[bool]) -> None:
        """Set every active trial's context for epoch index ``epoch_index`` from its parameters
        (``params_stack``, stacked, fetched once); inactive trials keep theirs."""
        if self.built.epoch_update is None:
            return
        host = jax.device_get(params_stack)
        rows: list[list | None] = [None] * len(self.seeds)
        for t, is_active in enumerate(active):
            if is_active or not self.varying:
                ctx = epoch_context(self.built, _slice(host, t), self.seeds[t], epoch_index)
                leaves, treedef = jax.tree.flatten(ctx)
                if treedef != self.treedef:
                    raise ConfigError("these trials cannot be batched: the model's epoch hook changed the "
                                      "structure of its context")
                rows[t] = leaves
        if not self.varying:  # the first call: which leaves the hook replaces
            self.indices = tuple(i for i, base in enumerate(self.base_leaves)
                                 if any(row[i] is not base for row in rows))
        old = [np.asarray(v) for v in jax.device_get(self.varying)] if self.varying else None
        self.varying = tuple(jax.device_put(np.stack([
            np.asarray(row[i]) if row is not None else old[j][t] for t, row in enumerate(rows)]))
            for j, i in enumerate(self.indices))

    def merge(self, ctx, varying_t):
        """Inside the program: the context with trial ``t``'s rows of the varying leaves."""
        if not self.indices:
            return ctx
        leaves = list(jax.tree.leaves(ctx))
        for j, i in enumerate(self.indices):
            leaves[i] = varying_t[j]
        return self.treedef.unflatten(leaves)


def _with_args(module, arg_names: tuple[str, ...], values):
    """``module`` with its attributes ``arg_names`` set to ``values`` (traced, one trial's row)."""
    return module.clone(**{name: values[k] for k, name in enumerate(arg_names)}) if arg_names else module


def _make_epoch_fn(module, tx_unit, term_names: tuple[str, ...], per_trial_batches: bool, contexts: _TrialContexts,
                   *, off_terms: Sequence[frozenset] = (), keep_unread: bool = False,
                   steps_per_epoch: int | None = None, arg_names: tuple[str, ...] = ()):
    """``epoch(states, lrs, weights, args, active, ctx, varying, batches) -> (states, (loss, terms,
    finite))`` with every output stacked ``(T, steps, ...)``; ``batches`` are ``(steps, B, ...)``
    shared by every trial, or ``(T, steps, B, ...)`` with ``per_trial_batches``; ``varying`` the
    stacked leaves of the trials' contexts that an epoch hook replaces (:class:`_TrialContexts`);
    ``args`` ``(T, len(arg_names))`` the trials' values of the traced model arguments
    ``arg_names`` (the module is cloned with trial ``t``'s row as traced scalars).

    The trials run one after another inside the program (``lax.fori_loop`` over the stacked
    states, updated in place: each trial's rows are read, trained a whole epoch (``lax.scan`` over
    its batches) and written back), and an inactive trial is skipped (``lax.cond``): it costs
    nothing and its state comes back unchanged. (``lax.map`` over the trials, the former form,
    computes the same bits but copies every trial's state out and into a new stack, active or
    not.) ``vmap`` over the trial axis is the obvious
    alternative, but XLA:CPU turns the embedding lookups and their scatter-add gradients into
    batched gathers and scatters that ran a 7-trial BPR epoch on lfm2k ~30x slower than one
    trial's, where the loop costs the sum of the trials' epochs.

    ``off_terms``: per trial, the terms of weight 0 in it (empty: every term weighs in every
    trial). The trials with one such set share a variant of the step whose weighted sum leaves
    those terms out of the trace, as :func:`jaxrec.losses.combine` leaves a weight-0 term out of a
    sequential run's (and, as there, neither computes nor reports them: the variant outputs 0 for
    them, which the trial's history leaves out); the program holds one variant per
    distinct set and runs each trial's with ``lax.switch``, so a trial's step is its own run's
    whatever the other trials weigh (FREEDOM's ``modality_bpr`` 0 trials of a grid that also
    tries it on do not pay for that term's gradient). ``keep_unread``: as the sequential
    trainer's step with ``keep_unread`` (:func:`jaxrec.train._step.make_train_step`; the search
    sets it when the optimizer has no weight decay, as :func:`jaxrec.train.make_runner` does):
    the parameters that a variant's weighted sum never reads, and their optimizer state, come
    back as they went in, so their optimizer arithmetic is compiled away (FREEDOM's feature
    tables and projections in a trial with ``modality_bpr`` 0). ``steps_per_epoch``: as the sequential step's, it
    sets a ctx's :data:`jaxrec.models.EPOCH_STEP` to the trial's step within its epoch
    (:func:`jaxrec.train._step.with_epoch_step`; LATTICE's ``learned_graph: mmrec`` recomputes
    its graph with gradient in an epoch's first step only)."""
    variants = list(dict.fromkeys(frozenset(off) for off in off_terms)) or [frozenset()]
    variant_of = np.asarray([variants.index(frozenset(off)) for off in off_terms], np.int32)
    summed_by_variant = [[(j, name) for j, name in enumerate(term_names) if name not in off] for off in variants]

    def step(module, state, lr, weights, ctx, batch, summed):
        dropout_key = jax.random.fold_in(state.rng, state.step)
        ctx = with_epoch_step(ctx, state.step, steps_per_epoch)

        def total_loss(params):
            terms = module.apply({"params": params}, ctx, batch, True, method="loss_terms",
                                 rngs={"dropout": dropout_key})
            total = jnp.float32(0.0)
            for j, name in summed:
                total = total + weights[j] * terms[name]
            return total, terms

        (loss, terms), grads = jax.value_and_grad(total_loss, has_aux=True)(state.params)
        finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        params, opt_state = optimizer_step(tx_unit, grads, state.opt_state, state.params, ctx, scale=lr)
        if keep_unread and not isinstance(tx_unit, EpochGated):
            unread = unread_params(lambda p: total_loss(p)[0], state.params)
            if any(jax.tree.leaves(unread)):
                params, opt_state = _kept_as_they_were(tx_unit, unread, (params, opt_state),
                                                       (state.params, state.opt_state))
        new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        # Every variant outputs every term (one structure for lax.switch); a term this variant
        # leaves out of its sum is a 0 here, so its computation is dropped as in a sequential run.
        kept = {name for _, name in summed}
        return new, (loss, {k: terms[k] if k in kept else jnp.zeros((), jnp.float32) for k in term_names}, finite)

    def epoch(states, lrs, weights, args, active, ctx, varying, batches):
        def at(tree, t):
            return jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, t, keepdims=False), tree)

        def put(tree, row, t):
            return jax.tree.map(lambda x, r: jax.lax.dynamic_update_index_in_dim(x, r, t, 0), tree, row)

        def train(t, states):
            state, trial_ctx = at(states, t), contexts.merge(ctx, at(varying, t))
            trial_batches = at(batches, t) if per_trial_batches else batches
            lr, trial_weights, trial_module = lrs[t], weights[t], _with_args(module, arg_names, args[t])

            def run(summed):
                return lambda state: jax.lax.scan(
                    lambda s, b: step(trial_module, s, lr, trial_weights, trial_ctx, b, summed), state, trial_batches)

            if len(variants) == 1:
                return run(summed_by_variant[0])(state)
            return jax.lax.switch(jnp.asarray(variant_of)[t], [run(summed) for summed in summed_by_variant], state)

        n_trials = lrs.shape[0]
        if off_terms and len(off_terms) != n_trials:
            raise ValueError(f"off_terms has {len(off_terms)} entries for {n_trials} trials")
        shapes = jax.eval_shape(train, 0, states)[1]
        outputs = jax.tree.map(lambda x: jnp.zeros((n_trials, *x.shape), x.dtype), shapes)

        def body(t, carry):
            def run(carry):
                states, outputs = carry
                state, out = train(t, states)
                return put(states, state, t), put(outputs, out, t)

            return jax.lax.cond(active[t], run, lambda carry: carry, carry)

        return jax.lax.fori_loop(0, n_trials, body, (states, outputs))

    return jax.jit(epoch, donate_argnums=0)


def _make_encoder(module, contexts: _TrialContexts, arg_names: tuple[str, ...] = ()):
    """``(params (T, ...), args (T, A), ctx, varying, active (T,)) -> (user_embs, item_embs)``
    stacked; an inactive trial's rows are zeros (``lax.map``, for the reason given in
    :func:`_make_epoch_fn`)."""

    def encode_all(params_stack, args, ctx, varying, active):
        def one(row):
            params, trial_args, trial_varying, is_active = row
            trial_ctx = contexts.merge(ctx, trial_varying)
            trial_module = _with_args(module, arg_names, trial_args)

            def encode(_):
                return trial_module.apply({"params": params}, trial_ctx, False, method="encode")

            shapes = jax.eval_shape(encode, None)
            return jax.lax.cond(is_active, encode,
                                lambda _: jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes), None)

        return jax.lax.map(one, (params_stack, args, varying, active))

    return jax.jit(encode_all)


def run_batched_search(config: ExperimentConfig, workdir: str | os.PathLike, settings: Sequence[Mapping[str, Any]],
                       configs: Sequence[ExperimentConfig], *, dataset=None, quiet: bool = False,
                       trial_ids: Sequence[int] | None = None) -> list[dict]:
    """Train the trials ``configs`` (settings ``settings``) together; write each trial's folder.

    ``trial_ids`` are the trials' numbers in the whole search (default ``0 .. T-1``): a grid
    whose trials differ in a model argument runs one batched group per value of it. Every trial
    folder (``workdir/trial_NNN``, NNN its number) gets what a sequential trial writes --
    ``config.yaml``, ``history.jsonl``, ``metrics.json`` (with ``"batched_search": {"trials": T}``;
    its ``timing`` per epoch is the trial's share: the program's seconds over its active trials),
    ``curves.png`` and checkpoints of its best and last epochs, so ``jaxrec evaluate``,
    ``--resume`` and the run records treat it like any run.

    Returns:
      The trials' entries for ``search.json``: ``{"trial", "workdir", "setting", "valid",
      "test", "best_epoch"}``.

    Raises:
      ConfigError: the trials cannot be batched (see :func:`batching_obstacle`).
      TrainingDivergedError: a trial's weighted loss or gradient became non-finite.
    """
    obstacle = batching_obstacle(settings, configs)
    if obstacle is not None:
        raise ConfigError(f"these trials cannot be batched: {obstacle}")
    workdir = Path(workdir).expanduser().resolve()
    started = time.perf_counter()
    exp = prepare_experiment(configs[0], dataset)
    built = exp.built
    n_trials = len(configs)
    trial_ids = list(range(n_trials)) if trial_ids is None else [int(i) for i in trial_ids]
    if len(trial_ids) != n_trials:
        raise ValueError(f"{len(trial_ids)} trial ids for {n_trials} trials")
    tcfg = configs[0].train
    weights = [resolve_loss_weights(built.default_loss_weights, c.loss_weights, exp.term_names, c.model.name)
               for c in configs]
    # Host arrays, passed to the programs as they are (jnp.asarray would compile a conversion each).
    weight_matrix = np.asarray([[w[name] for name in exp.term_names] for w in weights], np.float32)
    lrs = np.asarray([c.train.learning_rate for c in configs], np.float32)
    # The traced model arguments that differ between the trials: each trial's value per program.
    traced = traced_model_args(configs)
    arg_names = tuple(sorted(a for a in traced if len({repr(c.model.args.get(a)) for c in configs}) > 1))
    if arg_names and built.epoch_update is not None:
        raise ConfigError(f"these trials cannot be batched: they differ in {', '.join(_ARGS + a for a in arg_names)} "
                          "and the model has an epoch hook")
    own_args = _check_trial_models(exp, configs, arg_names)
    arg_values = np.asarray(own_args, np.float32).reshape(n_trials, len(arg_names))
    seeds = [c.train.seed for c in configs]
    per_trial_batches = len(set(seeds)) > 1
    samplers = ([_data.EpochSampler(exp.dataset, batch_size=tcfg.batch_size, n_negatives=tcfg.n_negatives,
                                    method=tcfg.negative_sampling, seed=s, sampler=tcfg.sampler,
                                    negative_items=tcfg.negative_items)
                 for s in seeds]
                if per_trial_batches else [exp.sampler])
    tx_unit = model_optimizer(_unit_train_config(tcfg), exp.steps_per_epoch, built)
    example = exp.sampler.example_batch()
    initial = _stack([init_state(built.module, built.ctx, example, tx_unit, s) for s in seeds])
    states = jax.device_put(initial)
    ctx = jax.device_put(built.ctx)
    contexts = _TrialContexts(built, seeds)
    contexts.update(states.params, 0, [True] * n_trials)  # epoch 1's contexts, from the initial parameters
    off_terms = tuple(frozenset(name for j, name in enumerate(exp.term_names) if weight_matrix[t, j] == 0)
                      for t in range(n_trials))
    epoch_fn = _make_epoch_fn(built.module, tx_unit, exp.term_names, per_trial_batches, contexts,
                              off_terms=off_terms, keep_unread=not tcfg.weight_decay,
                              steps_per_epoch=exp.steps_per_epoch, arg_names=arg_names)
    encoder = _make_encoder(built.module, contexts, arg_names)
    splits = prepare_eval_splits(exp)
    eval_cfg = configs[0].eval

    def evaluate(params_stack, active) -> tuple[dict[str, list[dict | None]], float]:
        tick = time.perf_counter()
        user_embs, item_embs = encoder(params_stack, arg_values, ctx, contexts.varying, active)
        out = {}
        for split in eval_cfg.epoch_splits:  # one encoding for both splits
            results = jeval.evaluate_prepared_many(splits[split], user_embs, item_embs, ks=eval_cfg.ks,
                                                   metrics=eval_cfg.metrics, active=np.asarray(active))
            out[split] = [None if r is None else metrics_at_k(r) for r in results]
        return out, time.perf_counter() - tick

    stopping = [EarlyStopping() for _ in range(n_trials)]
    histories: list[list[dict]] = [[] for _ in range(n_trials)]
    best_states: list[Any] = [None] * n_trials  # (epoch, early-stopping state) at each trial's best
    # Every trial's state at its best epoch, on the device (its own buffers: `states` is donated).
    best_stack = jax.device_put(jax.tree.map(np.copy, initial))
    single_encoder = make_encoder(built.module)
    # The validation and test programs compile on a second thread while epoch 1's program compiles
    # and runs (XLA compiles and runs without the GIL): the valid ranking (and test's, with
    # eval.test_every_epoch) with every trial inactive (nothing is ranked; the active flags are an
    # argument, so it is the same program), then one test evaluation of trial 0's initial parameters
    # (for a model without an epoch hook: its test context is the built one), both results dropped.
    # Joined before the first valid evaluation (valid) and before the test evaluations (test).
    helper = ThreadPoolExecutor(1, thread_name_prefix="jaxrec-search")
    warm_valid = helper.submit(evaluate, best_stack.params, np.zeros(n_trials, bool))
    warm_test = (helper.submit(evaluate_params, exp, single_encoder, _slice(initial, 0).params, ctx, splits["test"])
                 if built.epoch_update is None else None)
    del initial
    best_valid: list[dict] = [{} for _ in range(n_trials)]
    epochs_run = [0] * n_trials
    train_seconds, eval_seconds = [], []
    epoch = 0
    next_batches = None
    while epoch < tcfg.epochs and not all(es.stop for es in stopping):
        epoch += 1
        active_list = [not es.stop for es in stopping]
        active = np.asarray(active_list, bool)
        tick = time.perf_counter()
        batches = next_batches if next_batches is not None else _epoch_batches(samplers, epoch, per_trial_batches)
        states, (loss, terms, finite) = epoch_fn(states, lrs, weight_matrix, arg_values, active, ctx, contexts.varying,
                                                 batches)
        # The next epoch's batches are drawn on the host while the device runs this one (they are a
        # function of the seed and the epoch only), as the sequential trainer prefetches them.
        next_batches = _epoch_batches(samplers, epoch + 1, per_trial_batches) if epoch < tcfg.epochs else None
        loss, terms, finite = jax.device_get((loss, terms, finite))
        # The contexts after this epoch (index `epoch`): what its evaluation and the next epoch use.
        contexts.update(states.params, epoch, active_list)
        seconds = time.perf_counter() - tick
        train_seconds.append(seconds / sum(active_list))  # each active trial's share of the program
        _check_finite(loss, terms, finite, weights, exp.term_names, active_list, epoch, exp.steps_per_epoch)
        evaluate_now = epoch % tcfg.eval_every == 0 or epoch == tcfg.epochs
        valid = eval_time = None
        if evaluate_now:
            warm_valid.result()
            evaluated, eval_time = evaluate(states.params, active)
            valid = evaluated["valid"]
            eval_seconds.append(eval_time / sum(active_list))
        improved_list = [False] * n_trials
        for t in range(n_trials):
            if not active_list[t]:
                continue
            epochs_run[t] = epoch
            row = {"epoch": epoch, "loss": float(np.mean(loss[t])),
                   "terms": {k: float(np.mean(v[t])) for k, v in terms.items() if weights[t][k] != 0.0},
                   "train_seconds": seconds, "batched_trials": int(sum(active_list))}
            if evaluate_now:
                row["valid"], row["eval_seconds"] = valid[t], eval_time
                if "test" in evaluated:
                    row["test"] = evaluated["test"][t]
                stopping[t], improved = update_early_stopping(stopping[t], valid[t][tcfg.valid_metric], epoch,
                                                              patience=tcfg.patience)
                row["best_epoch"] = stopping[t].best_epoch
                if improved:
                    best_valid[t] = valid[t]
                    best_states[t] = (epoch, stopping[t])
                    improved_list[t] = True
            histories[t].append(row)
        if any(improved_list):
            best_stack = _keep_best(best_stack, states, np.asarray(improved_list))
        if not quiet:
            bests = ", ".join(f"{es.best_value:.4f}" for es in stopping)
            print(f"epoch {epoch}: {sum(active_list)} of {n_trials} trials training; best valid "
                  f"{tcfg.valid_metric} {bests}", flush=True)
    warm_valid.result()
    if warm_test is not None:
        warm_test.result()
    # Every trial's curves.png is drawn on the helper thread (matplotlib, on the host) while this
    # one runs the test evaluations and writes the checkpoints; joined before returning.
    trial_dirs = [workdir / f"trial_{trial_ids[t]:03d}" for t in range(n_trials)]
    curves = helper.submit(_draw_curves, trial_dirs, histories, tcfg.valid_metric)
    helper.shutdown(wait=False)
    evaluated = [t for t in range(n_trials) if best_states[t] is not None]
    best_test: list[dict] = [{} for _ in range(n_trials)]
    # Test once per trial at its best epoch, one trial at a time with the same call `jaxrec evaluate`
    # makes (the batched valid evaluation can differ from it in the last float bits).
    best_host, last_host = jax.device_get((best_stack, states))
    best_states = [None if b is None else (b[0], _slice(best_host, t), b[1]) for t, b in enumerate(best_states)]
    # A trial with its own traced arguments: the module its own run builds (Python values), one
    # encoder per distinct setting of them.
    encoders = {tuple(own_args[0]): single_encoder}
    for t in evaluated:
        trial_ctx = ctx if built.epoch_update is None else jax.device_put(
            epoch_context(built, best_states[t][1].params, seeds[t], best_states[t][0]))
        values = tuple(own_args[t])
        if values not in encoders:
            encoders[values] = make_encoder(built.module.clone(**dict(zip(arg_names, values))))
        trial_encoder = encoders[values]
        result = evaluate_params(exp, trial_encoder, best_states[t][1].params, trial_ctx, splits["test"])
        best_test[t] = metrics_at_k(result)
    elapsed = time.perf_counter() - started
    entries = []
    for t, (setting, trial_cfg) in enumerate(zip(settings, configs)):
        trial_dir = trial_dirs[t]
        metrics = {
            "model": trial_cfg.model.name, "dataset": exp.dataset.name, "seed": trial_cfg.train.seed,
            "best_epoch": stopping[t].best_epoch, "epochs_run": epochs_run[t], "stopped_early": bool(stopping[t].stop),
            "valid_metric": tcfg.valid_metric, "valid": best_valid[t], "test": best_test[t],
            # Per trial: the median over epochs of the program's seconds over its active trials.
            "timing": {"train_seconds_per_epoch": statistics.median(train_seconds) if train_seconds else None,
                       "eval_seconds": statistics.median(eval_seconds) if eval_seconds else None,
                       "total_seconds": elapsed},
            "n_params": exp.n_params,
            "devices": {"parallel": "none", "count": 1, "platform": jax.devices()[0].platform,
                        "kind": jax.devices()[0].device_kind},
            "loss_weights": weights[t],
            "batched_search": {"trials": n_trials},
        }
        last_state = _slice(last_host, t)
        _write_trial(trial_dir, trial_cfg, exp.target, metrics, histories[t], stopping[t], best_states[t],
                     last_state, epochs_run[t], best_valid[t], best_test[t], tcfg, exp.steps_per_epoch)
        entries.append({"trial": trial_ids[t], "workdir": os.fspath(trial_dir), "setting": dict(setting),
                        "valid": best_valid[t], "test": best_test[t], "best_epoch": stopping[t].best_epoch})
    curves.result()
    return entries


def _check_trial_models(exp, configs: Sequence[ExperimentConfig], arg_names: tuple[str, ...]) -> list[list[float]]:
    """Each trial's values of the traced arguments ``arg_names`` as its module holds them, after its
    own builder has checked them (the program builds trial 0's model only): every distinct
    setting of them is built once on the experiment's data before anything trains, so a value
    the model refuses raises its ``ConfigError``, and a builder that hands the module anything
    but trial 0's module with those attributes replaced is refused (the batched program would
    not train that trial's model)."""
    if not arg_names:
        return [[] for _ in configs]
    from jaxrec import models

    built = exp.built
    modules = {}
    rows = []
    for t, config in enumerate(configs):
        key = tuple(repr(config.model.args.get(a)) for a in arg_names)
        if key not in modules:
            module = built.module if t == 0 else models.build(config.model.name, exp.dataset,
                                                              **config.model.args).module
            values = {a: getattr(module, a) for a in arg_names}
            if module != built.module.clone(**values):
                raise ConfigError(f"these trials cannot be batched: the model {config.model.name!r} built with "
                                  f"{', '.join(f'{_ARGS}{a}={config.model.args.get(a)!r}' for a in arg_names)} differs "
                                  "from trial 0's in more than those arguments")
            modules[key] = [float(values[a]) for a in arg_names]
        rows.append(modules[key])
    return rows


def _epoch_batches(samplers, epoch: int, per_trial_batches: bool):
    """Epoch ``epoch``'s (1-based) batches: ``(steps, B, ...)`` shared, or ``(T, steps, B, ...)``."""
    if per_trial_batches:
        per_trial = [s.batches(epoch - 1) for s in samplers]
        return {k: np.stack([b[k] for b in per_trial]) for k in per_trial[0]}
    return samplers[0].batches(epoch - 1)


def _draw_curves(trial_dirs, histories, valid_metric: str) -> None:
    for trial_dir, history in zip(trial_dirs, histories):
        trial_dir.mkdir(parents=True, exist_ok=True)
        _outputs.plot_curves(trial_dir / _outputs.CURVES_FILE, history, valid_metric)


def _check_finite(loss, terms, finite, weights, term_names, active, epoch: int, steps_per_epoch: int) -> None:
    for t, is_active in enumerate(active):
        if not is_active:
            continue
        bad = ~np.asarray(finite[t]) | ~np.isfinite(loss[t])
        for name in term_names:
            if weights[t][name] != 0.0:
                bad |= ~np.isfinite(terms[name][t])
        if bad.any():
            step = int(np.argmax(bad))
            raise TrainingDivergedError(
                f"trial {t} diverged at epoch {epoch}, step {(epoch - 1) * steps_per_epoch + step + 1}: a weighted loss "
                f"term or the gradient is not finite (loss {loss[t, step]}); nothing of this search was saved")


def _write_trial(trial_dir: Path, trial_cfg, target, metrics, history, stopping, best, last_state, epochs_run,
                 best_valid, best_test, tcfg, steps_per_epoch: int) -> None:
    trial_dir.mkdir(parents=True, exist_ok=True)
    _outputs.write_atomic(trial_dir / _outputs.CONFIG_FILE, dump_config(trial_cfg))
    meta = {"epochs_done": epochs_run, "early_stopping": stopping._asdict(), "history": history,
            "train_seconds": [row["train_seconds"] for row in history],
            "eval_seconds": [row["eval_seconds"] for row in history if "eval_seconds" in row],
            "best_valid": best_valid, "best_test": best_test,
            "elapsed_seconds": metrics["timing"]["total_seconds"], "finished": True}
    checkpoints = Checkpoints(trial_dir / "checkpoints", keep=tcfg.checkpoints_to_keep)
    try:
        if best is not None and best[0] != epochs_run:
            best_meta = copy.deepcopy(meta)
            best_meta.update(epochs_done=best[0], finished=False, early_stopping=best[2]._asdict(),
                             history=[row for row in history if row["epoch"] <= best[0]])
            checkpoints.save(best[0], best[1], best_meta, is_best=True)
        checkpoints.save(epochs_run, last_state, meta, is_best=best is not None and best[0] == epochs_run)
    finally:
        checkpoints.close()
    _outputs.write_history(trial_dir / _outputs.HISTORY_FILE, history)
    _write_log_and_events(trial_dir, trial_cfg, metrics, history, steps_per_epoch)
    _outputs.write_json(trial_dir / _outputs.METRICS_FILE, metrics)


def _write_log_and_events(trial_dir: Path, trial_cfg, metrics, history, steps_per_epoch: int) -> None:
    """A trial's ``log.txt`` and ``tensorboard/`` events, as a sequential run writes them, from
    its finished history: the batched program has no per-trial loop to write them epoch by
    epoch, so the log says when its lines were written and its early-stopping figures are
    replayed from the history (the same rule, :func:`update_early_stopping`)."""
    tcfg = trial_cfg.train
    progress = Progress(trial_dir / _distributed.log_name(), quiet=True)
    events = _outputs.EventLog(trial_dir, tcfg, steps_per_epoch)
    try:
        progress.log(f"{trial_cfg.model.name} on {metrics['dataset']}: one of {metrics['batched_search']['trials']} "
                     "trials trained together as one compiled program (a batched search); these lines were "
                     "written when it finished")
        stopping = EarlyStopping()
        for row in history:
            if "valid" in row:
                stopping, _ = update_early_stopping(stopping, row["valid"][tcfg.valid_metric], row["epoch"],
                                                    patience=tcfg.patience)
            progress.epoch_done(row, tcfg.valid_metric, stopping)
            events.epoch(row)
        progress.log(_outputs.done_line(metrics, tcfg.valid_metric))
    finally:
        events.close()
        progress.close()
