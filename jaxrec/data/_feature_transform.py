r"""Per-modality feature transforms applied once to a loaded dataset (``data.feature_transform``).

For a modality with rows :math:`x_i \in \mathbb{R}^d` and the set :math:`F` of items that
have it (``mask`` True; every such item, whatever its split -- features are known for the
whole catalogue before any interaction is), with :math:`\mu = \frac{1}{|F|}\sum_{i \in F} x_i`
and :math:`\sigma_j = \sqrt{\frac{1}{|F|}\sum_{i \in F} (x_{ij} - \mu_j)^2}`:

* ``center``: :math:`x_i - \mu`;
* ``standardize``: :math:`(x_i - \mu) / \sigma` per dimension (:math:`\sigma_j := 1` where it
  is below 1e-8, so a constant dimension maps to 0);
* ``l2``: :math:`x_i / \lVert x_i \rVert` (a zero row stays zero);
* ``none``: unchanged.

Statistics are computed in float64 over the present rows and the result is float32; rows of
items without the modality stay zero and the mask is unchanged. Unlike the transforms of
:mod:`jaxrec.features` (fitted on train items, for reuse on new items at serving time), these
take every present row: a dataset-level change of the features' geometry, e.g. removing the
common direction the rows share (TikTok's visual rows have a mean pairwise cosine of 0.86)
before a model's cosine kNN graph or projection sees them. The transform is recorded in the
modality's provenance (``preprocessing``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from jaxrec.data._dataset import Modality, MultimodalDataset
from jaxrec.errors import ConfigError

FEATURE_TRANSFORMS = ("none", "center", "standardize", "l2")
_STD_FLOOR = 1e-8


def check_feature_transform(dataset: MultimodalDataset, transforms: Mapping[str, str] | None,
                            field: str = "data.feature_transform") -> dict[str, str]:
    """``transforms`` checked against the dataset: a mapping of modality name to one of
    :data:`FEATURE_TRANSFORMS`, naming each modality present and non-sequence (ConfigError)."""
    if transforms is None:
        return {}
    if not isinstance(transforms, Mapping):
        raise ConfigError(f"{field} must map modality names to one of {', '.join(FEATURE_TRANSFORMS)} "
                          f"(e.g. {{visual_feat: center}}); found {transforms!r}")
    checked = {}
    for name, how in transforms.items():
        if name not in dataset.modalities:
            raise ConfigError(f"{field}.{name}: the dataset has no modality {name!r} "
                              f"(it has {', '.join(dataset.modalities) or 'none'})")
        if how not in FEATURE_TRANSFORMS:
            raise ConfigError(f"{field}.{name} is {how!r}; expected one of {', '.join(FEATURE_TRANSFORMS)}")
        if dataset.modalities[name].is_sequence and how != "none":
            raise ConfigError(f"{field}.{name}: {how!r} applies to (n_items, d) modalities; {name!r} is a sequence "
                              "modality (pool it first)")
        checked[str(name)] = how
    return checked


def transform_features(dataset: MultimodalDataset, transforms: Mapping[str, str] | None) -> MultimodalDataset:
    """A new dataset with each named modality transformed (see the module docstring)."""
    for name, how in check_feature_transform(dataset, transforms).items():
        if how == "none":
            continue
        modality = dataset.modalities[name]
        present = np.asarray(modality.mask, bool)
        if not present.any():
            raise ConfigError(f"data.feature_transform.{name}: no item has the modality {name!r}, "
                              "so there are no rows to take statistics from")
        x = np.asarray(modality.features, np.float64)
        rows = x[present]
        if how == "l2":
            norms = np.linalg.norm(x, axis=1, keepdims=True)
            out = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
        else:
            mean = rows.mean(axis=0)
            out = x - mean
            if how == "standardize":
                std = rows.std(axis=0)
                out = out / np.where(std < _STD_FLOOR, 1.0, std)
        out[~present] = 0.0
        provenance = dict(modality.provenance)
        provenance["preprocessing"] = [*provenance.get("preprocessing", []),
                                       {"name": how, "fitted_on": int(present.sum()), "statistics": "present rows"}]
        dataset = dataset.with_modality(Modality(name, out.astype(np.float32), modality.mask, modality.lengths,
                                                 provenance))
    return dataset
