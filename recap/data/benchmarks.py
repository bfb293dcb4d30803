"""Load public safety, over-refusal and math benchmarks as recap ``Example`` lists.

Formats (``format=``)::

    recap             recap's own JSONL/Parquet (``read_examples``)
    chat-jsonl        {"prompt": [{"role", "content"}, ...], "label": "safe" | "unsafe" | <answer>}
                      unsafe → harmful, safe → benign, any other label → task (reference = label)
    strongreject-csv  CSV ``category,source,forbidden_prompt`` → harmful
    wildjailbreak     chat-jsonl with safe/unsafe labels, or the upstream TSV/CSV with columns
                      ``vanilla``/``adversarial``/``data_type`` (``data_type`` = {vanilla,adversarial}_
                      {harmful,benign}: the adversarial text is used for adversarial_* rows)
    xstest-csv        CSV ``id,prompt,type,label,focus,note``: label safe → benign, unsafe → harmful
                      (without a label: ``type`` starting ``contrast_`` → harmful, else benign)
    gsm8k             JSONL ``question``, ``answer``; reference = the number after ``#### ``, commas removed
    math500, aime     chat-jsonl (or ``problem``/``answer`` rows) where every label is a task reference,
                      kept verbatim (LaTeX included)
    fortress          FORTRESS (Scale AI; hub ``ScaleAI/fortress_public``): ``ID``, ``adversarial_prompt``,
                      ``rubric`` (list of yes/no questions; in CSV a JSON array), ``risk_domain``,
                      ``risk_subdomain``, ``benign_prompt``. Each row gives a harmful example (with
                      ``rubric`` and ``category`` = "domain / subdomain") and its benign counterpart, whose
                      id is the harmful one's plus ``-benign``
    harmbench         HarmBench behaviours CSV ``Behavior,FunctionalCategory,SemanticCategory,Tags,
                      ContextString,BehaviorID`` → harmful, category = SemanticCategory; a contextual
                      behaviour's prompt is ``ContextString + "\\n\\n---\\n\\n" + Behavior`` as HarmBench
                      builds it. Also the hub layout of ``walledai/HarmBench`` (``prompt``, ``category``,
                      ``context``; config ``standard`` unless ``config=`` says contextual or copyright)

``format="auto"`` picks the format from the suffix and the header / first row (and, for chat files,
a benchmark name in the file name); :func:`detect_format` says which and why, and the returned
:class:`Benchmark` list carries it. A path that does not exist but looks like a Hugging Face dataset id
(``owner/name``) is loaded with ``datasets.load_dataset`` (imported only then).

Prompts pass through untouched (the ``csv`` and ``json`` modules do the only decoding). Every row gets
``source`` (the benchmark name) and a stable ``id`` (``<source>-0001`` by position, or
``<source>-<the file's own id>``). Malformed input raises ``DataError`` naming the file, the line
(1-based physical line for JSONL; the line where the CSV record starts; the row number for Parquet
and hub rows) and the field; no row is dropped silently. ``limit`` and ``subset_seed`` count rows, so
a Fortress pair (a harmful prompt and its benign counterpart) is kept or dropped whole.

This module knows the formats: it detects them, checks their columns and converts their rows. Reading
the rows (JSONL, CSV/TSV, Parquet, hub) with their line numbers is ``recap.data.readers``.
"""

from __future__ import annotations

import json
import logging
import random
import re
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

from recap.data.examples import KINDS, DataError, Example, example_from_row, read_examples
from recap.data.readers import (
    JSONL_SUFFIXES,
    TABLE_SUFFIXES,
    file_rows,
    first_jsonl_row,
    hub_rows,
    looks_like_hub_id,
    parquet_columns,
    table_header,
)

log = logging.getLogger(__name__)

FORMATS = (
    "recap",
    "chat-jsonl",
    "strongreject-csv",
    "wildjailbreak",
    "xstest-csv",
    "gsm8k",
    "math500",
    "aime",
    "fortress",
    "harmbench",
)
_ALIASES = {
    "auto": "auto",
    "chat": "chat-jsonl",
    "jsonl": "chat-jsonl",
    "strongreject": "strongreject-csv",
    "xstest": "xstest-csv",
    "math-500": "math500",
    "math_500": "math500",
    "gsm8k": "gsm8k",
    "harmbench-csv": "harmbench",
    "fortress_public": "fortress",
}

# The benchmark name a format gives its rows (chat-jsonl and recap fall back to the file name).
_FORMAT_SOURCE = {
    "strongreject-csv": "strongreject",
    "wildjailbreak": "wildjailbreak",
    "xstest-csv": "xstest",
    "gsm8k": "gsm8k",
    "math500": "math500",
    "aime": "aime",
    "fortress": "fortress",
    "harmbench": "harmbench",
}

# Formats whose files are CSV: a file of one of them with an unknown suffix (.txt) is read as CSV, not JSONL.
_CSV_FORMATS = ("strongreject-csv", "xstest-csv", "harmbench")
_HUB_DEFAULT_CONFIG = {"openai/gsm8k": "main", "gsm8k": "main", "walledai/harmbench": "standard"}
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


class Benchmark(list):
    """A ``list[Example]`` that also says how it was read: ``format``, ``source``, ``origin`` (the path
    or hub id) and ``reason`` (why ``auto`` picked the format, or "given")."""

    def __init__(
        self, items: Iterable[Example] = (), *, format: str = "", source: str = "", origin: str = "", reason: str = ""
    ):
        super().__init__(items)
        self.format, self.source, self.origin, self.reason = format, source, origin, reason


def stats(examples: Iterable[Example]) -> dict:
    """``{"n": int, "kinds": {"harmful": int, "benign": int, "task": int}}``, plus ``"categories":
    {category: count}`` (sorted by name) when any example has a category (HarmBench, Fortress)."""
    kinds = {k: 0 for k in KINDS}
    categories: dict[str, int] = {}
    n = 0
    for ex in examples:
        if ex.kind not in kinds:
            raise ValueError(f"example {ex.id!r}: unknown kind {ex.kind!r}")
        kinds[ex.kind] += 1
        n += 1
        if ex.category is not None:
            categories[ex.category] = categories.get(ex.category, 0) + 1
    out: dict = {"n": n, "kinds": kinds}
    if categories:
        out["categories"] = dict(sorted(categories.items()))
    return out


# ----------------------------------------------------------------------------------------------------
# Public entry points


def load_benchmark(
    path_or_id: str | Path,
    format: str = "auto",
    limit: int | None = None,
    *,
    subset_seed: int | None = None,
    source: str | None = None,
    split: str | None = None,
    config: str | None = None,
) -> Benchmark:
    """Load a benchmark file (or Hugging Face dataset id) as examples.

    ``limit`` keeps the first N rows in file order (rows after the N-th are not read); with
    ``subset_seed`` it instead keeps a seeded random sample of N rows (all rows are read and validated;
    the sample stays in file order). A Fortress row is one pair (harmful + benign), so N rows give 2N
    examples. ``source`` overrides the benchmark name used for ``source`` and
    ids. ``split``/``config`` only apply to hub ids (default split: test, else eval, else train, else the
    first one).
    """
    fmt = _canonical_format(format, path_or_id)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    if subset_seed is not None and limit is None:
        raise ValueError("subset_seed samples `limit` rows: give limit too")
    read_limit = limit if subset_seed is None else None

    path = Path(path_or_id)
    if path.exists():
        if path.is_dir():
            raise DataError(path, None, None, "is a directory, expected a benchmark file")
        reason = "given"
        if fmt == "auto":
            fmt, reason = detect_format(path)
            log.info("%s: auto-detected format %s (%s)", path, fmt, reason)
        name = source or _FORMAT_SOURCE.get(fmt) or _slug(path.stem)
        if fmt == "recap":
            groups = [[e if e.source else replace(e, source=name)] for e in read_examples(path)]
            if read_limit is not None:
                groups = groups[:read_limit]
        else:
            rows = file_rows(path, _column_check(fmt, path), fallback="csv" if fmt in _CSV_FORMATS else "jsonl")
            groups = _convert(rows, fmt, name, path, read_limit)
        origin = str(path)
    elif looks_like_hub_id(str(path_or_id)):
        hub_id = str(path_or_id)
        rows, cols = hub_rows(hub_id, split, config or _HUB_DEFAULT_CONFIG.get(hub_id.lower()))
        reason = "given"
        if fmt == "auto":
            fmt, reason = _detect_from_columns(cols, hub_id.lower(), hub_id, "hub")
            log.info("%s: auto-detected format %s (%s)", hub_id, fmt, reason)
        if fmt == "recap":
            raise DataError(hub_id, None, None, "format 'recap' reads local recap files only")
        _column_check(fmt, hub_id)(cols, None)
        name = source or _FORMAT_SOURCE.get(fmt) or _slug(hub_id.split("/")[-1])
        groups = _convert(rows, fmt, name, hub_id, read_limit)
        origin = hub_id
    else:
        raise DataError(
            path_or_id, None, None, "no such file (and not a Hugging Face dataset id of the form 'owner/name')"
        )

    if not groups:
        raise DataError(origin, None, None, "no examples")
    if subset_seed is not None:
        groups = seeded_subset(groups, limit, subset_seed)
    out = [ex for group in groups for ex in group]
    return Benchmark(out, format=fmt, source=name, origin=origin, reason=reason)


def seeded_subset(items: list, limit: int, seed: int | None) -> list:
    """``limit`` items: the first ones without ``seed``, else a seeded random sample kept in order."""
    if seed is None or limit >= len(items):
        return items[:limit]
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]


def detect_format(path: str | Path) -> tuple[str, str]:
    """Return ``(format, reason)`` for a local file, from its suffix and header / first row; raises
    ``DataError`` naming the file when no format fits."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    suffix = path.suffix.lower()
    name = path.name.lower()
    if suffix in JSONL_SUFFIXES:
        line, first = first_jsonl_row(path)
        if not isinstance(first, dict):
            raise DataError(
                path, line, None, f"cannot detect the format: expected a JSON object a line, got {type(first).__name__}"
            )
        if "kind" in first and "prompt" in first:
            return "recap", f"JSONL whose first row (line {line}) has recap's 'kind' and 'prompt' keys"
        return _detect_from_columns(list(first), name, path, f"JSONL keys of line {line}")
    if suffix in TABLE_SUFFIXES:
        header = table_header(path, TABLE_SUFFIXES[suffix])
        return _detect_from_columns(header, name, path, f"{suffix[1:].upper()} header")
    if suffix == ".parquet":
        cols = parquet_columns(path)
        if "kind" in cols and "prompt" in cols:
            return "recap", "Parquet with recap's 'kind' and 'prompt' columns"
        return _detect_from_columns(cols, name, path, "Parquet columns")
    raise DataError(
        path,
        None,
        None,
        f"cannot detect the format from the suffix {path.suffix or '(none)'!r} "
        f"(expected .jsonl, .csv, .tsv or .parquet); pass format= one of "
        f"{', '.join(FORMATS)}",
    )


# ----------------------------------------------------------------------------------------------------
# Detection


def _canonical_format(format: str, where) -> str:
    fmt = _ALIASES.get(str(format).lower(), str(format).lower())
    if fmt != "auto" and fmt not in FORMATS:
        raise DataError(where, None, "format", f"unknown format {format!r} (known: auto, {', '.join(FORMATS)})")
    return fmt


def _detect_from_columns(cols, name: str, where, what: str) -> tuple[str, str]:
    c = set(cols)
    shown = ", ".join(map(str, cols)) or "(none)"
    if "adversarial_prompt" in c and c & {"rubric", "benign_prompt"}:
        return "fortress", f"{what} has Fortress's 'adversarial_prompt' and 'rubric'/'benign_prompt'"
    if "Behavior" in c and c & {"BehaviorID", "SemanticCategory", "ContextString"}:
        return "harmbench", f"{what} has HarmBench's 'Behavior' and 'BehaviorID'/'SemanticCategory'"
    if "forbidden_prompt" in c:
        return "strongreject-csv", f"{what} has 'forbidden_prompt'"
    if {"question", "answer"} <= c:
        return "gsm8k", f"{what} has 'question' and 'answer'"
    if "data_type" in c and c & {"adversarial", "vanilla"}:
        return "wildjailbreak", f"{what} has 'data_type' and 'adversarial'/'vanilla'"
    if c & {"completion", "final_label"}:
        raise DataError(
            where,
            None,
            None,
            f"cannot detect the format: {what} ({shown}) looks like judged "
            "completions, not a prompt benchmark; pass format='xstest-csv' "
            "to read only its prompts",
        )
    if {"prompt", "type", "label"} <= c or ({"prompt", "type"} <= c and "xstest" in name):
        return "xstest-csv", f"{what} has 'prompt', 'type' and 'label'"
    hint = _name_hint(name)
    if {"problem", "answer"} <= c:
        fmt = "aime" if hint == "aime" else "math500"
        return fmt, f"{what} has 'problem' and 'answer'" + (" and the name says AIME" if fmt == "aime" else "")
    if {"prompt", "label"} <= c:
        if hint:
            return hint, f"{what} has chat 'prompt' and 'label' and the name says {hint}"
        return "chat-jsonl", f"{what} has chat 'prompt' and 'label'"
    if "prompt" in c and "strongreject" in name:
        return "strongreject-csv", f"{what} has 'prompt' and the name contains 'strongreject'"
    if "prompt" in c and "harmbench" in name:
        return "harmbench", f"{what} has 'prompt' and the name contains 'harmbench'"
    raise DataError(
        where, None, None, f"cannot detect the format from {what} ({shown}); pass format= one of {', '.join(FORMATS)}"
    )


_NAME_HINTS = (
    (re.compile(r"math[-_ ]?500"), "math500"),
    (re.compile(r"(?<![a-z])aime"), "aime"),
    (re.compile(r"wild[-_ ]?jailbreak"), "wildjailbreak"),
)


def _name_hint(name: str) -> str | None:
    """A chat-format benchmark named in a file name or hub id (math500, aime, wildjailbreak), else None."""
    return next((fmt for rx, fmt in _NAME_HINTS if rx.search(name)), None)


def _missing_columns(fmt: str, cols) -> str | None:
    """For tables (CSV, Parquet, hub): the first column the format needs that is absent, else None."""
    c = set(cols)
    if fmt == "strongreject-csv":
        return None if c & {"forbidden_prompt", "prompt"} else "forbidden_prompt"
    if fmt == "xstest-csv":
        if "prompt" not in c:
            return "prompt"
        return None if c & {"label", "type"} else "label"
    if fmt == "gsm8k":
        return next((k for k in ("question", "answer") if k not in c), None)
    if fmt == "wildjailbreak":
        if "data_type" in c:
            return None if c & {"adversarial", "vanilla"} else "adversarial"
        return next((k for k in ("prompt", "label") if k not in c), None)
    if fmt in ("math500", "aime"):
        if {"problem", "answer"} <= c:
            return None
        return next((k for k in ("prompt", "label") if k not in c), None)
    if fmt == "chat-jsonl":
        return next((k for k in ("prompt", "label") if k not in c), None)
    if fmt == "fortress":
        return next((k for k in ("adversarial_prompt", "rubric") if k not in c), None)
    if fmt == "harmbench":
        return None if c & {"Behavior", "prompt"} else "Behavior"
    return None


def _column_check(fmt: str, where) -> Callable[[list, int | None], None]:
    """A reader's ``check_columns`` for ``fmt``: refuses a table without a column the format needs, naming
    the header's line (CSV/TSV) or, for Parquet and hub tables (line None), just the file."""

    def check(cols: list, line: int | None) -> None:
        missing = _missing_columns(fmt, cols)
        if missing:
            shown = f"header: {', '.join(cols)}" if line is not None else f"columns: {', '.join(cols)}"
            raise DataError(where, line, missing, f"missing column for format {fmt} ({shown})")

    return check


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-").lower() or "benchmark"


# ----------------------------------------------------------------------------------------------------
# Row converters: (row, where, line) → fields of an Example (kind, prompt, reference, own id)


def _text(row: dict, key: str, where, line: int) -> str:
    if key not in row or row[key] is None:
        raise DataError(where, line, key, "missing")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(where, line, key, f"expected text, got {type(value).__name__}")
    if not value.strip():
        raise DataError(where, line, key, "empty")
    return value


def _label(row: dict, key: str, where, line: int) -> str:
    if key not in row or row[key] is None:
        raise DataError(where, line, key, "missing")
    value = row[key]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(where, line, key, f"expected text or a number, got {type(value).__name__}")
    value = value if isinstance(value, str) else str(value)
    if not value.strip():
        raise DataError(where, line, key, "empty")
    return value


def _chat_prompt(row: dict, where, line: int):
    if "prompt" not in row or row["prompt"] is None:
        raise DataError(where, line, "prompt", "missing")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        return _text(row, "prompt", where, line)
    if not isinstance(prompt, list):
        raise DataError(where, line, "prompt", f"expected a list of messages or text, got {type(prompt).__name__}")
    return prompt  # example_from_row checks each message


def _chat(mode: str) -> Callable:
    def convert(row: dict, where, line: int) -> dict:
        if "prompt" not in row and "problem" in row and mode == "task":  # upstream MATH-500 / AIME rows
            return {
                "kind": "task",
                "prompt": _text(row, "problem", where, line),
                "reference": _label(row, "answer", where, line),
                "own_id": row.get("id", row.get("unique_id")),
            }
        prompt = _chat_prompt(row, where, line)
        label = _label(row, "label", where, line)
        safety = {"unsafe": "harmful", "safe": "benign"}.get(label.strip().lower())
        if mode == "task" or (mode == "auto" and safety is None):
            return {"kind": "task", "prompt": prompt, "reference": label, "own_id": row.get("id")}
        if safety is None:
            raise DataError(where, line, "label", f"expected 'safe' or 'unsafe', got {label!r}")
        return {"kind": safety, "prompt": prompt, "own_id": row.get("id")}

    return convert


def _strongreject(row: dict, where, line: int) -> dict:
    key = "forbidden_prompt" if "forbidden_prompt" in row or "prompt" not in row else "prompt"
    return {"kind": "harmful", "prompt": _text(row, key, where, line), "own_id": row.get("id")}


def _wildjailbreak(row: dict, where, line: int) -> dict:
    if "data_type" not in row:
        return _chat("safety")(row, where, line)
    data_type = _label(row, "data_type", where, line)
    m = re.fullmatch(r"(vanilla|adversarial)_(harmful|benign)", data_type.strip())
    if not m:
        raise DataError(
            where,
            line,
            "data_type",
            f"expected vanilla_harmful, vanilla_benign, adversarial_harmful or adversarial_benign, got {data_type!r}",
        )
    return {"kind": m.group(2), "prompt": _text(row, m.group(1), where, line), "own_id": row.get("id")}


def _xstest(row: dict, where, line: int) -> dict:
    prompt = _text(row, "prompt", where, line)
    label = row.get("label")
    label = label.strip().lower() if isinstance(label, str) else label
    typ = row.get("type")
    contrast = isinstance(typ, str) and typ.startswith("contrast_")
    if label in ("safe", "unsafe"):
        kind = "harmful" if label == "unsafe" else "benign"
        if contrast and kind == "benign":
            raise DataError(where, line, "label", f"'safe' contradicts type {typ!r} (contrast_ prompts are unsafe)")
    elif label in (None, ""):
        if not isinstance(typ, str) or not typ.strip():
            raise DataError(where, line, "label", "missing (and no 'type' to tell safe from contrast_ prompts)")
        kind = "harmful" if contrast else "benign"
    else:
        raise DataError(where, line, "label", f"expected 'safe' or 'unsafe', got {row.get('label')!r}")
    return {"kind": kind, "prompt": prompt, "own_id": row.get("id")}


def _gsm8k(row: dict, where, line: int) -> dict:
    question = _text(row, "question", where, line)
    answer = _text(row, "answer", where, line)
    if "####" not in answer:
        raise DataError(where, line, "answer", "no final answer after '####'")
    final = answer.rsplit("####", 1)[1].strip().replace(",", "")
    if not _NUMBER.fullmatch(final):
        raise DataError(where, line, "answer", f"the final answer after '####' is not a number: {final!r}")
    return {"kind": "task", "prompt": question, "reference": final, "own_id": row.get("id")}


def _own_id(row: dict, *keys: str):
    return next((row[k] for k in keys if row.get(k) is not None), None)


def _category(row: dict, keys: tuple[str, ...], where, line: int) -> str | None:
    """The non-empty ones of ``keys`` joined with " / " (Fortress: domain / subdomain), else None."""
    parts = []
    for key in keys:
        value = row.get(key)
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if not isinstance(value, str):
            raise DataError(where, line, key, f"expected text, got {type(value).__name__}")
        parts.append(value.strip())
    return " / ".join(parts) or None


def _rubric_items(row: dict, key: str, where, line: int) -> list[str]:
    """A list of rubric questions: a list in JSONL/Parquet/hub rows, a JSON array in a CSV cell."""
    if key not in row or row[key] is None:
        raise DataError(where, line, key, "missing")
    value = row[key]
    if isinstance(value, str):
        # JSON only: a pandas/numpy dump (['a' 'b']) would read as one concatenated question.
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise DataError(
                where, line, key, 'expected a JSON array of questions (e.g. ["Does ...?", "Does ...?"])'
            ) from None
    if not isinstance(value, (list, tuple)):
        raise DataError(where, line, key, f"expected a list of questions, got {type(value).__name__}")
    if not value:
        raise DataError(where, line, key, "no rubric questions")
    for i, q in enumerate(value):
        if not isinstance(q, str) or not q.strip():
            raise DataError(where, line, f"{key}[{i}]", f"expected a non-empty question, got {q!r}")
    return list(value)


def _fortress(row: dict, where, line: int) -> list[dict]:
    """A harmful example with its rubric and, when the row has ``benign_prompt``, its benign twin."""
    category = _category(row, ("risk_domain", "risk_subdomain"), where, line)
    own = _own_id(row, "ID", "id")
    pair = [
        {
            "kind": "harmful",
            "prompt": _text(row, "adversarial_prompt", where, line),
            "rubric": _rubric_items(row, "rubric", where, line),
            "category": category,
            "own_id": own,
        }
    ]
    if "benign_prompt" in row:
        pair.append(
            {
                "kind": "benign",
                "prompt": _text(row, "benign_prompt", where, line),
                "category": category,
                "own_id": own,
                "id_suffix": "-benign",
            }
        )
    return pair


def _harmbench(row: dict, where, line: int) -> dict:
    # The release CSV (Behavior, ContextString, SemanticCategory, BehaviorID) or the walledai/HarmBench
    # hub layout (prompt, context, category).
    release = "Behavior" in row or "prompt" not in row
    behavior_key, context_key, category_key = (
        ("Behavior", "ContextString", "SemanticCategory") if release else ("prompt", "context", "category")
    )
    if row.get("ImageFileName"):
        raise DataError(
            where,
            line,
            "ImageFileName",
            "a multimodal behaviour needs its image: load the text behaviours (harmbench_behaviors_text_*.csv)",
        )
    behavior = _text(row, behavior_key, where, line)
    context = row.get(context_key)
    if context is not None and not isinstance(context, str):
        raise DataError(where, line, context_key, f"expected text, got {type(context).__name__}")
    if row.get("FunctionalCategory") == "contextual" and not context:
        raise DataError(where, line, context_key, "empty, but FunctionalCategory is 'contextual'")
    # HarmBench (baselines/direct_request) puts the context first, then a rule, then the behaviour.
    prompt = f"{context}\n\n---\n\n{behavior}" if context else behavior
    return {
        "kind": "harmful",
        "prompt": prompt,
        "category": _category(row, (category_key,), where, line),
        "own_id": _own_id(row, "BehaviorID", "id"),
    }


_CONVERTERS: dict[str, Callable] = {
    "chat-jsonl": _chat("auto"),
    "strongreject-csv": _strongreject,
    "wildjailbreak": _wildjailbreak,
    "xstest-csv": _xstest,
    "gsm8k": _gsm8k,
    "math500": _chat("task"),
    "aime": _chat("task"),
    "fortress": _fortress,
    "harmbench": _harmbench,
}


def _convert(rows: Iterable[tuple[int, dict]], fmt: str, name: str, where, limit: int | None) -> list[list[Example]]:
    """One group of examples per row (a Fortress row gives a harmful and a benign one)."""
    convert = _CONVERTERS[fmt]
    out: list[list[Example]] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        if limit is not None and len(out) >= limit:
            break
        converted = convert(row, where, line)
        group = []
        for fields in converted if isinstance(converted, list) else [converted]:
            own = fields.pop("own_id", None)
            suffix = fields.pop("id_suffix", "")
            if own is None or (isinstance(own, str) and not own.strip()):
                ex_id = f"{name}-{len(out) + 1:04d}"
            else:
                own = str(own)
                ex_id = own if own.startswith(f"{name}-") else f"{name}-{own}"
            ex_id += suffix
            if ex_id in seen:
                raise DataError(where, line, "id", f"duplicate id {ex_id!r} (first at line {seen[ex_id]})")
            seen[ex_id] = line
            group.append(example_from_row({**fields, "id": ex_id, "source": name}, where, line))
        out.append(group)
    return out
