"""Missing modalities, for every fusion layer: absent rows are inert, empty items are finite."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import fusion

DIMS = (3, 4, 2)
N = 5
# Row 0: all modalities; row 1: only modality 1; row 2: none; rows 3-4: mixed.
MASKS = [np.array(m, bool) for m in ([1, 0, 0, 1, 0], [1, 1, 0, 0, 1], [1, 0, 0, 1, 1])]


def _inputs(placeholder):
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(N, d)).astype(np.float32) for d in DIMS]
    xs = [np.where(m[:, None], x, placeholder).astype(np.float32) for x, m in zip(xs, MASKS)]
    context = rng.normal(size=(N, 3)).astype(np.float32)
    return xs, context


def _random_variables(module, seed, *args, **kwargs):
    """Variables with the module's structure (traced by eval_shape, so no init compile), random values."""
    shapes = jax.eval_shape(lambda key: module.init(key, *args, **kwargs), jax.random.key(0))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.5 * rng.normal(size=s.shape)).astype(s.dtype), shapes)


# Each case: (module, inputs(xs, context) -> apply's (args, kwargs), the fused array from the output).
def _rows(xs, c):
    return (xs, MASKS), {}


def _with_query(xs, c):
    return (xs, MASKS), {"query": c}


def _with_context(xs, c):
    return (xs, MASKS), {"context": c}


def _same(out):
    return out


CASES = {
    "early": (fusion.EarlyFusion(out_dim=4, hidden_dims=(6,)), _rows, _same),
    "late_concat": (fusion.LateFusion(out_dim=3, combine="concat"), _rows, _same),
    "late_sum": (fusion.LateFusion(out_dim=3, combine="sum"), _rows, _same),
    "late_mean": (fusion.LateFusion(out_dim=3, combine="mean"), _rows, _same),
    "late_mean_default": (fusion.LateFusion(out_dim=3, learned_default=True), _rows, _same),
    "attention": (fusion.AttentionFusion(dim=4), _with_query, _same),
    "gated": (fusion.GatedFusion(dim=4), _with_context, _same),
    "kernel": (
        fusion.KernelEncoding(
            (
                fusion.KernelSpec("cosine"),
                fusion.KernelSpec("rbf", num_features=8),
                fusion.KernelSpec("polynomial"),
            ),
            out_dim=4,
        ),
        _rows,
        _same,
    ),
    "model_level": (
        fusion.ModelLevelFusion(bilinear=True),
        lambda xs, c: (([c, c, c], xs, MASKS), {}),
        _same,
    ),
    "subspace": (fusion.SubspaceProjection(dim=2, lam=0.5), _rows, lambda out: out.shared),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_absent_rows_are_inert_and_empty_items_finite(name):
    module, inputs, pick = CASES[name]
    clean, context = _inputs(0.0)
    poisoned, _ = _inputs(np.nan)
    args, kwargs = inputs(clean, context)
    variables = _random_variables(module, 0, *args, **kwargs)

    @jax.jit
    def forward(variables, xs):
        args, kwargs = inputs(xs, context)
        return pick(module.apply(variables, *args, **kwargs))

    out_clean = forward(variables, clean)
    out_poisoned = forward(variables, poisoned)
    assert np.all(np.isfinite(out_poisoned))
    np.testing.assert_allclose(out_poisoned, out_clean, rtol=1e-6, atol=1e-6)
    if name not in ("early", "late_mean_default"):  # those give the item a learned default instead
        np.testing.assert_array_equal(out_clean[2], 0.0)

    @jax.jit
    def loss(params, xs):
        return jnp.sum(forward({**variables, "params": params}, xs) ** 2)

    param_grads, input_grads = jax.grad(loss, argnums=(0, 1))(variables["params"], poisoned)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(param_grads)), name
    for g, mask in zip(input_grads, MASKS):
        assert np.all(np.isfinite(g)), name
        np.testing.assert_array_equal(g[~mask], 0.0)  # no gradient flows into absent rows


def test_single_present_modality_gets_all_the_attention():
    module = fusion.AttentionFusion(dim=4)
    xs, context = _inputs(0.0)
    variables = _random_variables(module, 1, xs, MASKS, query=context)
    apply = jax.jit(module.apply, static_argnames="mutable")
    _, state = apply(variables, xs, MASKS, query=context, mutable="intermediates")
    weights = np.asarray(state["intermediates"]["attention_weights"][0])
    np.testing.assert_allclose(weights[1], [0.0, 1.0, 0.0])  # row 1 has only modality 1
    np.testing.assert_allclose(weights.sum(1), [1, 1, 0, 1, 1], rtol=1e-6)


def test_mean_fusion_of_one_modality_is_that_modality_alone():
    module = fusion.LateFusion(out_dim=3, combine="mean")
    xs, _ = _inputs(0.0)
    variables = _random_variables(module, 2, xs, MASKS)
    fused = jax.jit(module.apply)(variables, xs, MASKS)
    only_middle = jax.jit(fusion.LateFusion(out_dim=3, combine="sum").apply)(
        variables, xs, [np.zeros(N, bool), MASKS[1], np.zeros(N, bool)]
    )
    np.testing.assert_allclose(fused[1], only_middle[1], rtol=1e-6)
