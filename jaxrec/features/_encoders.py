"""Media encoders for feature extraction, and how each modality turns files into item vectors.

An *image encoder* (used for images and for video frames) has ``name``, ``dim``, ``max_side``
(frames are shrunk to it while decoding), ``prepare(PIL RGB image) -> prepared`` (its standard
preprocessing, applied at decode time), ``encode(list[prepared]) -> (n, dim) float32`` and
``provenance() -> dict``; it may add ``video_extra(prepared frames) -> (video_extra_dim,)`` per
video (the classic encoder's motion statistics). An *audio encoder* has ``encode(list of 16 kHz
sample arrays)``; a *text encoder* is any ``encode(list[str])`` (the sentence encoder).

A :class:`ModalityPipeline` wraps an encoder for one modality: ``load(path)`` decodes one file
(raising :class:`~jaxrec.features.MediaError`), ``encode(payloads)`` gives the batch's item vectors
and, for video, the per-frame vectors. A video's item vector is the mean of its frame vectors
(:func:`jaxrec.fusion.masked_mean_pool` over the valid frames), then the encoder's per-video extra.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from jaxrec._version import __version__
from jaxrec.errors import DataError
from jaxrec.features import _classic
from jaxrec.features._media_io import FrameSampling, decode_video, load_audio, load_image, load_text

MODALITIES = ("image", "video", "audio", "text")
CLASSIC_MAX_SIDE = 256


class ClassicImageEncoder:
    """Colour and gradient-orientation histograms (:mod:`jaxrec.features._classic`), no weights.

    ``prepare`` shrinks an image whose longer side exceeds ``max_side`` (Pillow's area-averaging
    ``reduce`` then bilinear ``thumbnail``), keeping the aspect ratio; nothing is cropped.
    """

    name = "classic"
    dim = _classic.IMAGE_DIM
    video_extra_dim = _classic.MOTION_DIM

    def __init__(self, max_side: int = CLASSIC_MAX_SIDE):
        self.max_side = int(max_side)

    def prepare(self, image):
        if max(image.size) > self.max_side:
            image = image.copy()
            image.thumbnail((self.max_side, self.max_side), resample=2, reducing_gap=2.0)  # 2 = BILINEAR
        return np.asarray(image, np.uint8)

    def encode(self, prepared: list) -> np.ndarray:
        return np.stack([_classic.image_descriptor(image) for image in prepared]).astype(np.float32)

    def video_extra(self, frames: list) -> np.ndarray:
        return _classic.motion_statistics(frames)

    def provenance(self) -> dict[str, Any]:
        return {"encoder": "classic", "library": f"jaxrec {__version__} (numpy)", "weights": None,
                "weights_sha256": None,
                "preprocessing": f"RGB (alpha over white, 16-bit grey: high byte), longer side shrunk to <= "
                                 f"{self.max_side} px (bilinear, aspect kept, no crop)",
                "descriptor": "joint RGB histogram 4x4x4 (64) + gradient-orientation histograms, 8 centred "
                              "bins, whole image and 2x2 cells (40) + mean gradient magnitude / 255 (1)",
                "video_extra": "motion: mean and std of the mean |dL|/255 between sampled frames, share of "
                               "pixels with |dL| > 25.5, mean L1 distance of colour histograms (4)"}


class ClassicAudioEncoder:
    """Log-mel statistics (VGGish front end; :func:`jaxrec.features._classic.audio_descriptor`)."""

    name = "classic"
    dim = _classic.AUDIO_DIM
    sample_rate = _classic.SAMPLE_RATE

    def encode(self, clips: list) -> np.ndarray:
        return np.stack([_classic.audio_descriptor(clip, self.sample_rate) for clip in clips])

    def provenance(self) -> dict[str, Any]:
        return {"encoder": "classic", "library": f"jaxrec {__version__} (numpy)", "weights": None,
                "weights_sha256": None,
                "preprocessing": "mono, resampled to 16 kHz; log-mel: 25 ms Hann window, 10 ms hop, 512-point "
                                 "FFT, 64 HTK-mel bands 125-7500 Hz, log(mel + 0.01)",
                "descriptor": "per-band mean (64), std (64) and mean |first difference| (64) over time"}


@dataclasses.dataclass
class ModalityPipeline:
    """Decoding and encoding of one modality (see the module docstring).

    Attributes:
      modality: ``"image"``, ``"video"``, ``"audio"`` or ``"text"``.
      encoder: the encoder (image encoder for image and video).
      sampling: frame sampling (video only).
      max_audio_seconds: audio is cut after this many seconds (None: whole file).
    """

    modality: str
    encoder: Any
    sampling: FrameSampling | None = None
    max_audio_seconds: float | None = None

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise DataError("unknown modality", field="modality", found=self.modality, expected=", ".join(MODALITIES))
        if self.modality == "video" and self.sampling is None:
            self.sampling = FrameSampling()
        seconds = self.max_audio_seconds
        if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))
                                    or not math.isfinite(seconds) or seconds <= 0):
            raise DataError("the audio length limit must be a positive number of seconds", field="max_audio_seconds",
                            found=seconds, expected="a finite number > 0 (or no limit)")
        dim = getattr(self.encoder, "dim", None)
        if not isinstance(dim, int) or dim < 1:
            raise DataError("the encoder must say its output width", field="encoder.dim", found=dim,
                            expected="a positive integer")

    @property
    def frame_dim(self) -> int:
        return int(self.encoder.dim)

    @property
    def dim(self) -> int:
        """Width of the item vectors."""
        if self.modality == "video":
            return self.frame_dim + int(getattr(self.encoder, "video_extra_dim", 0))
        return self.frame_dim

    @property
    def steps(self) -> int:
        return self.sampling.steps if self.modality == "video" else 0

    def load(self, path):
        if self.modality == "image":
            return self.encoder.prepare(load_image(path))
        if self.modality == "video":
            return decode_video(path, self.sampling, self.encoder.prepare,
                                max_side=getattr(self.encoder, "max_side", None))
        if self.modality == "audio":
            return load_audio(path, getattr(self.encoder, "sample_rate", _classic.SAMPLE_RATE),
                              max_seconds=self.max_audio_seconds)
        return load_text(path)

    def encode(self, payloads: list) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(items (b, dim), frames (b, T, frame_dim) or None, lengths (b,) or None)``."""
        if self.modality != "video":
            return _checked(self.encoder.encode(list(payloads)), len(payloads), self.dim), None, None
        lengths = np.array([len(frames) for frames in payloads], np.int32)
        flat = _checked(self.encoder.encode([frame for frames in payloads for frame in frames]),
                        int(lengths.sum()), self.frame_dim)
        frames = np.zeros((len(payloads), self.steps, self.frame_dim), np.float32)
        items = np.empty((len(payloads), self.dim), np.float32)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        extra = getattr(self.encoder, "video_extra", None)
        for row, (start, stop) in enumerate(zip(offsets[:-1], offsets[1:])):
            frames[row, : stop - start] = flat[start:stop]
            pooled = flat[start:stop].mean(axis=0)
            items[row] = pooled if extra is None else np.concatenate([pooled, extra(payloads[row])])
        return items, frames, lengths

    def provenance(self) -> dict[str, Any]:
        provenance = dict(self.encoder.provenance()) if hasattr(self.encoder, "provenance") else {
            "encoder": str(getattr(self.encoder, "name", type(self.encoder).__name__)),
            "version": getattr(self.encoder, "version", None)}
        provenance["modality"] = self.modality
        if self.modality != "video":
            provenance.pop("video_extra", None)
        if self.modality == "video":
            provenance["frame_sampling"] = self.sampling.describe()
            provenance["temporal_pooling"] = ("mean over the sampled frames (jaxrec.fusion.masked_mean_pool)"
                                              + (" + per-video extra" if hasattr(self.encoder, "video_extra") else ""))
        if self.modality == "audio" and self.max_audio_seconds is not None:
            provenance["max_audio_seconds"] = float(self.max_audio_seconds)
        return provenance


def _checked(output, n: int, dim: int) -> np.ndarray:
    output = np.asarray(output, np.float32)
    if output.shape != (n, dim):
        raise DataError("encoder returned the wrong shape", field="encoder", found=str(output.shape),
                        expected=f"({n}, {dim})")
    if not np.all(np.isfinite(output)):
        raise DataError("encoder returned NaN or inf", field="encoder", found="non-finite values",
                        expected="finite features")
    return output
