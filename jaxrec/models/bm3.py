r"""BM3: bootstrapped latent representations, no negatives (MMRec's ``BM3``).

**Online embeddings.** LightGCN over the TRAIN user-item graph :math:`\hat A = D^{-1/2} A
D^{-1/2}` (users first, no self-loops) with the ID tables :math:`E^{(0)} = [P; Q]`, plus a
skip connection of the item IDs, and a linear projection of each item modality
:math:`m` (MMRec: text ``t`` and "vision" ``v``) to the embedding size:

.. math::
  \bar E = \frac{1}{L+1}\sum_{l=0}^{L} \hat A^{l} E^{(0)} = [\bar P; \bar Q], \qquad
  h_u = \bar p_u, \qquad h_i = \bar q_i + q_i, \qquad
  h^m_i = W_m x^m_i + b_m,

with :math:`L` = ``n_layers`` and :math:`x^m` the item features, a TRAINABLE table that starts
at the raw features (MMRec's ``nn.Embedding.from_pretrained(..., freeze=False)``); an item
lacking a modality starts at a zero row (:func:`jaxrec.models._common.item_side_features`).

**Views.** A shared predictor :math:`f(z) = W_p z + b_p` (d -> d) makes the online views;
the target views are dropout-perturbed copies of the online embeddings (before the
predictor) with the gradient stopped:

.. math::
  \tilde h = \operatorname{sg}(\operatorname{dropout}_p(h)), \qquad
  \operatorname{dropout}_p(h)_{k} = h_k\, \xi_k / (1 - p), \quad \xi_k \sim \mathrm{Bernoulli}(1 - p),

one mask over each whole table (users, items, each modality), drawn afresh every step.

**Loss terms** (unweighted, as the model contract asks) for a batch of pairs
:math:`(u, i)`, with :math:`\mathcal{C}(a, b) = 1 - \overline{\cos(a, b)}` the batch mean
of one minus the row cosine (:func:`jaxrec.losses.cosine_alignment`):

.. math::
  \mathcal{L}_\text{id} &= \mathcal{C}(f(h_u), \tilde h_i) + \mathcal{C}(f(h_i), \tilde h_u), \\
  \mathcal{L}_\text{modality} &= \sum_m \big[\mathcal{C}(f(h^m_i), \tilde h_i)
      + \mathcal{C}(f(h^m_i), \tilde h^m_i)\big], \\
  \mathcal{L}_\text{reg} &= \big(\lVert H_U \rVert_F + \lVert H_I \rVert_F\big) / n_\text{items},

the first modality term aligning each modality with the item's ID view (MMRec's
``loss_t``, ``loss_v``), the second with its own perturbed view (``loss_tv``, ``loss_vt``),
and the regularizer MMRec's ``EmbLoss`` (:func:`jaxrec.losses.l2_mean_norm`: Frobenius norms,
not squared) of the WHOLE online tables :math:`H_U = [h_u]_u`, :math:`H_I = [h_i]_i`
(``self.reg_loss(u_online_ori, i_online_ori)``), divided by the number of rows of the last
one, n_items. MMRec minimizes
:math:`\mathcal{L}_\text{id} + \lambda_\text{reg} \mathcal{L}_\text{reg} +
\lambda_\text{cl} \mathcal{L}_\text{modality}`, so ``loss_weights`` ``{id_alignment: 1,
modality_alignment: cl_weight, reg: reg_weight}`` are MMRec's ``cl_weight`` (2.0) and
``reg_weight``. The batch's ``neg_items`` are ignored (MMRec: ``use_neg_sampling: False``);
rows of weight 0 (padding) are left out of the alignment means.

**Scores** are MMRec's ``full_sort_predict``: the predictor IS applied at inference,
:math:`\hat y_{ui} = f(h_u)^\top f(h_i)`, so :meth:`BM3.encode` returns
:math:`(f(H_U), f(H_I))`.

Initializations are MMRec's: Xavier-uniform ID tables, Xavier-normal predictor and
projection weights (``nn.init.xavier_normal_``), torch's default
:math:`U(\pm 1/\sqrt{\text{fan\_in}})` biases.

Deviations from MMRec: dropout is applied when ``train=True`` only (MMRec's
``F.dropout`` in ``calculate_loss`` is always on; our trainer calls ``loss_terms`` with
``train=True``). The masks are drawn for the whole tables as in MMRec, and only the batch's
rows of them are used: the same distribution, a repeated row and the three terms reading
the item target sharing one mask as in MMRec, and a pmap step equal to a one-device step
(every device draws the same table masks); the random numbers themselves are JAX's, not
torch's. The projections and the predictor are applied to the batch's rows or to the whole
table, whichever is fewer (row-wise maps: the same values up to rounding). Cosine norms
are clamped at 1e-8 each, as current torch's ``cosine_similarity`` does (torch before 1.12
clamped their product). MMRec adds 1e-7 to every degree; here a zero degree maps to 0 (an
empty row stays empty either way).

References:
  Zhou et al., `Bootstrap Latent Representations for Multi-modal
  Recommendation <https://arxiv.org/abs/2207.05969>`_, WWW 2023; MMRec ``src/models/bm3.py``
  and ``src/configs/model/BM3.yaml`` (github.com/enoche/MMRec).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec import losses
from jaxrec.data import graph as jgraph
from jaxrec.models._common import (FeatureTable, check_bool, check_nonnegative_int, check_number, check_positive_int,
                                   chunk_size_for, dense_dot_general, feature_blocks, is_constant, item_side_features,
                                   rows_or_all, train_graph)
from jaxrec.models._init import torch_linear_bias, xavier_normal, xavier_uniform
from jaxrec.models._registry import Built, register


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _threefry2x32(k1, k2, x0, x1):
    """The Threefry-2x32 hash (20 rounds) of the counter pairs ``(x0, x1)`` under the key
    ``(k1, k2)``, written out round by round (uint32 arithmetic, exact)."""
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = x0 ^ ((x1 << np.uint32(r)) | (x1 >> np.uint32(32 - r)))
        x0, x1 = x0 + ks[(i + 1) % 3], x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def bernoulli_table(key: jax.Array, p: float, shape: tuple[int, int]) -> jax.Array:
    """``jax.random.bernoulli(key, p, shape)``, bit for bit, computed faster on CPU.

    With JAX's default PRNG (threefry2x32, ``jax_threefry_partitionable``), entry ``i`` (flat)
    of the draw is ``u_i < p`` with ``u_i = 2^{-23} (b_i >> 9)`` and ``b_i`` the XOR of the two
    words of Threefry-2x32 of the counter pair ``(0, i)`` (``(i >> 32, i mod 2^32)``) under
    the key. JAX lowers the hash on CPU as a 5-step loop, one pass over the table per step;
    written out (:func:`_threefry2x32`) it is one elementwise pass that XLA fuses with the
    comparison (about 2x less CPU on BM3's lfm2k tables). Any other PRNG setting, or a table
    of 2^32 entries or more, goes through ``jax.random.bernoulli`` itself.
    tests/test_model_bm3.py checks the equality against ``jax.random.bernoulli``.
    """
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    impl = str(jax.random.key_impl(key)) if typed else jax.config.jax_default_prng_impl
    size = int(np.prod(shape))
    if impl != "threefry2x32" or not jax.config.jax_threefry_partitionable or size >= 2**32:
        return jax.random.bernoulli(key, p, shape)
    k = jax.random.key_data(key) if typed else key
    counts = jax.lax.iota(jnp.uint32, size).reshape(shape)
    b0, b1 = _threefry2x32(k[0], k[1], jnp.zeros(shape, jnp.uint32), counts)
    floats = jax.lax.bitcast_convert_type(((b0 ^ b1) >> np.uint32(9)) | np.uint32(0x3F800000), jnp.float32) - 1.0
    return floats < p


def table_dropout(key: jax.Array, table_shape: tuple[int, int], rows: jax.Array, values: jax.Array,
                  rate: float) -> jax.Array:
    """Inverted dropout of ``values`` = ``table[rows]`` with a mask drawn for the whole table.

    Args:
      key: PRNG key of the table's mask.
      table_shape: (n, d) of the table the rows come from.
      rows: (B,) row indices into the table.
      values: (B, d) the table's rows ``rows``.
      rate: p in [0, 1); kept entries are scaled by 1 / (1 - p) as torch's ``F.dropout``.

    Returns:
      (B, d): ``values * mask[rows] / (1 - p)``, the mask ``jax.random.bernoulli(key, 1 - p,
      table_shape)`` (:func:`bernoulli_table`).
    """
    if is_constant(rate, 0.0):
        return values
    keep = bernoulli_table(key, 1.0 - rate, table_shape)[rows]
    return jnp.where(keep, values / (1.0 - rate), 0.0)


def cosine_alignments(online, target, pairs, weights: jax.Array, eps: float = 1e-8) -> list[jax.Array]:
    """``[losses.cosine_alignment(online[a], target[b], weights=weights) for a, b in pairs]``, the
    same values computed together: each row of ``online`` (S of (B, d)) and of ``target``
    (stop-gradient) normalized once, the P pairs' row dot products as one reduction, then each
    pair's weighted batch mean (:func:`jaxrec.losses.batch_mean`, so a pmap step still means the
    whole batch). XLA:CPU runs each small (B, d) row reduction as its own thunk; six cosines
    made about twenty of them per step."""
    def unit(x):  # x / max(||x||, eps) per row, as cosine_alignment
        return x / jnp.sqrt(jnp.maximum(jnp.sum(jnp.square(x), axis=-1, keepdims=True), eps * eps))

    online_units = unit(jnp.stack(online))
    target_units = unit(jax.lax.stop_gradient(jnp.stack(target)))
    per_row = 1.0 - jnp.sum(jnp.stack([online_units[a] for a, _ in pairs])
                            * jnp.stack([target_units[b] for _, b in pairs]), axis=-1)  # (P, B)
    return [losses.batch_mean(row, weights) for row in per_row]


class BM3(nn.Module):
    """BM3 (see the module docstring).

    ``ctx``: ``{"graph": FixedGraph, "features": tuple of (n_items, d_m)}`` -- the normalized
    train user-item graph (users first) and the raw item features per modality.

    Attributes:
      n_users, n_items: table sizes.
      feature_dims: width of each modality, in ``ctx["features"]`` order.
      embedding_size: d (also the projections' width, MMRec's ``feat_embed_dim``).
      n_layers: L, user-item propagation layers.
      dropout: p of the target views.
      train_features: whether the raw feature tables are trainable (MMRec: yes).
    """

    n_users: int
    n_items: int
    feature_dims: tuple[int, ...]
    embedding_size: int = 64
    n_layers: int = 1
    dropout: float = 0.5
    train_features: bool = True

    def setup(self):
        d = self.embedding_size
        self.user_embedding = self.param("user_embedding", xavier_uniform, (self.n_users, d))
        self.item_embedding = self.param("item_embedding", xavier_uniform, (self.n_items, d))
        self.predictor = nn.Dense(d, kernel_init=xavier_normal, bias_init=torch_linear_bias(d),
                                  dot_general=dense_dot_general, name="predictor")
        self.projections = [nn.Dense(d, kernel_init=xavier_normal, bias_init=torch_linear_bias(dim), dot_general=dense_dot_general,
                                     name=f"projection_{m}") for m, dim in enumerate(self.feature_dims)]
        if self.train_features:
            self.feature_tables = [FeatureTable(name=f"features_{m}") for m in range(len(self.feature_dims))]

    def online(self, ctx):
        """``(H_U (n_users, d), H_I (n_items, d))``: the layer mean, items plus their ID rows."""
        ego = jnp.concatenate([self.user_embedding, self.item_embedding], axis=0)
        mean, _ = jgraph.lightgcn_propagate(ctx["graph"], ego, self.n_layers, indices_are_sorted=True,
                                            chunk_size=chunk_size_for(self.embedding_size))
        users, items = jnp.split(mean, [self.n_users])
        return users, items + self.item_embedding

    def modality_online(self, ctx, m: int, items):
        """``(h^m, f(h^m))`` of ``items`` (B,), each (B, d): the projection of the (trainable)
        features of the batch's rows and its prediction. Only for batches with fewer rows than
        items; with more, :meth:`_alignments_by_item` maps every item once (:meth:`modality_table`)."""
        projected = self.projections[m](jnp.asarray(self._features(ctx, m))[items])
        return projected, self.predictor(projected)

    def modality_table(self, ctx, m: int):
        """(n_items, d): :math:`h^m` of every item, the projection of the (trainable) features."""
        return self.projections[m](jnp.asarray(self._features(ctx, m)))

    def _features(self, ctx, m: int):
        features = ctx["features"][m]
        return self.feature_tables[m](features) if self.train_features else features

    def _alignments_by_item(self, ctx, user_all, item_all, users, items, weights, user_target, target):
        r"""The six cosine terms of :meth:`loss_terms` (same order) when the batch holds at least as
        many rows as there are items. The four modality terms pair an item's row with rows of
        the same item (its modality prediction with its ID target and with its own modality
        target; a dropout mask is the table's, so a repeated item has one value), so they are
        computed once per item of the tables and weighted by :math:`W_i = \sum_{b: i_b = i} w_b`:
        :math:`\sum_i W_i \ell_i / \sum_b w_b`, the same sum as over the batch's rows without
        the (B, d) gathers and their scatter-add gradients. The two ID terms pair a user with an
        item and stay per row. The masks come from the same keys, drawn in the same order."""
        item_target = target(item_all, slice(None), self.n_items)  # (n_items, d): every item once
        online_rows = [self.predicted_rows(user_all, users), self.predicted_rows(item_all, items)]
        aligned = cosine_alignments(online_rows, [user_target, item_target[items]], [(0, 1), (1, 0)], weights)
        item_weights = jax.ops.segment_sum(jnp.asarray(weights, item_all.dtype), items, num_segments=self.n_items)
        predictions, targets, pairs = [], [item_target], []
        for m in range(len(self.feature_dims)):
            projected = self.modality_table(ctx, m)
            predictions.append(self.predictor(projected))
            targets.append(target(projected, slice(None), self.n_items))
            pairs += [(m, 0), (m, 1 + m)]  # with the item's ID target, with its own target
        return aligned + cosine_alignments(predictions, targets, pairs, item_weights)

    def predicted_rows(self, table, rows):
        """``f(table)[rows]``, (B, d): row-wise, so applied to the gathered rows or to the whole
        table, whichever is fewer."""
        return rows_or_all(lambda r: self.predictor(table[r]), table.shape[0], rows)[0]

    def encode(self, ctx, train: bool = False):
        """``(f(H_U), f(H_I))``: MMRec's ``full_sort_predict`` scores are their dot products."""
        del train
        users, items = self.online(ctx)
        return self.predictor(users), self.predictor(items)

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"id_alignment", "modality_alignment", "reg"}`` for ``users`` (B,), ``pos_items``
        (B,) and optional ``weights`` (B,); ``neg_items`` is not used."""
        users, items, weights = batch["users"], batch["pos_items"], batch["weights"]
        rate = self.dropout if train else 0.0
        user_all, item_all = self.online(ctx)
        user_rows = user_all[users]

        def target(values, rows, table_rows):
            key = None if is_constant(rate, 0.0) else self.make_rng("dropout")
            return jax.lax.stop_gradient(
                table_dropout(key, (table_rows, self.embedding_size), rows, values, rate))

        user_target = target(user_rows, users, self.n_users)
        if items.size >= self.n_items:
            aligned = self._alignments_by_item(ctx, user_all, item_all, users, items, weights, user_target, target)
        else:
            item_target = target(item_all[items], items, self.n_items)
            online_rows = [self.predicted_rows(user_all, users), self.predicted_rows(item_all, items)]
            target_rows = [user_target, item_target]
            pairs = [(0, 1), (1, 0)]  # id_alignment: f(h_u) with the item target, f(h_i) with the user target
            for m in range(len(self.feature_dims)):
                projected, predicted = self.modality_online(ctx, m, items)
                online_rows.append(predicted)
                target_rows.append(target(projected, items, self.n_items))
                pairs += [(2 + m, 1), (2 + m, 2 + m)]  # with the item's ID target, with its own target
            aligned = cosine_alignments(online_rows, target_rows, pairs, weights)
        terms = {"id_alignment": aligned[0] + aligned[1]}
        modality = jnp.zeros(())
        for m in range(len(self.feature_dims)):
            modality = modality + aligned[2 + 2 * m] + aligned[3 + 2 * m]
        terms["modality_alignment"] = modality
        terms["reg"] = losses.l2_mean_norm(user_all, item_all)  # whole tables: not a batch reduction
        return terms


@register("bm3", traced_args={"dropout": 0.0})
def build(dataset, *, embedding_size: int = 64, n_layers: int = 1, dropout: float = 0.5,
          modalities: list[str] | None = None, train_features: bool = True) -> Built:
    """BM3 for ``dataset``.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with item modalities; its TRAIN
        pairs make the user-item graph.
      embedding_size: d (MMRec: 64, also ``feat_embed_dim``).
      n_layers: L >= 0 (MMRec's grid: 1, 2).
      dropout: p in [0, 1) of the target views (MMRec's grid: 0.3, 0.5).
      modalities: the modalities used, in order (default: all of the dataset's; MMRec uses
        text and "vision").
      train_features: the raw feature tables are trainable parameters, as in MMRec.

    Returns:
      :class:`~jaxrec.models.Built` with ``ctx = {"graph", "features"}`` and weights
      ``{id_alignment: 1, modality_alignment: 2, reg: 0.1}`` (MMRec's ``cl_weight`` 2.0 and
      the ``reg_weight`` chosen by validation on lfm2k).
    """
    model = "bm3"
    check_positive_int(embedding_size, "embedding_size", model)
    check_nonnegative_int(n_layers, "n_layers", model)
    dropout = check_number(dropout, "dropout", model, 0.0, 1.0, high_open=True)
    check_bool(train_features, "train_features", model)
    features, dims, _ = item_side_features(dataset, modalities, scaling="none", model=model)
    blocks = tuple(jnp.asarray(block) for block in feature_blocks(features, dims))
    module = BM3(n_users=dataset.n_users, n_items=dataset.n_items, feature_dims=dims,
                 embedding_size=embedding_size, n_layers=n_layers, dropout=float(dropout),
                 train_features=train_features)
    return Built(module=module, ctx={"graph": train_graph(dataset, form="fixed"), "features": blocks},
                 default_loss_weights={"id_alignment": 1.0, "modality_alignment": 2.0, "reg": 0.1})
