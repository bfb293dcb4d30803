"""The RECAP training mixture: counter-aligned prefills on a fraction α of the safety prompts.

Harmful examples selected for prefilling carry unsafe reasoning (written by a helpful-only model),
benign ones carry refusing reasoning (written by an over-conservative model), both truncated to ℓ
words. Task examples are never prefilled. α = 0 gives the vanilla-DAPO data from the same prompts.

Which safety prompts get a prefill (``selection``):

* ``per_row`` (default, as the paper writes it, Sec. 3.1: D_prefill = {x ∈ D_train | Pr(augment x) = α}):
  each harmful and each benign example is prefilled with probability α, independently (a seeded
  Bernoulli draw per row), so the number prefilled varies around α·n;
* ``exact``: exactly ``round(α·n)`` harmful and ``round(α·n)`` benign examples, chosen by a seeded
  shuffle (a fixed count, for small mixtures and ablations).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace

from recap.data.examples import DataError, Example

_WORD = re.compile(r"\S+")
SELECTIONS = ("per_row", "exact")


def truncate_words(text: str, n_words: int) -> str:
    """The first ``n_words`` whitespace-separated words of ``text``, cut on a word boundary with the
    original spacing (newlines, Unicode) kept. Shorter texts come back whole."""
    if n_words <= 0:
        return ""
    for i, m in enumerate(_WORD.finditer(text), start=1):
        if i == n_words:
            return text[: m.end()]
    return text.rstrip()


def count_words(text: str) -> int:
    return len(_WORD.findall(text))


def parse_lengths(spec, name: str = "prefill_words") -> tuple[str, list[int]]:
    """Normalise a prefill-length spec: an int (fixed ℓ), a list of ints (ℓ drawn from it), or a range
    ``"lo-hi"`` / ``{"min": lo, "max": hi}`` (ℓ uniform in [lo, hi]). Returns (mode, values). Errors name
    the config field ``name``."""
    if isinstance(spec, bool):
        raise ValueError(f"{name}: expected an int, a list or a range, got {spec!r}")
    if isinstance(spec, int):
        values, mode = [spec], "fixed"
    elif isinstance(spec, (list, tuple)):
        values, mode = [int(v) for v in spec], "choice"
    elif isinstance(spec, dict) and set(spec) == {"min", "max"}:
        values, mode = [int(spec["min"]), int(spec["max"])], "range"
    elif isinstance(spec, str) and re.fullmatch(r"\s*\d+\s*(-|\.\.)\s*\d+\s*", spec):
        values, mode = [int(v) for v in re.findall(r"\d+", spec)], "range"
    else:
        raise ValueError(f"{name}: expected an int, a list or a range like '100-700', got {spec!r}")
    if not values or any(v <= 0 for v in values) or (mode == "range" and values[0] > values[1]):
        raise ValueError(f"{name}: lengths must be positive (and lo ≤ hi), got {spec!r}")
    return mode, values


def draw_length(spec, rng: random.Random) -> int:
    mode, values = parse_lengths(spec)
    if mode == "range":
        return rng.randint(values[0], values[1])
    return rng.choice(values)


@dataclass
class MixtureConfig:
    """How to build the RECAP training mixture (defaults from the paper)."""

    alpha: float = field(
        default=0.5,
        metadata={
            "range": "[0, 1]",
            "help": "Fraction of harmful and of benign prompts that receive a counter-aligned prefill "
            "(RECAP uses 0.5; 0 gives vanilla DAPO data). Task prompts are never prefilled.",
        },
    )
    prefill_words: int | list[int] | str = field(
        default=500,
        metadata={
            "range": "[1, inf)",
            "help": "Prefill length ℓ in words: an int, a list to draw from, or a range 'lo-hi' "
            "(the paper uses 500 and ablates 100–700).",
        },
    )
    seed: int = field(
        default=0, metadata={"range": "[0, 4294967295]", "help": "Seed of the selection and of the lengths."}
    )
    selection: str = field(
        default="per_row",
        metadata={
            "help": "How the prefilled safety prompts are chosen: per_row (each harmful and each benign "
            "prompt independently with probability α, a seeded Bernoulli draw — the paper's "
            "Pr(augment x) = α) or exact (exactly round(α·n) of each kind, seeded shuffle)."
        },
    )


def build_mixture(examples: list[Example], cfg: MixtureConfig) -> list[Example]:
    """Return the examples with prefills set on a fraction α of the harmful and of the benign examples:
    each with probability α (``selection: per_row``) or exactly ``round(α · n_kind)`` of each kind
    (``exact``). Same inputs and seed → same mixture."""
    if not 0.0 <= cfg.alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {cfg.alpha}")
    if cfg.selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {', '.join(SELECTIONS)}, got {cfg.selection!r}")
    parse_lengths(cfg.prefill_words)
    rng = random.Random(cfg.seed)
    chosen: set[str] = set()
    for kind in ("harmful", "benign"):
        ids = [e.id for e in examples if e.kind == kind]
        if cfg.selection == "exact":
            rng.shuffle(ids)
            chosen.update(ids[: round(cfg.alpha * len(ids))])
        else:  # random() < 1 always and < 0 never: α = 1 and α = 0 stay exact
            chosen.update(i for i in ids if rng.random() < cfg.alpha)
    out = []
    for e in examples:
        if e.id not in chosen:
            out.append(replace(e, prefill=None, prefill_words=None, prefill_source=None, seed=cfg.seed))
            continue
        if not e.counter_reasoning:
            raise DataError(
                e.source or "<examples>",
                None,
                "counter_reasoning",
                f"example {e.id!r} ({e.kind}) was selected for a prefill but has no counter-aligned reasoning",
            )
        n = draw_length(cfg.prefill_words, rng)
        out.append(
            replace(
                e,
                prefill=truncate_words(e.counter_reasoning, n),
                prefill_words=n,
                prefill_source=e.counter_source,
                seed=cfg.seed,
            )
        )
    return out
