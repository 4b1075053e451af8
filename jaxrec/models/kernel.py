r"""Kernel recommender: items encoded by their modalities' kernel feature maps plus an ID embedding.

The item side is :class:`jaxrec.fusion.KernelEncoding`: the direct sum of the modalities'
explicit kernel feature maps :math:`\phi_m`, scaled by learnable non-negative modality weights
:math:`w_m = \operatorname{softplus}(\omega_m)`, followed by a learned linear map :math:`A`
(``projection=True``) into the d-dimensional embedding space:

.. math::
  \Phi(x_i) = \big[\sqrt{w_1}\, r_{i1} \phi_1(x_{i1}), \ldots, \sqrt{w_M}\, r_{iM} \phi_M(x_{iM})\big],
  \qquad q_i = t_i e_i + A\, \Phi(x_i), \qquad \hat y_{ui} = p_u^\top q_i,

with :math:`p_u, e_i` user and item ID embeddings, :math:`t_i = 1` for items with a train
interaction and :math:`r_{im} = 1` where the item has modality m. The content part's item-item
similarity is :math:`\Phi(x_i)^\top A^\top A\, \Phi(x_j)`; with :math:`A = I` (or
``projection=False``, where d must equal the feature width :math:`\sum_m F_m`) it is the
weighted combined kernel of multiple kernel learning,

.. math::
  \Phi(x_i)^\top \Phi(x_j) = \sum_m w_m\, r_{im} r_{jm}\, k_m(x_{im}, x_{jm}),

so the model is BPR-MF whose item factors live in (a learned projection of) the weighted sum
of the modalities' reproducing-kernel Hilbert spaces, and :math:`w_m` say how much each
modality's similarity counts. With a learned :math:`A` the weights are not identifiable (a
block of :math:`A` can absorb :math:`\sqrt{w_m}`); they then only reparametrize the
optimization, and are meaningful as kernel weights with ``projection=False``.

Feature maps (``kernels``, one per modality or one for all):
``linear``, ``cosine`` (unit rows) and ``polynomial`` (exact; its width grows as
:math:`d^\text{degree}`, so only for small d) are computed by ``KernelEncoding`` each step;
``rbf`` uses random Fourier features, drawn once in the builder from ``kernel_seed`` and
passed in ``ctx`` as a linear feature map (their inner products approximate
:math:`e^{-\gamma\lVert x - y\rVert^2}` with error :math:`O(D^{-1/2})`): ``KernelEncoding``
keeps its own draw in a non-trainable ``"constants"`` collection that the trainer, which
carries ``params`` only, does not hold.

Loss: BPR plus MMRec's ``EmbLoss`` on the batch's user vectors :math:`p_u` and full item
vectors :math:`q_i` (:func:`jaxrec.models._common.bpr_emb_loss`),
``loss_weights: {reg: λ}``. Items without
a train interaction (cold-start items) are scored from :math:`A\Phi(x_i)` alone: their ID
embedding is masked and they are never training negatives; ``id_dropout`` drops trained items'
ID embeddings at random in training, as in :mod:`jaxrec.models.fusion_mf`.

References:
  Gönen and Alpaydın, `Multiple Kernel Learning Algorithms
  <https://jmlr.org/papers/v12/gonen11a.html>`_, JMLR 2011; Rahimi and Recht, Random Features
  for Large-Scale Kernel Machines, NeurIPS 2007; Rendle et al., BPR, UAI 2009.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxrec import fusion as jfusion
from jaxrec.errors import ConfigError
from jaxrec.models._init import xavier_normal
from jaxrec.models._registry import Built, register
from jaxrec.models._modality_inputs import (batch_items, check_id_dropout, modality_inputs, with_id_dropout)
from jaxrec.models._common import (bpr_emb_loss, check_positive_int, masked_rows, rows_or_all, trained_item_mask)

_SPEC_KEYS = ("kind", "degree", "coef0", "gamma", "num_features")


class KernelMF(nn.Module):
    """ID embeddings plus a kernel encoding of the modalities (see the module docstring).

    ``ctx``: ``{"modalities": [M arrays (n_items, d_m)], "masks": [M bool (n_items,)],
    "trained": bool (n_items,)}`` (an RBF modality holds its random Fourier features).

    Attributes:
      n_users, n_items: table sizes.
      specs: the ``KernelEncoding`` spec of each modality's (ctx) features.
      embedding_size: d.
      projection: whether a learned map :math:`A` follows :math:`\\Phi`.
      id_dropout: probability of dropping an item's ID embedding in a training step.
    """

    n_users: int
    n_items: int
    specs: tuple[jfusion.KernelSpec, ...]
    embedding_size: int = 64
    projection: bool = True
    id_dropout: float = 0.0

    def setup(self):
        d = self.embedding_size
        self.user_embedding = self.param("user_embedding", xavier_normal, (self.n_users, d))
        self.item_embedding = self.param("item_embedding", xavier_normal, (self.n_items, d))
        self.kernel_encoding = jfusion.KernelEncoding(specs=self.specs, out_dim=d if self.projection else None)

    def _id_vectors(self, ctx, items):
        return masked_rows(self.item_embedding, ctx["trained"], items)

    def item_content(self, ctx, rows):
        """(R, d) kernel encodings :math:`A\\Phi(x_i)` of item ``rows`` (R,)."""
        xs = [jnp.asarray(x)[rows] for x in ctx["modalities"]]
        return self.kernel_encoding(xs, [jnp.asarray(m)[rows] for m in ctx["masks"]])

    def modality_weights(self):
        """The current modality weights :math:`w_m` (M,)."""
        return self.kernel_encoding.modality_weights()

    def encode(self, ctx, train: bool = False):
        """Users :math:`p_u` and items :math:`t_i e_i + A \\Phi(x_i)`, (n, d) each."""
        del train
        items = jnp.arange(self.n_items)
        return self.user_embedding, self._id_vectors(ctx, items) + self.item_content(ctx, items)

    def loss_terms(self, ctx, batch, train: bool = False):
        """``{"bpr", "reg"}`` for a batch (``users``, ``pos_items``, ``neg_items``, ``weights``)."""
        users = batch["users"]
        items, pairs = batch_items(batch, ctx["trained"])
        id_vectors = self._id_vectors(with_id_dropout(self, ctx, self.id_dropout, train), items)
        item_vectors = id_vectors + rows_or_all(lambda rows: self.item_content(ctx, rows), self.n_items, items)[0]
        p = self.user_embedding[users]
        scores = jnp.einsum("bd,bkd->bk", p, item_vectors)
        return bpr_emb_loss(p, item_vectors[:, 0], item_vectors[:, 1:], pairs, batch["weights"], per="pair",
                            scores=(scores[:, 0], scores[:, 1:]))


def _parse_specs(kernels, n_modalities: int) -> list[jfusion.KernelSpec]:
    if isinstance(kernels, (str, Mapping)):
        kernels = [kernels] * n_modalities
    if not isinstance(kernels, Sequence) or len(kernels) != n_modalities:
        raise ConfigError(f"model kernel: model.args.kernels must be one kernel or a list of {n_modalities} (one per "
                          f"modality); found {kernels!r}")
    specs = []
    for entry in kernels:
        options = {"kind": entry} if isinstance(entry, str) else dict(entry) if isinstance(entry, Mapping) else {}
        unknown = sorted(set(options) - set(_SPEC_KEYS))
        if unknown or "kind" not in options:
            raise ConfigError(f"model kernel: a kernel (model.args.kernels) is a kind name or a mapping with keys "
                              f"{_SPEC_KEYS} (kind required); found {entry!r}")
        try:
            specs.append(jfusion.KernelSpec(**options))
        except (ConfigError, TypeError, ValueError) as error:
            raise ConfigError(f"model kernel: model.args.kernels: {error}") from None
    return specs


@register("kernel", traced_args={"id_dropout": 0.0})
def build(dataset, *, embedding_size: int = 64, modalities: list[str] | None = None,
          feature_scaling: str = "standardize", kernels="cosine", projection: bool = True,
          kernel_seed: int = 0, id_dropout: float = 0.0) -> Built:
    """The kernel recommender for ``dataset``.

    Args:
      dataset: a :class:`~jaxrec.data.MultimodalDataset` with item modalities.
      embedding_size: d (64 as MMRec); without ``projection`` it must equal the total
        feature width.
      modalities: the modalities to encode, in order (default: all).
      feature_scaling: ``"standardize"`` (default, fitted on train items), ``"l2"`` or ``"none"``.
      kernels: one kernel for every modality or a list, one per modality; each a kind
        (``"linear"``, ``"cosine"``, ``"polynomial"``, ``"rbf"``) or a mapping of
        :class:`jaxrec.fusion.KernelSpec` fields, e.g. ``{kind: rbf, num_features: 1024}``.
      projection: learn :math:`A` (default) or use :math:`\\Phi` itself.
      kernel_seed: seed of the random Fourier draws (``rbf`` only).
      id_dropout: probability of dropping an item's ID embedding in a training step (default 0;
        see :mod:`jaxrec.models.fusion_mf`).

    Returns:
      :class:`~jaxrec.models.Built`, default weights ``{bpr: 1, reg: 1}``.
    """
    check_positive_int(embedding_size, "embedding_size", "kernel")
    if not isinstance(projection, bool):
        raise ConfigError(f"model kernel: model.args.projection must be true or false; found {projection!r}")
    if isinstance(kernel_seed, bool) or not isinstance(kernel_seed, int):
        raise ConfigError(f"model kernel: model.args.kernel_seed must be an integer; found {kernel_seed!r}")
    features, masks, names = modality_inputs(dataset, modalities, scaling=feature_scaling, model="kernel")
    specs = _parse_specs(kernels, len(features))
    keys = jax.random.split(jax.random.PRNGKey(kernel_seed), len(specs))
    effective = []
    for m, spec in enumerate(specs):
        if spec.kind == "rbf":
            draw = jfusion.init_random_fourier(keys[m], features[m].shape[1], num_features=spec.num_features,
                                               gamma=spec.gamma)
            mapped = np.asarray(jfusion.random_fourier_features(features[m], draw))
            features[m] = np.where(masks[m][:, None], mapped, 0.0).astype(np.float32)
            spec = jfusion.KernelSpec("linear")
        elif spec.kind == "polynomial" and spec.feature_dim(features[m].shape[1]) > jfusion.MAX_POLYNOMIAL_FEATURES:
            raise ConfigError(f"model kernel: the polynomial map of {names[m]!r} would have "
                              f"{spec.feature_dim(features[m].shape[1])} features; use rbf or a lower degree")
        effective.append(spec)
    width = sum(s.feature_dim(x.shape[1]) for s, x in zip(effective, features))
    if not projection and width != embedding_size:
        raise ConfigError(f"model kernel: without projection, embedding_size must equal the kernel feature "
                          f"width {width}; found {embedding_size}")
    module = KernelMF(n_users=dataset.n_users, n_items=dataset.n_items, specs=tuple(effective),
                      embedding_size=embedding_size, projection=projection,
                      id_dropout=check_id_dropout(id_dropout, "kernel"))
    ctx = {"modalities": features, "masks": masks, "trained": trained_item_mask(dataset)}
    return Built(module=module, ctx=ctx, default_loss_weights={"bpr": 1.0, "reg": 1.0})
