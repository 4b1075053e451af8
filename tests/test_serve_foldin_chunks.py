"""``bpr`` fold-in over more users than one device call takes (64): every user keeps its OWN
offset (the fixed columns, and for the propagating models the propagated part, which differs
from user to user) whichever call it lands in. Checked against closed forms and against the
documented objective's Adam steps computed in float64 numpy, for a user in the second call."""

import jax
import numpy as np

from jaxrec.serve._foldin import bpr_vectors

N_ITEMS, D = 30, 5


def _numpy_bpr_fold_in(item_emb, offset, free, history, n_items, *, steps=100, n_neg=64, lr=0.05, reg=0.01):
    """The module docstring's objective, minimized by Adam by hand in float64: only the
    negatives' draws are jax's (the fixed key 0, split once per step, shared by every user)."""
    emb = np.asarray(item_emb, np.float64)
    keys = jax.random.split(jax.random.PRNGKey(0), steps)
    v, m, s = np.zeros(emb.shape[1]), np.zeros(emb.shape[1]), np.zeros(emb.shape[1])
    for t in range(steps):
        negatives = np.asarray(jax.random.randint(keys[t], (n_neg,), 0, n_items))
        negatives = negatives[~np.isin(negatives, history)]
        u = offset + v * free
        z = (emb[negatives] @ u)[None, :] - (emb[history] @ u)[:, None]
        weight = 1 / (1 + np.exp(-z))
        grad = (weight[:, :, None] * (emb[negatives][None] - emb[history][:, None])).sum((0, 1)) / max(z.size, 1)
        grad = grad * free + 2 * reg * v * free
        m = 0.9 * m + 0.1 * grad
        s = 0.999 * s + 0.001 * grad * grad
        v = v - lr * (m / (1 - 0.9 ** (t + 1))) / (np.sqrt(s / (1 - 0.999 ** (t + 1))) + 1e-8)
    return offset + v * free


def _case(n_users=70):
    rng = np.random.default_rng(7)
    item_emb = rng.normal(size=(N_ITEMS, D)).astype(np.float32)
    offsets = rng.normal(size=(n_users, D)).astype(np.float32)  # a different offset per user
    histories = [np.sort(rng.choice(N_ITEMS, size=1 + u % 4, replace=False)) for u in range(n_users)]
    return item_emb, offsets, histories


def test_with_no_free_column_every_user_gets_its_own_offset_back():
    # v is zero where no column is free: the fold-in is the offset itself, row for row.
    item_emb, offsets, histories = _case()
    got = bpr_vectors(item_emb, offsets, np.zeros(D, np.float32), histories, N_ITEMS)
    np.testing.assert_array_equal(got, offsets)


def test_users_of_the_second_call_are_fitted_from_their_own_offsets():
    item_emb, offsets, histories = _case()
    free = np.array([1, 1, 1, 1, 0], np.float32)  # the last column fixed at each user's own offset
    got = bpr_vectors(item_emb, offsets, free, histories, N_ITEMS)
    np.testing.assert_array_equal(got[:, -1], offsets[:, -1])
    for user in (3, 64, 69):  # the first call's, and the second call's first and last
        expected = _numpy_bpr_fold_in(item_emb, offsets[user].astype(np.float64), free.astype(np.float64),
                                      histories[user], N_ITEMS)
        np.testing.assert_allclose(got[user], expected, rtol=0, atol=1e-4 * np.abs(expected).max())
