"""Neural fusion models (attention, gated, ensemble, early): scores against numpy re-implementations,
the factorized encode against direct scoring, attention over present modalities only, cold items,
gradients, learning, and pmap on four devices against one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrec import models
from jaxrec.data import make_synthetic, split_dataset
from jaxrec.errors import ConfigError
from jaxrec.models._modality_inputs import presence_patterns

from _model_testing import (compiled_apply, pmap_parity_run, popularity_recall, randomized_params,
                            tiny_multimodal_dataset, train_tiny)


# Presence of (text, image, audio) per item: five patterns, item 3 has no modality at all.
_PRESENCE = np.array([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1], [1, 1, 0], [1, 1, 1], [0, 0, 1]], bool)
_VARIANTS = [
    ("attention", {}),
    ("attention", {"attention_hidden": [3]}),
    ("gated", {"gate_context": "user"}),
    ("gated", {"gate_context": "item"}),
    ("ensemble", {"weighting": "softmax"}),
    ("ensemble", {"weighting": "nonneg"}),
    ("fusion_mf", {"fusion": "early"}),
]


def _tiny_dataset(n_users=5):
    """8 items with three modalities, varied presence (_PRESENCE); item 7 is never trained."""
    return tiny_multimodal_dataset(_PRESENCE, [("text", 3), ("image", 2), ("audio", 4)], n_users)


def _dense(params, x):
    return x @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"], np.float64)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _numpy_scores(name, options, params, ctx):
    """All (n_users, n_items) scores from the parameters, with loops over users and items."""
    fusion = options.get("fusion", name)
    P = np.asarray(params["user_embedding"], np.float64)
    t = np.asarray(ctx["trained"])
    E = np.asarray(params["item_embedding"], np.float64) * t[:, None]
    xs = [np.asarray(x, np.float64) for x in ctx["modalities"]]
    r = np.stack(ctx["masks"], axis=1)
    n_users, n_items, M = P.shape[0], E.shape[0], len(xs)
    if fusion == "early":
        joined = np.concatenate([x * r[:, m:m + 1] for m, x in enumerate(xs)] + [r.astype(float)], axis=1)
        H = _dense(params["early"]["encoder"]["dense_0"], joined)
        return P @ (E + H).T
    if fusion == "gated" and options["gate_context"] == "item":
        H = np.zeros_like(E)
        for m, x in enumerate(xs):
            v = _dense(params["item_gates"][f"project_{m}"], x)
            g = _sigmoid(_dense(params["item_gates"][f"gate_{m}"], np.concatenate([E, v], axis=1)))
            H += r[:, m:m + 1] * g * v
        return P @ (E + H).T
    V = [r[:, m:m + 1] * _dense(params[f"encoders_{m}"]["dense_0"], x) for m, x in enumerate(xs)]
    scores = P @ E.T
    for u in range(n_users):
        if fusion == "attention":
            hidden = P[u]
            layers = sorted(params["attention"])
            for k, layer in enumerate(layers):
                hidden = _dense(params["attention"][layer], hidden)
                if k + 1 < len(layers):
                    hidden = np.tanh(hidden)
            z = hidden
        for i in range(n_items):
            if fusion == "attention":
                if r[i].any():
                    a = np.where(r[i], np.exp(z - z[r[i]].max()), 0.0)
                    scores[u, i] += sum(a[m] / a.sum() * P[u] @ V[m][i] for m in range(M))
            elif fusion == "gated":
                for m in range(M):
                    gate = _sigmoid(_dense(params[f"user_gates_{m}"], P[u]))
                    scores[u, i] += r[i, m] * (gate * P[u]) @ V[m][i]
            else:
                mixer = params["mixer"]
                if options["weighting"] == "softmax":
                    w = np.where(r[i], np.exp(np.asarray(mixer["logits"], np.float64)), 0.0)
                    w = w / w.sum() if w.sum() else w
                else:
                    w = r[i] * np.log1p(np.exp(np.asarray(mixer["raw_weights"], np.float64)))
                theta = [np.asarray(params[f"user_embedding_{m}"], np.float64) for m in range(M)]
                scores[u, i] += sum(w[m] * theta[m][u] @ V[m][i] for m in range(M))
    return scores


def _numpy_attention_vectors(params, ctx):
    """Linear attention: (n_users, d) user vectors and (n_users, n_items, d) item vectors
    t_i e_i + sum_m alpha_um(i) v_im."""
    P = np.asarray(params["user_embedding"], np.float64)
    E = np.asarray(params["item_embedding"], np.float64) * np.asarray(ctx["trained"])[:, None]
    r = np.stack(ctx["masks"], axis=1)
    V = [r[:, m:m + 1] * _dense(params[f"encoders_{m}"]["dense_0"], np.asarray(x, np.float64))
         for m, x in enumerate(ctx["modalities"])]
    z = _dense(params["attention"]["dense_0"], P)
    Q = np.repeat(E[None], len(P), axis=0)
    for u in range(len(P)):
        for i in range(len(E)):
            if r[i].any():
                a = np.where(r[i], np.exp(z[u] - z[u][r[i]].max()), 0.0)
                Q[u, i] += sum(a[m] / a.sum() * V[m][i] for m in range(len(V)))
    return P, Q


@pytest.mark.parametrize("name, options", _VARIANTS)
def test_encode_and_direct_scores_match_numpy(name, options):
    dataset = _tiny_dataset()
    built = models.build(name, dataset, embedding_size=4, **options)
    params = randomized_params(built)
    expected = _numpy_scores(name, options, params, built.ctx)
    user_emb, item_emb = compiled_apply(built.module, params, built.ctx, False, method="encode")
    np.testing.assert_allclose(np.asarray(user_emb) @ np.asarray(item_emb).T, expected, rtol=2e-5, atol=2e-5)
    users = np.repeat(np.arange(dataset.n_users), dataset.n_items)
    items = np.tile(np.arange(dataset.n_items), dataset.n_users)[:, None]
    direct = compiled_apply(built.module, params, built.ctx, users, items, method="score_pairs")
    np.testing.assert_allclose(np.asarray(direct).reshape(expected.shape), expected, rtol=2e-5, atol=2e-5)

    # Absent rows may hold anything, NaN included: nothing changes.
    poisoned = dict(built.ctx, modalities=[np.where(mask[:, None], x, np.nan)
                                           for x, mask in zip(built.ctx["modalities"], built.ctx["masks"])])
    dirty_tables = compiled_apply(built.module, params, poisoned, False, method="encode")
    for clean, dirty in zip((user_emb, item_emb), dirty_tables):
        np.testing.assert_array_equal(np.asarray(clean), np.asarray(dirty))


def test_pattern_blocks_width():
    patterns, index = presence_patterns([_PRESENCE[:, m] for m in range(3)])
    assert len(patterns) == 5 and index[3] == -1
    assert [patterns[k] for k in index[[0, 1, 7]]] == [(True, True, True), (True, False, False), (False, False, True)]
    built = models.build("attention", _tiny_dataset(), embedding_size=4)
    user_emb, item_emb = compiled_apply(built.module, randomized_params(built), built.ctx, False, method="encode")
    # d * (1 + sum of pattern sizes): 1 + (3 + 1 + 2 + 2 + 1) = 10 blocks.
    assert user_emb.shape == (5, 40) and item_emb.shape == (8, 40)
    complete = make_synthetic(30, 20, n_interactions=200, dims={"a": 3, "b": 2}, seed=0)
    built = models.build("attention", complete, embedding_size=4)
    _, item_emb = compiled_apply(built.module, randomized_params(built), built.ctx, False, method="encode")
    assert item_emb.shape == (20, 12)  # every item has both modalities: d (1 + M)


def test_attention_weights_sum_to_one_over_present_modalities():
    built = models.build("attention", _tiny_dataset(), embedding_size=4, attention_hidden=[3])
    params = randomized_params(built, seed=5, scale=1.5)
    users = np.arange(5)
    items = np.tile(np.arange(8), (5, 1))
    weights = np.asarray(compiled_apply(built.module, params, built.ctx, users, items, method="attention_weights"))
    logits = np.asarray(compiled_apply(built.module, params, params["user_embedding"], method="attention_logits"))
    for u in users:
        for i in range(8):
            present = _PRESENCE[i]
            if not present.any():
                np.testing.assert_array_equal(weights[u, i], 0.0)
                continue
            expected = np.where(present, np.exp(logits[u] - logits[u][present].max()), 0.0)
            np.testing.assert_allclose(weights[u, i], expected / expected.sum(), rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(weights[u, i].sum(), 1.0, rtol=1e-6)
            assert np.all(weights[u, i][~present] == 0)
    assert np.ptp(weights[:, 0, 0]) > 1e-3  # really user-conditioned


def test_cold_items_scored_from_features_and_never_negatives():
    dataset = _tiny_dataset()
    built = models.build("attention", dataset, embedding_size=4)
    assert not built.ctx["trained"][7] and built.ctx["trained"][:7].all()
    params = randomized_params(built)
    zeroed = dict(params, item_embedding=np.zeros_like(params["item_embedding"]))
    _, items = compiled_apply(built.module, params, built.ctx, False, method="encode")
    _, content_only = compiled_apply(built.module, zeroed, built.ctx, False, method="encode")
    np.testing.assert_array_equal(np.asarray(items)[7], np.asarray(content_only)[7])
    assert not np.allclose(np.asarray(items)[0], np.asarray(content_only)[0])

    # The loss: BPR over the pairs whose negative is trained and whose row is real, and
    # MMRec's EmbLoss (norms, not squared, over the pair count) of those pairs' ID vectors.
    users, pos = np.array([0, 1, 2, 3]), np.array([0, 1, 2, 4])
    neg = np.array([[7, 3], [5, 7], [1, 6], [0, 2]])
    weights = np.array([1, 1, 1, 0], np.float32)
    terms = compiled_apply(built.module, params, built.ctx, {"users": users, "pos_items": pos, "neg_items": neg,
                                                              "weights": weights}, True, method="loss_terms")
    P, Q = _numpy_attention_vectors(params, built.ctx)
    S = np.einsum("ud,uid->ui", P, Q)
    pairs = [(b, j) for b in range(4) for j in neg[b] if weights[b] and j != 7]
    bpr = np.mean([np.log1p(np.exp(-(S[users[b], pos[b]] - S[users[b], j]))) for b, j in pairs])
    np.testing.assert_allclose(float(terms["bpr"]), bpr, rtol=1e-5)
    # EmbLoss of the vectors that make the scores: user p_u, the user-specific item vectors.
    reg = (np.linalg.norm([P[users[b]] for b, _ in pairs]) + np.linalg.norm([Q[users[b], pos[b]] for b, _ in pairs])
           + np.linalg.norm([Q[users[b], j] for b, j in pairs])) / len(pairs)
    np.testing.assert_allclose(float(terms["reg"]), reg, rtol=1e-5)


@pytest.mark.parametrize("name, options", [("attention", {}), ("gated", {"gate_context": "item"})])
def test_id_dropout_scores_dropped_items_from_content(name, options):
    dataset = _tiny_dataset()
    batch = {"users": np.array([0, 1, 2, 4]), "pos_items": np.array([0, 1, 4, 2]),
             "neg_items": np.array([[3, 5], [5, 6], [6, 0], [1, 3]]), "weights": np.ones(4, np.float32)}
    plain = models.build(name, dataset, embedding_size=4, **options)
    params = randomized_params(plain)
    no_ids = dict(params, item_embedding=np.zeros_like(params["item_embedding"]))

    def terms(built, p, train, seed=0):
        return jax.jit(lambda p: built.module.apply({"params": p}, built.ctx, batch, train, method="loss_terms",
                                                    rngs={"dropout": jax.random.PRNGKey(seed)}))(p)

    reference, content_only = terms(plain, params, True), terms(plain, no_ids, True)
    almost_all = models.build(name, dataset, embedding_size=4, id_dropout=0.999999, **options)
    for key in ("bpr", "reg"):
        # Rate ~1 in training: every ID dropped, the content alone scores; not in evaluation.
        np.testing.assert_allclose(float(terms(almost_all, params, True)[key]), float(content_only[key]), rtol=1e-6)
        np.testing.assert_allclose(float(terms(almost_all, params, False)[key]), float(reference[key]), rtol=1e-6)
    half = models.build(name, dataset, embedding_size=4, id_dropout=0.5, **options)
    draws = {float(terms(half, params, True, seed)["bpr"]) for seed in range(6)}
    assert len(draws) > 1  # a fresh draw per step
    with pytest.raises(ConfigError, match="id_dropout"):
        models.build(name, dataset, id_dropout=1.0, **options)


@pytest.mark.parametrize("name, options", [("attention", {}), ("ensemble", {}), ("gated", {"gate_context": "item"})])
def test_loss_gradients_match_finite_differences(name, options):
    built = models.build(name, _tiny_dataset(), embedding_size=3, **options)
    batch = {"users": np.array([0, 1, 4]), "pos_items": np.array([0, 1, 2]), "neg_items": np.array([[3], [5], [6]]),
             "weights": np.ones(3)}
    with jax.enable_x64():
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), randomized_params(built, seed=3))
        # NaN placeholders in the absent rows must not reach the gradients either.
        ctx = dict(built.ctx, modalities=[jnp.asarray(np.where(mask[:, None], x, np.nan), jnp.float64)
                                          for x, mask in zip(built.ctx["modalities"], built.ctx["masks"])])
        loss = jax.jit(lambda p: sum(built.module.apply({"params": p}, ctx, batch, True, method="loss_terms").values()))
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(jax.grad(loss)(params)))
        check_grads(loss, (params,), order=1, modes=("rev",), atol=1e-5, rtol=1e-5)


def test_builders_check_arguments():
    dataset = _tiny_dataset()
    with pytest.raises(ConfigError, match="fusion"):
        models.build("fusion_mf", dataset, fusion="late")
    with pytest.raises(ConfigError, match="gate_context"):
        models.build("gated", dataset, gate_context="both")
    with pytest.raises(ConfigError, match="weighting"):
        models.build("ensemble", dataset, weighting="max")
    with pytest.raises(ConfigError, match="encoder_hidden"):
        models.build("attention", dataset, encoder_hidden=[0])
    with pytest.raises(ConfigError, match="attention_hidden"):
        models.build("attention", dataset, attention_hidden="32")
    with pytest.raises(ConfigError, match="no argument 'weighting'"):
        models.build("attention", dataset, weighting="softmax")
    with pytest.raises(ConfigError, match="no modality 'video'"):
        models.build("gated", dataset, modalities=["video"])
    assert models.build("ensemble", dataset).default_loss_weights == {"bpr": 1.0, "reg": 1.0}


# ---- learning ---------------------------------------------------------------------------

_SYNTHETIC = dict(n_users=200, n_items=120, n_interactions=5000, seed=3, popularity_skew=0.5, temperature=0.3,
                  dims={"text": 24, "image": 16})


def _train(tmp_path, dataset, name, *, epochs=12, args=None):
    return train_tiny(tmp_path / name, dataset, name, {"embedding_size": 16, **(args or {})}, epochs=epochs,
                      learning_rate=0.01, loss_weights={"reg": 1e-3})


@pytest.mark.parametrize("name", ["attention", "gated", "ensemble"])
def test_learns_better_than_popularity(tmp_path, name):
    dataset = make_synthetic(**_SYNTHETIC)
    metrics = _train(tmp_path, dataset, name)
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.5 * baseline, (metrics["test"], baseline)


@pytest.mark.parametrize("name", ["attention", "gated", "ensemble"])
def test_pmap_on_four_devices_matches_one_device(name):
    assert jax.device_count() >= 4
    dataset = make_synthetic(80, 60, n_interactions=1200, seed=1, dims={"text": 6, "image": 4})
    built = models.build(name, dataset, embedding_size=8)
    # SGD: Adam's normalization would blow round-off in near-zero gradients (the attention
    # bias starts with a symmetric one) up to full-size steps.
    # EmbLoss is a norm over the batch, not a mean over rows: per-device values differ from
    # the global one, so the parity check weighs it 0 (then it is neither computed nor reported).
    run = pmap_parity_run(built, dataset, {"bpr": 1.0, "reg": 0.0}, optimizer="sgd", learning_rate=0.5)
    assert run.n_devices == 4 and set(run.single_terms) == {"bpr"}
    np.testing.assert_allclose(run.single_loss, run.pmap_loss, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(run.pmapped.params), jax.tree.leaves(run.single.params)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    assert not np.allclose(run.single.params["encoders_0"]["dense_0"]["kernel"],
                           run.start.params["encoders_0"]["dense_0"]["kernel"])  # really trained


def test_cold_start_items_beat_popularity(tmp_path):
    from jaxrec.data import cold_items

    # 400 items: 40 new test items, so that a top-20 list is a real choice among them.
    dataset = split_dataset(make_synthetic(**dict(_SYNTHETIC, n_items=400)), "cold_start_items", holdout=0.2, seed=0)
    metrics = _train(tmp_path, dataset, "attention")
    test_items = cold_items(dataset).test
    assert len(test_items) == 40
    # The best popularity ranking of the new items there can be: by their TEST counts (it
    # peeks at the answers, so no real system has it).
    test_counts = np.bincount(dataset.split_pairs("test")[:, 1], minlength=dataset.n_items).astype(np.float32)
    oracle = popularity_recall(dataset, test_items, test_counts)
    # A random top 20 of the 40 new items finds half of them; the oracle about three quarters.
    assert metrics["test"]["recall@20"] > oracle + 0.05, (metrics["test"], oracle)
