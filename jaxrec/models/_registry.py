"""The model contract and the registry that finds models by name.

A jaxrec model is a Flax linen ``Module`` with two entry points, both pure:

``encode(ctx, train) -> (user_emb, item_emb)``
    Embeddings for ALL users ``(n_users, d)`` and ALL items ``(n_items, d)`` whose dot
    products are the model's ranking scores (biases are folded in as an extra column).
    Ranking, evaluation and serving only ever call this.

``loss_terms(ctx, batch, train) -> dict[str, scalar]``
    The model's named, UNWEIGHTED loss terms for one batch. The trainer multiplies them by
    the config's ``loss_weights`` and sums them; it never looks inside a model.

``ctx`` is a pytree (nested dicts) of the dataset's device arrays the model needs — item
modality features and masks, graph edge lists — passed as arguments to jitted functions,
never closed over, so large arrays are not baked into compiled programs as constants.
``batch`` is always in one layout (the trainer normalizes every batch with
:func:`jaxrec.models.normalize_batch` before it reaches a model): ``users`` (B,), ``pos_items``
(B,) and ``neg_items`` (B, n) int32, ``weights`` (B,) float32, plus ``ratings`` (B,) for
rating models. **The padding rule**, the one place it is stated: the epoch's last batch is
padded to the static batch size B with rows of weight 0; a row of weight 1 is real. A padding
row changes no term and no gradient, and the batch size in any "mean over the batch" is the
number of REAL rows, ``sum(weights)`` -- as in MMRec, whose last batch is simply smaller. (A
mean over pairs, as in models that skip untrained negatives, counts the pairs of real rows.)
Every reduction over batch rows goes through :func:`jaxrec.losses.batch_sum` (the losses'
means and ``over_batch=True`` regularizers do), so that under ``train.parallel: pmap`` each
term equals its one-device value. Randomness in a model (dropout, edge dropout) comes from the
``"dropout"`` PRNG stream that the trainer passes to ``apply``; it is the same key on every
device, so draws over whole tables agree across devices (draws per batch row cannot).

A ``ctx`` (dict) holding the key :data:`EPOCH_STEP` (``"epoch_step"``, an int32 scalar) gets
it filled in by the trainer at every step: the step's index within its epoch (0 at an epoch's
first step), for a model whose schedule differs there (LATTICE's ``learned_graph: mmrec``).
Runners without epochs (online updates) leave the built value (LATTICE puts
-1 there: every step an epoch's first, its neighbour lists searched again).

A model file registers a *builder*: a function ``build(dataset, **model_args) -> Built``
that reads the static sizes it needs from a ``MultimodalDataset``, prepares the context
arrays (e.g. a normalized graph), and returns the module and its context. Unknown
``model_args`` must raise (Python does, for a builder with explicit keyword arguments).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
from collections.abc import Callable, Mapping
from typing import Any

from flax import linen as nn

from jaxrec.errors import ConfigError


# The ctx key the trainer sets to the step's index within its epoch (see the contract above).
EPOCH_STEP = "epoch_step"


@dataclasses.dataclass(frozen=True)
class Built:
    """What a model builder returns.

    Attributes:
      module: the linen module (with ``encode`` and ``loss_terms`` methods).
      ctx: the pytree of arrays passed as ``ctx`` to both entry points.
      default_loss_weights: weight per loss term when the config gives none; the
        config's ``loss_weights`` override these name by name.
      epoch_update: optional ``fn(params, ctx, epoch, rng) -> ctx``, the per-epoch hook
        (FREEDOM's per-epoch edge pruning, LATTICE's per-epoch learned graph); None for most
        models. The trainer calls it with the CURRENT parameters, the BUILT ``ctx`` (never a
        previous epoch's result), the 0-based ``epoch`` and a key derived from
        ``(seed, epoch)``, and trains epoch ``epoch`` with the result; evaluation after epoch
        ``e`` (1-based) uses the result for ``(params after epoch e, e)``, i.e. the context
        the next epoch trains with. So it must be a pure function of its arguments: a
        resumed run and ``jaxrec evaluate`` recompute it from a checkpoint's parameters.
        Its result must have the built ``ctx``'s structure, shapes and dtypes.
      epoch_start_params: optional ``fn(params) -> tree of bool`` (same structure, Python
        bools): the parameters that get a gradient only in a step with ``ctx[EPOCH_STEP] <= 0``
        (an epoch's first step, or every step of a runner without epochs). The trainer's
        optimizer gives them their own state and skips them in the other steps, as torch's
        optimizers skip a parameter whose ``.grad`` is None (LATTICE's ``learned_graph:
        mmrec``: the item graph's parameters; see ``jaxrec.train.epoch_gated``).
    """

    module: nn.Module
    ctx: Mapping[str, Any]
    default_loss_weights: Mapping[str, float]
    epoch_update: Callable | None = None
    epoch_start_params: Callable | None = None


_BUILDERS: dict[str, Callable[..., Built]] = {}
_TRACED_ARGS: dict[str, dict[str, float | None]] = {}


def register(name: str, *, traced_args: Mapping[str, float | None] | None = None, **preset):
    """Decorator registering a model builder under ``name`` (lower case).

    With ``preset`` keyword arguments, ``name`` is an alias for a variant of the builder's
    model, e.g. ``register("attention", fusion="attention")``: the preset arguments are fixed
    (a config that sets them gets the usual unknown-argument error) and the rest are the
    builder's own.

    ``traced_args``: ``{argument: branch value or None}``, the numeric model arguments whose
    trials a batched search may train in ONE program (``jaxrec.train``'s batched search passes
    each trial's value as a traced scalar: the module, cloned with it, must use it in array
    arithmetic only). The builder must hand each to the module unchanged, as the attribute of
    that name, and use it nowhere else (no shape, context or epoch hook depends on it). The
    branch value is one at which the module, given the Python number, leaves its operation out
    (a dropout rate of 0: :func:`jaxrec.models._common.is_constant`); given it traced, the module
    runs the operation, which must then compute the same (an all-kept mask, a division by 1) and
    draw no random numbers that another operation would otherwise get. The contract test builds
    every registered argument twice and compares the traced module with the number's at 0.6 and
    at the branch value.
    """

    def decorate(builder):
        key = name.lower()
        entry = _variant(builder, preset) if preset else builder
        if key in _BUILDERS and _BUILDERS[key] is not entry:
            raise ValueError(f"model name {key!r} registered twice")
        _BUILDERS[key] = entry
        _TRACED_ARGS[key] = dict(traced_args or {})
        return builder

    return decorate


def _variant(builder, preset):
    import functools
    import inspect

    def variant(dataset, **model_args):
        fixed = sorted(set(model_args) & set(preset))
        if fixed:
            raise TypeError(f"{builder.__name__}() got an unexpected keyword argument '{fixed[0]}'")
        return builder(dataset, **preset, **model_args)

    functools.update_wrapper(variant, builder)
    signature = inspect.signature(builder)
    variant.__signature__ = signature.replace(
        parameters=[p for n, p in signature.parameters.items() if n not in preset])
    variant.preset = dict(preset)
    return variant


def _import_model_files() -> None:
    # Every module in jaxrec.models registers itself on import; importing them all here
    # keeps the registry complete without a hand-kept list.
    import jaxrec.models as package

    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("_"):
            importlib.import_module(f"jaxrec.models.{info.name}")


def available() -> list[str]:
    """Names of all registered models."""
    _import_model_files()
    return sorted(_BUILDERS)


def traced_args(name: str) -> dict[str, float | None]:
    """The model arguments of ``name`` a batched search may vary within one program, with their
    branch values (see :func:`register`); empty for an unknown name."""
    _import_model_files()
    return dict(_TRACED_ARGS.get(str(name).lower(), {}))


def get_builder(name: str) -> Callable[..., Built]:
    """The builder registered as ``name``; an unknown name raises with the closest names."""
    _import_model_files()
    key = str(name).lower()
    if key not in _BUILDERS:
        close = difflib.get_close_matches(key, _BUILDERS, n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown model {name!r}.{hint} Available: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[key]


def _unknown_argument(name: str, builder, bad: str) -> ConfigError:
    import inspect

    known = [p for p in inspect.signature(builder).parameters if p != "dataset"]
    close = difflib.get_close_matches(bad, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"model {name!r} has no argument {bad!r}.{hint} Known: {', '.join(known)}")


def _missing_arguments(name: str, builder, model_args: Mapping[str, Any]) -> None:
    """A ConfigError naming the builder's required arguments (no default) absent from ``model_args``."""
    import inspect

    parameters = list(inspect.signature(builder).parameters.values())[1:]  # after the dataset
    missing = [p.name for p in parameters if p.default is inspect.Parameter.empty
               and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in model_args]
    if missing:
        raise ConfigError(f"model {name!r} needs model.args.{missing[0]}" + "".join(
            f", model.args.{m}" for m in missing[1:]) + f" (no default); it takes "
            f"{', '.join(p.name for p in parameters)}")


def check_model_args(name: str, model_args: Mapping[str, Any]) -> None:
    """Raise the ConfigError :func:`build` would for an unknown model ``name``, an argument
    its builder does not take or a required one missing, without building anything (no data
    needed; the values are checked by the builder itself)."""
    import inspect

    builder = get_builder(name)
    parameters = inspect.signature(builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        for arg in model_args:
            if arg not in parameters or arg == "dataset":
                raise _unknown_argument(name, builder, str(arg))
    _missing_arguments(name, builder, model_args)


def build(name: str, dataset, **model_args) -> Built:
    """Build model ``name`` for ``dataset``; bad or missing ``model_args`` raise ``ConfigError``."""
    builder = get_builder(name)
    _missing_arguments(name, builder, model_args)
    try:
        return builder(dataset, **model_args)
    except TypeError as error:
        if "unexpected keyword argument" in str(error):
            bad = str(error).split("'")[-2] if "'" in str(error) else str(error)
            raise _unknown_argument(name, builder, bad) from None
        raise
