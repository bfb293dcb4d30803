"""An append-only JSONL cache of expensive results (generated prefills, LLM judge calls).

Rows are ``{"key": <sha256>, ...}``; each ``add`` appends and fsyncs, so a killed run keeps everything
written before it. A truncated last line (the write in flight when the process died) is ignored and
recomputed (and cut from the file before the next append); a broken line anywhere else is an error naming the file and line.
An append that fails (a full or read-only disk) is cut back off the file and raises an ``OSError`` naming
the file. ``compact()`` rewrites the file without superseded lines (a key written twice keeps its latest row).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from pathlib import Path

from recap.util.errors import DataError


def cache_key(*parts) -> str:
    """A stable key of JSON-serialisable ``parts``."""
    blob = json.dumps(parts, ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class JsonlCache:
    """Thread-safe ``key -> row`` store backed by one JSONL file (``None`` path: memory only)."""

    def __init__(self, path: str | os.PathLike | None, hint: str = "delete the cache file to recompute"):
        self.path = Path(path) if path else None
        self.rows: dict[str, dict] = {}
        self._lock = threading.Lock()
        self._torn_at: int | None = None  # byte offset of a torn last line, cut before the next append
        self.torn_line: int | None = None  # its line number, for the caller to report
        self.lines = 0  # valid lines in the file (more than len(self) when some key was written again)
        self.loaded_stat: tuple | None = None  # (inode, size, mtime) of the file when it was read
        self._hint = hint
        self.load()

    def _stat(self) -> tuple | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns)

    def load(self) -> None:
        """(Re)read the file. A line cut by a crash — inside its JSON or inside a multi-byte character —
        is torn when it is the last one, an error naming the file and line anywhere else."""
        self.rows, self._torn_at, self.torn_line, self.lines = {}, None, None, 0
        if self.path is None or not self.path.exists():
            self.loaded_stat = None
            return
        self.loaded_stat = self._stat()
        lines = self.path.read_bytes().split(b"\n")
        offset = 0
        for n, raw in enumerate(lines, 1):
            start, offset = offset, offset + len(raw) + 1
            if not raw.strip():
                continue
            last = n >= len(lines) - 1
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                if last:  # a write cut inside a multi-byte character
                    self._torn_at, self.torn_line = start, n
                    continue
                raise DataError(
                    self.path, n, None, f"not UTF-8 text (byte 0x{raw[e.start]:02x} at byte {e.start + 1} of the line)"
                ) from None
            except json.JSONDecodeError:
                if last:  # the last line of a killed run: recompute it
                    self._torn_at, self.torn_line = start, n
                    continue
                raise DataError(self.path, n, None, f"not valid JSON ({self._hint})") from None
            if not isinstance(row, dict) or not isinstance(row.get("key"), str):
                raise DataError(self.path, n, "key", "missing (not a recap cache file?)")
            self.rows[row["key"]] = row
            self.lines += 1

    def changed_on_disk(self) -> bool:
        """Whether the file is no longer the one that was read (another process appended or rewrote it)."""
        return self.path is not None and self._stat() != self.loaded_stat

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: str) -> dict | None:
        return self.rows.get(key)

    def add(self, rows: list[dict]) -> None:
        with self._lock:
            if self.path is not None:
                self._append(rows)
                self.lines += len(rows)
                self.loaded_stat = self._stat()
            for r in rows:
                self.rows[r["key"]] = r

    def _append(self, rows: list[dict]) -> None:
        from recap.util.files import output_error

        size = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self._torn_at is not None:
                os.truncate(self.path, self._torn_at)
                self._torn_at = None
            fresh = True
            if self.path.exists() and self.path.stat().st_size:
                with self.path.open("rb") as f:
                    f.seek(-1, os.SEEK_END)
                    fresh = f.read(1) == b"\n"
            size = self.path.stat().st_size if self.path.exists() else 0
            with self.path.open("a", encoding="utf-8") as f:
                # After a truncated line, start ours on a fresh line.
                f.write(("" if fresh else "\n") + "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            if size is not None:  # never leave half a line behind (a full disk)
                with contextlib.suppress(OSError):
                    os.truncate(self.path, size)
            named = output_error(self.path, e, verb="append to")
            if named is None:
                raise
            raise named from None

    def compact(self) -> int:
        """Rewrite the file with one line per key — its latest row, in the order keys were first written —
        atomically (a kill leaves the old file or the new one). Returns how many lines were dropped
        (superseded rows and a torn last line); 0 leaves the file untouched."""
        from recap.util.files import atomic_write

        with self._lock:
            dropped = self.lines - len(self.rows) + (self._torn_at is not None)
            if self.path is None or dropped == 0:
                return 0
            with atomic_write(self.path) as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in self.rows.values())
            self.lines, self._torn_at, self.torn_line = len(self.rows), None, None
            self.loaded_stat = self._stat()
            return dropped
