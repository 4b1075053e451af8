"""Exporting a served model for a service that does not run jaxrec's model code.

``export_run(source, output)`` writes::

  user_embeddings.npy   (n_users, d) float32, row u = user u
  item_embeddings.npy   (n_items, d) float32
  seen_indptr.npy       (n_users + 1,) int64  } each user's known items (CSR), what
  seen_indices.npy      (nnz,) int32          } ``exclude_seen`` removes
  id_maps.json          {"users": [...], "items": [...]}: the dataset's original id of each
                        dense id (items added after training: "added:<id>")
  score.jaxexport       serialized jax.export of score(user_vectors (b, d), item_emb (n, d))
                        -> (b, n) float32, b symbolic
  top_k.jaxexport       serialized jax.export of top_k(user_vectors (b, d), item_emb (n, d),
                        exclude (b, n) bool) -> (scores (b, k), items (b, k) int32), ranked as
                        ``jaxrec evaluate`` ranks (excluded items -inf; ties by item id);
                        a slot only an excluded item could fill holds item -1, score -inf
  manifest.json         model, version, dims, k, jax version, and each file's sha256

Both functions are plain inner products and ``lax.top_k``: any model's ranking is a dot product
of its user and item embeddings (the model contract), so the artifact needs nothing of the
model. ``jax.export.deserialize(open(path, "rb").read()).call(...)`` runs it; :func:`load_export`
does that after checking every checksum. The folder is written under a temporary name and
renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxrec.errors import ConfigError, DataError
from jaxrec.serve._persist import check_replaceable, replace_folder
from jaxrec.serve._recommender import Recommender

MANIFEST = "manifest.json"
FORMAT = "jaxrec-export/1"


def _score(user_vectors, item_emb):
    return jnp.matmul(user_vectors, item_emb.T, precision=jax.lax.Precision.HIGHEST)


def _top_k_fn(k: int):
    def top_k(user_vectors, item_emb, exclude):
        scores = _score(user_vectors, item_emb)
        scores = jnp.where(scores == 0, jnp.zeros((), scores.dtype), scores)
        scores = jnp.where(exclude, -jnp.inf, scores)
        values, items = jax.lax.top_k(scores, k)
        # A slot only an excluded item can fill is item -1 (as Recommender.recommend), never a seen item.
        return values, jnp.where(values == -jnp.inf, -1, items).astype(jnp.int32)

    return top_k


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _exported(fn, *shapes) -> bytes:
    return jax.export.export(jax.jit(fn))(*shapes).serialize()


def export_run(source, output, *, k: int = 100, dataset=None) -> Path:
    """Export a run (or a :class:`~jaxrec.serve.Recommender`) to ``output`` (module docstring).

    Args:
      source: a run folder, search folder, saved served model, or a ``Recommender``.
      output: the folder to write: new, empty, or an earlier export (replaced atomically); any
        other folder (a run's, say) or a file there is refused with a :class:`ConfigError`.
      k: the list length of the exported ``top_k`` (at most the number of items).
      dataset: passed to :meth:`Recommender.load`.

    Returns:
      the output folder.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"--k must be a positive integer; found {k!r}")
    output = Path(output).expanduser().resolve()
    check_replaceable(output, MANIFEST, FORMAT, "jaxrec export")  # before any work: never a run's folder
    recommender = source if isinstance(source, Recommender) else Recommender.load(source, dataset=dataset)
    snap = recommender.snapshot
    k = min(k, snap.n_items)
    user_emb, item_emb = recommender.embeddings()
    if not (np.all(np.isfinite(user_emb)) and np.all(np.isfinite(item_emb))):
        raise DataError("the model has non-finite embeddings; nothing exported", field="embeddings")
    base = snap.learner.base
    users = [str(x) for x in base.user_ids] if base.user_ids is not None else [str(u) for u in range(base.n_users)]
    users += [f"new:{u}" for u in range(base.n_users, snap.n_users)]
    items = [str(x) for x in base.item_ids] if base.item_ids is not None else [str(i) for i in range(base.n_items)]
    items += [f"added:{i}" for i in range(base.n_items, snap.n_items)]

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.tmp-", dir=output.parent))
    try:
        np.save(tmp / "user_embeddings.npy", user_emb.astype(np.float32))
        np.save(tmp / "item_embeddings.npy", item_emb.astype(np.float32))
        np.save(tmp / "seen_indptr.npy", np.asarray(snap.seen.indptr, np.int64))
        np.save(tmp / "seen_indices.npy", np.asarray(snap.seen.indices, np.int32))
        (tmp / "id_maps.json").write_text(json.dumps({"users": users, "items": items}))
        d, n_items = item_emb.shape[1], item_emb.shape[0]
        (b,) = jax.export.symbolic_shape("b")
        vectors = jax.ShapeDtypeStruct((b, d), jnp.float32)
        table = jax.ShapeDtypeStruct((n_items, d), jnp.float32)
        (tmp / "score.jaxexport").write_bytes(_exported(_score, vectors, table))
        (tmp / "top_k.jaxexport").write_bytes(
            _exported(_top_k_fn(k), vectors, table, jax.ShapeDtypeStruct((b, n_items), jnp.bool_)))
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            "format": FORMAT, "model": recommender.model_name, "version": snap.version,
            "n_users": int(user_emb.shape[0]), "n_items": int(n_items), "dim": int(d), "k": k,
            "events_applied": snap.events_applied, "jax_version": jax.__version__,
            "functions": {
                "score": "score(user_vectors f32[b, dim], item_emb f32[n_items, dim]) -> f32[b, n_items]",
                "top_k": "top_k(user_vectors f32[b, dim], item_emb f32[n_items, dim], exclude bool[b, n_items]) "
                         "-> (f32[b, k], i32[b, k]); item -1, score -inf where only excluded items remain",
            },
            "sha256": {name: _sha256(tmp / name) for name in files},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_folder(tmp, output, MANIFEST, FORMAT, "jaxrec export")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def load_export(directory) -> dict:
    """Read an export folder, checking every file against the manifest's sha256.

    Returns:
      ``{"manifest", "user_embeddings", "item_embeddings", "seen_indptr", "seen_indices",
      "id_maps", "score", "top_k"}`` with the two functions as deserialized
      ``jax.export.Exported`` objects (call them with ``.call(...)``).

    Raises:
      DataError: a missing file, or one whose checksum does not match.
    """
    directory = Path(directory).expanduser().resolve()
    manifest_path = directory / MANIFEST
    if not manifest_path.exists():
        raise DataError("not a jaxrec export: the manifest is missing", path=manifest_path)
    manifest = json.loads(manifest_path.read_text())
    for name, digest in manifest.get("sha256", {}).items():
        path = directory / name
        if not path.exists():
            raise DataError("a file of the export is missing", path=path, expected="the file named in the manifest")
        if _sha256(path) != digest:
            raise DataError("checksum mismatch", path=path, field="sha256", found=_sha256(path), expected=digest)
    out = {"manifest": manifest, "id_maps": json.loads((directory / "id_maps.json").read_text())}
    for name in ("user_embeddings", "item_embeddings", "seen_indptr", "seen_indices"):
        out[name] = np.load(directory / f"{name}.npy")
    for name in ("score", "top_k"):
        out[name] = jax.export.deserialize(bytearray((directory / f"{name}.jaxexport").read_bytes()))
    return out
