r"""Ranking losses for implicit feedback: BPR, full softmax and sampled softmax with log-Q correction."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec.errors import DataError
from jaxrec._checks import as_float, check_index_range, check_rank, check_shape
from jaxrec.losses._reduction import reduce_losses
from jaxrec.losses._parallel import batch_sum


def bpr(
    pos_scores: ArrayLike,
    neg_scores: ArrayLike,
    *,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "mean",
    over_batch: bool = True,
) -> jax.Array:
    r"""Bayesian Personalized Ranking loss: a positive should outscore each of its negatives.

    .. math::
      \mathcal{L} = -\frac{1}{|P|} \sum_{(b, j) \in P} \ln \sigma\big(s^+_b - s^-_{bj}\big)
                  = \frac{1}{|P|} \sum_{(b, j) \in P} \operatorname{softplus}\big(s^-_{bj} - s^+_b\big),

    over all pairs :math:`P` of a positive :math:`b` and one of its negatives :math:`j`. It is
    computed as a softplus, so margins of :math:`\pm 10^4` give finite values and gradients.
    MMRec's ``BPRLoss`` computes :math:`-\ln(10^{-10} + \sigma(\cdot))` instead, which agrees
    except that it saturates near 23 for margins below about -23.

    Args:
      pos_scores: (B,) scores of the positive items.
      neg_scores: (B,) one negative per positive, or (B, n_neg) several negatives per positive.
      where: optional bool mask, (B,) per positive or the shape of ``neg_scores`` per pair;
        masked-out pairs are left out of the loss and of the mean's count.
      weights: optional per-positive (B,) or per-pair weights (a weighted mean).
      reduction: ``"mean"`` (default) over pairs, ``"sum"``, or ``"none"`` for the
        per-pair losses with the shape of ``neg_scores``.
      over_batch: the examples are the train step's batch rows (default): under data
        parallelism the reduction runs over every device's rows (:func:`jaxrec.losses.batch_sum`).
        False for examples every device holds alike when the reduction is a ``"sum"``.

    Returns:
      A scalar, or the per-pair losses for ``reduction="none"``.

    Raises:
      DataError: ``pos_scores`` not (B,), ``neg_scores`` not (B,) or (B, n_neg), or ``where`` /
        ``weights`` of any shape other than (B,) or ``neg_scores``' shape (or a scalar): a
        mask of the wrong length is never broadcast across the negatives.
      ConfigError: an unknown ``reduction``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.bpr(jnp.array([2.0, 0.0]), jnp.array([0.0, 0.0])))  # (softplus(-2) + ln 2) / 2
      0.41...

    References:
      Rendle et al., `BPR: Bayesian Personalized Ranking from Implicit Feedback
      <https://arxiv.org/abs/1205.2618>`_, UAI 2009.
    """
    pos_scores = as_float(pos_scores)
    neg_scores = as_float(neg_scores)
    check_rank(pos_scores, 1, "pos_scores")
    check_rank(neg_scores, (1, 2), "neg_scores")
    check_shape(neg_scores, (pos_scores.shape[0],) + (None,) * (neg_scores.ndim - 1), "neg_scores")
    margins = pos_scores.reshape(pos_scores.shape + (1,) * (neg_scores.ndim - 1)) - neg_scores
    return reduce_losses(jax.nn.softplus(-margins), where=where, weights=weights, reduction=reduction,
                         sum_fn=batch_sum if over_batch else jnp.sum, leading_only=True)


def softmax_cross_entropy(
    logits: ArrayLike,
    targets: ArrayLike,
    *,
    normalize_targets: bool = False,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "mean",
    over_batch: bool = True,
) -> jax.Array:
    r"""Cross-entropy of a softmax over the full item catalogue.

    With integer targets :math:`t_b` (one next/held-out item per row):

    .. math::
      \ell_b = -\log \frac{\exp(z_{b t_b})}{\sum_{j=1}^{n} \exp(z_{bj})}.

    With multi-hot (or any non-negative) targets :math:`y_b \in \mathbb{R}^n`, the multinomial
    log-likelihood of Mult-VAE (not normalized by the number of positives):

    .. math::
      \ell_b = -\sum_{j=1}^{n} y_{bj} \log \operatorname{softmax}(z_b)_j,

    or, with ``normalize_targets=True``, the cross-entropy to the distribution
    :math:`y_b / \sum_j y_{bj}` (a row with no positives then contributes 0).

    Args:
      logits: (B, n_items) scores of every item.
      targets: (B,) integer item indices, or (B, n_items) float multi-hot / count targets.
      normalize_targets: for dense targets, divide each row by its sum first.
      where: optional (B,) bool mask of the rows to include.
      weights: optional (B,) row weights.
      reduction: ``"mean"`` (default) over rows, ``"sum"``, or ``"none"`` for (B,) losses.
      over_batch: the examples are the train step's batch rows (default): under data
        parallelism the reduction runs over every device's rows (:func:`jaxrec.losses.batch_sum`).
        False for examples every device holds alike when the reduction is a ``"sum"``.

    Returns:
      A scalar, or (B,) per-row losses for ``reduction="none"``.

    Raises:
      DataError: inputs of the wrong shapes (named), or ``where`` / ``weights`` not of shape
        (B,) (or scalars).
      ConfigError: an unknown ``reduction``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.softmax_cross_entropy(jnp.zeros((1, 4)), jnp.array([2])))  # log 4
      1.386...

    References:
      Covington et al., `Deep Neural Networks for YouTube Recommendations
      <https://dl.acm.org/doi/10.1145/2959100.2959190>`_, RecSys 2016;
      Liang et al., `Variational Autoencoders for Collaborative Filtering
      <https://arxiv.org/abs/1802.05814>`_, WWW 2018 (multinomial likelihood).
    """
    logits = as_float(logits)
    check_rank(logits, 2, "logits")
    targets = jnp.asarray(targets)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    if jnp.issubdtype(targets.dtype, jnp.integer):
        check_shape(targets, (logits.shape[0],), "targets")
        check_index_range(targets, logits.shape[1], "targets")
        per_row = -jnp.take_along_axis(log_probs, targets[:, None], axis=-1)[:, 0]
    elif jnp.issubdtype(targets.dtype, jnp.floating) or targets.dtype == jnp.bool_:
        check_shape(targets, logits.shape, "targets")
        targets = targets.astype(logits.dtype)
        if normalize_targets:
            totals = jnp.sum(targets, axis=-1, keepdims=True)
            targets = targets / jnp.where(totals > 0, totals, 1.0)
        per_row = -jnp.sum(targets * log_probs, axis=-1)
    else:
        raise DataError(
            "unsupported target dtype", field="targets", found=f"dtype {targets.dtype}",
            expected="integer indices (B,) or float/bool multi-hot targets (B, n_items)",
        )
    return reduce_losses(per_row, where=where, weights=weights, reduction=reduction,
                         sum_fn=batch_sum if over_batch else jnp.sum, leading_only=True)


def sampled_softmax(
    pos_logits: ArrayLike,
    neg_logits: ArrayLike,
    neg_log_q: ArrayLike,
    *,
    pos_log_q: ArrayLike | None = None,
    accidental_hits: ArrayLike | None = None,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "mean",
    over_batch: bool = True,
) -> jax.Array:
    r"""Softmax cross-entropy over the positive and sampled negatives, with log-Q correction.

    Sampling negatives with probability :math:`q_j` biases a softmax over the sample towards
    popular items; subtracting :math:`\log q_j` from each logit corrects it:

    .. math::
      s^c_{bj} = s_{bj} - \log q_j, \qquad
      \ell_b = -\log \frac{\exp(s^c_{b+})}{\exp(s^c_{b+}) + \sum_{j \in S_b,\, j \notin H_b} \exp(s^c_{bj})},

    where :math:`s^c_{b+} = s_{b+} - \log q_{b+}` when ``pos_log_q`` is given (Yi et al.'s
    in-batch setting, where positives are themselves sampled by popularity, and TensorFlow's
    ``sampled_softmax_loss``) and :math:`s_{b+}` otherwise, and :math:`H_b` are the accidental
    hits: sampled negatives that are in fact a positive of row :math:`b`, which are dropped
    from the denominator. Pass ``log q`` rather than ``q`` so that rare items cannot underflow;
    for uniform sampling over :math:`n` items :math:`\log q = -\log n` (with the positive also
    corrected, a constant that cancels).

    Args:
      pos_logits: (B,) logits of the positives.
      neg_logits: (B, S) logits of the sampled negatives (S shared or per-row samples).
      neg_log_q: (S,) (shared samples) or (B, S) log sampling probabilities of the negatives.
      pos_log_q: optional (B,) log sampling probabilities of the positives.
      accidental_hits: optional (B, S) bool, True where a sampled negative is a positive of
        that row; those negatives are removed from the softmax.
      where: optional (B,) bool mask of the rows to include.
      weights: optional (B,) row weights.
      reduction: ``"mean"`` (default) over rows, ``"sum"``, or ``"none"`` for (B,) losses.
      over_batch: the examples are the train step's batch rows (default): under data
        parallelism the reduction runs over every device's rows (:func:`jaxrec.losses.batch_sum`).
        False for examples every device holds alike when the reduction is a ``"sum"``.

    Returns:
      A scalar, or (B,) per-row losses for ``reduction="none"``.

    Raises:
      DataError: inputs of the wrong shapes (named), or ``where`` / ``weights`` not of shape
        (B,) (or scalars).
      ConfigError: an unknown ``reduction``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> # one negative with q = 1/2: -log(e^1 / (e^1 + e^(0 + log 2))) = log(1 + 2/e)
      >>> float(losses.sampled_softmax(jnp.array([1.0]), jnp.array([[0.0]]), jnp.log(jnp.array([0.5]))))
      0.551...

    References:
      Yi et al., `Sampling-Bias-Corrected Neural Modeling for Large Corpus Item Recommendations
      <https://dl.acm.org/doi/10.1145/3298689.3346996>`_, RecSys 2019;
      Bengio and Senécal, `Adaptive Importance Sampling to Accelerate Training of a Neural
      Probabilistic Language Model <https://ieeexplore.ieee.org/document/4443871>`_, IEEE TNN 2008;
      Jean et al., `On Using Very Large Target Vocabulary for Neural Machine Translation
      <https://arxiv.org/abs/1412.2007>`_, ACL 2015.
    """
    pos_logits = as_float(pos_logits)
    neg_logits = as_float(neg_logits)
    neg_log_q = as_float(neg_log_q)
    check_rank(pos_logits, 1, "pos_logits")
    batch = pos_logits.shape[0]
    check_shape(neg_logits, (batch, None), "neg_logits")
    n_sampled = neg_logits.shape[1]
    check_rank(neg_log_q, (1, 2), "neg_log_q")
    check_shape(neg_log_q, (n_sampled,) if neg_log_q.ndim == 1 else (batch, n_sampled), "neg_log_q")
    corrected_neg = neg_logits - neg_log_q
    corrected_pos = pos_logits
    if pos_log_q is not None:
        pos_log_q = as_float(pos_log_q)
        check_shape(pos_log_q, (batch,), "pos_log_q")
        corrected_pos = pos_logits - pos_log_q
    if accidental_hits is not None:
        check_shape(accidental_hits, (batch, n_sampled), "accidental_hits")
        # -inf drops the hit from the logsumexp; the positive column keeps every row finite.
        corrected_neg = jnp.where(jnp.asarray(accidental_hits, bool), -jnp.inf, corrected_neg)
    all_logits = jnp.concatenate([corrected_pos[:, None], corrected_neg], axis=1)
    per_row = jax.nn.logsumexp(all_logits, axis=1) - corrected_pos
    return reduce_losses(per_row, where=where, weights=weights, reduction=reduction,
                         sum_fn=batch_sum if over_batch else jnp.sum, leading_only=True)
