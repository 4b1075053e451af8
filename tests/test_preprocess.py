"""Per-modality preprocessing: statistics from train items only, checked with plain numpy."""

import json

import numpy as np
import pytest

from jaxrec.data import Interactions, Modality, MultimodalDataset
from jaxrec.errors import ConfigError, DataError
from jaxrec.features import (L2Normalizer, MeanFiller, PCAProjection, Standardizer, apply_transform, as_dict,
                             fit_items, fit_mean_fill, fit_pca, fit_standardizer, l2_normalize, mean_fill, pca,
                             standardize, transform_from_dict)

N_ITEMS, DIM, STEPS = 30, 6, 4


def make_dataset(seed=0, dim=DIM, test_only_scale=1.0):
    """Items 0-19 in train, 20-24 only in test, 25-29 without interactions; ``mask`` drops items
    3, 7 (train) and 22 (test). Test-only items can be scaled up to show they do not matter."""
    rng = np.random.default_rng(seed)
    users = np.r_[np.arange(20) % 5, np.arange(20, 25) % 5]
    items = np.r_[np.arange(20), np.arange(20, 25)]
    split = np.r_[np.zeros(20), np.full(5, 2)].astype(np.int8)
    flat = rng.normal(size=(N_ITEMS, dim)) * np.arange(1, dim + 1) + 3.0
    flat[20:25] *= test_only_scale
    mask = np.ones(N_ITEMS, bool)
    mask[[3, 7, 22]] = False
    flat[[3, 7]] = 1e3  # untrusted rows of missing train items must not count either
    lengths = rng.integers(1, STEPS + 1, N_ITEMS)
    lengths[[5, 22]] = 0
    frames = rng.normal(size=(N_ITEMS, STEPS, dim)) + 1.0
    frames[np.arange(STEPS) >= lengths[:, None]] = 50.0  # padding garbage: never in the statistics
    frames[20:25] *= test_only_scale
    seq_mask = lengths > 0
    modalities = {
        "text": Modality("text", flat, mask, provenance={"encoder": "toy", "source": "text.npy"}),
        "frames": Modality("frames", frames, seq_mask, lengths),
    }
    return MultimodalDataset("toy", 5, N_ITEMS, Interactions(users, items, split), modalities)


def train_rows_by_hand(data, name):
    """Rows of items with a train interaction and the modality, selected by a Python loop."""
    mod = data.modalities[name]
    train_items = {int(i) for i, s in zip(data.interactions.items, data.interactions.split) if s == 0}
    chosen = [i for i in range(data.n_items) if i in train_items and mod.mask[i]]
    if not mod.is_sequence:
        return chosen, np.array([mod.features[i] for i in chosen], np.float64)
    steps = [mod.features[i, t] for i in chosen for t in range(mod.lengths[i])]
    return [i for i in chosen if mod.lengths[i] > 0], np.array(steps, np.float64)


def test_fit_items_are_train_items_with_the_modality():
    data = make_dataset()
    want, _ = train_rows_by_hand(data, "text")
    np.testing.assert_array_equal(fit_items(data, "text"), want)
    assert 3 not in want and 20 not in want


@pytest.mark.parametrize("name", ["text", "frames"])
def test_standardize_against_numpy(name):
    data = make_dataset()
    items, rows = train_rows_by_hand(data, name)
    mean, std = rows.mean(axis=0), rows.std(axis=0)
    out = standardize(data, name)
    mod, before = out.modalities[name], data.modalities[name]
    if before.is_sequence:
        valid = np.arange(STEPS) < before.lengths[:, None]
        np.testing.assert_allclose(mod.features[valid], (before.features[valid] - mean) / std, rtol=1e-5, atol=1e-5)
        assert np.all(mod.features[~valid] == 0)
    else:
        np.testing.assert_allclose(mod.features, (before.features - mean) / std, rtol=1e-5, atol=1e-4)
        np.testing.assert_array_equal(mod.mask, before.mask)
    entry = mod.provenance["preprocessing"][-1]
    assert entry == {"name": "standardize", "params": {}, "fitted_on": len(items), "fitted_steps": rows.shape[0]}
    json.dumps(out.summary())


def test_test_only_items_do_not_influence_the_fit():
    base = fit_standardizer(make_dataset(), "text")
    scaled = fit_standardizer(make_dataset(test_only_scale=1e3), "text")
    np.testing.assert_array_equal(base.mean, scaled.mean)
    np.testing.assert_array_equal(base.scale, scaled.scale)
    a, b = fit_pca(make_dataset(), "frames", 3), fit_pca(make_dataset(test_only_scale=1e3), "frames", 3)
    np.testing.assert_array_equal(a.components, b.components)


def test_constant_dimension_is_not_divided_by_zero():
    data = make_dataset()
    text = data.modalities["text"]
    features = text.features.copy()
    features[:, 2] = 4.0
    fitted = fit_standardizer(data.with_modality(Modality("text", features, text.mask)), "text")
    assert fitted.scale[2] == 1.0
    np.testing.assert_allclose(fitted.apply(features)[:, 2], 0.0)


@pytest.mark.parametrize("name,dim", [("text", DIM), ("frames", DIM), ("text", 40)])
def test_pca_against_svd_of_the_train_rows(name, dim):
    # dim 40 > 18 fit rows takes the thin-SVD branch; the others the covariance branch.
    data = make_dataset(dim=dim)
    _, rows = train_rows_by_hand(data, name)
    k = 3
    centred = rows - rows.mean(axis=0)
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    fitted = fit_pca(data, name, k)
    for axis in range(k):  # same axes up to sign
        assert abs(abs(fitted.components[axis] @ vt[axis]) - 1) < 1e-8
    np.testing.assert_allclose(fitted.explained_variance, singular[:k] ** 2 / (rows.shape[0] - 1), rtol=1e-8)
    np.testing.assert_allclose(fitted.components @ fitted.components.T, np.eye(k), atol=1e-10)
    out = pca(data, name, k).modalities[name]
    before = data.modalities[name]
    signs = np.sign(fitted.components @ vt[:k].T).diagonal()
    flat_before = before.features if not before.is_sequence else before.features[
        np.arange(STEPS) < before.lengths[:, None]]
    flat_after = out.features if not out.is_sequence else out.features[np.arange(STEPS) < out.lengths[:, None]]
    want = (flat_before - rows.mean(axis=0)) @ vt[:k].T * signs
    np.testing.assert_allclose(flat_after, want, rtol=1e-4, atol=1e-3)
    assert out.dim == k and out.provenance["dim"] == k
    assert out.provenance["preprocessing"][-1]["params"] == {"n_components": k, "whiten": False}


def test_pca_whitening_gives_unit_variance_on_train_rows():
    data = make_dataset()
    out = pca(data, "text", 4, whiten=True)
    train = out.modalities["text"].features[fit_items(data, "text")].astype(np.float64)
    np.testing.assert_allclose(train.var(axis=0, ddof=1), 1.0, rtol=1e-4)
    with pytest.raises(ConfigError, match="n_components"):
        pca(data, "text", DIM + 1)


def test_l2_normalize():
    data = make_dataset()
    text = data.modalities["text"]
    features = text.features.copy()
    features[10] = 0.0
    data = data.with_modality(Modality("text", features, text.mask))
    out = l2_normalize(data, "text").modalities["text"].features
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    np.testing.assert_allclose(np.delete(out, 10, 0), np.delete(features / np.where(norms > 0, norms, 1), 10, 0),
                               rtol=1e-6)
    assert np.all(out[10] == 0)
    frames = l2_normalize(data, "frames").modalities["frames"]
    valid = np.arange(STEPS) < frames.lengths[:, None]
    np.testing.assert_allclose(np.linalg.norm(frames.features[valid], axis=-1), 1.0, rtol=1e-5)
    assert frames.provenance["preprocessing"] == [{"name": "l2_normalize", "params": {"eps": 1e-12},
                                                  "fitted_on": 0, "fitted_steps": 0}]


def test_mean_fill_fills_missing_rows_and_keeps_the_mask():
    data = make_dataset()
    _, rows = train_rows_by_hand(data, "text")
    out = mean_fill(data, "text").modalities["text"]
    before = data.modalities["text"]
    for item in range(N_ITEMS):
        if before.mask[item]:
            np.testing.assert_array_equal(out.features[item], before.features[item])
        else:
            np.testing.assert_allclose(out.features[item], rows.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(out.mask, before.mask)
    _, steps = train_rows_by_hand(data, "frames")
    frames = mean_fill(data, "frames").modalities["frames"]
    assert frames.lengths[5] == 1 and frames.lengths[22] == 1 and not frames.mask[5]
    np.testing.assert_allclose(frames.features[5, 0], steps.mean(axis=0), rtol=1e-6)
    # Padding past the new length is left as it was; present items are untouched.
    np.testing.assert_array_equal(frames.features[5, 1:], data.modalities["frames"].features[5, 1:])
    np.testing.assert_array_equal(frames.features[frames.mask], data.modalities["frames"].features[frames.mask])


def test_chained_transforms_accumulate_provenance():
    data = mean_fill(make_dataset(), "text")
    data = standardize(data, "text")
    data = pca(data, "text", 2)
    names = [p["name"] for p in data.modalities["text"].provenance["preprocessing"]]
    assert names == ["mean_fill", "standardize", "pca"]
    assert data.modalities["text"].provenance["encoder"] == "toy"
    json.dumps(data.summary())


@pytest.mark.parametrize("fit", [lambda d: fit_standardizer(d, "text"), lambda d: fit_pca(d, "text", 3, whiten=True),
                                 lambda d: fit_mean_fill(d, "text"), lambda d: L2Normalizer(eps=1e-6)])
def test_fitted_transforms_serve_new_items_after_a_round_trip(fit):
    data = make_dataset()
    transform = fit(data)
    assert isinstance(transform, (Standardizer, PCAProjection, MeanFiller, L2Normalizer))
    rebuilt = transform_from_dict({k: (v.tolist() if isinstance(v, np.ndarray) else v)
                                   for k, v in as_dict(transform).items()})
    text = data.modalities["text"]
    np.testing.assert_allclose(rebuilt.apply(text.features, mask=text.mask),
                               apply_transform(data, "text", transform).modalities["text"].features, rtol=1e-6)
    with pytest.raises(DataError):
        transform_from_dict({"kind": "whitening"})


def test_errors_name_the_modality():
    data = make_dataset()
    with pytest.raises(DataError, match="unknown modality"):
        standardize(data, "image")
    nothing = data.with_modality(Modality("text", data.modalities["text"].features, np.r_[np.zeros(20, bool),
                                                                                          np.ones(10, bool)]))
    with pytest.raises(DataError, match="no train item") as info:
        standardize(nothing, "text")
    assert info.value.field == "modalities['text']"
