"""``jaxrec features extract``: raw media files -> an item-aligned feature matrix with provenance.

Heavy imports (PyAV, torch) happen inside the command, so ``jaxrec --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
import warnings

_EPILOG = """\
IDS.tsv: UTF-8, tab-separated, header 'itemID<TAB>path'; paths relative to --input.
Writes FEATURES.npy (float32, row k = item k, zero rows for items without media), FEATURES.mask.npz
(mask: True where the item's media was encoded), FEATURES.json (provenance) and, with
--keep-frames, FEATURES.frames.npz (per-frame sequence). An interrupted run leaves FEATURES.partial/
and the same command resumes it.

examples:
  jaxrec features extract --modality image --input posters/ --ids ids.tsv --encoder classic --output image.npy
  jaxrec features extract --modality video --input clips/ --ids ids.tsv --encoder clip --frames 8 \\
      --keep-frames --output video_clip.npy
  jaxrec features extract --modality image --input posters/ --ids ids.tsv --encoder timm \\
      --model resnet50.a1_in1k --weights resnet50.safetensors --output image_resnet.npy
"""


def add_parser(subparsers) -> None:
    features = subparsers.add_parser("features", help="extract item features from raw media",
                                     description="Extract item features from raw images, videos, audio and text.")
    commands = features.add_subparsers(title="features commands", metavar="COMMAND")
    extract = commands.add_parser(
        "extract", help="encode media files into an item-aligned feature matrix",
        description="Encode one media file per item into a float32 matrix row-aligned to the item ids, with a "
                    "missing-row mask and a provenance sidecar.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG)
    extract.add_argument("--modality", required=True, choices=("image", "video", "audio", "text"))
    extract.add_argument("--input", required=True, metavar="DIR", help="the media folder")
    extract.add_argument("--ids", required=True, metavar="IDS.tsv", help="itemID<TAB>path table")
    extract.add_argument("--encoder", required=True,
                         help="classic (weight-free; image, video, audio), clip or timm (image, video), minilm (text)")
    extract.add_argument("--model", default=None,
                         help="model within the library: a timm name (default resnet50.a1_in1k), an open_clip name "
                              "(default ViT-B-32), or a local sentence-transformers folder (minilm)")
    extract.add_argument("--weights", default=None, metavar="PATH",
                         help="checkpoint file (default: the local Hugging Face / torch cache; nothing is downloaded)")
    extract.add_argument("--random-init", action="store_true",
                         help="random weights instead of pretrained ones: for testing the pipeline only")
    extract.add_argument("--output", required=True, metavar="FEATURES.npy")
    extract.add_argument("--n-items", type=int, default=None,
                         help="the dataset's item count: the output gets exactly this many rows, and ids outside "
                              "[0, n_items) are not in the dataset")
    extract.add_argument("--frames", type=int, default=8, metavar="K", help="video: K uniformly spaced frames (default 8)")
    extract.add_argument("--fps", type=float, default=None,
                         help="video: sample this many frames per second instead of --frames")
    extract.add_argument("--max-frames", type=int, default=64, help="video: the most frames with --fps (default 64)")
    extract.add_argument("--keep-frames", action="store_true",
                         help="video: also write the per-frame features as a sequence modality (FEATURES.frames.npz)")
    extract.add_argument("--max-audio-seconds", type=float, default=None, help="audio: use at most this many seconds")
    extract.add_argument("--batch-size", type=int, default=32, help="items per batch (default 32)")
    extract.add_argument("--on-error", choices=("fail", "mask"), default="fail",
                         help="unreadable or missing media, ids not in the dataset: fail (default) or mask the item "
                              "with a warning naming the file")
    extract.add_argument("--device", default="cpu", help="torch device for pretrained encoders (default cpu)")
    extract.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    extract.add_argument("--no-progress", action="store_true", help="no progress bar")
    extract.set_defaults(func=_extract)
    features.set_defaults(func=lambda args: (features.print_help(), 2)[1])


def _extract(args) -> int:
    from jaxrec import features as jfeatures
    from jaxrec.errors import ConfigError

    sampling = None
    if args.modality == "video":
        sampling = (jfeatures.FrameSampling(kind="fps", rate=args.fps, max_frames=args.max_frames)
                    if args.fps is not None else jfeatures.FrameSampling(kind="uniform", count=args.frames))
    # Checks that need no decoding come first: nothing is created when the list or options are wrong.
    with warnings.catch_warnings():
        warnings.simplefilter("always", jfeatures.MediaWarning)
        warnings.showwarning = _show_warning
        jfeatures.check_output(args.output, overwrite=args.overwrite, keep_frames=args.keep_frames)  # before a model loads
        media = jfeatures.read_media_list(args.ids, args.input, n_items=args.n_items, on_error=args.on_error)
        try:
            encoder = jfeatures.make_encoder(args.modality, args.encoder, model=args.model, weights=args.weights,
                                             random_init=args.random_init, device=args.device)
        except ImportError as error:  # an optional extra that is not installed: say which, no traceback
            raise ConfigError(str(error)) from None
        pipeline = jfeatures.ModalityPipeline(args.modality, encoder, sampling=sampling,
                                              max_audio_seconds=args.max_audio_seconds)
        result = jfeatures.extract_features(media, pipeline, args.output, batch_size=args.batch_size,
                                            on_error=args.on_error, keep_frames=args.keep_frames,
                                            overwrite=args.overwrite, progress=not args.no_progress,
                                            command={"command": "jaxrec features extract",
                                                     "options": {k: v for k, v in vars(args).items() if k != "func"}})
    print(f"wrote {result.output} ({result.n_rows} x {result.dim} float32), {result.mask_path.name}, "
          f"{result.sidecar.name}" + (f", {result.frames_path.name}" if result.frames_path else ""))
    print(f"items with features: {result.present} of {result.n_rows}; failed (masked): {result.failed}; "
          f"encoded now: {result.encoded_now} in {result.seconds:.1f} s ({result.items_per_second:.1f} items/s)")
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"jaxrec: warning: {message}", file=sys.stderr)
