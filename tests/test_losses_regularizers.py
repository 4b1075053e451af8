"""The MMRec L2 conventions and kernel alignment against loops and hand-worked cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import losses
from jaxrec.errors import DataError


def _entries(array):
    return [float(v) for v in np.ravel(array)]


@pytest.fixture
def batch_embeddings():
    rng = np.random.default_rng(0)
    # users (4, 3), positives (4, 3), negatives (5, 3): the divisor must come from the LAST one.
    return rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=(5, 3))


def test_l2_sum_of_squares(batch_embeddings):
    expected = sum(v * v for e in batch_embeddings for v in _entries(e))
    np.testing.assert_allclose(losses.l2_sum_of_squares(*batch_embeddings), expected, rtol=1e-6)
    np.testing.assert_allclose(losses.l2_sum_of_squares(*batch_embeddings, half=True), expected / 2, rtol=1e-6)


def test_l2_mean_norm_is_mmrec_emb_loss(batch_embeddings):
    # EmbLoss: emb_loss += torch.norm(embedding, p=2) (Frobenius, not squared); /= embeddings[-1].shape[0].
    norms = [math.sqrt(sum(v * v for v in _entries(e))) for e in batch_embeddings]
    np.testing.assert_allclose(losses.l2_mean_norm(*batch_embeddings), sum(norms) / 5, rtol=1e-6)
    np.testing.assert_allclose(losses.l2_mean_norm(*batch_embeddings, batch_size=8), sum(norms) / 8, rtol=1e-6)
    # Not the squared norm: doubling every entry doubles the term.
    doubled = [2 * e for e in batch_embeddings]
    np.testing.assert_allclose(
        losses.l2_mean_norm(*doubled), 2 * losses.l2_mean_norm(*batch_embeddings), rtol=1e-6
    )


def test_l2_mean_norm_gradient_is_finite_at_zero():
    grad = jax.jit(jax.grad(lambda e: losses.l2_mean_norm(e, jnp.ones((2, 2)))))(jnp.zeros((2, 2)))
    np.testing.assert_array_equal(grad, 0.0)
    # Away from zero: d |E|_F / dE = E / |E|_F, divided by B = 2.
    e = jnp.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(jax.jit(jax.grad(losses.l2_mean_norm))(e), np.asarray(e) / 5.0 / 2, rtol=1e-6)


def test_l2_sum_of_squares_per_example_is_lattice_regularizer(batch_embeddings):
    users, positives, negatives = (b[:4] for b in batch_embeddings)
    # LATTICE: 1./2*(users**2).sum() + 1./2*(pos_items**2).sum() + 1./2*(neg_items**2).sum(), / batch_size.
    expected = (0.5 * np.sum(users**2) + 0.5 * np.sum(positives**2) + 0.5 * np.sum(negatives**2)) / 4
    np.testing.assert_allclose(losses.l2_sum_of_squares_per_example(users, positives, negatives), expected, rtol=1e-6)
    np.testing.assert_allclose(
        losses.l2_sum_of_squares_per_example(users, positives, negatives, half=False, batch_size=2),
        expected * 4,
        rtol=1e-6,
    )


def test_l2_mean_of_squares_is_mmgcn_regularizer():
    rng = np.random.default_rng(1)
    users, items = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    # MMGCN: (id_embedding[user_tensor]**2 + id_embedding[item_tensor]**2).mean()
    expected = float(np.mean(users**2 + items**2))
    np.testing.assert_allclose(losses.l2_mean_of_squares(users, items), expected, rtol=1e-6)
    # Different shapes (DRAGON: a sum of separate means).
    preference = rng.normal(size=(2, 5))
    np.testing.assert_allclose(
        losses.l2_mean_of_squares(users, preference), np.mean(users**2) + np.mean(preference**2), rtol=1e-6
    )


def test_regularizers_need_an_array():
    for regularizer in (
        losses.l2_sum_of_squares,
        losses.l2_mean_norm,
        losses.l2_sum_of_squares_per_example,
        losses.l2_mean_of_squares,
    ):
        with pytest.raises(DataError, match="at least one array"):
            regularizer()


def alignment_reference(k, t):
    inner = sum(k[i, j] * t[i, j] for i in range(k.shape[0]) for j in range(k.shape[1]))
    return inner / (math.sqrt(np.sum(k * k)) * math.sqrt(np.sum(t * t)))


def test_kernel_alignment_matches_definition():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 3))
    kernel = x @ x.T
    y = np.sign(rng.normal(size=6))
    target = np.outer(y, y)
    np.testing.assert_allclose(losses.kernel_alignment(kernel, target), alignment_reference(kernel, target), rtol=1e-5)
    np.testing.assert_allclose(losses.kernel_alignment(3.0 * target, target), 1.0, rtol=1e-6)
    np.testing.assert_allclose(losses.kernel_alignment(-target, target), -1.0, rtol=1e-6)


def test_kernel_alignment_hand_worked():
    # K = I_2, T = [[1, -1], [-1, 1]]: <K, T> = 2, |K| = sqrt 2, |T| = 2 -> 1 / sqrt 2.
    np.testing.assert_allclose(
        losses.kernel_alignment(np.eye(2), np.array([[1.0, -1.0], [-1.0, 1.0]])), 1 / math.sqrt(2), rtol=1e-6
    )


def test_centered_kernel_alignment_matches_explicit_centering():
    rng = np.random.default_rng(3)
    x, z = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    kernel, target = x @ x.T + 2.0, z @ z.T
    centering = np.eye(5) - np.ones((5, 5)) / 5
    expected = alignment_reference(centering @ kernel @ centering, centering @ target @ centering)
    np.testing.assert_allclose(losses.centered_kernel_alignment(kernel, target), expected, rtol=1e-5)
    # Invariant to a constant added to either kernel; the uncentered alignment is not.
    np.testing.assert_allclose(losses.centered_kernel_alignment(kernel + 10.0, target - 3.0), expected, rtol=1e-4)
    shifted = float(losses.kernel_alignment(kernel + 10.0, target))
    assert abs(shifted - float(losses.kernel_alignment(kernel, target))) > 1e-2


def test_centered_kernel_alignment_of_constant_kernel_is_zero_with_finite_gradient():
    target = jnp.array([[2.0, 1.0], [1.0, 2.0]])
    np.testing.assert_allclose(losses.centered_kernel_alignment(jnp.ones((2, 2)), target), 0.0, atol=1e-7)
    grad = jax.jit(jax.grad(losses.centered_kernel_alignment))(jnp.ones((2, 2)), target)
    assert np.all(np.isfinite(grad))


def test_alignment_shape_errors():
    with pytest.raises(DataError, match="target"):
        losses.kernel_alignment(jnp.eye(3), jnp.eye(2))
    with pytest.raises(DataError, match="kernel"):
        losses.centered_kernel_alignment(jnp.ones((2, 3)), jnp.ones((2, 3)))


def test_regularizers_reject_a_list_of_arrays(batch_embeddings):
    users, positives, negatives = batch_embeddings
    for regularizer in (
        losses.l2_sum_of_squares,
        losses.l2_mean_norm,
        losses.l2_sum_of_squares_per_example,
        losses.l2_mean_of_squares,
    ):
        name = regularizer.__name__
        # l2_mean_norm([u, i]) used to stack the list into one (2, B, d) array: a wrong value.
        with pytest.raises(DataError, match=f"separate argument.*{name}\\(u, i\\)"):
            regularizer([users, positives])
        with pytest.raises(DataError, match="'arrays\\[1\\]'"):
            regularizer(users, (positives, negatives))
    # Separate arrays keep their values (loops over the entries).
    squares = [sum(v * v for v in _entries(e)) for e in batch_embeddings]
    np.testing.assert_allclose(losses.l2_sum_of_squares(users, positives, negatives), sum(squares), rtol=1e-6)
    np.testing.assert_allclose(losses.l2_mean_norm(users, positives, negatives),
                               sum(math.sqrt(s) for s in squares) / 5, rtol=1e-6)
    np.testing.assert_allclose(losses.l2_sum_of_squares_per_example(users, positives, negatives),
                               0.5 * sum(squares) / 5, rtol=1e-6)
    np.testing.assert_allclose(losses.l2_mean_of_squares(users, positives, negatives),
                               sum(s / np.size(e) for s, e in zip(squares, batch_embeddings)), rtol=1e-6)
    np.testing.assert_allclose(losses.l2_mean_norm(*[users, positives]),
                               (math.sqrt(squares[0]) + math.sqrt(squares[1])) / 4, rtol=1e-6)


def test_kernel_alignment_needs_a_square_kernel():
    # kernel_alignment(ones((2, 3)), ones((2, 3))) returned 1.0; the kernel must be (n, n).
    with pytest.raises(DataError, match="'kernel'.*\\(2, 3\\).*\\(2, 2\\)"):
        losses.kernel_alignment(jnp.ones((2, 3)), jnp.ones((2, 3)))
    with pytest.raises(DataError, match="'kernel'"):
        losses.kernel_alignment(jnp.ones(3), jnp.ones(3))
    # Square kernels keep the definition's value.
    kernel, target = np.array([[2.0, 0.5], [0.5, 1.0]]), np.array([[1.0, -1.0], [-1.0, 1.0]])
    np.testing.assert_allclose(losses.kernel_alignment(kernel, target), alignment_reference(kernel, target), rtol=1e-6)
