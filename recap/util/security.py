"""Secrets and trust: what recap never writes down and never runs.

* **API keys come from the environment only** (e.g. ``RubricConfig.api_key_env`` names the variable).
  ``redact_text`` replaces the value of every secret-looking environment variable (a name containing
  KEY, TOKEN, SECRET or PASSWORD, value of 8+ characters) with ``***``; ``redacted`` does that through
  a config dump and also masks any field whose *name* looks secret. Every config dump recap writes
  (``train_config.json``) and every error the CLI prints goes through them.
* **No remote code, no pickles**: ``recap.inference.models.load_model`` passes ``trust_remote_code=False`` unless
  asked and loads safetensors or GGUF only (a folder of ``pytorch_model.bin`` pickles is refused unless
  ``allow_pickle=True`` — ``allow_pickle_weights`` in the train and suite configs).
* **No transcripts to trackers**: ``TrainConfig.report_to`` defaults to ``none``; when a tracker is
  chosen only scalar metrics are logged (TRL's ``log_completions`` stays off), so completions on harmful
  prompts never leave the machine unless the user writes code to send them.
* **Paths stay where the user named them**: ``inside(root, name)`` joins a name derived from data or a
  config (a method name, a benchmark name) to an output folder and refuses one that escapes it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_SECRET_NAME = re.compile(r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD)", re.IGNORECASE)
_SECRET_FIELD = re.compile(r"(api_?key|token|secret|password|passwd)$", re.IGNORECASE)
MASK = "***"


def secret_values() -> list[str]:
    """Values of the secret-looking environment variables, longest first."""
    values = {v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 8}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, MASK)
    return text


def redacted(obj):
    """A copy of a config dump with secret-named fields masked and secret values replaced."""
    if isinstance(obj, dict):
        return {
            k: (MASK if isinstance(k, str) and _SECRET_FIELD.search(k) and v else redacted(v)) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redacted(v) for v in obj]
    if isinstance(obj, str):
        return redact_text(obj)
    return obj


def inside(root: str | os.PathLike, name: str) -> Path:
    """``root / name`` for a name that comes from data or a config; a name that is absolute or climbs
    out of ``root`` (``..``) raises ``ValueError``."""
    root_path = Path(root).resolve()
    target = (root_path / name).resolve()
    if Path(name).is_absolute() or (target != root_path and root_path not in target.parents):
        raise ValueError(f"{name!r} would write outside {root}; names used for files must stay inside it")
    return target
