"""Experiment configuration: typed sections with defaults in code, YAML in, YAML out.

A config file is YAML with the sections of :class:`ExperimentConfig`; every key it leaves
out takes the default below, and every key it names must exist (an unknown key raises
:class:`~jaxrec.errors.ConfigError` naming it and the nearest valid key), so a typo can
never silently read as a default. ``--set key=value`` overrides use the same dotted names,
with values parsed as YAML (``--set train.epochs=5``, ``--set data.modalities=[text]``).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any


from jaxrec.errors import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "exponential")
PARALLEL_MODES = ("none", "pmap", "sharded")
NEGATIVE_SAMPLING = ("uniform", "popularity")
SAMPLERS = ("shuffle", "keyed", "device")
NEGATIVE_ITEMS = ("trained", "all")
FEATURE_TRANSFORMS = ("none", "center", "standardize", "l2")
PROTOCOLS = ("mmrec", "cornac")
SEARCH_METHODS = ("grid", "random")
RANKING_METRICS = ("recall", "ndcg", "precision", "map", "hit", "mrr", "recall2")
_MAX_SEED = 2**32 - 1


@dataclasses.dataclass
class ModelConfig:
    """Which model to build: ``name`` in the registry, ``args`` passed to its builder."""

    name: str = "bprmf"
    args: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DataConfig:
    """Where the data comes from.

    ``path`` is a dataset folder or file (relative paths resolve against the current
    directory); with ``path: null``, ``synthetic`` holds the keyword arguments of
    ``jaxrec.data.make_synthetic`` (``{}``: the default synthetic dataset). ``options`` go
    to the reader (e.g. ``{social: null}``). ``split`` re-splits the data with
    ``jaxrec.data.split_dataset`` (``{method: ratio, ...}``, ``{method: cold_start_items,
    holdout: 0.2}`` -- then valid and test rank only their held-out items); ``null`` keeps
    the file's split. ``modalities`` keeps only the named item modalities (``null``: all);
    ``roles`` renames modalities to the role a model reads them under, e.g.
    ``{vision: vggish, text: minilm}``. ``feature_transform`` maps modality names to
    ``center``, ``standardize``, ``l2`` or ``none``, applied once after loading, before any
    model, with statistics over every item that has the modality
    (``jaxrec.data.transform_features``), e.g. ``{visual_feat: center}``.
    ``per_process_read`` (``auto``, ``true`` or ``false``): each process of a multi-process
    run reads only its shard of the train records of a prepared dataset, the shards then
    exchanged (``jaxrec.train._per_process``); ``auto``: when the data is prepared (TFDS) and
    there is more than one process.
    """

    path: str | None = None
    format: str = "auto"
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    split: dict[str, Any] | None = None
    modalities: list[str] | None = None
    roles: dict[str, str] = dataclasses.field(default_factory=dict)
    synthetic: dict[str, Any] | None = None
    feature_transform: dict[str, str] = dataclasses.field(default_factory=dict)
    per_process_read: Any = "auto"


@dataclasses.dataclass
class TrainConfig:
    """Optimization, early stopping, sampling, parallelism and checkpointing.

    Defaults are MMRec's (Adam 1e-3, batch 2048, 1000 epochs, patience 20 on valid
    recall@20, seed 999, one uniform negative per positive). ``patience`` counts
    evaluations: training stops once more than ``patience`` evaluations in a row failed to
    beat the best validation value (MMRec's rule). ``steps_per_call`` is how many batches
    one compiled call runs (``lax.scan``); 0 runs a whole epoch per call. The latest
    checkpoint is written every ``checkpoint_every`` epochs and at the end, and the best
    state with the next checkpoint; a run resumed after a kill recomputes the epochs since
    its last checkpoint exactly, so nothing is lost but time. ``sampler`` is how epochs are
    drawn: ``shuffle`` (one generator per epoch) or ``keyed`` (every row a function of
    ``(seed, epoch, row position)``, so each process of a multi-process run draws only its
    own rows) or ``device`` (the pair order and negatives drawn on device inside one compiled
    program per epoch: for GPU/TPU, where the host->device copy of every epoch and per-call
    dispatch dominate; same distribution; ``jaxrec.train._data.EpochSampler``). ``negative_items`` is which items
    negatives are drawn from: ``trained`` (only items with a train interaction; an item
    without one would only ever be pushed down) or ``all``.

    ``parallel: sharded`` runs the step through ``jax.jit`` on a ``(data, model)`` device mesh
    given by ``mesh: {data: D, model: M}`` (``D * M`` = the device count; ``null``: every
    device on ``data``): embedding tables and their optimizer state row-sharded over
    ``model``, batches over ``data`` (see ``jaxrec.train._mesh`` and ``docs/scaling.md``).
    """

    epochs: int = 1000
    batch_size: int = 2048
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.0
    weight_decay: float = 0.0
    clip_norm: float | None = None
    schedule: str = "constant"
    warmup_epochs: float = 0.0
    decay_rate: float = 0.96
    decay_epochs: float = 50.0
    min_learning_rate: float = 0.0
    patience: int = 20
    valid_metric: str = "recall@20"
    seed: int = 999
    eval_every: int = 1
    parallel: str = "none"
    mesh: dict[str, int] | None = None
    n_negatives: int = 1
    negative_sampling: str = "uniform"
    sampler: str = "shuffle"
    negative_items: str = "trained"
    checkpoints_to_keep: int = 2
    checkpoint_every: int = 5
    steps_per_call: int = 0


@dataclasses.dataclass
class EvalConfig:
    """Full-ranking evaluation: cut-offs, metrics, protocol (``mmrec`` or ``cornac``), users
    per batch (``null``: automatic).

    ``user_sample: N`` evaluates each split (valid during training, test at the end) on a fixed
    uniform sample of N of the users that have interactions in it, drawn once with
    ``user_sample_seed`` (``null``: every user). Each sampled user is still ranked over the
    whole catalogue under the protocol's masks; only the average is over fewer users, an
    unbiased estimate of the full one (``recall2``, a ratio of sums: consistent, not unbiased). For catalogues where ranking every
    user each epoch costs more than the epoch itself (the 1M-item scale: 200,000 users x 1M
    items); a table's numbers come from full evaluation.

    ``test_every_epoch: true`` also ranks the test split at every validation, from the same
    encoded embeddings (one encoding for both splits), as MMRec logs valid and test each epoch:
    each history row then holds ``test`` next to ``valid``. Only valid steers anything (early
    stopping, the best epoch, a search's winner); the run's reported test metrics are those at
    the best valid epoch either way, and equal that epoch's row (in a batched search's rows, up
    to the float rounding of its batched encoder). A row's ``eval_seconds`` (and so the median in
    ``metrics.json``) then times both splits together.
    """

    ks: list[int] = dataclasses.field(default_factory=lambda: [5, 10, 20, 50])
    metrics: list[str] = dataclasses.field(
        default_factory=lambda: ["recall", "ndcg", "precision", "map", "hit", "mrr"])
    protocol: str = "mmrec"
    batch_size: int | None = None
    user_sample: int | None = None
    user_sample_seed: int = 0
    test_every_epoch: bool = False

    @property
    def epoch_splits(self) -> tuple[str, ...]:
        """The splits ranked at every validation, from one encoding: valid, and test with
        ``test_every_epoch``."""
        return ("valid", "test") if self.test_every_epoch else ("valid",)


@dataclasses.dataclass
class SearchConfig:
    """Hyper-parameter search over dotted config keys.

    ``method: grid`` runs the product of the lists in ``space``; ``method: random`` draws
    ``budget`` settings, each value from a list (uniform choice) or a distribution
    ``{uniform: [a, b]}``, ``{loguniform: [a, b]}``, ``{randint: [a, b]}`` (inclusive).
    The winner is chosen by the validation metric only.
    """

    method: str = "grid"
    space: dict[str, Any] = dataclasses.field(default_factory=dict)
    budget: int | None = None
    seed: int = 0


@dataclasses.dataclass
class ExperimentConfig:
    """A whole experiment. ``grid`` is shorthand for ``search: {method: grid, space: ...}``."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    loss_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    grid: dict[str, list] | None = None
    search: SearchConfig | None = None

    @property
    def has_search(self) -> bool:
        return bool(self.grid) or self.search is not None


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _unwrap_optional(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp, True
    return tp, False


def valid_keys(cls=ExperimentConfig, prefix: str = "") -> list[str]:
    """Every dotted key a config accepts (free-form sections listed by their own name)."""
    keys = []
    for name, tp in _field_types(cls).items():
        tp, _ = _unwrap_optional(tp)
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        if _is_dataclass_type(tp):
            keys.extend(valid_keys(tp, dotted + "."))
    return keys


def _unknown_key_error(key: str, candidates: Sequence[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not close:  # a dotted key may be wrong in its last part only
        last = key.rsplit(".", 1)[-1]
        by_last = {c.rsplit(".", 1)[-1]: c for c in candidates}
        match = difflib.get_close_matches(last, by_last, n=1, cutoff=0.6)
        close = [by_last[match[0]]] if match else []
    hint = f"; did you mean {close[0]!r}?" if close else ""
    shown = ", ".join(candidates) if len(candidates) <= 30 else ", ".join(candidates[:30]) + ", ..."
    return ConfigError(f"{where}unknown config key {key!r}{hint} (valid keys here: {shown})")


def _coerce(value, tp, key: str, where: str):
    """``value`` as type ``tp`` or a ConfigError naming ``key``."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}config key {key!r} may not be null; expected {_type_name(tp)}")
    origin = typing.get_origin(tp) or (tp if tp in (list, dict) else None)
    bad = lambda: ConfigError(  # noqa: E731
        f"{where}config key {key!r} expects {_type_name(tp)}; found {value!r} ({type(value).__name__})")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad()
    if tp is int:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise bad()
    if tp is float:
        if isinstance(value, bool):
            raise bad()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept it as the number it means.
            try:
                number = float(value)
            except ValueError:
                raise bad() from None
            if not math.isfinite(number):
                raise ConfigError(f"{where}config key {key!r} must be a finite number; found {value!r}")
            return number
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    if origin is list:
        if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
            raise bad()
        (item_type,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item_type, f"{key}[{i}]", where) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise bad()
        _, value_type = typing.get_args(tp) or (str, Any)
        return {str(k): _coerce(v, value_type, f"{key}.{k}", where) for k, v in value.items()}
    raise bad()


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _build_section(cls, raw: Mapping, prefix: str, where: str):
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}config section {prefix.rstrip('.') or 'top level'!r} must be a mapping; "
                          f"found {raw!r}")
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in raw.items():
        key = str(key)
        dotted = f"{prefix}{key}"
        if key not in types_:
            siblings = [f"{prefix}{name}" for name in types_]
            raise _unknown_key_error(dotted, siblings, where)
        tp, optional = _unwrap_optional(types_[key])
        if _is_dataclass_type(tp):
            kwargs[key] = None if (value is None and optional) else _build_section(tp, value or {}, dotted + ".", where)
        else:
            kwargs[key] = _coerce(value, types_[key], dotted, where)
    return cls(**kwargs)


def _check_values(config: ExperimentConfig, where: str) -> None:
    def choice(key, value, allowed):
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{where}config key {key!r} is {value!r}{hint} (expected one of {', '.join(allowed)})")

    def positive(key, value, allow_zero=False):
        if value < 0 or (value == 0 and not allow_zero):
            raise ConfigError(f"{where}config key {key!r} must be {'>= 0' if allow_zero else '> 0'}; found {value!r}")

    def seed(key, value):
        # 32 bits: jax.random.PRNGKey(s) without x64 keeps only the low 32 bits of a seed, so
        # seed 2**32 would silently repeat seed 0; numpy's generators reject negative seeds.
        if not 0 <= value <= _MAX_SEED:
            raise ConfigError(f"{where}config key {key!r} must be an integer in [0, {_MAX_SEED}]; found {value!r}")

    t = config.train
    seed("train.seed", t.seed)
    if config.search is not None:
        seed("search.seed", config.search.seed)
    choice("train.optimizer", t.optimizer, OPTIMIZERS)
    choice("train.schedule", t.schedule, SCHEDULES)
    choice("train.parallel", t.parallel, PARALLEL_MODES)
    choice("train.negative_sampling", t.negative_sampling, NEGATIVE_SAMPLING)
    choice("train.sampler", t.sampler, SAMPLERS)
    choice("train.negative_items", t.negative_items, NEGATIVE_ITEMS)
    if not (isinstance(config.data.per_process_read, bool) or config.data.per_process_read == "auto"):
        raise ConfigError(f"{where}config key 'data.per_process_read' is {config.data.per_process_read!r} "
                          "(expected auto, true or false)")
    for name, how in config.data.feature_transform.items():
        choice(f"data.feature_transform.{name}", how, FEATURE_TRANSFORMS)
    if t.mesh is not None:
        unknown = sorted(set(t.mesh) - {"data", "model"})
        if unknown:
            raise ConfigError(f"{where}config key 'train.mesh' has unknown axis {unknown[0]!r}; expected "
                              "{data: D, model: M}")
        for axis, size in t.mesh.items():
            positive(f"train.mesh.{axis}", size)
        if t.parallel != "sharded":
            raise ConfigError(f"{where}config key 'train.mesh' needs train.parallel: sharded (found "
                              f"{t.parallel!r})")
    choice("eval.protocol", config.eval.protocol, PROTOCOLS)
    for key in ("epochs", "batch_size", "eval_every", "n_negatives", "checkpoints_to_keep", "checkpoint_every"):
        positive(f"train.{key}", getattr(t, key))
    for key in ("learning_rate",):
        positive(f"train.{key}", getattr(t, key))
    for key in ("momentum", "weight_decay", "warmup_epochs", "min_learning_rate", "patience", "steps_per_call"):
        positive(f"train.{key}", getattr(t, key), allow_zero=True)
    positive("train.decay_epochs", t.decay_epochs)
    if t.clip_norm is not None:
        positive("train.clip_norm", t.clip_norm)
    if not config.eval.ks:
        raise ConfigError(f"{where}config key 'eval.ks' needs at least one cut-off")
    for k in config.eval.ks:
        positive("eval.ks", k)
    if config.eval.batch_size is not None:
        positive("eval.batch_size", config.eval.batch_size)
    if config.eval.user_sample is not None:
        positive("eval.user_sample", config.eval.user_sample)
    seed("eval.user_sample_seed", config.eval.user_sample_seed)
    for metric in config.eval.metrics:
        choice("eval.metrics", metric, RANKING_METRICS)
    match = re.fullmatch(r"([a-z_][a-z0-9_]*)@(\d+)", t.valid_metric)
    if not match:
        raise ConfigError(f"{where}config key 'train.valid_metric' is {t.valid_metric!r}; expected NAME@K, "
                          "e.g. recall@20")
    if match.group(1) not in config.eval.metrics:
        raise ConfigError(f"{where}train.valid_metric {t.valid_metric!r} is not among eval.metrics "
                          f"{config.eval.metrics}")
    if int(match.group(2)) not in config.eval.ks:
        raise ConfigError(f"{where}train.valid_metric {t.valid_metric!r} uses K={match.group(2)}, which is not in "
                          f"eval.ks {config.eval.ks}")
    for name, weight in config.loss_weights.items():
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight):
            raise ConfigError(f"{where}loss_weights.{name} must be a finite number; found {weight!r}")
    if config.data.split is not None and "method" not in config.data.split:
        raise ConfigError(f"{where}data.split needs a method (given, ratio, leave_one_out or cold_start_items)")
    if config.data.path is None and config.data.synthetic is None:
        raise ConfigError(f"{where}config needs data.path (a dataset folder) or data.synthetic (generator "
                          "arguments, {} for the default synthetic data)")
    if config.search is not None:
        choice("search.method", config.search.method, SEARCH_METHODS)
        if config.search.method == "random" and not config.search.budget:
            raise ConfigError(f"{where}random search needs search.budget (the number of trials)")
    if config.grid is not None and config.search is not None:
        raise ConfigError(f"{where}give either grid: or search:, not both")
    space = config.grid if config.grid is not None else (config.search.space if config.search else {})
    searchable = set(valid_keys())
    for key in space:
        if key.split(".")[0] not in ("model", "loss_weights") and key not in searchable:
            raise _unknown_key_error(key, sorted(searchable), f"{where}search space: ")


def _reject_non_finite(value, key: str, where: str) -> None:
    """A ConfigError naming the first NaN or infinite number anywhere in ``value`` (free-form
    sections such as ``model.args`` and search spaces included)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}config key {key!r} must be a finite number; found {value!r}")
    if isinstance(value, Mapping):
        for name, item in value.items():
            _reject_non_finite(item, f"{key}.{name}" if key else str(name), where)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _reject_non_finite(item, f"{key}[{index}]", where)


def _require_model(raw: Mapping, where: str) -> None:
    # A default model would train something the user never asked for; the name must be given.
    model = raw.get("model")
    if model is None:
        raise ConfigError(f"{where}config has no model: section; name the model to train, e.g. "
                          "model: {name: bprmf} (or --set model.name=bprmf)")
    if isinstance(model, Mapping) and model.get("name") is None:
        raise ConfigError(f"{where}config key 'model.name' is missing; name the model to train, e.g. "
                          "model: {name: bprmf}")


def config_from_dict(raw: Mapping | None, *, source: str | os.PathLike | None = None) -> ExperimentConfig:
    """Validate a nested mapping (e.g. parsed YAML) into an :class:`ExperimentConfig`.

    Args:
      raw: the mapping; missing keys take their defaults, except ``model.name``, which must be
        given.
      source: the file it came from, named in error messages.

    Returns:
      The config, with types checked and choices validated.

    Raises:
      ConfigError: an unknown key (with the nearest valid key), a wrong type, a bad value, a
        NaN or infinite number anywhere, or no model named.
    """
    where = f"{os.fspath(source)}: " if source is not None else ""
    raw = raw or {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}a config must be a mapping of sections; found {raw!r}")
    _reject_non_finite(raw, "", where)
    config = _build_section(ExperimentConfig, raw, "", where)  # unknown keys and types first
    _require_model(raw, where)
    _check_values(config, where)
    return config


def config_to_dict(config: ExperimentConfig) -> dict[str, Any]:
    """The config as plain nested dicts and lists (what ``config.yaml`` holds)."""
    return dataclasses.asdict(config)
