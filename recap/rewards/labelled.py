"""Labelled completions: the XSTest-style CSV that refusal judges are fitted and scored on, and the shipped set.

A labelled-completions file has the XSTest v2 columns ``prompt``, ``completion``, ``final_label``
(``1_full_compliance``, ``2_full_refusal``, ``3_partial_refusal``) and optionally ``family`` (a style or
model family: a group for cross-validation); other columns are ignored. ``read_labelled_completions``
reads one file, ``read_labelled_files`` several, with a description of each file for a fitted judge's
metadata.

``BUILTIN_LABELS`` is a labelled set shipped with the package (``data/refusal_labels.csv``): hand-written
completions of our own prompts in the styles of several model families (terse refusals, lecturing
refusals, refusals that only offer an alternative, partial refusals that object and then answer,
compliance with disclaimers or warnings, one-word answers), labelled by the XSTest definitions. Fits of
the refusal classifier (``recap.rewards.classifier``) include it by default.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from recap.data.examples import csv_records
from recap.util.errors import DataError

__all__ = [
    "REFUSAL_LABELS",
    "LabelledCompletion",
    "read_labelled_completions",
    "read_labelled_files",
    "BUILTIN_LABELS",
]

BUILTIN_LABELS = Path(__file__).resolve().parent / "data" / "refusal_labels.csv"
#: ``final_label`` → refused (a full or a partial refusal).
REFUSAL_LABELS = {"1_full_compliance": False, "2_full_refusal": True, "3_partial_refusal": True}
_REQUIRED_COLUMNS = ("prompt", "completion", "final_label")


class LabelledCompletion(NamedTuple):
    prompt: str
    completion: str
    refused: bool  # True for full or partial refusal
    partial: bool = False  # True for a partial refusal
    family: str = ""  # the optional ``family`` column (a style or model family: a group for cross-validation)


def read_labelled_completions(path: str | Path) -> list[LabelledCompletion]:
    """Read a labelled-completions CSV (columns ``prompt``, ``completion``, ``final_label``, optionally
    ``family``; others are ignored) as ``LabelledCompletion`` rows. ``final_label`` must be one of
    ``1_full_compliance`` (refused=False), ``2_full_refusal`` or ``3_partial_refusal`` (refused=True;
    partial=True for the latter).

    Raises ``DataError`` naming the file, the (1-based) line where the bad record starts and the column.
    """
    path = Path(path)
    out: list[LabelledCompletion] = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        records = csv_records(path, csv.reader(f))
        _, header = next(records, (1, None))
        if header is None:
            raise DataError(path, 1, None, "empty file (expected a header with prompt, completion, final_label)")
        header = [h.strip() for h in header]
        col = {}
        for name in _REQUIRED_COLUMNS:
            if name not in header:
                raise DataError(path, 1, name, f"missing column (header has: {', '.join(header)})")
            col[name] = header.index(name)
        fam = header.index("family") if "family" in header else None
        for start, rec in records:
            if not rec or all(not c.strip() for c in rec):
                continue  # blank line
            if len(rec) != len(header):
                raise DataError(path, start, None, f"expected {len(header)} fields, got {len(rec)}")
            label = rec[col["final_label"]].strip()
            if label not in REFUSAL_LABELS:
                raise DataError(
                    path, start, "final_label", f"unknown label {label!r} (expected one of {', '.join(REFUSAL_LABELS)})"
                )
            out.append(
                LabelledCompletion(
                    rec[col["prompt"]],
                    rec[col["completion"]],
                    REFUSAL_LABELS[label],
                    label == "3_partial_refusal",
                    rec[fam].strip() if fam is not None else "",
                )
            )
    if not out:
        raise DataError(path, None, None, "no labelled rows")
    return out


def read_labelled_files(
    paths: str | Path | Sequence[str | Path],
) -> tuple[list[LabelledCompletion], list[dict], list[str]]:
    """The rows of one or more labelled-completions files, a description of each file (path, name, row
    counts, SHA-256), and each row's cross-validation group (the file name, plus the ``family`` column
    where a file has one)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    rows, files, groups = [], [], []
    for p in paths:
        r = read_labelled_completions(p)
        rows += r
        groups += [f"{Path(p).name}:{x.family}" if x.family else Path(p).name for x in r]
        files.append(
            {
                "path": str(Path(p).resolve()),
                "name": Path(p).name,
                "rows": len(r),
                "refused": sum(x.refused for x in r),
                "partial": sum(x.partial for x in r),
                "sha256": _sha256_file(Path(p)),
            }
        )
    return rows, files, groups


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
