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
from flax import linen as nn

from jaxrec import losses
from jaxrec.data import graph as jgraph
from jaxrec.errors import ConfigError
from jaxrec.models._common import (batch_triples, bpr_of, check_bool, check_positive_int, chunk_size_for,
                                   counted_pairs, dense_dot_general, item_side_features, matmul, normalize_rows,
                                   train_graph)
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
    def __call__(self, graph, features, id_embedding):
        width = self.latent_dim or self.feature_dim
        preference = self.param("preference", xavier_normal, (self.n_users, width))
        if not self.learn_embeddings:
            preference = jax.lax.stop_gradient(preference)
        if self.latent_dim:
            features = nn.Dense(self.latent_dim, kernel_init=torch_linear_kernel, dot_general=dense_dot_general,
                                bias_init=torch_linear_bias(self.feature_dim), name="projection")(features)
        x = normalize_rows(jnp.concatenate([preference, features], axis=0))
        d = self.embedding_size
        for layer in range(1, self.n_layers + 1):
            width = x.shape[1]
            conv = self.param(f"conv_{layer}", xavier_normal, (width, width if layer == 1 else d))
            messages = matmul(x, conv)
            h = nn.leaky_relu(jgraph.propagate_fixed(graph, messages, chunk_size=chunk_size_for(messages.shape[1])))
            x_hat = nn.leaky_relu(nn.Dense(d, kernel_init=xavier_normal, bias_init=torch_linear_bias(width),
                                           dot_general=dense_dot_general, name=f"linear_{layer}")(x)) + id_embedding
            # MMRec re-initializes only the first combination layer (Xavier); the others keep torch's default.
            g_width = (h.shape[1] + d) if self.concat else h.shape[1]
            combine = nn.Dense(d, kernel_init=xavier_normal if layer == 1 else torch_linear_kernel,
                               bias_init=torch_linear_bias(g_width), dot_general=dense_dot_general,
                               name=f"combine_{layer}")
            if self.concat:
                x = nn.leaky_relu(combine(jnp.concatenate([h, x_hat], axis=1)))
            else:
                x = nn.leaky_relu(combine(h) + x_hat)
        return x, preference


class MMGCN(nn.Module):
    """MMGCN (see the module docstring).

    ``ctx``: ``{"graph": FixedGraph (D^-1 A, row-sorted, with its transpose A D^-1 for the gradient),
    "features": {name: (n_items, D_m)}}``.

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
        outputs, preferences = zip(*(gcn(ctx["graph"], ctx["features"][name], ids)
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
    ctx = {"graph": train_graph(dataset, normalization="rw", form="fixed"), "features": {n: jnp.asarray(features[n]) for n in names}}
    return Built(module=module, ctx=ctx, default_loss_weights={"bpr": 1.0, "reg": 0.0})
