"""Everything a run needs before its first step, shared by training and ``jaxrec evaluate``:
the dataset, the built model, checked loss weights, the optimizer, the evaluation layout."""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxrec import eval as jeval
from jaxrec import models
from jaxrec.data import MultimodalDataset
from jaxrec.errors import ConfigError, DataError
from jaxrec.train import _data
from jaxrec.train._config import ExperimentConfig
from jaxrec.train._lapack_threads import hold_lapack_threads
from jaxrec.train._state import abstract_state, count_params, model_optimizer


@dataclasses.dataclass
class Experiment:
    """A config turned into objects (no parameters allocated yet).

    Attributes:
      config: the experiment config.
      dataset: the dataset (modalities selected and renamed to their roles).
      built: the model builder's result.
      loss_weights: weight per loss term (the model's defaults updated by the config).
      term_names: the names of the terms ``loss_terms`` returns.
      tx: the optimizer.
      steps_per_epoch: batches per epoch.
      sampler: draws an epoch's batches from ``(seed, epoch)``.
      target: the abstract train state (shapes and dtypes, from ``jax.eval_shape``).
      n_params: number of parameters.
    """

    config: ExperimentConfig
    dataset: MultimodalDataset
    built: models.Built
    loss_weights: dict[str, float]
    term_names: tuple[str, ...]
    tx: Any
    steps_per_epoch: int
    sampler: Any
    target: Any
    n_params: int

    @property
    def module(self):
        return self.built.module


def loss_term_names(module, abstract_params, ctx, batch: Mapping) -> tuple[str, ...]:
    """The names of the terms the model's ``loss_terms`` returns (traced, not run)."""
    shapes = jax.eval_shape(
        lambda params, c, b: module.apply({"params": params}, c, b, False, method="loss_terms"),
        abstract_params, ctx, batch)
    if not isinstance(shapes, Mapping) or not shapes:
        raise ConfigError("a model's loss_terms must return a non-empty dict of named scalar terms")
    bad = [name for name, s in shapes.items() if s.shape != ()]
    if bad:
        raise ConfigError(f"loss terms must be scalars; {bad} are not ({[shapes[n].shape for n in bad]})")
    return tuple(shapes)


def resolve_loss_weights(defaults: Mapping[str, float], overrides: Mapping[str, float],
                         term_names: tuple[str, ...], model_name: str) -> dict[str, float]:
    """The model's default weights updated by the config's; every term needs a weight, and a
    weight for a term the model does not have is an error (with the nearest name)."""
    for name in overrides:
        if name not in term_names:
            close = difflib.get_close_matches(name, term_names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"loss_weights.{name}: model {model_name!r} has no loss term {name!r}{hint} "
                              f"(its terms: {', '.join(term_names)})")
    weights = {name: float(defaults.get(name, 1.0)) for name in term_names}
    weights.update({name: float(w) for name, w in overrides.items()})
    return weights


def prepare_experiment(config: ExperimentConfig, dataset: MultimodalDataset | None = None) -> Experiment:
    """Load the data, build the model, check the loss weights and make the optimizer (and hold the
    LAPACK library of jax's CPU kernels to one thread: :mod:`jaxrec.train._lapack_threads`)."""
    hold_lapack_threads()
    if dataset is None:
        dataset = _data.load_dataset(config.data)
    dataset = _data.select_modalities(dataset, config.data)
    sizes = dataset.split_sizes()
    for split in ("train", "valid", "test"):
        if sizes[split] == 0:
            raise DataError(f"the dataset has no {split} interactions", path=dataset.metadata.get("source"),
                            field="x_label", found=f"split sizes {sizes}",
                            expected="train, valid and test interactions")
    train = config.train
    built = models.build(config.model.name, dataset, **config.model.args)
    sampler = _data.EpochSampler(dataset, batch_size=train.batch_size, n_negatives=train.n_negatives,
                                 method=train.negative_sampling, seed=train.seed,
                                 sampler=train.sampler, negative_items=train.negative_items)
    tx = model_optimizer(train, sampler.steps_per_epoch, built)
    batch = sampler.example_batch()
    target = abstract_state(built.module, built.ctx, batch, tx, train.seed)
    term_names = loss_term_names(built.module, target.params, built.ctx, batch)
    weights = resolve_loss_weights(built.default_loss_weights, config.loss_weights, term_names, config.model.name)
    return Experiment(config, dataset, built, weights, term_names, tx, sampler.steps_per_epoch, sampler, target,
                      count_params(target.params))


def prepare_eval_splits(experiment: Experiment, splits=("valid", "test")) -> dict[str, jeval.EvalSplit]:
    """The evaluation layout of each split under the configured protocol (host work, once)."""
    dataset, cfg = experiment.dataset, experiment.config.eval
    pairs = {name: dataset.split_pairs(name) for name in ("train", "valid", "test")}
    layouts = {}
    for split in splits:
        chosen = pairs if cfg.user_sample is None else sampled_user_pairs(pairs, split, cfg.user_sample,
                                                                          cfg.user_sample_seed)
        layouts[split] = jeval.prepare_protocol(
            split=split, num_items=dataset.n_items, train_pairs=chosen["train"], valid_pairs=chosen["valid"],
            test_pairs=chosen["test"], protocol=cfg.protocol, batch_size=cfg.batch_size,
            candidate_items=_data.candidate_items(dataset, split))
    return layouts


def sampled_user_pairs(pairs: Mapping[str, Any], split: str, n_users: int, seed: int) -> dict[str, Any]:
    """``eval.user_sample``: every split's (user, item) pairs of a uniform sample of ``n_users``
    of the users with pairs in ``split`` (all of them when there are no more), drawn without
    replacement by ``numpy.random.default_rng(seed)`` from the sorted user ids, so the sample
    depends only on the split and the seed."""
    users = np.unique(pairs[split][:, 0])
    if users.size > n_users:
        users = np.sort(np.random.default_rng(seed).choice(users, n_users, replace=False))
    return {name: p[np.isin(p[:, 0], users)] for name, p in pairs.items()}


@functools.lru_cache(maxsize=16)
def make_encoder(module):
    """A jitted ``(params, ctx) -> (user_emb, item_emb)`` in eval mode (one per module)."""
    return jax.jit(lambda params, ctx: module.apply({"params": params}, ctx, False, method="encode"))


def metrics_at_k(result: Mapping[str, Any]) -> dict[str, float]:
    """Only the ``metric@k`` entries of an evaluation result (:func:`evaluate_params`), as floats."""
    return {k: float(v) for k, v in result.items() if "@" in k}


def evaluate_params(experiment: Experiment, encoder, params, ctx, split_layout) -> dict[str, Any]:
    """Full-ranking metrics of ``params`` on one prepared split.

    Args:
      experiment: from :func:`prepare_experiment` (its ``eval`` config gives the cut-offs and metrics).
      encoder: :func:`make_encoder` of the experiment's module.
      params: the model parameters.
      ctx: the model context for these parameters (``experiment.built.ctx``, or for a model
        with an epoch hook :func:`epoch_context` of them).
      split_layout: one entry of :func:`prepare_eval_splits`.

    Returns:
      :func:`jaxrec.eval.evaluate_prepared`'s result: ``metric@k`` values, ``num_users`` and
      per-user arrays; :func:`metrics_at_k` keeps only the ``metric@k`` floats.
    """
    return evaluate_params_on_splits(experiment, encoder, params, ctx, {"split": split_layout})["split"]


def evaluate_params_on_splits(experiment: Experiment, encoder, params, ctx,
                              split_layouts: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """:func:`evaluate_params` on several prepared splits (``{name: layout}``) from ONE encoding
    of ``params``: ``{name: result}``, each result the one :func:`evaluate_params` gives for that
    split (the same embeddings, the same ranking call)."""
    user_emb, item_emb = encoder(params, ctx)
    cfg = experiment.config.eval
    return {name: jeval.evaluate_prepared(layout, user_emb, item_emb, ks=cfg.ks, metrics=cfg.metrics)
            for name, layout in split_layouts.items()}


def epoch_context(built: models.Built, params, seed: int, epoch_index: int):
    """The context epoch ``epoch_index`` (0-based) trains with, given the parameters at its start.

    The built context, or for a model with an ``epoch_update`` hook that hook applied to
    ``params`` and the BUILT context (never to a previous epoch's result) with a key from
    ``(seed, epoch_index)``. The same call with the parameters AFTER epoch ``e`` (1-based)
    and ``epoch_index = e`` gives the context evaluation after epoch ``e`` uses (the next
    epoch's). A function of ``(params, seed, epoch_index)`` only, so a resumed run and
    ``jaxrec evaluate`` recompute exactly the context the uninterrupted run saw.
    """
    if built.epoch_update is None:
        return built.ctx
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0x5EED), epoch_index)
    return built.epoch_update(params, built.ctx, epoch_index, key)
