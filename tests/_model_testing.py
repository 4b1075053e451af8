"""Set-up shared by the model tests: tiny datasets, compiled applies, randomized parameters,
short training runs, the popularity baseline and the pmap-versus-one-device parity run.

Plain functions; each test keeps its own assertions and tolerances.
"""

import functools
import re
from types import SimpleNamespace

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import eval as jeval
from jaxrec.data import Interactions, Modality, MultimodalDataset


def tiny_multimodal_dataset(presence, dims, n_users=5):
    """Eight items with ``len(dims)`` modalities whose presence per item is ``presence``.

    Every user has two train, one valid and one test interaction among items 0-6; item 7 has
    only a valid and a test interaction, so it is never trained.

    Args:
      presence: bool array ``[8, n_modalities]``.
      dims: ``[(name, width), ...]``, one per modality.
      n_users: number of users.

    Returns:
      A ``MultimodalDataset`` whose absent feature rows are zero.
    """
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(n_users), 4)
    items = np.stack([users[::4], users[::4] + 2, users[::4] + 3, users[::4] + 5], axis=1).ravel() % 7
    split = np.tile(np.array([0, 0, 1, 2], np.int8), n_users)
    users, items, split = np.append(users, [0, 2]), np.append(items, [7, 7]), np.append(split, [2, 1]).astype(np.int8)
    modalities = {}
    for m, (name, dim) in enumerate(dims):
        mask = presence[:, m]
        features = np.where(mask[:, None], rng.normal(size=(8, dim)), 0.0).astype(np.float32)
        modalities[name] = Modality(name, features, mask)
    return MultimodalDataset("tiny", n_users, 8, Interactions(users, items, split), modalities=modalities)


@functools.lru_cache(maxsize=None)
def _compiled(module, method, flags):
    # Python bools (the ``train`` flag) stay static; everything else is traced.
    def apply(p, arrays):
        values = iter(arrays)
        args = [flag if flag is not None else next(values) for flag in flags]
        return module.apply({"params": p}, *args, method=method)

    return jax.jit(apply)


def compiled_apply(module, params, *args, method):
    """``module.apply`` compiled once per (module, method): eager applies dispatch op by op.

    Python bool arguments (the ``train`` flag) are static; the others are traced.
    """
    flags = tuple(a if isinstance(a, bool) else None for a in args)
    return _compiled(module, method, flags)(params, [a for a in args if not isinstance(a, bool)])


def randomized_params(built, seed=1, scale=0.7):
    """Every parameter of ``built.module`` drawn from ``scale * N(0, 1)`` (float32, numpy), so that
    no leaf keeps a special initial value (zero biases, identity-like starts)."""
    from jaxrec.train import init_entry_points

    batch = {"users": np.zeros(2, np.int32), "pos_items": np.zeros(2, np.int32),
             "neg_items": np.zeros((2, 1), np.int32), "weights": np.ones(2, np.float32)}
    shapes = jax.eval_shape(lambda: built.module.init(jax.random.PRNGKey(0), built.ctx, batch, method=init_entry_points))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (scale * rng.normal(size=s.shape)).astype(np.float32), shapes)["params"]


def train_tiny(run_dir, dataset, name, args, *, epochs, learning_rate, loss_weights=None, split=None,
               parallel=None):
    """Train ``name`` on ``dataset`` with batches of 512, no early stop, and return its metrics.

    Args:
      run_dir: the run's output folder.
      dataset: the in-memory dataset (the config's data section is a placeholder).
      name, args: the model and its arguments.
      epochs: epochs, also the patience and the checkpoint interval.
      learning_rate: Adam's learning rate.
      loss_weights: the config's ``loss_weights`` (left out when None).
      split, parallel: ``data.split`` and ``train.parallel`` (left out when None).

    Returns:
      ``train_and_evaluate``'s metrics, evaluated at recall@20.
    """
    from jaxrec.train import config_from_dict, train_and_evaluate

    data = {"synthetic": {}} if split is None else {"synthetic": {}, "split": split}
    train = {"epochs": epochs, "batch_size": 512, "learning_rate": learning_rate, "patience": epochs, "seed": 0,
             "checkpoint_every": epochs}
    if parallel is not None:
        train["parallel"] = parallel
    config = {"data": data, "model": {"name": name, "args": args}, "train": train,
              "eval": {"ks": [20], "metrics": ["recall"]}}
    if loss_weights is not None:
        config["loss_weights"] = loss_weights
    return train_and_evaluate(config_from_dict(config), run_dir, dataset=dataset, quiet=True)


def popularity_recall(dataset, candidate_items=None, popularity=None):
    """Test recall@20 of ranking every user's items by ``popularity`` (default: train counts).

    An independent baseline: no model, the same evaluation protocol (train and valid items
    excluded).
    """
    train_pairs = dataset.split_pairs("train")
    if popularity is None:
        popularity = np.bincount(train_pairs[:, 1], minlength=dataset.n_items)
    result = jeval.evaluate_protocol(
        np.ones((dataset.n_users, 1), np.float32), np.asarray(popularity, np.float32)[:, None], split="test",
        train_pairs=train_pairs, valid_pairs=dataset.split_pairs("valid"), test_pairs=dataset.split_pairs("test"),
        ks=[20], metrics=["recall"], candidate_items=candidate_items)
    return result["recall@20"]


def pmap_parity_run(built, dataset, loss_weights, *, n_negatives=2, n_batches=3, ctx=None, **train_options):
    """The same first ``n_batches`` steps (batches of 64) without parallelism and with pmap.

    Both runs start from one initial state; the caller compares them.

    Args:
      built: the built model.
      dataset: the dataset the sampler draws from.
      loss_weights: the runner's loss weights.
      n_negatives: negatives per positive.
      n_batches: how many of epoch 0's batches to run.
      ctx: the context to run on (default ``built.ctx``).
      **train_options: ``TrainConfig`` fields for ``make_optimizer`` (optimizer, learning_rate).

    Returns:
      A namespace: ``start`` (initial state), ``single`` and ``pmapped`` (final states),
      ``single_loss`` and ``pmap_loss`` (per step), ``single_terms`` (per step, per term),
      ``n_devices`` (of the pmap run) and ``batches``.
    """
    from jaxrec.train import EpochSampler, StepRunner, TrainConfig, init_state, make_optimizer

    ctx = built.ctx if ctx is None else ctx
    sampler = EpochSampler(dataset, batch_size=64, n_negatives=n_negatives, seed=0)
    batches = {k: v[:n_batches] for k, v in sampler.batches(0).items()}
    tx = make_optimizer(TrainConfig(**train_options), sampler.steps_per_epoch)
    start = jax.device_get(init_state(built.module, ctx, sampler.example_batch(), tx, seed=0))
    results = {}
    for parallel in ("none", "pmap"):
        runner = StepRunner(built.module, tx, loss_weights, parallel=parallel, batch_size=64)
        state, metrics = runner.run(runner.put_state(start), runner.put_ctx(ctx), runner.put_batches(batches))
        results[parallel] = (jax.device_get(runner.get_state(state)), np.asarray(metrics.loss), runner.n_devices,
                             {k: np.asarray(v) for k, v in metrics.terms.items()})
    (single, single_loss, _, single_terms), (pmapped, pmap_loss, n_devices, _) = results["none"], results["pmap"]
    return SimpleNamespace(start=start, single=single, pmapped=pmapped, single_loss=single_loss,
                           pmap_loss=pmap_loss, single_terms=single_terms, n_devices=n_devices, batches=batches)


def assert_gradient_matches_central_differences(loss, params, *, rtol, atol, eps=1e-6):
    """Every entry of ``jax.grad(loss)(params)`` against ``(loss(p + eps e) - loss(p - eps e)) / (2 eps)``.

    Args:
      loss: a scalar function of ``params``, a flat dict of float64 arrays.
      params: the point to check at.
      rtol, atol: ``np.testing.assert_allclose`` tolerances.
      eps: the half step.
    """
    grads = jax.grad(loss)(params)
    for name in params:
        for index in np.ndindex(params[name].shape):
            bump = lambda d: {**params, name: params[name].at[index].add(d)}  # noqa: E731
            numeric = (loss(bump(eps)) - loss(bump(-eps))) / (2 * eps)
            np.testing.assert_allclose(grads[name][index], numeric, rtol=rtol, atol=atol)


def init_compiled(module, rngs, *args, method=None, **kwargs):
    """``module.init(rngs, *args, method=method, **kwargs)`` as ONE compiled call.

    An eager Flax ``init`` dispatches every primitive on its own, and XLA:CPU compiles each
    one: 10-30 s for a model's init under load, against well under a second compiled. The
    arguments are closed over (Python flags stay static; numpy arrays become jax constants, so
    that a traced index into them works as in the trainer, whose ``ctx`` is device arrays);
    only ``rngs`` (a key or a dict of keys) is traced.
    """
    as_jax = lambda a: jnp.asarray(a) if isinstance(a, np.ndarray) else a  # noqa: E731
    args, kwargs = jax.tree.map(as_jax, (args, kwargs))
    return jax.jit(lambda r: module.init(r, *args, method=method, **kwargs))(rngs)


def assert_directional_derivatives(loss, params, *, rtol, atol, eps=1e-5, directions=4, seed=0):
    """``grad(loss) . v`` against ``(loss(p + eps v) - loss(p - eps v)) / (2 eps)`` along random directions.

    The same check as ``jax.test_util.check_grads(order=1, modes=["rev"])``, with the loss and its
    gradient each compiled once: ``check_grads`` evaluates its perturbations op by op, which on
    XLA:CPU compiles every primitive anew and costs tens of seconds per model. Call it under
    ``jax.enable_x64()`` with float64 ``params`` (any pytree).

    Args:
      loss: a scalar function of ``params``.
      params: the point to check at.
      rtol, atol: tolerances of the comparison.
      eps: the half step. directions: how many random unit directions (over the whole vector).
      seed: of the directions.
    """
    value = jax.jit(loss)
    grads = jax.jit(jax.grad(loss))(params)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    for _ in range(directions):
        v = [rng.normal(size=np.shape(leaf)) for leaf in leaves]
        norm = np.sqrt(sum(float((d ** 2).sum()) for d in v))
        v = [d / norm for d in v]
        shifted = lambda s: jax.tree.unflatten(  # noqa: E731
            treedef, [leaf + s * np.asarray(d, dtype=np.asarray(leaf).dtype) for leaf, d in zip(leaves, v)])
        numeric = (float(value(shifted(eps))) - float(value(shifted(-eps)))) / (2 * eps)
        analytic = sum(float((np.asarray(g) * d).sum()) for g, d in zip(jax.tree.leaves(grads), v))
        np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=atol)


def numpy_norm_adj(users, items, n_users, n_items):
    """MMRec's get_norm_adj_mat: D^-1/2 A D^-1/2 of the symmetric user-item graph, dense numpy.

    Nodes are the users then the items; a node without edges gets a zero row.
    """
    n = n_users + n_items
    adj = np.zeros((n, n))
    adj[users, items + n_users] = 1.0
    adj[items + n_users, users] = 1.0
    d = adj.sum(1)
    scale = np.where(d > 0, 1.0 / np.sqrt(np.where(d > 0, d, 1.0)), 0.0)
    return adj * scale[:, None] * scale[None, :]


def record_built_features(monkeypatch, modality: str = "image") -> list:
    """Spy on ``jaxrec.models.build``: the returned list gets, for every model built from then
    on, the float64 copy of ``modality``'s feature matrix of the dataset it was built on."""
    from jaxrec import models

    built = []
    real_build = models.build

    def spy(name, dataset, **kwargs):
        built.append(np.asarray(dataset.modalities[modality].features, np.float64))
        return real_build(name, dataset, **kwargs)

    monkeypatch.setattr(models, "build", spy)
    return built


def assert_lattice_and_freedom_build_the_exact_graphs(knn_method: str) -> None:
    """LATTICE's original and learned neighbour lists and FREEDOM's whole context, built with
    ``knn_method`` on 60 synthetic items, equal those built with the exact kNN (a method that
    compares every pair at this size, as the approximate ones do here, must find the exact lists)."""
    import warnings

    from jaxrec import models
    from jaxrec.data import make_synthetic
    from jaxrec.models.lattice import refresh_learned_graph

    data = make_synthetic(40, 60, n_interactions=500, dims={"text": 6, "image": 5}, seed=4)
    kwargs = dict(embedding_size=8, feat_embed_dim=4, knn_k=3, modalities=["image", "text"], graph_cache="none",
                  learned_graph="epoch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exact = models.build("lattice", data, **kwargs)
        approximate = models.build("lattice", data, knn_method=knn_method, **kwargs)
    np.testing.assert_array_equal(np.asarray(approximate.ctx["original_neighbours"]),
                                  np.asarray(exact.ctx["original_neighbours"]))
    params = init_compiled(exact.module, jax.random.PRNGKey(0), exact.ctx, False, method="encode")["params"]
    np.testing.assert_array_equal(np.asarray(refresh_learned_graph(approximate.module, params, approximate.ctx)
                                             ["learned_neighbours"]),
                                  np.asarray(refresh_learned_graph(exact.module, params, exact.ctx)
                                             ["learned_neighbours"]))
    freedom = models.build("freedom", data, knn_k=3, modalities=["image", "text"], graph_cache="none",
                           knn_method=knn_method)
    reference = models.build("freedom", data, knn_k=3, modalities=["image", "text"], graph_cache="none")
    for a, b in zip(jax.tree.leaves(freedom.ctx), jax.tree.leaves(reference.ctx)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


class TwoTables(nn.Module):
    """A two-table model for the optimizer-skipping tests: ``w`` is read by the BPR-like term
    ``bpr``, ``v`` only by ``side`` (whose weight a test may set to 0)."""

    def setup(self):
        self.w = self.param("w", nn.initializers.normal(1.0), (6, 3))
        self.v = self.param("v", nn.initializers.normal(1.0), (6, 3))

    def encode(self, ctx, train=False):
        return self.w, self.w + self.v

    def loss_terms(self, ctx, batch, train=False):
        u, i = self.w[batch["users"]], self.w[batch["pos_items"]]
        return {"bpr": jnp.mean(jnp.sum(u * i, -1) ** 2), "side": jnp.mean(self.v[batch["pos_items"]] ** 2)}


def count_products(fn, *args, shape) -> int:
    """How many matrix products (``dot_general``) with an output of ``shape`` the traced program of
    ``fn(*args)`` holds, before the compiler's clean-ups (XLA merges equal forward products, but a
    value used twice still gets two transposed products in its gradient)."""
    text = jax.jit(fn).lower(*args).as_text()
    wanted = "x".join(map(str, shape)) + "xf32>"
    return sum(1 for line in re.findall(r"stablehlo\.dot_general[^\n]*", text)
               if line.rstrip().endswith("-> tensor<" + wanted))
