"""``jaxrec.data.load`` reads a folder written by ``prepare_tfds``, by name and by sniffing."""

import numpy as np

import jaxrec.data as data


def test_load_detects_and_reads_a_prepared_dataset(tmp_path):
    original = data.make_synthetic(40, 30, n_interactions=400, seed=5)
    folder = data.prepare_tfds(original, tmp_path, name="tiny")
    assert data.detect_format(folder) == "tfds"
    for loaded in (data.load(folder), data.load(folder, format="tfds", version="1.0.0")):
        assert (loaded.n_users, loaded.n_items) == (original.n_users, original.n_items)
        np.testing.assert_array_equal(loaded.interactions.items, original.interactions.items)
        np.testing.assert_array_equal(loaded.interactions.split, original.interactions.split)
        for name, modality in original.modalities.items():
            np.testing.assert_array_equal(loaded.modalities[name].features, modality.features)
            np.testing.assert_array_equal(loaded.modalities[name].mask, modality.mask)
