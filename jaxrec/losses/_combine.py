r"""Compose an objective from named loss terms and a mapping of weights."""

from __future__ import annotations

import difflib
import math
import numbers
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxrec.errors import ConfigError, DataError


def _closest(name: str, candidates) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def combine(
    terms: Mapping[str, ArrayLike], weights: Mapping[str, ArrayLike]
) -> tuple[jax.Array, dict[str, jax.Array]]:
    r"""The weighted sum of named scalar loss terms; every term needs a weight and vice versa.

    .. math::
      \mathcal{L} = \sum_{t \in \text{terms}} w_t \, \mathcal{L}_t .

    The names must match exactly in both directions: a term without a weight, or a weight for
    a term that is not there (usually a typo in a config), raises a ``ConfigError`` naming it
    and the known names. A weight of exactly 0 (a Python number) switches its term off: the
    term is left out of the sum, so even a NaN there cannot reach the total or the gradient.
    Weights may also be jax scalars (e.g. a traced schedule); those are always multiplied in.

    The unweighted terms are returned with the total, ready to log, so a train step can
    ``return combine(model_terms, weights)`` from a ``jax.value_and_grad(..., has_aux=True)``
    loss function.

    Args:
      terms: name -> scalar loss term (unweighted), e.g. a model's ``loss_terms(...)``.
      weights: name -> weight, e.g. the config's ``loss_weights``.

    Returns:
      ``(total, terms)``: the scalar weighted sum and a dict of the unweighted terms.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> pos, neg, emb = jnp.array([2.0, 1.0]), jnp.array([0.0, 1.0]), jnp.ones((2, 3))
      >>> total, terms = losses.combine(
      ...     {"bpr": losses.bpr(pos, neg), "reg": losses.l2_mean_norm(emb)},
      ...     {"bpr": 1.0, "reg": 1e-3},
      ... )
      >>> round(float(total), 4), sorted(terms)  # 0.4100 + 1e-3 * sqrt(6) / 2
      (0.4113, ['bpr', 'reg'])
      >>> losses.combine(terms, {"bpr": 1.0, "rge": 1e-3})
      Traceback (most recent call last):
        ...
      jaxrec.errors.ConfigError: loss term 'reg' has no weight (did you mean 'rge'?); ...
    """
    missing = [name for name in terms if name not in weights]
    unknown = [name for name in weights if name not in terms]
    problems = [f"loss term {name!r} has no weight{_closest(name, unknown)}" for name in missing]
    problems += [f"weight {name!r} names no loss term{_closest(name, missing or terms)}" for name in unknown]
    if problems:
        raise ConfigError(
            "; ".join(problems)
            + f"; loss terms: {', '.join(map(repr, terms)) or 'none'}"
            + (f"; weights: {', '.join(map(repr, weights)) or 'none'}" if missing else "")
        )
    values: dict[str, jax.Array] = {}
    total = None
    for name, term in terms.items():
        value = jnp.asarray(term)
        if value.shape != ():
            raise DataError(
                "a loss term must be a scalar", field=f"terms[{name!r}]", found=f"shape {value.shape}",
                expected="shape ()",
            )
        values[name] = value
        weight = weights[name]
        if isinstance(weight, numbers.Real) and not isinstance(weight, bool):
            if not math.isfinite(weight):
                raise ConfigError(f"weight {name!r} must be a finite number, got {weight!r}")
            if weight == 0:
                continue
        elif not isinstance(weight, (jax.Array, np.ndarray, np.generic)) or np.shape(weight) != ():
            raise ConfigError(f"weight {name!r} must be a real number, got {weight!r}")
        contribution = weight * value
        total = contribution if total is None else total + contribution
    if total is None:
        total = jnp.zeros((), jnp.result_type(float))
    return total, values
