"""The error every reader raises for a malformed input file: it names the file, the line and the field."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """A data file is malformed. The message names the file, the line (1-based) and the field."""

    def __init__(self, path: str | Path, line: int | None, field: str | None, why: str):
        where = f"{path}" + (f":{line}" if line is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {why}")
        self.path, self.line, self.field, self.why = str(path), line, field, why
