"""jaxrec.models: one file per model family, each registering a builder by name.

See ``jaxrec.models._registry`` for the model contract (``encode`` / ``loss_terms``).
"""

from jaxrec.models._registry import EPOCH_STEP as EPOCH_STEP
from jaxrec.models._registry import Built as Built
from jaxrec.models._registry import available as available
from jaxrec.models._registry import build as build
from jaxrec.models._registry import check_model_args as check_model_args
from jaxrec.models._registry import get_builder as get_builder
from jaxrec.models._registry import register as register
from jaxrec.models._registry import traced_args as traced_args
from jaxrec.models._batch import normalize_batch as normalize_batch
