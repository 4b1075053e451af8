"""Tiny media files the feature tests make themselves: images (Pillow), videos (PyAV), WAV audio."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def noise_image(rng, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_ids(path: Path, rows) -> Path:
    path.write_text("itemID\tpath\n" + "".join(f"{item}\t{name}\n" for item, name in rows))
    return path


def require_av():
    return pytest.importorskip("av", reason="PyAV (the 'video' extra, also in 'test') is not installed")


def frame_pattern(index: int, height: int = 32, width: int = 48) -> np.ndarray:
    """Frame ``index`` of a test clip: grey level 20 * (index % 12) with a bright bar moving right."""
    frame = np.full((height, width, 3), 20 * (index % 12), np.uint8)
    left = (4 * index) % width
    frame[:, left:left + 6] = 250
    return frame


def write_video(path: Path, n_frames: int, *, fps: int = 10, height: int = 32, width: int = 48,
                frames=None) -> Path:
    """An MPEG-4 clip of ``n_frames`` frames (``frame_pattern`` unless ``frames`` is given)."""
    av = require_av()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": "1"}  # near-lossless: decoded grey levels stay close to the written ones
        if n_frames == 0:
            container.start_encoding()  # a header and no frames
        for index in range(n_frames):
            array = frame_pattern(index, height, width) if frames is None else frames[index]
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(rate)
        handle.writeframes(pcm.tobytes())
    return path
