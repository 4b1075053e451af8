"""FREEDOM's per-epoch pruning is DEGREE-SENSITIVE (MMRec's ``torch.multinomial`` over
:math:`1/\\sqrt{d_u d_i}`): an edge between two degree-1 nodes (weight 1) is kept far more often
than an edge inside a dense block of degree-6 nodes (weight 1/6). Uniform pruning would keep
every edge with probability floor(E (1 - p)) / E = 18/37."""

import jax
import numpy as np

from jaxrec import models
from jaxrec.data import Interactions, Modality, MultimodalDataset


def _dataset():
    """User 0 - item 0 alone (degrees 1, 1); users 1..6 x items 1..6 (degrees 6): 37 train pairs."""
    users = [0] + [u for u in range(1, 7) for _ in range(1, 7)]
    items = [0] + [i for _ in range(1, 7) for i in range(1, 7)]
    inter = Interactions(np.array(users), np.array(items), np.zeros(len(users), np.int8))
    features = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
    return MultimodalDataset("blocks", 7, 7, inter, {"image": Modality("image", features, np.ones(7, bool))})


def test_pruning_keeps_low_degree_edges_more_often():
    data = _dataset()
    built = models.build("freedom", data, embedding_size=2, feat_embed_dim=2, knn_k=2, dropout=0.5,
                         graph_cache="none")
    key = jax.random.PRNGKey(0)
    kept_lone, kept_block, draws = 0, 0.0, 150
    for epoch in range(draws):
        graph = built.epoch_update(None, built.ctx, epoch, jax.random.fold_in(key, epoch))["train_graph"]
        rows, cols = np.asarray(graph.rows), np.asarray(graph.cols)
        assert rows.size == 2 * 18  # floor(37 * 0.5) pairs, both directions
        users_side = rows < 7
        pairs = set(zip(rows[users_side].tolist(), (cols[users_side] - 7).tolist()))
        kept_lone += (0, 0) in pairs
        kept_block += (len(pairs) - ((0, 0) in pairs)) / 36
    # Sampling 18 of 37 without replacement, weights 1 (one edge) and 1/6 (36 edges): the lone
    # edge is drawn first with probability 1/7 and survives the 18 draws ~92% of the time.
    assert kept_lone / draws > 0.8, kept_lone / draws
    assert kept_block / draws < 0.5
