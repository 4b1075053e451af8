"""Input checks shared by every layer of jaxrec (losses, fusion, models, ...).

Each check looks at static facts only (shapes, dtypes, Python values), so it costs nothing
under ``jax.jit`` and raises before tracing goes on: :class:`jaxrec.errors.DataError` for an
array argument (naming the field, what was found and what was expected) and
:class:`jaxrec.errors.ConfigError` for an option. Only :func:`check_index_range` and
:func:`check_value_range` (with :func:`check_nonnegative`) look at values, and only at concrete
(non-traced) ones: under ``jax.jit`` they do nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxrec.errors import ConfigError, DataError


def as_float(x: ArrayLike) -> jax.Array:
    """``x`` as a jax array of a floating dtype (integers become the default float, float32
    unless x64 is enabled)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    return x


def check_rank(x: ArrayLike, rank: int | Sequence[int], field: str) -> None:
    """Raise a DataError unless ``x`` has ``rank`` dimensions (or one of several ranks)."""
    allowed = {rank} if isinstance(rank, int) else set(rank)
    if np.ndim(x) not in allowed:
        expected = f"a rank-{rank} array" if isinstance(rank, int) else f"rank in {sorted(allowed)}"
        raise DataError("wrong number of dimensions", field=field, found=f"shape {tuple(np.shape(x))}",
                        expected=expected)


def check_shape(x: ArrayLike, shape: Sequence[int | None], field: str) -> None:
    """Raise a DataError unless ``x`` has ``shape`` (None matches any size)."""
    found = tuple(np.shape(x))  # np.shape, not chex: also right for a list or a number
    shape = tuple(shape)
    if len(found) != len(shape) or any(s is not None and s != f for s, f in zip(shape, found)):
        wanted = tuple("any" if s is None else s for s in shape)
        raise DataError("wrong shape", field=field, found=f"shape {found}", expected=f"shape {wanted}")


def check_same_shape(a: ArrayLike, b: ArrayLike, field_a: str, field_b: str) -> None:
    """Raise a DataError unless ``a`` and ``b`` have the same shape."""
    try:
        chex.assert_equal_shape([a, b])
    except AssertionError:
        raise DataError(
            f"{field_b} must have the same shape as {field_a}",
            field=field_b,
            found=f"shape {np.shape(b)}",
            expected=f"shape {np.shape(a)} (as {field_a})",
        ) from None


def check_integer(x: ArrayLike, field: str, what: str = "indices") -> None:
    """Raise a DataError unless ``x`` has an integer dtype (indices, or the ``what`` named)."""
    dtype = jnp.asarray(x).dtype
    if not jnp.issubdtype(dtype, jnp.integer):
        raise DataError(f"{what} must be integers", field=field, found=f"dtype {dtype}", expected="an integer dtype")


def check_index_range(x: ArrayLike, size: int, field: str) -> None:
    """Raise a DataError if concrete indices fall outside ``[0, size)``.

    Under ``jax.jit`` the indices are tracers and cannot be inspected; the check then does
    nothing (out-of-range gathers clamp, as everywhere in JAX).
    """
    if isinstance(x, jax.core.Tracer):
        return
    values = np.asarray(x)
    if values.size and (values.min() < 0 or values.max() >= size):
        raise DataError(
            "index out of range",
            field=field,
            found=f"indices in [{values.min()}, {values.max()}]",
            expected=f"indices in [0, {size - 1}]",
        )


def check_value_range(x: ArrayLike, field: str, *, low: float | None = None, high: float | None = None,
                      expected: str | None = None, message: str = "value out of range") -> None:
    """Raise a DataError if concrete values fall outside ``[low, high]``.

    ``None`` leaves that side open; NaN is not flagged (a masked-out entry may hold it). As
    :func:`check_index_range`, a traced ``x`` (under ``jax.jit``) cannot be inspected and the
    check then does nothing. ``expected`` replaces the default description of the allowed
    values, ``message`` the default sentence.
    """
    if isinstance(x, jax.core.Tracer):
        return
    values = np.asarray(x)
    if values.size == 0:
        return
    if values.dtype.kind not in "biuf":
        values = values.astype(np.float64)
    outside = np.zeros(values.shape, bool)
    if low is not None:
        outside |= values < low
    if high is not None:
        outside |= values > high
    if outside.any():
        bad = values[outside]
        if expected is None:
            if low is not None and high is not None:
                expected = f"values in [{low}, {high}]"
            elif low is not None:
                expected = f"values >= {low}"
            else:
                expected = f"values <= {high}"
        raise DataError(
            message,
            field=field,
            found=f"{bad.size} such value(s), e.g. {bad.flat[0].item()!r}",
            expected=expected,
        )


def check_nonnegative(x: ArrayLike, field: str) -> None:
    """Raise a DataError if concrete values are negative; nothing for a tracer."""
    check_value_range(x, field, low=0, expected="non-negative values", message="negative values are not allowed")


def check_broadcastable(x: ArrayLike, shape: Sequence[int], field: str, target: str) -> None:
    """Raise a DataError unless ``x`` broadcasts to ``shape`` (the shape of ``target``)."""
    shape = tuple(shape)
    try:
        ok = np.broadcast_shapes(np.shape(x), shape) == shape
    except ValueError:
        ok = False
    if not ok:
        raise DataError(
            f"cannot be broadcast to the shape of {target}",
            field=field,
            found=f"shape {tuple(np.shape(x))}",
            expected=f"a shape that broadcasts to {shape} (as {target})",
        )


def check_scalar_option(value, name: str) -> None:
    """Raise a ConfigError unless ``value`` is a scalar (a number or a 0-d array, traced or not)."""
    if np.ndim(value) != 0:
        raise ConfigError(f"{name} must be a scalar; found shape {tuple(np.shape(value))}")


def check_not_empty(arrays: Sequence, field: str) -> None:
    """Raise a DataError if a variadic list of arrays is empty."""
    if len(arrays) == 0:
        raise DataError("at least one array is needed", field=field, found="no arrays", expected="one or more arrays")


def check_separate_arrays(arrays: Sequence, field: str, function: str) -> None:
    """Raise a DataError if a variadic ``*arrays`` is empty or got a list/tuple of arrays.

    ``f([u, i])`` would otherwise be stacked into one array (a different value from
    ``f(u, i)``); the arrays must be passed as separate arguments.
    """
    check_not_empty(arrays, field)
    for k, x in enumerate(arrays):
        if isinstance(x, (list, tuple)):
            raise DataError(
                "pass each array as a separate argument, not a list or tuple of arrays",
                field=f"{field}[{k}]",
                found=f"a {type(x).__name__} of {len(x)} entries",
                expected=f"an array; call {function}(u, i) or {function}(*arrays)",
            )


def check_same_length(a: Sequence, b: Sequence, field_a: str, field_b: str) -> None:
    """Raise a DataError unless two per-modality lists have the same length."""
    if len(a) != len(b):
        raise DataError(
            f"{field_a} and {field_b} must have one entry per modality",
            field=field_b,
            found=f"{len(b)} entries",
            expected=f"{len(a)} (as many as {field_a})",
        )


def check_modalities(xs: Sequence, field: str = "modalities") -> int:
    """Check a non-empty list of (n, d_m) arrays with a common n; return n."""
    if isinstance(xs, (jax.Array, np.ndarray)) or len(xs) == 0:
        raise DataError(
            "expected a non-empty list of per-modality arrays",
            field=field,
            found=type(xs).__name__ if len(xs) else "an empty list",
            expected="a list of (n, d_m) arrays, one per modality",
        )
    n = None
    for m, x in enumerate(xs):
        check_rank(x, 2, f"{field}[{m}]")
        if n is None:
            n = np.shape(x)[0]
        elif np.shape(x)[0] != n:
            raise DataError(
                "all modalities must have the same number of rows",
                field=f"{field}[{m}]",
                found=f"{np.shape(x)[0]} rows",
                expected=f"{n} rows (as {field}[0])",
            )
    return n


def canonical_masks(masks: Sequence | None, num_modalities: int, n: int) -> list[jax.Array]:
    """Return per-modality (n,) bool row masks, all True when ``masks`` is None."""
    if masks is None:
        return [jnp.ones((n,), bool) for _ in range(num_modalities)]
    if len(masks) != num_modalities:
        raise DataError(
            "need one row mask per modality",
            field="masks",
            found=f"{len(masks)} masks",
            expected=f"{num_modalities}",
        )
    out = []
    for m, mask in enumerate(masks):
        if np.shape(mask) != (n,):
            raise DataError(
                "a row mask must be a (n,) boolean vector",
                field=f"masks[{m}]",
                found=f"shape {tuple(np.shape(mask))}",
                expected=f"shape ({n},)",
            )
        out.append(jnp.asarray(mask).astype(bool))
    return out


def check_positive_int(value, name: str) -> None:
    """Raise a ConfigError unless ``value`` is a positive integer."""
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{name} must be a positive integer; found {value!r}")
