"""``bpr`` fold-in over more users than one device call takes (64): every user keeps its OWN
offset (the fixed columns, and for the propagating models the propagated part, which differs
from user to user) whichever call it lands in. Checked against closed forms and against the
documented objective's Adam steps computed in float64 numpy, for a user in the second call."""

import numpy as np

from jaxrec.serve._foldin import bpr_vectors

from _foldin_reference import numpy_bpr_fold_in

N_ITEMS, D = 30, 5


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
        expected = numpy_bpr_fold_in(item_emb, offsets[user].astype(np.float64), free.astype(np.float64),
                                      histories[user], N_ITEMS)
        np.testing.assert_allclose(got[user], expected, rtol=0, atol=1e-4 * np.abs(expected).max())
