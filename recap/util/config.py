"""Typed dataclass configs loaded from YAML.

Every config in recap is a dataclass whose fields carry ``metadata={"help": ...}``. ``load_config``
fills one from a YAML mapping (nested dataclasses included), rejects unknown keys and wrong types with
a message naming the file, the line of the key and the field (``train.yaml:7: field 'max_steps': …``; an
unknown key with the closest fields of its own section), and applies ``key.sub=value`` overrides from the CLI
(a wrong value they set names the override: ``--set max_steps=ten: …``).

Every number a config holds is range-checked as it loads: a numeric field declares its allowed values in
interval notation, ``metadata={"help": ..., "range": "[1, inf)"}`` (``(0, 1]``, ``[0, 1]``,
``(-inf, inf)`` for any finite number), and each of its numbers (list items and mapping values included)
must lie in it. NaN never does; ±inf only where the interval closes on it (``[0, inf]``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    pass


_INTERVAL = re.compile(r"\s*([\[(])\s*([^,\s]+)\s*,\s*([^,\s]+)\s*([\])])\s*")


@dataclasses.dataclass(frozen=True)
class Range:
    """The allowed values of a numeric field, parsed from its ``metadata["range"]`` (interval notation)."""

    lo: float
    hi: float
    lo_closed: bool
    hi_closed: bool

    def __str__(self) -> str:
        lo, hi = _number_text(self.lo), _number_text(self.hi)
        low, high = self.lo > -math.inf, self.hi < math.inf
        if low and high:
            text = f"in {'[' if self.lo_closed else '('}{lo}, {hi}{']' if self.hi_closed else ')'}"
        elif low:
            text = f"{'≥' if self.lo_closed else '>'} {lo}"
        elif high:
            text = f"{'≤' if self.hi_closed else '<'} {hi}"
        else:
            text = ""
        allowed = [s for s, ok in (("-inf", not low and self.lo_closed), ("inf", not high and self.hi_closed)) if ok]
        if allowed:
            return f"{text or 'a number'} ({' and '.join(allowed)} allowed)"
        return text or "finite"

    def problem(self, x: float) -> str | None:
        """Why ``x`` is not allowed (``must be …``), or None."""
        inside = (self.lo <= x if self.lo_closed else self.lo < x) and (x <= self.hi if self.hi_closed else x < self.hi)
        if inside:
            return None
        text = str(self)
        if math.isnan(x) or math.isinf(x):
            kind = "a number" if math.isnan(x) else "a finite number"
            if text != "finite" and not text.startswith("a number"):
                kind += f" {text}"
            return f"must be {kind}, got {x}"
        return f"must be {text}, got {x}"


def _number_text(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return str(int(x)) if x == int(x) else repr(x)


@functools.lru_cache(maxsize=None)
def parse_range(spec: str) -> Range:
    """``Range`` of an interval such as ``"[1, inf)"``, ``"(0, 1]"`` or ``"[0, inf]"`` (inf allowed)."""
    m = _INTERVAL.fullmatch(spec)
    lo = hi = math.nan
    if m is not None:
        try:
            lo, hi = float(m.group(2)), float(m.group(3))
        except ValueError:
            pass
    if m is None or math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"range {spec!r}: expected an interval such as '[1, inf)' or '(0, 1]'")
    if lo > hi:
        raise ValueError(f"range {spec!r}: the lower bound exceeds the upper one")
    return Range(lo, hi, m.group(1) == "[", m.group(4) == "]")


_ANY_FINITE = Range(-math.inf, math.inf, False, False)


def numeric_type(tp: Any) -> bool:
    """Whether values of type ``tp`` hold numbers (``int``, ``float``, lists, tuples or mappings of them,
    optionally in a union); nested dataclasses are checked on their own, ``Any`` not at all."""
    if tp in (int, float):
        return True
    if dataclasses.is_dataclass(tp) or tp in (Any, object):
        return False
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType, list, tuple):
        return any(numeric_type(a) for a in typing.get_args(tp) if a is not Ellipsis)
    if origin is dict:
        args = typing.get_args(tp)
        return len(args) == 2 and numeric_type(args[1])
    return False


def field_range(f: dataclasses.Field) -> Range | None:
    """The declared range of a dataclass field (``metadata["range"]``), or None."""
    spec = f.metadata.get("range")
    return None if spec is None else parse_range(spec)


def _check_numbers(value: Any, rng: Range, where: str | _Where) -> None:
    """Every number in ``value`` (itself, list items, mapping values) must lie in ``rng``."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, (int, float)):
        problem = rng.problem(value)
        if problem:
            raise ConfigError(f"{where}: {problem}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_numbers(v, rng, _down(where, i, f"[{i}]"))
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, rng, _down(where, k, f"[{k!r}]"))


def _check_field(f: dataclasses.Field, tp: Any, value: Any, where: str | _Where) -> None:
    rng = field_range(f)
    if rng is not None or numeric_type(tp):
        _check_numbers(value, rng or _ANY_FINITE, where)


def check_ranges(cfg: Any, where: str = "config") -> None:
    """Raise ``ConfigError`` naming the field for a number outside its declared range (or NaN / ±inf) in
    the dataclass instance ``cfg`` and the dataclasses it nests: the check ``load_config`` does, for a config
    built in Python."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value, here = getattr(cfg, f.name), f"{where}: field '{f.name}'"
        _check_field(f, hints[f.name], value, here)
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                if dataclasses.is_dataclass(v) and not isinstance(v, type):
                    check_ranges(v, f"{here}[{i}]")
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_ranges(value, here)


def _coerce(value: Any, tp: Any, where: str | _Where) -> Any:
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
        return [_coerce(v, arg, _down(where, i, f"[{i}]")) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] not in (Any, object):
            return {k: _coerce(v, args[1], _down(where, k, f"[{k!r}]")) for k, v in value.items()}
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


class _Where:
    """Where a value of a config sits, for messages: the label of its source (``train.yaml:7`` for a key read
    from a file, ``--set max_steps=ten`` for an override, else ``default``) followed by the chain of fields
    that leads to it (``: field 'sampling': field 'top_p'``). ``labels`` maps key paths (field names, list
    indices) to labels; a value without its own takes that of the closest enclosing key."""

    def __init__(self, default: str, root: type, labels: dict | None = None, path: tuple = (), chain: str = ""):
        self.default, self.root, self.labels, self.path, self.chain = default, root, labels or {}, path, chain

    def label(self) -> str:
        for n in range(len(self.path), 0, -1):
            label = self.labels.get(self.path[:n])
            if label is not None:
                return label
        return self.default

    def __str__(self) -> str:
        return f"{self.label()}{self.chain}"

    def down(self, step: Any, text: str) -> _Where:
        """The place of item or field ``step`` of this value, ``text`` added to the chain."""
        return _Where(self.default, self.root, self.labels, (*self.path, step), self.chain + text)

    def at(self, step: Any) -> _Where:
        """The chain of this value, labelled as its key ``step`` (for a message about that key)."""
        return _Where(self.default, self.root, self.labels, (*self.path, step), self.chain)


def _down(where: str | _Where, step: Any, text: str) -> str | _Where:
    return where.down(step, text) if isinstance(where, _Where) else f"{where}{text}"


def _closeness(name: str, field_name: str) -> tuple[float, float]:
    """How close a mistyped ``name`` is to ``field_name``: the best similarity to the whole name or to a run
    of its ``_``-separated words (``stpes`` is close to ``max_steps`` through ``steps``), then to the whole."""
    whole = difflib.SequenceMatcher(None, name, field_name).ratio()
    words = field_name.split("_") if len(name) >= 3 else []
    runs = ["_".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)]
    return max([whole, *(difflib.SequenceMatcher(None, name, r).ratio() for r in runs)]), whole


def _closest(name: str, candidates: list[str], key=lambda c: c) -> list[str]:
    """The candidates closest to ``name`` (ties all, at most 3, the likeliest first), none below 0.6."""
    scored = sorted(((_closeness(name, key(c)), c) for c in candidates), key=lambda s: (-s[0][0], -s[0][1], s[1]))
    if not scored or scored[0][0][0] < 0.6:
        return []
    return [c for (best, _), c in scored if best == scored[0][0][0]][:3]


def _field_paths(cls: type, prefix: str = "", outer: tuple = ()) -> list[str]:
    """The dotted paths of the fields of ``cls`` and of the sections (dataclass fields) it nests."""
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        paths.append(prefix + f.name)
        tp = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(tp) and tp not in (*outer, cls):
            paths.extend(_field_paths(tp, f"{prefix}{f.name}.", (*outer, cls)))
    return paths


def _did_you_mean(name: str, section: type, root: type, prefix: str, dotted: bool) -> str:
    """``did you mean 'x'?`` for an unknown field ``name`` of ``section`` (at dotted ``prefix`` in ``root``):
    the closest fields of that section, else the closest fields elsewhere in ``root`` (as dotted paths);
    '' when none is close. ``dotted``: name the section's own fields by their dotted path too."""
    names = [f.name for f in dataclasses.fields(section)]
    close = [f"{prefix}{c}" if dotted else c for c in _closest(name, names)]
    if not close:
        here = {prefix + n for n in names}
        others = [p for p in _field_paths(root) if p not in here]
        close = _closest(name, others, key=lambda p: p.rsplit(".", 1)[-1])
    if not close:
        return ""
    quoted = [f"'{c}'" for c in close]
    listed = f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
    return f"did you mean {listed}?"


def from_dict(cls: type[T], data: dict, where: str | _Where = "config") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ``ConfigError``."""
    if not isinstance(where, _Where):
        where = _Where(where, cls)
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        name = sorted(unknown)[0]
        section = ".".join(str(p) for p in where.path)
        hint = _did_you_mean(name, cls, where.root, f"{section}." if section else "", dotted=False)
        hint = f"{hint} " if hint else ""
        raise ConfigError(f"{where.at(name)}: unknown field '{name}' ({hint}known: {', '.join(sorted(known))})")
    here = {k: where.down(k, f": field '{k}'") for k in data}
    kwargs = {k: _coerce(v, hints[k], here[k]) for k, v in data.items()}
    for f in dataclasses.fields(cls):
        if f.name in kwargs:  # before the class's own checks, whose messages name no file
            _check_field(f, hints[f.name], kwargs[f.name], here[f.name])
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


def _set_override(cls: type, data: dict, item: str, dotted: str, value: Any) -> tuple:
    """Set ``dotted`` (``a.b``, list items by index: ``benchmarks.0.limit``) to ``value`` in ``data``, checking
    each step against the fields of ``cls``; an unknown field or a bad index names the override. Returns the
    key path set (list indices as ints)."""
    keys = dotted.split(".")
    node: Any = data
    tp: Any = cls
    path: list = []
    for i, key in enumerate(keys):
        here, last = ".".join(keys[: i + 1]), i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(
                    f"--set {item}: '{here}': no item {key} (the list has {len(node)} item(s), numbered from 0)"
                )
            path.append(int(key))
            if last:
                node[int(key)] = value
                return tuple(path)
            node, tp = node[int(key)], _unwrap((typing.get_args(tp) or (Any,))[0])
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"--set {item}: '{'.'.join(keys[:i])}' is not a section")
        if dataclasses.is_dataclass(tp):
            known = {f.name: f for f in dataclasses.fields(tp)}
            if key not in known:
                section = ".".join(keys[:i])
                hint = _did_you_mean(key, tp, cls, f"{section}." if section else "", dotted=True)
                hint = f" ({hint})" if hint else ""
                raise ConfigError(
                    f"--set {item}: unknown field '{here}'{hint}; known in this section: {', '.join(sorted(known))}"
                )
            if not last and node.get(key) is None:
                default = _field_default(known[key])
                node[key] = {} if default is None else default  # an optional section left empty by default
            tp = _unwrap(typing.get_type_hints(tp)[key])
        else:  # a free-form mapping (e.g. judges per kind): any key
            tp = Any
        path.append(key)
        if last:
            node[key] = value
            return tuple(path)
        node = node.setdefault(key, {})


def _merge(base: dict, extra: dict) -> dict:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return merged


def _yaml_with_lines(text: str) -> tuple[Any, dict[tuple, int]]:
    """What ``yaml.safe_load`` reads from ``text``, and the line of each mapping key and list item, by key
    path (``("sampling", "top_p")``, ``("benchmarks", 0)``)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}

    def walk(node: yaml.Node, path: tuple, inside: set[int]) -> None:
        if id(node) in inside:  # an alias of an enclosing node
            return
        inside = inside | {id(node)}
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    lines[(*path, key_node.value)] = key_node.start_mark.line + 1
                    walk(value_node, (*path, key_node.value), inside)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                walk(item, (*path, i), inside)

    if node is not None:
        walk(node, (), set())
    return data, lines


def _utf8_text(path: Path) -> str:
    """The text of ``path``; bytes that are not UTF-8 raise ``ConfigError`` naming the file, the line and the byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x} at byte {e.start - line_start + 1} of the line)"
        ) from None


def split_overrides(sets: list[str], sections: tuple[str, ...]) -> tuple[list[str], dict[str, list[str]]]:
    """``--set`` items for this config, and those addressed to a separately loaded section (``train.max_steps=10``
    for a sub-config ``train``; ``endpoint.timeout_s=30``) by section, with the section name taken off."""
    overrides: dict[str, list[str]] = {}
    own = []
    for s in sets:
        head, _, rest = s.partition(".")
        if head in sections and rest and "=" in rest and "=" not in head:
            overrides.setdefault(head, []).append(rest)
        else:
            own.append(s)
    return own, overrides


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None, defaults: dict | None = None
) -> T:
    """Load ``cls`` from a YAML file and apply ``key=value`` overrides (values parsed as YAML; dotted keys
    for nested fields, numbers for list items: ``benchmarks.0.limit=20``).

    ``defaults`` (e.g. ``dataclasses.asdict`` of a preset) is the starting point that the file and the
    overrides update field by field; without it the dataclass defaults apply. An override naming an
    unknown field is reported as that override (with the closest field name). A wrong value names the line
    of its key in the file (``train.yaml:7: field 'max_steps': …``), or the override that set it."""
    data: dict = {}
    where = "defaults"
    labels: dict[tuple, str] = {}
    if path is not None:
        where = str(path)
        try:
            loaded, lines = _yaml_with_lines(_utf8_text(Path(path)))
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
        labels = {keys: f"{path}:{line}" for keys, line in lines.items()}
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
        keys = _set_override(cls, data, item, key.strip(), value)
        labels = {k: v for k, v in labels.items() if k[: len(keys)] != keys}  # the file's keys it replaced
        labels[keys] = f"--set {item}"
    return from_dict(cls, data, _Where(where + (" (with --set overrides)" if overrides else ""), cls, labels))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def describe(cls) -> list[tuple[str, str, str]]:
    """(field, default, help) rows of a config class, for docs and ``--help``; the help of a field with a
    declared range ends with it (``Range: ≥ 1.``)."""
    rows = []
    for f in dataclasses.fields(cls):
        default = (
            f.default
            if f.default is not dataclasses.MISSING
            else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "required")
        )
        help_, rng = f.metadata.get("help", ""), field_range(f)
        if rng is not None:
            help_ = f"{help_} Range: {str(rng).removeprefix('in ')}.".lstrip()
        rows.append((f.name, repr(default), help_))
    return rows
