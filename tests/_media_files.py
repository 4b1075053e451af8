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
                frames=None, display: tuple[int, bool, bool] | None = None) -> Path:
    """An MPEG-4 clip of ``n_frames`` frames (``frame_pattern`` unless ``frames`` is given);
    ``display``: a display matrix ``(degrees counter-clockwise, hflip, vflip)`` as a phone writes
    one (PyAV's ``set_display_rotation``: the mirrors after the turn)."""
    av = require_av()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"qscale": "1"}  # near-lossless: decoded grey levels stay close to the written ones
        if display is not None:
            degrees, hflip, vflip = display
            stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
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


def linear_light_icc_profile(red=None, green=None, blue=None, white=(0.9642, 1.0, 0.8249)) -> bytes:
    """An ICC v2 display profile whose pixel values are LINEAR light (identity tone curves): RGB
    with the given D50 colorants (XYZ of each primary), or grey when no colorants are given. With
    sRGB's colorants (those of Little CMS's built-in sRGB profile), or grey, the only difference
    from sRGB is the tone curve, so a level ``v`` shown as sRGB is ``255 * srgb_encode(v / 255)``:
    a closed form to test colour management against. Written field by field from the
    ICC.1:2001-04 layout (header, tag table, ``desc`` / ``XYZ `` / ``curv`` tags)."""
    import struct

    def s15f16(value):
        return struct.pack(">i", round(value * 65536))

    def xyz(values):
        return b"XYZ " + b"\0" * 4 + b"".join(s15f16(v) for v in values)

    grey = red is None
    text = b"linear-light grey\0" if grey else b"linear-light sRGB primaries\0"
    desc = (b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 8 + b"\0" * 3 + b"\0" * 67)
    curve = b"curv" + b"\0" * 4 + struct.pack(">I", 0)  # no entries: the identity
    tags = [(b"desc", desc), (b"wtpt", xyz(white))] + (
        [(b"kTRC", curve)] if grey else [(b"rXYZ", xyz(red)), (b"gXYZ", xyz(green)), (b"bXYZ", xyz(blue)),
                                        (b"rTRC", curve), (b"gTRC", curve), (b"bTRC", curve)])
    offset = 128 + 4 + 12 * len(tags)
    table, data = [], b""
    for signature, body in tags:
        body += b"\0" * (-len(body) % 4)
        table.append(signature + struct.pack(">II", offset + len(data), len(body)))
        data += body
    size = offset + len(data)
    header = (struct.pack(">I", size) + b"\0" * 4 + bytes([2, 0x10, 0, 0]) + b"mntr" + (b"GRAY" if grey else b"RGB ") + b"XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 4 + b"\0" * 4 + b"\0" * 4 + b"\0" * 4 + b"\0" * 8
              + b"\0" * 4 + xyz(white)[8:] + b"\0" * 4 + b"\0" * 16 + b"\0" * 28)
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(table) + data
