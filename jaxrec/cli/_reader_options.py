"""The ``--option KEY=VALUE`` reader options of the data subcommands (``data info``, ``data prepare``)."""

from __future__ import annotations

import argparse

import yaml

from jaxrec.errors import ConfigError


def add_reader_option(parser: argparse.ArgumentParser) -> None:
    """``--option KEY=VALUE`` (repeatable), read by :func:`reader_options`."""
    parser.add_argument("--option", dest="options", action="append", default=[], metavar="KEY=VALUE",
                        help="reader option, value parsed as YAML (e.g. social=null, duplicates=error, "
                             "encoding=latin-1); repeatable")


def reader_options(pairs: list[str]) -> dict:
    """``{key: YAML value}`` of the ``--option`` pairs (an empty value is None)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option expects KEY=VALUE, got {pair!r}")
        options[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return options
