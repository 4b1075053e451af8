"""Fusion layers against naive numpy re-implementations that read the same parameters."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import fusion
from jaxrec.errors import ConfigError, DataError

DIMS = (3, 4, 2)
N = 6


def _inputs(seed):
    rng = np.random.default_rng(seed)
    xs = [rng.normal(size=(N, d)).astype(np.float32) for d in DIMS]
    masks = [np.array(m) for m in ([1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 0, 1], [1, 1, 1, 0, 0, 0])]
    masks = [m.astype(bool) for m in masks]  # row 4 has no modality; row 0 has all
    query = rng.normal(size=(N, 5)).astype(np.float32)
    return xs, masks, query


def _random_variables(module, seed, *args, **kwargs):
    """Variables with the module's structure (traced by eval_shape, so no init compile), random values."""
    shapes = jax.eval_shape(lambda key: module.init(key, *args, **kwargs), jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _dense(p, x):
    return x @ p["kernel"] + p["bias"]


def _mlp(p, x, layers):
    for i in range(layers):
        x = _dense(p[f"dense_{i}"], x)
        if i + 1 < layers:
            x = np.maximum(x, 0.0)
    return x


def _zeroed(xs, masks):
    return [np.where(m[:, None], x, 0.0).astype(np.float64) for x, m in zip(xs, masks)]


def test_early_fusion_matches_numpy():
    xs, masks, _ = _inputs(0)
    module = fusion.EarlyFusion(out_dim=4, hidden_dims=(8,))
    variables = _random_variables(module, 0, xs, masks)
    p = _np(variables["params"])
    joined = np.concatenate(_zeroed(xs, masks) + [np.stack(masks, 1).astype(float)], axis=1)
    expected = _mlp(p["encoder"], joined, 2)
    np.testing.assert_allclose(jax.jit(module.apply)(variables, xs, masks), expected, rtol=1e-5, atol=1e-5)
    # The absent-item row is the MLP of all zeros: a learned default, the same for every such row.
    np.testing.assert_allclose(expected[4], _mlp(p["encoder"], np.zeros((1, joined.shape[1])), 2)[0])


@pytest.mark.parametrize("combine", ["concat", "sum", "mean"])
def test_late_fusion_matches_numpy(combine):
    xs, masks, _ = _inputs(1)
    module = fusion.LateFusion(out_dim=3, hidden_dims=(5,), combine=combine)
    variables = _random_variables(module, 1, xs, masks)
    p = _np(variables["params"])
    vectors = [_mlp(p[f"encoder_{m}"], x, 2) for m, x in enumerate(_zeroed(xs, masks))]
    rows = []
    for i in range(N):
        present = [v[i] for v, mask in zip(vectors, masks) if mask[i]]
        if combine == "concat":
            rows.append(np.concatenate([v[i] if mask[i] else np.zeros(3) for v, mask in zip(vectors, masks)]))
        elif not present:
            rows.append(np.zeros(3))
        else:
            rows.append(np.sum(present, 0) / (len(present) if combine == "mean" else 1))
    np.testing.assert_allclose(jax.jit(module.apply)(variables, xs, masks), np.stack(rows), rtol=1e-5, atol=1e-5)


def test_late_fusion_learned_default_for_items_without_modalities():
    xs, masks, _ = _inputs(2)
    module = fusion.LateFusion(out_dim=3, learned_default=True)
    variables = _random_variables(module, 2, xs, masks)
    variables["params"]["missing_default"] = jnp.array([1.0, -2.0, 3.0])
    out = jax.jit(module.apply)(variables, xs, masks)
    np.testing.assert_allclose(out[4], [1.0, -2.0, 3.0])
    assert not np.allclose(out[0], [1.0, -2.0, 3.0])


def _masked_softmax_np(scores, present):
    out = np.zeros_like(scores)
    for i in range(scores.shape[0]):
        idx = np.flatnonzero(present[i])
        if len(idx):
            e = np.exp(scores[i, idx] - scores[i, idx].max())
            out[i, idx] = e / e.sum()
    return out


def test_attention_fusion_matches_numpy():
    xs, masks, query = _inputs(3)
    module = fusion.AttentionFusion(dim=4)
    variables = _random_variables(module, 3, xs, masks, query=query)
    p = _np(variables["params"])
    keys = np.stack([_dense(p[f"project_{m}"], x) for m, x in enumerate(_zeroed(xs, masks))], 1)
    scores = np.array([[query[i] @ p["bilinear"] @ keys[i, m] for m in range(3)] for i in range(N)])
    weights = _masked_softmax_np(scores, np.stack(masks, 1))
    expected = np.einsum("nm,nmk->nk", weights, keys)
    apply = jax.jit(module.apply, static_argnames="mutable")
    out, state = apply(variables, xs, masks, query=query, mutable="intermediates")
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(state["intermediates"]["attention_weights"][0], weights, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out[4], 0.0)


@pytest.mark.parametrize("with_context", [False, True])
def test_gated_fusion_matches_numpy(with_context):
    xs, masks, context = _inputs(4)
    context = context if with_context else None
    module = fusion.GatedFusion(dim=3)
    variables = _random_variables(module, 4, xs, masks, context=context)
    p = _np(variables["params"])
    expected = np.zeros((N, 3))
    for m, x in enumerate(_zeroed(xs, masks)):
        v = _dense(p[f"project_{m}"], x)
        gate_in = v if context is None else np.concatenate([context, v], 1)
        g = 1 / (1 + np.exp(-_dense(p[f"gate_{m}"], gate_in)))
        expected += masks[m][:, None] * g * v
    out = jax.jit(module.apply)(variables, xs, masks, context=context)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("weighting", ["softmax", "nonneg"])
@pytest.mark.parametrize("bilinear", [False, True])
def test_model_level_fusion_matches_numpy(weighting, bilinear):
    rng = np.random.default_rng(5)
    users = [rng.normal(size=(N, 3)).astype(np.float32) for _ in range(3)]
    items = [rng.normal(size=(N, 3)).astype(np.float32) for _ in range(3)]
    _, masks, _ = _inputs(5)
    module = fusion.ModelLevelFusion(weighting=weighting, bilinear=bilinear)
    variables = _random_variables(module, 5, users, items, masks)
    theta = np.array([0.3, -1.0, 0.8])
    name = "logits" if weighting == "softmax" else "raw_weights"
    variables["params"][name] = jnp.asarray(theta, jnp.float32)
    p = _np(variables["params"])

    def scorer(m, u, i):
        return u @ p[f"bilinear_{m}"] @ i if bilinear else u @ i

    def combine(row_scores, present):
        if not present.any():
            return 0.0
        if weighting == "softmax":
            w = np.exp(theta) * present
            return float(np.sum(w * row_scores) / w.sum())
        return float(np.sum(np.log1p(np.exp(theta)) * present * row_scores))

    present = np.stack(masks, 1)
    expected = [
        combine(np.array([scorer(m, users[m][r], items[m][r]) for m in range(3)]), present[r])
        for r in range(N)
    ]
    np.testing.assert_allclose(jax.jit(module.apply)(variables, users, items, masks), expected, rtol=1e-5, atol=1e-5)

    # Full ranking: every user against every item, masks on the item side.
    users_b = [u[:4] for u in users]
    pairwise = jax.jit(module.apply, static_argnames="pairwise")(variables, users_b, items, masks, pairwise=True)
    expected_pairs = [
        [combine(np.array([scorer(m, users_b[m][b], items[m][r]) for m in range(3)]), present[r]) for r in range(N)]
        for b in range(4)
    ]
    np.testing.assert_allclose(pairwise, expected_pairs, rtol=1e-5, atol=1e-5)
    weights = module.apply(variables, method="modality_weights")
    expected_w = np.exp(theta) / np.exp(theta).sum() if weighting == "softmax" else np.log1p(np.exp(theta))
    np.testing.assert_allclose(weights, expected_w, rtol=1e-5)


def test_combine_modality_scores_hand_worked():
    scores = np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    present = np.array([[True, False, True], [False, False, False]])
    weights = np.array([1.0, 5.0, 3.0])
    np.testing.assert_allclose(
        fusion.combine_modality_scores(scores, present, weights, normalize=True), [(1 + 12) / 4, 0.0]
    )
    np.testing.assert_allclose(
        fusion.combine_modality_scores(scores, present, weights, normalize=False), [13.0, 0.0]
    )


def test_masked_softmax_hand_worked_and_all_masked():
    logits = jnp.array([[0.0, math.log(3.0), 100.0], [1.0, 2.0, 3.0]])
    mask = jnp.array([[True, True, False], [False, False, False]])
    np.testing.assert_allclose(fusion.masked_softmax(logits, mask), [[0.25, 0.75, 0.0], [0, 0, 0]], rtol=1e-6)
    grad = jax.jit(jax.grad(lambda z: jnp.sum(fusion.masked_softmax(z, mask) * jnp.arange(3.0))))(logits)
    assert np.all(np.isfinite(grad)) and np.all(grad[1] == 0) and grad[0, 2] == 0


def test_fusion_config_and_shape_errors():
    xs, masks, query = _inputs(6)
    with pytest.raises(ConfigError, match="combine"):
        fusion.LateFusion(out_dim=2, combine="max").init(jax.random.key(0), xs, masks)
    with pytest.raises(ConfigError, match="weighting"):
        fusion.ModelLevelFusion(weighting="max").init(jax.random.key(0), xs, xs)
    with pytest.raises(DataError, match="same number of rows"):
        fusion.EarlyFusion(out_dim=2).init(jax.random.key(0), [xs[0], xs[1][:3]])
    with pytest.raises(DataError, match="one row mask per modality"):
        fusion.EarlyFusion(out_dim=2).init(jax.random.key(0), xs, masks[:2])
    with pytest.raises(DataError, match="context row"):
        fusion.AttentionFusion(dim=2).init(jax.random.key(0), xs, masks, query=query[:3])
    with pytest.raises(DataError, match="equal user and item widths"):
        fusion.ModelLevelFusion().init(jax.random.key(0), xs, xs[::-1])
    with pytest.raises(DataError, match="list of per-modality arrays"):
        fusion.EarlyFusion(out_dim=2).init(jax.random.key(0), xs[0])


def test_attention_fusion_under_vmap_equals_separate_calls():
    xs, masks, query = _inputs(7)
    module = fusion.AttentionFusion(dim=4)
    variables = _random_variables(module, 7, xs, masks, query=query)
    other_masks = [~m for m in masks]
    stacked_xs = [np.stack([x, 2 * x]) for x in xs]
    stacked_masks = [np.stack([m, o]) for m, o in zip(masks, other_masks)]

    def apply(xs, masks, query):
        return module.apply(variables, xs, masks, query=query)

    batched = jax.jit(jax.vmap(apply))(stacked_xs, stacked_masks, np.stack([query, query]))
    np.testing.assert_allclose(batched[0], jax.jit(apply)(xs, masks, query), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        batched[1], jax.jit(apply)([2 * x for x in xs], other_masks, query), rtol=1e-5, atol=1e-6
    )


def test_combine_modality_scores_rejects_negative_weights_and_mismatched_shapes():
    scores = np.array([[1.0, 2.0, 4.0], [1.0, 2.0, 4.0]])
    present = np.array([[True, False, True], [False, True, True]])
    with pytest.raises(DataError, match="'weights'.*negative"):
        fusion.combine_modality_scores(scores, present, np.array([1.0, -5.0, 3.0]), normalize=True)
    with pytest.raises(DataError, match="'present'.*\\(2, 4\\)"):  # was a bare broadcast ValueError
        fusion.combine_modality_scores(scores, np.ones((2, 4), bool), np.ones(3), normalize=True)
    with pytest.raises(DataError, match="'present'"):
        fusion.combine_modality_scores(scores, np.ones((3, 3), bool), np.ones(3), normalize=True)
    with pytest.raises(DataError, match="'weights'.*\\(3,\\)"):
        fusion.combine_modality_scores(scores, present, np.ones(2), normalize=True)
    # Concrete values only: traced weights are not inspected.
    jax.jit(lambda w: fusion.combine_modality_scores(scores, present, w, normalize=False))(np.array([1.0, -5.0, 3.0]))
    # Allowed shapes keep their values: (..., M) masks and ones that broadcast (a per-modality (M,)).
    weights = np.array([1.0, 5.0, 3.0])
    np.testing.assert_allclose(fusion.combine_modality_scores(scores, present, weights, normalize=True),
                               [(1 + 12) / 4, (10 + 12) / 8], rtol=1e-6)
    np.testing.assert_allclose(
        fusion.combine_modality_scores(scores, np.array([True, False, True]), weights, normalize=False), [13.0, 13.0])
    np.testing.assert_allclose(
        fusion.combine_modality_scores(np.stack([scores, 2 * scores]), present, weights, normalize=False),
        [[13.0, 22.0], [26.0, 44.0]])  # pairwise (users, items, M) scores, (items, M) presence
    np.testing.assert_allclose(fusion.combine_modality_scores(scores, present, [1.0, 5.0, 3.0], normalize=False),
                               [13.0, 22.0])


def test_masked_softmax_names_a_mask_that_does_not_broadcast():
    with pytest.raises(DataError, match="'mask'.*\\(3, 5\\).*\\(3, 4\\)"):  # was a bare ValueError
        fusion.masked_softmax(jnp.ones((3, 4)), jnp.ones((3, 5), bool))
    with pytest.raises(DataError, match="'mask'"):  # broadcasting is to logits, not both ways
        fusion.masked_softmax(jnp.ones((4,)), jnp.ones((3, 4), bool))
    # Masks that broadcast keep their values: a per-column (4,) mask and a per-row (3, 1) one.
    logits = np.log(np.array([[1.0, 3.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0], [4.0, 1.0, 1.0, 2.0]]))
    columns = np.array([True, True, False, True])
    np.testing.assert_allclose(fusion.masked_softmax(logits, columns),
                               [[1 / 6, 3 / 6, 0, 2 / 6], [1 / 3, 1 / 3, 0, 1 / 3], [4 / 7, 1 / 7, 0, 2 / 7]],
                               rtol=1e-6)
    rows = np.array([[True], [False], [True]])
    np.testing.assert_allclose(fusion.masked_softmax(logits, rows),
                               [[1 / 8, 3 / 8, 2 / 8, 2 / 8], [0, 0, 0, 0], [4 / 8, 1 / 8, 1 / 8, 2 / 8]], rtol=1e-6)
