r"""L2 regularizers of embeddings, one function per convention found in MMRec.

MMRec (github.com/enoche/MMRec) uses four different "L2" terms under the one config key
``reg_weight``, so the same weight means different things in different models:

============================================  =================================================
function                                      MMRec models (file, term)
============================================  =================================================
:func:`l2_mean_norm`                          ``EmbLoss`` in ``src/common/loss.py``:
                                              :math:`\sum_k \lVert E_k \rVert_F / B` (norms,
                                              NOT squared). Used by ``bpr.py``, ``vbpr.py``
                                              (on the batch's user, positive and negative
                                              embeddings), ``lightgcn.py`` (the same rows of the
                                              layer-0 embeddings), ``bm3.py`` (on all user and
                                              item embeddings, B = n_items), and re-implemented
                                              in ``lgmrec.py`` (``reg_loss``).
:func:`l2_sum_of_squares` (``half=True``)     ``L2Loss`` in ``src/common/loss.py``:
                                              :math:`\tfrac12 \sum_k \lVert E_k \rVert_F^2`, not
                                              divided by the batch. Used by ``layergcn.py`` and
                                              ``selfcfed_lgn.py``.
:func:`l2_sum_of_squares_per_example`         :math:`\tfrac12 \sum_k \lVert E_k \rVert_F^2 / B`:
                                              ``lattice.py``, ``mgcn.py``, ``smore.py`` (inside
                                              ``bpr_loss``, B = config ``train_batch_size``) and
                                              ``mmgcf.py`` (B = ``len(users)``).
:func:`l2_mean_of_squares`                    :math:`\sum_k \operatorname{mean}(E_k^2)`:
                                              ``mmgcn.py``, ``grcn.py``, ``dualgnn.py``,
                                              ``dragon.py``.
============================================  =================================================

``freedom.py`` has no L2 term: its ``reg_weight`` weighs the two modality BPR losses
(:func:`jaxrec.losses.bpr` of the user embeddings against each projected modality's positive
and negative item features).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jaxrec._checks import as_float, check_separate_arrays
from jaxrec.losses._parallel import batch_sum


def _squared_norm(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(x))


def _safe_norm(x: jax.Array, total=jnp.sum) -> jax.Array:
    # The Frobenius norm with gradient 0 (a subgradient) instead of NaN at a zero array.
    squared = total(jnp.square(x))
    positive = squared > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def _batch(arrays: tuple[jax.Array, ...], batch_size: int | ArrayLike | None, over_batch: bool):
    if batch_size is not None:
        return batch_size
    last = arrays[-1]
    rows = last.shape[0] if last.ndim else 1
    # Over a batch split across devices, the rows of every device.
    return batch_sum(jnp.ones(rows, last.dtype)) if over_batch else rows


def l2_sum_of_squares(*arrays: ArrayLike, half: bool = False) -> jax.Array:
    r"""Sum of the squared entries of all arrays (optionally halved).

    .. math::
      R = c \sum_k \lVert E_k \rVert_F^2 = c \sum_k \sum_{ij} (E_k)_{ij}^2,
      \qquad c = \tfrac12 \text{ if half else } 1.

    ``half=True`` is MMRec's ``L2Loss`` (``layergcn.py``, ``selfcfed_lgn.py``) and the
    :math:`\tfrac12 \lambda \lVert\theta\rVert^2` whose gradient is :math:`\lambda\theta`;
    ``half=False`` is the :math:`\lambda \lVert\Theta\rVert^2` of BPR-Opt and of
    :func:`jaxrec.losses.side_mf_objective`.

    Args:
      *arrays: one or more arrays of any shapes.
      half: multiply by 1/2.

    Returns:
      A scalar.

    Raises:
      DataError: no arrays, or a list or tuple of arrays passed as one argument (it would be
        stacked into one array): pass them as separate arguments.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.l2_sum_of_squares(jnp.array([1.0, 2.0]), jnp.array([[2.0]])))  # 1 + 4 + 4
      9.0

    References:
      Rendle et al., `BPR: Bayesian Personalized Ranking from Implicit Feedback
      <https://arxiv.org/abs/1205.2618>`_, UAI 2009 (BPR-Opt's regularizer).
    """
    check_separate_arrays(arrays, "arrays", "l2_sum_of_squares")
    total = sum(_squared_norm(as_float(x)) for x in arrays)
    return 0.5 * total if half else total


def l2_mean_norm(*arrays: ArrayLike, batch_size: int | ArrayLike | None = None,
                 over_batch: bool = False) -> jax.Array:
    r"""MMRec's ``EmbLoss``: the sum of the arrays' Frobenius norms (not squared) over the batch.

    .. math::
      R = \frac{1}{B} \sum_k \lVert E_k \rVert_F,

    with :math:`B` the number of rows of the LAST array (as ``embeddings[-1].shape[0]`` in
    MMRec's ``src/common/loss.py``) unless ``batch_size`` is given. The norm's gradient at an
    all-zero array is taken as 0.

    Args:
      *arrays: one or more arrays, typically the batch's (B, d) user, positive-item and
        negative-item embeddings.
      batch_size: the divisor :math:`B` (a number, or a traced count of real rows in a
        padded batch); default: ``arrays[-1].shape[0]``.
      over_batch: the arrays are (this device's part of) the train step's batch rows: under
        data parallelism each squared norm sums every device's rows before the square root
        (:func:`jaxrec.losses.batch_sum`), and the default :math:`B` counts them all. False
        (default) for whole tables.

    Returns:
      A scalar.

    Raises:
      DataError: no arrays, or a list or tuple of arrays passed as one argument (it would be
        stacked into one array): pass them as separate arguments.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.l2_mean_norm(jnp.array([[3.0, 4.0], [0.0, 0.0]])))  # 5 / 2
      2.5

    References:
      Zhou, `MMRec: Simplifying Multimodal Recommendation <https://arxiv.org/abs/2302.03497>`_,
      2023 (``src/common/loss.py``, ``EmbLoss``).
    """
    check_separate_arrays(arrays, "arrays", "l2_mean_norm")
    arrays = tuple(as_float(x) for x in arrays)
    total = batch_sum if over_batch else jnp.sum
    return sum(_safe_norm(x, total) for x in arrays) / _batch(arrays, batch_size, over_batch)


def l2_sum_of_squares_per_example(
    *arrays: ArrayLike, batch_size: int | ArrayLike | None = None, half: bool = True, over_batch: bool = False
) -> jax.Array:
    r"""Half the sum of squared entries divided by the batch size (LATTICE / MGCN / SMORE).

    .. math::
      R = \frac{c}{B} \sum_k \lVert E_k \rVert_F^2, \qquad c = \tfrac12 \text{ if half else } 1,

    MMRec's ``regularizer = 1/2 (|u|^2 + |i^+|^2 + |i^-|^2) / batch_size`` in the ``bpr_loss``
    of ``lattice.py``, ``mgcn.py`` and ``smore.py`` (where :math:`B` is the configured
    ``train_batch_size``) and ``mmgcf.py`` (:math:`B` = the batch's number of users). With
    fixed-size batches both are ``arrays[-1].shape[0]``, the default.

    Args:
      *arrays: one or more arrays, typically the batch's (B, d) embeddings.
      batch_size: the divisor :math:`B`; default: ``arrays[-1].shape[0]``.
      half: multiply by 1/2 (default, as in MMRec).
      over_batch: the arrays are the train step's batch rows: the sums (and the default
        :math:`B`) span every device's rows under data parallelism.

    Returns:
      A scalar.

    Raises:
      DataError: no arrays, or a list or tuple of arrays passed as one argument (it would be
        stacked into one array): pass them as separate arguments.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.l2_sum_of_squares_per_example(jnp.array([[3.0, 4.0], [0.0, 0.0]])))  # 25/2/2
      6.25

    References:
      Zhang et al., `Mining Latent Structures for Multimedia Recommendation
      <https://arxiv.org/abs/2104.09036>`_ (LATTICE), ACM MM 2021.
    """
    check_separate_arrays(arrays, "arrays", "l2_sum_of_squares_per_example")
    arrays = tuple(as_float(x) for x in arrays)
    if not over_batch:
        return l2_sum_of_squares(*arrays, half=half) / _batch(arrays, batch_size, False)
    total = sum(batch_sum(jnp.square(x)) for x in arrays)
    return (0.5 * total if half else total) / _batch(arrays, batch_size, True)


def l2_mean_of_squares(*arrays: ArrayLike, over_batch: bool = False) -> jax.Array:
    r"""The sum over arrays of the mean squared entry (MMGCN / GRCN / DualGNN / DRAGON).

    .. math::
      R = \sum_k \frac{1}{|E_k|} \sum_{ij} (E_k)_{ij}^2,

    MMRec's ``(id_emb[users]**2 + id_emb[items]**2).mean()`` in ``mmgcn.py`` and ``grcn.py``
    (equal to this for arrays of one shape) and ``(preference[user]**2).mean()`` terms of
    ``dualgnn.py`` and ``dragon.py``.

    Args:
      *arrays: one or more arrays.
      over_batch: the arrays are the train step's batch rows: each mean spans every
        device's rows under data parallelism.

    Returns:
      A scalar.

    Raises:
      DataError: no arrays, or a list or tuple of arrays passed as one argument (it would be
        stacked into one array): pass them as separate arguments.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxrec import losses
      >>> float(losses.l2_mean_of_squares(jnp.array([1.0, 3.0]), jnp.array([2.0])))  # 5 + 4
      9.0

    References:
      Wei et al., `MMGCN: Multi-modal Graph Convolution Network for Personalized Recommendation
      of Micro-video <https://arxiv.org/abs/1908.07165>`_, ACM MM 2019.
    """
    check_separate_arrays(arrays, "arrays", "l2_mean_of_squares")
    if not over_batch:
        return sum(jnp.mean(jnp.square(as_float(x))) for x in arrays)
    return sum(batch_sum(jnp.square(as_float(x))) / batch_sum(jnp.ones(jnp.shape(x), jnp.float32)) for x in arrays)
