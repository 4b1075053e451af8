"""knn_edges(missing="self_loop"): an item without the modality gets ONE loop of weight 1 (its
row of the matrix is the unit row e_i), whatever the normalization and weighting -- so that
propagation hands it back its own embedding. Its other k - 1 slots also point at the item
itself (as invalid slots do) and must carry weight 0. Checked on the un-normalized matrix,
where a loop repeated over the slots would show up as k instead of 1.
"""

import numpy as np
import pytest

from jaxrec.data.graph import knn_edges, knn_neighbours

N, K = 8, 3


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("normalization", ["none", "rw", "sym"])
def test_a_missing_item_has_one_unit_loop(weighted, normalization):
    features = np.random.default_rng(0).standard_normal((N, 4)).astype(np.float32)
    mask = np.ones(N, bool)
    mask[[1, 6]] = False
    edges = knn_edges(knn_neighbours(features, K, mask=mask), weighted=weighted, normalization=normalization,
                      missing="self_loop")
    dense = edges.to_dense(N)
    for item in (1, 6):
        np.testing.assert_array_equal(dense[item], np.eye(N)[item])
        assert dense[:, item].sum() == 1.0  # no present item lists it as a neighbour
    assert edges.n_edges == N * K
