"""Independent numpy spot-checks on stress inputs the per-model tests leave out: items lacking a
modality, a modality of width 1, items and users without train interactions, no propagation
layers. Features are recomputed from the dataset's raw rows, not read back from the model's ctx."""

import numpy as np
from _model_testing import compiled_apply, randomized_params, tiny_multimodal_dataset

from jaxrec import models


def _dataset():
    presence = np.ones((8, 2), bool)
    presence[[1, 4], 0] = False  # items 1 and 4 lack the image
    presence[[2, 7], 1] = False  # items 2 and 7 (7: never trained) lack the width-1 "rating" modality
    return tiny_multimodal_dataset(presence, [("image", 3), ("rating", 1)], n_users=5)


def _standardized(dataset, name):
    """Per-dimension (x - mean) / std fitted on the items that have a train interaction AND the
    modality (population std, 1 where it is ~0), absent rows zero."""
    mod = dataset.modalities[name]
    inter = dataset.interactions
    trained = np.zeros(dataset.n_items, bool)
    trained[inter.items[inter.split == 0]] = True
    rows = mod.features[trained & mod.mask].astype(np.float64)
    std = rows.std(axis=0)
    std[std < 1e-8] = 1.0
    return np.where(mod.mask[:, None], (mod.features - rows.mean(axis=0)) / std, 0.0), trained


def test_vbpr_scores_on_masked_rows_and_a_width_one_modality_are_the_paper_scores():
    dataset = _dataset()
    built = models.build("vbpr", dataset, embedding_size=3, visual_size=2)
    p = {k: np.asarray(v, np.float64) for k, v in randomized_params(built).items()}
    users, items = compiled_apply(built.module, randomized_params(built), built.ctx, False, method="encode")
    image, trained = _standardized(dataset, "image")
    rating, _ = _standardized(dataset, "rating")
    f = np.concatenate([image, rating], axis=1)
    gamma_i, beta_i = p["gamma_item"] * trained[:, None], p["beta_item"] * trained
    expected = (beta_i[None, :] + p["gamma_user"] @ gamma_i.T + p["theta_user"] @ (f @ p["E"]).T
                + (f @ p["beta_prime"])[None, :])
    np.testing.assert_allclose(np.asarray(users, np.float64) @ np.asarray(items, np.float64).T, expected,
                               rtol=2e-4, atol=2e-4)
    assert np.all(np.isfinite(np.asarray(items)))


def test_lightgcn_without_layers_scores_with_the_raw_tables():
    dataset = _dataset()
    built = models.build("lightgcn", dataset, embedding_size=5, n_layers=0)
    params = randomized_params(built)
    users, items = compiled_apply(built.module, params, built.ctx, False, method="encode")
    # Item 7 have no train interaction; with no layer every row is its own table row.
    np.testing.assert_allclose(np.asarray(users), params["user_embedding"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(items), params["item_embedding"], rtol=1e-6, atol=1e-6)
