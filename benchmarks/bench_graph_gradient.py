"""One train step (value and gradient) of a graph model, JAX's autodiff of ``propagate`` against
``propagate_fixed`` (the gradient propagated over the graph's sorted transpose), interleaved in one
process so that both see the same load.

Usage (from the project root):
    python benchmarks/bench_graph_gradient.py [--config experiments/configs/lfm2k/lightgcn.yaml ...] [--repeats 20]

Both steps are traced from the same model and ``ctx``; the "autodiff" one has
``propagate_fixed`` replaced by ``propagate(graph.edges, ...)`` (main's path before FixedGraph).
Prints the loss and the largest gradient difference of the two (they compute the same
gradient, summed in another order), the median milliseconds per step and their ratio.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxrec.data.graph as jgraph
import jaxrec.data.graph._fixed as fixed_module
from jaxrec import models
from jaxrec.train import load_config, load_dataset, select_modalities

ROOT = Path(__file__).resolve().parents[1]


def _autodiff_propagate(graph, embeddings, *, chunk_size=2**18):
    return jgraph.propagate(graph.edges, embeddings, indices_are_sorted=True, chunk_size=chunk_size)


def _step(built, batch, weights):
    def loss(params, ctx):
        terms = built.module.apply({"params": params}, ctx, batch, True, method="loss_terms",
                                   rngs={"dropout": jax.random.PRNGKey(3)})
        return sum(weights.get(name, 1.0) * value for name, value in terms.items())
    return jax.jit(jax.value_and_grad(loss))


def bench(config_path: str, repeats: int) -> None:
    config = load_config(config_path)
    dataset = select_modalities(load_dataset(config.data), config.data)
    built = models.build(config.model.name, dataset, **config.model.args)
    weights = {**built.default_loss_weights, **(config.loss_weights or {})}
    rng = np.random.default_rng(0)
    size = config.train.batch_size
    batch = {"users": jnp.asarray(rng.integers(0, dataset.n_users, size), jnp.int32),
             "pos_items": jnp.asarray(rng.integers(0, dataset.n_items, size), jnp.int32),
             "neg_items": jnp.asarray(rng.integers(0, dataset.n_items, (size, 1)), jnp.int32),
             "weights": jnp.ones(size, jnp.float32)}
    params = built.module.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, built.ctx, batch,
                               True, method="loss_terms")["params"]
    fixed = fixed_module.propagate_fixed
    try:
        fixed_module.propagate_fixed = jgraph.propagate_fixed = _autodiff_propagate
        autodiff = _step(built, batch, weights)
        old = jax.block_until_ready(autodiff(params, built.ctx))
    finally:
        fixed_module.propagate_fixed = jgraph.propagate_fixed = fixed
    transposed = _step(built, batch, weights)
    new = jax.block_until_ready(transposed(params, built.ctx))
    diff = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(old[1]), jax.tree.leaves(new[1])))
    times = {"autodiff": [], "fixed": []}
    for _ in range(repeats):
        for name, step in (("autodiff", autodiff), ("fixed", transposed)):
            start = time.perf_counter()
            jax.block_until_ready(step(params, built.ctx))
            times[name].append(time.perf_counter() - start)
    a, f = np.median(times["autodiff"]), np.median(times["fixed"])
    print(f"{config.model.name}: loss {float(old[0]):.6f} / {float(new[0]):.6f}, max |grad diff| {diff:.2e}; "
          f"step (B={size}) autodiff {a * 1e3:.1f} ms, fixed {f * 1e3:.1f} ms, ratio {a / f:.2f} "
          f"(load {' '.join(f'{x:.1f}' for x in __import__('os').getloadavg())})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", nargs="+", default=[str(ROOT / "experiments" / "configs" / "lfm2k" / "lightgcn.yaml")])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    for config_path in args.config:
        bench(config_path, args.repeats)


if __name__ == "__main__":
    main()
