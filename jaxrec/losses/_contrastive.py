r"""Self-supervised losses between two views: InfoNCE and BM3-style cosine alignment."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax
from jax.typing import ArrayLike

from jaxrec.errors import ConfigError
from jaxrec._checks import (as_float, check_index_range, check_integer, check_rank, check_same_shape,
                            check_scalar_option)
from jaxrec.losses._reduction import check_where_weights, reduce_losses
from jaxrec.losses._parallel import batch_gather, batch_sum, current_axis


def _normalize_rows(x: jax.Array, eps: float) -> jax.Array:
    # x / max(||x||, eps) as torch's F.normalize; the norm is taken of max(|x|^2, eps^2) so that
    # a zero row has a finite gradient (sqrt is not differentiable at 0).
    squared = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x / jnp.sqrt(jnp.maximum(squared, eps * eps))


def _checked_views(a: ArrayLike, b: ArrayLike, temperature, loss: str) -> tuple[jax.Array, jax.Array]:
    """``(a, b)`` as float (n, d) arrays of one shape, after checking the temperature is a scalar > 0."""
    check_scalar_option(temperature, f"{loss} temperature")
    if not isinstance(temperature, jax.core.Tracer) and not float(temperature) > 0:
        raise ConfigError(f"{loss} temperature must be > 0, got {temperature!r}")
    a = as_float(a)
    b = as_float(b).astype(a.dtype)
    check_rank(a, 2, "a")
    check_same_shape(a, b, "a", "b")
    return a, b


def info_nce(
    a: ArrayLike,
    b: ArrayLike,
    temperature: float,
    *,
    symmetric: bool = False,
    eps: float = 1e-12,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "mean",
    over_batch: bool = True,
    mask_negatives: bool = False,
) -> jax.Array:
    r"""InfoNCE between paired rows: row i of ``a`` should match row i of ``b``, not the others.

    With rows L2-normalized, :math:`\hat a_i = a_i / \max(\lVert a_i \rVert, \epsilon)`,

    .. math::
      \ell_i = -\log \frac{\exp(\hat a_i^\top \hat b_i / \tau)}
                         {\sum_{j=1}^{B} \exp(\hat a_i^\top \hat b_j / \tau)},
      \qquad \mathcal{L} = \frac{1}{B} \sum_i \ell_i,

    the cross-entropy of each row's cosine similarities to all rows of ``b`` with its own pair
    as the target (the positive is in the denominator, as in MMRec's MGCN/SMORE ``InfoNCE``).
    With ``symmetric=True`` the loss is :math:`\tfrac12(\ell^{a \to b}_i + \ell^{b \to a}_i)`
    per row (CLIP's form).

    Args:
      a: (B, d) first view.
      b: (B, d) second view, row-paired with ``a``.
      temperature: :math:`\tau > 0`.
      symmetric: also contrast each row of ``b`` against all rows of ``a`` and average.
      eps: lower bound of a row's norm when normalizing (zero rows stay finite).
      where: optional (B,) bool mask of the rows whose loss is included (masked rows still act
        as negatives of the others).
      weights: optional (B,) row weights.
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` for (B,) per-row losses.
      over_batch: the rows are the train step's batch rows (default): under data parallelism
        every device's rows of ``b`` are negatives (:func:`jaxrec.losses.batch_gather`) and the
        reduction runs over all rows. False for tables every device holds whole.
      mask_negatives: rows left out by ``where`` / ``weights`` (weight 0, e.g. a padded
        batch's padding) are also nobody's negatives , so
        they change nothing at all (their logits become a huge negative number).

    Returns:
      A scalar, or (B,) per-row losses for ``reduction="none"``.

    Raises:
      ConfigError: a ``temperature`` that is not a scalar (a number or a 0-d array), or a
        concrete one that is not > 0; an unknown ``reduction``.
      DataError: ``a`` / ``b`` not (B, d) arrays of one shape, or ``where`` / ``weights`` not
        of shape (B,) (or scalars).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> eye = jnp.eye(2)  # cos = 1 to the pair, 0 to the other: log(1 + e^(-1/0.5))
      >>> float(losses.info_nce(eye, eye, 0.5))
      0.126...

    References:
      van den Oord, Li and Vinyals, `Representation Learning with Contrastive Predictive Coding
      <https://arxiv.org/abs/1807.03748>`_, 2018;
      Chen et al., `A Simple Framework for Contrastive Learning of Visual Representations
      <https://arxiv.org/abs/2002.05709>`_, ICML 2020.
    """
    a, b = _checked_views(a, b, temperature, "info_nce")
    check_where_weights(a.shape[:1], where, weights, leading_only=True)
    keep = None
    if mask_negatives:
        keep = jnp.ones(a.shape[0], bool)
        if where is not None:
            keep = keep & jnp.asarray(where, bool)
        if weights is not None:
            keep = keep & (jnp.asarray(weights) != 0)
        where = keep
    a_hat, b_hat = _normalize_rows(a, eps), _normalize_rows(b, eps)
    if over_batch and current_axis() is not None:
        # This device's rows of a data-parallel batch: every device's rows are the negatives.
        b_all = batch_gather(b_hat)[0]
        a_all = batch_gather(a_hat)[0] if symmetric else None
        keep_all = None if keep is None else batch_gather(keep)[0]
    else:
        b_all, a_all, keep_all = b_hat, a_hat, keep
    # 1/tau scales the (B, d) rows, not the (B, B) logits (no extra pass over them).
    positives = jnp.sum(a_hat * b_hat, axis=-1) / temperature
    per_row = cosine_logsumexp(a_hat @ (b_all / temperature).T, temperature, keep=keep_all) - positives
    if symmetric:
        backward = cosine_logsumexp(b_hat @ (a_all / temperature).T, temperature, keep=keep_all)
        per_row = 0.5 * (per_row + backward - positives)
    return reduce_losses(per_row, where=where, weights=weights, reduction=reduction,
                         sum_fn=batch_sum if over_batch else jnp.sum, leading_only=True)


def info_nce_by_id(
    a: ArrayLike,
    b: ArrayLike,
    ids: ArrayLike,
    temperature: float,
    *,
    eps: float = 1e-12,
    weights: ArrayLike | None = None,
    mask_negatives: bool = False,
    over_batch: bool = True,
) -> jax.Array:
    r""":func:`info_nce` of the batch rows ``a[ids]`` and ``b[ids]`` of two (n, d) tables, computed
    on the tables' distinct rows when the table is no larger than the batch.

    A row's loss depends on its id alone, and a negative counts once per batch row that holds it
    (MMRec's MGCN ``InfoNCE`` on ``embeds[ids]``: a repeated id is repeated in the denominator),
    so with :math:`W_k = \sum_{b: i_b = k} w_b` (the anchors' weight of id :math:`k`) and
    :math:`c_k` the number of batch rows holding id :math:`k` (only those of nonzero weight with
    ``mask_negatives``),

    .. math::
      \mathcal{L} = \frac{\sum_k W_k \ell_k}{\sum_b w_b}, \qquad
      \ell_k = \log \sum_{k'} c_{k'} e^{\hat a_k^\top \hat b_{k'} / \tau} - \hat a_k^\top \hat b_k / \tau,

    the same value as the (B, B) form, with an (n, n) logits matrix and no (B, d) gathers (or
    their scatter-add gradients) when :math:`n \le B`: on Last.fm 2K (1,425 items, 1,858 users,
    B = 2048) MGCN's two terms; a larger table falls back to ``info_nce(a[ids], b[ids], ...)``.
    Under data parallelism the ids of every device's rows are negatives (:math:`c` summed over
    devices) and each device's rows are its anchors, as :func:`info_nce` with ``over_batch``; the
    table form is used when n is at most this device's rows (it then has fewer logits than the
    gathered form).

    Args:
      a: (n, d) table of the first view.
      b: (n, d) table of the second view, row-paired with ``a``.
      ids: (B,) int row ids of the batch.
      temperature: :math:`\tau > 0`.
      eps: lower bound of a row's norm when normalizing.
      weights: optional (B,) row weights (default 1).
      mask_negatives: rows of weight 0 (padding) are nobody's negatives either.
      over_batch: the ids are the train step's batch rows (default): under data parallelism
        every device's rows are negatives and the mean runs over all of them. False for rows
        that every device holds alike (as :func:`info_nce`'s).

    Returns:
      A scalar: the weighted mean over the batch rows.

    Raises:
      ConfigError: a ``temperature`` that is not a scalar, or a concrete one that is not > 0.
      DataError: ``a`` / ``b`` not (n, d) arrays of one shape; ``ids`` not a (B,) array of an
        integer dtype, or (concrete ids only; traced ids cannot be inspected) an id outside
        [0, n); ``weights`` not of shape (B,).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> table, ids = jnp.eye(3), jnp.array([0, 2, 2])
      >>> round(float(losses.info_nce_by_id(table, table, ids, 0.5)), 4)
      0.5856
      >>> round(float(losses.info_nce(table[ids], table[ids], 0.5)), 4)
      0.5856

    References:
      van den Oord, Li and Vinyals, `Representation Learning with Contrastive Predictive Coding
      <https://arxiv.org/abs/1807.03748>`_, 2018; Yu et al., `Multi-View Graph Convolutional Network
      for Multimedia Recommendation <https://arxiv.org/abs/2308.03588>`_, ACM MM 2023 (MGCN, whose
      in-batch InfoNCE over repeated ids this computes).
    """
    a, b = _checked_views(a, b, temperature, "info_nce_by_id")
    check_rank(ids, 1, "ids")
    check_integer(ids, "ids")
    check_index_range(ids, a.shape[0], "ids")
    ids = jnp.asarray(ids)
    n_rows, n_batch = a.shape[0], ids.shape[0]
    check_where_weights((n_batch,), None, weights, leading_only=True)
    if n_rows > n_batch:
        return info_nce(a[ids], b[ids], temperature, eps=eps, weights=weights, mask_negatives=mask_negatives,
                        over_batch=over_batch)
    row_weights = jnp.ones(n_batch, a.dtype) if weights is None else jnp.asarray(weights, a.dtype)
    negatives = (row_weights != 0).astype(a.dtype) if mask_negatives else jnp.ones(n_batch, a.dtype)
    counts = jax.ops.segment_sum(negatives, ids, num_segments=n_rows)
    axis = current_axis() if over_batch else None
    if axis is not None:  # every device's rows are negatives
        counts = lax.psum(counts, axis)
    counts = lax.stop_gradient(counts)
    anchor_weights = jax.ops.segment_sum(row_weights, ids, num_segments=n_rows)
    a_hat, b_hat = _normalize_rows(a, eps), _normalize_rows(b, eps)
    positives = jnp.sum(a_hat * b_hat, axis=-1) / temperature
    per_id = cosine_logsumexp(a_hat @ (b_hat / temperature).T, temperature, keep=counts) - positives
    # An id no row holds has weight 0; the mask keeps a non-finite value of it out of the sum.
    return reduce_losses(per_id, where=anchor_weights != 0, weights=anchor_weights,
                         sum_fn=batch_sum if over_batch else jnp.sum)


# The logit of a masked negative on the row-maximum path: exp() of it is 0 next to any real
# logit, and unlike -inf it leaves a row whose negatives are all masked finite.
_MASKED = -1e30


def cosine_logsumexp(logits: ArrayLike, temperature, *, keep: ArrayLike | None = None) -> jax.Array:
    r"""Row-wise log-sum-exp of cosine logits over the kept columns, shifted by their bound.

    For logits :math:`x = \cos / \tau` (last axis) and a column mask :math:`m` (``keep``; all
    columns by default),

    .. math::
      \operatorname{lse}(x) = \log \sum_k m_k e^{x_k}
        = \frac{1}{\tau} + \log \sum_k m_k e^{x_k - 1/\tau},

    shifted by the logits' bound :math:`1/\tau` instead of the row maximum -- the same value up
    to rounding: every :math:`e^{x - 1/\tau}` lies in :math:`[e^{-2/\tau}, 1]`, so nothing
    overflows and no term that matters underflows (:math:`e^{-10}` at :math:`\tau` = 0.2). That
    saves the pass that finds the maximum, and the mask is a factor inside the sum instead of a
    masked copy of the logits. Below :math:`\tau = 1/40` (:math:`e^{-2/\tau} < e^{-80}`, near
    float32's smallest normal number) a row of low cosines could sum to 0, so there the usual
    row-maximum shift is used, masked columns set to -1e30. A traced temperature (a batched
    search's per-trial value) picks between the two at run time (``lax.cond``: only the chosen
    one runs), so each trial computes what its own run computes.

    Args:
      logits: (..., K) cosine similarities divided by ``temperature``.
      temperature: :math:`\tau > 0`, a Python number or a traced scalar.
      keep: optional (K,) or broadcastable bool mask of the columns summed, or nonnegative
        column multiplicities :math:`m_k` (a float array: each column counts :math:`m_k` times,
        :func:`info_nce_by_id`'s repeated negatives).

    Returns:
      (...,) the log-sum-exp per row; a row with no kept column gives a finite value, not -inf:
      :math:`\log(\text{float32 tiny}) + 1/\tau` with the :math:`1/\tau` shift (-82.34 at
      :math:`\tau` = 0.2), -1e30 on the row-maximum path (:math:`\tau < 1/40`).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> x = jnp.asarray([[1.0, 0.0, -1.0]]) / 0.5  # cosines 1, 0, -1 at tau 0.5
      >>> round(float(losses.cosine_logsumexp(x, 0.5)[0]), 4)  # log(e^2 + 1 + e^-2)
      2.1429
      >>> round(float(losses.cosine_logsumexp(x, 0.5, keep=jnp.asarray([True, True, False]))[0]), 4)
      2.1269

    References:
      The log-sum-exp of InfoNCE (van den Oord, Li and Vinyals, `Representation Learning with
      Contrastive Predictive Coding <https://arxiv.org/abs/1807.03748>`_, 2018) over cosine
      logits, whose bound :math:`1/\tau` replaces the row maximum as the shift.
    """
    logits = jnp.asarray(logits)

    def row_maximum(logits):
        if keep is not None:
            kept = jnp.asarray(keep)
            if kept.dtype == jnp.bool_:
                logits = jnp.where(kept, logits, _MASKED)
            else:  # multiplicities: log m_k added to the column's logits
                logits = jnp.where(kept > 0, logits + jnp.log(jnp.where(kept > 0, kept, 1.0)), _MASKED)
        return jax.nn.logsumexp(logits, axis=-1)

    def bound(logits, shift):
        terms = jnp.exp(logits - shift)
        if keep is not None:
            terms = terms * jnp.asarray(keep, logits.dtype)
        total = jnp.sum(terms, axis=-1)
        return jnp.log(jnp.maximum(total, jnp.finfo(logits.dtype).tiny)) + shift

    if isinstance(temperature, jax.core.Tracer):
        temperature = jnp.asarray(temperature, logits.dtype)
        return jax.lax.cond(2.0 / temperature > 80.0, lambda x: row_maximum(x),
                            lambda x: bound(x, 1.0 / temperature), logits)
    if 2.0 / float(temperature) > 80.0:
        return row_maximum(logits)
    return bound(logits, 1.0 / float(temperature))


def cosine_alignment(
    online: ArrayLike,
    target: ArrayLike,
    *,
    eps: float = 1e-8,
    where: ArrayLike | None = None,
    weights: ArrayLike | None = None,
    reduction: str = "mean",
    over_batch: bool = True,
) -> jax.Array:
    r"""One minus the cosine similarity of online rows to stop-gradient target rows (BM3).

    .. math::
      \ell_i = 1 - \frac{o_i^\top \operatorname{sg}(t_i)}
                        {\max(\lVert o_i \rVert, \epsilon)\, \max(\lVert t_i \rVert, \epsilon)},
      \qquad \mathcal{L} = \frac{1}{B}\sum_i \ell_i = 1 - \overline{\cos},

    in :math:`[0, 2]`, 0 when every pair is aligned. :math:`\operatorname{sg}` is
    ``jax.lax.stop_gradient``: no gradient flows into ``target``, as in BM3's
    ``1 - cosine_similarity(online, target.detach()).mean()`` (MMRec ``src/models/bm3.py``).
    The "1 -" only shifts the value: the negative-cosine form :math:`-\overline{\cos}` of
    SimSiam and of MMRec's ``selfcfed_lgn.py`` (``loss_fn``) has the same gradient.

    Args:
      online: (B, d) predictions of the online branch.
      target: (B, d) targets; treated as constants.
      eps: lower bound of each norm.
      where: optional (B,) bool mask of the rows to include.
      weights: optional (B,) row weights.
      reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` for (B,) values of :math:`1 - \cos`.
      over_batch: the examples are the train step's batch rows (default): under data
        parallelism the reduction runs over every device's rows (:func:`jaxrec.losses.batch_sum`).
        False for examples every device holds alike when the reduction is a ``"sum"``.

    Returns:
      A scalar, or (B,) per-row values for ``reduction="none"``.

    Raises:
      DataError: ``online`` / ``target`` not (B, d) arrays of one shape, or ``where`` /
        ``weights`` not of shape (B,) (or scalars).
      ConfigError: an unknown ``reduction``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.cosine_alignment(jnp.array([[1.0, 0.0], [1.0, 0.0]]), jnp.array([[2.0, 0.0], [0.0, 3.0]])))
      0.5

    References:
      Zhou et al., `Bootstrap Latent Representations for Multi-modal Recommendation
      <https://arxiv.org/abs/2207.05969>`_, WWW 2023;
      Grill et al., `Bootstrap Your Own Latent <https://arxiv.org/abs/2006.07733>`_, NeurIPS 2020.
    """
    online = as_float(online)
    target = jax.lax.stop_gradient(as_float(target).astype(online.dtype))
    check_rank(online, 2, "online")
    check_same_shape(online, target, "online", "target")
    per_row = 1.0 - jnp.sum(_normalize_rows(online, eps) * _normalize_rows(target, eps), axis=-1)
    return reduce_losses(per_row, where=where, weights=weights, reduction=reduction,
                         sum_fn=batch_sum if over_batch else jnp.sum, leading_only=True)
