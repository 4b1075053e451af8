"""A sequence modality (per-frame features) used by a model through jaxrec.fusion's temporal pooling:
fusion_mf pools the frames of the synthetic generator's sequence modality, then fuses."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrec import models
from jaxrec.data import Modality, make_synthetic
from jaxrec.errors import ConfigError
from jaxrec.train import load_config

from _model_testing import compiled_apply, popularity_recall, randomized_params, train_tiny

CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "synthetic" / "fusion_video_frames.yaml"


def _dataset(n_users=40, n_items=30, steps=5):
    return make_synthetic(n_users, n_items, n_interactions=400, dims={"text": 6}, seed=3,
                          sequence_modality=("video", steps, 4), missing_rate={"video": 0.2})


def _with_pooled_video(dataset):
    """The same dataset with the frames averaged in numpy (over valid frames) into a flat modality."""
    video = dataset.modalities["video"]
    valid = np.arange(video.features.shape[1])[None, :] < video.lengths[:, None]
    pooled = (video.features * valid[..., None]).sum(1) / np.maximum(video.lengths, 1)[:, None]
    return dataset.with_modality(Modality("video", pooled.astype(np.float32), video.mask))


@pytest.mark.parametrize("fusion, options", [("attention", {}), ("gated", {"gate_context": "item"}),
                                             ("ensemble", {}), ("early", {})])
def test_mean_pooled_frames_equal_a_flat_modality_of_numpy_means(fusion, options):
    dataset = _dataset()
    args = {"fusion": fusion, "embedding_size": 6, "feature_scaling": "none", "sequence_pooling": "mean", **options}
    sequence = models.build("fusion_mf", dataset, **args)
    flat = models.build("fusion_mf", _with_pooled_video(dataset), **args)
    assert sequence.ctx["modalities"][1].ndim == 3 and flat.ctx["modalities"][1].ndim == 2
    params = randomized_params(flat)  # mean pooling adds no parameters: one tree fits both
    assert jax.tree.structure(params) == jax.tree.structure(randomized_params(sequence))
    for a, b in zip(compiled_apply(sequence.module, params, sequence.ctx, False, method="encode"),
                    compiled_apply(flat.module, params, flat.ctx, False, method="encode")):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_attention_pooling_ignores_padding_and_learns():
    dataset = _dataset()
    built = models.build("fusion_mf", dataset, fusion="attention", embedding_size=6, sequence_pooling="attention")
    params = randomized_params(built)
    assert "query" in params["poolers_0"]
    video = built.ctx["modalities"][1]
    lengths = built.ctx["lengths"]["1"]
    padding = np.arange(video.shape[1])[None, :] >= lengths[:, None]
    noisy = np.where(padding[..., None], 1e3, video).astype(np.float32)  # garbage past each length
    ctx_noisy = {**built.ctx, "modalities": [built.ctx["modalities"][0], noisy]}
    for a, b in zip(compiled_apply(built.module, params, built.ctx, False, method="encode"),
                    compiled_apply(built.module, params, ctx_noisy, False, method="encode")):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
    batch = {"users": jnp.arange(8), "pos_items": jnp.asarray(dataset.split_pairs("train")[:8, 1]),
             "neg_items": jnp.arange(8)[:, None] % 30, "weights": jnp.ones(8)}

    def loss(p):
        terms = built.module.apply({"params": p}, built.ctx, batch, False, method="loss_terms")
        return terms["bpr"] + terms["reg"]

    grads = jax.jit(jax.grad(loss))(params)
    assert float(jnp.abs(grads["poolers_0"]["query"]).max()) > 0  # the pooling query is trained


def test_unknown_pooling_is_refused():
    with pytest.raises(ConfigError, match="sequence_pooling"):
        models.build("fusion_mf", _dataset(), sequence_pooling="max")
    with pytest.raises(ConfigError, match="is a sequence"):  # models without pooling still refuse sequences
        models.build("sidemf", _dataset())


def test_the_synthetic_frames_config_trains_and_beats_popularity(tmp_path):
    config = load_config(CONFIG)
    assert config.model.args["sequence_pooling"] == "attention"
    # smaller, and with a weak popularity prior so that beating popularity needs the learned part
    synthetic = dict(config.data.synthetic, n_users=300, n_items=200, n_interactions=6000, popularity_skew=0.3)
    dataset = make_synthetic(**{**synthetic, "sequence_modality": tuple(synthetic["sequence_modality"])})
    assert dataset.modalities["video"].is_sequence
    metrics = train_tiny(tmp_path / "run", dataset, config.model.name, dict(config.model.args, embedding_size=16),
                         epochs=10, learning_rate=0.01, loss_weights=dict(config.loss_weights))
    recall = metrics["test"]["recall@20"]
    assert np.isfinite(recall) and recall > popularity_recall(dataset)
