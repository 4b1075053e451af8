"""Throughput of `jaxrec features extract` with the classic encoder: images/s and videos/s.

Draws the media first (not timed), then times the whole extraction (decode, encode, flushed
writes, final files) and prints items/s with the CPU time per item.

    python benchmarks/bench_features.py --images 400 --videos 40
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from jaxrec import features as jf


def _draw_images(folder: Path, n: int, size: tuple[int, int]) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    for item in range(n):
        base = rng.integers(0, 256, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
        Image.fromarray(base).resize(size, Image.BILINEAR).save(folder / f"{item}.jpg", quality=90)
        rows.append(f"{item}\t{item}.jpg")
    ids = folder / "ids.tsv"
    ids.write_text("itemID\tpath\n" + "\n".join(rows) + "\n")
    return ids


def _draw_videos(folder: Path, n: int, seconds: float, fps: int, size: tuple[int, int]) -> Path:
    import av

    rng = np.random.default_rng(1)
    rows = []
    width, height = size
    for item in range(n):
        background = rng.integers(0, 256, 3, dtype=np.uint8)
        with av.open(str(folder / f"{item}.mp4"), "w") as container:
            stream = container.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=fps)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for t in range(int(seconds * fps)):
                frame = np.empty((height, width, 3), np.uint8)
                frame[:] = background
                left = (7 * t) % width
                frame[:, left:left + 24] = 255 - background
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        rows.append(f"{item}\t{item}.mp4")
    ids = folder / "ids.tsv"
    ids.write_text("itemID\tpath\n" + "\n".join(rows) + "\n")
    return ids


def _time(ids: Path, folder: Path, pipeline, output: Path, label: str, n: int) -> None:
    cpu, wall = time.process_time(), time.perf_counter()
    result = jf.extract_features(jf.read_media_list(ids, folder), pipeline, output, batch_size=32, progress=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    print(f"{label}: {n} items in {wall:.1f} s wall = {n / wall:.1f} items/s "
          f"({1000 * cpu / n:.1f} ms CPU per item; encode loop {result.items_per_second:.1f} items/s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--image-size", type=int, nargs=2, default=(640, 480))
    parser.add_argument("--videos", type=int, default=40)
    parser.add_argument("--video-seconds", type=float, default=10.0)
    parser.add_argument("--video-size", type=int, nargs=2, default=(360, 640), help="width height (vertical clip)")
    args = parser.parse_args()
    print(f"cores visible: {os.cpu_count()}; numpy {np.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.images:
            folder = root / "images"
            folder.mkdir()
            ids = _draw_images(folder, args.images, tuple(args.image_size))
            _time(ids, folder, jf.ModalityPipeline("image", jf.ClassicImageEncoder()), root / "images.npy",
                  f"classic images {args.image_size[0]}x{args.image_size[1]} JPEG", args.images)
        if args.videos:
            folder = root / "videos"
            folder.mkdir()
            ids = _draw_videos(folder, args.videos, args.video_seconds, 25, tuple(args.video_size))
            for sampling in (jf.FrameSampling("uniform", count=8), jf.FrameSampling("fps", rate=1.0)):
                name = f"{sampling.kind}{sampling.count if sampling.kind == 'uniform' else ''}"
                _time(ids, folder, jf.ModalityPipeline("video", jf.ClassicImageEncoder(), sampling=sampling),
                      root / f"videos_{name}.npy",
                      f"classic videos {args.video_size[0]}x{args.video_size[1]}, {args.video_seconds:g} s at 25 fps, "
                      f"{name} frames", args.videos)


if __name__ == "__main__":
    main()
