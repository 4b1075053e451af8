"""Vector-level fusion with learned, per-item modality weights: attention and gates."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jaxrec.errors import DataError
from jaxrec.fusion._layers import fill_empty_rows, present_inputs
from jaxrec._checks import as_float, check_positive_int, check_rank
from jaxrec.fusion._masked_softmax import masked_softmax


def _check_context(context: ArrayLike, n: int, field: str) -> jax.Array:
    check_rank(context, 2, field)
    if np.shape(context)[0] != n:
        raise DataError(
            "need one context row per item row",
            field=field,
            found=f"shape {np.shape(context)}",
            expected=f"({n}, d)",
        )
    return as_float(context)


class AttentionFusion(nn.Module):
    r"""Vector-level fusion by user-conditioned attention over the present modalities.

    .. math::
      k_m = V_m x_m + c_m, \qquad
      s_m = q_u^\top W k_m, \qquad
      \alpha_m = \frac{r_m e^{s_m}}{\sum_l r_l e^{s_l}}, \qquad
      h = \sum_m \alpha_m k_m,

    where :math:`q_u` is the user (query) vector, :math:`V_m, c_m` project modality m to the
    shared width and :math:`W` is a learned bilinear form. The softmax runs over present
    modalities only; an item with none gets zeros (or the learned default). The weights
    :math:`\alpha` (n, M) are sown into ``"intermediates"`` as ``"attention_weights"``.

    Attributes:
      dim: the shared width of the modality vectors (and of the output).
      learned_default: whether items with no modality get a learned vector instead of zeros.

    References:
      Chen et al., `Attentive Collaborative Filtering: Multimedia Recommendation with Item- and
      Component-Level Attention <https://doi.org/10.1145/3077136.3080797>`_, SIGIR 2017.
    """

    dim: int
    learned_default: bool = False

    @nn.compact
    def __call__(
        self,
        modalities: Sequence[ArrayLike],
        masks: Sequence[ArrayLike] | None = None,
        *,
        query: ArrayLike,
    ) -> jax.Array:
        """Fuse M modality arrays (n, d_m) with (n,) bool masks, for (n, d_q) user queries, into (n, dim)."""
        check_positive_int(self.dim, "dim")
        modalities, masks = present_inputs(modalities, masks)
        query = _check_context(query, modalities[0].shape[0], "query")
        keys = jnp.stack(
            [nn.Dense(self.dim, name=f"project_{m}")(x) for m, x in enumerate(modalities)], axis=1
        )  # (n, M, dim)
        bilinear = self.param(
            "bilinear", nn.initializers.lecun_normal(), (query.shape[1], self.dim)
        )
        scores = jnp.einsum("nq,qk,nmk->nm", query, bilinear, keys)
        present = jnp.stack(masks, axis=1)
        weights = masked_softmax(scores, present, axis=1)
        self.sow("intermediates", "attention_weights", weights)
        fused = jnp.einsum("nm,nmk->nk", weights, keys)
        return fill_empty_rows(self, fused, jnp.any(present, axis=1), self.learned_default)


class GatedFusion(nn.Module):
    r"""Vector-level fusion by element-wise sigmoid gates per modality.

    .. math::
      v_m = V_m x_m + c_m, \qquad
      g_m = \sigma\big(G_m [u; v_m] + b_m\big), \qquad
      h = \sum_m r_m\, g_m \odot v_m,

    where :math:`u` is an optional context vector (the user's or the item's ID embedding); without
    it the gate reads :math:`v_m` alone. Absent modalities (:math:`r_m = 0`) contribute nothing; an
    item with none gets zeros (or the learned default). The gates (n, M, dim) are sown into
    ``"intermediates"`` as ``"gates"``.

    Attributes:
      dim: the shared width of the modality vectors (and of the output).
      learned_default: whether items with no modality get a learned vector instead of zeros.

    References:
      Arevalo et al., `Gated Multimodal Units for Information Fusion
      <https://arxiv.org/abs/1702.01992>`_, ICLR workshop 2017.
    """

    dim: int
    learned_default: bool = False

    @nn.compact
    def __call__(
        self,
        modalities: Sequence[ArrayLike],
        masks: Sequence[ArrayLike] | None = None,
        *,
        context: ArrayLike | None = None,
    ) -> jax.Array:
        """Fuse M modality arrays (n, d_m) with (n,) bool masks, optionally conditioned on (n, d_c)
        context, into (n, dim)."""
        check_positive_int(self.dim, "dim")
        modalities, masks = present_inputs(modalities, masks)
        if context is not None:
            context = _check_context(context, modalities[0].shape[0], "context")
        fused, gates = 0.0, []
        for m, (x, mask) in enumerate(zip(modalities, masks)):
            vector = nn.Dense(self.dim, name=f"project_{m}")(x)
            gate_input = vector if context is None else jnp.concatenate([context, vector], axis=1)
            gate = jax.nn.sigmoid(nn.Dense(self.dim, name=f"gate_{m}")(gate_input))
            gates.append(gate)
            fused = fused + jnp.where(mask[:, None], gate * vector, 0.0)
        self.sow("intermediates", "gates", jnp.stack(gates, axis=1))
        present = jnp.stack(masks, axis=1)
        return fill_empty_rows(self, fused, jnp.any(present, axis=1), self.learned_default)
