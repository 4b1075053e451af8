"""Batched, jitted top-k for serving, ranking exactly as the evaluation does.

Scores are the inner products at ``Precision.HIGHEST`` (:func:`jaxrec.eval.dot_product_scores`),
then the evaluation's own masking (``-0.0`` made ``+0.0``; excluded and non-candidate items
``-inf``) and ``lax.top_k`` (descending score, ascending item id among ties), so a served list
is item for item the list ``jaxrec evaluate`` ranks for the same user and mask.

Shapes are bucketed to powers of two (users per call, excluded items per user, list length)
so that a server answering requests of varying size compiles a handful of programs, not one
per request.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.errors import DataError, ResourceError
from jaxrec.eval import masked_scores


def bucket(n: int, minimum: int = 1) -> int:
    """The smallest power of two >= max(n, minimum)."""
    n = max(int(n), int(minimum), 1)
    return 1 << (n - 1).bit_length()


@functools.partial(jax.jit, static_argnames=("k",))
def _ranked(user_vectors, item_emb, exclude, candidate_mask, *, k: int):
    batch, width = exclude.shape
    scores = jnp.matmul(user_vectors, item_emb.T, precision=jax.lax.Precision.HIGHEST)
    rows = jnp.broadcast_to(jnp.arange(batch, dtype=jnp.int32)[:, None], (batch, width))
    scores = masked_scores(scores, rows.reshape(-1), exclude.reshape(-1), candidate_mask)
    n_nan = jnp.sum(jnp.isnan(scores))
    top_scores, top_items = jax.lax.top_k(scores, k)
    return top_scores, top_items, n_nan


def padded_lists(lists: list[np.ndarray], fill: int, min_width: int = 8) -> np.ndarray:
    """Ragged int lists as one ``(n, bucket(max len))`` int32 array padded with ``fill``."""
    width = bucket(max((len(x) for x in lists), default=0), min_width)
    out = np.full((len(lists), width), fill, np.int32)
    for row, values in enumerate(lists):
        out[row, :len(values)] = values
    return out


def rank(user_vectors, item_emb, exclude_lists: list[np.ndarray], candidate_mask, n_rankable: int,
         k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items of each user vector.

    Args:
      user_vectors: ``(n, d)`` float32 user vectors (jax or numpy).
      item_emb: ``(capacity, d)`` item embeddings (rows beyond the catalogue are masked by
        ``candidate_mask``).
      exclude_lists: per user, the item ids never to return.
      candidate_mask: ``(capacity,)`` bool, True for rankable items.
      n_rankable: number of True entries of ``candidate_mask`` (bounds the list length).
      k: list length (a positive int; may exceed the catalogue).

    Returns:
      ``(items (n, k) int32, scores (n, k) float32)``, best first; slots no rankable item can
      fill hold item ``-1`` and score ``-inf``.

    Raises:
      ResourceError: ``(n, k)`` lists that would not fit in the memory left (a ``k`` far past
        the catalogue asks for nothing but fill), refused before anything is computed.
    """
    n = len(exclude_lists)
    check_list_memory(n, k, n_rankable)
    capacity = int(item_emb.shape[0])
    rows = bucket(n)
    vectors = np.zeros((rows, int(item_emb.shape[1])), np.float32)
    vectors[:n] = np.asarray(user_vectors, np.float32)
    exclude = padded_lists(list(exclude_lists) + [np.zeros(0, np.int32)] * (rows - n), fill=capacity)
    list_len = max(1, min(int(k), int(n_rankable)))
    top_k = min(bucket(list_len, 16), capacity)
    top_scores, top_items, n_nan = _ranked(vectors, item_emb, exclude, candidate_mask, k=top_k)
    if int(n_nan):
        raise DataError("the model produced NaN scores", field="scores", found=f"{int(n_nan)} NaN scores",
                        expected="finite scores")
    top_scores = np.asarray(top_scores)[:n, :list_len]
    top_items = np.asarray(top_items)[:n, :list_len].astype(np.int32)
    top_items[top_scores == -np.inf] = -1
    if list_len < k:
        pad = ((0, 0), (0, int(k) - list_len))
        top_scores = np.pad(top_scores, pad, constant_values=-np.inf)
        top_items = np.pad(top_items, pad, constant_values=-1)
    return top_items, top_scores.astype(np.float32)


def check_list_memory(n: int, k: int, n_rankable: int) -> None:
    """Raise :class:`ResourceError` when ``n`` lists of length ``k`` (an int32 item and a
    float32 score per slot, held twice while the fill is padded on) exceed the memory left."""
    from jaxrec.serve._load import available_memory

    need = 16 * int(n) * int(k)
    have = available_memory()
    if need > have:
        raise ResourceError(f"field 'k': {n} list(s) of k={k} would need {need / 2**30:.1f} GiB, more than the "
                            f"{have / 2**30:.1f} GiB available; {n_rankable} item(s) can be ranked, so slots "
                            f"past that are only fill (item -1, score -inf): ask for k <= {n_rankable}")


@jax.jit
def _pair_scores(user_vectors, item_vectors):
    return jnp.einsum("nd,nd->n", user_vectors, item_vectors, precision=jax.lax.Precision.HIGHEST)


def pair_scores(user_emb, item_emb, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """``(n,)`` scores of the (user, item) pairs, computed in bucketed batches."""
    n = users.size
    rows = bucket(n)
    u = np.zeros(rows, np.int32)
    i = np.zeros(rows, np.int32)
    u[:n], i[:n] = users, items
    return np.asarray(_pair_scores(jnp.take(user_emb, u, axis=0), jnp.take(item_emb, i, axis=0)))[:n]
