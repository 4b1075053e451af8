"""Checks of the folders the subcommands' options name for output, made before anything is created."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from jaxrec._atomic import file_in_the_way
from jaxrec.errors import ConfigError


def check_output_folder(option: str, value: str | os.PathLike) -> Path:
    """The folder an option names for output (``--state``, ``--data-dir``), checked before
    anything is created: an existing folder, or one that can be created (its first missing
    level is made and removed again to find out). A ConfigError naming the option otherwise."""
    path = Path(os.path.expanduser(value)).absolute()
    label = f"{option} {os.fspath(value)}"
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{label}: exists and is not a folder; expected a folder (or a path to create one at)")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{label}: the folder is not writable")
        return path
    if os.path.lexists(path):
        raise ConfigError(f"{label}: a broken symbolic link; expected a folder (or a path to create one at)")
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise ConfigError(f"{label}: cannot create a folder there, {blocking} is a file, not a folder")
    first_missing = path
    while not first_missing.parent.exists():  # the root exists, so this stops
        first_missing = first_missing.parent
    try:
        os.mkdir(first_missing)
    except OSError as error:
        reason = error.strerror or str(error)
        if error.errno == errno.ENOENT:
            reason = "folders cannot be created there"
        raise ConfigError(f"{label}: cannot create a folder there ({first_missing}: {reason})") from None
    try:
        os.rmdir(first_missing)
    except OSError:  # someone else put something there meanwhile: theirs to keep
        pass
    return path
