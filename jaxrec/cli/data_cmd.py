"""``jaxrec data``: inspect datasets on disk (``data info``) and prepare them.

Subcommands of ``jaxrec data`` other than ``info`` live in their own modules of this package,
listed in ``_DATA_SUBCOMMAND_MODULES``; each exposes ``add_parser(data_subparsers)``
(``data_prepare`` adds ``jaxrec data prepare``). Such a module
should import heavy dependencies (tensorflow-datasets) inside its command function, so that
``jaxrec --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json

from jaxrec.cli._reader_options import add_reader_option, reader_options

_DATA_SUBCOMMAND_MODULES = ("data_prepare",)


def add_parser(subparsers) -> None:
    data = subparsers.add_parser("data", help="inspect and prepare datasets",
                                 description="Inspect and prepare datasets on disk.")
    data_subparsers = data.add_subparsers(title="data commands", metavar="COMMAND")
    _add_info_parser(data_subparsers)
    for name in _DATA_SUBCOMMAND_MODULES:
        importlib.import_module(f"jaxrec.cli.{name}").add_parser(data_subparsers)
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])


def _add_info_parser(data_subparsers) -> None:
    info = data_subparsers.add_parser(
        "info", help="counts, splits, density, modalities, KG and social sizes of a dataset",
        description="Load a dataset folder and print its summary: users, items, interactions per split, "
                    "density, each modality's dim and missing rows, knowledge-graph and social sizes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  jaxrec data info ../shared/data/lfm2k\n"
               "  jaxrec data info ml-1m/ --format movielens --json\n"
               "  jaxrec data info my_recbole/ --option duplicates=error")
    info.add_argument("path", help="dataset folder (or its .inter file)")
    info.add_argument("--format", default="auto", choices=("auto", "mmrec", "recbole", "movielens", "tfds"),
                      help="on-disk format (default: detected from the folder)")
    add_reader_option(info)
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.set_defaults(func=_info)


def _info(args) -> int:
    from jaxrec.data import load  # imported here: 'jaxrec --help' should not pay for numpy readers

    from jaxrec.data import detect_format, unseen_in_train, unseen_messages

    dataset = load(args.path, format=args.format, **reader_options(args.options))
    summary = dataset.summary()
    summary["unseen_in_train"] = unseen_in_train(dataset)
    summary["warnings"] = unseen_messages(dataset, summary["unseen_in_train"])
    # Where this command read it; metadata's format and source say where the dataset came from (a
    # prepared TFDS copy keeps its original's).
    summary["read_from"] = {"path": str(args.path),
                            "format": args.format if args.format != "auto" else detect_format(args.path)}
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=False))
    else:
        print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """A human-readable table of ``MultimodalDataset.summary()``."""
    splits = summary["splits"]
    meta = summary.get("metadata", {})
    lines = [
        f"dataset        {summary['name']}  ({meta.get('format', '?')}: {meta.get('source', '?')})",
        *([f"read from      {summary['read_from']['path']}  ({summary['read_from']['format']})"]
          if "read_from" in summary else []),
        f"users          {summary['n_users']:,}",
        f"items          {summary['n_items']:,}",
        f"interactions   {summary['n_interactions']:,}  (train {splits['train']:,} / valid {splits['valid']:,} / "
        f"test {splits['test']:,})",
        f"density        {100 * summary['density']:.4f}%",
        f"ratings        {'yes' if summary['has_ratings'] else 'no'}   "
        f"timestamps {'yes' if summary['has_timestamps'] else 'no'}",
    ]
    if meta.get("needs_split"):
        lines.append("splits         none in the files: every interaction is train (make a split before training)")
    details = summary.get("modality_details", {})
    if details:
        width = max(len("modality"), *(len(name) for name in details))
        lines.append("")
        lines.append(f"{'modality':<{width}}  {'dim':>5}  {'missing rows':>12}  source")
        for name, detail in details.items():
            provenance = detail.get("provenance", {})
            source = provenance.get("source", "")
            dtype = provenance.get("original_dtype")
            note = f" ({dtype} -> float32)" if dtype and dtype != "float32" and "float" in dtype else ""
            shape = "x".join(str(s) for s in detail["shape"][1:])
            lines.append(f"{name:<{width}}  {shape:>5}  {detail['missing_rows']:>12,}  {source}{note}")
    else:
        lines.append("modalities     none")
    kg = summary.get("kg")
    lines.append("")
    lines.append("knowledge graph " + (f"{kg['triples']:,} triples, {kg['entities']:,} entities, "
                                       f"{kg['relations']:,} relations" if kg else "none"))
    social = summary.get("social_edges")
    dropped = meta.get("social_dropped_edges")
    lines.append("social edges    " + ("none" if social is None else f"{social:,}" + (
        f" ({dropped:,} dropped: friends outside the dataset)" if dropped else "")))
    if meta.get("duplicates_dropped"):
        lines.append(f"duplicates      {meta['duplicates_dropped']:,} repeated interactions dropped (kept the first)")
    for warning in summary.get("warnings", []):
        lines.append(f"warning: {warning}")
    return "\n".join(lines)
