r"""Neural fusion recommenders at the three fusion levels, on one matrix-factorization base.

Notation: :math:`p_u, e_i \in \mathbb{R}^d` user and item ID embeddings; :math:`t_i \in \{0, 1\}`
is 1 when item :math:`i` has a train interaction; :math:`r_{im} \in \{0, 1\}` is 1 when it has
modality :math:`m`; :math:`x_{im}` its (standardized) features and
:math:`v_{im} = f_m(x_{im}) \in \mathbb{R}^d` their per-modality encoder (a
:class:`jaxrec.fusion.MLP`, linear unless ``encoder_hidden``). The models (``fusion``):

- ``"attention"`` (vector level, user-conditioned): :math:`z_u = g(p_u) \in \mathbb{R}^M`
  (a linear map, or an MLP with ``attention_hidden``), a softmax over the item's PRESENT
  modalities and an item vector that is the ID embedding plus the attended modality vectors:

  .. math::
    \alpha_{um}(i) = \frac{r_{im} e^{z_{um}}}{\sum_l r_{il} e^{z_{ul}}}, \qquad
    \hat y_{ui} = p_u^\top \Big(t_i e_i + \sum_m \alpha_{um}(i)\, v_{im}\Big).

- ``"gated"`` (vector level, sigmoid gates), ``gate_context="user"``: element-wise gates
  :math:`\gamma_{um} = \sigma(G_m p_u + c_m) \in (0, 1)^d` from the user,
  :math:`\hat y_{ui} = p_u^\top (t_i e_i + \sum_m r_{im}\, \gamma_{um} \odot v_{im})`; or
  ``gate_context="item"``: :class:`jaxrec.fusion.GatedFusion` of the raw modalities with the
  item's own ID embedding as context, :math:`h_i = \sum_m r_{im}\, \sigma(G_m [t_i e_i; V_m x_{im}
  + c_m] + b_m) \odot (V_m x_{im} + c_m)`, :math:`\hat y_{ui} = p_u^\top (t_i e_i + h_i)`.

- ``"ensemble"`` (model level): one scorer per modality with its own user table
  :math:`\theta^m`, mixed by :class:`jaxrec.fusion.ModelLevelFusion`'s learned weights
  :math:`\tilde w_m(i)` (``weighting="softmax"``: :math:`r_{im} e^{\omega_m} / \sum_l r_{il}
  e^{\omega_l}`; ``"nonneg"``: :math:`r_{im} \operatorname{softplus}(\omega_m)`), plus the ID
  scorer: :math:`\hat y_{ui} = p_u^\top t_i e_i + \sum_m \tilde w_m(i)\, \theta_u^{m\top} v_{im}`.

- ``"early"`` (feature level, for comparison): :class:`jaxrec.fusion.EarlyFusion` (one MLP over
  the concatenated present modalities and their presence bits), :math:`\hat y_{ui} = p_u^\top
  (t_i e_i + \operatorname{MLP}([r_{i1} x_{i1}, \ldots, r_{i1}, \ldots]))`.

**Factorization.** ``encode`` must return vectors whose dot products are the scores, but the
attention weights depend on the user AND, through the softmax's denominator over present
modalities, on which modalities the item has. They depend on the item only through its
presence pattern :math:`\pi(i) = (r_{i1}, \ldots, r_{iM})`, of which a dataset has few (one
when every item has every modality). With :math:`\alpha^\pi_{um}` the weights for pattern
:math:`\pi`, the score is exactly

.. math::
  \hat y_{ui} = \langle p_u, t_i e_i \rangle + \sum_{\pi} \sum_{m \in \pi}
      \langle \alpha^\pi_{um}\, a_u^m,\; [\pi(i) = \pi]\, v_{im} \rangle,

one block per (pattern, present modality): users
:math:`[p_u, (\alpha^\pi_{um} a^m_u)_{\pi, m}]`, items :math:`[t_i e_i, ([\pi(i) = \pi]\,
v_{im})_{\pi, m}]`, with :math:`a_u^m = p_u` for attention and :math:`a_u^m = \theta^m_u`,
:math:`\alpha^\pi_{um} = \tilde w_m(\pi)` for the ensemble (the pattern weights are read off
the mixer itself: its output for unit score in modality :math:`m` and zero elsewhere). Width:
:math:`d (1 + \sum_\pi |\pi|)`, :math:`d(1 + M)` when every item has every modality; an item
with no modality gets zeros in every block. User gates need no pattern blocks
(:math:`[p_u, (\gamma_{um} \odot p_u)_m]` against :math:`[t_i e_i, (r_{im} v_{im})_m]`), and
the item-side forms (item-context gates, early) give one item vector of width :math:`d`.
Training scores are computed directly (``score_pairs``); the tests check that they equal the
``encode`` dot products.

**Loss.** BPR over (user, positive, negative) pairs plus MMRec's ``EmbLoss``
(:func:`jaxrec.losses.l2_mean_norm`: Frobenius norms, not squared, over the pair count) of the
vectors whose dot products are the pair's scores — the user's :math:`p_u` (with
:math:`\theta_u^m` for the ensemble) and the positive's and negative's full item vectors
(ID plus fused content, e.g. :math:`t_i e_i + \sum_m \alpha_{um}(i) v_{im}`), as MMRec's VBPR
regularizes its projected features with its ID factors. ``loss_weights: {reg: λ}`` is MMRec's
``reg_weight``. Regularizing only the ID embeddings leaves the encoders free to overfit
(measured on lfm2k: ``docs/models/fusion_mf.md``).

**Cold-start items.** Items without a train interaction (:math:`t_i = 0`) are scored from their
features alone: their ID embedding is masked to zero in ``encode``, in the loss and in the
item-context gates, and they are never used as training negatives (a new item does not exist
at training time), so their randomly initialized :math:`e_i` never adds noise. With
``id_dropout`` :math:`\rho > 0`, each trained item's :math:`t_i` is also set to 0 with
probability :math:`\rho` in each training step (DropoutNet, Volkovs et al., NeurIPS 2017), so
that the content part learns to score items on its own, as it must for new items.

References:
  Chen et al., `Attentive Collaborative Filtering: Multimedia Recommendation with Item- and
  Component-Level Attention <https://doi.org/10.1145/3077136.3080797>`_, SIGIR 2017;
  Arevalo et al., `Gated Multimodal Units for Information Fusion
  <https://arxiv.org/abs/1702.01992>`_, ICLR workshop 2017;
  Wei et al., MMGCN, ACM Multimedia 2019 (per-modality scorers, summed);
  Baltrušaitis, Ahuja and Morency, `Multimodal Machine Learning: A Survey and Taxonomy
  <https://arxiv.org/abs/1705.09406>`_, TPAMI 2019 (fusion levels).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from jaxrec import fusion as jfusion
from jaxrec.errors import ConfigError
from jaxrec.models._modality_inputs import (
    batch_items,
    check_id_dropout,
    check_widths,
    presence_patterns,
    sequence_inputs,
    with_id_dropout,
)
from jaxrec.models._init import xavier_normal
from jaxrec.models._registry import Built, register
from jaxrec.models._common import (bpr_emb_loss, check_choice, check_positive_int, masked_rows, rows_or_all,
                                   trained_item_mask)

FUSIONS = ("attention", "gated", "ensemble", "early")
SEQUENCE_POOLINGS = ("mean", "attention")
GATE_CONTEXTS = ("user", "item")
WEIGHTINGS = ("softmax", "nonneg")


# ---- the model ---------------------------------------------------------------------------


class FusionMF(nn.Module):
    """ID embeddings plus fused modality vectors (see the module docstring).

    ``ctx``: ``{"modalities": [M arrays (n_items, d_m)], "masks": [M bool (n_items,)],
    "trained": bool (n_items,), "pattern": int32 (n_items,), "lengths": {str(m): int32 (n_items,)}}``;
    a sequence modality m (video frames) is (n_items, T, d_m) with its valid lengths, pooled to one
    (n_items, d_m) row by :class:`jaxrec.fusion.MaskedMeanPooling` or
    :class:`jaxrec.fusion.AttentionPooling` (``sequence_pooling``) before the fusion.

    Attributes:
      n_users, n_items: table sizes.
      modality_dims: d_m per modality.
      patterns: the items' distinct non-empty presence patterns (:func:`presence_patterns`).
      fusion: ``"attention"``, ``"gated"``, ``"ensemble"`` or ``"early"``.
      embedding_size: d.
      encoder_hidden: hidden widths of the per-modality encoders (and of the early MLP).
      attention_hidden: hidden widths of the attention network :math:`g`.
      gate_context: ``"user"`` or ``"item"`` (gated only).
      weighting: the ensemble's ``"softmax"`` or ``"nonneg"`` modality weights.
      id_dropout: probability of dropping an item's ID embedding in a training step.
      sequence_modalities: the indices of the sequence modalities.
      sequence_pooling: ``"mean"`` or ``"attention"`` (learned, one query per modality).
    """

    n_users: int
    n_items: int
    modality_dims: tuple[int, ...]
    patterns: tuple[tuple[bool, ...], ...]
    fusion: str = "attention"
    embedding_size: int = 64
    encoder_hidden: tuple[int, ...] = ()
    attention_hidden: tuple[int, ...] = ()
    gate_context: str = "user"
    weighting: str = "softmax"
    id_dropout: float = 0.0
    sequence_modalities: tuple[int, ...] = ()
    sequence_pooling: str = "mean"

    @property
    def n_modalities(self) -> int:
        return len(self.modality_dims)

    @property
    def _item_side(self) -> bool:
        """Whether the fused vector depends on the item only (one d-wide item vector)."""
        return self.fusion == "early" or (self.fusion == "gated" and self.gate_context == "item")

    def setup(self):
        d, M = self.embedding_size, self.n_modalities
        self.user_embedding = self.param("user_embedding", xavier_normal, (self.n_users, d))
        self.item_embedding = self.param("item_embedding", xavier_normal, (self.n_items, d))
        widths = (*self.encoder_hidden, d)
        pooling = jfusion.AttentionPooling if self.sequence_pooling == "attention" else jfusion.MaskedMeanPooling
        self.poolers = [pooling() for _ in self.sequence_modalities]
        if self.fusion == "early":
            self.early = jfusion.EarlyFusion(out_dim=d, hidden_dims=self.encoder_hidden)
        elif self.fusion == "gated" and self.gate_context == "item":
            self.item_gates = jfusion.GatedFusion(dim=d)
        else:
            self.encoders = [jfusion.MLP(widths) for _ in range(M)]
        if self.fusion == "attention":
            self.attention = jfusion.MLP((*self.attention_hidden, M), activation=jnp.tanh)
        elif self.fusion == "gated" and self.gate_context == "user":
            self.user_gates = [nn.Dense(d) for _ in range(M)]
        elif self.fusion == "ensemble":
            self.modality_users = [self.param(f"user_embedding_{m}", xavier_normal, (self.n_users, d))
                                   for m in range(M)]
            self.mixer = jfusion.ModelLevelFusion(weighting=self.weighting)

    # -- item side ------------------------------------------------------------------------

    def _id_vectors(self, ctx, items):
        return masked_rows(self.item_embedding, ctx["trained"], items)

    def _content(self, ctx, rows):
        """Item content of ``rows`` (R,): (R, M, d) modality vectors (zero where absent), or
        (R, d) fused vectors for the item-side fusions."""
        masks = [jnp.asarray(mask)[rows] for mask in ctx["masks"]]
        # Absent rows may hold any placeholder; zeroed before the encoders, not even a NaN
        # there reaches the outputs or the encoders' gradients.
        xs = []
        for m, (x, mask) in enumerate(zip(ctx["modalities"], masks)):
            x = jnp.asarray(x)[rows]
            x = jnp.where(mask.reshape(mask.shape + (1,) * (x.ndim - 1)), x, 0.0)
            if m in self.sequence_modalities:  # frames -> one row per item, padding ignored
                pooler = self.poolers[self.sequence_modalities.index(m)]
                x = pooler(x, jnp.where(mask, jnp.asarray(ctx["lengths"][str(m)])[rows], 0))
            xs.append(x)
        if self.fusion == "early":
            return self.early(xs, masks)
        if self._item_side:
            return self.item_gates(xs, masks, context=self._id_vectors(ctx, rows))
        return jnp.stack([jnp.where(mask[:, None], encoder(x), 0.0)
                          for encoder, x, mask in zip(self.encoders, xs, masks)], axis=1)

    def _presence(self, ctx, items):
        return jnp.stack([jnp.asarray(mask)[items] for mask in ctx["masks"]], axis=-1)

    # -- user side ------------------------------------------------------------------------

    def attention_logits(self, user_vectors):
        """(..., M) attention logits :math:`z_u` of user vectors (..., d)."""
        return self.attention(user_vectors)

    def attention_weights(self, ctx, users, items):
        """(B, K, M) weights :math:`\\alpha_{um}(i)` of users (B,) over items (B, K)."""
        logits = self.attention_logits(self.user_embedding[users])
        present = self._presence(ctx, items)
        # masked_softmax broadcasts the mask to the logits, not both ways.
        return jfusion.masked_softmax(jnp.broadcast_to(logits[:, None, :], present.shape), present, axis=-1)

    def _gates(self, user_vectors):
        return jnp.stack([jax.nn.sigmoid(gate(user_vectors)) for gate in self.user_gates], axis=-2)

    # -- scores ---------------------------------------------------------------------------

    def mixer_weights(self, presence):
        """(R, M) ensemble weights :math:`\\tilde w_m` for (R, M) bool presence rows.

        The mixer is linear in the per-modality scores, so its output for score 1 in modality
        m and 0 elsewhere is the weight of m: one (R * M)-row call reads them all off.
        """
        R, M = presence.shape
        unit = jnp.tile(jnp.eye(M), (R, 1))  # row r * M + m is e_m
        present = jnp.repeat(presence, M, axis=0)
        weights = self.mixer([unit[:, m:m + 1] for m in range(M)], [jnp.ones((R * M, 1))] * M,
                             [present[:, m] for m in range(M)])
        return weights.reshape(R, M)

    def pair_vectors(self, ctx, users, items):
        """``(user (B, D), item (B, K, D))`` vectors whose dot products are the scores of users
        (B,) for items (B, K), computed directly (not through ``encode``): attention and user
        gates give user-specific item vectors :math:`t_i e_i + \\sum_m c_{um}(i) v_{im}`; the
        ensemble's are :math:`[p_u, \\theta^1_u, \\ldots]` and :math:`[t_i e_i, \\tilde w_1(i)
        v_{i1}, \\ldots]`."""
        p = self.user_embedding[users]
        id_vectors = self._id_vectors(ctx, items)
        content = rows_or_all(lambda rows: self._content(ctx, rows), self.n_items, items)[0]
        if self._item_side:
            return p, id_vectors + content
        if self.fusion == "attention":
            return p, id_vectors + jnp.einsum("bkm,bkmd->bkd", self.attention_weights(ctx, users, items), content)
        if self.fusion == "gated":  # absent modalities' v are zero
            return p, id_vectors + jnp.einsum("bmd,bkmd->bkd", self._gates(p), content)
        B, K = items.shape
        weights = self.mixer_weights(self._presence(ctx, items).reshape(B * K, -1)).reshape(B, K, -1)
        theta = [table[users] for table in self.modality_users]
        item_blocks = [content[:, :, m] * weights[..., m:m + 1] for m in range(self.n_modalities)]
        return jnp.concatenate([p, *theta], axis=-1), jnp.concatenate([id_vectors, *item_blocks], axis=-1)

    def score_pairs(self, ctx, users, items):
        """Scores (B, K) of users (B,) for items (B, K) (:meth:`pair_vectors`' dot products)."""
        user_vectors, item_vectors = self.pair_vectors(ctx, users, items)
        return jnp.einsum("bd,bkd->bk", user_vectors, item_vectors)

    def _pattern_coefficients(self):
        """(P, n_users, M) coefficients of each pattern's blocks and the users' (M, n_users, d)
        per-modality vectors :math:`a^m_u`."""
        patterns = jnp.asarray(self.patterns, bool)  # (P, M)
        if self.fusion == "attention":
            logits = self.attention_logits(self.user_embedding)  # (n_users, M)
            P = patterns.shape[0]
            coefficients = jfusion.masked_softmax(
                jnp.broadcast_to(logits[None], (P, *logits.shape)), patterns[:, None, :], axis=-1)
            return coefficients, [self.user_embedding] * self.n_modalities
        P, M = patterns.shape
        weights = self.mixer_weights(patterns)
        coefficients = jnp.broadcast_to(weights[:, None, :], (P, self.n_users, M))
        return coefficients, self.modality_users

    def encode(self, ctx, train: bool = False):
        """``(user_emb, item_emb)`` whose dot products are :meth:`score_pairs` (module docstring)."""
        del train
        items = jnp.arange(self.n_items)
        user_blocks, item_blocks = [self.user_embedding], [self._id_vectors(ctx, items)]
        content = self._content(ctx, items)
        if self._item_side:
            return self.user_embedding, item_blocks[0] + content
        if self.fusion == "gated":
            gates = self._gates(self.user_embedding)  # (n_users, M, d)
            for m in range(self.n_modalities):
                user_blocks.append(gates[:, m] * self.user_embedding)
                item_blocks.append(content[:, m])
            return jnp.concatenate(user_blocks, axis=1), jnp.concatenate(item_blocks, axis=1)
        coefficients, user_parts = self._pattern_coefficients()
        for k, pattern in enumerate(self.patterns):
            in_pattern = (jnp.asarray(ctx["pattern"]) == k)[:, None]
            for m in range(self.n_modalities):
                if pattern[m]:
                    user_blocks.append(coefficients[k, :, m:m + 1] * user_parts[m])
                    item_blocks.append(jnp.where(in_pattern, content[:, m], 0.0))
        return jnp.concatenate(user_blocks, axis=1), jnp.concatenate(item_blocks, axis=1)

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg"}`` for a batch of ``users`` (B,), ``pos_items`` (B,), ``neg_items``
        (B, n_neg) or (B,) and optional ``weights`` (B,) (0 = padding row)."""
        items, pairs = batch_items(batch, ctx["trained"])
        id_ctx = with_id_dropout(self, ctx, self.id_dropout, train)
        user_vectors, item_vectors = self.pair_vectors(id_ctx, batch["users"], items)
        scores = jnp.einsum("bd,bkd->bk", user_vectors, item_vectors)
        return bpr_emb_loss(user_vectors, item_vectors[:, 0], item_vectors[:, 1:], pairs, batch["weights"],
                            per="pair", scores=(scores[:, 0], scores[:, 1:]))


# ---- the builder -------------------------------------------------------------------------


@register("ensemble", fusion="ensemble", traced_args={"id_dropout": 0.0})
@register("gated", fusion="gated", traced_args={"id_dropout": 0.0})
@register("attention", fusion="attention", traced_args={"id_dropout": 0.0})
@register("fusion_mf", traced_args={"id_dropout": 0.0})
def build(dataset, *, fusion: str = "attention", embedding_size: int = 64, modalities: list[str] | None = None,
          feature_scaling: str = "standardize", encoder_hidden: list[int] | None = None,
          attention_hidden: list[int] | None = None, gate_context: str | None = None,
          weighting: str | None = None, id_dropout: float = 0.0, sequence_pooling: str = "mean") -> Built:
    """A neural fusion model at any level, chosen by ``fusion``; the names ``attention``,
    ``gated`` and ``ensemble`` are this builder with that ``fusion`` fixed.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with item modalities.
      fusion: ``"attention"``, ``"gated"``, ``"ensemble"`` or ``"early"``.
      embedding_size: d (64 as MMRec).
      modalities: the modalities to fuse, in order (default: all).
      feature_scaling: ``"standardize"`` (default, fitted on train items), ``"l2"`` or ``"none"``.
      encoder_hidden: hidden widths of each modality's encoder :math:`f_m` (default none: linear).
      attention_hidden: hidden widths (tanh) of the attention network (``attention`` only;
        default none: linear).
      gate_context: what the gates read, ``"user"`` (default) or ``"item"`` (``gated`` only).
      weighting: the ensemble's modality weights, ``"softmax"`` (default) or ``"nonneg"``
        (``ensemble`` only).
      id_dropout: probability of dropping an item's ID embedding in a training step (default 0),
        so that the content part learns to score items alone (for cold-start items).
      sequence_pooling: how a sequence modality's steps (video frames) become one row per item:
        ``"mean"`` (default, masked mean) or ``"attention"`` (learned attention pooling).

    Returns:
      :class:`~jaxrec.models.Built`, default weights ``{bpr: 1, reg: 1}`` (MMRec's BPR
      ``reg_weight`` on lfm2k).
    """
    model = fusion if fusion in ("attention", "gated", "ensemble") else "fusion_mf"
    check_choice(fusion, "fusion", FUSIONS, model)
    for argument, value, mode in (("attention_hidden", attention_hidden, "attention"),
                                  ("gate_context", gate_context, "gated"), ("weighting", weighting, "ensemble")):
        if value is not None and fusion != mode:
            raise ConfigError(f"model {model} has no argument {argument!r} (it applies to fusion {mode!r}); "
                              f"found {value!r}")
    gate_context = check_choice("user" if gate_context is None else gate_context, "gate_context", GATE_CONTEXTS,
                                model)
    weighting = check_choice("softmax" if weighting is None else weighting, "weighting", WEIGHTINGS, model)
    check_choice(sequence_pooling, "sequence_pooling", SEQUENCE_POOLINGS, model)
    check_positive_int(embedding_size, "embedding_size", model)
    features, masks, _, lengths = sequence_inputs(dataset, modalities, scaling=feature_scaling, model=model)
    patterns, pattern_index = presence_patterns(masks)
    module = FusionMF(n_users=dataset.n_users, n_items=dataset.n_items,
                      modality_dims=tuple(x.shape[-1] for x in features), patterns=patterns, fusion=fusion,
                      embedding_size=embedding_size,
                      encoder_hidden=check_widths(encoder_hidden, "encoder_hidden", model),
                      attention_hidden=check_widths(attention_hidden, "attention_hidden", model),
                      gate_context=gate_context, weighting=weighting,
                      id_dropout=check_id_dropout(id_dropout, model),
                      sequence_modalities=tuple(sorted(int(m) for m in lengths)), sequence_pooling=sequence_pooling)
    ctx = {"modalities": features, "masks": masks, "trained": trained_item_mask(dataset), "pattern": pattern_index,
           "lengths": lengths}
    return Built(module=module, ctx=ctx, default_loss_weights={"bpr": 1.0, "reg": 1.0})
