"""jaxrec.losses: pure loss functions of arrays, each with its equation in the docstring.

Every loss is jit/vmap/grad-safe, checks its input shapes (a mismatch raises
``jaxrec.errors.DataError`` naming the argument) and takes its options as keywords. Losses
over examples accept ``where=`` (bool mask), ``weights=`` and ``reduction=`` ("mean", "sum",
"none"). A model returns its named unweighted terms; :func:`combine` weighs and sums them::

    total, terms = losses.combine(
        {"bpr": losses.bpr(pos, neg), "reg": losses.l2_mean_norm(u, i_pos, i_neg)},
        {"bpr": 1.0, "reg": 1e-4},
    )

Under data parallelism (``train.parallel: pmap``) each device holds a shard of the batch; every
reduction over batch rows goes through :func:`batch_sum` (the per-example losses' means and
sums, and the regularizers with ``over_batch=True``), which sums over devices before any
non-linear step, so each term equals its one-device value (see ``jaxrec.losses._parallel``).
"""

# Ranking (implicit feedback).
from jaxrec.losses._ranking import bpr as bpr
from jaxrec.losses._ranking import sampled_softmax as sampled_softmax
from jaxrec.losses._ranking import softmax_cross_entropy as softmax_cross_entropy

# Pointwise (ratings, clicks).
from jaxrec.losses._regression import binary_cross_entropy as binary_cross_entropy
from jaxrec.losses._regression import mse as mse
from jaxrec.losses._regression import rmse as rmse

# Self-supervised (two views).
from jaxrec.losses._contrastive import cosine_alignment as cosine_alignment
from jaxrec.losses._contrastive import cosine_logsumexp as cosine_logsumexp
from jaxrec.losses._contrastive import info_nce as info_nce
from jaxrec.losses._contrastive import info_nce_by_id as info_nce_by_id

# L2 regularizers, one per MMRec convention.
from jaxrec.losses._regularizers import l2_mean_norm as l2_mean_norm
from jaxrec.losses._regularizers import l2_mean_of_squares as l2_mean_of_squares
from jaxrec.losses._regularizers import l2_sum_of_squares as l2_sum_of_squares
from jaxrec.losses._regularizers import l2_sum_of_squares_per_example as l2_sum_of_squares_per_example

# Kernel-target alignment.
from jaxrec.losses._alignment import centered_kernel_alignment as centered_kernel_alignment
from jaxrec.losses._alignment import kernel_alignment as kernel_alignment

# Whole-model objectives.
from jaxrec.losses._objectives import side_mf_bpr as side_mf_bpr
from jaxrec.losses._objectives import side_mf_objective as side_mf_objective
from jaxrec.losses._objectives import subspace_objective as subspace_objective

# Batch reductions that stay exact when a step splits its batch over devices.
from jaxrec.losses._parallel import batch_gather as batch_gather
from jaxrec.losses._parallel import batch_mean as batch_mean
from jaxrec.losses._parallel import batch_sum as batch_sum
from jaxrec.losses._parallel import data_parallel as data_parallel

# Composing an objective from named terms.
from jaxrec.losses._combine import combine as combine
