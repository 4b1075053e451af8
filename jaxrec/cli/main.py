"""The ``jaxrec`` command.

Each subcommand lives in its own module of this package, which exposes
``add_parser(subparsers)``; the parser it adds sets ``func`` to the function that runs it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from jaxrec.errors import JaxrecError

# Order here is the order ``jaxrec --help`` lists them.
_SUBCOMMAND_MODULES = ("demo", "data_cmd", "train_cmd", "features_cmd", "export_cmd", "serve_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxrec",
        description="Multimodal recommendation in JAX: load and prepare data, train, tune and evaluate models.",
        epilog="Run 'jaxrec COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"jaxrec {importlib.import_module('jaxrec').__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in _SUBCOMMAND_MODULES:
        importlib.import_module(f"jaxrec.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except JaxrecError as error:
        print(f"jaxrec: error: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # e.g. `jaxrec data info X | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("jaxrec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
