"""Pretrained image encoders (timm CNNs, open_clip CLIP) and the encoder registry.

Both run on torch and are optional extras: ``pip install 'jaxrec[image]'`` (timm, open_clip_torch
and torchvision, which brings its matching torch; docs/features.md; ``[video]`` adds PyAV). Nothing is
downloaded: weights come from ``--weights PATH`` (a checkpoint file) or from the user's local
Hugging Face / torch cache (the hub is kept offline, :func:`~jaxrec.features._hub.offline_hub`, so
a missing cache entry fails at once with a message instead of reaching the network).
``random_init=True`` builds the same model with random weights -- the path the tests run, since
no weights can be fetched there -- and says so in the provenance. Each uses its model's own eval preprocessing: timm's
``resolve_data_config`` + ``create_transform`` (resize, centre crop, normalize with the
model's mean/std), open_clip's validation transform (resize shorter side, centre crop, CLIP
normalization). CLIP embeddings are L2-normalized (as CLIP compares them).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxrec.errors import DataError
from jaxrec.features._encoders import ClassicAudioEncoder, ClassicImageEncoder
from jaxrec.features._hub import offline_hub
from jaxrec.features._media_list import file_sha256

DEFAULT_TIMM_MODEL = "resnet50.a1_in1k"
DEFAULT_CLIP_MODEL, DEFAULT_CLIP_TAG = "ViT-B-32", "openai"
ENCODERS = {"image": ("classic", "clip", "timm"), "video": ("classic", "clip", "timm"), "audio": ("classic",),
            "text": ("minilm",)}
_IMAGE_HINT = ("the {name} encoder needs the 'image' extra: pip install 'jaxrec[image]' (timm, open_clip_torch "
               "and torchvision with its matching torch; docs/features.md, 'Installing the extras')")


def _weights_file(weights) -> Path | None:
    if weights is None:
        return None
    path = Path(weights)
    if not path.is_file():
        raise DataError("weights file not found", path=path, field="weights", found="no such file",
                        expected="a checkpoint file of the chosen model")
    return path


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _on_device(model, device: str):
    """``model`` moved to the torch ``device``; a device this machine or torch build lacks is a DataError."""
    try:
        return model.to(device)
    except (RuntimeError, AssertionError, ValueError) as error:  # torch: unknown name, no CUDA build, no GPU
        raise DataError("torch device not available", field="device", found=f"{device}: {_first_line(error)}",
                        expected="cpu, or a device of this machine that this torch build supports") from None


class _TorchImageEncoder:
    """Shared parts: batched inference under ``torch.inference_mode`` on one device."""

    max_side = 1024
    device = "cpu"

    def prepare(self, image):
        return self.transform(image)

    def encode(self, prepared: list) -> np.ndarray:
        import torch

        with torch.inference_mode():
            batch = torch.stack(list(prepared)).to(self.device)
            return self._forward(batch).float().cpu().numpy()

    def _weights_provenance(self, weights: Path | None, source: str) -> dict[str, Any]:
        if weights is not None:
            return {"weights": os.fspath(weights), "weights_sha256": file_sha256(weights)}
        return {"weights": source, "weights_sha256": None}


class TimmImageEncoder(_TorchImageEncoder):
    """A timm model's pooled features (``num_classes=0``), e.g. ``resnet50.a1_in1k``.

    Args:
      model_name: a timm model name (with its pretrained tag).
      weights: a checkpoint file; default: the local Hugging Face cache.
      random_init: random weights (tests; meaningless features).
      device: torch device.
    """

    def __init__(self, model_name: str = DEFAULT_TIMM_MODEL, *, weights=None, random_init: bool = False,
                 device: str = "cpu"):
        with offline_hub():  # imported and built with the hub offline
            try:
                import timm
                import timm.data
            except ImportError as error:
                raise ImportError(_IMAGE_HINT.format(name="timm")) from error
            weights = _weights_file(weights)
            kwargs: dict[str, Any] = {"num_classes": 0, "pretrained": not random_init}
            if weights is not None and not random_init:
                kwargs["pretrained_cfg_overlay"] = {"file": os.fspath(weights)}
            try:
                model = timm.create_model(model_name, **kwargs)
            except Exception as error:  # hub lookups fail with library-specific errors when offline
                if isinstance(error, RuntimeError) and "Unknown model" in str(error):
                    raise DataError("unknown timm model", field="model", found=model_name,
                                    expected="a name from timm.list_models()") from None
                if weights is not None and not random_init:  # a checkpoint of another model, or a damaged file
                    raise DataError("cannot load the weights file", path=weights, field="weights",
                                    found=_first_line(error), expected=f"a checkpoint of timm's {model_name}") from None
                raise DataError("timm weights not available offline", field="weights", found=f"{model_name}: {error}",
                                expected="the model in the local Hugging Face cache, or --weights PATH") from None
        self.model = _on_device(model.eval(), device)
        config = timm.data.resolve_data_config({}, model=self.model)
        self.transform = timm.data.create_transform(**config)
        self.device, self.model_name = device, model_name
        self.name = f"timm:{model_name}"
        self.dim = int(self.model.num_features)
        self._provenance = {
            "encoder": self.name, "library": f"timm {timm.__version__}",
            **({"weights": "random init (testing only)", "weights_sha256": None} if random_init
               else self._weights_provenance(weights, f"pretrained {model_name} from the local cache")),
            "preprocessing": f"timm eval transform: {config}",
        }

    def _forward(self, batch):
        return self.model(batch)

    def provenance(self) -> dict[str, Any]:
        return dict(self._provenance)


class ClipImageEncoder(_TorchImageEncoder):
    """open_clip's image tower, L2-normalized, e.g. CLIP ViT-B/32 (``openai`` weights).

    Args:
      model_name: an open_clip model name (``ViT-B-32``).
      pretrained: an open_clip pretrained tag (``openai``), read from the local cache.
      weights: a checkpoint file (overrides ``pretrained``).
      random_init: random weights (tests; meaningless features).
      device: torch device.
    """

    def __init__(self, model_name: str = DEFAULT_CLIP_MODEL, *, pretrained: str | None = DEFAULT_CLIP_TAG,
                 weights=None, random_init: bool = False, device: str = "cpu"):
        with offline_hub():  # imported and built with the hub offline
            try:
                import open_clip
            except ImportError as error:
                raise ImportError(_IMAGE_HINT.format(name="clip")) from error
            weights = _weights_file(weights)
            source = None if random_init else (os.fspath(weights) if weights is not None else pretrained)
            try:
                model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=source)
            except Exception as error:
                text = str(error).lower()
                if isinstance(error, RuntimeError) and "not found" in text and "model" in text:
                    raise DataError("unknown open_clip model", field="model", found=model_name,
                                    expected="a name from open_clip.list_models()") from None
                if weights is not None and not random_init:  # a checkpoint of another model, or a damaged file
                    raise DataError("cannot load the weights file", path=weights, field="weights",
                                    found=_first_line(error),
                                    expected=f"a checkpoint of open_clip's {model_name}") from None
                raise DataError("CLIP weights not available offline", field="weights", found=f"{model_name}: {error}",
                                expected="the weights in the local cache, or --weights PATH") from None
        self.model, self.transform = _on_device(model.eval(), device), preprocess
        self.device, self.name = device, f"clip:{model_name}"
        self.dim = int(model.visual.output_dim)
        self._provenance = {
            "encoder": self.name, "library": f"open_clip {open_clip.__version__}",
            **({"weights": "random init (testing only)", "weights_sha256": None} if random_init
               else self._weights_provenance(weights, f"open_clip pretrained={pretrained} from the local cache")),
            "preprocessing": f"open_clip validation transform: {preprocess}",
            "normalization": "L2 (unit rows)",
        }

    def _forward(self, batch):
        import torch

        features = self.model.encode_image(batch)
        return features / torch.clamp(features.norm(dim=-1, keepdim=True), min=1e-12)

    def provenance(self) -> dict[str, Any]:
        return dict(self._provenance)


def make_encoder(modality: str, name: str, *, model: str | None = None, weights=None, random_init: bool = False,
                 device: str = "cpu"):
    """The encoder ``name`` for ``modality`` (names in :data:`ENCODERS`).

    ``model`` picks the model inside a library (timm name, open_clip name, or a local
    sentence-transformers folder for ``minilm``); ``weights`` a checkpoint file.
    """
    if modality not in ENCODERS:
        raise DataError("unknown modality", field="modality", found=modality, expected=", ".join(ENCODERS))
    if name not in ENCODERS[modality]:
        raise DataError(f"no encoder {name!r} for {modality}", field="encoder", found=name,
                        expected=" or ".join(ENCODERS[modality]))
    _weights_file(weights)  # a wrong path fails before any heavy import
    if name == "classic":
        if weights is not None or model is not None:
            raise DataError("the classic encoder has no model or weights", field="weights",
                            found=weights if weights is not None else model, expected="neither --model nor --weights")
        return ClassicAudioEncoder() if modality == "audio" else ClassicImageEncoder()
    if name == "timm":
        return TimmImageEncoder(model or DEFAULT_TIMM_MODEL, weights=weights, random_init=random_init, device=device)
    if name == "clip":
        return ClipImageEncoder(model or DEFAULT_CLIP_MODEL, weights=weights, random_init=random_init, device=device)
    from jaxrec.features._text_encoder import SentenceTransformerEncoder

    if random_init:
        raise DataError("the text encoder has no random-init mode", field="random_init", found=True,
                        expected="a local sentence-transformers model")
    return _TextAdapter(SentenceTransformerEncoder(model_path=model or weights, device=device))


class _TextAdapter:
    """The sentence encoder with the media-encoder attributes (``dim``, ``provenance``)."""

    def __init__(self, encoder):
        self.encoder, self.name, self.dim = encoder, encoder.name, encoder.dim

    def encode(self, texts: list) -> np.ndarray:
        return self.encoder(list(texts))

    def provenance(self) -> dict[str, Any]:
        packaged = getattr(self.encoder, "packaged", self.name == "all-MiniLM-L6-v2")
        folder = getattr(self.encoder, "model_path", None)
        return {"encoder": self.name, "library": self.encoder.version, "weights": "shipped with the model package"
                if packaged else f"local sentence-transformers folder {folder}" if folder else
                "local sentence-transformers folder",
                "weights_sha256": None, "preprocessing": "UTF-8 text, stripped; the model's own tokenizer",
                "normalization": "L2 (unit rows)" if self.encoder.normalize else "none"}
