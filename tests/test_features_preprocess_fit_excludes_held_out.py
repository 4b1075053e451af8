"""Train-fitted preprocessing takes its statistics from train items only: items seen only in
the valid split (like test-only ones) must not move the mean, the scale or the fill row.
Expected values are numpy over rows picked by hand."""

import numpy as np

from jaxrec.data import Interactions, Modality, MultimodalDataset
from jaxrec.features import fit_items, fit_mean_fill, fit_standardizer


def _dataset():
    # items 0-3: train; item 4: valid only; item 5: test only; item 6: train but masked out.
    features = np.array([[1, 10], [2, 20], [3, 40], [6, 10], [100, -50], [-70, 300], [9, 9]], np.float32)
    mask = np.array([True, True, True, True, True, True, False])
    users = [0, 0, 1, 1, 0, 1, 1]
    items = [0, 1, 2, 3, 4, 5, 6]
    split = np.array([0, 0, 0, 0, 1, 2, 0], np.int8)
    return MultimodalDataset("pre", 2, 7, Interactions(users, items, split),
                             modalities={"v": Modality("v", features, mask)}), features


def test_valid_only_and_test_only_items_are_not_fitted_on():
    data, features = _dataset()
    assert fit_items(data, "v").tolist() == [0, 1, 2, 3]
    rows = features[:4].astype(np.float64)
    standardizer = fit_standardizer(data, "v")
    np.testing.assert_allclose(standardizer.mean, [3.0, 20.0])
    np.testing.assert_allclose(standardizer.scale, rows.std(axis=0))  # population std (ddof 0)
    assert standardizer.fitted_on == 4
    np.testing.assert_allclose(fit_mean_fill(data, "v").fill, [3.0, 20.0])
