"""Explicit feature maps whose inner products reproduce the kernels in ``_kernels``.

``phi(x) @ phi(y).T`` equals the kernel exactly for the linear, polynomial and cosine kernels,
and approximates the RBF kernel with random Fourier features; ``direct_sum_features``
concatenates per-modality maps scaled by ``sqrt(w_m)`` so that one dot product gives the
weighted combined kernel.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxrec.errors import ConfigError, DataError
from jaxrec.fusion._kernels import normalize_rows, resolve_gamma
from jaxrec._checks import as_float, check_modalities, check_nonnegative, check_positive_int, check_rank

# The explicit polynomial map grows like d**degree / degree!; past this many features the
# random Fourier / sketching route is the sensible one, so fail loudly instead of exhausting memory.
MAX_POLYNOMIAL_FEATURES = 1 << 20


def linear_features(x: ArrayLike) -> jax.Array:
    r"""The linear kernel's feature map, the identity: :math:`\phi(x) = x`.

    Args:
      x: (n, d) rows.

    Returns:
      (n, d) features.
    """
    check_rank(x, 2, "x")
    return as_float(x)


def cosine_features(x: ArrayLike) -> jax.Array:
    r"""The cosine kernel's feature map: :math:`\phi(x) = x / \lVert x \rVert` (zero rows stay zero).

    Args:
      x: (n, d) rows.

    Returns:
      (n, d) unit-norm (or zero) features.
    """
    check_rank(x, 2, "x")
    return normalize_rows(as_float(x))


def polynomial_feature_dim(input_dim: int, *, degree: int, coef0: float = 1.0) -> int:
    r"""The number of features of :func:`polynomial_features`.

    .. math::
      \binom{d + p}{p} \text{ if } c_0 > 0, \qquad \binom{d + p - 1}{p} \text{ if } c_0 = 0.

    Example:
      >>> from jaxrec.fusion import polynomial_feature_dim
      >>> polynomial_feature_dim(64, degree=3)
      47905
    """
    check_positive_int(degree, "degree")
    variables = input_dim + 1 if coef0 > 0 else input_dim
    return math.comb(variables + degree - 1, degree)


@functools.lru_cache(maxsize=64)
def _monomial_table(num_variables: int, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """Index tuples of all degree-p monomials in num_variables and sqrt(multinomial) weights."""
    indices = np.array(
        list(itertools.combinations_with_replacement(range(num_variables), degree)), dtype=np.int32
    ).reshape(-1, degree)
    log_multinomial = math.lgamma(degree + 1) - np.array(
        [sum(math.lgamma(c + 1) for c in np.bincount(row).tolist()) for row in indices]
    )
    return indices, np.sqrt(np.exp(log_multinomial))


def polynomial_features(
    x: ArrayLike, *, degree: int, coef0: float = 1.0, gamma: float | None = None
) -> jax.Array:
    r"""The exact, finite feature map of the polynomial kernel, one feature per monomial.

    With :math:`z = [\sqrt{c_0}, \sqrt{\gamma}\, x] \in \mathbb{R}^{d+1}`, the multinomial theorem
    gives :math:`(\gamma x^\top y + c_0)^p = (z_x^\top z_y)^p = \phi(x)^\top \phi(y)` for

    .. math::
      \phi_\alpha(x) = \sqrt{\binom{p}{\alpha_0, \ldots, \alpha_d}}\; \prod_{i=0}^{d} z_i^{\alpha_i},
      \qquad \alpha \in \mathbb{N}^{d+1},\; |\alpha| = p,

    the symmetric (deduplicated) form of the tensor power :math:`z^{\otimes p}`.

    Cost: :math:`\binom{d+p}{p} \approx d^p / p!` features (``polynomial_feature_dim``), each a
    product of ``degree`` gathered entries; fine for small ``d`` and degree 2-3 (d = 64, p = 3 gives
    47,905 features), and refused past ``MAX_POLYNOMIAL_FEATURES``.

    Args:
      x: (n, d) rows.
      degree: the power :math:`p \ge 1`.
      coef0: :math:`c_0 \ge 0` (a negative offset has no real feature map). When it is zero the
        constant coordinate is dropped and only the :math:`\binom{d+p-1}{p}` degree-p monomials remain.
      gamma: :math:`\gamma > 0`; ``None`` means ``1 / d``.

    Returns:
      (n, polynomial_feature_dim(d, degree=degree, coef0=coef0)) features.
    """
    check_rank(x, 2, "x")
    x = as_float(x)
    check_positive_int(degree, "degree")
    if coef0 < 0:
        raise ConfigError(f"polynomial features need coef0 >= 0; found {coef0!r}")
    gamma = resolve_gamma(gamma, x.shape[1])
    size = polynomial_feature_dim(x.shape[1], degree=degree, coef0=coef0)
    if size > MAX_POLYNOMIAL_FEATURES:
        raise ConfigError(
            f"the explicit degree-{degree} map of {x.shape[1]}-dim inputs has {size} features "
            f"(> {MAX_POLYNOMIAL_FEATURES}); reduce the dimension first or use a random-feature map"
        )
    z = jnp.sqrt(gamma) * x
    if coef0 > 0:
        z = jnp.concatenate([jnp.full((x.shape[0], 1), math.sqrt(coef0), x.dtype), z], axis=1)
    indices, weights = _monomial_table(z.shape[1], degree)
    return jnp.prod(z[:, indices], axis=-1) * jnp.asarray(weights, x.dtype)


class RandomFourierParams(NamedTuple):
    """The fixed random draw of a random-Fourier-feature map.

    Attributes:
      frequencies: (d, D) Gaussian frequencies, each column drawn from N(0, 2 gamma I).
      phases: (D,) offsets drawn from U[0, 2 pi).
    """

    frequencies: jax.Array
    phases: jax.Array


def init_random_fourier(
    key: jax.Array,
    input_dim: int,
    *,
    num_features: int,
    gamma: float | None = None,
    dtype=jnp.float32,
) -> RandomFourierParams:
    r"""Draw the frequencies and phases of a random-Fourier-feature map for the RBF kernel.

    By Bochner's theorem :math:`e^{-\gamma \lVert \delta \rVert^2}` is the characteristic function
    of :math:`\omega \sim \mathcal{N}(0, 2\gamma I)`, so the frequencies are drawn from it.

    Args:
      key: a PRNG key.
      input_dim: d, the dimension of the rows the map will take.
      num_features: D, the number of random features.
      gamma: the RBF kernel's :math:`\gamma`; ``None`` means ``1 / d``.
      dtype: the floating dtype of the draw.

    Returns:
      ``RandomFourierParams`` with (d, D) frequencies and (D,) phases.

    References:
      Rahimi & Recht, `Random Features for Large-Scale Kernel Machines
      <https://papers.nips.cc/paper/3182-random-features-for-large-scale-kernel-machines>`_,
      NeurIPS 2007.
    """
    check_positive_int(input_dim, "input_dim")
    check_positive_int(num_features, "num_features")
    gamma = resolve_gamma(gamma, input_dim)
    frequency_key, phase_key = jax.random.split(key)
    frequencies = jnp.sqrt(2.0 * gamma) * jax.random.normal(
        frequency_key, (input_dim, num_features), dtype
    )
    phases = jax.random.uniform(phase_key, (num_features,), dtype, 0.0, 2.0 * jnp.pi)
    return RandomFourierParams(frequencies, phases)


def random_fourier_features(x: ArrayLike, params: RandomFourierParams) -> jax.Array:
    r"""Random Fourier features, an unbiased approximation of the RBF kernel's feature map.

    .. math::
      z(x) = \sqrt{2 / D}\, \cos(\Omega^\top x + b), \qquad
      \mathbb{E}[z(x)^\top z(y)] = e^{-\gamma \lVert x - y \rVert^2},

    with error :math:`O(1/\sqrt{D})` for each kernel entry.

    Args:
      x: (n, d) rows.
      params: the draw from ``init_random_fourier(key, d, ...)``.

    Returns:
      (n, D) features.

    References:
      Rahimi & Recht, `Random Features for Large-Scale Kernel Machines
      <https://papers.nips.cc/paper/3182-random-features-for-large-scale-kernel-machines>`_,
      NeurIPS 2007.
    """
    check_rank(x, 2, "x")
    x = as_float(x)
    frequencies, phases = params
    if frequencies.shape[0] != x.shape[1]:
        raise DataError(
            "the random Fourier draw was made for another input dimension",
            field="x",
            found=f"shape {x.shape}",
            expected=f"(n, {frequencies.shape[0]})",
        )
    num_features = frequencies.shape[1]
    return jnp.sqrt(2.0 / num_features) * jnp.cos(x @ frequencies + phases)


def direct_sum_features(
    features: Sequence[ArrayLike], weights: ArrayLike | None = None
) -> jax.Array:
    r"""Concatenate per-modality feature maps into the feature map of the combined kernel.

    .. math::
      \Phi(x) = \big[\sqrt{w_1}\,\phi_1(x_1), \ldots, \sqrt{w_M}\,\phi_M(x_M)\big], \qquad
      \Phi(x)^\top \Phi(y) = \sum_m w_m\, \phi_m(x_m)^\top \phi_m(y_m).

    Args:
      features: M arrays (n, F_m), each the feature map of one modality.
      weights: (M,) non-negative modality weights; ``None`` means all ones.

    Returns:
      (n, sum_m F_m) features.

    Raises:
      DataError: ``features`` not a non-empty list of (n, F_m) arrays; ``weights`` not of shape
        (M,), or (concrete weights only: traced ones cannot be inspected) a negative weight,
        whose square root would be NaN.
    """
    check_modalities(features, "features")
    if weights is None:
        return jnp.concatenate([as_float(f) for f in features], axis=1)
    weights = jnp.asarray(weights)
    if weights.shape != (len(features),):
        raise DataError(
            "need one weight per modality",
            field="weights",
            found=f"shape {weights.shape}",
            expected=f"({len(features)},)",
        )
    check_nonnegative(weights, "weights")
    scale = jnp.sqrt(weights)
    return jnp.concatenate([scale[m] * as_float(f) for m, f in enumerate(features)], axis=1)
