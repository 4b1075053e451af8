r"""MMGCN: one graph convolution network per modality over the user-item graph, averaged
(Wei et al., ACM MM 2019), in the form of MMRec's ``MMGCN``.

For each modality :math:`m` the nodes start from :math:`x^{(0)} = \operatorname{normalize}
([P_m; \phi_m(F_m)])`: the users' modality-specific preferences :math:`P_m` stacked over the
items' features :math:`F_m`, optionally projected by a linear layer
:math:`\phi_m(f) = W_\phi f + b_\phi` (MMRec projects its "vision" slot to 256 dimensions and
feeds its text features raw), each row scaled to unit length. Each of the :math:`L` layers
(MMRec: 3) is

.. math::
  h^{(l)} &= \sigma\big(\operatorname{mean}_{j \in \mathcal{N}(v)} x_j^{(l-1)} W_c^{(l)}\big)
      && \text{aggregation (eq. 1), mean over graph neighbours} \\
  \hat x^{(l)} &= \sigma\big(x^{(l-1)} W_x^{(l)} + b_x^{(l)}\big) + e_v
      && \text{the node's own features plus its ID embedding (eq. 5)} \\
  x^{(l)} &= \sigma\big([h^{(l)}, \hat x^{(l)}]\, W_g^{(l)} + b_g^{(l)}\big)
      && \text{combination (concatenation)}

with :math:`\sigma` the leaky ReLU (slope 0.01) and :math:`e_v` one ID table of width d
shared by all modalities. The representation is the modality average
:math:`r_v = \frac{1}{M}\sum_m x_{m,v}^{(L)}`, and :math:`\hat y_{ui} = r_u^\top r_i`. The
neighbourhood is the TRAIN user-item graph (both directions, no self-loops), given to the
model in ``ctx["graph"]`` as a row-normalized (:math:`D^{-1}A`) edge list, so propagation is a
``segment_sum`` whose result is the neighbour mean (0 for a node without neighbours).

Loss terms, unweighted, for triples :math:`(u, i, j)`:

.. math::
  \mathcal{L}_\text{bpr} = \frac{1}{|P|}\sum \operatorname{softplus}(\hat y_{uj} - \hat y_{ui}),
  \qquad
  \mathcal{L}_\text{reg} = \operatorname{mean}\big(e_u^2 + e_{(i|j)}^2\big)
      + \sum_m \operatorname{mean}(P_m^2),

the first mean over the batch's (user, positive) and (user, negative) rows and the ID
dimensions, as MMRec's ``(id_embedding[user_tensor]**2 + id_embedding[item_tensor]**2).mean()``
(:func:`jaxrec.losses.l2_mean_of_squares`); ``loss_weights: {reg: λ}`` is MMRec's
``reg_weight``.

Matching MMRec, in detail: its ``concate = 'False'`` is a non-empty string, hence true, so
the combination concatenates (``concat=True`` here; ``False`` gives
:math:`x^{(l)} = \sigma(h^{(l)} W_g^{(l)} + b_g^{(l)} + \hat x^{(l)})`); the aggregation
is ``"mean"``; its config's ``n_layers`` is ignored and the GCN always has 3 layers; the
initializations are torch's (Xavier-normal :math:`P_m`, :math:`e`, :math:`W_c`, :math:`W_x` and
:math:`W_g^{(1)}`; ``nn.Linear``'s default :math:`U(\pm 1/\sqrt{\text{fan-in}})` for
:math:`\phi`, the biases and :math:`W_g^{(2,3)}`).

Deviations: MMRec creates :math:`e` and :math:`P_m` as plain tensors, not ``nn.Parameter``,
so its optimizer never updates them (they stay random, and its ``reg_weight`` changes
nothing); ``learn_embeddings=False`` reproduces that (gradients stopped), the default
``True`` trains them as the paper does. MMRec regularizes the preferences of its vision
modality only; here every modality's. MMRec ranks with the representation cached by the
last training forward pass (the parameters before the epoch's last update); ``encode``
recomputes it from the current parameters.

References:
  Wei et al., `MMGCN: Multi-modal Graph Convolution Network for Personalized
  Recommendation of Micro-video <https://arxiv.org/abs/1908.07165>`_, ACM MM 2019; MMRec
  ``src/models/mmgcn.py`` (github.com/enoche/MMRec).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec import losses
from jaxrec.data import graph as jgraph
from jaxrec.data.graph import Edges
from jaxrec.errors import ConfigError
from jaxrec.models._common import (batch_triples, bpr_of, check_bool, check_positive_int, chunk_size_for,
                                   counted_pairs, dense_dot_general, item_side_features, matmul, normalize_rows)
from jaxrec.models._init import torch_linear_bias, torch_linear_kernel, xavier_normal
from jaxrec.models._registry import Built, register


class ModalityGCN(nn.Module):
    """One modality's graph network (MMRec's ``GCN``): ``(graph, features, id_embedding) ->
    (layer-L output (n_nodes, d), preference table (n_users, width))``.

    Attributes:
      n_users: users (the first rows of the graph).
      feature_dim: width of the modality's item features.
      latent_dim: width of the projection :math:`\\phi`, or 0 to feed the features raw.
      embedding_size: d, the width of the ID embedding and of layers 2..L.
      n_layers: L.
      concat: combine by concatenation (MMRec's effective setting) or by sum.
      learn_embeddings: train the preferences (else gradients are stopped, as in MMRec).
    """

    n_users: int
    feature_dim: int
    latent_dim: int = 0
    embedding_size: int = 64
    n_layers: int = 3
    concat: bool = True
    learn_embeddings: bool = True

    @nn.compact
    def __call__(self, graph, features, id_embedding, raw=None):
        """``raw``: for a modality fed raw (``latent_dim == 0``), the constants of
        :func:`raw_inputs` (``features`` is then not read)."""
        width = self.latent_dim or self.feature_dim
        preference = self.param("preference", xavier_normal, (self.n_users, width))
        if not self.learn_embeddings:
            preference = jax.lax.stop_gradient(preference)
        d = self.embedding_size
        if raw is not None:
            x = self._raw_first_layer(raw, normalize_rows(preference), id_embedding)
        else:
            if self.latent_dim:
                features = nn.Dense(self.latent_dim, kernel_init=torch_linear_kernel, dot_general=dense_dot_general,
                                    bias_init=torch_linear_bias(self.feature_dim), name="projection")(features)
            x = normalize_rows(jnp.concatenate([preference, features], axis=0))
        for layer in range(2 if raw is not None else 1, self.n_layers + 1):
            width = x.shape[1]
            conv = self.param(f"conv_{layer}", xavier_normal, (width, width if layer == 1 else d))
            messages = matmul(x, conv)
            h = nn.leaky_relu(jgraph.propagate_fixed(graph, messages, chunk_size=chunk_size_for(messages.shape[1])))
            x_hat = nn.leaky_relu(nn.Dense(d, kernel_init=xavier_normal, bias_init=torch_linear_bias(width),
                                           dot_general=dense_dot_general, name=f"linear_{layer}")(x)) + id_embedding
            x = self._combine(layer, h, x_hat)
        return x, preference

    def _combine(self, layer, h, x_hat):
        d = self.embedding_size
        # MMRec re-initializes only the first combination layer (Xavier); the others keep torch's default.
        g_width = (h.shape[1] + d) if self.concat else h.shape[1]
        combine = nn.Dense(d, kernel_init=xavier_normal if layer == 1 else torch_linear_kernel,
                           bias_init=torch_linear_bias(g_width), dot_general=dense_dot_general, name=f"combine_{layer}")
        if self.concat:
            return nn.leaky_relu(combine(jnp.concatenate([h, x_hat], axis=1)))
        return nn.leaky_relu(combine(h) + x_hat)

    def _raw_first_layer(self, raw, users, id_embedding):
        r"""Layer 1 of a raw modality, split by side (the graph is bipartite, the item inputs
        :math:`\hat F` are constant): the users' neighbour means :math:`C_u = (D^{-1}A)_{ui}
        \hat F` are a constant of the data, so

        .. math::
          h_u = \sigma(C_u W_c), \quad h_i = \sigma\big(((D^{-1}A)_{iu} \hat P) W_c\big),
          \quad \hat x_u = \sigma(\hat P W_x + b_x) + e_u, \quad \hat x_i = \sigma(\hat F W_x + b_x) + e_i

        (the same products as :math:`(D^{-1}A)(x W_c)` and :math:`x W_x` regrouped; float
        rounding aside). No product with a constant computes a gradient in it, and the
        user-side half of the graph is never propagated."""
        n_items, width, d = raw["items"].shape[0], self.feature_dim, self.embedding_size
        conv = self.param("conv_1", xavier_normal, (width, width))
        w_x, b_x = _DenseParams(d, width, name="linear_1")()
        item_means = _item_means(raw["item_graph"], users, n_items)
        h = nn.leaky_relu(jnp.concatenate([const_matmul(raw["user_means"], raw["user_means_t"], conv),
                                           matmul(item_means, conv)], axis=0))
        x_hat = nn.leaky_relu(jnp.concatenate([matmul(users, w_x), const_matmul(raw["items"], raw["items_t"], w_x)],
                                              axis=0) + b_x) + id_embedding
        return self._combine(1, h, x_hat)


class _DenseParams(nn.Module):
    """The kernel (Xavier-normal) and bias (torch's default) of ``nn.Dense(features)`` on
    ``fan_in`` inputs, same names and initial values, for products written out by hand."""

    features: int
    fan_in: int

    @nn.compact
    def __call__(self):
        kernel = self.param("kernel", xavier_normal, (self.fan_in, self.features))
        return kernel, self.param("bias", torch_linear_bias(self.fan_in), (self.features,))


@jax.custom_vjp
def const_matmul(x, x_t, w):
    """``x @ w`` for a constant ``x`` (no gradient) given with its transpose ``x_t``: the
    gradient ``x_t @ g`` in ``w`` needs no transposed copy per step."""
    return x @ w


def _const_matmul_fwd(x, x_t, w):
    return x @ w, (x, x_t)


def _const_matmul_bwd(residuals, g):
    x, x_t = residuals
    return jnp.zeros_like(x), jnp.zeros_like(x_t), x_t @ g


const_matmul.defvjp(_const_matmul_fwd, _const_matmul_bwd)


def _item_means(item_graph, users, n_items: int):
    """``(D^-1 A)_{iu} users`` (n_items, w): the users' rows propagated to the items over the
    item-row block of the graph (a FixedGraph on ``max(n_users, n_items)`` nodes)."""
    size = max(users.shape[0], n_items)
    padded = jnp.pad(users, ((0, size - users.shape[0]), (0, 0)))
    return jgraph.propagate_fixed(item_graph, padded, chunk_size=chunk_size_for(users.shape[1]))[:n_items]


class MMGCN(nn.Module):
    """MMGCN (see the module docstring).

    ``ctx``: ``{"graph": FixedGraph (D^-1 A, row-sorted, with its transpose A D^-1 for the gradient),
    "features": {name: (n_items, D_m)} of the projected modalities, "raw": {name: raw_inputs(...)}
    of the modalities fed raw}``.

    Attributes:
      n_users, n_items: table sizes.
      modalities: the modality names, in ``ctx["features"]``.
      feature_dims: their widths.
      latent_dims: per modality, the projection width (0: raw features).
      embedding_size: d.
      n_layers: L.
      concat: concatenating combination layers.
      learn_embeddings: train the ID and preference tables.
    """

    n_users: int
    n_items: int
    modalities: tuple[str, ...]
    feature_dims: tuple[int, ...]
    latent_dims: tuple[int, ...]
    embedding_size: int = 64
    n_layers: int = 3
    concat: bool = True
    learn_embeddings: bool = True

    def setup(self):
        self.id_embedding = self.param("id_embedding", xavier_normal,
                                       (self.n_users + self.n_items, self.embedding_size))
        self.gcns = [ModalityGCN(self.n_users, dim, latent, self.embedding_size, self.n_layers, self.concat,
                                 self.learn_embeddings, name=f"gcn_{name}")
                     for name, dim, latent in zip(self.modalities, self.feature_dims, self.latent_dims)]

    def _ids(self):
        return self.id_embedding if self.learn_embeddings else jax.lax.stop_gradient(self.id_embedding)

    def representation(self, ctx):
        """``((n_users + n_items, d) modality-averaged representations, users first,
        [preference table per modality])``."""
        ids = self._ids()
        raw = ctx.get("raw", {})
        outputs, preferences = zip(*(gcn(ctx["graph"], ctx["features"].get(name), ids, raw.get(name))
                                     for gcn, name in zip(self.gcns, self.modalities)))
        return sum(outputs) / len(outputs), list(preferences)

    def encode(self, ctx, train: bool = False):
        """``(user_emb (n_users, d), item_emb (n_items, d))``: the representation's two blocks."""
        del train
        nodes, _ = self.representation(ctx)
        return nodes[:self.n_users], nodes[self.n_users:]

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg"}`` for a contract batch (``jaxrec.models._registry``)."""
        del train
        users, positives, negatives, weights = batch_triples(batch)
        nodes, preferences = self.representation(ctx)
        user_rows = nodes[users]
        # MMRec's rows: (user, positive) and (user, negative) for every triple.
        n_neg = negatives.shape[1]
        ids = self._ids()
        user_ids = jnp.broadcast_to(ids[users][:, None, :], (users.shape[0], 2 * n_neg, ids.shape[1]))
        item_ids = jnp.concatenate([jnp.broadcast_to(ids[self.n_users + positives][:, None, :],
                                                     (users.shape[0], n_neg, ids.shape[1])),
                                    ids[self.n_users + negatives]], axis=1)
        # The mean over the real rows' entries: sqrt(w) scales each row's squares by w.
        root = jnp.sqrt(weights)[:, None, None]
        id_reg = (losses.l2_mean_of_squares(user_ids * root, item_ids * root, over_batch=True)
                  * losses.batch_sum(jnp.ones_like(weights)) / jnp.maximum(losses.batch_sum(weights), 1e-12))
        return {"bpr": bpr_of(user_rows, nodes[self.n_users + positives], nodes[self.n_users + negatives],
                              counted_pairs(batch)),
                "reg": id_reg + losses.l2_mean_of_squares(*preferences)}


def raw_inputs(edges, n_users: int, features: Mapping[str, np.ndarray]) -> dict:
    r"""The constants of each raw modality's first layer (``ModalityGCN._raw_first_layer``).

    Args:
      edges: the host row-sorted :math:`D^{-1}A` of the train graph, users first.
      n_users: users (the first rows).
      features: ``{name: (n_items, D)}`` raw item features.

    Returns:
      ``{name: {"items": F̂, "items_t": F̂^T, "user_means": C_u, "user_means_t": C_u^T,
      "item_graph": FixedGraph}}`` on the device, with :math:`\hat F` the row-normalized
      features, :math:`C_u = (D^{-1}A)_{ui} \hat F` (accumulated in float64) and the item-row
      block :math:`(D^{-1}A)_{iu}` (items renumbered from 0, with its sorted transpose).
    """
    rows, cols, weights = (np.asarray(a) for a in edges)
    on_users = rows < n_users
    items = Edges(rows[~on_users] - n_users, cols[~on_users], weights[~on_users])
    item_graph = jgraph.fixed_graph(items).to_device()
    out = {}
    for name, block in features.items():
        normalized = np.asarray(normalize_rows(jnp.asarray(block, jnp.float32)))
        user_means = np.zeros((n_users, normalized.shape[1]), np.float64)
        np.add.at(user_means, rows[on_users], weights[on_users, None].astype(np.float64)
                  * normalized[cols[on_users] - n_users])
        user_means = user_means.astype(np.float32)
        out[name] = {"items": jnp.asarray(normalized), "items_t": jnp.asarray(np.ascontiguousarray(normalized.T)),
                     "user_means": jnp.asarray(user_means),
                     "user_means_t": jnp.asarray(np.ascontiguousarray(user_means.T)), "item_graph": item_graph}
    return out


def _latent_dims(latent_dims, names: Sequence[str]) -> tuple[int, ...]:
    latent_dims = {} if latent_dims is None else latent_dims
    if not isinstance(latent_dims, Mapping):
        raise ConfigError(f"model mmgcn: latent_dims must map modality names to widths; found {latent_dims!r}")
    unknown = [n for n in latent_dims if n not in names]
    if unknown:
        raise ConfigError(f"model mmgcn: latent_dims names {unknown[0]!r}, which is not among the model's "
                          f"modalities {list(names)}")
    for name, width in latent_dims.items():
        if width is not None:
            check_positive_int(width, f"latent_dims.{name}", "mmgcn")
    return tuple(int(latent_dims.get(name) or 0) for name in names)


@register("mmgcn")
def build(dataset, *, modalities: list[str] | None = None, latent_dims: dict[str, int] | None = None,
          embedding_size: int = 64, n_layers: int = 3, concat: bool = True, learn_embeddings: bool = True,
          feature_scaling: str = "none") -> Built:
    """MMGCN for ``dataset``.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with item modalities; its TRAIN
        pairs make the graph.
      modalities: the modalities, each with its own GCN (default: all of the dataset's).
      latent_dims: ``{name: width}`` of the modalities projected before the GCN (MMRec:
        ``{<vision>: 256}``); the others enter raw.
      embedding_size: d (MMRec: 64).
      n_layers: L >= 1 (MMRec: always 3).
      concat: concatenating combination (MMRec's effective setting) or additive.
      learn_embeddings: train the ID and preference tables (the paper) or keep them at
        their random start (MMRec's code).
      feature_scaling: ``"none"`` (MMRec: raw; every row is L2-normalized inside anyway),
        ``"standardize"`` or ``"l2"`` per modality before the projection.

    Returns:
      :class:`~jaxrec.models.Built`, ``ctx = {"graph", "features"}``, weights
      ``{bpr: 1, reg: 0}`` (MMRec's ``reg_weight`` chosen by validation on lfm2k).
    """
    check_positive_int(embedding_size, "embedding_size", "mmgcn")
    check_positive_int(n_layers, "n_layers", "mmgcn")
    for flag, value in (("concat", concat), ("learn_embeddings", learn_embeddings)):
        check_bool(value, flag, "mmgcn")
    names = tuple(dataset.modalities) if modalities is None else tuple(modalities)
    features = {}
    for name in names:
        block, _, _ = item_side_features(dataset, [name], scaling=feature_scaling, model="mmgcn")
        features[name] = block
    latent = _latent_dims(latent_dims, names)
    module = MMGCN(n_users=dataset.n_users, n_items=dataset.n_items, modalities=names,
                   feature_dims=tuple(features[n].shape[1] for n in names), latent_dims=latent,
                   embedding_size=embedding_size, n_layers=n_layers, concat=concat,
                   learn_embeddings=learn_embeddings)
    edges = jgraph.normalized_adjacency(jgraph.bipartite_graph(dataset, split="train"), normalization="rw")
    raw = [n for n, width in zip(names, latent) if not width]
    ctx = {"graph": jgraph.fixed_graph(edges).to_device(),
           "features": {n: jnp.asarray(features[n]) for n in names if n not in raw}}
    if raw:
        ctx["raw"] = raw_inputs(edges, dataset.n_users, {n: features[n] for n in raw})
    return Built(module=module, ctx=ctx, default_loss_weights={"bpr": 1.0, "reg": 0.0})
