"""Media decoding details against values worked out here: the PCM WAV reader used without PyAV
(channel averaging, 8-bit offset, resampling onto the target grid), BT.601 luminance weights per
colour channel, and frame / image shrinking that keeps the aspect ratio."""

import sys
import wave

import numpy as np
import pytest
from PIL import Image

from jaxrec import features as jf
from jaxrec.features import _classic
from jaxrec.features._media_io import load_audio


def _write_pcm(path, samples, *, width, channels, rate):
    dtype = {1: np.uint8, 2: np.int16}[width]
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(channels)
        handle.setsampwidth(width)
        handle.setframerate(rate)
        handle.writeframes(np.asarray(samples, dtype).tobytes())
    return path


@pytest.fixture()
def no_av(monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)  # `import av` raises ImportError: the plain WAV reader


def test_stereo_wav_without_pyav_averages_the_two_channels(tmp_path, no_av):
    n = 400
    left = (np.arange(n) * 40).astype(np.int16)  # a ramp
    right = np.full(n, -8192, np.int16)  # -0.25
    interleaved = np.stack([left, right], axis=1).reshape(-1)
    path = _write_pcm(tmp_path / "s.wav", interleaved, width=2, channels=2, rate=16000)
    got = load_audio(path)
    expected = (left / 32768.0 + right / 32768.0) / 2
    assert got.shape == (n,) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-7)
    np.testing.assert_allclose(load_audio(path, max_seconds=0.01), expected[:160], atol=1e-7)


def test_eight_bit_wav_is_unsigned_around_128(tmp_path, no_av):
    values = np.array([128, 192, 64, 255, 0] * 20, np.uint8)
    path = _write_pcm(tmp_path / "b.wav", values, width=1, channels=1, rate=16000)
    np.testing.assert_allclose(load_audio(path), (values.astype(float) - 128) / 128, atol=1e-7)
    assert load_audio(path)[:3].tolist() == [0.0, 0.5, -0.5]


def test_wav_at_another_rate_is_interpolated_onto_the_target_grid(tmp_path, no_av):
    # 8 kHz ramp x[k] = 16 k / 32768; at 16 kHz sample m sits at source index m / 2, and linear
    # interpolation of a ramp is the ramp itself: y[m] = 16 * min(m / 2, n - 1) / 32768.
    n = 300
    path = _write_pcm(tmp_path / "r.wav", np.arange(n) * 16, width=2, channels=1, rate=8000)
    got = load_audio(path, sample_rate=16000)
    m = np.arange(2 * n)
    assert got.shape == (2 * n,)
    np.testing.assert_allclose(got, 16 * np.minimum(m / 2, n - 1) / 32768.0, atol=1e-7)


@pytest.mark.parametrize("colour, weight", [((255, 0, 0), 0.299), ((0, 255, 0), 0.587), ((0, 0, 255), 0.114)])
def test_luminance_weights_each_channel_by_bt601(colour, weight):
    image = np.zeros((4, 6, 3), np.uint8)
    image[:] = colour
    np.testing.assert_allclose(_classic.luminance(image), np.full((4, 6), 255 * weight), rtol=1e-12)
    # a black frame then this colour: every pixel's luminance jumps by 255 * weight
    stats = _classic.motion_statistics([np.zeros_like(image), image])
    np.testing.assert_allclose(stats[0], weight, rtol=1e-6)
    # a ramp in this channel alone: the gradient is 10 * weight grey levels per pixel, everywhere
    ramp = np.zeros((8, 8, 3), np.uint8)
    channel = int(np.argmax(colour))
    ramp[..., channel] = (10 * np.arange(8))[None, :]
    np.testing.assert_allclose(_classic.gradient_features(ramp)[-1], 10 * weight / 255, rtol=1e-9)


def test_a_large_image_is_shrunk_keeping_its_aspect_ratio():
    array = np.zeros((40, 100, 3), np.uint8)
    array[:, :50] = (255, 0, 0)
    array[:, 50:] = (0, 0, 255)
    prepared = jf.ClassicImageEncoder(max_side=32).prepare(Image.fromarray(array))
    height, width = prepared.shape[:2]
    assert width == 32 and abs(height - 40 * 32 / 100) < 1  # 32 x 12.8, nothing cropped or stretched
    assert tuple(prepared[height // 2, 0]) == (255, 0, 0) and tuple(prepared[height // 2, -1]) == (0, 0, 255)


def test_video_frames_are_shrunk_keeping_their_aspect_ratio(tmp_path):
    from _media_files import require_av, write_video

    require_av()
    clip = write_video(tmp_path / "wide.mp4", 3, height=32, width=48)
    frames = jf._media_io.decode_video(clip, jf.FrameSampling("uniform", count=3), np.asarray, max_side=20)
    # longer side 48 -> 20, the other 32 * 20 / 48 = 13.3 -> 13
    assert [f.shape for f in frames] == [(13, 20, 3)] * 3
    full = jf._media_io.decode_video(clip, jf.FrameSampling("uniform", count=3), np.asarray, max_side=64)
    assert [f.shape for f in full] == [(32, 48, 3)] * 3
