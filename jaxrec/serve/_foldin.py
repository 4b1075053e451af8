r"""Fold-in: a user vector for someone the model has never seen, from their item history alone,
with the items' embeddings frozen (no retraining).

Every model scores by :math:`s_{ui} = \langle e_u, e_i \rangle` (the model contract), so a new
user needs only a vector :math:`e_u`. Two methods:

``"bpr"`` (every model; the default for matrix-factorization-like models -- BPR-MF, VBPR, SideMF,
fusion, kernel, subspace, CKE, contrastive, GAN-filled bases -- and the generic fallback for
the rest -- MMGCN, LGMRec, BM3): a few jitted Adam steps on the BPR objective against the
frozen item embeddings,

.. math::
  \min_{v}\; \frac{1}{|H| M}\sum_{i \in H}\sum_{m=1}^{M} \operatorname{softplus}
     \big(\langle c + v, e_{j_m}\rangle - \langle c + v, e_i\rangle\big)
     + \lambda \lVert v \rVert^2 ,

over the history :math:`H`, with :math:`M` negatives :math:`j_m` drawn uniformly from the
catalogue at each step and those inside :math:`H` dropped (the mean is over the pairs kept). The
draws come from a fixed key and are the same for every user of a call, so a history gives the
same vector whichever users it is folded in with. :math:`c` holds the columns
that are the same for every trained user -- bias columns such as VBPR's constant 1 opposite
the item bias :math:`\beta_i + \beta'^\top f_i` -- and :math:`v` is zero there, so an item's
bias counts for a folded-in user exactly as for a trained one. For BPR-MF this is the model's
own objective with the item table frozen (its EmbLoss on the user row becomes the ridge term).

``"propagate"`` (the default for LightGCN-style user towers -- LightGCN, FREEDOM, LATTICE,
whose user embedding is the layer mean over the normalized user-item graph): one propagation
step from the history, the new user's row of the model's normalized adjacency with the user
added. With the items' layer embeddings :math:`e_i^{(k)}` of the trained graph, for the
symmetric normalization (LightGCN, FREEDOM) with the new edges' weights
:math:`w_i = 1 / \sqrt{|H| (d_i + 1)}` (:math:`d_i` the item's degree in the model's graph --
its distinct training users -- plus the new edge),

.. math::
  e_u^{(k+1)} = \sum_{i \in H} w_i\, e_i^{(k)}, \qquad
  e_u = \frac{1}{K + 1}\Big(e_u^{(0)} + \sum_{k=0}^{K-1} e_u^{(k+1)}\Big),

and for LATTICE's random-walk normalization with self-loops, :math:`\hat A = D^{-1}(A + I)`,

.. math::
  e_u^{(k+1)} = \frac{1}{|H| + 1}\Big(e_u^{(k)} + \sum_{i \in H} e_i^{(k)}\Big),

exactly the model's own formula for a user with that history, except that the new user's
edges are not propagated back into the items (one step, no retraining). :math:`e_u` is the
propagated part (computed with :math:`e_u^{(0)} = 0`) plus a term linear in the free layer-0
row :math:`e_u^{(0)}`; the ``"bpr"`` steps above fit that term with the propagated part as the
fixed offset :math:`c` (``"propagate_only"`` leaves it at zero).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrec.data import graph as jgraph
from jaxrec.errors import ConfigError

METHODS = ("auto", "bpr", "propagate", "propagate_only")
# Models whose user embedding is LightGCN's layer mean over ctx["graph"], and the attribute
# holding their number of user-item layers.
PROPAGATION_LAYERS = {"lightgcn": "n_layers", "freedom": "n_ui_layers", "lattice": "n_ui_layers"}
# How each of them normalizes that graph (jaxrec.data.graph.normalized_adjacency): "sym" without
# self-loops unless named here.
RANDOM_WALK_SELF_LOOPS = frozenset({"lattice"})


@functools.partial(jax.jit, static_argnames=("steps", "n_neg"))
def _bpr_fit(item_emb, offset, free_mask, history, history_valid, is_history, n_items, key, *,
             steps: int, n_neg: int, learning_rate: float, reg: float):
    """``(n, d)`` fitted vectors ``offset + v`` (module docstring); ``history`` (n, L) with
    ``history_valid`` marking real entries, ``is_history`` (n, capacity) bool."""
    n = offset.shape[0]
    tx = optax.adam(learning_rate)
    free = jnp.zeros_like(offset)
    pos_emb = item_emb[history]  # (n, L, d)

    def loss(v, step_key):
        u = offset + v * free_mask
        # The same draws for every row: a user's vector does not depend on the others in the call.
        negatives = jnp.broadcast_to(jax.random.randint(step_key, (n_neg,), 0, n_items), (n, n_neg))
        neg_valid = ~jnp.take_along_axis(is_history, negatives, axis=1)
        pos = jnp.einsum("nd,nld->nl", u, pos_emb)
        neg = jnp.einsum("nd,nmd->nm", u, item_emb[negatives])
        pairs = history_valid[:, :, None] & neg_valid[:, None, :]
        margins = jax.nn.softplus(neg[:, None, :] - pos[:, :, None])
        per_user = jnp.sum(jnp.where(pairs, margins, 0.0), axis=(1, 2)) / jnp.maximum(jnp.sum(pairs, axis=(1, 2)), 1)
        return jnp.sum(per_user) + reg * jnp.sum(jnp.square(v * free_mask))

    def step(carry, step_key):
        v, opt_state = carry
        grads = jax.grad(loss)(v, step_key)
        updates, opt_state = tx.update(grads, opt_state, v)
        return (optax.apply_updates(v, updates), opt_state), None

    (free, _), _ = jax.lax.scan(step, (free, tx.init(free)), jax.random.split(key, steps))
    return offset + free * free_mask


def bpr_vectors(item_emb, offset: np.ndarray, free_mask: np.ndarray, histories: list[np.ndarray], n_items: int, *,
                steps: int = 100, n_neg: int = 64, learning_rate: float = 0.05, reg: float = 0.01,
                seed: int = 0) -> np.ndarray:
    """Fitted user vectors (module docstring, ``"bpr"``), for users in buckets of 64."""
    from jaxrec.serve._ranking import bucket, padded_lists

    capacity = int(item_emb.shape[0])
    out = np.zeros(offset.shape, np.float32)
    chunk = 64
    for start in range(0, len(histories), chunk):
        part = histories[start:start + chunk]
        rows = bucket(len(part))
        lists = list(part) + [part[0]] * (rows - len(part))
        history = padded_lists(lists, fill=-1)
        valid = history >= 0
        history = np.where(valid, history, 0)
        is_history = np.zeros((rows, capacity), bool)
        for r, items in enumerate(lists):
            is_history[r, items] = True
        block = np.zeros((rows, offset.shape[1]), np.float32)
        block[:len(part)] = offset[start:start + len(part)]
        fitted = _bpr_fit(item_emb, block, free_mask.astype(np.float32), history, valid, is_history,
                          np.int32(n_items), jax.random.PRNGKey(seed), steps=steps, n_neg=n_neg,
                          learning_rate=float(learning_rate), reg=float(reg))
        out[start:start + len(part)] = np.asarray(fitted)[:len(part)]
    return out


@functools.partial(jax.jit, static_argnames=("n_layers", "n_users"))
def _item_layers(graph, user_table, item_table, *, n_layers: int, n_users: int):
    ego = jnp.concatenate([user_table, item_table], axis=0)
    _, layers = jgraph.lightgcn_propagate(graph, ego, n_layers, indices_are_sorted=True)
    return jnp.stack([layer[n_users:] for layer in layers[:n_layers]]) if n_layers else item_table[None, :0]


def propagated_offsets(learner, histories: list[np.ndarray]) -> np.ndarray:
    """``(n, d)``: :math:`\\frac{1}{K+1}\\sum_{k<K} e_u^{(k+1)}` of each history with
    :math:`e_u^{(0)} = 0` (``"propagate"``, module docstring)."""
    module = learner.module
    name = learner.config.model.name
    n_layers = int(getattr(module, PROPAGATION_LAYERS[name]))
    params = learner.params
    d = params["user_embedding"].shape[1]
    if n_layers == 0:
        return np.zeros((len(histories), d), np.float32)
    layers = np.asarray(_item_layers(learner.ctx["graph"], params["user_embedding"], params["item_embedding"],
                                     n_layers=n_layers, n_users=int(params["user_embedding"].shape[0])))
    out = np.zeros((len(histories), d), np.float32)
    if name in RANDOM_WALK_SELF_LOOPS:
        for row, items in enumerate(histories):
            layer, total = np.zeros(d, np.float64), np.zeros(d, np.float64)
            for k in range(n_layers):
                layer = (layer + layers[k, items].sum(0, dtype=np.float64)) / (len(items) + 1)
                total += layer
            out[row] = total / (n_layers + 1)
        return out
    degrees = learner.item_degrees
    for row, items in enumerate(histories):
        weights = 1.0 / np.sqrt(len(items) * (degrees[items] + 1.0))
        out[row] = np.einsum("i,kid->d", weights, layers[:, items]) / (n_layers + 1)
    return out


def resolve_method(method: str, model_name: str) -> str:
    if method not in METHODS:
        raise ConfigError(f"fold-in method must be one of {', '.join(METHODS)}; found {method!r}")
    if method == "auto":
        return "propagate" if model_name in PROPAGATION_LAYERS else "bpr"
    if method.startswith("propagate") and model_name not in PROPAGATION_LAYERS:
        raise ConfigError(f"fold-in method {method!r} needs a LightGCN-style user tower "
                          f"({', '.join(sorted(PROPAGATION_LAYERS))}); model {model_name!r} has none: use 'bpr'")
    return method
