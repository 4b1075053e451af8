"""``learned_default=True``: the learned ``missing_default`` vector is the output of the items that
have NO modality, and only theirs; an item with any modality keeps its fused vector, which must
not move by the default. Checked against numpy re-implementations reading the same parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import fusion

N = 5
DEFAULT = np.array([1.0, -2.0, 3.0], np.float32)


def _inputs():
    rng = np.random.default_rng(11)
    xs = [rng.normal(size=(N, 4)).astype(np.float32), rng.normal(size=(N, 2)).astype(np.float32)]
    masks = [np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 0], bool)]  # row 3 has none
    return xs, masks


def _variables(module, *args):
    variables = module.init(jax.random.key(3), *args)
    params = jax.tree.map(lambda a: a, variables["params"])
    params["missing_default"] = jnp.asarray(DEFAULT)
    return {"params": params}, jax.tree.map(lambda a: np.asarray(a, np.float64), params)


def _dense(p, x):
    return x.astype(np.float64) @ p["kernel"] + p["bias"]


@pytest.mark.parametrize("module_name", ["late_mean", "late_sum", "gated"])
def test_only_items_without_any_modality_get_the_learned_default(module_name):
    xs, masks = _inputs()
    zeroed = [np.where(m[:, None], x, 0.0) for x, m in zip(xs, masks)]
    if module_name == "gated":
        module = fusion.GatedFusion(dim=3, learned_default=True)
    else:
        module = fusion.LateFusion(out_dim=3, combine=module_name.split("_")[1], learned_default=True)
    variables, p = _variables(module, xs, masks)
    expected = np.zeros((N, 3))
    for m, (x, mask) in enumerate(zip(zeroed, masks)):
        if module_name == "gated":
            v = _dense(p[f"project_{m}"], x)
            vector = v / (1.0 + np.exp(-_dense(p[f"gate_{m}"], v)))
        else:
            vector = _dense(p[f"encoder_{m}"]["dense_0"], x)
        expected += mask[:, None] * vector
    if module_name == "late_mean":
        expected /= np.maximum(np.sum(masks, axis=0), 1)[:, None]
    expected[3] = DEFAULT
    out = module.apply(variables, xs, masks)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
