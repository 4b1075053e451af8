"""Initial parameter distributions of the multimodal graph models against the torch
initializers their docstrings name (MMRec's): ``xavier_uniform_`` U(+-sqrt(6 / (n + d))),
``xavier_normal_`` N(0, 2 / (n + d)), ``nn.Linear``'s defaults U(+-1 / sqrt(fan_in)) for the
weight and the bias. The expected bounds and deviations are written out from the shapes here,
not read from jaxrec's initializers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import make_synthetic

from _model_testing import init_compiled

D = 32
DIMS = {"image": 48, "text": 24}


@pytest.fixture(scope="module")
def dataset():
    return make_synthetic(250, 200, n_interactions=1500, dims=DIMS, seed=0)


def _params(dataset, name, touch, **args):
    """The initial parameters; ``touch(module, ctx)`` reads every parameter (cheaper to compile
    than a whole loss)."""
    built = models.build(name, dataset, **args)
    variables = init_compiled(built.module, jax.random.PRNGKey(0), built.ctx, method=touch)
    return jax.tree.map(np.asarray, jax.device_get(variables["params"]))


def _uniform(x, bound, what):
    x = np.asarray(x, np.float64).ravel()
    assert np.abs(x).max() <= bound * (1 + 1e-6), (what, np.abs(x).max(), bound)
    assert np.abs(x).max() > (0.8 if x.size < 100 else 0.97) * bound, (what, np.abs(x).max(), bound)
    if x.size >= 1000:
        np.testing.assert_allclose(x.std(), bound / np.sqrt(3), rtol=0.06, err_msg=what)


def _normal(x, std, what):
    x = np.asarray(x, np.float64).ravel()
    np.testing.assert_allclose(x.std(), std, rtol=0.06, err_msg=what)
    tail = np.mean(np.abs(x) > np.sqrt(3) * std)  # 0.083 for a normal, 0 for a uniform of that std
    assert 0.05 < tail < 0.12, (what, tail)


def _xavier_uniform(x, what):
    n, d = x.shape
    _uniform(x, np.sqrt(6.0 / (n + d)), what)


def _id_tables(p, n_users=250, n_items=200):
    assert p["user_embedding"].shape == (n_users, D) and p["item_embedding"].shape == (n_items, D)
    _xavier_uniform(p["user_embedding"], "user_embedding")
    _xavier_uniform(p["item_embedding"], "item_embedding")


def _torch_linear(layer, fan_in, what):
    assert layer["kernel"].shape[0] == fan_in, what
    _uniform(layer["kernel"], 1.0 / np.sqrt(fan_in), what + "/kernel")
    if "bias" in layer:
        _uniform(layer["bias"], 1.0 / np.sqrt(fan_in), what + "/bias")


def test_freedom_xavier_uniform_ids_and_linear_default_projections(dataset):
    def touch(mdl, ctx):
        return [mdl.projected_features(ctx, m, jnp.arange(2)) for m in range(2)] + [mdl.item_embedding]

    p = _params(dataset, "freedom", touch, embedding_size=D, feat_embed_dim=D, knn_k=3, graph_cache="none",
                modalities=list(DIMS))
    _id_tables(p)
    for m, dim in enumerate(DIMS.values()):
        _torch_linear(p[f"projection_{m}"], dim, f"projection_{m}")


def test_lattice_xavier_uniform_ids_linear_default_projections_equal_modality_weights(dataset):
    p = _params(dataset, "lattice", lambda mdl, ctx: mdl.projected_features(ctx) + [mdl.user_embedding],
                embedding_size=D, feat_embed_dim=D, knn_k=3, graph_cache="none",
                modalities=list(DIMS))
    _id_tables(p)
    for m, dim in enumerate(DIMS.values()):
        _torch_linear(p[f"projection_{m}"], dim, f"projection_{m}")
    assert np.ptp(p["modal_weight"]) == 0  # MMRec's [0.5, 0.5]: equal softmax weights


def test_bm3_xavier_normal_predictor_and_projections_torch_biases(dataset):
    p = _params(dataset, "bm3", lambda mdl, ctx: [mdl.modality_table(ctx, m) for m in range(2)]
                + [mdl.predictor(mdl.user_embedding), mdl.item_embedding], embedding_size=D, modalities=list(DIMS))
    _id_tables(p)
    _normal(p["predictor"]["kernel"], np.sqrt(2.0 / (D + D)), "predictor/kernel")
    _uniform(p["predictor"]["bias"], 1.0 / np.sqrt(D), "predictor/bias")
    for m, dim in enumerate(DIMS.values()):
        _normal(p[f"projection_{m}"]["kernel"], np.sqrt(2.0 / (dim + D)), f"projection_{m}/kernel")
        _uniform(p[f"projection_{m}"]["bias"], 1.0 / np.sqrt(dim), f"projection_{m}/bias")


def test_mgcn_xavier_uniform_ids_and_linear_defaults_everywhere(dataset):
    def touch(mdl, ctx):
        out = [mdl.query_out(mdl.query_hidden(mdl.item_embedding))]
        for m in range(2):
            out += [mdl.purifiers[m](mdl.projections[m](ctx["features"][m])), mdl.preferences[m](mdl.user_embedding)]
        return out

    p = _params(dataset, "mgcn", touch, embedding_size=D, knn_k=3, graph_cache="none", modalities=list(DIMS))
    _id_tables(p)
    for m, dim in enumerate(DIMS.values()):
        _torch_linear(p[f"projection_{m}"], dim, f"projection_{m}")
        _torch_linear(p[f"purifier_{m}"], D, f"purifier_{m}")
        _torch_linear(p[f"preference_{m}"], D, f"preference_{m}")
    _torch_linear(p["query_hidden"], D, "query_hidden")
    assert set(p["query_out"]) == {"kernel"} and p["query_out"]["kernel"].shape == (D, 1)  # no bias
    _uniform(p["query_out"]["kernel"], 1.0 / np.sqrt(D), "query_out/kernel")


def test_lgmrec_xavier_uniform_ids_projections_and_hyperedges(dataset):
    p = _params(dataset, "lgmrec", lambda mdl, ctx: mdl.user_embedding, embedding_size=D, feat_embed_dim=D,
                hyper_num=4, modalities=list(DIMS))
    _id_tables(p)
    for m, dim in enumerate(DIMS.values()):
        assert p[f"projection_{m}"].shape == (dim, D) and p[f"hyperedges_{m}"].shape == (dim, 4)
        _xavier_uniform(p[f"projection_{m}"], f"projection_{m}")
        _xavier_uniform(p[f"hyperedges_{m}"], f"hyperedges_{m}")


def test_vbpr_mmrec_compat_xavier_tables_xavier_normal_projection_zero_bias(dataset):
    p = _params(dataset, "vbpr", lambda mdl, ctx: mdl.user_table, embedding_size=D, visual_size=D,
                mmrec_compat=True, modalities=list(DIMS))
    assert p["user_embedding"].shape == (250, 2 * D)
    _xavier_uniform(p["user_embedding"], "user_embedding")
    _xavier_uniform(p["item_embedding"], "item_embedding")
    total = sum(DIMS.values())
    _normal(p["projection"], np.sqrt(2.0 / (total + D)), "projection")
    assert np.all(p["projection_bias"] == 0)
