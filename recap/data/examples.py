"""Examples of the three kinds, and their JSONL/Parquet files.

One row of a recap data file::

    {"id": "sr-0001", "kind": "harmful" | "benign" | "task",
     "prompt": "text" | [{"role": "user", "content": "..."}, ...],
     "reference": "42" | null,                 # task answer
     "counter_reasoning": "..." | null,        # counter-aligned reasoning available for prefilling
     "counter_source": "..." | null,           # which generator wrote it
     "counter_complete": true | false | null,  # the reasoning ended on its own (false: cut by the token budget)
     "prefill": "..." | null,                  # set by the mixture: the truncated prefill actually used
     "prefill_words": 500 | null, "prefill_source": "..." | null, "seed": 0 | null,
     "source": "strongreject" | ...,
     "category": "..." | null,                 # benchmark category (HarmBench, StrongREJECT, Fortress)
     "rubric": ["...", ...] | null}            # instance-specific rubric items (Fortress)

Reading validates every row and stops at the first bad one with ``file:line: field 'x': why``;
nothing is dropped silently.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from recap.util.errors import DataError

KINDS = ("harmful", "benign", "task")


@dataclass
class Example:
    """One prompt of the RECAP world, with provenance."""

    id: str
    kind: str
    prompt: str | list[dict]
    reference: str | None = None
    counter_reasoning: str | None = None
    counter_source: str | None = None
    prefill: str | None = None
    prefill_words: int | None = None
    prefill_source: str | None = None
    seed: int | None = None
    source: str | None = None
    counter_complete: bool | None = None  # counter_reasoning ended on its own (False: cut by the generator's budget)
    category: str | None = None
    rubric: list[str] | None = None  # instance-specific rubric items (Fortress): yes = the answer has that harm

    def messages(self) -> list[dict]:
        """The conversation to render (a plain-text prompt is one user message)."""
        if isinstance(self.prompt, str):
            return [{"role": "user", "content": self.prompt}]
        return list(self.prompt)

    def user_text(self) -> str:
        return next((m["content"] for m in reversed(self.messages()) if m["role"] == "user"), "")


_FIELDS = {f.name for f in fields(Example)}


def example_from_row(row: dict, path: str | Path = "<memory>", line: int | None = None) -> Example:
    """Validate one decoded row into an ``Example`` (raises ``DataError`` naming the field)."""
    if not isinstance(row, dict):
        raise DataError(path, line, None, f"expected a JSON object, got {type(row).__name__}")
    for key in ("prompt", "kind"):
        if key not in row or row[key] is None:
            raise DataError(path, line, key, "missing")
    kind = row["kind"]
    if kind not in KINDS:
        raise DataError(path, line, "kind", f"unknown kind {kind!r} (expected one of {', '.join(KINDS)})")
    prompt = row["prompt"]
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(path, line, "prompt", "empty prompt")
    elif isinstance(prompt, list):
        if not prompt:
            raise DataError(path, line, "prompt", "empty conversation")
        for i, m in enumerate(prompt):
            if not isinstance(m, dict) or "role" not in m or not isinstance(m.get("content"), str):
                raise DataError(path, line, f"prompt[{i}]", "each message needs 'role' and string 'content'")
        if not any(m["role"] == "user" and m["content"].strip() for m in prompt):
            raise DataError(path, line, "prompt", "no non-empty user message")
    else:
        raise DataError(path, line, "prompt", f"expected text or a list of messages, got {type(prompt).__name__}")
    if kind == "task" and row.get("reference") in (None, ""):
        raise DataError(path, line, "reference", "a task example needs its reference answer")
    unknown = set(row) - _FIELDS
    if unknown:
        raise DataError(path, line, sorted(unknown)[0], f"unknown field (known: {', '.join(sorted(_FIELDS))})")
    row = dict(row)
    row.setdefault("id", f"{Path(str(path)).stem}-{line}")
    row["id"] = str(row["id"])
    if row.get("reference") is not None:
        row["reference"] = str(row["reference"])
    return Example(**row)


def read_examples(path: str | Path) -> list[Example]:
    """Read a recap JSONL or Parquet file, validating every row."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, None, None, "no such file")
    if path.suffix.lower() in (".csv", ".tsv") or _looks_like_a_table(path):
        raise DataError(
            path,
            1,
            None,
            "a CSV/TSV table, not a recap examples file (JSONL or Parquet). Benchmark "
            "files are read by `recap data stats FILE --format auto` (see its --format list) and by "
            "evaluation suites; `recap data prefill FILE --out examples.jsonl` turns one into recap "
            "examples",
        )
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        out = []
        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises its own error types for a damaged or non-Parquet file
            raise DataError(path, None, None, f"not a readable Parquet file ({type(e).__name__}: {e})") from None
        for i, r in enumerate(table.to_pylist(), start=1):
            r = {k: v for k, v in r.items() if v is not None}
            if isinstance(r.get("prompt"), str):
                try:
                    r["prompt"] = json.loads(r["prompt"])
                except json.JSONDecodeError:
                    raise DataError(path, i, "prompt", "not JSON-encoded (write Parquet with recap)") from None
            out.append((i, example_from_row(r, path, i)))
    else:
        out = [(n, example_from_row(row, path, n)) for n, row in iter_jsonl(path)]
    if not out:
        raise DataError(path, None, None, "no examples")
    seen: dict[str, int] = {}
    for line, ex in out:
        if ex.id in seen:
            raise DataError(path, line, "id", f"duplicate id {ex.id!r} (first on line {seen[ex.id]})")
        seen[ex.id] = line
    return [ex for _, ex in out]


def _looks_like_a_table(path: Path) -> bool:
    """A file whose first line is a comma- or tab-separated header rather than a JSON object."""
    if path.suffix == ".parquet":
        return False
    try:
        with path.open("rb") as fh:
            first = fh.readline(4096).decode("utf-8", errors="replace").strip()
    except OSError:
        return False
    return bool(first) and not first.startswith(("{", "[")) and ("," in first or "\t" in first)


def iter_jsonl(path: str | Path):
    """``(line number, decoded object)`` for every non-blank line of a JSONL file; a line that is not
    JSON raises ``DataError`` naming the file and the line. Lines end at ``\n`` only, so separators such
    as U+2028 inside a prompt stay in it."""
    with Path(path).open("rb") as fh:
        for n, data in enumerate(fh, start=1):
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(
                    path, n, None, f"not UTF-8 text (byte {data[e.start]:#04x} at byte {e.start + 1} of the line)"
                ) from None
            if not raw.strip():
                continue
            try:
                yield n, json.loads(raw)
            except json.JSONDecodeError as e:
                raise DataError(path, n, None, f"not valid JSON ({e.msg} at column {e.colno})") from None


def csv_records(path: str | Path, reader):
    """``(line where the record starts, values)`` for every record of a ``csv.reader`` over ``path``
    (quoted records may span several lines); a CSV syntax error raises ``DataError`` naming that line."""
    start = 1
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(path, start, None, f"not valid CSV ({e})") from None
        line, start = start, reader.line_num + 1
        yield line, values


def write_examples(path: str | Path, examples: list[Example]) -> Path:
    """Write examples as JSONL (``.jsonl``) or Parquet (``.parquet``); the format follows the suffix.
    The file appears whole or not at all (``recap.util.files.atomic_write``)."""
    from recap.util.files import atomic_write

    path = Path(path)  # atomic_write makes the folder and names this path in a disk error
    rows = [asdict(e) for e in examples]
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        # Prompts can be text or message lists: Parquet stores them JSON-encoded to keep one column type.
        for r in rows:
            r["prompt"] = json.dumps(r["prompt"], ensure_ascii=False)
        with atomic_write(path, "wb") as fh:
            pq.write_table(pa.Table.from_pylist(rows), fh)
        return path
    with atomic_write(path) as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return path
