"""Parts of the classic descriptors the hand-worked examples elsewhere leave open, checked against
values computed here: the 2 x 2 orientation cells in row-major order, the 10 % luminance change
threshold of the motion statistics, and the audio delta block (mean ABSOLUTE first difference over
time) from an independently written log-mel (naive DFT, naive triangular filterbank)."""

import math

import numpy as np

from jaxrec.features import _classic


def test_orientation_cells_are_row_major():
    # Top half: a ramp along x (orientation bin 0); bottom half: a ramp along y (bin 4).
    y, x = np.mgrid[0:16, 0:16].astype(float)
    grey = np.where(y < 8, 10 * x, 10 * (y - 8) + 100)
    image = np.repeat(grey[..., None], 3, axis=2).astype(np.uint8)
    cells = _classic.gradient_features(image)[8:40].reshape(4, 8)
    # row-major: top-left, top-right, bottom-left, bottom-right
    assert cells.argmax(axis=1).tolist() == [0, 0, 4, 4]


def test_changed_share_counts_luminance_changes_above_25_5():
    before = np.full((4, 4, 3), 100, np.uint8)
    after = before.copy()
    after[:2] = 120  # half the pixels change by 20 (below 10 % of 255)
    after[2, :] = 130  # a quarter by 30 (above)
    stats = _classic.motion_statistics([before, after])
    assert stats[2] == np.float32(0.25)
    np.testing.assert_allclose(stats[0], (0.5 * 20 + 0.25 * 30) / 255, rtol=1e-6)


def _naive_log_mel(samples, rate=16000):
    mel = lambda f: 1127.0 * math.log(1.0 + f / 700.0)  # noqa: E731
    lo, hi = mel(125.0), mel(7500.0)
    edges = [lo + (hi - lo) * j / 65 for j in range(66)]
    bank = np.zeros((257, 64))
    for k in range(1, 257):
        m = mel(k * rate / 512)
        for b in range(64):
            left, centre, right = edges[b], edges[b + 1], edges[b + 2]
            if left < m <= centre:
                bank[k, b] = (m - left) / (centre - left)
            elif centre < m < right:
                bank[k, b] = (right - m) / (right - centre)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # VGGish's periodic Hann
    dft = np.exp(-2j * np.pi * np.outer(np.arange(257), np.arange(400)) / 512)
    frames = [samples[s:s + 400] for s in range(0, len(samples) - 400 + 1, 160)]
    return np.array([np.log(np.abs(dft @ (f * window)) @ bank + 0.01) for f in frames])


def test_audio_descriptor_blocks_from_an_independent_log_mel():
    rng = np.random.default_rng(5)
    samples = rng.uniform(-1, 1, 2000) * np.linspace(0.1, 1.0, 2000)  # noise growing louder
    mel = _naive_log_mel(samples)
    assert mel.shape == (11, 64)
    descriptor = _classic.audio_descriptor(samples)
    np.testing.assert_allclose(descriptor[:64], mel.mean(axis=0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(descriptor[64:128], mel.std(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(descriptor[128:], np.abs(np.diff(mel, axis=0)).mean(axis=0), rtol=1e-4, atol=1e-5)
