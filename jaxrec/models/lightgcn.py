r"""LightGCN: linear propagation over the user-item graph, layer mean, BPR (MMRec's ``LightGCN``).

With :math:`E^{(0)} = [P; Q]` the stacked (n_users + n_items, d) user and item embeddings and
:math:`\hat A = D^{-1/2} A D^{-1/2}` the symmetric-normalized adjacency of the TRAIN pairs,
:math:`A = \begin{pmatrix} 0 & R \\ R^\top & 0 \end{pmatrix}` (no self-loops; a node without
train interactions has an empty row and keeps only its layer-0 embedding, scaled by
:math:`1/(K+1)`),

.. math::
  E^{(k+1)} = \hat A E^{(k)}, \qquad
  \bar E = \frac{1}{K+1} \sum_{k=0}^{K} E^{(k)} = [\bar P; \bar Q], \qquad
  \hat y_{ui} = \bar p_u^\top \bar q_i .

Loss terms, unweighted as the model contract asks, for a batch of triples :math:`(u, i, j)`:

.. math::
  \mathcal{L}_\text{bpr} = \frac{1}{|P|}\sum_{(u,i,j)} \operatorname{softplus}
      (\hat y_{uj} - \hat y_{ui}), \qquad
  \mathcal{L}_\text{reg} = \frac{\lVert P^{(0)}_B \rVert_F + \lVert Q^{(0)}_{B^+} \rVert_F +
      \lVert Q^{(0)}_{B^-} \rVert_F}{B},

the regularizer being MMRec's ``EmbLoss`` (:func:`jaxrec.losses.l2_mean_norm`: Frobenius norms,
not squared) of the batch's LAYER-0 (ego) user, positive and negative rows, so
``loss_weights: {reg: λ}`` means MMRec's ``reg_weight: λ``. Tables start Xavier-uniform as in
MMRec (``nn.init.xavier_uniform_``: :math:`U(\pm\sqrt{6 / (n + d)})` for an (n, d) table).

The normalized graph is built once on the host from the training split and handed to the
model in ``ctx["graph"]`` (a :class:`~jaxrec.data.graph.FixedGraph`, row-sorted and symmetric),
so it is an argument of the compiled step, never a constant baked into it; propagation is
:func:`jaxrec.data.graph.lightgcn_propagate` (``segment_sum`` over the edges; the gradient is
propagated over the same graph, :math:`\hat A^\top = \hat A`, instead of JAX's scatter-add).

Deviations from MMRec: its ``BPRLoss`` is :math:`-\log(10^{-10} + \sigma(\cdot))`; softplus is
the same up to that 1e-10. MMRec adds 1e-7 to every degree before :math:`d^{-1/2}`; here a
zero degree maps to 0 (both leave empty rows empty; the 1e-7 changes nothing at float32
precision for a positive degree).

References:
  He et al., `LightGCN: Simplifying and Powering Graph Convolution Network for
  Recommendation <https://arxiv.org/abs/2002.02126>`_, SIGIR 2020; MMRec
  ``src/models/lightgcn.py`` (github.com/enoche/MMRec).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from jaxrec.data import graph as jgraph
from jaxrec.models._common import (batch_triples, bpr_emb_loss, check_nonnegative_int, check_positive_int,
                                   chunk_size_for, counted_pairs, train_graph)
from jaxrec.models._init import xavier_uniform
from jaxrec.models._registry import Built, register

class LightGCN(nn.Module):
    """LightGCN (see the module docstring).

    ``ctx``: ``{"graph": FixedGraph}``, the row-sorted normalized adjacency over the
    ``n_users + n_items`` nodes (users first).

    Attributes:
      n_users, n_items: table sizes.
      embedding_size: d.
      n_layers: K, propagation layers (0 is matrix factorization).
    """

    n_users: int
    n_items: int
    embedding_size: int = 64
    n_layers: int = 1

    def setup(self):
        self.user_embedding = self.param("user_embedding", xavier_uniform, (self.n_users, self.embedding_size))
        self.item_embedding = self.param("item_embedding", xavier_uniform, (self.n_items, self.embedding_size))

    def propagated(self, ctx):
        """The layer mean :math:`\\bar E`, split into ``(users (n_users, d), items (n_items, d))``."""
        ego = jnp.concatenate([self.user_embedding, self.item_embedding], axis=0)
        mean, _ = jgraph.lightgcn_propagate(ctx["graph"], ego, self.n_layers, indices_are_sorted=True,
                                            chunk_size=chunk_size_for(self.embedding_size))
        return mean[:self.n_users], mean[self.n_users:]

    def encode(self, ctx, train: bool = False):
        """``(user_emb (n_users, d), item_emb (n_items, d))``, the propagated layer means."""
        del train
        return self.propagated(ctx)

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg"}`` for a contract batch (``jaxrec.models._registry``)."""
        del train
        users, positives, negatives, weights = batch_triples(batch)
        user_mean, item_mean = self.propagated(ctx)
        ego = (self.user_embedding[users], self.item_embedding[positives], self.item_embedding[negatives])
        return bpr_emb_loss(user_mean[users], item_mean[positives], item_mean[negatives], counted_pairs(batch),
                            weights, reg_rows=ego)


@register("lightgcn")
def build(dataset, *, embedding_size: int = 64, n_layers: int = 1) -> Built:
    """LightGCN for ``dataset`` (interactions only; modalities are ignored).

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset`; its TRAIN pairs make the graph.
      embedding_size: d (MMRec: 64).
      n_layers: K >= 0 (MMRec's grid: 1-4; chosen on lfm2k by validation: 1).

    Returns:
      :class:`~jaxrec.models.Built` with ``ctx = {"graph": FixedGraph}`` and weights
      ``{bpr: 1, reg: 1e-2}`` (MMRec's ``reg_weight`` chosen by validation on lfm2k).
    """
    check_positive_int(embedding_size, "embedding_size", "lightgcn")
    check_nonnegative_int(n_layers, "n_layers", "lightgcn")
    module = LightGCN(n_users=dataset.n_users, n_items=dataset.n_items, embedding_size=embedding_size,
                      n_layers=n_layers)
    return Built(module=module, ctx={"graph": train_graph(dataset, form="fixed")}, default_loss_weights={"bpr": 1.0, "reg": 1e-2})
