r"""Weight-free, deterministic media descriptors in numpy (the ``classic`` encoder).

No weights, no randomness: the same pixels give bitwise the same features on any machine,
so the whole path raw files -> features -> training -> serving runs offline and in tests.

Image (and video frame) descriptor, :data:`IMAGE_DIM` = 105 numbers, from an RGB uint8 image:

- a joint RGB colour histogram, 4 bins per channel (64 bins, bin :math:`\lfloor v/64 \rfloor`),
  normalized to sum 1;
- a gradient-orientation histogram of the luminance :math:`L = 0.299R + 0.587G + 0.114B`
  (ITU-R BT.601) with central differences (``np.gradient``, one-sided at the border):
  unsigned orientation :math:`\theta = \operatorname{atan2}(g_y, g_x) \bmod \pi` in 8 bins
  CENTRED on :math:`k\pi/8` (bin :math:`\lfloor (\theta + \pi/16) / (\pi/8) \rfloor \bmod 8`),
  weighted by the gradient magnitude, over the whole image (8) and over each cell of a 2 x 2 grid
  (32), each histogram normalized to sum 1 (all zeros on a flat image or cell);
- the mean gradient magnitude divided by 255 (edge strength, 1 number).

Video: the mean of the sampled frames' descriptors, then 4 motion statistics between
consecutive sampled frames :math:`a, b` (zeros for a single frame): the mean and standard
deviation over frame pairs of the mean absolute luminance difference :math:`\overline{|L_b - L_a|}/255`,
the mean share of pixels whose luminance changes by more than 25.5 (10 %), and the mean L1
distance between the frames' colour histograms. :data:`VIDEO_DIM` = 109.

Audio: the log-mel spectrogram of 16 kHz mono audio with VGGish's front end (25 ms periodic
Hann windows, 10 ms hop, 512-point FFT, 64 mel bands over 125-7500 Hz, :math:`\log(\text{mel} + 0.01)`)
and its statistics: per-band mean and standard deviation over time and the per-band mean
absolute first difference (:data:`AUDIO_DIM` = 192).
"""

from __future__ import annotations

import numpy as np

COLOUR_BINS = 4
ORIENTATION_BINS = 8
GRID = 2
IMAGE_DIM = COLOUR_BINS**3 + ORIENTATION_BINS * (1 + GRID * GRID) + 1
MOTION_DIM = 4
VIDEO_DIM = IMAGE_DIM + MOTION_DIM
CHANGE_THRESHOLD = 25.5
LUMA = np.array([0.299, 0.587, 0.114])

SAMPLE_RATE = 16_000
MEL_BANDS = 64
MEL_RANGE = (125.0, 7500.0)
WINDOW_SECONDS, HOP_SECONDS, FFT_SIZE = 0.025, 0.010, 512
LOG_OFFSET = 0.01
AUDIO_DIM = 3 * MEL_BANDS


def _check_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.dtype} {image.shape}")
    return image


def colour_histogram(image: np.ndarray) -> np.ndarray:
    """(64,) joint RGB histogram (4 bins per channel, red-major), summing to 1."""
    image = _check_rgb(image)
    bins = image.reshape(-1, 3).astype(np.int64) // (256 // COLOUR_BINS)
    index = (bins[:, 0] * COLOUR_BINS + bins[:, 1]) * COLOUR_BINS + bins[:, 2]
    counts = np.bincount(index, minlength=COLOUR_BINS**3).astype(np.float64)
    return counts / counts.sum()


def luminance(image: np.ndarray) -> np.ndarray:
    """(H, W) float64 BT.601 luminance in [0, 255]."""
    return _check_rgb(image).astype(np.float64) @ LUMA


def _orientation_histogram(magnitude: np.ndarray, bins: np.ndarray) -> np.ndarray:
    counts = np.bincount(bins.ravel(), weights=magnitude.ravel(), minlength=ORIENTATION_BINS)
    total = counts.sum()
    return counts / total if total > 0 else counts


def gradient_features(image: np.ndarray) -> np.ndarray:
    """(8 * 5 + 1,) orientation histograms (whole image, then 2 x 2 cells row-major) and edge strength."""
    luma = luminance(image)
    if min(luma.shape) >= 2:
        gy, gx = np.gradient(luma)
    else:  # a one-pixel-wide image has no gradient across it
        gy = np.gradient(luma, axis=0) if luma.shape[0] >= 2 else np.zeros_like(luma)
        gx = np.gradient(luma, axis=1) if luma.shape[1] >= 2 else np.zeros_like(luma)
    magnitude = np.hypot(gx, gy)
    theta = np.mod(np.arctan2(gy, gx), np.pi)
    bins = np.floor((theta + np.pi / (2 * ORIENTATION_BINS)) / (np.pi / ORIENTATION_BINS)).astype(np.int64)
    bins %= ORIENTATION_BINS
    parts = [_orientation_histogram(magnitude, bins)]
    rows = np.array_split(np.arange(luma.shape[0]), GRID)
    cols = np.array_split(np.arange(luma.shape[1]), GRID)
    for r in rows:
        for c in cols:
            cell = np.ix_(r, c)
            parts.append(_orientation_histogram(magnitude[cell], bins[cell]) if r.size and c.size
                         else np.zeros(ORIENTATION_BINS))
    parts.append(np.array([magnitude.mean() / 255.0]))
    return np.concatenate(parts)


def image_descriptor(image: np.ndarray) -> np.ndarray:
    """(IMAGE_DIM,) float32: colour histogram, orientation histograms, edge strength."""
    return np.concatenate([colour_histogram(image), gradient_features(image)]).astype(np.float32)


def motion_statistics(frames) -> np.ndarray:
    """(4,) float32 motion statistics of consecutive frames (same size); zeros for one frame."""
    frames = list(frames)
    if len(frames) < 2:
        return np.zeros(MOTION_DIM, np.float32)
    mean_diff, changed, hist_diff = [], [], []
    previous_luma, previous_hist = luminance(frames[0]), colour_histogram(frames[0])
    for frame in frames[1:]:
        luma, hist = luminance(frame), colour_histogram(frame)
        if luma.shape != previous_luma.shape:
            raise ValueError(f"frames change size within a video: {previous_luma.shape} then {luma.shape}")
        diff = np.abs(luma - previous_luma)
        mean_diff.append(diff.mean() / 255.0)
        changed.append(np.mean(diff > CHANGE_THRESHOLD))
        hist_diff.append(np.abs(hist - previous_hist).sum())
        previous_luma, previous_hist = luma, hist
    return np.array([np.mean(mean_diff), np.std(mean_diff), np.mean(changed), np.mean(hist_diff)], np.float32)


def video_descriptor(frame_descriptors: np.ndarray, frames) -> np.ndarray:
    """(VIDEO_DIM,) float32: the mean frame descriptor and the motion statistics of ``frames``."""
    return np.concatenate([np.mean(frame_descriptors, axis=0), motion_statistics(frames)]).astype(np.float32)


# ---- audio -------------------------------------------------------------------------------


def hz_to_mel(hz):
    """HTK mel scale, :math:`1127 \\ln(1 + f / 700)` (VGGish's)."""
    return 1127.0 * np.log1p(np.asarray(hz, np.float64) / 700.0)


def mel_filterbank(sample_rate: int = SAMPLE_RATE, fft_size: int = FFT_SIZE, bands: int = MEL_BANDS,
                   low: float = MEL_RANGE[0], high: float = MEL_RANGE[1]) -> np.ndarray:
    """(fft_size // 2 + 1, bands) triangular filters, equally spaced in mel, peak 1 (as VGGish).

    Band ``b`` rises from mel edge ``b`` to its centre ``b + 1`` and falls to edge ``b + 2``
    of ``bands + 2`` equally spaced points between ``hz_to_mel(low)`` and ``hz_to_mel(high)``.
    """
    bin_mel = hz_to_mel(np.linspace(0.0, sample_rate / 2, fft_size // 2 + 1))
    edges = np.linspace(hz_to_mel(low), hz_to_mel(high), bands + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bin_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # no DC
    return weights


def log_mel(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(frames, 64) log-mel spectrogram of mono ``samples`` (float, [-1, 1]); at least one frame."""
    samples = np.asarray(samples, np.float64).ravel()
    window = int(round(WINDOW_SECONDS * sample_rate))
    hop = int(round(HOP_SECONDS * sample_rate))
    if samples.size < window:
        samples = np.pad(samples, (0, window - samples.size))
    count = 1 + (samples.size - window) // hop
    starts = np.arange(count)[:, None] * hop + np.arange(window)[None, :]
    # VGGish's periodic Hann (mel_features.periodic_hann): 0.5 - 0.5 cos(2 pi n / N), n < N.
    frames = samples[starts] * (0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(window) / window))
    spectrum = np.abs(np.fft.rfft(frames, n=FFT_SIZE, axis=1))
    return np.log(spectrum @ mel_filterbank(sample_rate) + LOG_OFFSET)


def audio_descriptor(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(AUDIO_DIM,) float32: per-band mean, std and mean absolute first difference of the log-mel."""
    mel = log_mel(samples, sample_rate)
    delta = np.abs(np.diff(mel, axis=0)).mean(axis=0) if len(mel) > 1 else np.zeros(MEL_BANDS)
    return np.concatenate([mel.mean(axis=0), mel.std(axis=0), delta]).astype(np.float32)
