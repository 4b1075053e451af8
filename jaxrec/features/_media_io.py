"""Decoding one media file: images (Pillow), video frames and audio (PyAV), text.

Every decoder raises :class:`MediaError` naming the file and what was wrong, never a library's
own exception, so the extractor can fail with a clear message or mask the item.

Frame sampling (:class:`FrameSampling`): ``uniform`` takes ``count`` frames at the centres of
``count`` equal slices of the video (frame index :math:`\\lfloor (j + 1/2) n / k \\rfloor`,
:math:`j < k`, of the :math:`n` decoded frames; all frames when :math:`n \\le k`); ``fps`` takes
the first frame at or after each multiple of ``1 / rate`` seconds after the first frame's
timestamp (streams may start at any time), at most ``max_frames``.
Frames are decoded one at a time and only the sampled ones are kept (after the encoder's
``prepare``), so a long video never sits in memory; every kept frame is scaled by FFmpeg to the
size of the first (shrunk to ``max_side``), so a stream that changes resolution still gives
frames of one size.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import warnings
import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np

from jaxrec.errors import DataError

SAMPLINGS = ("uniform", "fps")
_VIDEO_HINT = "video and audio decoding need PyAV: pip install 'jaxrec[video]' (or pip install av)"


class MediaError(DataError):
    """A media file that cannot be decoded (corrupt, empty, unsupported)."""


@dataclasses.dataclass(frozen=True)
class FrameSampling:
    """Which frames of a video to encode (see the module docstring).

    Attributes:
      kind: ``"uniform"`` or ``"fps"``.
      count: frames per video for ``uniform``.
      rate: frames per second for ``fps``.
      max_frames: the cap for ``fps`` (and the padded length of kept frame sequences).
    """

    kind: str = "uniform"
    count: int = 8
    rate: float = 1.0
    max_frames: int = 64

    def __post_init__(self):
        if self.kind not in SAMPLINGS:
            raise DataError("unknown frame sampling", field="frame sampling", found=self.kind,
                            expected=" or ".join(SAMPLINGS))
        if isinstance(self.count, bool) or int(self.count) != self.count or self.count < 1:
            raise DataError("frames per video must be a positive integer", field="frames", found=self.count)
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise DataError("frames per second must be positive", field="fps", found=self.rate)
        if isinstance(self.max_frames, bool) or int(self.max_frames) != self.max_frames or self.max_frames < 1:
            raise DataError("max frames must be a positive integer", field="max_frames", found=self.max_frames)

    @property
    def steps(self) -> int:
        """The most frames one video can give (the padded sequence length)."""
        return int(self.count) if self.kind == "uniform" else int(self.max_frames)

    def describe(self) -> dict:
        if self.kind == "uniform":
            return {"kind": "uniform", "frames": int(self.count),
                    "rule": "frame floor((j + 1/2) n / k) of n decoded frames, j < k (all when n <= k)"}
        return {"kind": "fps", "rate": float(self.rate), "max_frames": int(self.max_frames),
                "rule": "first frame at or after each multiple of 1/rate seconds after the first frame"}


def load_image(path) -> "PIL.Image.Image":  # noqa: F821
    """The image at ``path`` as an RGB PIL image (fully decoded: a truncated file raises here),
    upright as a viewer shows it: an EXIF Orientation tag (phone photos store their pixels
    sideways and say so there) is applied (``PIL.ImageOps.exif_transpose``). HEIF/HEIC images
    (the iPhone camera's format) are read through pillow-heif when it is installed (the ``heif``
    extra), which applies their stored rotation and mirror itself and resets the EXIF tag. An
    embedded ICC colour profile is applied (:func:`_in_srgb`): the values are sRGB's."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    heif = _heif_opener()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            image = Image.open(path)
        with image:
            for warning in caught:  # Pillow's warning does not say which file: say it
                warnings.warn(f"{path}: {warning.message}", warning.category, stacklevel=2)
            image.load()
            if image.width < 1 or image.height < 1:
                raise MediaError("empty image", path=path, found=f"{image.width}x{image.height} pixels")
            depth = _tiff_depth(image)  # read before exif_transpose, whose copy has no TIFF tags
            icc = image.info.get("icc_profile")
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                background = Image.new("RGB", image.size, (255, 255, 255))  # transparency over white
                converted = image.convert("RGBA")
                background.paste(converted, mask=converted.getchannel("A"))
                return _in_srgb(background, icc, path)
            if image.mode.startswith(("I", "F")):  # 16- and 32-bit integer grey, float grey
                return Image.fromarray(_grey_to_eight(image, path, depth), "L").convert("RGB")
            return _in_srgb(image if image.mode in _ICC_SPACES else image.convert("RGB"), icc, path)
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError("media file not found", path=path, found="no such file") from None
    except Image.DecompressionBombError as error:
        raise MediaError("image too large to decode safely", path=path, found=str(error),
                         expected="an image within Pillow's pixel limit") from None
    except UnidentifiedImageError:
        if not heif and _is_heif(path):
            raise MediaError("a HEIF (HEIC) image, which Pillow reads only with the pillow-heif plugin", path=path,
                             found="HEIF image data, pillow-heif not installed",
                             expected="pip install 'jaxrec[heif]' (or pip install pillow-heif)") from None
        raise MediaError("not a readable image", path=path, found="unknown or corrupt image data",
                         expected="an image Pillow can read (JPEG, PNG, WebP, AVIF, HEIC with pillow-heif, ...)") from None
    except (OSError, ValueError, SyntaxError) as error:
        raise MediaError("corrupt or truncated image", path=path, found=str(error) or type(error).__name__,
                         expected="a complete image file") from None


# The image modes a colour profile is applied to, by the profile's colour space.
_ICC_SPACES = {"RGB": "RGB", "L": "GRAY", "CMYK": "CMYK"}


@functools.lru_cache(maxsize=32)
def _srgb_transform(icc: bytes, mode: str):
    """Little CMS's transform from the profile ``icc`` to sRGB for images of ``mode``; None when
    the profile describes another colour space than the mode's (e.g. a grey profile left on a
    picture converted to RGB) or is sRGB itself (:func:`_is_identity`). Cached: a folder of
    photos shares a few profiles."""
    from PIL import ImageCms

    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    if source.profile.xcolor_space.strip() != _ICC_SPACES[mode]:
        return None
    # NOCACHE: no one-pixel cache inside the transform; threads share each cached transform and
    # would race on it.
    transform = ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), mode, "RGB",
                                        flags=ImageCms.Flags.NOCACHE)
    return None if mode == "RGB" and _is_identity(transform) else transform


def _is_identity(transform) -> bool:
    """Whether an RGB -> sRGB transform leaves every level of every channel (each alone and all
    three together) within one level: the profile is sRGB itself (cameras' "sRGB IEC61966-2.1"),
    and skipping the transform, which costs more than decoding a photo, changes nothing."""
    from PIL import Image, ImageCms

    ramp = np.arange(256, dtype=np.uint8)
    zero = np.zeros_like(ramp)
    probe = np.concatenate([np.stack([ramp, ramp, ramp], -1), np.stack([ramp, zero, zero], -1),
                            np.stack([zero, ramp, zero], -1), np.stack([zero, zero, ramp], -1)])[None]
    shown = np.asarray(ImageCms.applyTransform(Image.fromarray(probe, "RGB"), transform))
    return int(np.abs(shown.astype(np.int16) - probe).max()) <= 1


def _in_srgb(image, icc, path):
    """``image`` (mode RGB, L or CMYK) as RGB in sRGB, as a browser shows it: through its embedded
    ICC colour profile (Display P3 on phones, Adobe RGB, a printer's CMYK; Little CMS, the
    profile's default rendering intent) when it has one, else its values taken as sRGB. An
    unreadable profile is named in a warning and the values are taken as sRGB."""
    from PIL import ImageCms

    if icc and image.mode in _ICC_SPACES:
        try:
            transform = _srgb_transform(bytes(icc), image.mode)
        except (ImageCms.PyCMSError, OSError, ValueError, TypeError) as error:
            warnings.warn(f"{path}: its embedded ICC colour profile is unreadable ({error}); its pixel values "
                          "are read as sRGB", UserWarning, stacklevel=3)
            transform = None
        if transform is not None:
            return ImageCms.applyTransform(image, transform)
    return image.convert("RGB")


# ISO-BMFF brands of HEIF images (HEVC-coded: iPhone photos are "heic"; "mif1"/"msf1" are the
# general image and sequence brands, which AVIF files, read by Pillow itself, carry too).
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"}


@functools.cache
def _heif_opener() -> bool:
    """Register pillow-heif's HEIF/HEIC opener with Pillow (once); False when it is not installed."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _is_heif(path) -> bool:
    """Whether the file starts as a HEIF image does: an ISO-BMFF ``ftyp`` box with a HEIF brand."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(12)
    except OSError:
        return False
    return len(head) == 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


_TIFF_BITS_PER_SAMPLE, _TIFF_SAMPLE_FORMAT = 258, 339


def _tiff_depth(image) -> tuple[int, bool] | None:
    """``(bits per sample, signed)`` a TIFF declares (BitsPerSample, SampleFormat 2 = signed;
    the TIFF defaults 1 bit and unsigned), or None for another format."""
    tags = getattr(image, "tag_v2", None)
    if tags is None:
        return None
    bits = int(np.atleast_1d(tags.get(_TIFF_BITS_PER_SAMPLE, 1))[0])
    return bits, int(np.atleast_1d(tags.get(_TIFF_SAMPLE_FORMAT, 1))[0]) == 2


def _grey_to_eight(image, path, tiff_depth: tuple[int, bool] | None) -> np.ndarray:
    """8-bit levels of a grey image Pillow holds as integers wider than 8 bits (modes ``I;16*``,
    ``I``) or floats (``F``): always a fixed scale, never the image's own maximum (which would
    turn a dark image white).

    - ``I;16*``, and ``I`` from anything but a TIFF (Pillow opens a 16-bit PGM as ``I``): the
      high byte of the 16-bit level, ``v >> 8`` (as Pillow reduces 16-bit colour PNGs).
    - ``I`` from a TIFF: its declared depth ``b`` (BitsPerSample; Pillow's ``I`` is 32-bit
      signed whatever the file says): the top 8 of its ``n`` value bits, ``v >> (n - 8)`` of
      ``v`` clipped to [0, 2^n - 1], with ``n = b`` unsigned (SampleFormat 1, the TIFF default;
      a 32-bit level read as unsigned) and ``n = b - 1`` signed (2; negative levels black);
      fewer than 8 value bits are stretched, ``255 v / (2^n - 1)``.
    - ``F``: a float image has no declared range; levels within [0, 1] are intensities
      (the float convention of scikit-image, matplotlib and OpenCV), ``floor(255 v + 1/2)``;
      otherwise they are 8-bit levels, as Pillow reads them, rounded and clipped to [0, 255] with
      a warning naming the file and the range when any falls outside. A NaN is black and an
      infinity clipped, with a warning.
    """
    values = np.asarray(image)
    if image.mode == "F":
        values = values.astype(np.float64)
        finite, nan = np.isfinite(values), np.isnan(values)
        low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
        unit = 0.0 <= low and high <= 1.0
        notes = []
        if not unit and (low < 0.0 or high > 255.0):
            notes.append(f"values from {low:g} to {high:g} lie outside [0, 255] (read as 8-bit levels: values in "
                         "[0, 1] are taken as intensities only when all are); clipped")
        if not (finite | nan).all():
            notes.append("infinite values clipped")
        if nan.any():
            notes.append("NaN read as black")
        if notes:
            warnings.warn(f"{path}: float pixels: {'; '.join(notes)}", UserWarning, stacklevel=3)
        values = np.where(nan, 0.0, values * 255.0 if unit else values)
        return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)
    levels = values.astype(np.int64)
    if image.mode == "I" and tiff_depth is not None and 1 < tiff_depth[0] <= 32:  # the TIFF's own depth
        bits, signed = tiff_depth
        if not signed and bits == 32:
            levels = values.astype(np.int32).view(np.uint32).astype(np.int64)  # Pillow's I is signed
        top = bits - 1 if signed else bits  # value bits
        levels = np.clip(levels, 0, (1 << top) - 1)
        return (levels >> (top - 8) if top >= 8 else levels * 255 // ((1 << top) - 1)).astype(np.uint8)
    return (np.clip(levels, 0, 65535) >> 8).astype(np.uint8)


def _library_errors(av) -> tuple:
    """What PyAV raises on damaged input: FFmpeg's errors, an IndexError for a stream that appears
    after the header (a later MPEG-TS program), a UnicodeDecodeError for non-UTF-8 stream tags."""
    return (av.FFmpegError, IndexError, UnicodeDecodeError)


def _import_av():
    try:
        import av
    except ImportError as error:
        raise ImportError(_VIDEO_HINT) from error
    return av


def _open_container(av, path):
    try:
        return av.open(str(path), metadata_errors="replace")  # a non-UTF-8 title tag must not reject the file
    except FileNotFoundError:
        raise MediaError("media file not found", path=path, found="no such file") from None
    except _library_errors(av) as error:
        raise MediaError("not a readable media file", path=path, found=str(error),
                         expected="a video or audio file FFmpeg can decode") from None


def _count_video_frames(av, path) -> int:
    with _open_container(av, path) as container:
        if not container.streams.video:
            raise MediaError("no video stream", path=path, found="a file without video",
                             expected="a video file")
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        count = 0
        try:
            for packet in container.demux(stream):
                count += bool(packet.size)
        except _library_errors(av):  # damage: count the packets before it, as decoding stops there too
            pass
        return count


def decode_video(path, sampling: FrameSampling, prepare: Callable, *, max_side: int | None = None) -> list:
    """The sampled frames of the video at ``path``, each passed through ``prepare(PIL image)``,
    upright as a player shows them (the stream's display matrix applied, rotation and mirror, as
    FFmpeg's own autorotation does: :func:`_upright_frame`).

    Args:
      path: the video file.
      sampling: which frames.
      prepare: maps a decoded RGB PIL frame to what the encoder takes (applied at once, so only
        prepared frames are kept).
      max_side: shrink frames whose longer side exceeds this (in FFmpeg, before conversion).

    Raises:
      MediaError: unreadable file, no video stream, no decodable frame.
    """
    av = _import_av()
    wanted = None
    if sampling.kind == "uniform":
        total = _count_video_frames(av, path)
        if total == 0:
            raise MediaError("video has no frames", path=path, found="0 frames", expected="a non-empty video")
        k = min(sampling.count, total)
        wanted = {int((j + 0.5) * total / k) for j in range(k)}
    frames, index, next_time, size, origin = [], 0, 0.0, None, None
    try:
        with _open_container(av, path) as container:
            if not container.streams.video:
                raise MediaError("no video stream", path=path, found="a file without video", expected="a video file")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            decoded = container.decode(stream)
            while True:
                try:
                    frame = next(decoded)
                except StopIteration:
                    break
                except (IndexError, UnicodeDecodeError) as error:  # PyAV's own, on a damaged stream
                    raise av.FFmpegError(0, f"{type(error).__name__}: {error}") from None
                if sampling.kind == "uniform":
                    keep = index in wanted
                else:  # seconds since the first frame: a stream's timestamps may start anywhere (MPEG-TS)
                    seconds = float(frame.time) if frame.time is not None else index / float(stream.average_rate or 1)
                    origin = seconds if origin is None else origin
                    seconds -= origin
                    keep = seconds + 1e-9 >= next_time
                    if keep:
                        next_time = (math.floor(seconds * sampling.rate + 1e-9) + 1) / sampling.rate
                index += 1
                if keep:
                    if size is None:  # every kept frame gets the first one's size (streams may change size)
                        width, height = frame.width, frame.height
                        if max_side is not None and max(width, height) > max_side:
                            scale = max_side / max(width, height)
                            width, height = max(1, round(width * scale)), max(1, round(height * scale))
                        size = (width, height)
                    frames.append(prepare(_upright_frame(frame.to_image(width=size[0], height=size[1]),
                                                         _display_matrix(av, frame))))
                    if len(frames) >= sampling.steps:
                        break
    except av.FFmpegError as error:
        if not frames:
            raise MediaError("corrupt video", path=path, found=str(error), expected="a decodable video") from None
        # frames decoded before the damage are kept: a truncated tail still gives a usable clip
    if not frames:
        raise MediaError("video has no decodable frames", path=path, found="0 frames", expected="a non-empty video")
    return frames


def _display_matrix(av, frame) -> np.ndarray | None:
    """The frame's display matrix (FFmpeg's ``AV_FRAME_DATA_DISPLAYMATRIX``: 9 int32, the first
    two columns 16.16 fixed point), or None when the stream has none."""
    entry = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    if entry is None:
        return None
    matrix = np.frombuffer(bytes(entry), dtype=np.int32)
    return matrix if matrix.size == 9 else None


def _upright_frame(image, matrix):
    r"""``image`` shown as its display matrix says, by FFmpeg's own rule (``ffmpeg`` and ``ffplay``
    autorotation): with :math:`\theta` the clockwise angle of the matrix's rotation
    (``-av_display_rotation_get``: :math:`\operatorname{atan2}(m_1, m_0)` of the column-normalized
    matrix, rounded to degrees, in [0, 360)),

    - :math:`\theta \approx 90`: turned clockwise, or transposed (turned counter-clockwise and
      flipped top to bottom) when :math:`m_3 > 0` (a mirrored matrix);
    - :math:`\theta \approx 270`: turned counter-clockwise, or anti-transposed when :math:`m_3 < 0`;
    - :math:`\theta \approx 180`: mirrored left to right when :math:`m_0 < 0`, top to bottom when
      :math:`m_4 < 0` (both: a half turn);
    - :math:`\theta \approx 0`: flipped top to bottom when :math:`m_4 < 0`.

    Phone videos are stored sideways with a 90 or 270 degree matrix; front-camera clips add a
    mirror, which the rotation angle alone (PyAV's ``VideoFrame.rotation``) reads as a half
    turn. Any other angle (none seen in practice; FFmpeg rotates by it) leaves the frame as stored.
    """
    from PIL import Image

    if matrix is None:
        return image
    m = matrix.astype(np.float64) / 65536.0
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0.0 or scale1 == 0.0:
        return image
    theta = float(np.round(math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))))
    theta -= 360.0 * math.floor(theta / 360.0 + 0.9 / 360.0)
    turns = []
    if abs(theta - 90) < 1.0:
        turns = [Image.Transpose.TRANSPOSE if matrix[3] > 0 else Image.Transpose.ROTATE_270]
    elif abs(theta - 180) < 1.0:
        turns = ([Image.Transpose.FLIP_LEFT_RIGHT] if matrix[0] < 0 else []) + \
                ([Image.Transpose.FLIP_TOP_BOTTOM] if matrix[4] < 0 else [])
    elif abs(theta - 270) < 1.0:
        turns = [Image.Transpose.TRANSVERSE if matrix[3] < 0 else Image.Transpose.ROTATE_90]
    elif abs(theta) < 1.0 and matrix[4] < 0:
        turns = [Image.Transpose.FLIP_TOP_BOTTOM]
    for turn in turns:
        image = image.transpose(turn)
    return image


def load_audio(path, sample_rate: int = 16_000, *, max_seconds: float | None = None) -> np.ndarray:
    """Mono float32 samples in [-1, 1] at ``sample_rate`` (PCM WAV without PyAV; else PyAV)."""
    path = Path(path)
    try:
        import av  # noqa: F401
    except ImportError:
        if path.suffix.lower() != ".wav":
            raise ImportError(_VIDEO_HINT + " (only PCM .wav reads without it)") from None
        return _load_wav(path, sample_rate, max_seconds)
    av = _import_av()
    limit = None if max_seconds is None else int(max_seconds * sample_rate)
    chunks, count = [], 0
    try:
        with _open_container(av, path) as container:
            if not container.streams.audio:
                raise MediaError("no audio stream", path=path, found="a file without audio", expected="an audio file")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            for frame in container.decode(container.streams.audio[0]):
                for out in resampler.resample(frame):
                    chunk = out.to_ndarray().reshape(-1)
                    chunks.append(chunk)
                    count += chunk.size
                if limit is not None and count >= limit:
                    break
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
    except _library_errors(av) as error:
        raise MediaError("corrupt audio", path=path, found=str(error), expected="a decodable audio file") from None
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if samples.size == 0:
        raise MediaError("audio has no samples", path=path, found="0 samples", expected="non-empty audio")
    return samples if limit is None else samples[:limit]


def _load_wav(path: Path, sample_rate: int, max_seconds: float | None) -> np.ndarray:
    try:
        with wave.open(str(path), "rb") as handle:
            width, channels, rate = handle.getsampwidth(), handle.getnchannels(), handle.getframerate()
            n = handle.getnframes() if max_seconds is None else min(handle.getnframes(), int(max_seconds * rate))
            raw = handle.readframes(n)
    except FileNotFoundError:
        raise MediaError("media file not found", path=path, found="no such file") from None
    except (wave.Error, EOFError) as error:
        raise MediaError("not a readable PCM WAV file", path=path, found=str(error)) from None
    if width not in (1, 2, 4):
        raise MediaError("unsupported WAV sample width", path=path, found=f"{width} bytes", expected="1, 2 or 4")
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    data = np.frombuffer(raw, dtype).astype(np.float64)
    data = (data - 128.0) / 128.0 if width == 1 else data / float(2 ** (8 * width - 1))
    data = data[: len(data) // channels * channels].reshape(-1, channels).mean(axis=1)
    if data.size == 0:
        raise MediaError("audio has no samples", path=path, found="0 samples", expected="non-empty audio")
    if rate != sample_rate:  # linear interpolation onto the target grid
        times = np.arange(int(len(data) * sample_rate / rate)) / sample_rate
        data = np.interp(times, np.arange(len(data)) / rate, data)
    return data.astype(np.float32)


def load_text(path) -> str:
    """The UTF-8 text of ``path`` (without a byte-order mark), stripped; empty text raises."""
    try:
        text = Path(path).read_bytes().decode("utf-8").removeprefix("\ufeff").strip()  # a BOM is no text
    except FileNotFoundError:
        raise MediaError("media file not found", path=path, found="no such file") from None
    except UnicodeDecodeError as error:
        raise MediaError("text file is not UTF-8", path=path, found=str(error), expected="UTF-8 text") from None
    if not text:
        raise MediaError("empty text file", path=path, found="no text", expected="the item's text")
    return text
