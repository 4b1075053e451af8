"""``jaxrec data prepare``: load a dataset and store it as versioned TFDS array_record tables.

The ``data`` command's module adds this subcommand with :func:`add_prepare_parser` (also
named ``add_parser``, the name ``jaxrec.cli.data_cmd`` looks for in its subcommand modules).
"""

from __future__ import annotations

import argparse

from jaxrec.cli._reader_options import add_reader_option, reader_options


def add_prepare_parser(data_subparsers) -> argparse.ArgumentParser:
    """Adds ``prepare PATH --name N --data-dir D [--format F] [--version V]`` to ``jaxrec data``."""
    parser = data_subparsers.add_parser(
        "prepare",
        help="store a dataset as TFDS array_record files",
        description="Load a dataset (any format jaxrec reads) and write it as versioned TFDS tables under "
                    "DATA_DIR/NAME. Load it back with jaxrec.data.load_prepared(DATA_DIR, NAME), or read "
                    "rows with tfds.data_source('NAME/interactions:VERSION', split='train', data_dir=DATA_DIR).",
    )
    parser.add_argument("path", metavar="PATH", help="the dataset folder (or its .inter file)")
    parser.add_argument("--name", required=True, help="TFDS dataset name: lower_snake_case, e.g. lfm2k")
    parser.add_argument("--data-dir", required=True, help="TFDS data directory to write into")
    parser.add_argument("--format", default="auto", help="input format (default: detected from the folder)")
    parser.add_argument("--version", default="1.0.0", help="dataset version MAJOR.MINOR.PATCH (default 1.0.0)")
    parser.add_argument("--release-notes", default=None, help="what this version changes")
    parser.add_argument("--overwrite", action="store_true", help="replace this version if it is already prepared")
    parser.add_argument("--verbose", action="store_true", help="show TFDS's own messages and progress bars")
    add_reader_option(parser)
    parser.set_defaults(func=run_prepare)
    return parser


add_parser = add_prepare_parser


def run_prepare(args: argparse.Namespace) -> int:
    from jaxrec.cli._paths import check_output_folder
    from jaxrec.data import load, prepare_tfds  # the data layer (and TFDS) load only when this command runs
    from jaxrec.errors import ConfigError

    # The output folders, checked before the (slow) load and before anything is written.
    data_dir = check_output_folder("--data-dir", args.data_dir)
    target = data_dir / args.name
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--data-dir {args.data_dir} --name {args.name}: {target} exists and is not a folder; "
                          f"expected the dataset's folder there (or nothing)")
    dataset = load(args.path, format=args.format, **reader_options(args.options))
    root = prepare_tfds(dataset, args.data_dir, name=args.name, version=args.version,
                        release_notes=args.release_notes, overwrite=args.overwrite, verbose=args.verbose)
    sizes = dataset.split_sizes()
    print(f"prepared {dataset.name!r} as TFDS dataset {args.name} {args.version} in {root}")
    print(f"  {dataset.n_users} users, {dataset.n_items} items, {len(dataset.interactions)} interactions "
          f"(train {sizes['train']}, valid {sizes['valid']}, test {sizes['test']}); "
          f"modalities: {', '.join(dataset.modality_names) or 'none'}")
    print(f"  load with jaxrec.data.load_prepared({str(args.data_dir)!r}, {args.name!r})")
    return 0
