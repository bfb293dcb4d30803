"""Reading rows, each with the 1-based line it starts on, from a local JSONL/CSV/TSV/Parquet file or a
Hugging Face hub dataset.

Every reader yields ``(line, row dict)``; the line is what a ``DataError`` names: the physical line for
JSONL, the line where the CSV record starts (a quoted field may span lines), the row number for Parquet
and hub rows. A reader knows nothing of benchmark formats: a caller that needs certain columns passes
``check_columns(columns, line)``, called with the header (and its line; None for Parquet) before any
row, which raises to refuse the file. ``recap.data.benchmarks`` turns these rows into examples.

Local files are read with the ``json``, ``csv`` and ``pyarrow`` modules rather than
``datasets.load_dataset``, which gives no source line numbers (a bad JSONL line is "an error occurred
while generating the dataset"; a short CSV row is filled with None), guesses column types (a numeric
CSV cell becomes an int) and writes an Arrow cache per file; hub ids go through
``datasets.load_dataset`` (:func:`hub_rows`).
"""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path
from collections.abc import Callable, Iterator

from recap.data.examples import DataError, csv_records

log = logging.getLogger(__name__)

JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}  # suffix -> delimiter
FILE_SUFFIXES = JSONL_SUFFIXES | set(TABLE_SUFFIXES) | {".parquet", ".txt", ".gz", ".zip", ".json"}
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")

# check_columns(columns, line of the header or None): raises DataError to refuse a table before its rows.
ColumnCheck = Callable[[list, int | None], None]
Rows = Iterator[tuple[int, dict]]


def looks_like_hub_id(s: str) -> bool:
    """``owner/name`` without a data-file suffix: a Hugging Face dataset id rather than a local path."""
    if not _HUB_ID.fullmatch(s) or s.startswith((".", "~")):
        return False
    return Path(s).suffix.lower() not in FILE_SUFFIXES


def file_rows(path: Path, check_columns: ColumnCheck | None = None, *, fallback: str = "jsonl") -> Rows:
    """The rows of a local file, read by its suffix (.csv, .tsv, .parquet, .jsonl/.ndjson/.json); a file
    with any other suffix is read as ``fallback`` ("jsonl" or "csv")."""
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return table_rows(path, TABLE_SUFFIXES[suffix], check_columns)
    if suffix == ".parquet":
        return parquet_rows(path, check_columns)
    if suffix in JSONL_SUFFIXES or fallback != "csv":
        return jsonl_rows(path)
    return table_rows(path, ",", check_columns)


def jsonl_rows(path: Path) -> Rows:
    """Every non-blank line of a JSONL file as a JSON object (a UTF-8 BOM on the first line is skipped)."""
    # Physical lines are split on b"\n" only, so U+2028, U+0085 and friends inside a prompt never
    # split a row and line numbers match what an editor shows.
    for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataError(path, n, None, f"not UTF-8 (byte {e.start + 1} of the line)") from None
        if not text.strip():
            continue
        try:
            row = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(path, n, None, f"not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(row, dict):
            raise DataError(path, n, None, f"expected a JSON object, got {type(row).__name__}")
        yield n, row


def first_jsonl_row(path: Path) -> tuple[int, object]:
    """``(line, decoded value)`` of the first non-blank line of a JSONL file (for format detection)."""
    for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if n == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise DataError(path, n, None, "not UTF-8") from None
        if not text.strip():
            continue
        try:
            return n, json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(
                path, n, None, f"cannot detect the format: not valid JSON ({e.msg} at column {e.colno})"
            ) from None
    raise DataError(path, None, None, "empty file")


def _raise_csv_limit() -> None:
    # Long role-play prompts can exceed csv's default 128 KiB field limit.
    if csv.field_size_limit() < 2**30:
        csv.field_size_limit(2**30)


def table_header(path: Path, delimiter: str) -> list[str]:
    """The first non-empty record of a CSV/TSV file (for format detection)."""
    _raise_csv_limit()
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            for header in reader:
                if header:
                    return header
    except UnicodeDecodeError:
        raise DataError(path, None, None, "not UTF-8") from None
    except csv.Error as e:
        raise DataError(path, 1, None, f"not valid CSV ({e})") from None
    raise DataError(path, None, None, "empty file")


def table_rows(path: Path, delimiter: str, check_columns: ColumnCheck | None = None) -> Rows:
    """The records of a CSV/TSV file as ``{header: value}``; a row with fewer or more values than the
    header has columns is an error naming its line (and the first missing column)."""
    _raise_csv_limit()
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = None
            for line, values in csv_records(path, reader):
                if not values:
                    continue
                if header is None:
                    header = values
                    if check_columns is not None:
                        check_columns(header, line)
                    continue
                if len(values) < len(header):
                    raise DataError(
                        path,
                        line,
                        header[len(values)],
                        f"row has {len(values)} values but the header has {len(header)} columns",
                    )
                if len(values) > len(header):
                    raise DataError(
                        path, line, None, f"row has {len(values)} values but the header has {len(header)} columns"
                    )
                yield line, dict(zip(header, values))
    except UnicodeDecodeError:
        raise DataError(path, None, None, "not UTF-8") from None
    if header is None:
        raise DataError(path, None, None, "empty file")


def parquet_columns(path: Path) -> list[str]:
    """The column names of a Parquet file (its schema only; no row is read)."""
    import pyarrow.parquet as pq

    return pq.read_schema(path).names


def parquet_rows(path: Path, check_columns: ColumnCheck | None = None) -> Rows:
    """The rows of a Parquet file, numbered from 1."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    if check_columns is not None:
        check_columns(table.column_names, None)
    for i, row in enumerate(table.to_pylist(), start=1):
        yield i, row


def hub_rows(hub_id: str, split: str | None, config: str | None) -> tuple[Rows, list[str]]:
    """``(rows numbered from 1, column names)`` of a Hugging Face hub dataset, loaded with
    ``datasets.load_dataset`` (imported only here). Without ``split``: test, else eval, else train, else
    the first split."""
    try:
        import datasets  # only here: loading local files never needs it
    except ImportError:
        raise DataError(
            hub_id,
            None,
            None,
            "is not a local file, and loading it from the Hugging Face hub needs the 'datasets' package",
        ) from None
    try:
        ds = (
            datasets.load_dataset(hub_id, config, split=split) if config else datasets.load_dataset(hub_id, split=split)
        )
    except Exception as e:  # network, auth, unknown id: one clear line
        raise DataError(
            hub_id, None, None, f"could not load from the Hugging Face hub ({type(e).__name__}: {e})"
        ) from None
    if split is None and isinstance(ds, dict):
        names = list(ds)
        if not names:
            raise DataError(hub_id, None, None, "the hub dataset has no splits")
        split = next((s for s in ("test", "eval", "train") if s in ds), names[0])
        log.info("%s: using split %r of %s", hub_id, split, names)
        ds = ds[split]
    cols = list(getattr(ds, "column_names", None) or [])
    if not cols:
        first = next(iter(ds), None)
        cols = list(first) if isinstance(first, dict) else []
    return ((i, dict(row)) for i, row in enumerate(ds, start=1)), cols
