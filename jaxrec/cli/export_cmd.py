"""``jaxrec export RUN_DIR --output DIR``: embeddings, id maps, a manifest and the scoring
function as serialized ``jax.export`` artifacts (see :func:`jaxrec.serve.export_run`)."""

from __future__ import annotations

import json


def add_parser(subparsers) -> None:
    export = subparsers.add_parser(
        "export", help="export a run's embeddings and scoring function for serving without jaxrec",
        description="Write RUN_DIR's user and item embeddings (.npy), id maps, each user's seen items, a "
                    "manifest (model, version, dims, sha256 of every file) and the scoring and top-k "
                    "functions as serialized jax.export artifacts to DIR (new, empty or an earlier export, replaced "
                    "atomically; any other folder is refused). RUN_DIR may "
                    "be a run, a search folder (its winning trial) or a served model saved by the server.")
    export.add_argument("run_dir", help="a run folder, search folder or saved served model")
    export.add_argument("--output", "-o", required=True, help="the folder to write")
    export.add_argument("--k", type=int, default=100, help="list length of the exported top_k (default 100)")
    export.set_defaults(func=_export)


def _export(args) -> int:
    from jaxrec.serve import export_run

    output = export_run(args.run_dir, args.output, k=args.k)
    manifest = json.loads((output / "manifest.json").read_text())
    print(f"exported {manifest['model']} version {manifest['version']}: {manifest['n_users']} users, "
          f"{manifest['n_items']} items, dim {manifest['dim']} -> {output}")
    return 0
