"""Feature-level (early) and vector-level (late) fusion of item modalities.

Fusion levels, as the multimodal-recommendation literature uses them:

* feature-level: raw modality features are joined before any encoder (``EarlyFusion``);
* vector-level: each modality is encoded on its own and the vectors are combined
  (``LateFusion``, ``AttentionFusion``, ``GatedFusion``);
* model-level: each modality has its own scorer and the scores are combined (``ModelLevelFusion``).

Every module takes per-modality row masks (True = present); absent modalities never contribute,
and an item with none gets a zero (or learned default) vector, never NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec.errors import ConfigError
from jaxrec.fusion._layers import MLP, fill_empty_rows, present_inputs
from jaxrec._checks import check_positive_int

LATE_FUSION_COMBINES = ("concat", "sum", "mean")


class EarlyFusion(nn.Module):
    r"""Feature-level fusion: concatenate the raw modalities, then encode with one MLP.

    .. math::
      h = \operatorname{MLP}\big([r_1 x_1, \ldots, r_M x_M, r_1, \ldots, r_M]\big)

    Absent modalities are zeroed and the row-mask indicators :math:`r_m \in \{0, 1\}` are appended,
    so the encoder can tell "absent" from "present and zero". An item with no modality gets
    :math:`\operatorname{MLP}(0)`, a learned default (the biases).

    Attributes:
      out_dim: the output width.
      hidden_dims: widths of the hidden layers (may be empty: one linear layer).
      activation: the nonlinearity between layers.

    References:
      Baltrušaitis, Ahuja & Morency, `Multimodal Machine Learning: A Survey and Taxonomy
      <https://arxiv.org/abs/1705.09406>`_, TPAMI 2019 (early/late fusion).
    """

    out_dim: int
    hidden_dims: Sequence[int] = ()
    activation: Callable[[jax.Array], jax.Array] = nn.relu

    @nn.compact
    def __call__(
        self, modalities: Sequence[ArrayLike], masks: Sequence[ArrayLike] | None = None
    ) -> jax.Array:
        """Fuse M modality arrays (n, d_m) with (n,) bool masks into (n, out_dim)."""
        check_positive_int(self.out_dim, "out_dim")
        modalities, masks = present_inputs(modalities, masks)
        indicators = jnp.stack(masks, axis=1).astype(modalities[0].dtype)
        joined = jnp.concatenate([*modalities, indicators], axis=1)
        return MLP((*self.hidden_dims, self.out_dim), self.activation, name="encoder")(joined)


class LateFusion(nn.Module):
    r"""Vector-level fusion: encode each modality separately, then combine the present vectors.

    .. math::
      v_m = f_m(x_m), \qquad
      h = \begin{cases}
        [r_1 v_1, \ldots, r_M v_M] & \text{concat} \\
        \sum_m r_m v_m & \text{sum} \\
        \sum_m r_m v_m \,/\, \sum_m r_m & \text{mean (over present modalities)}
      \end{cases}

    An item with no modality gets zeros, or the learned ``missing_default`` vector when
    ``learned_default``.

    Attributes:
      out_dim: the width of each modality's vector.
      hidden_dims: hidden widths of each per-modality MLP encoder.
      combine: ``"concat"`` (output M * out_dim wide), ``"sum"`` or ``"mean"``.
      activation: the nonlinearity inside the encoders.
      learned_default: whether items with no modality get a learned vector instead of zeros.
    """

    out_dim: int
    hidden_dims: Sequence[int] = ()
    combine: str = "mean"
    activation: Callable[[jax.Array], jax.Array] = nn.relu
    learned_default: bool = False

    @nn.compact
    def __call__(
        self, modalities: Sequence[ArrayLike], masks: Sequence[ArrayLike] | None = None
    ) -> jax.Array:
        """Fuse M modality arrays (n, d_m) with (n,) bool masks into (n, out_dim) (or M * out_dim)."""
        check_positive_int(self.out_dim, "out_dim")
        if self.combine not in LATE_FUSION_COMBINES:
            raise ConfigError(
                f"unknown combine {self.combine!r}; expected one of {LATE_FUSION_COMBINES}"
            )
        modalities, masks = present_inputs(modalities, masks)
        widths = (*self.hidden_dims, self.out_dim)
        vectors = [
            jnp.where(mask[:, None], MLP(widths, self.activation, name=f"encoder_{m}")(x), 0.0)
            for m, (x, mask) in enumerate(zip(modalities, masks))
        ]
        present = jnp.stack(masks, axis=1)
        if self.combine == "concat":
            fused = jnp.concatenate(vectors, axis=1)
        else:
            fused = sum(vectors)
            if self.combine == "mean":
                count = jnp.sum(present, axis=1, keepdims=True).astype(fused.dtype)
                fused = fused / jnp.maximum(count, 1.0)
        return fill_empty_rows(self, fused, jnp.any(present, axis=1), self.learned_default)
