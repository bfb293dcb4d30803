"""The JSONL results store: every judged sample is appended (and fsynced) as soon as its chunk is
judged, under a key that names exactly what it is — (tag: model/method, benchmark, seed; judge; attack
and round, i.e. the stage; item; sample index). A rerun after a crash skips every key already stored
and redoes only what is missing.

A killed process can leave a torn last line (the write in flight). It is detected when the store is
opened, reported in ``ResultStore.warnings``, cut off before the next append, and its chunk is redone;
a broken line anywhere else is an error naming the file and the line (something else edited the file).
Nothing valid is ever deleted; a key written twice (a chunk redone after a torn line) keeps its latest
record. ``compact()``, called when an evaluation completes, rewrites the store atomically with one line per
key (the latest record, in first-written order), so a resumed store reads like an uninterrupted one.

One process writes a store at a time: ``writing()`` (held by every evaluation for its whole run, and
by ``add`` and ``compact`` when called outside it) takes the store's exclusive lock
(``recap.util.locks``); a second writer gets one error naming the holder's PID. When the lock is taken,
a store changed on disk since it was read (another process wrote it in between) is read again, so
nothing is compacted from a stale copy. Readers (``recap report``) take no lock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from recap.util.cache import JsonlCache, cache_key
from recap.util.locks import output_lock


def record_key(stage: str, judge: str, example_id: str, sample: int) -> str:
    """The identity of one result (``stage`` already holds the tag, the attack and the round)."""
    return cache_key("result", stage, judge, example_id, sample)


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._rows = JsonlCache(self.path, hint="the results file was edited; fix or remove that line")
        self.warnings: list[str] = []
        if self._rows.torn_line is not None:
            self.warnings.append(
                f"{self.path}:{self._rows.torn_line}: truncated last line (a write cut off by a crash); "
                "it is dropped and its results are redone"
            )

    def __len__(self) -> int:
        return len(self._rows)

    @contextlib.contextmanager
    def writing(self) -> Iterator[ResultStore]:
        """Hold the store's exclusive lock for the block (re-entrant); raises ``OutputLocked`` naming the
        process that writes it now. The store is read again if the file changed since it was read."""
        with output_lock(self.path, "this result store"):
            if self._rows.changed_on_disk():
                self._rows.load()
            yield self

    def has(self, key: str) -> bool:
        return self._rows.get(key) is not None

    def get(self, key: str) -> dict | None:
        return self._rows.get(key)

    def add(self, records: list[dict]) -> None:
        """Append records (each with its ``key``) in one write, flushed to disk before returning."""
        for r in records:
            if not isinstance(r.get("key"), str):
                raise ValueError("every result record needs its 'key' (recap.eval.store.record_key)")
        if records:
            with self.writing():
                self._rows.add(records)

    def compact(self) -> int:
        """Rewrite the store without superseded lines (a key written again keeps only its latest record, at
        the place the key was first written) and without a torn last line; atomic, so a kill leaves the
        old file or the new one. Returns the number of lines dropped (0: the file is left as it is).
        Call it once the evaluation writing this store has finished (it is not safe against a concurrent
        writer of the same file)."""
        with self.writing():
            return self._rows.compact()

    def records(self, **match) -> list[dict]:
        return [r for r in self._rows.rows.values() if all(r.get(k) == v for k, v in match.items())]
