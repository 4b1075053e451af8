"""Reading configs: YAML files, ``--set key=value`` overrides, path resolution, YAML out."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from jaxrec.errors import ConfigError
from jaxrec.train._config import (
    ExperimentConfig,
    _build_section,
    _coerce,
    _field_types,
    _is_dataclass_type,
    _type_name,
    _unknown_key_error,
    _unwrap_optional,
    config_from_dict,
    config_to_dict,
)


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.epochs=5"`` -> ``("train.epochs", 5)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE (e.g. train.epochs=5); found {text!r}")
    key, value = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set expects KEY=VALUE with a non-empty key; found {text!r}")
    try:
        return key, yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as error:
        raise ConfigError(f"--set {key}: value {value!r} is not valid YAML ({error})") from None


def apply_overrides(raw: Mapping | None, overrides: Sequence[str | tuple[str, Any]]) -> dict[str, Any]:
    """A copy of ``raw`` with dotted-key overrides applied (``"a.b=1"`` or ``("a.b", 1)``).

    Raises:
      ConfigError: ``raw`` is not a mapping (e.g. a YAML file holding a list), or an override
        is not ``KEY=VALUE``.
    """
    if raw is not None and not isinstance(raw, Mapping):
        raise ConfigError(f"a config must be a mapping of sections; found {raw!r}")
    result = _deep_copy(raw or {})
    for item in overrides:
        key, value = parse_override(item) if isinstance(item, str) else item
        set_dotted(result, key, value)
    return result


def set_dotted(tree: dict, key: str, value) -> None:
    """Set ``tree[a][b][c] = value`` for ``key = "a.b.c"``, creating missing levels.

    Inside a search space (``grid``, ``search.space``) the rest of the key is one name, so
    ``grid.train.learning_rate`` sets the grid entry ``train.learning_rate``.
    """
    parts = key.split(".")
    node = tree
    for depth in range(len(parts) - 1):
        child = node.get(parts[depth])
        if not isinstance(child, dict):
            child = {}
            node[parts[depth]] = child
        if ".".join(parts[: depth + 1]) in ("grid", "search.space"):
            child[".".join(parts[depth + 1:])] = value
            return
        node = child
    node[parts[-1]] = value


def get_dotted(tree: Mapping, key: str, default=None):
    node = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _deep_copy(value):
    if isinstance(value, Mapping):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def resolve_paths(config: ExperimentConfig, base: str | os.PathLike | None = None) -> ExperimentConfig:
    """The config with ``data.path`` made absolute (relative paths resolve against ``base``,
    the current directory by default)."""
    if config.data.path is None:
        return config
    path = Path(os.path.expanduser(config.data.path))
    if not path.is_absolute():
        path = Path(base or os.getcwd()) / path
    data = dataclasses.replace(config.data, path=os.fspath(path.resolve()))
    return dataclasses.replace(config, data=data)


def load_config(path: str | os.PathLike, overrides: Sequence[str | tuple[str, Any]] = ()) -> ExperimentConfig:
    """Read a YAML config file, apply ``--set`` overrides, validate and resolve paths.

    Raises:
      ConfigError: the file is missing or not YAML, or any key or value is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {os.fspath(path)}: {error.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{os.fspath(path)}{line}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if raw is not None and not isinstance(raw, Mapping):  # before the overrides, which need a mapping
        raise ConfigError(f"{os.fspath(path)}: a config must be a mapping of sections; found {raw!r}")
    overrides = list(overrides)
    parsed = [parse_override(item) if isinstance(item, str) else tuple(item) for item in overrides]
    raw = apply_overrides(raw, parsed)
    for item, (key, value) in zip(overrides, parsed):
        where = f"--set {item}: " if isinstance(item, str) else f"override {key!r}: "
        _check_override(raw, key, value, where)
    return resolve_paths(config_from_dict(raw, source=path))


_MISSING = object()


def _get_set(tree: Mapping, key: str):
    """What :func:`set_dotted` set for ``key`` (``_MISSING`` if it is gone)."""
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
        if ".".join(parts[: depth + 1]) in ("grid", "search.space") and depth < len(parts) - 1:
            rest = ".".join(parts[depth + 1:])
            return node.get(rest, _MISSING) if isinstance(node, Mapping) else _MISSING
    return node


def _check_override(raw: Mapping, key: str, value, where: str) -> None:
    """Check one override's key and value as :func:`config_from_dict` would, so that an error
    names the override (``where``) instead of the config file. Overrides a later one replaced
    are skipped, and so are keys inside free-form sections (``model.args``, ``grid``, ...)."""
    if _get_set(raw, key) is not value:  # replaced by a later override
        return
    cls, parts = ExperimentConfig, key.split(".")
    for depth, part in enumerate(parts):
        dotted = ".".join(parts[: depth + 1])
        types_ = _field_types(cls)
        if part not in types_:
            prefix = ".".join(parts[:depth])
            raise _unknown_key_error(dotted, [f"{prefix}.{name}" if prefix else name for name in types_], where)
        tp, optional = _unwrap_optional(types_[part])
        last = depth == len(parts) - 1
        if _is_dataclass_type(tp):
            if last:
                if not (value is None and optional):
                    _build_section(tp, value or {}, dotted + ".", where)
                return
            cls = tp
            continue
        if last:
            _coerce(value, types_[part], dotted, where)
        elif (typing.get_origin(tp) or tp) is dict:  # an entry of a free-form mapping
            if depth == len(parts) - 2 or dotted in ("grid", "search.space"):  # (their keys hold dots)
                _, value_type = typing.get_args(tp) or (str, Any)
                _coerce(value, value_type, key, where)
        elif tp is not Any:
            raise ConfigError(f"{where}unknown config key {key!r} ({dotted!r} takes a value of type "
                              f"{_type_name(tp)}, not a section of keys)")
        return


def dump_config(config: ExperimentConfig) -> str:
    """The resolved config as YAML text."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)
