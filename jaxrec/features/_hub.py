"""Keep the pretrained encoders' libraries off the network (``offline_hub``), shared by the
timm / open_clip image encoders and the sentence-transformers text encoder."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

_FALSE = {"0", "false", "no", "off", ""}


@contextlib.contextmanager
def offline_hub() -> Iterator[None]:
    """Within the block, Hugging Face hub lookups fail at once instead of reaching the network.

    Sets ``HF_HUB_OFFLINE=1`` and ``TRANSFORMERS_OFFLINE=1`` unless the user set them (a user's
    ``HF_HUB_OFFLINE=0`` is kept, and then downloads are theirs to allow). ``huggingface_hub``
    reads the variable once, when it is first imported: where it was imported before (a notebook
    that imported timm first), the block also switches its module-level offline flag on and
    back off on exit, so a missing cache entry fails in well under a second instead of after
    the hub's network retries (46 s seen for a timm model with no DNS).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    wanted = os.environ["HF_HUB_OFFLINE"].strip().lower() not in _FALSE
    constants = sys.modules.get("huggingface_hub.constants")
    switched = constants is not None and wanted and not getattr(constants, "HF_HUB_OFFLINE", True)
    if switched:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if switched:
            constants.HF_HUB_OFFLINE = False
