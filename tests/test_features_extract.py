"""jaxrec features extract on images: row alignment, mask, provenance, bad input, resume."""

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from _media_files import noise_image, write_ids, write_image, write_wav
from jaxrec import features as jf
from jaxrec.cli.main import main
from jaxrec.errors import DataError
from jaxrec.features import _classic


@pytest.fixture()
def images(tmp_path):
    """Five images of mixed sizes and modes for items 0, 2, 3, 5, 6 (rows 1 and 4 unlisted)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "media"
    (folder / "sub").mkdir(parents=True)
    arrays = {0: noise_image(rng, 20, 30), 2: noise_image(rng, 300, 90), 3: noise_image(rng, 7, 5),
              5: noise_image(rng, 16, 16), 6: noise_image(rng, 12, 40)}
    names = {0: "a.png", 2: "sub/b.jpg", 3: "c.png", 5: "d.png", 6: "e.png"}
    for item, array in arrays.items():
        write_image(folder / names[item], array, mode="L" if item == 5 else None)
    # palette + transparency, to be composited over white
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[..., 3] = 0
    Image.fromarray(rgba, "RGBA").save(folder / "e.png")
    ids = write_ids(tmp_path / "ids.tsv", [(item, names[item]) for item in (3, 0, 2, 6, 5)])
    return folder, ids, arrays


def _extract(folder, ids, output, **options):
    media = jf.read_media_list(ids, folder, n_items=options.pop("n_items", None),
                               on_error=options.get("on_error", "fail"))
    pipeline = jf.ModalityPipeline("image", jf.ClassicImageEncoder())
    return jf.extract_features(media, pipeline, output, progress=False, **options)


def test_rows_are_item_aligned_with_a_mask_and_provenance(images, tmp_path):
    folder, ids, arrays = images
    result = _extract(folder, ids, tmp_path / "out.npy", batch_size=2)
    features = np.load(tmp_path / "out.npy")
    mask = np.load(tmp_path / "out.mask.npz")["mask"]
    assert features.shape == (7, 105) and features.dtype == np.float32
    np.testing.assert_array_equal(mask, [True, False, True, True, False, True, True])
    assert not np.any(features[~mask])
    # item 0 and 3 are small RGB PNGs: exactly the descriptor of their pixels
    np.testing.assert_array_equal(features[0], _classic.image_descriptor(arrays[0]))
    np.testing.assert_array_equal(features[3], _classic.image_descriptor(arrays[3]))
    # item 5 was saved as greyscale: the descriptor of the grey image replicated to RGB
    grey = np.asarray(Image.fromarray(arrays[5]).convert("L").convert("RGB"))
    np.testing.assert_array_equal(features[5], _classic.image_descriptor(grey))
    # item 6 is fully transparent: white after compositing
    np.testing.assert_array_equal(features[6], _classic.image_descriptor(np.full((6, 6, 3), 255, np.uint8)))
    # item 2 (300 px tall JPEG) was shrunk to 256 px: histograms still sum to one
    assert features[2, :64].sum() == pytest.approx(1.0, abs=1e-5)
    record = json.loads((tmp_path / "out.json").read_text())
    assert record["encoder"] == "classic" and record["weights_sha256"] is None
    assert record["rows"] == {"total": 7, "present": 5, "failed": 0, "left_out": 0, "unlisted": 2}
    assert record["media"]["ids_sha256"] == jf.read_media_list(ids, folder).sha256
    assert "256" in record["preprocessing"] and record["versions"]["numpy"]
    assert not (tmp_path / "out.partial").exists() and result.present == 5
    modality = jf.load_features(tmp_path / "out.npy", n_items=9)
    assert modality.features.shape == (9, 105) and modality.mask.tolist() == mask.tolist() + [False, False]
    assert modality.provenance["encoder"] == "classic"


def test_ids_file_errors_name_the_line(images, tmp_path):
    folder, _, _ = images
    cases = {
        "itemID\tfile\n0\ta.png\n": "wrong header",
        "itemID\tpath\n0\ta.png\nx1\tc.png\n": "bad.tsv:3, field 'itemID': item id must be",
        "itemID\tpath\n0\ta.png\n0\tc.png\n": "first on line 2",
        "itemID\tpath\n0\t../secret.png\n": "outside the media folder",
        "itemID\tpath\n0\ta.png\textra\n": "wrong number of fields",
        "itemID\tpath\n": "no usable rows",
    }
    for text, message in cases.items():
        ids = tmp_path / "bad.tsv"
        ids.write_text(text)
        with pytest.raises(DataError, match=message):
            jf.read_media_list(ids, folder)


def test_missing_files_and_ids_outside_the_dataset(images, tmp_path):
    folder, _, _ = images
    ids = write_ids(tmp_path / "ids.tsv", [(0, "a.png"), (1, "gone.png"), (9, "c.png")])
    with pytest.raises(DataError, match=r"ids.tsv:3.*media file not found.*gone.png"):
        jf.read_media_list(ids, folder)
    with pytest.raises(DataError, match=r"ids.tsv:4.*item 9 is not in the dataset"):
        jf.read_media_list(ids, folder, n_items=5, check_files=False)
    with pytest.warns(jf.MediaWarning) as caught:
        media = jf.read_media_list(ids, folder, n_items=5, on_error="mask")
    assert len(caught) == 2 and media.items.tolist() == [0] and media.n_rows == 5
    result = jf.extract_features(media, jf.ModalityPipeline("image", jf.ClassicImageEncoder()), tmp_path / "o.npy",
                                 progress=False)
    record = json.loads((tmp_path / "o.json").read_text())
    assert result.present == 1 and record["rows"]["left_out"] == 2
    assert [entry["line"] for entry in record["media"]["left_out"]] == [3, 4]


def _corrupt_files(folder):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    good = (folder / "a.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "empty.jpg").write_bytes(b"")


def test_corrupt_images_fail_naming_the_file_and_nothing_is_written(images, tmp_path):
    folder, _, _ = images
    _corrupt_files(folder)
    ids = write_ids(tmp_path / "ids.tsv", [(0, "a.png"), (1, "c.png"), (2, "truncated.png"), (3, "d.png")])
    with pytest.raises(DataError, match=r"ids.tsv:4 \(item 2, truncated.png\).*corrupt or truncated image"):
        _extract(folder, ids, tmp_path / "out.npy", batch_size=1)
    assert not (tmp_path / "out.npy").exists() and not (tmp_path / "out.json").exists()
    assert (tmp_path / "out.partial").is_dir()  # the finished items, for a resume


@pytest.mark.parametrize("name", ["broken.png", "truncated.png", "empty.jpg"])
def test_corrupt_images_are_masked_with_a_warning(images, tmp_path, name):
    folder, _, _ = images
    _corrupt_files(folder)
    ids = write_ids(tmp_path / "ids.tsv", [(0, "a.png"), (1, name), (2, "c.png")])
    with pytest.warns(jf.MediaWarning, match=name):
        result = _extract(folder, ids, tmp_path / "out.npy", on_error="mask", batch_size=2)
    mask = np.load(tmp_path / "out.mask.npz")["mask"]
    assert mask.tolist() == [True, False, True] and result.failed == 1
    assert not np.any(np.load(tmp_path / "out.npy")[1])
    failures = json.loads((tmp_path / "out.json").read_text())["failures"]
    assert failures[0]["item"] == 1 and failures[0]["path"] == name and failures[0]["line"] == 3


class _Interrupting:
    """The classic encoder, raising KeyboardInterrupt on its ``stop_after``-th call."""

    def __init__(self, stop_after):
        self.inner, self.calls, self.stop_after = jf.ClassicImageEncoder(), 0, stop_after
        self.dim, self.name = self.inner.dim, "classic"

    def prepare(self, image):
        return self.inner.prepare(image)

    def encode(self, batch):
        self.calls += 1
        if self.calls == self.stop_after:
            raise KeyboardInterrupt
        return self.inner.encode(batch)

    def provenance(self):
        return self.inner.provenance()


def test_an_interrupted_extraction_resumes_without_redoing_items(images, tmp_path):
    folder, ids, _ = images
    _extract(folder, ids, tmp_path / "whole.npy", batch_size=2)
    media = jf.read_media_list(ids, folder)
    with pytest.raises(KeyboardInterrupt):
        jf.extract_features(media, jf.ModalityPipeline("image", _Interrupting(stop_after=2)), tmp_path / "out.npy",
                            batch_size=2, progress=False)
    assert not (tmp_path / "out.npy").exists() and (tmp_path / "out.partial" / "state.json").exists()
    resumed_encoder = _Interrupting(stop_after=0)
    result = jf.extract_features(media, jf.ModalityPipeline("image", resumed_encoder), tmp_path / "out.npy",
                                 batch_size=2, progress=False)
    assert result.encoded_now == 3 and resumed_encoder.calls == 2  # items 2 + 1 of 5; the first 2 were done
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), np.load(tmp_path / "whole.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "out.mask.npz")["mask"], np.load(tmp_path / "whole.mask.npz")["mask"])
    assert not (tmp_path / "out.partial").exists()


def test_a_partial_run_with_other_settings_is_refused(images, tmp_path):
    folder, ids, _ = images
    media = jf.read_media_list(ids, folder)
    with pytest.raises(KeyboardInterrupt):
        jf.extract_features(media, jf.ModalityPipeline("image", _Interrupting(stop_after=1)), tmp_path / "out.npy",
                            progress=False)
    other = jf.ModalityPipeline("image", jf.ClassicImageEncoder(max_side=64))
    with pytest.raises(DataError, match="other settings"):
        jf.extract_features(media, other, tmp_path / "out.npy", progress=False)


def test_existing_outputs_are_not_overwritten(images, tmp_path):
    folder, ids, _ = images
    _extract(folder, ids, tmp_path / "out.npy")
    with pytest.raises(DataError, match="output exists"):
        _extract(folder, ids, tmp_path / "out.npy")
    _extract(folder, ids, tmp_path / "out.npy", overwrite=True)
    with pytest.raises(DataError, match=r"\.npy file"):
        _extract(folder, ids, tmp_path / "out.bin")


def test_cli_extracts_and_reports_bad_input_without_a_traceback(images, tmp_path, capsys):
    folder, ids, _ = images
    out = tmp_path / "cli.npy"
    assert main(["features", "extract", "--modality", "image", "--input", str(folder), "--ids", str(ids),
                 "--encoder", "classic", "--output", str(out), "--n-items", "8", "--no-progress"]) == 0
    assert "items with features: 5 of 8" in capsys.readouterr().out
    assert np.load(out).shape == (8, 105)
    recorded = json.loads(out.with_suffix(".json").read_text())["command"]
    assert recorded["command"] == "jaxrec features extract" and recorded["options"]["n_items"] == 8
    code = main(["features", "extract", "--modality", "image", "--input", str(folder), "--ids", str(ids),
                 "--encoder", "clip", "--weights", str(tmp_path / "nope.pt"), "--output", str(tmp_path / "x.npy")])
    err = capsys.readouterr().err
    assert code == 1 and "nope.pt, field 'weights': weights file not found" in err and "Traceback" not in err
    if importlib.util.find_spec("open_clip") is None:  # the missing extra is named, without a traceback
        code = main(["features", "extract", "--modality", "image", "--input", str(folder), "--ids", str(ids),
                     "--encoder", "clip", "--output", str(tmp_path / "x.npy")])
        assert code == 1 and "pip install 'jaxrec[image]'" in capsys.readouterr().err
    code = main(["features", "extract", "--modality", "audio", "--input", str(folder), "--ids", str(ids),
                 "--encoder", "clip", "--output", str(tmp_path / "y.npy")])
    assert code == 1 and "no encoder 'clip' for audio" in capsys.readouterr().err
    assert not (tmp_path / "x.npy").exists() and not (tmp_path / "y.npy").exists()


def test_audio_and_text_modalities(tmp_path):
    folder = tmp_path / "media"
    folder.mkdir()
    tones = {0: 440.0, 1: 2000.0}
    for item, tone in tones.items():
        write_wav(folder / f"{item}.wav", 0.4 * np.sin(2 * np.pi * tone * np.arange(8000) / 16000.0))
    (folder / "bad.wav").write_bytes(b"RIFF....WAVEjunk")
    ids = write_ids(tmp_path / "a.tsv", [(0, "0.wav"), (1, "1.wav"), (2, "bad.wav")])
    media = jf.read_media_list(ids, folder, on_error="mask")
    with pytest.warns(jf.MediaWarning, match="bad.wav"):
        jf.extract_features(media, jf.ModalityPipeline("audio", jf.ClassicAudioEncoder()), tmp_path / "audio.npy",
                            on_error="mask", progress=False)
    audio = jf.load_features(tmp_path / "audio.npy")
    assert audio.mask.tolist() == [True, True, False] and audio.features.shape == (3, 192)
    for item, tone in tones.items():
        pcm = (0.4 * np.sin(2 * np.pi * tone * np.arange(8000) / 16000.0) * 32767).astype(np.int16)
        expected = _classic.audio_descriptor(pcm / 32768.0)  # the 16-bit samples as written
        np.testing.assert_allclose(audio.features[item], expected, rtol=1e-4, atol=1e-4)
    # text: any encode(list[str]) callable with a dim, here a bag of characters
    (folder / "t0.txt").write_text("rain song\n")
    (folder / "t1.txt").write_text("   ")

    class Chars:
        name, dim = "chars", 26

        def encode(self, texts):
            return np.stack([np.bincount([ord(c) - 97 for c in t if c.isalpha()], minlength=26) for t in texts])

    ids = write_ids(tmp_path / "t.tsv", [(0, "t0.txt"), (1, "t1.txt")])
    with pytest.warns(jf.MediaWarning, match="empty text"):
        jf.extract_features(jf.read_media_list(ids, folder), jf.ModalityPipeline("text", Chars()),
                            tmp_path / "text.npy", on_error="mask", progress=False)
    text = jf.load_features(tmp_path / "text.npy")
    assert text.mask.tolist() == [True, False] and text.features[0, ord("n") - 97] == 2
