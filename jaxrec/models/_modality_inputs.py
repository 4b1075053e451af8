"""Item-side inputs and the BPR + EmbLoss terms shared by the fusion, kernel and subspace models.

Per-modality features and presence masks (:func:`modality_inputs`), the items' presence patterns
(:func:`presence_patterns`, for exact factorization of weights normalized over present
modalities), per-row item computations gathered at a batch's items (:func:`gather_rows`), and
the loss of a batch (:func:`batch_items`, :func:`bpr_with_emb_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec import losses
from jaxrec.errors import ConfigError, DataError
from jaxrec.features import fit_standardizer
from jaxrec.models.sidemf import check_positive_int, item_side_features, training_pairs


def modality_inputs(dataset, modalities: Sequence[str] | None, *, scaling: str, model: str):
    """Per-modality item features and presence masks.

    Returns:
      ``(features, masks, names)``: M float32 arrays (n_items, d_m), scaled as
      :func:`jaxrec.models.sidemf.item_side_features` does (absent rows zero), M bool arrays
      (n_items,), and the modality names.
    """
    features, dims, names = item_side_features(dataset, modalities, scaling=scaling, model=model)
    bounds = np.cumsum((0,) + dims)
    blocks = [np.ascontiguousarray(features[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    masks = [np.asarray(dataset.modalities[name].mask, bool) for name in names]
    return blocks, masks, names


def sequence_inputs(dataset, modalities: Sequence[str] | None, *, scaling: str, model: str):
    """Like :func:`modality_inputs`, but a sequence modality stays a padded sequence.

    A sequence modality (video frames) gives (n_items, T, d_m) steps, each step scaled like a
    row (``standardize``: statistics of the train items' valid steps; padding and absent items
    zero), for the model to pool with :mod:`jaxrec.fusion`'s temporal pooling layers.

    Returns:
      ``(features, masks, names, lengths)``: as :func:`modality_inputs`, plus ``lengths``, a
      dict ``{str(m): (n_items,) int32}`` of valid steps for each sequence modality ``m``.
    """
    names = tuple(dataset.modalities) if modalities is None else tuple(modalities)
    unknown = [n for n in names if n not in dataset.modalities]
    if not names or unknown:  # item_side_features words these errors
        return (*modality_inputs(dataset, modalities, scaling=scaling, model=model), {})
    flat = [n for n in names if not dataset.modalities[n].is_sequence]
    flat_blocks = dict(zip(flat, modality_inputs(dataset, flat, scaling=scaling, model=model)[0])) if flat else {}
    features, masks, lengths = [], [], {}
    for m, name in enumerate(names):
        modality = dataset.modalities[name]
        masks.append(np.asarray(modality.mask, bool))
        if not modality.is_sequence:
            features.append(flat_blocks[name])
            continue
        steps = np.asarray(modality.lengths, np.int32) * masks[-1]
        rows = np.asarray(modality.features, np.float64)
        if scaling == "standardize":
            rows = fit_standardizer(dataset, name).apply(rows, lengths=steps)
        elif scaling == "l2":
            rows = rows / np.maximum(np.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)
        valid = np.arange(rows.shape[1])[None, :] < steps[:, None]
        rows = np.where(valid[..., None], rows, 0.0).astype(np.float32)
        if not np.all(np.isfinite(rows)):
            raise DataError("non-finite item features", field=name, found="a NaN/inf in a valid step",
                            expected="finite features")
        features.append(rows)
        lengths[str(m)] = steps
    return features, masks, names, lengths


def presence_patterns(masks: Sequence[np.ndarray]) -> tuple[tuple[tuple[bool, ...], ...], np.ndarray]:
    """The distinct non-empty modality-presence patterns of the items, and each item's.

    Returns:
      ``(patterns, index)``: a tuple of M-tuples of bools (sorted), and an (n_items,) int32
      index into it, -1 for items with no modality.
    """
    present = np.stack([np.asarray(m, bool) for m in masks], axis=1)
    unique, inverse = np.unique(present, axis=0, return_inverse=True)
    keep = unique.any(axis=1)
    position = np.full(len(unique), -1, np.int32)
    position[keep] = np.arange(int(keep.sum()), dtype=np.int32)
    patterns = tuple(tuple(bool(b) for b in row) for row in unique[keep])
    return patterns, position[np.ravel(inverse)]


def check_widths(value, name: str, model: str) -> tuple[int, ...]:
    """A list of positive layer widths (possibly empty) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(f"model {model}: {name} must be a list of layer widths; found {value!r}")
    for width in value:
        check_positive_int(width, name, model)
    return tuple(int(w) for w in value)


def gather_rows(compute, n_rows: int, items: jax.Array):
    """``compute(rows)`` (per-row item vectors) at ``items`` of any shape.

    Computes every row once and gathers when the batch holds at least as many item slots as
    there are items (cheaper on small catalogues), else only the batch's rows; the two give
    the same numbers.
    """
    if items.size >= n_rows:
        return compute(jnp.arange(n_rows))[items]
    flat = compute(items.reshape(-1))
    return flat.reshape(items.shape + flat.shape[1:])


def bpr_with_emb_loss(pos_scores, neg_scores, user_vectors, pos_vectors, neg_vectors, pairs):
    """``{"bpr", "reg"}``: BPR over the valid pairs, and MMRec's ``EmbLoss`` of the pairs' vectors.

    Args:
      pos_scores: (B,) positive scores.
      neg_scores: (B, K) negative scores.
      user_vectors: (B, D) the users' vectors (whose dot products with the items' are the scores).
      pos_vectors: (B, D) the positives' vectors.
      neg_vectors: (B, K, D) the negatives' vectors.
      pairs: (B, K) bool, the pairs that count (real rows, trained negatives).

    Returns:
      ``bpr`` the mean softplus of the valid pairs' margins; ``reg`` the Frobenius norms (not
      squared) of the stacked pairs' user, positive and negative vectors over the pair count
      (with one negative per real row, exactly MMRec's ``EmbLoss``).
    """
    weight = pairs.astype(pos_scores.dtype)[..., None]
    n_pairs = jnp.maximum(jnp.sum(pairs), 1).astype(pos_scores.dtype)
    reg = losses.l2_mean_norm(user_vectors[:, None, :] * weight, pos_vectors[:, None, :] * weight,
                              neg_vectors * weight, batch_size=n_pairs)
    return {"bpr": losses.bpr(pos_scores, neg_scores, where=pairs), "reg": reg}


def batch_items(batch, trained):
    """``(items (B, 1 + K) [positive, negatives...], pairs (B, K))`` of a batch."""
    negatives, pairs = training_pairs(batch, jnp.asarray(trained))
    return jnp.concatenate([jnp.asarray(batch["pos_items"])[:, None], negatives], axis=1), pairs


def check_id_dropout(value, model: str) -> float:
    """A dropout rate in [0, 1) as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ConfigError(f"model {model}: id_dropout must be a number in [0, 1); found {value!r}")
    return float(value)


def with_id_dropout(module, ctx, rate: float, train: bool):
    """``ctx`` whose ``"trained"`` mask (the items whose ID embedding counts) also drops each item
    with probability ``rate`` while training (DropoutNet's input dropout): the content part must
    then score those items alone, as it will for new items. A fresh draw per step, from the
    ``"dropout"`` stream."""
    if not train or rate == 0.0:
        return ctx
    trained = jnp.asarray(ctx["trained"])
    kept = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, trained.shape)
    return {**ctx, "trained": trained & kept}
