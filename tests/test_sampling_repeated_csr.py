"""Negatives drawn from positives given as a CSR matrix whose rows repeat an item.

A CSR matrix need not be canonical: scipy keeps duplicate column indices in a row until
``sum_duplicates`` (``has_canonical_format`` False), and the sampler reads ``indptr``/``indices``
as they are. A repeated positive is one positive: each user's degree, the number of its free
items and therefore the uniform draw must not count it twice. Checked against Python sets.
"""

from collections import Counter

import numpy as np
from scipy import sparse, stats

from jaxrec.data import PositiveSets, sample_negatives

N_ITEMS = 9
# Rows sorted but with repeats: user 0 {1, 4}, user 1 {0, 2, 7, 8}, user 2 {} , user 3 {5}.
INDPTR = np.array([0, 4, 10, 10, 13])
INDICES = np.array([1, 1, 1, 4, 0, 2, 2, 7, 8, 8, 5, 5, 5])
POSITIVES = {0: {1, 4}, 1: {0, 2, 7, 8}, 2: set(), 3: {5}}


def non_canonical_csr():
    matrix = sparse.csr_matrix((np.ones(INDICES.size), INDICES, INDPTR), shape=(4, N_ITEMS))
    assert not matrix.has_canonical_format
    return matrix


def test_repeated_items_count_once():
    sets = PositiveSets(INDPTR, INDICES, N_ITEMS)
    np.testing.assert_array_equal(sets.degrees, [len(POSITIVES[u]) for u in range(4)])
    for user, items in POSITIVES.items():
        assert set(sets.indices[sets.indptr[user]:sets.indptr[user + 1]].tolist()) == items


def test_uniform_negatives_of_a_non_canonical_csr_are_uniform_over_the_free_items():
    users = np.repeat(np.arange(4), 3000)
    negatives = sample_negatives(0, users, N_ITEMS, non_canonical_csr(), n_neg=2)
    for user, positives in POSITIVES.items():
        drawn = negatives[users == user].ravel()
        free = sorted(set(range(N_ITEMS)) - positives)
        counts = Counter(drawn.tolist())
        assert set(counts) == set(free), user  # never a positive, every free item reachable
        assert stats.chisquare([counts[i] for i in free]).pvalue > 1e-4, user
