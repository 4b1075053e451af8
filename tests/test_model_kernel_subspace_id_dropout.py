"""``id_dropout`` of the kernel and subspace recommenders (DropoutNet's input dropout, as in
jaxrec.models.fusion_mf): in TRAINING, a rate near 1 drops every item's ID embedding, so each
item vector is its content part alone, :math:`q_i = A\\Phi(x_i)` or :math:`B^\\top z_i` -- the
terms of the same parameters with the ID table zeroed (:math:`t_i e_i = 0`); in evaluation
nothing is dropped; a rate in between draws afresh from the ``dropout`` stream."""

import jax
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import make_synthetic

from _model_testing import randomized_params


def _terms(built, batch, train):
    """The compiled terms as a function of (params, dropout key)."""
    return jax.jit(lambda p, key: built.module.apply({"params": p}, built.ctx, batch, train, method="loss_terms",
                                                     rngs={"dropout": key}))


@pytest.mark.parametrize("name,args", [("kernel", {"kernels": "linear"}), ("subspace", {"shared_dim": 3})])
def test_id_dropout_scores_items_from_content_in_training_only(name, args):
    data = make_synthetic(8, 10, n_interactions=60, dims={"image": 4, "text": 3}, seed=2)
    batch = {"users": np.array([0, 1, 2, 5, 7]), "pos_items": np.array([0, 1, 4, 2, 9]),
             "neg_items": np.array([[3, 5], [5, 6], [6, 0], [1, 3], [8, 2]]), "weights": np.ones(5, np.float32)}
    plain = models.build(name, data, embedding_size=4, **args)
    params = randomized_params(plain, seed=3)
    no_ids = dict(params, item_embedding=np.zeros_like(params["item_embedding"]))
    key = jax.random.PRNGKey(0)
    plain_terms = _terms(plain, batch, True)
    reference, content_only = plain_terms(params, key), plain_terms(no_ids, key)
    assert not np.isclose(float(reference["bpr"]), float(content_only["bpr"]))

    almost_all = models.build(name, data, embedding_size=4, id_dropout=0.999999, **args)
    trained, evaluated = _terms(almost_all, batch, True)(params, key), _terms(almost_all, batch, False)(params, key)
    for key in ("bpr", "reg"):
        np.testing.assert_allclose(float(trained[key]), float(content_only[key]), rtol=1e-6, err_msg=key)
        np.testing.assert_allclose(float(evaluated[key]), float(reference[key]), rtol=1e-6, err_msg=key)
    half = models.build(name, data, embedding_size=4, id_dropout=0.5, **args)
    half_terms = _terms(half, batch, True)
    assert len({float(half_terms(params, jax.random.PRNGKey(seed))["bpr"]) for seed in range(6)}) > 1  # fresh draws
