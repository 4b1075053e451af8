"""data.feature_transform: center / standardize / l2 against numpy, over the rows present."""

import numpy as np
import pytest

from jaxrec.data import Interactions, Modality, MultimodalDataset, transform_features
from jaxrec.errors import ConfigError
from jaxrec.train._config import config_from_dict
from jaxrec.train._data import load_dataset


def dataset():
    rng = np.random.default_rng(0)
    visual = (rng.normal(size=(7, 4)) + np.array([5.0, -2.0, 0.0, 1.0])).astype(np.float16)
    visual[:, 2] = 3.0  # a constant dimension
    mask = np.array([True, True, False, True, True, True, True])
    visual[2] = 0.0
    audio = rng.normal(size=(7, 3)).astype(np.float32)
    audio[4] = 0.0  # a zero row, present
    inter = Interactions(np.array([0, 1, 2]), np.array([0, 1, 3]), np.zeros(3, np.int8))
    return MultimodalDataset("t", 3, 7, inter, modalities={
        "visual": Modality("visual", visual, mask), "audio": Modality("audio", audio, np.ones(7, bool))})


def test_transforms_match_numpy_over_present_rows():
    data = dataset()
    out = transform_features(data, {"visual": "standardize", "audio": "l2"})
    x = data.modalities["visual"].features.astype(np.float64)
    present = data.modalities["visual"].mask
    mean, std = x[present].mean(0), x[present].std(0)
    expected = (x - mean) / np.where(std < 1e-8, 1, std)
    expected[~present] = 0
    got = out.modalities["visual"].features
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[present].mean(0), 0, atol=1e-5)
    np.testing.assert_array_equal(got[:, 2], 0)  # the constant dimension maps to 0
    a = data.modalities["audio"].features.astype(np.float64)
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    np.testing.assert_allclose(out.modalities["audio"].features, np.where(norms > 0, a / np.maximum(norms, 1e-30), 0),
                               rtol=1e-6)
    assert out.modalities["audio"].provenance["preprocessing"][-1]["name"] == "l2"
    centered = transform_features(data, {"visual": "center", "audio": "none"})
    expected = x - mean
    expected[~present] = 0
    np.testing.assert_allclose(centered.modalities["visual"].features, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(centered.modalities["audio"].features, data.modalities["audio"].features)
    np.testing.assert_array_equal(centered.modalities["visual"].mask, present)


def test_bad_transforms_name_the_key(tmp_path):
    data = dataset()
    with pytest.raises(ConfigError, match=r"data.feature_transform.video: the dataset has no modality"):
        transform_features(data, {"video": "center"})
    with pytest.raises(ConfigError, match=r"data.feature_transform.visual is 'whiten'"):
        transform_features(data, {"visual": "whiten"})
    with pytest.raises(ConfigError, match="data.feature_transform.visual"):
        config_from_dict({"model": {"name": "bpr"}, "data": {"synthetic": {}, "feature_transform": {"visual": "pca"}}})
    # Through the trainer's loader: the synthetic data's modalities, transformed once after loading.
    config = config_from_dict({"model": {"name": "bpr"}, "data": {
        "synthetic": {"n_users": 20, "n_items": 15, "n_interactions": 120, "dims": {"image": 4}},
        "feature_transform": {"image": "center"}}})
    loaded = load_dataset(config.data)
    features = loaded.modalities["image"].features
    np.testing.assert_allclose(features[loaded.modalities["image"].mask].mean(0), 0, atol=1e-5)
