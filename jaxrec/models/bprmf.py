r"""BPR-MF: matrix factorization trained with the BPR pairwise loss (MMRec's ``BPR``).

A user's score for an item is the inner product of their embeddings,
:math:`\hat y_{ui} = p_u^\top q_i`. The loss terms, unweighted as the model contract asks:

.. math::
  \mathcal{L}_\text{bpr} = \frac{1}{|P|}\sum_{(u, i, j) \in P} \operatorname{softplus}
      (\hat y_{uj} - \hat y_{ui}), \qquad
  \mathcal{L}_\text{reg} = \frac{\lVert P_B \rVert_F + \lVert Q_{B^+} \rVert_F +
      \lVert Q_{B^-} \rVert_F}{B},

the second being MMRec's ``EmbLoss`` (Frobenius norms, not squared, of the batch's user,
positive-item and negative-item embedding matrices, over the batch size). MMRec's BPR
minimizes :math:`\mathcal{L}_\text{bpr} + \lambda\,\mathcal{L}_\text{reg}` with
:math:`\lambda` = ``reg_weight``, so ``loss_weights: {reg: λ}`` here means what
``reg_weight: λ`` means there. Embeddings start Xavier-normal as in MMRec
(``xavier_normal_initialization``: :math:`\mathcal{N}(0, 2 / (n + d))` for an
``(n, d)`` table).

References:
  Rendle et al., `BPR: Bayesian Personalized Ranking from Implicit Feedback
  <https://arxiv.org/abs/1205.2618>`_, UAI 2009; MMRec ``src/models/bpr.py`` and
  ``src/common/loss.py`` (github.com/enoche/MMRec).
"""

from __future__ import annotations

from flax import linen as nn

from jaxrec.models._common import batch_triples, bpr_emb_loss, check_positive_int, counted_pairs
from jaxrec.models._init import xavier_normal
from jaxrec.models._registry import Built, register


class BPRMF(nn.Module):
    """User and item embedding tables scored by inner product.

    Attributes:
      n_users, n_items: table sizes.
      embedding_size: d.
    """

    n_users: int
    n_items: int
    embedding_size: int = 64

    def setup(self):
        self.user_embedding = self.param("user_embedding", xavier_normal, (self.n_users, self.embedding_size))
        self.item_embedding = self.param("item_embedding", xavier_normal, (self.n_items, self.embedding_size))

    def encode(self, ctx, train: bool = False):
        """``(user_emb (n_users, d), item_emb (n_items, d))``; ``ctx`` is unused."""
        del ctx, train
        return self.user_embedding, self.item_embedding

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg"}`` for a contract batch (``jaxrec.models._registry``): padding rows
        count for nothing and :math:`B` is the number of real rows."""
        del ctx, train
        users, positives, negatives, weights = batch_triples(batch)
        return bpr_emb_loss(self.user_embedding[users], self.item_embedding[positives],
                            self.item_embedding[negatives], counted_pairs(batch), weights)


@register("bpr")
@register("bprmf")
def build(dataset, *, embedding_size: int = 64) -> Built:
    """BPR-MF for ``dataset`` (interactions only; modalities are ignored).

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` (its sizes are read).
      embedding_size: d, the embedding width (MMRec: 64).

    Returns:
      :class:`~jaxrec.models.Built` with an empty context and weights ``{bpr: 1, reg: 1}``
      (MMRec's BPR ``reg_weight`` chosen by validation on lfm2k is 1.0; set
      ``loss_weights.reg`` to change it).
    """
    check_positive_int(embedding_size, "embedding_size", "bprmf")
    module = BPRMF(n_users=dataset.n_users, n_items=dataset.n_items, embedding_size=embedding_size)
    return Built(module=module, ctx={}, default_loss_weights={"bpr": 1.0, "reg": 1.0})
