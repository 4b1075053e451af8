"""Item-side inputs of the fusion, kernel and subspace models.

Per-modality features and presence masks (:func:`modality_inputs`), the items' presence patterns
(:func:`presence_patterns`, for exact factorization of weights normalized over present
modalities), a batch's items (:func:`batch_items`) and ID-embedding dropout.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.errors import ConfigError, DataError
from jaxrec.features import fit_standardizer
from jaxrec.models._common import (check_number, check_positive_int, counted_pairs, feature_blocks, is_constant,
                                   item_side_features, modality_names)


def modality_inputs(dataset, modalities: Sequence[str] | None, *, scaling: str, model: str):
    """Per-modality item features and presence masks.

    Returns:
      ``(features, masks, names)``: M float32 arrays (n_items, d_m), scaled as
      :func:`jaxrec.models._common.item_side_features` does (absent rows zero), M bool arrays
      (n_items,), and the modality names.
    """
    features, dims, names = item_side_features(dataset, modalities, scaling=scaling, model=model)
    blocks = [np.ascontiguousarray(block) for block in feature_blocks(features, dims)]
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
    names = modality_names(dataset, modalities, model)
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


def batch_items(batch, trained):
    """``(items (B, 1 + K) [positive, negatives...], counted pairs (B, K))`` of a batch."""
    pairs = counted_pairs(batch, trained)
    return jnp.concatenate([jnp.asarray(batch["pos_items"])[:, None], batch["neg_items"]], axis=1), pairs


def check_id_dropout(value, model: str) -> float:
    """A dropout rate in [0, 1) as a float."""
    return check_number(value, "id_dropout", model, 0.0, 1.0, high_open=True)


def with_id_dropout(module, ctx, rate: float, train: bool):
    """``ctx`` whose ``"trained"`` mask (the items whose ID embedding counts) also drops each item
    with probability ``rate`` while training (DropoutNet's input dropout): the content part must
    then score those items alone, as it will for new items. A fresh draw per step, from the
    ``"dropout"`` stream."""
    if not train or is_constant(rate, 0.0):
        return ctx
    trained = jnp.asarray(ctx["trained"])
    kept = jax.random.bernoulli(module.make_rng("dropout"), 1.0 - rate, trained.shape)
    return {**ctx, "trained": trained & kept}
