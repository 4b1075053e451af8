r"""CKE: Collaborative Knowledge base Embedding (Zhang et al., KDD 2016), structural part.

Items are nodes of a knowledge graph (KG) of triples :math:`(h, r, t)`. TransR embeds every
entity in :math:`\mathbb{R}^d` and every relation :math:`r` as a vector
:math:`r \in \mathbb{R}^k` with a projection :math:`M_r \in \mathbb{R}^{d \times k}`; a triple
is plausible when its projected head, moved by :math:`r`, lands near its projected tail:

.. math::
  f_r(h, t) = \lVert \tilde h + r - \tilde t \rVert_2^2, \qquad
  \tilde h = \frac{h M_r}{\lVert h M_r \rVert}, \quad \tilde t = \frac{t M_r}{\lVert t M_r \rVert},

(``kg_normalize=True``, RecBole's CKE, which also scales :math:`r` to unit length -- its way of
keeping the paper's TransR constraints :math:`\lVert h M_r\rVert, \lVert r\rVert \le 1`;
``False`` uses the raw projections). An item :math:`j`'s vector adds its free offset
:math:`\eta_j` and its KG node's embedding :math:`v_j` (and, with ``modalities``, a linear
projection of its features, standing in for the paper's SDAE textual/visual codes):

.. math::
  e_j = t_j\,\eta_j + v_j + W^\top z_j, \qquad \hat y_{uj} = p_u^\top e_j,

with :math:`t_j = 1` when item :math:`j` has a train interaction (a never-trained item is
scored from its KG node and features alone, and is never drawn as a training negative).
Both parts are trained jointly; the loss terms (unweighted, the trainer weighs them) are

.. math::
  \mathcal{L}_\text{bpr} &= \tfrac{1}{|P|}\textstyle\sum_{(u,i,j)} \operatorname{softplus}(\hat y_{uj} - \hat y_{ui}), \\
  \mathcal{L}_\text{kg} &= \tfrac{1}{|S|}\textstyle\sum_{(h,r,t,t')} \operatorname{softplus}\big(f_r(h,t) - f_r(h,t')\big), \\
  \mathcal{L}_\text{reg} &= \big(\lVert P_B\rVert_F + \lVert E_{B^+}\rVert_F + \lVert E_{B^-}\rVert_F\big) / B, \qquad
  \mathcal{L}_\text{kg\_reg} = \big(\lVert H M\rVert_F + \lVert R\rVert_F + \lVert T M\rVert_F
    + \lVert T' M\rVert_F\big) / |S|,

the first two being the paper's pairwise log-likelihoods (its Eq. 6 -- BPR for the items, the
same form over corrupted tails :math:`t'` for the KG) and the last two RecBole's ``EmbLoss``
(``reg_weights`` [1e-2, 1e-2] there, the default ``loss_weights`` here; :math:`E_B` are the
batch's final item vectors). Deviation: RecBole applies its KG ``EmbLoss`` to the NORMALIZED
vectors, where it is the constant :math:`4/\sqrt{|S|}` with no gradient; ``kg_reg`` here
takes the raw projections :math:`h M_r, r, t M_r`, so it does bound their scale.
``kg_loss="margin"`` replaces the KG term by TransR's own margin loss,
:math:`\tfrac{1}{|S|}\sum \max(0, \gamma + f_r(h,t) - f_r(h,t'))`.

KG batches. The trainer's batches only hold users and items, so ``loss_terms`` draws its own
KG batch on device: ``kg_batch_size`` triples uniformly (with replacement) from
``ctx["kg_triples"]`` and, for each, a corrupted tail uniform over the entities, from the
``"dropout"`` PRNG stream the trainer passes in training (a fixed key when there is none, as
in shape tracing). A corrupted tail may by chance be a true tail of the head; with 1,260
tags and about 23 tags per artist on lfm2k that is a small share of the draws
(``docs/models/cke.md``), and RecBole's
rejection of them is a host-side loop we avoid. Under ``pmap`` every device draws the same
KG batch (they share the key), which the gradient mean leaves unchanged. A RecBole epoch
likewise pairs each interaction batch with one KG batch of the same size.

Nodes. ``kg_triples`` rows are ``(item, relation, entity)``. An item the data links to an
entity (RecBole's ``.link``, in ``metadata["item_entity"]``) uses that entity's embedding as
:math:`v_j`, so an item appearing as a tail shares it; every other item gets a node of its
own after the entities. Deviation from the paper: no SDAE; modality features, when asked for,
enter linearly.

References:
  Zhang et al., `Collaborative Knowledge Base Embedding for Recommender Systems
  <https://doi.org/10.1145/2939672.2939673>`_, KDD 2016; Lin et al., `Learning Entity and
  Relation Embeddings for Knowledge Graph Completion (TransR)
  <https://ojs.aaai.org/index.php/AAAI/article/view/9491>`_, AAAI 2015; RecBole
  ``recbole/model/knowledge_aware_recommender/cke.py`` (github.com/RUCAIBox/RecBole).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.typing import ArrayLike

from jaxrec import losses
from jaxrec.datasets import add_tag_kg
from jaxrec.errors import ConfigError
from jaxrec.models._common import (batch_triples, bpr_emb_loss, check_bool, check_choice, check_number,
                                   check_positive_int, counted_pairs, item_side_features, masked_rows, normalize_rows,
                                   trained_item_mask)
from jaxrec.models._init import xavier_normal
from jaxrec.models._registry import Built, register

KG_LOSSES = ("bpr", "margin")
# Up to this many relations a KG batch is projected through every M_r (see CKE._project).
_DENSE_RELATIONS = 8


def _transfer_init(key, shape, dtype=jnp.float32):
    # RecBole stores M_r as an (n_relations, d * k) embedding table; Xavier on THAT shape.
    n_relations, d, k = shape
    return jax.random.normal(key, shape, dtype) * jnp.sqrt(2.0 / (n_relations + d * k)).astype(dtype)


def transr_project(head: ArrayLike, relation: ArrayLike, tail: ArrayLike, transfer: ArrayLike, *,
                   normalize: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
    r"""TransR's projected triple :math:`(h M_r, r, t M_r)`, each scaled to unit length when
    ``normalize`` (RecBole's CKE).

    Args:
      head: (..., d) head entity embeddings.
      relation: (..., k) relation embeddings.
      tail: (..., d) tail entity embeddings.
      transfer: (..., d, k) each triple's relation projection :math:`M_r`.
      normalize: scale the three to unit L2 norm.

    Returns:
      ``(h̃ (..., k), r (..., k), t̃ (..., k))``.
    """
    head, relation, tail, transfer = (jnp.asarray(a, jnp.float32) for a in (head, relation, tail, transfer))
    projected_head = jnp.einsum("...d,...dk->...k", head, transfer)
    projected_tail = jnp.einsum("...d,...dk->...k", tail, transfer)
    if normalize:
        return normalize_rows(projected_head), normalize_rows(relation), normalize_rows(projected_tail)
    return projected_head, relation, projected_tail


def transr_score(head: ArrayLike, relation: ArrayLike, tail: ArrayLike, transfer: ArrayLike, *,
                 normalize: bool = True) -> jax.Array:
    r"""TransR's dissimilarity of triples (lower is more plausible).

    .. math::
      f_r(h, t) = \lVert h M_r + r - t M_r \rVert_2^2

    (with the three terms scaled to unit length first when ``normalize``).

    Args:
      head: (..., d); relation: (..., k); tail: (..., d); transfer: (..., d, k).
      normalize: as in :func:`transr_project`.

    Returns:
      (...,) scores.

    References:
      Lin et al., Learning Entity and Relation Embeddings for Knowledge Graph Completion, AAAI 2015.
    """
    h, r, t = transr_project(head, relation, tail, transfer, normalize=normalize)
    return jnp.sum(jnp.square(h + r - t), axis=-1)


class CKE(nn.Module):
    """CKE (see the module docstring).

    ``ctx``: ``item_node`` (n_items,) int32 KG node of each item; ``kg_triples`` (n, 3) int32
    rows of (head node, relation, tail node); ``trained`` (n_items,) bool; and with
    modalities ``features`` (n_items, D) float32.

    Attributes:
      n_users, n_items: table sizes.
      n_nodes: entity-table rows (entities, then items without a linked entity).
      n_entities: tails (and corrupted tails) are drawn from nodes ``[0, n_entities)``.
      n_relations: relation count.
      embedding_size: d, users, items and entities.
      kg_embedding_size: k, relations.
      kg_batch_size: triples per KG batch.
      kg_loss: ``"bpr"`` or ``"margin"``.
      margin: :math:`\\gamma` of the margin loss.
      kg_normalize: unit-length projections (RecBole).
      feature_dim: D, 0 without modality features.
    """

    n_users: int
    n_items: int
    n_nodes: int
    n_entities: int
    n_relations: int
    embedding_size: int = 64
    kg_embedding_size: int = 64
    kg_batch_size: int = 2048
    kg_loss: str = "bpr"
    margin: float = 1.0
    kg_normalize: bool = True
    feature_dim: int = 0

    def setup(self):
        d, k = self.embedding_size, self.kg_embedding_size
        self.user_embedding = self.param("user_embedding", xavier_normal, (self.n_users, d))
        self.item_embedding = self.param("item_embedding", xavier_normal, (self.n_items, d))
        self.entity_embedding = self.param("entity_embedding", xavier_normal, (self.n_nodes, d))
        self.relation_embedding = self.param("relation_embedding", xavier_normal, (self.n_relations, k))
        self.transfer = self.param("transfer", _transfer_init, (self.n_relations, d, k))
        if self.feature_dim:
            # Zero: training starts from the structural model and learns what the features add.
            self.feature_projection = self.param("feature_projection", nn.initializers.zeros, (self.feature_dim, d))

    def _item_vectors(self, ctx, items):
        """(..., d) item vectors :math:`t_j \\eta_j + v_j (+ W^T z_j)` of ``items`` (any int shape)."""
        vectors = masked_rows(self.item_embedding, ctx["trained"], items) + self.entity_embedding[jnp.asarray(ctx["item_node"])[items]]
        if self.feature_dim:
            vectors = vectors + jnp.asarray(ctx["features"])[items] @ self.feature_projection
        return vectors

    def encode(self, ctx, train: bool = False):
        """``(user_emb (n_users, d), item_emb (n_items, d))``."""
        del train
        return self.user_embedding, self._item_vectors(ctx, jnp.arange(self.n_items))

    def _project(self, nodes, relations):
        """(S, n, k) projections :math:`e M_r` of the (S, n) ``nodes`` of S triples of
        ``relations`` (S,). Three exact ways, picked by cost at trace time: a gathered stack
        of (S, d, k) matrices costs, in the backward pass, an S-row scatter-add of d*k floats
        each (several times slower on CPU: ``docs/models/cke.md``); with few relations, every row goes
        through every :math:`M_r` in one matmul and each triple picks its own -- or, when
        the node table is smaller than the batch, the whole table is projected once."""
        d, k, n_relations = self.embedding_size, self.kg_embedding_size, self.n_relations
        if n_relations > _DENSE_RELATIONS:
            return jnp.einsum("snd,sdk->snk", self.entity_embedding[nodes], self.transfer[relations])
        all_transfers = jnp.moveaxis(self.transfer, 0, 1).reshape(d, n_relations * k)
        if self.n_nodes <= nodes.size:
            every = (self.entity_embedding @ all_transfers)[nodes]
        else:
            every = self.entity_embedding[nodes] @ all_transfers
        every = every.reshape(*nodes.shape, n_relations, k)
        if n_relations == 1:
            return every[..., 0, :]
        return jnp.einsum("snrk,sr->snk", every, jax.nn.one_hot(relations, n_relations, dtype=every.dtype))

    def kg_terms(self, triples, corrupted_tails):
        """``{"kg", "kg_reg"}`` of explicit KG triples (S, 3) (head node, relation, tail node)
        and their corrupted tails (S,)."""
        heads, relations, tails = triples[:, 0], triples[:, 1], triples[:, 2]
        projected = self._project(jnp.stack([heads, tails, corrupted_tails], axis=1), relations)
        relation = self.relation_embedding[relations]
        head, pos_tail, neg_tail = projected[:, 0], projected[:, 1], projected[:, 2]
        # The regularizer sees the raw projections: on unit vectors (RecBole applies its EmbLoss
        # after normalizing) it would be the constant 4 / sqrt(S), with no gradient.
        # The KG batch is drawn from the step's key: the same on every device, not batch rows.
        kg_reg = losses.l2_mean_norm(head, relation, pos_tail, neg_tail)
        if self.kg_normalize:
            head, relation, pos_tail, neg_tail = normalize_rows(head), normalize_rows(relation), normalize_rows(pos_tail), normalize_rows(neg_tail)
        pos_score = jnp.sum(jnp.square(head + relation - pos_tail), axis=-1)
        neg_score = jnp.sum(jnp.square(head + relation - neg_tail), axis=-1)
        if self.kg_loss == "margin":
            kg = jnp.mean(jax.nn.relu(self.margin + pos_score - neg_score))
        else:  # softplus(f(h,t) - f(h,t')): BPR with the lower-is-better score negated
            kg = losses.bpr(-pos_score, -neg_score, over_batch=False)
        return {"kg": kg, "kg_reg": kg_reg}

    def sample_kg_batch(self, ctx, key):
        """``(triples (S, 3), corrupted tails (S,))``: S = ``kg_batch_size`` triples drawn
        uniformly with replacement, each with a tail uniform over the entities."""
        triple_key, tail_key = jax.random.split(key)
        triples = jnp.asarray(ctx["kg_triples"])
        rows = jax.random.randint(triple_key, (self.kg_batch_size,), 0, triples.shape[0])
        corrupted = jax.random.randint(tail_key, (self.kg_batch_size,), 0, self.n_entities)
        return triples[rows], corrupted

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg", "kg", "kg_reg"}`` for a batch of ``users`` (B,), ``pos_items`` (B,),
        ``neg_items`` (B, n_neg) or (B,), optional ``weights`` (B,) (0 = padding row), plus a
        KG batch drawn from ``ctx`` (module docstring)."""
        del train
        users, positives, negatives, weights = batch_triples(batch)
        pairs = counted_pairs(batch, ctx["trained"])
        terms = bpr_emb_loss(self.user_embedding[users], self._item_vectors(ctx, positives),
                             self._item_vectors(ctx, negatives), pairs, weights)
        key = self.make_rng("dropout") if self.has_rng("dropout") else jax.random.PRNGKey(0)
        triples, corrupted = self.sample_kg_batch(ctx, key)
        return {**terms, **self.kg_terms(triples, corrupted)}


# ---- building ------------------------------------------------------------------------------


def item_nodes(dataset) -> tuple[np.ndarray, int]:
    """``(node of each item (n_items,) int32, n_nodes)``: the linked entity when
    ``metadata["item_entity"]`` names one (>= 0), else a node of its own after the entities."""
    linked = np.full(dataset.n_items, -1, np.int64)
    if "item_entity" in dataset.metadata:
        linked = np.asarray(dataset.metadata["item_entity"], np.int64)
    own = linked < 0
    nodes = linked.copy()
    nodes[own] = dataset.n_entities + np.arange(int(own.sum()))
    return nodes.astype(np.int32), int(dataset.n_entities + own.sum())


@register("cke")
def build(dataset, *, embedding_size: int = 64, kg_embedding_size: int = 64, kg_batch_size: int = 2048,
          kg_loss: str = "bpr", margin: float = 1.0, kg_normalize: bool = True,
          modalities: list[str] | None = None, tag_kg: dict | None = None) -> Built:
    """CKE for ``dataset`` and its knowledge graph.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with ``kg_triples`` (RecBole
        ``.kg``/``.link`` files give them), or without, together with ``tag_kg``.
      embedding_size: d (RecBole: 64).
      kg_embedding_size: k, the relation space (RecBole: 64).
      kg_batch_size: KG triples drawn per step (RecBole: the train batch size).
      kg_loss: ``"bpr"`` (the paper's and RecBole's) or ``"margin"`` (TransR's own).
      margin: :math:`\\gamma` for ``kg_loss="margin"``.
      kg_normalize: unit-length TransR projections (RecBole).
      modalities: item modalities added through a learned linear map (default: none, the
        structural CKE as in RecBole).
      tag_kg: build the KG from an item-tag table when the dataset has none:
        ``{path: .../lfm2k_text.tsv, min_count: 5}`` (keyword arguments of
        :func:`jaxrec.datasets.add_tag_kg`; the path is relative to the current directory).

    Returns:
      :class:`~jaxrec.models.Built`; default weights ``{bpr: 1, reg: 1e-2, kg: 1, kg_reg: 1e-2}``.
    """
    for value, name in ((embedding_size, "embedding_size"), (kg_embedding_size, "kg_embedding_size"),
                        (kg_batch_size, "kg_batch_size")):
        check_positive_int(value, name, "cke")
    check_choice(kg_loss, "kg_loss", KG_LOSSES, "cke")
    margin = check_number(margin, "margin", "cke", 0.0)
    check_bool(kg_normalize, "kg_normalize", "cke")
    if tag_kg is not None:
        if not isinstance(tag_kg, dict) or "path" not in tag_kg:
            raise ConfigError(f"model cke: model.args.tag_kg must be a mapping with a path (and optional min_count); "
                              f"found {tag_kg!r}")
        import inspect

        known = list(inspect.signature(add_tag_kg).parameters)[1:]  # after the dataset
        unknown = sorted(set(tag_kg) - set(known))
        if unknown:
            raise ConfigError(f"model cke: model.args.tag_kg has no option {unknown[0]!r}; its options are "
                              f"{', '.join(known)}")
        if dataset.kg_triples is None:
            dataset = add_tag_kg(dataset, **tag_kg)
    if dataset.kg_triples is None or len(dataset.kg_triples) == 0:
        raise ConfigError("model cke needs a knowledge graph: a dataset with kg_triples (RecBole .kg/.link "
                          "files) or model.args.tag_kg: {path: <item tag table>}")
    nodes, n_nodes = item_nodes(dataset)
    triples = np.asarray(dataset.kg_triples)
    ctx = {"item_node": nodes, "trained": trained_item_mask(dataset),
           "kg_triples": np.stack([nodes[triples[:, 0]], triples[:, 1], triples[:, 2]], axis=1).astype(np.int32)}
    feature_dim = 0
    if modalities:
        ctx["features"], _, _ = item_side_features(dataset, modalities, scaling="standardize", model="cke")
        feature_dim = int(ctx["features"].shape[1])
    module = CKE(n_users=dataset.n_users, n_items=dataset.n_items, n_nodes=n_nodes, n_entities=dataset.n_entities,
                 n_relations=max(dataset.n_relations, 1), embedding_size=embedding_size,
                 kg_embedding_size=kg_embedding_size, kg_batch_size=kg_batch_size, kg_loss=kg_loss,
                 margin=float(margin), kg_normalize=bool(kg_normalize), feature_dim=feature_dim)
    return Built(module=module, ctx=ctx, default_loss_weights={"bpr": 1.0, "reg": 1e-2, "kg": 1.0, "kg_reg": 1e-2})
