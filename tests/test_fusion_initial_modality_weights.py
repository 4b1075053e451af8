"""The modality weights that the fusion layers start from, as ``init`` draws them (not set by
hand), against numpy on the same inputs:

* ``ModelLevelFusion(weighting="nonneg")`` starts with softplus weights of exactly 1, so its first
  scores are MMGCN's plain sum of the present modalities' dot products;
  ``weighting="softmax"`` starts from equal logits: the mean over the present modalities;
* ``KernelEncoding`` without ``init_weights`` starts with every weight 1 (its docstring's "None means
  all ones"): the direct sum's Gram matrix is the unweighted sum of the masked kernels.
"""

import jax
import numpy as np
import pytest

from jaxrec import fusion

N = 5


def _inputs():
    rng = np.random.default_rng(7)
    users = [rng.normal(size=(N, 3)).astype(np.float32) for _ in range(2)]
    items = [rng.normal(size=(N, 3)).astype(np.float32) for _ in range(2)]
    masks = [np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool)]  # row 3 has none
    return users, items, masks


@pytest.mark.parametrize("weighting", ["nonneg", "softmax"])
def test_model_level_fusion_starts_from_equal_unit_weights(weighting):
    users, items, masks = _inputs()
    module = fusion.ModelLevelFusion(weighting=weighting)
    variables = module.init(jax.random.key(0), users, items, masks)
    dots = np.stack([np.sum(u.astype(np.float64) * i, axis=1) for u, i in zip(users, items)], axis=1)
    present = np.stack(masks, axis=1)
    total = np.sum(np.where(present, dots, 0.0), axis=1)
    if weighting == "nonneg":
        expected_weights, expected = [1.0, 1.0], total
    else:
        expected_weights = [0.5, 0.5]
        expected = total / np.maximum(present.sum(axis=1), 1)
    np.testing.assert_allclose(module.apply(variables, method="modality_weights"), expected_weights, rtol=1e-6)
    np.testing.assert_allclose(module.apply(variables, users, items, masks), expected, rtol=1e-5, atol=1e-6)


def test_kernel_encoding_without_init_weights_is_the_unweighted_masked_kernel_sum():
    rng = np.random.default_rng(8)
    xs = [rng.normal(size=(N, 3)).astype(np.float32), rng.normal(size=(N, 2)).astype(np.float32)]
    masks = [np.array([1, 1, 0, 1, 0], bool), np.array([1, 0, 1, 1, 0], bool)]
    module = fusion.KernelEncoding([fusion.KernelSpec("linear"), fusion.KernelSpec("cosine")])
    variables = module.init(jax.random.key(0), xs, masks)
    np.testing.assert_allclose(module.apply(variables, method="modality_weights"), [1.0, 1.0], rtol=1e-6)
    phi = np.asarray(module.apply(variables, xs, masks), np.float64)
    x0, x1 = (x.astype(np.float64) for x in xs)
    unit = x1 / np.linalg.norm(x1, axis=1, keepdims=True)
    both0, both1 = np.outer(masks[0], masks[0]), np.outer(masks[1], masks[1])
    expected = both0 * (x0 @ x0.T) + both1 * (unit @ unit.T)
    np.testing.assert_allclose(phi @ phi.T, expected, rtol=1e-5, atol=1e-5)
