"""Online learning: the model's own loss on new events, mixed with a replay of past interactions.

An update (:func:`train_on_events`) runs ``steps`` jitted train steps of the run's own step
machinery (:class:`~jaxrec.train.StepRunner`, ``module.loss_terms`` weighted by the run's
``loss_weights``). Every batch holds ``batch_size`` rows: a share ``new_share`` are the new
events (drawn uniformly from them, so each is seen about ``passes`` times over the update; a
small update fills only ``passes`` times its size), the rest a uniform replay of every past
training interaction (the run's train split and all earlier events), so the model follows the
new data without forgetting the old. Negatives are drawn
uniformly from the real catalogue, outside each user's known positives (capacity padding items
are never drawn). A model with an epoch hook ``epoch_update`` (FREEDOM's pruned graph, LATTICE's learned graph) gets a
fresh one per update. Nothing is swapped in when a loss term or gradient turns non-finite.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import numpy as np

from jaxrec import data as jdata
from jaxrec import models
from jaxrec.data import MultimodalDataset
from jaxrec.data import graph as jgraph
from jaxrec.errors import ConfigError, TrainingDivergedError
from jaxrec.serve import _grow
from jaxrec.serve._load import StepRunner, init_state, make_encoder
from jaxrec.train import TrainState, make_optimizer
from jaxrec.train import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class OnlineConfig:
    """How :meth:`~jaxrec.serve.Recommender.update` trains.

    Attributes:
      learning_rate: Adam step size (None: the run's ``train.learning_rate``), constant.
      batch_size: rows per step (None: the run's ``train.batch_size``).
      passes: about how many times each new event is drawn over one update.
      new_share: share of each batch taken by new events (the rest replays past interactions).
      min_steps: at least this many steps per update.
      max_steps: at most this many steps per update.
      seed: seed of the update's sampling (combined with the model version).
    """

    learning_rate: float | None = None
    batch_size: int | None = None
    passes: float = 4.0
    new_share: float = 0.5
    min_steps: int = 1
    max_steps: int = 200
    seed: int = 0

    def __post_init__(self):
        def number(value) -> bool:
            return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))

        for name in ("passes", "new_share", "learning_rate"):
            value = getattr(self, name)
            if value is None and name == "learning_rate":
                continue
            if not number(value) or not math.isfinite(value) or not value > 0:
                raise ConfigError(f"online.{name} must be a finite positive number; found {value!r}")
        if not self.new_share <= 1.0:
            raise ConfigError(f"online.new_share must be in (0, 1]; found {self.new_share!r}")
        for name in ("min_steps", "max_steps", "batch_size", "seed"):
            value = getattr(self, name)
            if value is None and name == "batch_size":
                continue
            lowest = 0 if name == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
                kind = "a non-negative integer" if name == "seed" else "a positive integer"
                raise ConfigError(f"online.{name} must be {kind}; found {value!r}")
        if self.min_steps > self.max_steps:
            raise ConfigError(f"online.min_steps ({self.min_steps}) exceeds online.max_steps ({self.max_steps})")


@dataclasses.dataclass(frozen=True)
class Learner:
    """Everything needed to rebuild and train the served model (immutable: an update makes a new one).

    Attributes:
      config: the run's experiment config.
      base: the run's dataset (modalities selected as in training).
      built: the model built for the current (extended, padded) dataset.
      ctx: its context (with the latest ``epoch_update`` applied).
      params: the parameters.
      opt_state: the online optimizer's state (None before the first update).
      step: online train steps taken (one per batch of an update; drives the dropout keys).
      rng: the run's base PRNG key.
      loss_weights: the run's weight per loss term.
      events: ``(m, 2)`` int32 every applied (user, item) event, in order.
      added: the items added after training.
      n_users, n_items: real counts; cap_users, cap_items: table capacities.
      padding_safe: whether padding rows leave the real rows' embeddings alone (None: not
        tested yet; False: the model is served at exact capacities, :mod:`jaxrec.serve._grow`).
    """

    config: ExperimentConfig
    base: MultimodalDataset
    built: models.Built
    ctx: Any
    params: Any
    opt_state: Any
    step: int
    rng: Any
    loss_weights: dict
    events: np.ndarray
    added: _grow.AddedItems
    n_users: int
    n_items: int
    cap_users: int
    cap_items: int
    padding_safe: bool | None = None

    @property
    def module(self):
        return self.built.module

    def train_pairs(self) -> np.ndarray:
        """``(n, 2)`` every training interaction: the run's train split, then the events."""
        return np.concatenate([self.base.split_pairs("train").astype(np.int32), self.events]).reshape(-1, 2)

    @functools.cached_property
    def item_degrees(self) -> np.ndarray:
        """``(n_items,)`` each item's degree in the user-item graph the model builds from
        :meth:`train_pairs`: its distinct users (a repeated pair is one edge)."""
        pairs = self.train_pairs()
        graph = jgraph.BipartiteGraph.from_pairs(pairs[:, 0], pairs[:, 1], n_users=self.cap_users,
                                                 n_items=self.n_items)
        return graph.item_degrees()

    def encode(self):
        """``(user_emb, item_emb)`` of the current parameters (eval mode, jitted)."""
        return make_encoder(self.module)(self.params, self.ctx)


def _init_params(module, ctx, batch_size: int, n_negatives: int, tx, seed: int):
    batch = {"users": np.zeros(batch_size, np.int32), "pos_items": np.zeros(batch_size, np.int32),
             "neg_items": np.zeros((batch_size, n_negatives), np.int32), "weights": np.ones(batch_size, np.float32)}
    return init_state(module, ctx, batch, tx, seed).params


def rebuilt(learner: Learner, *, n_users: int, n_items: int, events: np.ndarray, added: _grow.AddedItems,
            version: int, params_from_init: bool = False) -> Learner:
    """The learner rebuilt for new counts, events and added items, parameters carried over
    (or, with ``params_from_init``, freshly initialized: the caller restores them).

    Capacities double as counts outgrow them, except for a model whose padding reaches its real
    rows (tested at the first growth, :func:`jaxrec.serve._grow.padding_moves_real_rows`): it
    grows to the exact counts."""
    exact = learner.padding_safe is False
    cap_users = max(learner.cap_users, n_users) if exact else _grow.grown_capacity(learner.cap_users, n_users)
    cap_items = max(learner.cap_items, n_items) if exact else _grow.grown_capacity(learner.cap_items, n_items)
    dataset = _grow.extended_dataset(learner.base, n_users=n_users, n_items=n_items, cap_users=cap_users,
                                     cap_items=cap_items, events=events, added=added)
    config = learner.config
    built = models.build(config.model.name, dataset, **config.model.args)
    params = learner.params
    padding_safe = learner.padding_safe
    tcfg = config.train
    tx = make_optimizer(tcfg, 1)
    if params_from_init:
        params = _init_params(built.module, built.ctx, 8, tcfg.n_negatives, tx, tcfg.seed)
    elif (cap_users, cap_items) != (learner.cap_users, learner.cap_items):
        first = _init_params(built.module, built.ctx, 8, tcfg.n_negatives, tx, tcfg.seed)
        second = _init_params(built.module, built.ctx, 8, tcfg.n_negatives, tx, tcfg.seed + 1)
        grown = {(learner.cap_users, cap_users), (learner.cap_items, cap_items),
                 (learner.cap_users + learner.cap_items, cap_users + cap_items)}
        params = _grow.transplant(params, first, _grow.deterministic_leaves(first, second), grown)
        if padding_safe is None and (cap_users > n_users or cap_items > n_items):
            padding_safe = not _grow.padding_moves_real_rows(
                make_encoder(built.module), built.ctx, learner.params, params, n_users=n_users, n_items=n_items,
                cap_users=cap_users, cap_items=cap_items, grown_sizes=grown)
            if not padding_safe:
                return rebuilt(dataclasses.replace(learner, padding_safe=False), n_users=n_users, n_items=n_items,
                               events=events, added=added, version=version)
    opt_state = None  # re-made for the new shapes at the next training call
    if learner.opt_state is not None and (cap_users, cap_items) == (learner.cap_users, learner.cap_items):
        opt_state = learner.opt_state
    ctx = built.ctx
    if built.epoch_update is not None:
        key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(config.train.seed), 0x5E4E), version)
        ctx = built.epoch_update(params, built.ctx, version, key)
    return dataclasses.replace(learner, built=built, ctx=ctx, params=params, opt_state=opt_state, events=events,
                               added=added, n_users=n_users, n_items=n_items, cap_users=cap_users,
                               cap_items=cap_items, padding_safe=padding_safe)


def online_optimizer(config: ExperimentConfig, online: OnlineConfig):
    """The run's optimizer settings with a constant learning rate (online has no schedule end)."""
    tcfg = dataclasses.replace(config.train, schedule="constant",
                               learning_rate=online.learning_rate or config.train.learning_rate)
    return make_optimizer(tcfg, 1)


def _negatives(rng: np.random.Generator, users: np.ndarray, positives: jdata.PositiveSets, n_items: int,
               n_neg: int) -> np.ndarray:
    return jdata.sample_negatives(rng, users, n_items, positives, n_neg=n_neg).reshape(len(users), n_neg)


def training_batches(learner: Learner, new_events: np.ndarray, online: OnlineConfig, version: int) -> dict:
    """The stacked ``(steps, B, ...)`` batches of one update (module docstring)."""
    tcfg = learner.config.train
    batch_size = online.batch_size or tcfg.batch_size
    draws = max(1, int(round(online.passes * len(new_events))))  # new-event rows over the update
    n_new_rows = max(1, min(batch_size, int(round(batch_size * online.new_share)), draws))
    steps = math.ceil(draws / n_new_rows)
    steps = int(min(max(steps, online.min_steps), online.max_steps))
    rng = np.random.default_rng([online.seed, version, 0xB47C])
    past = learner.train_pairs()
    new_rows = new_events[rng.integers(0, len(new_events), size=(steps, n_new_rows))]
    replay = past[rng.integers(0, len(past), size=(steps, batch_size - n_new_rows))]
    rows = np.concatenate([new_rows, replay], axis=1).reshape(-1, 2)
    positives = jdata.PositiveSets.from_pairs(past[:, 0], past[:, 1], n_users=learner.cap_users,
                                              n_items=learner.n_items)
    negatives = _negatives(rng, rows[:, 0], positives, learner.n_items, tcfg.n_negatives)
    return {
        "users": rows[:, 0].reshape(steps, batch_size),
        "pos_items": rows[:, 1].reshape(steps, batch_size),
        "neg_items": negatives.reshape(steps, batch_size, tcfg.n_negatives).astype(np.int32),
        "weights": np.ones((steps, batch_size), np.float32),
    }


def train_on_events(learner: Learner, new_events: np.ndarray, online: OnlineConfig, version: int) -> Learner:
    """``learner`` after one update on ``new_events`` (already part of ``learner.events``)."""
    tx = online_optimizer(learner.config, online)
    opt_state = learner.opt_state if learner.opt_state is not None else tx.init(learner.params)
    batches = training_batches(learner, new_events, online, version)
    batch_size = batches["users"].shape[1]
    runner = StepRunner(learner.module, tx, learner.loss_weights, parallel="none", batch_size=batch_size)
    state = TrainState(step=np.int32(learner.step), params=learner.params, opt_state=opt_state, rng=learner.rng)
    # The step donates its input state: hand it a copy, so that the served learner stays intact
    # (readers may still use it) if this update fails.
    state = runner.put_state(jax.tree.map(lambda x: np.array(x, copy=True), state))
    state, metrics = runner.run(state, runner.put_ctx(learner.ctx), runner.put_batches(batches))
    metrics = jax.device_get(metrics)
    # The step reports the weighted terms only (a weight-0 term is not computed).
    weighted = [np.asarray(v) for v in metrics.terms.values()]
    finite = np.all(np.asarray(metrics.grads_finite)) and all(np.all(np.isfinite(v)) for v in weighted)
    finite = finite and all(bool(np.all(np.isfinite(np.asarray(leaf)))) for leaf in jax.tree.leaves(state.params))
    if not finite:
        raise TrainingDivergedError("the online update produced a non-finite loss, gradient or parameter; "
                                    "the served model is unchanged (lower online.learning_rate)")
    return dataclasses.replace(learner, params=state.params, opt_state=state.opt_state, step=int(state.step))
