"""Device popularity negatives (``sample_negatives_jax`` with ``item_cdf``) for users whose CSR
segment is empty or starts above the candidate: the positive check must look only inside the
user's own segment, never at the previous user's last positive.

Users: 0 has positives {2, 4}, 1 has none, 2 has {5}. Item 4, user 0's last positive, is stored
just before the (empty) segment of user 1 and the segment of user 2, and is free for both.
The reference law is P(i | u) = w_i [i not in P_u] / sum_j w_j [j not in P_u], checked by a
chi-square test over the draws flagged exact, with Python sets for the positives.
"""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from jaxrec.data import DevicePositives, PositiveSets, sample_negatives_jax

N_ITEMS = 6
WEIGHTS = np.array([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
POSITIVES = {0: {2, 4}, 1: set(), 2: {5}}


def test_each_users_draws_follow_popularity_outside_its_own_positives():
    users = [u for u, items in POSITIVES.items() for _ in items]
    items = [i for u, its in POSITIVES.items() for i in sorted(its)]
    sets = PositiveSets.from_pairs(users, items, n_users=3, n_items=N_ITEMS)
    device = DevicePositives.from_sets(sets)
    query = np.repeat(np.arange(3), 6000)
    sample = jax.jit(sample_negatives_jax, static_argnames=("n_neg", "n_candidates"))
    negatives, exact = sample(jax.random.key(0), jnp.asarray(query, jnp.int32), device,
                              item_cdf=jnp.cumsum(jnp.asarray(WEIGHTS, jnp.float32)), n_candidates=8)
    negatives, exact = np.asarray(negatives)[:, 0], np.asarray(exact)[:, 0]
    for user, positives in POSITIVES.items():
        rows = query == user
        drawn = negatives[rows]
        assert not set(drawn.tolist()) & positives, user
        kept = drawn[exact[rows]]
        assert kept.size > 0.95 * rows.sum(), user  # 8 candidates: a fallback is rare here
        free = np.array([i for i in range(N_ITEMS) if i not in positives])
        counts = np.bincount(kept, minlength=N_ITEMS)[free]
        expected = WEIGHTS[free] / WEIGHTS[free].sum() * kept.size
        assert stats.chisquare(counts, expected).pvalue > 1e-4, (user, counts, expected)
