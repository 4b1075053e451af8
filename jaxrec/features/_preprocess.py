"""Per-modality preprocessing whose statistics are fitted on train items only.

A transform is fitted on the rows of the items that appear in the train split AND have the
modality (``mask`` True); for a sequence modality, on those items' valid steps only
(``t < lengths[i]``). It is then applied to every item, so valid and test items, and items
seen only at serving time, are mapped with statistics they did not influence.

Each ``fit_*`` function returns a small frozen dataclass holding the fitted statistics (for
serving new items: ``transform.apply(features)``, or save :func:`as_dict` of it and
rebuild it with :func:`transform_from_dict`). Each one-step function (:func:`standardize`,
:func:`l2_normalize`, :func:`pca`, :func:`mean_fill`) fits and applies in one go, returning a
new dataset whose modality provenance gains a ``preprocessing`` entry
``{"name", "params", "fitted_on", "fitted_steps"}``.

Transforms map every row, including rows of items without the modality (whose values are
untrusted by definition; the mask stays as it was). Padded steps of a sequence stay zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import numpy as np

from jaxrec.data import TRAIN, Modality, MultimodalDataset
from jaxrec.errors import ConfigError, DataError

_GRAM_CHUNK_ROWS = 65536


@dataclasses.dataclass(frozen=True)
class Standardizer:
    """Per-dimension standardization ``(x - mean) / scale``.

    Attributes:
      mean: (d,) float64 mean of the fitted rows.
      scale: (d,) float64 population standard deviation, 1 where it is below ``eps``
        (a constant dimension maps to 0 instead of blowing up).
      fitted_on: number of items fitted on. fitted_steps: rows (steps) fitted on.
    """

    mean: np.ndarray
    scale: np.ndarray
    fitted_on: int
    fitted_steps: int
    name: ClassVar[str] = "standardize"

    def params(self) -> dict[str, Any]:
        return {}

    def apply(self, features, *, lengths=None, mask=None) -> np.ndarray:
        """Standardized features, same shape ((n, d) or (n, T, d))."""
        return _map_steps(features, lengths, lambda x: (x - self.mean) / self.scale)


@dataclasses.dataclass(frozen=True)
class L2Normalizer:
    """Scales every row (every step of a sequence) to unit Euclidean norm: ``x / max(||x||, eps)``."""

    eps: float = 1e-12
    fitted_on: int = 0
    fitted_steps: int = 0
    name: ClassVar[str] = "l2_normalize"

    def params(self) -> dict[str, Any]:
        return {"eps": self.eps}

    def apply(self, features, *, lengths=None, mask=None) -> np.ndarray:
        def normalize(x):
            return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), self.eps)
        return _map_steps(features, lengths, normalize)


@dataclasses.dataclass(frozen=True)
class PCAProjection:
    """Projection on the top principal components: ``(x - mean) @ components.T``.

    Attributes:
      mean: (d,) float64 mean of the fitted rows.
      components: (k, d) float64 orthonormal principal axes, by decreasing variance; each
        axis's largest-magnitude entry is positive (a deterministic sign).
      explained_variance: (k,) float64 variance along each axis (divisor ``n - 1``).
      whiten: divide each projected coordinate by the square root of its variance.
      fitted_on, fitted_steps: items and rows (steps) fitted on.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    whiten: bool
    fitted_on: int
    fitted_steps: int
    name: ClassVar[str] = "pca"

    def params(self) -> dict[str, Any]:
        return {"n_components": int(self.components.shape[0]), "whiten": bool(self.whiten)}

    def apply(self, features, *, lengths=None, mask=None) -> np.ndarray:
        """Projected features: (n, k) or (n, T, k)."""
        divisor = np.sqrt(np.maximum(self.explained_variance, 1e-12)) if self.whiten else 1.0
        return _map_steps(features, lengths, lambda x: ((x - self.mean) @ self.components.T) / divisor,
                          out_dim=self.components.shape[0])


@dataclasses.dataclass(frozen=True)
class MeanFiller:
    """Fills the rows of items without the modality with the fitted mean row.

    For a sequence modality a missing item's steps ``[0, max(length, 1))`` get the mean
    step, so it becomes a sequence of at least one step (its length is raised to match).

    Attributes:
      fill: (d,) float64 mean of the fitted rows (valid steps for sequences).
      fitted_on, fitted_steps: items and rows (steps) fitted on.
    """

    fill: np.ndarray
    fitted_on: int
    fitted_steps: int
    name: ClassVar[str] = "mean_fill"

    def params(self) -> dict[str, Any]:
        return {}

    def filled_lengths(self, lengths, mask) -> np.ndarray | None:
        if lengths is None:
            return None
        return np.where(np.asarray(mask), lengths, np.maximum(lengths, 1)).astype(np.int32)

    def apply(self, features, *, lengths=None, mask=None) -> np.ndarray:
        """``features`` with every row where ``mask`` is False set to the fill (mask required)."""
        if mask is None:
            raise DataError("mean fill needs the mask of present rows", field="mask", found="None",
                            expected="bool (n_items,)")
        features = np.array(features, np.float32)
        missing = ~np.asarray(mask, bool)
        if features.ndim == 2:
            features[missing] = self.fill
            return features
        if lengths is None:
            raise DataError("a sequence modality needs its lengths to be filled", field="lengths",
                            found="None", expected="int (n_items,)")
        steps = np.arange(features.shape[1]) < self.filled_lengths(lengths, mask)[:, None]
        features[missing[:, None] & steps] = self.fill
        return features


Transform = Standardizer | L2Normalizer | PCAProjection | MeanFiller
_KINDS = {cls.name: cls for cls in (Standardizer, L2Normalizer, PCAProjection, MeanFiller)}


def transform_from_dict(state: dict[str, Any]) -> Transform:
    """Rebuilds a transform from :func:`as_dict`'s output (e.g. after ``np.savez``)."""
    state = dict(state)
    kind = state.pop("kind", None)
    if kind not in _KINDS:
        raise DataError("unknown transform kind", field="kind", found=kind, expected=f"one of {sorted(_KINDS)}")
    cls = _KINDS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    if set(state) != names:
        raise DataError("transform fields do not match", field=kind, found=sorted(state), expected=sorted(names))
    return cls(**{k: (np.asarray(v) if isinstance(v, (list, np.ndarray)) else v) for k, v in state.items()})


def as_dict(transform: Transform) -> dict[str, Any]:
    """The transform's kind and fields (arrays kept as numpy arrays)."""
    return {"kind": transform.name, **{f.name: getattr(transform, f.name) for f in dataclasses.fields(transform)}}


# ---- fitting -----------------------------------------------------------------------------


def fit_rows(dataset: MultimodalDataset, modality: str) -> np.ndarray:
    """(n_rows, d) float64 rows statistics are fitted on: those of :func:`fit_items`, and for a
    sequence modality their valid steps only."""
    return _fit_set(dataset, modality)[0]


def fit_items(dataset: MultimodalDataset, modality: str) -> np.ndarray:
    """Sorted ids of the items statistics are fitted on: in the train split and in the mask
    (and, for a sequence modality, with at least one valid step)."""
    mod = _modality(dataset, modality)
    inter = dataset.interactions
    in_train = np.zeros(dataset.n_items, bool)
    in_train[inter.items[inter.split == TRAIN]] = True
    items = np.flatnonzero(in_train & mod.mask)
    if mod.is_sequence:
        items = items[mod.lengths[items] > 0]
    if items.size == 0:
        raise DataError("no train item has this modality to fit on", path=mod.provenance.get("source"),
                        field=f"modalities[{modality!r}]",
                        found=f"{int(in_train.sum())} train items, {int(mod.mask.sum())} with the modality, none both",
                        expected="at least one train item with the modality")
    return items


def _fit_set(dataset: MultimodalDataset, modality: str) -> tuple[np.ndarray, int]:
    mod = _modality(dataset, modality)
    items = fit_items(dataset, modality)
    if not mod.is_sequence:
        return mod.features[items].astype(np.float64), int(items.size)
    valid = np.arange(mod.features.shape[1]) < mod.lengths[items][:, None]
    return mod.features[items][valid].astype(np.float64), int(items.size)


def fit_standardizer(dataset: MultimodalDataset, modality: str, *, eps: float = 1e-8) -> Standardizer:
    """Fits per-dimension mean and standard deviation on train items.

    .. math::
        \\mu = \\frac{1}{n} \\sum_{i \\in F} x_i, \\quad
        \\sigma = \\sqrt{\\tfrac{1}{n} \\sum_{i \\in F} (x_i - \\mu)^2}

    over the fit set :math:`F` (:func:`fit_rows`).
    """
    rows, n_items = _fit_set(dataset, modality)
    std = rows.std(axis=0)
    return Standardizer(rows.mean(axis=0), np.where(std < eps, 1.0, std), n_items, int(rows.shape[0]))


def fit_pca(dataset: MultimodalDataset, modality: str, n_components: int, *, whiten: bool = False) -> PCAProjection:
    """Fits the top ``n_components`` principal axes of the train items' centred rows.

    .. math::
        X_c = X_F - \\mathbf{1}\\mu^\\top = U S V^\\top, \\quad
        W = V_{:, :k}^\\top, \\quad \\lambda = S_{:k}^2 / (n - 1)

    With more rows than dimensions the axes come from the eigenvectors of
    :math:`X_c^\\top X_c` (accumulated in float64 chunks), otherwise from a thin SVD.

    References:
      Pearson, On Lines and Planes of Closest Fit to Systems of Points in Space, 1901.
    """
    rows, n_items = _fit_set(dataset, modality)
    n, d = rows.shape
    if int(n_components) != n_components or not 1 <= n_components <= min(n, d):
        raise ConfigError(f"n_components must be an integer in [1, min(fit rows, dim)] = [1, {min(n, d)}] "
                          f"for modality {modality!r}, got {n_components!r}")
    mean = rows.mean(axis=0)
    if n > d:
        gram = np.zeros((d, d))
        for begin in range(0, n, _GRAM_CHUNK_ROWS):
            chunk = rows[begin:begin + _GRAM_CHUNK_ROWS] - mean
            gram += chunk.T @ chunk
        eigenvalues, eigenvectors = np.linalg.eigh(gram)
        top = np.argsort(eigenvalues)[::-1][:n_components]
        components, squared = eigenvectors[:, top].T, np.maximum(eigenvalues[top], 0.0)
    else:
        _, singular, vt = np.linalg.svd(rows - mean, full_matrices=False)
        components, squared = vt[:n_components], singular[:n_components] ** 2
    peak = np.argmax(np.abs(components), axis=1)
    components = components * np.sign(components[np.arange(n_components), peak])[:, None]
    return PCAProjection(mean, components, squared / max(n - 1, 1), bool(whiten), n_items, int(n))


def fit_mean_fill(dataset: MultimodalDataset, modality: str) -> MeanFiller:
    """Fits the fill row: the mean of the train items' rows (valid steps for sequences)."""
    rows, n_items = _fit_set(dataset, modality)
    return MeanFiller(rows.mean(axis=0), n_items, int(rows.shape[0]))


# ---- applying ---------------------------------------------------------------------------


def apply_transform(dataset: MultimodalDataset, modality: str, transform: Transform) -> MultimodalDataset:
    """A new dataset with ``transform`` applied to every item of ``modality``, recorded in provenance."""
    mod = _modality(dataset, modality)
    lengths = mod.lengths
    if isinstance(transform, MeanFiller):
        lengths = transform.filled_lengths(lengths, mod.mask)
    features = transform.apply(mod.features, lengths=mod.lengths, mask=mod.mask)
    provenance = dict(mod.provenance)
    provenance["preprocessing"] = [*provenance.get("preprocessing", []), {
        "name": transform.name, "params": transform.params(),
        "fitted_on": transform.fitted_on, "fitted_steps": transform.fitted_steps}]
    return dataset.with_modality(Modality(mod.name, features, mod.mask, lengths, provenance))


def standardize(dataset: MultimodalDataset, modality: str, *, eps: float = 1e-8) -> MultimodalDataset:
    """Standardizes ``modality`` with mean and std fitted on train items (:func:`fit_standardizer`)."""
    return apply_transform(dataset, modality, fit_standardizer(dataset, modality, eps=eps))


def l2_normalize(dataset: MultimodalDataset, modality: str, *, eps: float = 1e-12) -> MultimodalDataset:
    """Scales every row (every valid step) of ``modality`` to unit L2 norm (nothing to fit)."""
    _modality(dataset, modality)
    return apply_transform(dataset, modality, L2Normalizer(eps=eps))


def pca(dataset: MultimodalDataset, modality: str, n_components: int, *, whiten: bool = False) -> MultimodalDataset:
    """Projects ``modality`` on ``n_components`` principal axes fitted on train items (:func:`fit_pca`)."""
    return apply_transform(dataset, modality, fit_pca(dataset, modality, n_components, whiten=whiten))


def mean_fill(dataset: MultimodalDataset, modality: str) -> MultimodalDataset:
    """Fills rows of items without ``modality`` with the train items' mean row; the mask stays False there."""
    return apply_transform(dataset, modality, fit_mean_fill(dataset, modality))


def _map_steps(features, lengths, function, out_dim: int | None = None) -> np.ndarray:
    """``function`` on every row, or on every valid step of a sequence (padding left at 0)."""
    features = np.asarray(features)
    if features.ndim == 2 or (features.ndim == 1):
        return np.asarray(function(features.astype(np.float64)), np.float32)
    if features.ndim != 3 or lengths is None:
        raise DataError("features must be (n, d), or (n, T, d) with lengths", field="features",
                        found=f"shape {features.shape}, lengths {'given' if lengths is not None else 'None'}",
                        expected="(n, d) or (n, T, d) with (n,) lengths")
    valid = np.arange(features.shape[1]) < np.asarray(lengths)[:, None]
    out = np.zeros(features.shape[:2] + (out_dim or features.shape[2],), np.float32)
    out[valid] = function(features[valid].astype(np.float64))
    return out


def _modality(dataset: MultimodalDataset, name: str) -> Modality:
    if name not in dataset.modalities:
        raise DataError("unknown modality", path=dataset.metadata.get("source"), field="modalities",
                        found=name, expected=f"one of {list(dataset.modalities)}")
    return dataset.modalities[name]
