"""The JSONL results store: one record per generated sample, appended and flushed as it is made, plus
``{"stage_start": ...}`` / ``{"stage_done": ...}`` markers around each stage so an interrupted evaluation resumes where it
stopped without losing or duplicating results."""

from __future__ import annotations

import json
from pathlib import Path


class ResultStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._done: set[str] = set()
        self._records: list[dict] = []
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        pending: dict[str, list[dict]] = {}
        with self.path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"{self.path}:{n}: not valid JSON; the store is corrupt") from None
                if "stage_start" in row:  # a (re)started stage: drop what an interrupted attempt left
                    pending[row["stage_start"]] = []
                elif "stage_done" in row:
                    self._done.add(row["stage_done"])
                    self._records.extend(pending.pop(row["stage_done"], []))
                else:
                    pending.setdefault(row["stage"], []).append(row)
        # Records of a stage without its marker were cut off mid-stage: that stage is redone (its partial
        # records stay in the file, ignored, so nothing written is ever deleted).

    def done(self, stage: str) -> bool:
        return stage in self._done

    def add_stage(self, stage: str, records: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"stage_start": stage}) + "\n")
            for r in records:
                fh.write(json.dumps({**r, "stage": stage}, ensure_ascii=False) + "\n")
            fh.write(json.dumps({"stage_done": stage}) + "\n")
            fh.flush()
        self._done.add(stage)
        self._records.extend({**r, "stage": stage} for r in records)

    def records(self, **match) -> list[dict]:
        return [r for r in self._records if all(r.get(k) == v for k, v in match.items())]
