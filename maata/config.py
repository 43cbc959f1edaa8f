"""Configuration: dataclass trees loaded from layered YAML with environment overrides.

A YAML file may name a ``base:`` file (relative to itself) whose keys it overrides, the way
DAC's ``conf/final/16khz.yml`` sits on ``conf/base.yml``. After the files, environment
variables override single fields: ``{PREFIX}{PATH}`` where PATH is the field path joined by
double underscores, e.g. ``MAATA_CODEC__QUANTIZER__N_Q=4``. Values from the environment are
parsed as YAML scalars, so ``4``, ``0.5``, ``true`` and ``[2, 4]`` all work.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or override does not fit the dataclass it is loaded into."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file, resolving its ``base:`` chain (child keys win, dicts merge deeply)."""
    path = Path(path)
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    base = data.pop("base", None)
    if base is not None:
        data = deep_merge(read_yaml(path.parent / base), data)
    return data


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _resolve_type(tp: Any) -> Any:
    """Strip Optional[...] to the inner type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, recursively; unknown keys are an error."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} in {where or cls.__name__}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        kwargs[f.name] = _coerce(hints[f.name], data[f.name], f"{where}.{f.name}".lstrip("."))
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    tp = _resolve_type(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        items = [_coerce(inner, v, where) for v in value]
        return tuple(items) if origin is tuple else items
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain, YAML/JSON-serialisable dict of a dataclass tree (tuples become lists)."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def env_overrides(prefix: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Nested overrides from variables named ``{prefix}A__B__C``."""
    environ = os.environ if environ is None else environ
    out: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(prefix):
            continue
        path = key[len(prefix):].lower().split("__")
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = yaml.safe_load(raw) if raw != "" else ""
    return out


def load(cls: type[T], path: str | Path | None = None, *, env_prefix: str | None = None,
         overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> T:
    """Load ``cls`` from ``path`` (optional), then explicit ``overrides``, then the environment."""
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    if overrides:
        data = deep_merge(data, overrides)
    if env_prefix:
        data = deep_merge(data, env_overrides(env_prefix, environ))
    return from_dict(cls, data)
