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
                                   counted_pairs, item_side_features, matmul, modality_names,
                                   normalize_rows)
from jaxrec.models._init import torch_linear_bias, torch_linear_kernel, xavier_normal
from jaxrec.models._registry import Built, register


class ModalityGCN(nn.Module):
    """One modality's parameters (MMRec's ``GCN``): ``() -> {name: array}`` with
    ``preference`` (n_users, width), ``projection`` (a projected modality), and per layer
    ``conv_l``, ``linear_l``, ``combine_l`` (kernel, bias); :class:`MMGCN` computes the layers
    of all modalities together (:func:`_first_layer`, :func:`_joint_layer`).

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
    def __call__(self):
        width = self.latent_dim or self.feature_dim
        d = self.embedding_size
        preference = self.param("preference", xavier_normal, (self.n_users, width))
        out = {"preference": preference if self.learn_embeddings else jax.lax.stop_gradient(preference)}
        if self.latent_dim:
            out["projection"] = _DenseParams(self.latent_dim, self.feature_dim, torch_linear_kernel,
                                             name="projection")()
        for layer in range(1, self.n_layers + 1):
            in_width = width if layer == 1 else d
            out[f"conv_{layer}"] = self.param(f"conv_{layer}", xavier_normal, (in_width, in_width if layer == 1 else d))
            out[f"linear_{layer}"] = _DenseParams(d, in_width, name=f"linear_{layer}")()
            # MMRec re-initializes only the first combination layer (Xavier); the others keep torch's default.
            out[f"combine_{layer}"] = _DenseParams(d, in_width + d if self.concat else in_width,
                                                   xavier_normal if layer == 1 else torch_linear_kernel,
                                                   name=f"combine_{layer}")()
        return out


class _DenseParams(nn.Module):
    """The kernel and bias (torch's default) of ``nn.Dense(features)`` on ``fan_in`` inputs,
    same names and initial values, for products written out by hand."""

    features: int
    fan_in: int
    kernel_init: object = xavier_normal

    @nn.compact
    def __call__(self):
        kernel = self.param("kernel", self.kernel_init, (self.fan_in, self.features))
        return kernel, self.param("bias", torch_linear_bias(self.fan_in), (self.features,))


def _combine(params, layer: int, h, x_hat, concat: bool):
    """:math:`\\sigma([h, \\hat x] W_g + b_g)` (concatenation) or :math:`\\sigma(h W_g + b_g + \\hat x)`."""
    kernel, bias = params[f"combine_{layer}"]
    if concat:
        return nn.leaky_relu(matmul(jnp.concatenate([h, x_hat], axis=1), kernel) + bias)
    return nn.leaky_relu(matmul(h, kernel) + bias + x_hat)


def _first_layer(params, features, raw, blocks, ids, concat: bool):
    """Layer 1 of one modality, (n_nodes, d): :func:`_raw_first_layer` with ``raw``
    (:func:`raw_inputs`) for a modality fed raw, else :func:`_projected_first_layer`; both over
    ``blocks`` (:func:`graph_blocks`)."""
    if raw is not None:
        return _raw_first_layer(params, raw, blocks, ids, concat)
    return _projected_first_layer(params, blocks, features, ids, concat)


def _projected_first_layer(params, blocks, features, ids, concat: bool):
    r"""Layer 1 of a projected modality, split by side (the graph is bipartite): with
    :math:`x_u = \hat P_u` and :math:`x_i = s_i (W_\phi^\top f_i + b_\phi)`,
    :math:`s_i = 1 / \lVert W_\phi^\top f_i + b_\phi \rVert` (the row normalization),

    .. math::
      h_u = \sigma\big((D^{-1}A)_{ui}\, x_i W_c\big)
          = \sigma\big(((D^{-1}A)_{ui} [s \odot F, s])\, [W_\phi W_c; b_\phi W_c]\big), \quad
      h_i = \sigma\big(((D^{-1}A)_{iu}\, \hat P) W_c\big)

    (the same products as :math:`(D^{-1}A)(x W_c)` regrouped; float rounding aside). The
    folded form propagates the D+1 columns of the scaled features instead of the width-w
    messages and multiplies the users' means by the folded (D+1, w) weight; it is used when
    D + 1 < w (MMRec's vision slot on lfm2k: D = 128, w = 256), else the items' messages
    :math:`x_i W_c` are propagated. No product :math:`x W_c` then spans all n_users + n_items
    rows (the items' side has n_items rows, the users' side D + 1 columns when folded), and
    each half of the graph is propagated once."""
    n_users, n_items = params["preference"].shape[0], features.shape[0]
    kernel, bias = params["projection"]
    conv, (w_x, b_x) = params["conv_1"], params["linear_1"]
    users = normalize_rows(params["preference"])
    projected = matmul(features, kernel) + bias
    scale = jax.lax.rsqrt(jnp.maximum(jnp.sum(jnp.square(projected), axis=-1, keepdims=True), 1e-24))
    items = projected * scale                                  # normalize_rows(projected)
    if features.shape[1] + 1 < conv.shape[1]:
        folded = jnp.concatenate([kernel @ conv, (bias @ conv)[None]], axis=0)
        user_means = _block_propagate(blocks["users"], jnp.concatenate([features * scale, scale], axis=1), n_users)
        user_h = matmul(user_means, folded)
    else:
        user_h = _block_propagate(blocks["users"], matmul(items, conv), n_users)
    item_h = matmul(_block_propagate(blocks["items"], users, n_items), conv)
    h = nn.leaky_relu(jnp.concatenate([user_h, item_h], axis=0))
    x_hat = nn.leaky_relu(jnp.concatenate([matmul(users, w_x), matmul(items, w_x)], axis=0) + b_x) + ids
    return _combine(params, 1, h, x_hat, concat)


def _block_propagate(block, x, n_out: int):
    """``block @ x`` (n_out, w) for one off-diagonal block of the graph (a FixedGraph on
    ``max(n_out, len(x))`` nodes, see :func:`graph_blocks`)."""
    size = max(x.shape[0], n_out)
    padded = jnp.pad(x, ((0, size - x.shape[0]), (0, 0)))
    return jgraph.propagate_fixed(block, padded, chunk_size=chunk_size_for(x.shape[1]))[:n_out]


def _raw_first_layer(params, raw, blocks, ids, concat: bool):
    r"""Layer 1 of a raw modality, split by side (the graph is bipartite, the item inputs
    :math:`\hat F` are constant): the users' neighbour means :math:`C_u = (D^{-1}A)_{ui}
    \hat F` are a constant of the data, so

    .. math::
      h_u = \sigma(C_u W_c), \quad h_i = \sigma\big(((D^{-1}A)_{iu} \hat P) W_c\big),
      \quad \hat x_u = \sigma(\hat P W_x + b_x) + e_u, \quad \hat x_i = \sigma(\hat F W_x + b_x) + e_i

    (the same products as :math:`(D^{-1}A)(x W_c)` and :math:`x W_x` regrouped; float
    rounding aside). No product with a constant computes a gradient in it, and the
    user-side half of the graph is never propagated."""
    users = normalize_rows(params["preference"])
    conv, (w_x, b_x) = params["conv_1"], params["linear_1"]
    item_means = _block_propagate(blocks["items"], users, raw["items"].shape[0])
    h = nn.leaky_relu(jnp.concatenate([const_matmul(raw["user_means"], raw["user_means_t"], conv),
                                       matmul(item_means, conv)], axis=0))
    x_hat = nn.leaky_relu(jnp.concatenate([matmul(users, w_x), const_matmul(raw["items"], raw["items_t"], w_x)],
                                          axis=0) + b_x) + ids
    return _combine(params, 1, h, x_hat, concat)


def _joint_layer(all_params, layer: int, graph, xs, ids, concat: bool):
    r"""Layer ``layer`` >= 2 of every modality at once: each modality's two products with its
    input, :math:`x [W_c, W_x]`, are one matrix product, and the messages :math:`x_m W_{c,m}` of
    all modalities (each (n, d)) are propagated side by side as one (n, M d) array (one pass
    over the edges instead of M; the same sums per column)."""
    d = xs[0].shape[1]
    products = [matmul(x, jnp.concatenate([p[f"conv_{layer}"], p[f"linear_{layer}"][0]], axis=1))
                for x, p in zip(xs, all_params)]
    messages = jnp.concatenate([y[:, :d] for y in products], axis=1) if len(xs) > 1 else products[0][:, :d]
    h_all = nn.leaky_relu(jgraph.propagate_fixed(graph, messages, chunk_size=chunk_size_for(messages.shape[1])))
    return [_combine(p, layer, h_all[:, m * d:(m + 1) * d],
                     nn.leaky_relu(y[:, d:] + p[f"linear_{layer}"][1]) + ids, concat)
            for m, (y, p) in enumerate(zip(products, all_params))]


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


class MMGCN(nn.Module):
    """MMGCN (see the module docstring).

    ``ctx``: ``{"graph": FixedGraph (D^-1 A, row-sorted, with its transpose A D^-1 for the gradient;
    layers 2..L), "features": {name: (n_items, D_m)} of the projected modalities, "blocks":
    graph_blocks(...) (the users' block with a projected modality), "raw": {name: raw_inputs(...)} of the modalities
    fed raw}``.

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
        all_params = [gcn() for gcn in self.gcns]
        xs = [_first_layer(p, ctx["features"].get(name), raw.get(name), ctx["blocks"], ids, self.concat)
              for p, name in zip(all_params, self.modalities)]
        for layer in range(2, self.n_layers + 1):
            xs = _joint_layer(all_params, layer, ctx["graph"], xs, ids, self.concat)
        return sum(xs) / len(xs), [p["preference"] for p in all_params]

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
    r"""The constants of each raw modality's first layer (:func:`_raw_first_layer`).

    Args:
      edges: the host row-sorted :math:`D^{-1}A` of the train graph, users first.
      n_users: users (the first rows).
      features: ``{name: (n_items, D)}`` raw item features.

    Returns:
      ``{name: {"items": F̂, "items_t": F̂^T, "user_means": C_u, "user_means_t": C_u^T}}`` on
      the device, with :math:`\hat F` the row-normalized features and
      :math:`C_u = (D^{-1}A)_{ui} \hat F` (accumulated in float64). The item-row block
      :math:`(D^{-1}A)_{iu}` the layer also propagates over is :func:`graph_blocks`' ``"items"``.
    """
    rows, cols, weights = (np.asarray(a) for a in edges)
    on_users = rows < n_users
    out = {}
    for name, block in features.items():
        normalized = np.asarray(normalize_rows(jnp.asarray(block, jnp.float32)))
        user_means = np.zeros((n_users, normalized.shape[1]), np.float64)
        np.add.at(user_means, rows[on_users], weights[on_users, None].astype(np.float64)
                  * normalized[cols[on_users] - n_users])
        user_means = user_means.astype(np.float32)
        out[name] = {"items": jnp.asarray(normalized), "items_t": jnp.asarray(np.ascontiguousarray(normalized.T)),
                     "user_means": jnp.asarray(user_means),
                     "user_means_t": jnp.asarray(np.ascontiguousarray(user_means.T))}
    return out


def graph_blocks(edges, n_users: int, sides=("users", "items")) -> dict:
    r"""Off-diagonal blocks of the bipartite :math:`D^{-1}A` (users first) for the first layer
    (:func:`_first_layer`): ``{"users": (D^{-1}A)_{ui}, "items": (D^{-1}A)_{iu}}``, those named in
    ``sides``, each a device :class:`~jaxrec.data.graph.FixedGraph` with both sides numbered from
    0 (items renumbered, with its sorted transpose)."""
    rows, cols, weights = (np.asarray(a) for a in edges)
    on_users = rows < n_users
    blocks = {"users": Edges(rows[on_users], cols[on_users] - n_users, weights[on_users]),
              "items": Edges(rows[~on_users] - n_users, cols[~on_users], weights[~on_users])}
    return {side: jgraph.fixed_graph(blocks[side]).to_device() for side in sides}


def _latent_dims(latent_dims, names: Sequence[str]) -> tuple[int, ...]:
    latent_dims = {} if latent_dims is None else latent_dims
    if not isinstance(latent_dims, Mapping):
        raise ConfigError(f"model mmgcn: model.args.latent_dims must map modality names to widths; found {latent_dims!r}")
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
      :class:`~jaxrec.models.Built`, ``ctx = {"graph", "features", "blocks", "raw"}`` (``raw``
      when some modality is fed raw), weights
      ``{bpr: 1, reg: 0}`` (MMRec's ``reg_weight`` chosen by validation on lfm2k).
    """
    check_positive_int(embedding_size, "embedding_size", "mmgcn")
    check_positive_int(n_layers, "n_layers", "mmgcn")
    for flag, value in (("concat", concat), ("learn_embeddings", learn_embeddings)):
        check_bool(value, flag, "mmgcn")
    names = modality_names(dataset, modalities, "mmgcn")
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
    # The items' block serves every first layer; the users' block only a projected modality's.
    ctx["blocks"] = graph_blocks(edges, dataset.n_users, ("users", "items") if len(raw) < len(names) else ("items",))
    return Built(module=module, ctx=ctx, default_loss_weights={"bpr": 1.0, "reg": 0.0})
