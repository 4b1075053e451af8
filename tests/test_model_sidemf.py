"""SideMF: its terms against numpy and against jaxrec.losses' side-MF objectives, feature
preparation, cold items scored from features alone, learning (warm and cold start; pmap parity: tests/test_model_contract.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import losses, models
from jaxrec.data import Interactions, Modality, MultimodalDataset, make_synthetic, split_dataset
from jaxrec.errors import ConfigError
from jaxrec.models.sidemf import SideMF, item_side_features, trained_item_mask

from _model_testing import assert_gradient_matches_central_differences, popularity_recall, train_tiny


def _rated_dataset(n_users=5, n_items=7, seed=0):
    """A tiny dataset with ratings and two modalities (one with a missing row); item 6 has
    no train interaction."""
    rng = np.random.default_rng(seed)
    pairs = sorted({(u, i) for u in range(n_users) for i in rng.choice(6, 3, replace=False)})
    users, items = np.array(pairs).T
    split = np.zeros(len(users), np.int8)
    split[-3:] = [1, 2, 2]
    users = np.append(users, [0, 1])
    items = np.append(items, [6, 6])
    split = np.append(split, [2, 1]).astype(np.int8)
    ratings = rng.integers(1, 6, len(users)).astype(np.float32)
    text = rng.normal(size=(n_items, 3)).astype(np.float32)
    image = rng.normal(3.0, 2.0, size=(n_items, 2)).astype(np.float32)
    image_mask = np.ones(n_items, bool)
    image_mask[2] = False
    modalities = {"text": Modality("text", text, np.ones(n_items, bool)),
                  "image": Modality("image", np.where(image_mask[:, None], image, 0.0), image_mask)}
    return MultimodalDataset("rated", n_users, n_items, Interactions(users, items, split, ratings=ratings),
                             modalities=modalities)


def _random_params(module, seed=1):
    rng = np.random.default_rng(seed)
    k, d = module.embedding_size, module.feature_dim
    return {"user_factors": rng.normal(size=(module.n_users, k)).astype(np.float32),
            "item_factors": rng.normal(size=(module.n_items, k)).astype(np.float32),
            "feature_map": rng.normal(size=(d, k)).astype(np.float32) * 0.3}


def test_features_standardized_on_train_items_and_missing_rows_zero():
    dataset = _rated_dataset()
    features, dims, names = item_side_features(dataset)
    assert dims == (3, 2) and names == ("text", "image")
    inter = dataset.interactions
    in_train = np.zeros(dataset.n_items, bool)
    in_train[inter.items[inter.split == 0]] = True
    for block, name in zip((features[:, :3], features[:, 3:]), names):
        mod = dataset.modalities[name]
        fit = mod.features[in_train & mod.mask].astype(np.float64)
        expected = (mod.features - fit.mean(0)) / fit.std(0)
        np.testing.assert_allclose(block[mod.mask], expected[mod.mask], rtol=1e-5, atol=1e-6)
        assert np.all(block[~mod.mask] == 0)
    raw, _, _ = item_side_features(dataset, ["image"], scaling="none")
    np.testing.assert_array_equal(raw, dataset.modalities["image"].features)
    unit, _, _ = item_side_features(dataset, ["text"], scaling="l2")
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(trained_item_mask(dataset), in_train)
    assert not in_train[6]


def test_ratings_objective_is_side_mf_objective():
    dataset = _rated_dataset()
    built = models.build("sidemf", dataset, embedding_size=4, objective="ratings")
    params = _random_params(built.module)
    inter = dataset.interactions
    observed = inter.split == 0
    batch = {"users": inter.users[observed], "pos_items": inter.items[observed],
             "ratings": inter.ratings[observed], "weights": np.ones(observed.sum(), np.float32)}
    terms = built.module.apply({"params": params}, built.ctx, batch, True, method="loss_terms")
    lam = 0.37
    total = observed.sum() * terms["mse"] + lam * terms["reg"]

    # Independently in numpy: sum_{(u,i) in Omega} (r - U_u . (t_i V_i + z_i W))^2 + lam (|U|^2 + |tV|^2 + |W|^2).
    U, V, W = (params[k].astype(np.float64) for k in ("user_factors", "item_factors", "feature_map"))
    Z = np.asarray(built.ctx["features"], np.float64)
    V = V * trained_item_mask(dataset)[:, None]
    Q = V + Z @ W
    R = np.zeros((dataset.n_users, dataset.n_items))
    M = np.zeros_like(R)
    R[batch["users"], batch["pos_items"]] = batch["ratings"]
    M[batch["users"], batch["pos_items"]] = 1
    expected = np.sum(M * (R - U @ Q.T) ** 2) + lam * (np.sum(U**2) + np.sum(V**2) + np.sum(W**2))
    np.testing.assert_allclose(float(total), expected, rtol=1e-5)
    library = losses.side_mf_objective(U, V, W, Z, R, M, lam)
    np.testing.assert_allclose(float(total), float(library), rtol=1e-5)

    # Padding rows (weight 0) change nothing.
    padded = {k: np.concatenate([v, v[:2]]) for k, v in batch.items()}
    padded["weights"][-2:] = 0
    padded["ratings"][-2:] = 99.0
    again = built.module.apply({"params": params}, built.ctx, padded, True, method="loss_terms")
    np.testing.assert_allclose(float(again["mse"]), float(terms["mse"]), rtol=1e-6)


def test_ratings_objective_needs_ratings():
    dataset = _rated_dataset()
    plain = dataset.replace(interactions=Interactions(dataset.interactions.users, dataset.interactions.items,
                                                      dataset.interactions.split))
    with pytest.raises(ConfigError, match="ratings"):
        models.build("sidemf", plain, objective="ratings")
    built = models.build("sidemf", dataset, embedding_size=2, objective="ratings")
    params = _random_params(built.module)
    with pytest.raises(ConfigError, match="ratings"):
        built.module.apply({"params": params}, built.ctx, {"users": np.array([0]), "pos_items": np.array([1])},
                           True, method="loss_terms")


# 6 rows: 18 item rows >= 7 items, so all items are mapped once and gathered; 2 rows: 6 item
# rows, so only the batch's rows are mapped. Both must give the same numbers.
@pytest.mark.parametrize("rows", [6, 2])
def test_bpr_terms_are_side_mf_bpr_and_skip_untrained_negatives(rows):
    dataset = _rated_dataset()
    built = models.build("sidemf", dataset, embedding_size=3)
    params = _random_params(built.module, seed=4)
    users = np.array([0, 1, 2, 3, 4, 0])[-rows:]
    pos = np.array([0, 1, 3, 4, 5, 2])[-rows:]
    neg = np.array([[1, 6], [6, 2], [0, 3], [5, 5], [2, 1], [3, 4]])[-rows:]
    inter = dataset.interactions
    untrained = set(range(dataset.n_items)) - set(inter.items[inter.split == 0].tolist())
    assert 6 in untrained
    weights = np.array([1, 1, 1, 1, 1, 0], np.float32)[-rows:]
    batch = {"users": users, "pos_items": pos, "neg_items": neg, "weights": weights}
    terms = built.module.apply({"params": params}, built.ctx, batch, True, method="loss_terms")

    U, V, W = (params[k].astype(np.float64) for k in ("user_factors", "item_factors", "feature_map"))
    Z = np.asarray(built.ctx["features"], np.float64)
    V = V * trained_item_mask(dataset)[:, None]
    Q = V + Z @ W
    pairs = [(u, i, j) for b, (u, i) in enumerate(zip(users, pos)) for j in neg[b] if weights[b] and j not in untrained]
    bpr = np.mean([np.log1p(np.exp(-(U[u] @ Q[i] - U[u] @ Q[j]))) for u, i, j in pairs])
    np.testing.assert_allclose(float(terms["bpr"]), bpr, rtol=1e-5)
    np.testing.assert_allclose(float(terms["reg"]), np.sum(U**2) + np.sum(V**2) + np.sum(W**2), rtol=1e-5)
    lam = 0.01
    where = ~np.isin(neg, list(untrained)) & (weights[:, None] > 0)
    library = losses.side_mf_bpr(U, V, W, Z, users, pos, neg, lam, where=where, reduction="mean")
    np.testing.assert_allclose(float(terms["bpr"] + lam * terms["reg"]), float(library), rtol=1e-5)

    batch_reg = models.build("sidemf", dataset, embedding_size=3, regularization="batch")
    terms = batch_reg.module.apply({"params": params}, batch_reg.ctx, batch, True, method="loss_terms")
    per_pair = [np.sum(U[u] ** 2) + np.sum(V[i] ** 2) + np.sum(V[j] ** 2) for u, i, j in pairs]
    np.testing.assert_allclose(float(terms["reg"]), np.mean(per_pair) + np.sum(W**2), rtol=1e-5)


def test_gradient_matches_finite_differences():
    dataset = _rated_dataset()
    for objective in ("bpr", "ratings"):
        built = models.build("sidemf", dataset, embedding_size=2, objective=objective, regularization="batch")
        batch = {"users": np.array([0, 3, 4]), "pos_items": np.array([1, 4, 0]),
                 "neg_items": np.array([[2], [5], [3]]), "ratings": np.array([4.0, 1.0, 2.0]),
                 "weights": np.ones(3)}
        with jax.enable_x64():
            params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), _random_params(built.module, seed=7))
            loss = jax.jit(lambda p: sum(built.module.apply({"params": p}, built.ctx, batch, True,
                                                            method="loss_terms").values()))
            assert_gradient_matches_central_differences(loss, params, rtol=1e-4, atol=1e-7)


def test_untrained_items_are_scored_from_features_alone():
    dataset = _rated_dataset()
    built = models.build("sidemf", dataset, embedding_size=3)
    params = _random_params(built.module)
    users, items = built.module.apply({"params": params}, built.ctx, False, method="encode")
    expected = np.asarray(built.ctx["features"]) @ params["feature_map"]
    np.testing.assert_allclose(np.asarray(items)[6], expected[6], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(items)[0], params["item_factors"][0] + expected[0], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(users), params["user_factors"])


def test_builder_checks_arguments():
    dataset = _rated_dataset()
    with pytest.raises(ConfigError, match="objective"):
        models.build("sidemf", dataset, objective="pointwise")
    with pytest.raises(ConfigError, match="regularization"):
        models.build("sidemf", dataset, regularization="l1")
    with pytest.raises(ConfigError, match="feature_scaling"):
        models.build("sidemf", dataset, feature_scaling="minmax")
    with pytest.raises(ConfigError, match="no modality 'audio'"):
        models.build("sidemf", dataset, modalities=["audio"])
    with pytest.raises(ConfigError, match="needs item modalities"):
        models.build("sidemf", dataset.replace(modalities={}))
    with pytest.raises(ConfigError, match="embedding_size"):
        models.build("sidemf", dataset, embedding_size=0)
    built = models.build("sidemf", dataset)
    assert isinstance(built.module, SideMF) and built.default_loss_weights == {"bpr": 1.0, "reg": 1e-5}


# ---- learning ---------------------------------------------------------------------------

_SYNTHETIC = dict(n_users=300, n_items=200, n_interactions=9000, seed=3, popularity_skew=0.5, temperature=0.3)


def _train(tmp_path, dataset, *, split=None, parallel="none", epochs=25):
    return train_tiny(tmp_path / f"run_{parallel}", dataset, "sidemf", {"embedding_size": 16}, epochs=epochs,
                      learning_rate=0.01, loss_weights={"reg": 1e-4}, split=split, parallel=parallel)


def test_learns_better_than_popularity(tmp_path):
    dataset = make_synthetic(**_SYNTHETIC)
    metrics = _train(tmp_path, dataset)
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.5 * baseline, (metrics["test"], baseline)


def test_cold_start_items_beat_popularity(tmp_path):
    from jaxrec.data import cold_items

    # 600 items: 60 new test items, so that a top-20 list is a real choice among them.
    dataset = split_dataset(make_synthetic(**dict(_SYNTHETIC, n_items=600)), "cold_start_items", holdout=0.2, seed=0)
    metrics = _train(tmp_path, dataset)
    test_items = cold_items(dataset).test
    # The best popularity ranking of the new items there can be: by their TEST counts (it
    # peeks at the answers, so no real system has it).
    test_counts = np.bincount(dataset.split_pairs("test")[:, 1], minlength=dataset.n_items).astype(np.float32)
    oracle = popularity_recall(dataset, test_items, test_counts)
    assert oracle > 20 / len(test_items)  # the oracle itself beats a random ranking
    assert metrics["test"]["recall@20"] > 1.3 * oracle, (metrics["test"], oracle)
