"""BPR-MF: loss terms against a numpy re-implementation of MMRec's BPR, init, registry, learning."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import Interactions, MultimodalDataset
from jaxrec.errors import ConfigError
from jaxrec.models.bprmf import BPRMF
from jaxrec.models import normalize_batch

from _model_testing import init_compiled, assert_gradient_matches_central_differences, popularity_recall, train_tiny


def _tiny_dataset(n_users=6, n_items=9):
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(n_users), 3)
    items = np.concatenate([rng.choice(n_items, 3, replace=False) for _ in range(n_users)])
    split = np.tile([0, 1, 2], n_users)
    return MultimodalDataset("tiny", n_users, n_items, Interactions(users, items, split))


def _numpy_mmrec_bpr(user_table, item_table, users, pos, neg, weights=None):
    """MMRec's BPR.calculate_loss (src/models/bpr.py) in numpy, for one negative per row.

    mf_loss = -mean(log(sigmoid(pos - neg))); reg = (|U_b|_F + |P_b|_F + |N_b|_F) / B,
    restricted to the rows whose weight is 1 (MMRec's smaller last batch).
    """
    keep = np.ones(len(users), bool) if weights is None else weights > 0
    u, p, n = user_table[users[keep]], item_table[pos[keep]], item_table[neg[keep]]
    margin = (u * p).sum(1) - (u * n).sum(1)
    mf = np.mean(np.log1p(np.exp(-margin)))
    reg = (np.linalg.norm(u) + np.linalg.norm(p) + np.linalg.norm(n)) / keep.sum()
    return mf, reg


def _terms(params, module, batch):
    # The batch as the trainer hands it over (weights 1 unless given).
    return module.apply({"params": params}, {}, normalize_batch(batch), True, method="loss_terms")


def test_loss_terms_match_mmrec_bpr_in_numpy():
    module = BPRMF(n_users=7, n_items=11, embedding_size=5)
    rng = np.random.default_rng(1)
    params = {"user_embedding": rng.normal(size=(7, 5)).astype(np.float32),
              "item_embedding": rng.normal(size=(11, 5)).astype(np.float32)}
    users, pos, neg = rng.integers(0, 7, 8), rng.integers(0, 11, 8), rng.integers(0, 11, 8)
    batch = {"users": users, "pos_items": pos, "neg_items": neg[:, None]}
    terms = _terms(params, module, batch)
    mf, reg = _numpy_mmrec_bpr(params["user_embedding"], params["item_embedding"], users, pos, neg)
    np.testing.assert_allclose(float(terms["bpr"]), mf, rtol=1e-5)
    np.testing.assert_allclose(float(terms["reg"]), reg, rtol=1e-5)

    # Padding rows (weight 0) are left out of both terms and of the batch size.
    weights = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    terms = _terms(params, module, dict(batch, weights=weights))
    mf, reg = _numpy_mmrec_bpr(params["user_embedding"], params["item_embedding"], users, pos, neg, weights)
    np.testing.assert_allclose(float(terms["bpr"]), mf, rtol=1e-5)
    np.testing.assert_allclose(float(terms["reg"]), reg, rtol=1e-5)


def test_several_negatives_average_over_pairs():
    module = BPRMF(n_users=4, n_items=10, embedding_size=3)
    rng = np.random.default_rng(2)
    params = {"user_embedding": rng.normal(size=(4, 3)).astype(np.float32),
              "item_embedding": rng.normal(size=(10, 3)).astype(np.float32)}
    users, pos, neg = np.array([0, 1, 3]), np.array([2, 5, 9]), rng.integers(0, 10, (3, 4))
    terms = _terms(params, module, {"users": users, "pos_items": pos, "neg_items": neg})
    u, i = params["user_embedding"], params["item_embedding"]
    margins = (u[users] * i[pos]).sum(1)[:, None] - np.einsum("bd,bnd->bn", u[users], i[neg])
    np.testing.assert_allclose(float(terms["bpr"]), np.mean(np.log1p(np.exp(-margins))), rtol=1e-5)
    expected_reg = (np.linalg.norm(u[users]) + np.linalg.norm(i[pos]) + np.linalg.norm(i[neg])) / 3
    np.testing.assert_allclose(float(terms["reg"]), expected_reg, rtol=1e-5)


def test_gradient_matches_finite_differences():
    module = BPRMF(n_users=3, n_items=5, embedding_size=2)
    rng = np.random.default_rng(3)
    params = {"user_embedding": rng.normal(size=(3, 2)), "item_embedding": rng.normal(size=(5, 2))}
    batch = {"users": np.array([0, 2]), "pos_items": np.array([1, 4]), "neg_items": np.array([[3], [0]])}
    with jax.enable_x64():
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        loss = jax.jit(lambda p: sum(_terms(p, module, batch).values()))
        assert_gradient_matches_central_differences(loss, params, rtol=1e-5, atol=1e-8)


def test_xavier_normal_init_has_mmrec_variance():
    # torch.nn.init.xavier_normal_ on an (n, d) table: N(0, 2 / (n + d)), untruncated.
    module = BPRMF(n_users=3000, n_items=1000, embedding_size=64)
    variables = init_compiled(module, jax.random.PRNGKey(0), {}, False, method="encode")
    users = np.asarray(variables["params"]["user_embedding"])
    assert users.shape == (3000, 64)
    np.testing.assert_allclose(users.std(), np.sqrt(2 / (3000 + 64)), rtol=0.02)
    assert abs(users.mean()) < 1e-3
    # Untruncated: about 0.27% of a normal lies beyond 3 standard deviations.
    assert 0.001 < np.mean(np.abs(users) > 3 * users.std()) < 0.005


def test_registered_under_both_names_and_checks_arguments():
    dataset = _tiny_dataset()
    built = models.build("bpr", dataset, embedding_size=4)
    assert models.get_builder("bprmf") is models.get_builder("bpr")
    assert built.default_loss_weights == {"bpr": 1.0, "reg": 1.0}
    variables = init_compiled(built.module, jax.random.PRNGKey(0), built.ctx, False, method="encode")
    user_emb, item_emb = built.module.apply(variables, built.ctx, False, method="encode")
    assert user_emb.shape == (6, 4) and item_emb.shape == (9, 4)
    with pytest.raises(ConfigError, match="embedding_size"):
        models.build("bprmf", dataset, embeding_size=4)
    with pytest.raises(ConfigError, match="positive integer"):
        models.build("bprmf", dataset, embedding_size=0)


def test_learns_better_than_popularity(tmp_path):
    from jaxrec.data import make_synthetic

    dataset = make_synthetic(300, 200, n_interactions=9000, seed=3, popularity_skew=0.5, temperature=0.3)
    metrics = train_tiny(tmp_path / "run", dataset, "bprmf", {"embedding_size": 16}, epochs=25, learning_rate=0.02,
                         loss_weights={"reg": 0.01})
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.5 * baseline, (metrics["test"], baseline)
