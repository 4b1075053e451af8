"""The model contract, checked for EVERY registered model from one list (``models.available()``).

A newly registered model gets all of these with no edit here: ``encode`` shapes and finiteness,
scalar finite loss terms named as its default weights, padding rows (weight 0) that change no
term and no gradient, ``jit`` and ``grad`` with finite gradients, and data parallelism: several
epochs through the real :class:`~jaxrec.train.StepRunner` with ``pmap`` over 4 devices end
where one device ends -- including each epoch's padded last batch, whose padding leaves whole
devices without a real row (the harder case; 2 devices, which VBPR's and the fusion presets'
own parity tests run, would only check a subset of it).

Builder arguments are shrunk generically (any ``embedding_size``-like argument becomes 8, no
graph cache); ``TINY_ARGS`` adds what a model cannot run on this dataset without (a kNN size
below the 10 items, a GAN's steps). Aliases of one builder are checked once.
"""

import inspect

import jax
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import Interactions, Modality, MultimodalDataset
from jaxrec.train import EpochSampler, StepRunner, TrainConfig, init_state, make_optimizer

N_USERS, N_ITEMS, BATCH, N_NEG, EPOCHS = 12, 10, 16, 2, 3
# Parameters and terms after EPOCHS epochs (9 Adam steps at learning rate 0.05): pmap against
# one device, float32 reductions in another order.
RTOL, ATOL = 2e-3, 2e-4

SMALL = {"embedding_size": 8, "feat_embed_dim": 8, "visual_size": 8, "proj_dim": 8, "kg_embedding_size": 8,
         "kg_batch_size": 16, "shared_dim": 3, "knn_k": 3, "graph_cache": "none", "hyper_num": 2}
TINY_ARGS = {
    "gan": {"modality": "image", "gan": {"steps": 20, "eval_every": 10, "batch_size": 8, "hidden_dims": [8]},
            "id_embedding_dim": 2, "base_args": {"embedding_size": 8, "visual_size": 8}},
    "contrastive": {"base_args": {"embedding_size": 8}},
    "lattice": {"knn_block_size": 4, "knn_column_block_size": 8},
}


def contract_dataset():
    """12 users, 10 items, two modalities (the second missing for two items), a small KG.

    Every user has three train, one valid and one test interaction among items 0-8; item 9 has
    only held-out interactions, so it is never trained (a cold-start negative). 36 train rows
    make batches of 16, 16 and 4 real rows + 12 padding rows.
    """
    rng = np.random.default_rng(0)
    users, items, split = [], [], []
    for u in range(N_USERS):
        chosen = rng.choice(9, 5, replace=False)
        users += [u] * 5
        items += list(chosen)
        split += [0, 0, 0, 1, 2]
    users += [0, 1]
    items += [9, 9]
    split += [1, 2]
    present = np.ones(N_ITEMS, bool)
    present[[3, 7]] = False
    modalities = {"text": Modality("text", rng.normal(size=(N_ITEMS, 5)).astype(np.float32), np.ones(N_ITEMS, bool)),
                  "image": Modality("image", np.where(present[:, None], rng.normal(size=(N_ITEMS, 4)), 0.0)
                                    .astype(np.float32), present)}
    kg = np.stack([np.arange(N_ITEMS), rng.integers(0, 2, N_ITEMS), rng.integers(0, 6, N_ITEMS)], axis=1)
    return MultimodalDataset("contract", N_USERS, N_ITEMS,
                             Interactions(np.array(users), np.array(items), np.array(split, np.int8)),
                             modalities=modalities, kg_triples=kg.astype(np.int32), n_entities=6, n_relations=2)


DATASET = contract_dataset()


def _distinct_builders():
    seen, names = set(), []
    for name in models.available():
        builder = models.get_builder(name)
        if builder not in seen:
            seen.add(builder)
            names.append(name)
    return names


MODELS = _distinct_builders()
_BUILT = {}


def built_model(name):
    if name not in _BUILT:
        builder = models.get_builder(name)
        known = inspect.signature(builder).parameters
        args = {k: v for k, v in SMALL.items() if k in known}
        args.update(TINY_ARGS.get(name, {}))
        _BUILT[name] = models.build(name, DATASET, **args)
    return _BUILT[name]


def _init(built, seed=0):
    sampler = EpochSampler(DATASET, batch_size=BATCH, n_negatives=N_NEG, seed=0)
    tx = make_optimizer(TrainConfig(learning_rate=0.05), sampler.steps_per_epoch)
    return sampler, tx, jax.device_get(init_state(built.module, built.ctx, sampler.example_batch(), tx, seed=seed))


_TERMS_AND_GRADS = {}


def _terms_and_grads(built, params, batch):
    # ctx and batch are arguments of the compiled function, as in the trainer; one compiled
    # function per model, so the tests that evaluate the same batch shape compile it once.
    if id(built) not in _TERMS_AND_GRADS:
        def loss(p, ctx, batch):
            terms = built.module.apply({"params": p}, ctx, batch, True, method="loss_terms",
                                       rngs={"dropout": jax.random.PRNGKey(3)})
            return sum(terms.values()), terms

        _TERMS_AND_GRADS[id(built)] = jax.jit(jax.value_and_grad(loss, has_aux=True))
    (_, terms), grads = _TERMS_AND_GRADS[id(built)](params, built.ctx, batch)
    return terms, grads


def _real_batch():
    batch = EpochSampler(DATASET, batch_size=BATCH, n_negatives=N_NEG, seed=0).batches(0)
    return {k: v[0] for k, v in batch.items()}  # the epoch's first, full batch


@pytest.mark.parametrize("name", MODELS)
def test_encode_and_terms(name):
    built = built_model(name)
    _, _, state = _init(built)
    users, items = jax.jit(lambda p, ctx: built.module.apply({"params": p}, ctx, False, method="encode"))(
        state.params, built.ctx)
    assert users.shape[0] == N_USERS and items.shape[0] == N_ITEMS and users.shape[1] == items.shape[1]
    assert np.isfinite(np.asarray(users)).all() and np.isfinite(np.asarray(items)).all()
    terms, grads = _terms_and_grads(built, state.params, _real_batch())
    assert set(terms) == set(built.default_loss_weights)
    for term, value in terms.items():
        assert np.shape(value) == () and np.isfinite(float(value)), (term, value)
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in leaves)
    assert any(np.abs(np.asarray(g)).max() > 0 for g in leaves)  # the terms do depend on the parameters


@pytest.mark.parametrize("name", MODELS)
def test_rows_of_weight_zero_change_nothing(name):
    built = built_model(name)
    _, _, state = _init(built)
    batch = _real_batch()
    rng = np.random.default_rng(5)
    extra = 8
    garbage = {"users": rng.integers(0, N_USERS, extra), "pos_items": rng.integers(0, N_ITEMS, extra),
               "neg_items": rng.integers(0, N_ITEMS, (extra, N_NEG)), "weights": np.zeros(extra)}
    padded = models.normalize_batch({k: np.concatenate([batch[k], garbage[k]]) for k in batch})
    terms, grads = _terms_and_grads(built, state.params, batch)
    padded_terms, padded_grads = _terms_and_grads(built, state.params, padded)
    for term in terms:
        np.testing.assert_allclose(float(padded_terms[term]), float(terms[term]), rtol=1e-5, atol=1e-7, err_msg=term)
    for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(padded_grads)):
        np.testing.assert_allclose(np.asarray(h), np.asarray(g), rtol=1e-4, atol=1e-6)


def _epoch_hook(built, state, ctx, epoch):
    # The model's epoch hook (FREEDOM's pruning, LATTICE's learned graph in epoch mode).
    key = jax.random.fold_in(jax.random.PRNGKey(11), epoch)
    if built.epoch_update is not None:
        return built.epoch_update(state.params, ctx, epoch, key)
    return ctx


def _train(built, sampler, tx, start, devices):
    parallel = "none" if devices == 1 else "pmap"
    runner = StepRunner(built.module, tx, built.default_loss_weights, parallel=parallel, batch_size=BATCH,
                        devices=jax.local_devices()[:devices])
    state, ctx, history = runner.put_state(start), built.ctx, []
    for epoch in range(EPOCHS):
        ctx = _epoch_hook(built, runner.get_state(state), ctx, epoch)
        state, metrics = runner.run(state, runner.put_ctx(ctx), runner.put_batches(sampler.batches(epoch)))
        history.append({k: np.asarray(v) for k, v in metrics.terms.items()})
    return jax.device_get(runner.get_state(state)), history


@pytest.mark.parametrize("name", MODELS)
def test_pmap_over_4_devices_equals_one_device(name):
    if jax.device_count() < 4:
        pytest.skip("needs 4 devices (tests/conftest.py sets XLA_FLAGS for 4 fake CPU devices)")
    built = built_model(name)
    sampler, tx, start = _init(built)
    last = sampler.batches(0)["weights"][-1]
    assert 0 < last.sum() <= BATCH // 4  # the last batch's padding empties whole devices
    single, single_history = _train(built, sampler, tx, start, 1)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(single.params), jax.tree.leaves(start.params))]
    assert any(moved)
    for devices in (4,):
        parallel, history = _train(built, sampler, tx, start, devices)
        for epoch, (ours, theirs) in enumerate(zip(history, single_history)):
            for term in theirs:
                np.testing.assert_allclose(ours[term], theirs[term], rtol=RTOL, atol=ATOL,
                                           err_msg=f"{term}, epoch {epoch}, {devices} devices")
        for path, a in jax.tree_util.tree_leaves_with_path(parallel.params):
            b = single.params
            for key in path:
                b = b[key.key]
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=RTOL, atol=ATOL,
                                       err_msg=f"{jax.tree_util.keystr(path)}, {devices} devices")


def _has_fixed_graph(ctx) -> bool:
    from jaxrec.data.graph import FixedGraph

    return any(isinstance(leaf, FixedGraph)
               for leaf in jax.tree.leaves(ctx, is_leaf=lambda x: isinstance(x, FixedGraph)))


@pytest.mark.parametrize("name", [name for name in MODELS if _has_fixed_graph(built_model(name).ctx)])
def test_cpu_propagation_kernel_gives_the_xla_paths_terms_and_gradients(name, monkeypatch):
    """Every model with a constant graph: the same loss terms and gradients with the CPU kernel
    (csr_propagate.cc) and with XLA's gather + scatter (JAXREC_NATIVE_KERNELS=0), to float rounding.
    (The product alone is bit for bit XLA's, tests/test_graph_native.py; inside a model XLA may fuse
    neighbouring ops into its scatter and round otherwise: it does here on this tiny graph, and on
    lfm2k's graphs in MGCN only.)"""
    from _native_kernel import REASON, UNAVAILABLE
    from jaxrec.data.graph import _csr_native

    if UNAVAILABLE:
        pytest.skip(REASON)
    built = built_model(name)
    _, _, state = _init(built)
    batch = _real_batch()

    def loss(p, ctx, batch):
        terms = built.module.apply({"params": p}, ctx, batch, True, method="loss_terms",
                                   rngs={"dropout": jax.random.PRNGKey(3)})
        return sum(terms.values()), terms

    results = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("JAXREC_NATIVE_KERNELS", setting)
        compiled = jax.jit(jax.value_and_grad(loss, has_aux=True)).lower(state.params, built.ctx, batch)
        assert (_csr_native.TARGET in compiled.as_text()) == (setting == "1")
        (_, terms), grads = compiled.compile()(state.params, built.ctx, batch)
        results[setting] = jax.tree.map(np.asarray, (terms, grads))
    # atol 1e-6: LGMRec's hypergraph gradients (~3e-3) differ by up to 1.5e-7 between the two when the
    # tests compile with XLA's older fusion emitters (tests/_xla_flags.py); a wrong kernel row is O(1e-3).
    for native, xla in zip(jax.tree.leaves(results["1"]), jax.tree.leaves(results["0"])):
        np.testing.assert_allclose(native, xla, rtol=1e-5, atol=1e-6)


TRACED = [(name, arg) for name in models.available() for arg in models.traced_args(name)]


def _built_with(name, **extra):
    builder = models.get_builder(name)
    known = inspect.signature(builder).parameters
    args = {k: v for k, v in SMALL.items() if k in known}
    args.update(TINY_ARGS.get(name, {}))
    return models.build(name, DATASET, **args, **extra)


def test_traced_arguments_are_declared_for_the_models_whose_grids_vary_them():
    assert ("lgmrec", "alpha") in TRACED and ("bm3", "dropout") in TRACED and ("contrastive", "temperature") in TRACED
    assert {name for name, arg in TRACED if arg == "id_dropout"} == {"fusion_mf", "attention", "gated", "ensemble",
                                                                     "kernel", "subspace"}


def _traced_cases():
    cases = []
    for name, arg in TRACED:
        cases.append((name, arg, 0.6))
        if models.traced_args(name)[arg] is not None:  # the value at which the number skips the operation
            cases.append((name, arg, models.traced_args(name)[arg]))
    return cases


@pytest.mark.parametrize("name, arg, value", _traced_cases())
def test_a_traced_argument_reaches_the_module_alone_and_computes_as_the_number(name, arg, value):
    """``register(traced_args=...)``, which a batched search relies on to train trials that differ
    in ``arg`` as one program: the builder hands ``arg`` to the module unchanged (the model built
    with ``value`` is the one built with 0.3, cloned with ``value``) and uses it for nothing else
    (same context, weights, no epoch hook); and the module cloned with a TRACED ``value`` gives the
    loss terms, gradients and embeddings of the module built with the number (float rounding of
    the value's arithmetic aside), with the same dropout draws -- also at the branch value (a
    dropout rate of 0), where the number leaves the operation out and the traced value runs it."""
    low, high = _built_with(name, **{arg: 0.3}), _built_with(name, **{arg: value})
    assert high.module == low.module.clone(**{arg: value}) and getattr(high.module, arg) == value
    assert jax.tree.structure(high.ctx) == jax.tree.structure(low.ctx)
    for a, b in zip(jax.tree.leaves(high.ctx), jax.tree.leaves(low.ctx)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert high.default_loss_weights == low.default_loss_weights
    assert high.epoch_update is None and low.epoch_update is None and high.epoch_start_params is None
    _, _, state = _init(high)
    batch = _real_batch()

    def loss(module, p, ctx, batch):
        terms = module.apply({"params": p}, ctx, batch, True, method="loss_terms",
                             rngs={"dropout": jax.random.PRNGKey(3)})
        return sum(terms.values()), terms

    fixed = jax.jit(jax.value_and_grad(lambda p, c, b: loss(high.module, p, c, b), has_aux=True))(
        state.params, high.ctx, batch)
    traced = jax.jit(jax.value_and_grad(lambda p, c, b, v: loss(low.module.clone(**{arg: v}), p, c, b), has_aux=True))(
        state.params, high.ctx, batch, np.float32(value))
    for one, other in zip(jax.tree.leaves(fixed), jax.tree.leaves(traced)):
        np.testing.assert_allclose(np.asarray(one), np.asarray(other), rtol=1e-5, atol=1e-7)
    users, items = jax.jit(lambda p, c, v: low.module.clone(**{arg: v}).apply({"params": p}, c, False,
                                                                                method="encode"))(
        state.params, high.ctx, np.float32(value))
    expected = jax.jit(lambda p, c: high.module.apply({"params": p}, c, False, method="encode"))(state.params, high.ctx)
    np.testing.assert_allclose(np.asarray(users), np.asarray(expected[0]), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(items), np.asarray(expected[1]), rtol=1e-5, atol=1e-7)
