"""A float64 numpy reference of the ``bpr`` fold-in (``jaxrec.serve._foldin``), shared by the
serving tests: the documented objective's Adam steps written out by hand."""

import jax
import numpy as np


def numpy_bpr_fold_in(item_emb, offset, free, history, n_items, *, steps=100, n_neg=64, lr=0.05, reg=0.01):
    """The documented objective's Adam steps in float64 numpy: only the negatives' draws are
    jax's (the fixed key, split once per step); softplus gradient, ridge, Adam by hand."""
    emb = np.asarray(item_emb, np.float64)
    keys = jax.random.split(jax.random.PRNGKey(0), steps)
    v, m, s = np.zeros(emb.shape[1]), np.zeros(emb.shape[1]), np.zeros(emb.shape[1])
    for t in range(steps):
        negatives = np.asarray(jax.random.randint(keys[t], (n_neg,), 0, n_items))
        negatives = negatives[~np.isin(negatives, history)]  # drawn outside the history
        u = offset + v * free
        z = (emb[negatives] @ u)[None, :] - (emb[history] @ u)[:, None]
        weight = 1 / (1 + np.exp(-z))
        grad = (weight[:, :, None] * (emb[negatives][None] - emb[history][:, None])).sum((0, 1)) / max(z.size, 1)
        grad = grad * free + 2 * reg * v * free
        m = 0.9 * m + 0.1 * grad
        s = 0.999 * s + 0.001 * grad * grad
        v = v - lr * (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(s / (1 - 0.999 ** (t + 1))) + 1e-8)
    return offset + v * free
