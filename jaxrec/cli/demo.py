"""``jaxrec demo``: train a model on the embedded synthetic data and print its ranking metrics.

The demo is an ordinary run of the training engine (``jaxrec.train.train_and_evaluate``)
on ``jaxrec.data.default_dataset()``, with the config in ``demo.yaml`` next to this file (the
one source of its settings; ``jaxrec train jaxrec/cli/demo.yaml`` runs the same): VBPR, late
fusion of the three synthetic modalities (one projection per modality), with the paper's
separate regularization of the visual part.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

DEMO_CONFIG_PATH = Path(__file__).with_name("demo.yaml")


def _demo_raw() -> dict:
    import yaml

    return yaml.safe_load(DEMO_CONFIG_PATH.read_text())


# A small size for smoke tests: the same generator at a fraction of the default size.
_SIZES = {
    "default": {},
    "tiny": {"n_users": 200, "n_items": 150, "n_interactions": 4000, "seed": 0, "missing_rate": {"audio": 0.1}},
}
_SHOWN = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "precision@20", "map@10", "map@20",
          "hit@10", "hit@20", "mrr@20")


def add_parser(subparsers) -> None:
    raw = _demo_raw()
    parser = subparsers.add_parser(
        "demo", help="train a model on the built-in synthetic data and print its metrics",
        description=f"Train {raw['model']['name']} on the embedded synthetic multimodal dataset (2,000 users, 1,500 items) "
                    "with the full training engine and print ranking metrics. Takes well under a minute on two "
                    "CPU cores.")
    parser.add_argument("--workdir", help="keep the run here (default: a temporary folder)")
    parser.add_argument("--epochs", type=int, help=f"maximum epochs (default {raw['train']['epochs']})")
    parser.add_argument("--size", choices=tuple(_SIZES), default="default", help="dataset size (tiny: smoke test)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch logs")
    parser.set_defaults(func=run_demo)


def demo_config(size: str = "default", epochs: int | None = None):
    from jaxrec.train import apply_overrides, config_from_dict

    overrides = [("data.synthetic", dict(_SIZES[size]))]
    if epochs is not None:
        overrides.append(("train.epochs", epochs))
    return config_from_dict(apply_overrides(_demo_raw(), overrides))


def run_demo(args) -> int:
    from jaxrec.cli._paths import check_output_folder
    from jaxrec.cli.train_cmd import metrics_table
    from jaxrec.errors import ConfigError
    from jaxrec.train import train_and_evaluate

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs {args.epochs}: expected a positive number of epochs")
    if args.workdir:  # the demo has no --resume: it trains into a new or empty folder only
        folder = check_output_folder("--workdir", args.workdir)
        if folder.is_dir() and any(folder.iterdir()):
            raise ConfigError(f"--workdir {args.workdir}: the folder is not empty; the demo trains a fresh run into "
                              "a new or empty folder (to continue a run: jaxrec train CONFIG --workdir DIR --resume)")
    config = demo_config(args.size, args.epochs)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="jaxrec-demo-") as scratch:
        workdir = Path(args.workdir) if args.workdir else Path(scratch)
        metrics = train_and_evaluate(config, workdir, quiet=args.quiet)
    seconds = time.perf_counter() - started
    print(f"\njaxrec demo: {metrics['model']} on {metrics['dataset']} ({metrics['n_params']:,} parameters), "
          f"best epoch {metrics['best_epoch']} of {metrics['epochs_run']}, {seconds:.1f} s"
          + (f"; run kept in {Path(args.workdir).resolve()}" if args.workdir else "") + "\n")
    print(metrics_table({"valid": metrics["valid"], "test": metrics["test"]}, names=_SHOWN))
    return 0
