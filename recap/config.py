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


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for i, k in enumerate(keys[:-1]):
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise ConfigError(f"override {dotted!r}: field '{'.'.join(keys[: i + 1])}' is not a section")
    data[keys[-1]] = value


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return merged


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None,
                defaults: dict | None = None) -> T:
    """Load ``cls`` from a YAML file and apply ``key=value`` overrides (values parsed as YAML).

    ``defaults`` (e.g. ``dataclasses.asdict`` of a preset) is the starting point that the file and the
    overrides update field by field; without it the dataclass defaults apply."""
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
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(raw))
    if defaults is not None:
        data = _merge(defaults, data)
    return from_dict(cls, data, where)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def describe(cls) -> list[tuple[str, str, str]]:
    """(field, default, help) rows of a config class, for docs and ``--help``."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        rows.append((f.name, repr(default), f.metadata.get("help", "")))
    return rows


def config_reference() -> str:
    """Markdown reference of every config class (``docs/configs.md`` is this text; a test keeps it so)."""
    from recap.data.mixture import MixtureConfig
    from recap.data.prefills import PrefillConfig
    from recap.eval.suite import BenchmarkSpec, SuiteConfig
    from recap.rewards.rubric import RubricConfig
    from recap.demo import DemoConfig
    from recap.eval.runner import EvalConfig
    from recap.generation import SamplingConfig
    from recap.toy.model import PretrainConfig, ToyModelConfig
    from recap.data.onpolicy import PrefillSourceConfig
    from recap.data.schedules import LengthSchedule
    from recap.train import TrainConfig

    parts = ["# Config reference", "",
             "Generated by `python -m recap.config` from the dataclasses; every field can be set in YAML or with "
             "`--set key=value`.", ""]
    for cls in (PrefillConfig, MixtureConfig, TrainConfig, PrefillSourceConfig, LengthSchedule, SuiteConfig, BenchmarkSpec, EvalConfig, SamplingConfig, RubricConfig,
                DemoConfig, PretrainConfig, ToyModelConfig):
        parts += [f"## `{cls.__name__}` ({cls.__module__})", "", (cls.__doc__ or "").strip(), "",
                  "| field | default | meaning |", "|---|---|---|"]
        for name, default, help_ in describe(cls):
            if "(" in default and "Config(" in default:
                default = default.split("(")[0]
            parts.append(f"| `{name}` | `{default}` | {help_.replace('|', '/')} |")
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(config_reference(), end="")
