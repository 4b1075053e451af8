"""Offline, end to end: raw image files the test draws -> jaxrec features extract (classic) -> a dataset
with that modality -> a feature model trained a few epochs -> ranked and evaluated from its checkpoint."""

import json

import numpy as np
import pytest

from _media_files import write_ids, write_image
from jaxrec import features as jf
from jaxrec.cli.main import main
from jaxrec.data import make_synthetic
from jaxrec.train import config_from_dict, evaluate_run, train_and_evaluate

N_USERS, N_ITEMS = 120, 60


def _item_image(factors):
    """A 24 x 24 image whose colours and stripe angle follow the item's planted factors."""
    colour = (255 / (1 + np.exp(-2 * factors[:3]))).astype(np.uint8)
    y, x = np.mgrid[0:24, 0:24]
    angle = np.pi * (1 / (1 + np.exp(-factors[3])))
    stripes = (np.sin((x * np.cos(angle) + y * np.sin(angle)) * 0.8) > 0)[..., None]
    return np.where(stripes, colour, 255 - colour).astype(np.uint8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    dataset, truth = make_synthetic(N_USERS, N_ITEMS, n_interactions=1800, dims={}, seed=5, return_truth=True,
                                    popularity_skew=0.3)
    media = root / "posters"
    media.mkdir()
    rows = []
    for item in range(N_ITEMS):
        if item % 10 == 9:
            continue  # every tenth item has no poster: a masked row, not zeros taken for features
        write_image(media / f"{item:03d}.png", _item_image(truth.item_factors[item]))
        rows.append((item, f"{item:03d}.png"))
    (media / "broken.png").write_bytes(b"\x89PNG garbage")
    rows.append((9, "broken.png"))  # unreadable: masked with a warning
    ids = write_ids(root / "ids.tsv", rows)
    output = root / "poster.npy"
    code = main(["features", "extract", "--modality", "image", "--input", str(media), "--ids", str(ids),
                 "--encoder", "classic", "--output", str(output), "--n-items", str(N_ITEMS), "--on-error", "mask",
                 "--batch-size", "16", "--no-progress"])
    assert code == 0
    with_posters = jf.add_features(dataset, output, name="poster")
    config = config_from_dict({
        "data": {"synthetic": {}},
        "model": {"name": "fusion_mf", "args": {"fusion": "attention", "embedding_size": 16,
                                                "modalities": ["poster"]}},
        "train": {"epochs": 6, "batch_size": 256, "learning_rate": 0.01, "patience": 6, "seed": 0,
                  "checkpoint_every": 6},
        "eval": {"ks": [10, 20]},
        "loss_weights": {"bpr": 1.0, "reg": 1e-3},
    })
    metrics = train_and_evaluate(config, root / "run", dataset=with_posters, quiet=True)
    return root, output, with_posters, metrics


def test_extracted_rows_become_a_masked_modality(run):
    _, output, dataset, _ = run
    poster = dataset.modalities["poster"]
    expected_mask = np.array([item % 10 != 9 for item in range(N_ITEMS)])
    np.testing.assert_array_equal(poster.mask, expected_mask)
    assert poster.features.shape == (N_ITEMS, 105) and not np.any(poster.features[~expected_mask])
    record = json.loads(output.with_suffix(".json").read_text())
    assert record["rows"]["present"] == 54 and record["failures"][0]["path"] == "broken.png"
    assert record["encoder"] == "classic" and record["library"].startswith("jaxrec ")
    assert poster.provenance["encoder"] == "classic"


def test_the_trained_model_ranks_and_its_checkpoint_reproduces_the_metrics(run):
    root, _, dataset, metrics = run
    test = metrics["test"]
    assert set(test) >= {"recall@10", "recall@20", "ndcg@20"}
    assert all(np.isfinite(v) and 0 <= v <= 1 for v in test.values())
    assert test["recall@20"] > 0  # wired: relevant items reach the top 20 (a quality bound is the model tests')
    again = evaluate_run(root / "run", "test", dataset=dataset)
    for key, value in test.items():
        assert again["metrics"][key] == pytest.approx(value, abs=1e-6)


def test_recommend_through_serving(run):
    """The served model's lists, and a new item from a drawn poster's features alone."""
    from jaxrec.serve import Recommender

    root, output, dataset, _ = run
    recommender = Recommender.load(root / "run", dataset=dataset)
    users = np.arange(dataset.n_users, dtype=np.int32)
    items, scores = recommender.recommend(users, k=10)
    assert items.shape == scores.shape == (dataset.n_users, 10)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # ranked
    train = dataset.split_pairs("train")
    seen = set(map(tuple, train.tolist()))
    assert not any((u, i) in seen for u in users.tolist() for i in items[u].tolist())  # seen items excluded
    poster = np.asarray(dataset.modalities["poster"].features[:1], np.float32)
    new_ids = recommender.add_items({"poster": poster})
    assert list(np.asarray(new_ids)) == [dataset.n_items]
    new_items, new_scores = recommender.recommend(users[:4], k=dataset.n_items + 1, exclude_seen=False)
    user_emb, item_emb = recommender.embeddings()  # the whole catalogue, the new item included
    assert item_emb.shape[0] == dataset.n_items + 1
    for row in range(4):
        assert dataset.n_items in new_items[row]  # ranked with the others at once
        np.testing.assert_allclose(new_scores[row], (item_emb @ user_emb[row])[new_items[row]], rtol=1e-5, atol=1e-6)
