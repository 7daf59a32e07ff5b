"""Strict parsing: recipe tables and flags -> frozen configs. Every parser rejects unknown keys and
wrong types with a one-line ``ConfigError`` that names the key and the valid choices; strings become
StrEnum members; ``to_toml`` writes a recipe that ``load_recipe`` reads back to the same config."""

from __future__ import annotations

import dataclasses
import functools
import json
import tomllib
import types
import typing
from dataclasses import fields
from enum import StrEnum
from pathlib import Path
from typing import Any

from edgecompress.errors import ConfigError


def choice(what: str, value: str, choices: type[StrEnum]) -> None:
    if value not in {c.value for c in choices}:
        raise ConfigError(f"{what} {value!r} is not one of: {', '.join(c.value for c in choices)}")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def enum_type(tp: Any) -> type[StrEnum] | None:
    """The StrEnum in annotation ``tp`` (``E``, ``E | None``, ``tuple[E, ...]``), if any."""
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        return tp
    for a in typing.get_args(tp):
        e = enum_type(a)
        if e is not None:
            return e
    return None


def _as_member(value: Any, e: type[StrEnum]) -> Any:
    """A valid string -> its member; anything else stays as it is, for ``validate()`` to name."""
    if isinstance(value, str) and not isinstance(value, e):
        try:
            return e(value)
        except ValueError:
            return value
    return value


class EnumFields:
    """Mixin for frozen config dataclasses: enum-typed fields given as strings hold members."""

    def __post_init__(self) -> None:
        for name, tp in _hints(type(self)).items():
            e = enum_type(tp)
            if e is None or name not in {f.name for f in fields(self)}:  # type: ignore[arg-type]
                continue
            v = getattr(self, name)
            v = tuple(_as_member(x, e) for x in v) if isinstance(v, tuple) else _as_member(v, e)
            object.__setattr__(self, name, v)


def to_plain(v: Any) -> Any:
    if isinstance(v, StrEnum):
        return v.value
    if isinstance(v, dict):
        return {k: to_plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [to_plain(x) for x in v]
    return v


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Checks ``value`` against annotation ``tp`` (str|None, tuple[str, ...], float, StrEnum, ...)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return tuple(_coerce(x, item, where) for x in value)
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected one of {', '.join(c.value for c in tp)}, got {value!r}")
        return _as_member(value, tp)  # an unknown string is named by validate(), with the flag
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table of settings, got {value!r}")
        return from_dict(tp, value, where.split("] ")[-1])  # type: ignore[arg-type]
    raise ConfigError(f"{where}: unsupported type {tp}")


def from_dict(cls: type, d: dict[str, Any], where: str) -> Any:
    hints = _hints(cls)
    valid = {f.name for f in fields(cls)}
    unknown = set(d) - valid
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in [{where}]; valid: {sorted(valid)}")
    kwargs = {k: _coerce(v, hints[k], f"[{where}] {k}") for k, v in d.items()}
    return cls(**kwargs)


def read_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        with open(p, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--recipe {p}: no such file; check the path") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--recipe {p}: not valid TOML ({e}); fix the syntax") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--recipe {p}: not UTF-8 text (byte {e.start}); save the recipe as UTF-8 TOML") from None
    except OSError as e:
        raise ConfigError(f"--recipe {p}: cannot read ({e.strerror})") from None


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge for recipe < flags: tables merge, values replace."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ConfigError(f"cannot write {v!r} to TOML")


def to_toml(d: dict[str, Any]) -> str:
    """A plain config dict (``RunConfig.to_dict()``) as a TOML recipe. None means "the default",
    which is None for every optional field, so leaving it out reads back the same."""
    top = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict) and v is not None]
    lines = [*top]
    for k, v in d.items():
        if isinstance(v, dict):
            lines += ["", f"[{k}]", *(f"{kk} = {_toml_value(vv)}" for kk, vv in v.items() if vv is not None)]
    return "\n".join(lines) + "\n"
