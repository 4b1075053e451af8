"""The weight-free classic descriptors against independent computations on hand-made inputs."""

import math

import numpy as np
import pytest

from jaxrec.features import _classic


def _independent_colour_histogram(image):
    edges = [np.arange(0, 257, 64)] * 3
    counts, _ = np.histogramdd(image.reshape(-1, 3).astype(float), bins=edges)
    return counts.ravel() / counts.sum()


def test_colour_histogram_of_known_colours():
    image = np.zeros((10, 20, 3), np.uint8)
    image[:, :10] = (255, 0, 0)  # pure red, half the pixels
    image[:5, 10:] = (0, 0, 255)  # pure blue, a quarter
    image[5:, 10:] = (100, 200, 30)  # bins (1, 3, 0), a quarter
    hist = _classic.colour_histogram(image)
    expected = np.zeros(64)
    expected[(3 * 4 + 0) * 4 + 0] = 0.5
    expected[(0 * 4 + 0) * 4 + 3] = 0.25
    expected[(1 * 4 + 3) * 4 + 0] = 0.25
    np.testing.assert_allclose(hist, expected)
    noise = np.random.default_rng(0).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    np.testing.assert_allclose(_classic.colour_histogram(noise), _independent_colour_histogram(noise))


def _ramp(direction, size=16):
    y, x = np.mgrid[0:size, 0:size].astype(float)
    value = {"x": 10 * x, "y": 10 * y, "diag": 5 * (x + y)}[direction]
    return np.repeat(value[..., None], 3, axis=2).astype(np.uint8)


@pytest.mark.parametrize("direction, expected_bin, magnitude", [
    ("x", 0, 10.0),           # gradient along +x: theta = 0
    ("y", 4, 10.0),           # along +y: theta = pi / 2
    ("diag", 2, 5 * np.sqrt(2)),  # along (1, 1): theta = pi / 4
])
def test_orientation_histogram_of_linear_ramps(direction, expected_bin, magnitude):
    # A grey ramp has luminance = the grey value (the BT.601 weights sum to 1), so the gradient is
    # the same everywhere (np.gradient is exact on linear functions, borders included).
    features = _classic.gradient_features(_ramp(direction))
    one_hot = np.eye(8)[expected_bin]
    for cell in range(5):  # whole image, then the four cells
        np.testing.assert_allclose(features[8 * cell:8 * cell + 8], one_hot, atol=1e-12)
    np.testing.assert_allclose(features[-1], magnitude / 255.0, rtol=1e-6)


def test_flat_image_has_no_orientation_and_cells_split_the_image():
    flat = np.full((8, 8, 3), 77, np.uint8)
    assert not np.any(_classic.gradient_features(flat))
    # Left half a vertical-edge pattern, right half flat: only the left cells see orientation 0.
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = (np.arange(4) * 60)[None, :, None]
    features = _classic.gradient_features(image)
    cells = features[8:40].reshape(4, 8)
    assert cells[0, 0] == pytest.approx(1.0) and cells[2, 0] == pytest.approx(1.0)
    # right cells: only the one-sided border column of the step (x=3 -> x=4) contributes, along x
    assert cells[1].sum() == pytest.approx(1.0) and cells[1, 0] == pytest.approx(1.0)


def test_image_descriptor_layout_and_determinism():
    image = np.random.default_rng(1).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    first, second = _classic.image_descriptor(image), _classic.image_descriptor(image.copy())
    assert first.shape == (_classic.IMAGE_DIM,) == (105,) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    assert first[:64].sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="uint8 RGB"):
        _classic.image_descriptor(image.astype(np.float32))


def test_motion_statistics_hand_worked():
    black = np.zeros((4, 4, 3), np.uint8)
    half = black.copy()
    half[:, :2] = 255  # half the pixels jump by 255
    # pairs: (black, half): mean |dL| = 0.5, changed 0.5, hist L1 = 1.0; (half, half): all 0
    stats = _classic.motion_statistics([black, half, half])
    np.testing.assert_allclose(stats, [0.25, 0.25, 0.25, 0.5], rtol=1e-6)
    assert not np.any(_classic.motion_statistics([black]))
    with pytest.raises(ValueError, match="change size"):
        _classic.motion_statistics([black, np.zeros((5, 4, 3), np.uint8)])


def _naive_mel_filterbank(sample_rate=16000, fft_size=512, bands=64, low=125.0, high=7500.0):
    """VGGish's filterbank written out from its definition, one weight at a time: the HTK mel
    scale 1127 ln(1 + f/700); FFT bin k at k * sample_rate / fft_size Hz (k = 0 .. fft_size/2);
    ``bands + 2`` edges equally spaced in mel from mel(low) to mel(high); band b a triangle in
    mel from edge b up to 1 at edge b + 1 and down to 0 at edge b + 2 (peak 1, no area
    normalization); the DC bin carries no weight."""
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(low), mel(high)
    edges = [lo + (hi - lo) * j / (bands + 1) for j in range(bands + 2)]
    bank = np.zeros((fft_size // 2 + 1, bands))
    for k in range(1, fft_size // 2 + 1):
        m = mel(k * sample_rate / fft_size)
        for b in range(bands):
            left, centre, right = edges[b], edges[b + 1], edges[b + 2]
            if left < m <= centre:
                bank[k, b] = (m - left) / (centre - left)
            elif centre < m < right:
                bank[k, b] = (right - m) / (right - centre)
    return bank


def test_mel_filterbank_triangles_peak_at_mel_spaced_centres():
    bank = _classic.mel_filterbank()
    assert bank.shape == (257, 64)
    np.testing.assert_allclose(bank, _naive_mel_filterbank(), rtol=1e-12, atol=1e-12)
    freqs = np.linspace(0, 8000, 257)
    mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # noqa: E731 (HTK, written out independently)
    edges = np.linspace(mel(125.0), mel(7500.0), 66)
    centres_hz = 700.0 * (np.exp(edges[1:-1] / 1127.0) - 1.0)
    # each band's largest weight sits on the FFT bin nearest its centre (or a neighbour, for narrow bands)
    nearest = np.abs(freqs[:, None] - centres_hz[None, :]).argmin(axis=0)
    assert np.all(np.abs(bank.argmax(axis=0) - nearest) <= 1)
    assert np.all(bank >= 0) and np.all(bank <= 1) and not np.any(bank[freqs > 7500.0 + 31.25])
    # another sample rate, FFT size and band count: the same definition
    np.testing.assert_allclose(_classic.mel_filterbank(8000, 256, 20, 100.0, 3800.0),
                               _naive_mel_filterbank(8000, 256, 20, 100.0, 3800.0), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("tone", [300.0, 1000.0, 4000.0])
def test_log_mel_of_a_pure_tone_peaks_in_its_band(tone):
    samples = 0.5 * np.sin(2 * np.pi * tone * np.arange(16000) / 16000.0)
    mel = _classic.log_mel(samples)
    assert mel.shape == (1 + (16000 - 400) // 160, 64)
    edges = np.linspace(1127.0 * np.log1p(125 / 700), 1127.0 * np.log1p(7500 / 700), 66)
    band = int(np.argmin(np.abs(edges[1:-1] - 1127.0 * np.log1p(tone / 700))))
    assert abs(int(mel.mean(axis=0).argmax()) - band) <= 1
    descriptor = _classic.audio_descriptor(samples)
    assert descriptor.shape == (192,)
    np.testing.assert_allclose(descriptor[:64], mel.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(descriptor[64:128], mel.std(axis=0), rtol=1e-4, atol=1e-6)
    # a steady tone barely changes from frame to frame
    assert descriptor[128:].max() < 0.05


def test_log_mel_window_matches_a_naive_dft():
    rng = np.random.default_rng(3)
    samples = rng.uniform(-1, 1, 400)
    window = np.array([0.5 - 0.5 * np.cos(2 * np.pi * i / 400) for i in range(400)])  # VGGish's periodic Hann
    n = np.arange(400)
    k = np.arange(257)
    naive = np.abs(np.exp(-2j * np.pi * np.outer(k, n) / 512) @ (samples * window))
    expected = np.log(naive @ _naive_mel_filterbank() + 0.01)
    np.testing.assert_allclose(_classic.log_mel(samples)[0], expected, rtol=1e-9, atol=1e-9)
