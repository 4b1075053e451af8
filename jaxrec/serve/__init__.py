"""jaxrec.serve: a trained run as a live recommender.

- :class:`Recommender` loads a run (or a search folder's winning trial, or a saved served
  model) and answers ``recommend``, ``similar_items``, ``score``, ``fold_in`` (users the
  model has never seen, from their item histories) and ``add_items`` (new items from their
  features); ``update`` learns online from new (user, item) events, on a copy that is swapped
  in atomically with a new version; ``save`` / ``Recommender.load`` keep a served model.
- :class:`OnlineConfig`: how ``update`` trains (steps, replay of past interactions, optimizer).
- :func:`export_run` / :func:`load_export`: embeddings, id maps, a manifest and the scoring
  function as a serialized ``jax.export`` artifact, usable without jaxrec's model code.
"""

from jaxrec.serve._online import OnlineConfig as OnlineConfig
from jaxrec.serve._recommender import Recommender as Recommender
from jaxrec.serve._export import export_run as export_run
from jaxrec.serve._export import load_export as load_export

# The HTTP server needs the `serve` extra (FastAPI, uvicorn, prometheus-client): imported on first use.
_SERVER_NAMES = {"create_app": "jaxrec.serve._http", "ServeOptions": "jaxrec.serve._server",
                 "Service": "jaxrec.serve._server"}


def __getattr__(name: str):
    if name in _SERVER_NAMES:
        import importlib

        return getattr(importlib.import_module(_SERVER_NAMES[name]), name)
    raise AttributeError(f"module 'jaxrec.serve' has no attribute {name!r}")
