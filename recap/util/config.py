"""Typed dataclass configs loaded from YAML.

Every config in recap is a dataclass whose fields carry ``metadata={"help": ...}``. ``load_config``
fills one from a YAML mapping (nested dataclasses included), rejects unknown keys and wrong types with
a message naming the file and the field, and applies ``key.sub=value`` overrides from the CLI.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if origin is typing.Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and {"on", "off"} <= set(choices):
            value = "on" if value else "off"  # YAML 1.1 reads an unquoted on / off as a boolean
        if value not in choices or isinstance(value, bool):
            raise ConfigError(f"{where}: expected one of {', '.join(map(str, choices))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (arg,) = typing.get_args(tp)[:1] or (Any,)
        return [_coerce(v, arg, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads 2e-3 (no dot) as text
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ``ConfigError``."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        name = sorted(unknown)[0]
        close = difflib.get_close_matches(name, sorted(known), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(f"{where}: unknown field '{name}' ({hint}known: {', '.join(sorted(known))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}: field '{k}'") for k, v in data.items()}
    return cls(**kwargs)


def _unwrap(tp: Any) -> Any:
    """``X`` for ``X | None``; other types unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        dataclass_args = [a for a in args if dataclasses.is_dataclass(a)]
        return dataclass_args[0] if len(dataclass_args) == 1 else tp
    return tp


def _plain(value: Any) -> Any:
    """A field default as the plain data a YAML file would hold."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return _plain(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return _plain(f.default_factory())
    return None


def _set_override(cls: type, data: dict, item: str, dotted: str, value: Any) -> None:
    """Set ``dotted`` (``a.b``, list items by index: ``benchmarks.0.limit``) to ``value`` in ``data``, checking
    each step against the fields of ``cls``; an unknown field or a bad index names the override."""
    keys = dotted.split(".")
    node: Any = data
    tp: Any = cls
    for i, key in enumerate(keys):
        here, last = ".".join(keys[: i + 1]), i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(
                    f"--set {item}: '{here}': no item {key} (the list has {len(node)} item(s), numbered from 0)"
                )
            if last:
                node[int(key)] = value
                return
            node, tp = node[int(key)], _unwrap((typing.get_args(tp) or (Any,))[0])
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item}: '{'.'.join(keys[:i])}' is not a section")
        if dataclasses.is_dataclass(tp):
            known = {f.name: f for f in dataclasses.fields(tp)}
            if key not in known:
                close = difflib.get_close_matches(key, sorted(known), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ConfigError(
                    f"--set {item}: unknown field '{here}'{hint}; known in this section: {', '.join(sorted(known))}"
                )
            if not last and node.get(key) is None:
                default = _field_default(known[key])
                node[key] = {} if default is None else default  # an optional section left empty by default
            tp = _unwrap(typing.get_type_hints(tp)[key])
        else:  # a free-form mapping (e.g. judges per kind): any key
            tp = Any
        if last:
            node[key] = value
            return
        node = node.setdefault(key, {})


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return merged


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None, defaults: dict | None = None
) -> T:
    """Load ``cls`` from a YAML file and apply ``key=value`` overrides (values parsed as YAML; dotted keys
    for nested fields, numbers for list items: ``benchmarks.0.limit=20``).

    ``defaults`` (e.g. ``dataclasses.asdict`` of a preset) is the starting point that the file and the
    overrides update field by field; without it the dataclass defaults apply. An override naming an
    unknown field is reported as that override (with the closest field name)."""
    data: dict = {}
    where = "defaults"
    if path is not None:
        where = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark else ""
            raise ConfigError(f"{path}{line}: not valid YAML ({getattr(e, 'problem', e)})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = loaded
    if defaults is not None:
        data = _merge(defaults, data)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item}: the value is not valid YAML ({getattr(e, 'problem', e)})") from None
        _set_override(cls, data, item, key.strip(), value)
    return from_dict(cls, data, where + (" (with --set overrides)" if overrides else ""))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def describe(cls) -> list[tuple[str, str, str]]:
    """(field, default, help) rows of a config class, for docs and ``--help``."""
    rows = []
    for f in dataclasses.fields(cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        )
        rows.append((f.name, repr(default), f.metadata.get("help", "")))
    return rows
