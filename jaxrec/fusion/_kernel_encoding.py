"""Kernel encoding: the modalities' (weighted) kernel feature spaces as one item embedding."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec.errors import ConfigError, DataError
from jaxrec.fusion import _feature_maps, _kernels
from jaxrec._checks import as_float, canonical_masks, check_modalities
from jaxrec._matmul import matmul

KERNEL_KINDS = ("linear", "polynomial", "rbf", "cosine")

# Random Fourier draws are fixed after init and must not be touched by an optimizer (weight decay
# would move them even with zero gradient), so they live outside "params".
CONSTANTS = "constants"


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """One modality's kernel and the options of its feature map.

    Attributes:
      kind: ``"linear"``, ``"polynomial"``, ``"rbf"`` or ``"cosine"``.
      degree: polynomial degree (``"polynomial"`` only).
      coef0: polynomial offset, non-negative (``"polynomial"`` only).
      gamma: polynomial scale or RBF inverse width; ``None`` means ``1 / d``.
      num_features: the number D of random Fourier features (``"rbf"`` only).
    """

    kind: str
    degree: int = 2
    coef0: float = 1.0
    gamma: float | None = None
    num_features: int = 512

    def __post_init__(self):
        if self.kind not in KERNEL_KINDS:
            raise ConfigError(f"unknown kernel kind {self.kind!r}; expected one of {KERNEL_KINDS}")
        if self.kind == "polynomial" and (not isinstance(self.degree, int) or self.degree < 1):
            raise ConfigError(f"polynomial degree must be a positive integer; found {self.degree!r}")
        if self.kind == "polynomial" and self.coef0 < 0:
            raise ConfigError(f"polynomial coef0 must be >= 0 for a feature map; found {self.coef0!r}")
        if self.kind == "rbf" and (not isinstance(self.num_features, int) or self.num_features < 1):
            raise ConfigError(f"num_features must be a positive integer; found {self.num_features!r}")
        if self.gamma is not None and not self.gamma > 0:
            raise ConfigError(f"gamma must be positive; found {self.gamma!r}")

    @property
    def exact(self) -> bool:
        """Whether the feature map reproduces the kernel exactly (all but the RBF's)."""
        return self.kind != "rbf"

    def kernel(self, x: ArrayLike, y: ArrayLike) -> jax.Array:
        """The exact kernel ``k(x, y)``, (n, d) x (p, d) -> (n, p)."""
        if self.kind == "linear":
            return _kernels.linear_kernel(x, y)
        if self.kind == "polynomial":
            return _kernels.polynomial_kernel(
                x, y, degree=self.degree, coef0=self.coef0, gamma=self.gamma
            )
        if self.kind == "rbf":
            return _kernels.rbf_kernel(x, y, gamma=self.gamma)
        return _kernels.cosine_kernel(x, y)

    def feature_dim(self, input_dim: int) -> int:
        """The width of this kernel's feature map for ``input_dim``-dimensional rows."""
        if self.kind == "polynomial":
            return _feature_maps.polynomial_feature_dim(
                input_dim, degree=self.degree, coef0=self.coef0
            )
        if self.kind == "rbf":
            return self.num_features
        return input_dim


def _inverse_softplus(y: float) -> float:
    return math.log(math.expm1(y))


class KernelEncoding(nn.Module):
    r"""Encode items by the direct sum of their modalities' kernel feature maps.

    .. math::
      \Phi(x) = \big[\sqrt{w_1}\,[r_1]\,\phi_1(x_1), \ldots, \sqrt{w_M}\,[r_M]\,\phi_M(x_M)\big],
      \qquad w_m = \operatorname{softplus}(\theta_m) > 0,

    where :math:`r_m` is the item's row mask for modality m, so that

    .. math::
      \Phi(x)^\top \Phi(y) = \sum_m w_m\, [r_m(x) \wedge r_m(y)]\; k_m(x_m, y_m),

    the weighted combined kernel over the modalities both items have (exact for linear, polynomial
    and cosine kernels, a random-Fourier approximation for RBF). With ``out_dim`` set, a learned
    linear map :math:`A \Phi(x)` follows, and inner products become :math:`\Phi^\top A^\top A \Phi`.
    Fusion level: feature-level (kernel-level); an item with no modality encodes to zero (or the
    projection's bias when ``use_bias``).

    The random Fourier frequencies are drawn once from the ``"params"`` PRNG stream at ``init`` and
    kept in the non-trainable ``"constants"`` collection: pass the whole variables dict from
    ``init`` to ``apply`` and give only ``variables["params"]`` to the optimizer.

    Attributes:
      specs: one ``KernelSpec`` per modality.
      out_dim: width of the learned projection; ``None`` returns :math:`\Phi(x)` itself.
      init_weights: initial modality weights :math:`w_m` (positive); ``None`` means all ones.
      use_bias: whether the projection has a bias (the default vector of an all-missing item).

    References:
      Gönen & Alpaydın, `Multiple Kernel Learning Algorithms
      <https://jmlr.org/papers/v12/gonen11a.html>`_, JMLR 2011;
      Rahimi & Recht, Random Features for Large-Scale Kernel Machines, NeurIPS 2007.
    """

    specs: Sequence[KernelSpec]
    out_dim: int | None = None
    init_weights: Sequence[float] | None = None
    use_bias: bool = False

    @nn.compact
    def __call__(
        self, modalities: Sequence[ArrayLike], masks: Sequence[ArrayLike] | None = None
    ) -> jax.Array:
        """Encode a batch of rows.

        Args:
          modalities: M arrays (n, d_m), one per ``spec``.
          masks: M bool arrays (n,), True where the row has that modality; ``None`` means all present.

        Returns:
          (n, out_dim) embeddings, or (n, sum_m F_m) kernel features when ``out_dim`` is None.
        """
        n = check_modalities(modalities)
        if len(modalities) != len(self.specs):
            raise DataError(
                "need one modality array per kernel spec",
                field="modalities",
                found=f"{len(modalities)} arrays",
                expected=f"{len(self.specs)}",
            )
        masks = canonical_masks(masks, len(self.specs), n)
        init_weights = self.init_weights or [1.0] * len(self.specs)
        if len(init_weights) != len(self.specs) or min(init_weights) <= 0:
            raise ConfigError(
                f"init_weights must be {len(self.specs)} positive numbers; found {init_weights!r}"
            )
        raw_weights = self.param(
            "raw_weights",
            lambda _, values: jnp.asarray([_inverse_softplus(v) for v in values], jnp.float32),
            tuple(init_weights),
        )
        weights = jax.nn.softplus(raw_weights)

        features = []
        for m, (spec, x, mask) in enumerate(zip(self.specs, modalities, masks)):
            # Missing rows may hold any placeholder (NaN included); they must not reach the map.
            x = jnp.where(mask[:, None], as_float(x), 0.0)
            phi = self._feature_map(m, spec, x)
            features.append(jnp.where(mask[:, None], phi, 0.0))
        if self.out_dim is None:
            return _feature_maps.direct_sum_features(features, weights)
        return _DirectSumProjection(self.out_dim, self.use_bias, name="projection")(features, weights)

    def _feature_map(self, m: int, spec: KernelSpec, x: jax.Array) -> jax.Array:
        if spec.kind == "linear":
            return _feature_maps.linear_features(x)
        if spec.kind == "cosine":
            return _feature_maps.cosine_features(x)
        if spec.kind == "polynomial":
            return _feature_maps.polynomial_features(
                x, degree=spec.degree, coef0=spec.coef0, gamma=spec.gamma
            )
        draw = self.variable(
            CONSTANTS,
            f"rff_{m}",
            lambda: _feature_maps.init_random_fourier(
                self.make_rng("params"),
                x.shape[1],
                num_features=spec.num_features,
                gamma=spec.gamma,
                dtype=x.dtype,
            )._asdict(),
        ).value
        return _feature_maps.random_fourier_features(x, _feature_maps.RandomFourierParams(**draw))

    def modality_weights(self) -> jax.Array:
        """The current non-negative modality weights :math:`w_m`, shape (M,).

        Call as ``module.apply(variables, method="modality_weights")``.
        """
        return jax.nn.softplus(self.variables["params"]["raw_weights"])


class _DirectSumProjection(nn.Module):
    r"""``nn.Dense(out_dim)`` of the direct sum :math:`\Phi = [\sqrt{w_1}\,\phi_1, \ldots,
    \sqrt{w_M}\,\phi_M]`, computed by blocks:

    .. math::
      A \Phi + b = \sum_m \sqrt{w_m}\, (\phi_m A_m) + b,

    :math:`A_m` the rows of the kernel that multiply modality m. The parameters are the Dense
    layer's (names ``kernel`` and ``bias``, shapes, LeCun-normal and zero initial values), so
    checkpoints and initial draws are unchanged; the (n, sum_m F_m) concatenation and its
    scaled copy are never formed, nor (for constant feature maps) a gradient in them; the
    kernel's gradient is :func:`jaxrec._matmul.matmul`'s. The same value as the Dense layer on
    the concatenation up to float rounding (the sum over the feature columns is split by
    modality).
    """

    out_dim: int
    use_bias: bool

    @nn.compact
    def __call__(self, features: Sequence[jax.Array], weights: jax.Array) -> jax.Array:
        widths = [f.shape[1] for f in features]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (sum(widths), self.out_dim))
        scale = jnp.sqrt(weights)
        out, start = 0.0, 0
        for m, (f, width) in enumerate(zip(features, widths)):
            out = out + scale[m] * matmul(as_float(f), kernel[start:start + width])
            start += width
        if self.use_bias:
            out = out + self.param("bias", nn.initializers.zeros_init(), (self.out_dim,))
        return out
