"""CKE: TransR and the loss terms against numpy, KG sampling, gradients, KG nodes from RecBole
link files, learning on synthetic data with a planted KG, (pmap parity: tests/test_model_contract.py)."""

import jax
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxrec import models
from jaxrec.data import Interactions, MultimodalDataset, make_synthetic, read_recbole, split_dataset
from jaxrec.errors import ConfigError
from jaxrec.models.cke import CKE, item_nodes, transr_score

from _model_testing import popularity_recall, train_tiny


def _np_unit(x):
    return x / np.maximum(np.sqrt((x ** 2).sum(-1, keepdims=True)), 1e-12)


def _np_transr(h, r, t, M, normalize):
    """||h M + r - t M||^2 one triple at a time, with explicit loops over the matrix product."""
    out = np.empty(len(h))
    for s in range(len(h)):
        hm = np.array([sum(h[s, a] * M[s, a, b] for a in range(h.shape[1])) for b in range(M.shape[2])])
        tm = np.array([sum(t[s, a] * M[s, a, b] for a in range(t.shape[1])) for b in range(M.shape[2])])
        rr = r[s]
        if normalize:
            hm, rr, tm = hm / np.linalg.norm(hm), rr / np.linalg.norm(rr), tm / np.linalg.norm(tm)
        out[s] = np.sum((hm + rr - tm) ** 2)
    return out


@pytest.mark.parametrize("normalize", [False, True])
def test_transr_score_matches_numpy(normalize):
    rng = np.random.default_rng(0)
    h, t = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    r, M = rng.normal(size=(5, 3)), rng.normal(size=(5, 4, 3))
    got = transr_score(h, r, t, M, normalize=normalize)
    np.testing.assert_allclose(np.asarray(got), _np_transr(h, r, t, M, normalize), rtol=1e-5)


def _module(n_relations=2, **kw):
    return CKE(n_users=5, n_items=6, n_nodes=10, n_entities=7, n_relations=n_relations, embedding_size=4,
               kg_embedding_size=3, kg_batch_size=8, **kw)


def _random_params(module, seed=0):
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), _ctx(), method="encode"))["params"]
    return jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def _apply(module, params, *args, method):
    # Jitted: one compiled call instead of dispatching every small op eagerly.
    return jax.jit(lambda p, *a: module.apply({"params": p}, *a, method=method))(params, *args)


def _ctx():
    return {"item_node": np.array([7, 8, 2, 9, 0, 3], np.int32), "trained": np.array([1, 1, 1, 1, 0, 1], bool),
            "kg_triples": np.array([[7, 0, 1], [8, 1, 4], [9, 0, 5], [2, 1, 6], [3, 0, 1]], np.int32)}


def _np_kg_terms(p, triples, corrupted, normalize, loss, margin=1.0):
    E, R, T = p["entity_embedding"], p["relation_embedding"], p["transfer"]
    h, r, t, t2 = E[triples[:, 0]], R[triples[:, 1]], E[triples[:, 2]], E[corrupted]
    M = T[triples[:, 1]]
    pos, neg = _np_transr(h, r, t, M, normalize), _np_transr(h, r, t2, M, normalize)
    kg = np.mean(np.maximum(0, margin + pos - neg)) if loss == "margin" else np.mean(np.log1p(np.exp(pos - neg)))
    hm, tm, t2m = np.einsum("sd,sdk->sk", h, M), np.einsum("sd,sdk->sk", t, M), np.einsum("sd,sdk->sk", t2, M)
    reg = (np.linalg.norm(hm) + np.linalg.norm(r) + np.linalg.norm(tm) + np.linalg.norm(t2m)) / len(h)
    return kg, reg


@pytest.mark.parametrize("n_relations", [2, 12])  # the dense (all-M_r) and the gathered projection
@pytest.mark.parametrize("normalize,loss", [(True, "bpr"), (False, "bpr"), (True, "margin")])
def test_kg_terms_match_numpy(n_relations, normalize, loss):
    module = _module(n_relations=n_relations, kg_normalize=normalize, kg_loss=loss, margin=0.7)
    params = _random_params(module)
    triples = np.array([[7, 0, 1], [8, 1, 4], [2, 1, 6], [9, 0, 0]], np.int32)
    corrupted = np.array([3, 0, 6, 5], np.int32)
    got = _apply(module, params, triples, corrupted, method="kg_terms")
    kg, reg = _np_kg_terms(params, triples, corrupted, normalize, loss, margin=0.7)
    np.testing.assert_allclose(float(got["kg"]), kg, rtol=1e-5)
    np.testing.assert_allclose(float(got["kg_reg"]), reg, rtol=1e-5)


def test_kg_projection_path_with_a_table_smaller_than_the_batch():
    # 10 nodes, 3 x 8 = 24 projected rows: the whole table is projected once, then gathered.
    module = _module(n_relations=2)
    params = _random_params(module, seed=4)
    rng = np.random.default_rng(4)
    triples = np.stack([rng.integers(0, 10, 8), rng.integers(0, 2, 8), rng.integers(0, 7, 8)], 1).astype(np.int32)
    corrupted = rng.integers(0, 7, 8).astype(np.int32)
    got = _apply(module, params, triples, corrupted, method="kg_terms")
    kg, reg = _np_kg_terms(params, triples, corrupted, True, "bpr")
    np.testing.assert_allclose([float(got["kg"]), float(got["kg_reg"])], [kg, reg], rtol=1e-5)


def test_rank_terms_match_numpy_and_skip_untrained_negatives_and_padding():
    module = _module()
    params = _random_params(module, seed=1)
    ctx = _ctx()
    batch = {"users": np.array([0, 1, 4, 2]), "pos_items": np.array([0, 3, 5, 1]),
             "neg_items": np.array([[2, 4], [1, 5], [4, 0], [3, 3]]), "weights": np.array([1, 1, 1, 0], np.float32)}
    terms = _apply(module, params, ctx, batch, method="loss_terms")
    p = params
    item_vec = (np.where(ctx["trained"][:, None], p["item_embedding"], 0) + p["entity_embedding"][ctx["item_node"]])
    U = p["user_embedding"]
    losses_, norms_u, norms_p, norms_n = [], [], [], []
    for b in range(3):  # row 3 is padding
        u = U[batch["users"][b]]
        pos = item_vec[batch["pos_items"][b]]
        norms_u.append(u), norms_p.append(pos)
        for j in batch["neg_items"][b]:
            if ctx["trained"][j]:  # item 4 never trained: not a negative
                losses_.append(np.log1p(np.exp(u @ item_vec[j] - u @ pos)))
                norms_n.append(item_vec[j])
    np.testing.assert_allclose(float(terms["bpr"]), np.mean(losses_), rtol=1e-5)
    reg = (np.linalg.norm(norms_u) + np.linalg.norm(norms_p) + np.linalg.norm(norms_n)) / 3
    np.testing.assert_allclose(float(terms["reg"]), reg, rtol=1e-5)
    # encode: the never-trained item 4 has no free offset, only its KG node (node 0).
    users, items = _apply(module, params, ctx, method="encode")
    np.testing.assert_allclose(np.asarray(items), item_vec, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(items[4]), p["entity_embedding"][0], rtol=1e-6)


def test_kg_batch_is_drawn_from_the_context_by_key():
    module = _module()
    ctx = _ctx()
    params = _random_params(module)
    draw = lambda key: module.apply({"params": params}, ctx, key, method="sample_kg_batch")  # noqa: E731
    (t1, c1), (t2, c2), (t3, _) = draw(jax.random.PRNGKey(0)), draw(jax.random.PRNGKey(0)), draw(jax.random.PRNGKey(1))
    assert t1.shape == (8, 3) and c1.shape == (8,)
    np.testing.assert_array_equal(t1, t2), np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(t1, t3)
    rows = {tuple(r) for r in ctx["kg_triples"].tolist()}
    assert all(tuple(r) in rows for r in np.asarray(t1).tolist())
    assert 0 <= int(c1.min()) and int(c1.max()) < 7  # corrupted tails are entities, never item nodes


def test_kg_terms_gradient_matches_finite_differences():
    module = _module(kg_loss="bpr")
    params = jax.tree.map(lambda a: a.astype(np.float64), _random_params(module, seed=2))
    triples = np.array([[7, 0, 1], [8, 1, 4], [2, 1, 6]], np.int32)
    corrupted = np.array([3, 0, 5], np.int32)
    with jax.enable_x64():
        f = jax.jit(lambda p: (lambda t: t["kg"] + 0.3 * t["kg_reg"])(
            module.apply({"params": p}, triples, corrupted, method="kg_terms")))
        check_grads(f, (params,), order=1, modes=["rev"], atol=1e-5, rtol=1e-5)


# ---- building from data ------------------------------------------------------------------------

INTER = ["user_id:token\titem_id:token\ttimestamp:float"] + [
    f"u{u}\tm{i}\t{10 * u + i}" for u in range(8) for i in range(6) if (u + i) % 3 != 0]
KG = ["head_id:token\trelation_id:token\ttail_id:token",
      "e0\tgenre\tg1", "e1\tgenre\tg1", "e2\tgenre\tg2", "e3\tsimilar\te0", "e4\tgenre\tg2", "g1\tsub_of\tg2"]
LINK = ["item_id:token\tentity_id:token", "m0\te0", "m1\te1", "m2\te2", "m3\te3", "m4\te4"]


def _recbole_dataset(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    for suffix, lines in {"inter": INTER, "kg": KG, "link": LINK}.items():
        (folder / f"ml.{suffix}").write_text("\n".join(lines) + "\n")
    return split_dataset(read_recbole(folder), "ratio", ratios=(0.6, 0.2, 0.2), seed=0)


def test_recbole_kg_items_share_their_linked_entity(tmp_path):
    dataset = _recbole_dataset(tmp_path)
    entity_ids = list(dataset.metadata["entity_ids"])
    nodes, n_nodes = item_nodes(dataset)
    for item, original in enumerate(dataset.item_ids.tolist()):
        if original == "m5":  # not linked: a node of its own after the entities
            assert nodes[item] == dataset.n_entities and n_nodes == dataset.n_entities + 1
        else:
            assert entity_ids[nodes[item]] == "e" + original[1:]
    built = models.build("cke", dataset, embedding_size=4, kg_embedding_size=3, kg_batch_size=4)
    # item m0 is the tail of (e3, similar, e0): its triple's tail node IS m0's node.
    m0, m3 = list(dataset.item_ids).index("m0"), list(dataset.item_ids).index("m3")
    similar = list(dataset.metadata["relation_ids"]).index("similar")
    assert [nodes[m3], similar, nodes[m0]] in built.ctx["kg_triples"].tolist()


def test_trains_on_a_recbole_fixture_with_finite_terms(tmp_path):
    from jaxrec.train import config_from_dict, train_and_evaluate

    dataset = _recbole_dataset(tmp_path)
    config = config_from_dict({
        "data": {"synthetic": {}}, "model": {"name": "cke", "args": {"embedding_size": 4, "kg_batch_size": 4}},
        "train": {"epochs": 3, "batch_size": 8, "patience": 3, "checkpoint_every": 3, "valid_metric": "recall@2"},
        "eval": {"ks": [2], "metrics": ["recall"], "batch_size": 8}})
    metrics = train_and_evaluate(config, tmp_path / "run", dataset=dataset, quiet=True)
    assert metrics["epochs_run"] == 3 and np.isfinite(metrics["test"]["recall@2"])
    history = (tmp_path / "run" / "history.jsonl").read_text().splitlines()
    import json

    terms = json.loads(history[-1])["terms"]
    assert set(terms) == {"bpr", "reg", "kg", "kg_reg"} and all(np.isfinite(v) for v in terms.values())


def test_builder_checks_arguments(tmp_path):
    plain = MultimodalDataset("p", 3, 4, Interactions(np.array([0, 1, 2]), np.array([0, 1, 2]), np.array([0, 1, 2])))
    with pytest.raises(ConfigError, match="needs a knowledge graph"):
        models.build("cke", plain)
    dataset = _recbole_dataset(tmp_path)
    with pytest.raises(ConfigError, match="kg_loss"):
        models.build("cke", dataset, kg_loss="hinge")
    with pytest.raises(ConfigError, match="kg_batch_size"):
        models.build("cke", dataset, kg_batch_size=0)
    with pytest.raises(ConfigError, match="tag_kg"):
        models.build("cke", dataset, tag_kg="tags.tsv")
    with pytest.raises(ConfigError, match="kg_batch"):
        models.build("cke", dataset, kg_batchsize=3)


# ---- learning ------------------------------------------------------------------------------------


def _planted_kg_dataset():
    """Synthetic interactions plus a KG planted from the true item factors: relation r links
    each item to the nearest of 6 random directions in the r-th half of the latent space."""
    dataset, truth = make_synthetic(300, 200, n_interactions=9000, seed=3, popularity_skew=0.5, temperature=0.3,
                                    latent_dim=8, return_truth=True)
    rng = np.random.default_rng(0)
    q = truth.item_factors
    rows = []
    for relation, dims in enumerate((slice(0, 4), slice(4, 8))):
        directions = rng.normal(size=(4, 6))
        tails = relation * 6 + np.argmax(q[:, dims] @ directions, axis=1)
        rows += [(item, relation, tail) for item, tail in enumerate(tails)]
    return dataset.replace(kg_triples=np.array(rows), n_entities=12, n_relations=2)


def test_learns_better_than_popularity(tmp_path):
    dataset = _planted_kg_dataset()
    metrics = train_tiny(tmp_path / "run", dataset, "cke", {"embedding_size": 16, "kg_batch_size": 256}, epochs=25,
                         learning_rate=0.01, loss_weights={"reg": 1e-3}, parallel="none")
    baseline = popularity_recall(dataset)
    assert metrics["test"]["recall@20"] > 1.5 * baseline, (metrics["test"], baseline)


def test_the_lfm2k_config_is_valid_and_builds_the_tag_kg(lfm2k_path, monkeypatch):
    from pathlib import Path

    from jaxrec.data import load
    from jaxrec.train import load_config

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)  # the config's paths are relative to the project root
    config = load_config(root / "experiments/configs/lfm2k/cke.yaml")
    assert config.model.name == "cke" and config.loss_weights["kg"] > 0
    built = models.build("cke", load(lfm2k_path), **config.model.args)
    assert built.ctx["kg_triples"].shape == (33462, 3) and built.module.n_entities == 1260
