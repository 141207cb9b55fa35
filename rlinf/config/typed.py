"""Map plain nested dicts (from YAML) onto typed dataclasses, collecting every error.

Supported field types: bool, int, float, str, Any, Literal[...], X | None, list[X],
dict[str, X], tuple of unions of those, and nested dataclasses. Unknown keys are errors with
a did-you-mean taken from the dataclass's field names.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from rlinf.config.errors import Issues

_MISSING = object()


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else str(key)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin is list:
        return f"list of {_type_name(get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def did_you_mean(word: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def convert(tp: Any, value: Any, path: str, issues: Issues) -> Any:
    """Return ``value`` converted to ``tp``; on failure record an issue and return _MISSING."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        # Try each member quietly; keep the first that converts.
        for arg in args:
            if arg is type(None):
                continue
            trial = Issues()
            out = convert(arg, value, path, trial)
            if not trial:
                return out
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1:  # Optional[X]: report X's own, more precise error
            return convert(non_null[0], value, path, issues)
        issues.add(path, f"expected {_type_name(tp)}, got {value!r}")
        return _MISSING
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed:
            return value
        hint = did_you_mean(str(value), [str(a) for a in allowed])
        issues.add(path, f"{value!r} is not one of {', '.join(repr(a) for a in allowed)}{hint}")
        return _MISSING
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            issues.add(path, f"expected a mapping for this section, got {value!r}")
            return _MISSING
        return from_dict(tp, value, path, issues)
    if origin is list:
        (item_tp,) = get_args(tp)
        if value is None:
            issues.add(path, f"expected {_type_name(tp)}, got null")
            return _MISSING
        if not isinstance(value, (list, tuple)):
            value = [value] if not isinstance(value, dict) else value
            if isinstance(value, dict):
                issues.add(path, f"expected {_type_name(tp)}, got a mapping")
                return _MISSING
        out = [convert(item_tp, v, _join(path, i), issues) for i, v in enumerate(value)]
        return [o for o in out if o is not _MISSING]
    if origin is dict:
        _, val_tp = get_args(tp)
        if not isinstance(value, dict):
            issues.add(path, f"expected a mapping, got {value!r}")
            return _MISSING
        out = {str(k): convert(val_tp, v, _join(path, str(k)), issues) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _MISSING}
    if tp is bool:
        if isinstance(value, bool):
            return value
        issues.add(path, f"expected true or false, got {value!r}")
        return _MISSING
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        issues.add(path, f"expected an integer, got {value!r}")
        return _MISSING
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-4 as a string
            except ValueError:
                pass
        issues.add(path, f"expected a number, got {value!r}")
        return _MISSING
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        issues.add(path, f"expected a string, got {value!r}")
        return _MISSING
    raise TypeError(f"unsupported field type {tp!r} at {path}")  # programmer mistake


def from_dict(cls: type, data: dict, path: str, issues: Issues) -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values go to ``issues``."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        if key not in fields:
            issues.add(_join(path, key), f"unknown key{did_you_mean(key, fields)}")
            continue
        out = convert(hints[key], value, _join(path, key), issues)
        if out is not _MISSING:
            kwargs[key] = out
    for name, f in fields.items():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and name not in kwargs and name not in data:
            issues.add(_join(path, name), f"is required ({_type_name(hints[name])})")
    try:
        return cls(**{k: v for k, v in kwargs.items()})
    except TypeError:
        return _MISSING


def to_dict(obj: Any) -> Any:
    """Plain nested dict of a dataclass tree (for writing the resolved config)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
