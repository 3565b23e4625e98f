"""Strict TOML → dataclass loading, shared by both nodes' config files.

Both nodes read their files through it (`inference_node/config.py`, `agent_node/config.py`).
Every key has a default in its dataclass; a key the dataclass does not know is an error that
names the key, the table and the file:

    >>> @dataclass
    ... class Server:
    ...     port: int = 50051
    >>> load_dataclass(Server, {"prot": 1}, "inference-node.toml", "server")
    Traceback (most recent call last):
    ConfigError: inference-node.toml: unknown key 'prot' in [server] (known: port)
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class _FromFile(Protocol):
    source: str  # the file it was read from, or "built-in defaults"


F = TypeVar("F", bound=_FromFile)


class ConfigError(ValueError):
    """A config file that cannot be used as written; the message names the file and the key."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def load_file(cls: type[F], path: Path, name: str) -> F:
    """`cls` from the TOML file at `path`, its `source` set to the path; `name` stands for the
    file's top level in messages (e.g. "inference-node")."""
    data = read_toml(path)
    data.pop("source", None)  # set here, never read from the file
    cfg = load_dataclass(cls, data, str(path), name)
    cfg.source = str(path)
    return cfg


def load_dataclass(cls: type[T], data: Any, file: str, table: str) -> T:
    """Build `cls` from a TOML table, refusing unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: [{table}] must be a table, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{file}: unknown key '{unknown[0]}' in [{table}] (known: {known})")
    kwargs = {
        name: _convert(hints[name], value, file, f"{table}.{name}") for name, value in data.items()
    }
    return cls(**kwargs)


def _convert(hint: Any, value: Any, file: str, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, file, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value in choices:
            return value
        named = ", ".join(repr(c) for c in choices)
        raise ConfigError(f"{file}: '{key}' must be one of {named}, not {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ConfigError(f"{file}: '{key}' must be a list, not {type(value).__name__}")
        return [_convert(item, v, file, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{file}: '{key}' must be a table, not {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return load_dataclass(hint, value, file, key)  # type: ignore[arg-type]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Any or (isinstance(hint, type) and isinstance(value, hint)):
        if hint is int and isinstance(value, bool):
            raise ConfigError(f"{file}: '{key}' must be an integer, not a boolean")
        return value
    want = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"{file}: '{key}' must be {want}, not {type(value).__name__} ({value!r})")
