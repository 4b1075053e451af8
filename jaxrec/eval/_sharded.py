"""Full-ranking evaluation against row-sharded embedding tables on a 2-D device mesh.

The mesh has a data axis and a model axis. The item table (and the user table) are split by
rows over the model axis, the user batches of a split over the data axis. Each device

1. looks up its users' embeddings in its slice of the user table (rows outside the slice
   read as 0) and sums them over the model axis (``psum``: one ``(B/D, d)`` all-reduce),
2. scores them against ITS slice of the item table only: a ``(B/D, N/M)`` block,
3. masks its excluded and non-candidate entries and takes its own top-``k`` (ids made
   global), together with the hit flag of each listed item,
4. gathers the ``M`` short lists over the model axis (``(B/D, M k)`` scores, ids and flags:
   the only item-side communication) and takes the top-``k`` of their concatenation,

then each batch's per-user metric rows are gathered over the data axis (``(B, len(ks))``
floats per metric) and summed as one device sums them, so the metrics are bit-identical. No
device ever holds the whole item table or a ``(B, N)`` score block.

Exactly the one-device ranking: the concatenation is in model-axis order, i.e. ascending
item id, and ``lax.top_k`` puts the lower index first among equal values, so ties are broken
by ascending item id as in :mod:`jaxrec.eval._ranking`; every item of the global list is in
its own slice's top-``k``. ``-0.0`` is made ``+0.0`` first, as there.

Rows that pad a table to a multiple of the model-axis size are never candidates (they score
``-inf``); user batches are padded to a multiple of the data-axis size with rows that are
not evaluated.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrec.errors import ConfigError, DataError
from jaxrec.eval import _evaluate, _metrics


def _pad_rows(x, multiple: int, value=0):
    rows = x.shape[0]
    extra = -rows % multiple
    if not extra:
        return x
    return jnp.pad(x, [(0, extra)] + [(0, 0)] * (x.ndim - 1), constant_values=value)


def evaluate_prepared_sharded(
    split: _evaluate.EvalSplit,
    user_emb: Any,
    item_emb: Any,
    *,
    mesh: Mesh,
    data_axis: str = "data",
    model_axis: str = "model",
    ks: Sequence[int] = _evaluate.DEFAULT_KS,
    metrics: Sequence[str] = _evaluate.DEFAULT_METRICS,
) -> dict[str, float | int]:
    """:func:`jaxrec.eval.evaluate_prepared` with the tables row-sharded over ``model_axis``
    and the users over ``data_axis`` (see the module docstring); same result.

    Args:
      split: from :func:`jaxrec.eval.prepare_split` / ``prepare_protocol``.
      user_emb: ``(U, d)`` with ``U`` above every evaluated user id; rows past the real users
        (padding) are allowed. Any placement: it is resharded to ``P(model_axis, None)`` (a
        no-op when already so).
      item_emb: ``(N', d)`` with ``N' >= split.num_items``; rows from ``split.num_items`` on
        are padding and never ranked.
      mesh: a mesh with both axes.
      ks, metrics: as for :func:`jaxrec.eval.evaluate_prepared`.

    Raises:
      DataError: embeddings of the wrong shape, or NaN scores on rankable items.
      ConfigError: unknown metric, bad ``ks``, or a mesh without the axes.
    """
    ks, metrics = _evaluate.check_ks(ks), _evaluate.check_metrics(metrics)
    for axis in (data_axis, model_axis):
        if axis not in mesh.shape:
            raise ConfigError(f"the mesh has axes {tuple(mesh.shape)}; expected {data_axis!r} and {model_axis!r}")
    for field, emb in (("user_emb", user_emb), ("item_emb", item_emb)):
        if np.ndim(emb) != 2:
            raise DataError("embeddings must be a 2-D array", field=field, found=f"shape {np.shape(emb)}",
                            expected="shape (n, d)")
    if np.shape(user_emb)[1] != np.shape(item_emb)[1]:
        raise DataError("user and item embeddings must have the same width", field="item_emb",
                        found=f"shape {np.shape(item_emb)}", expected=f"(num_items, {np.shape(user_emb)[1]})")
    if np.shape(item_emb)[0] < split.num_items:
        raise DataError("scores cover fewer items than the split was prepared for", field="item_emb",
                        found=f"{np.shape(item_emb)[0]} rows", expected=f"at least {split.num_items}")
    if np.shape(user_emb)[0] <= split.max_user_id:
        raise DataError("a pair refers to a user without an embedding", field="user_emb",
                        found=f"{np.shape(user_emb)[0]} user rows", expected=f"more than {split.max_user_id}")
    model_size = mesh.shape[model_axis]
    rows = NamedSharding(mesh, P(model_axis, None))
    user_emb = jax.device_put(_pad_to(user_emb, model_size), rows)
    item_emb = jax.device_put(_pad_to(item_emb, model_size), rows)
    candidate_mask = np.zeros(item_emb.shape[0], bool)
    candidate_mask[: split.num_items] = np.asarray(split.candidate_mask)
    device_metrics = tuple(m if m != "recall2" else "hits" for m in metrics)
    list_len = min(max(ks), split.num_items)
    sums, num_nan = sharded_metric_sums(
        split.batches, jax.device_put(candidate_mask, NamedSharding(mesh, P(model_axis))), user_emb, item_emb,
        mesh=mesh, data_axis=data_axis, model_axis=model_axis, ks=ks, metric_names=device_metrics,
        list_len=list_len)
    return _evaluate._metrics_from_sums(split, np.asarray(sums, np.float64).sum(0), int(np.asarray(num_nan)), ks,
                                        metrics)


def _pad_to(emb, multiple: int):
    """Rows padded with zeros to a multiple (only when needed, so a placed array stays put)."""
    if np.shape(emb)[0] % multiple == 0:
        return emb
    return _pad_rows(jnp.asarray(emb), multiple)


@functools.partial(jax.jit, static_argnames=("mesh", "data_axis", "model_axis", "ks", "metric_names", "list_len"))
def sharded_metric_sums(batches, candidate_mask, user_emb, item_emb, *, mesh: Mesh, data_axis: str,
                        model_axis: str, ks: tuple[int, ...], metric_names: tuple[str, ...], list_len: int):
    """``(sums, num_nan)``: per-batch ``(num_batches, len(metric_names) * len(ks))`` float32
    metric sums (metric-major, as :func:`jaxrec.eval._ranking.split_metric_sums`) and the
    count of NaN scores on rankable entries.

    ``candidate_mask``, ``user_emb`` and ``item_emb`` have row counts divisible by the
    model-axis size; ``batches`` is an :class:`~jaxrec.eval.EvalSplit`'s ``batches``.
    """
    data_size, model_size = mesh.shape[data_axis], mesh.shape[model_axis]
    batch_rows = batches["users"].shape[1]
    users = _pad_rows(batches["users"].T, data_size).T  # (num_batches, B'), B' a multiple of D
    num_relevant = _pad_rows(batches["num_relevant"].T, data_size).T  # padding rows: 0, never evaluated
    items_per_shard = item_emb.shape[0] // model_size
    local_k = min(list_len, items_per_shard)

    def per_shard(users, num_relevant, exclude_rows, exclude_items, target_rows, target_items, mask, u_table,
                  i_table):
        n_rows, n_items, n_users = users.shape[1], i_table.shape[0], u_table.shape[0]
        row_offset = jax.lax.axis_index(data_axis) * n_rows
        item_offset = jax.lax.axis_index(model_axis) * n_items
        user_offset = jax.lax.axis_index(model_axis) * n_users

        def local(rows, items):
            """(rows, items) of this shard's block; others sent out of range (dropped)."""
            rows, items = rows - row_offset, items - item_offset
            inside = (rows >= 0) & (rows < n_rows) & (items >= 0) & (items < n_items)
            return jnp.where(inside, rows, n_rows), jnp.where(inside, items, 0)

        def one_batch(carry, batch):
            b_users, b_relevant, ex_rows, ex_items, t_rows, t_items = batch
            ids = b_users - user_offset
            mine = (ids >= 0) & (ids < n_users)
            emb = jnp.where(mine[:, None], u_table[jnp.clip(ids, 0, n_users - 1)], 0)
            emb = jax.lax.psum(emb, model_axis)
            scores = jnp.matmul(emb, i_table.T, precision=jax.lax.Precision.HIGHEST)
            scores = jnp.where(scores == 0, jnp.zeros((), scores.dtype), scores)
            rows, cols = local(ex_rows, ex_items)
            scores = scores.at[rows, cols].set(-jnp.inf, mode="drop")
            scores = jnp.where(mask[None, :], scores, -jnp.inf)
            evaluated = b_relevant > 0
            num_nan = jnp.sum(jnp.isnan(scores) & evaluated[:, None])
            rows, cols = local(t_rows, t_items)
            targets = jnp.zeros(scores.shape, bool).at[rows, cols].set(True, mode="drop")
            top_scores, top_local = jax.lax.top_k(scores, local_k)
            top_hits = jnp.take_along_axis(targets, top_local, axis=1)
            gathered = [jax.lax.all_gather(x, model_axis, axis=1, tiled=True) for x in (top_scores, top_hits)]
            best_scores, position = jax.lax.top_k(gathered[0], list_len)
            hits = jnp.take_along_axis(gathered[1], position, axis=1) & (best_scores > -jnp.inf)
            per_user = _metrics.ranking_metrics(hits, b_relevant, ks=ks, metrics=metric_names)
            # The batch's per-user rows gathered over the data axis and summed as one device sums
            # them (same shape, same order): the metrics are bit-identical, not just close.
            gather = lambda x: jax.lax.all_gather(x, data_axis, axis=0, tiled=True)[:batch_rows]  # noqa: E731
            evaluated = gather(evaluated)
            sums = jnp.concatenate([jnp.sum(jnp.where(evaluated[:, None], gather(per_user[name]), 0.0), axis=0)
                                    for name in metric_names])
            return carry, (sums, num_nan)

        _, (sums, num_nan) = jax.lax.scan(one_batch, None, (users, num_relevant, exclude_rows, exclude_items,
                                                       target_rows, target_items))
        return sums, jax.lax.psum(jnp.sum(num_nan), (data_axis, model_axis))

    run = jax.shard_map(
        per_shard, mesh=mesh,
        in_specs=(P(None, data_axis), P(None, data_axis), P(), P(), P(), P(), P(model_axis),
                  P(model_axis, None), P(model_axis, None)),
        out_specs=(P(), P()), check_vma=False)
    return run(users, num_relevant, batches["exclude_rows"], batches["exclude_items"], batches["target_rows"],
               batches["target_items"], candidate_mask, user_emb, item_emb)
