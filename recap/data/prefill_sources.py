"""Where each training step's prefills come from: the static corpus, the policy's own on-policy cuts, or
both by weight, with static prefills cut to a length schedule.

RECAP's prefills are *static*: counter-aligned reasoning written by other models into the mixture. With
``prefill_sources`` (``PrefillSourceConfig``) a run can also replay *on-policy* prefixes, cuts of the
policy's own unsafe reasoning (``recap.data.onpolicy``), and with ``prefill_length`` (a
``recap.data.schedules.LengthSchedule``) cut static prefills to a length that changes over training.

* ``PrefillSourceConfig``: the draw weight of each source (``SOURCES``) and the on-policy buffer's bounds.
* ``choose_source`` / ``pick_prefill``: per example, a static prefill or an on-policy one.
* ``PrefillPlanner``: at every training step, the prefill of each prefill slot, and the refill of the
  on-policy buffer from the step's rollouts (the planner ``RecapTrainer`` runs).
"""

from __future__ import annotations

import json
import random
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from recap.data.mixture import truncate_words
from recap.data.onpolicy import BufferEntry, PrefixBuffer, StepJudge, first_unsafe_cut
from recap.data.schedules import LengthGate
from recap.inference.chat import split_reasoning

# --------------------------------------------------------------------------------------------
# Where a prefill comes from
# --------------------------------------------------------------------------------------------
SOURCES = ("static", "on_policy")


@dataclass
class PrefillSourceConfig:
    """Where the counter-aligned prefills come from: the static corpus, the policy's own rollouts
    (cut at their first unsafe step, Self-ReSET style), or both."""

    weights: dict[str, float] = field(
        default_factory=lambda: {"static": 1.0},
        metadata={
            "range": "[0, inf)",
            "help": "Draw weight of each prefill source: 'static' (the corpus's counter-aligned "
            "reasoning, RECAP) and 'on_policy' (the policy's own unsafe reasoning cut at its "
            "first unsafe step, Self-ReSET). 'Mixed' is simply both weights > 0, e.g. "
            "{'static': 0.5, 'on_policy': 0.5}.",
        },
    )
    buffer_size: int = field(
        default=512, metadata={"range": "[1, inf)", "help": "Most on-policy prefixes kept; the oldest leave first."}
    )
    per_example: int = field(
        default=4,
        metadata={
            "range": "[1, inf)",
            "help": "Most on-policy prefixes kept per training example; its oldest leave first.",
        },
    )
    refresh_every: int = field(
        default=1,
        metadata={
            "range": "[1, inf)",
            "help": "Training steps between two scans of the policy's rollouts for new prefixes.",
        },
    )
    judge: str = field(
        default="auto",
        metadata={
            "help": "Step judge: 'auto' = the exact toy judge in the miniature world, otherwise the run's "
            "judge applied to growing prefixes at sentence boundaries."
        },
    )

    def __post_init__(self):
        unknown = set(self.weights) - set(SOURCES)
        if unknown:
            raise ValueError(
                f"weights: unknown prefill source(s) {', '.join(sorted(unknown))} (expected {', '.join(SOURCES)})"
            )
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"weights: must be non-negative, got {self.weights}")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError(f"weights: at least one source needs a positive weight, got {self.weights}")
        for name in ("buffer_size", "per_example", "refresh_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.judge:
            raise ValueError("judge must be 'auto' or a judge spec, got an empty string")


def choose_source(cfg: PrefillSourceConfig, rng: random.Random) -> str:
    """``"static"`` or ``"on_policy"``, drawn by weight. With a single positive weight nothing is
    drawn, so a static-only run consumes no randomness here."""
    live = [(s, cfg.weights.get(s, 0.0)) for s in SOURCES if cfg.weights.get(s, 0.0) > 0]
    if len(live) == 1:
        return live[0][0]
    u = rng.random() * sum(w for _, w in live)
    for source, w in live:
        if u < w:
            return source
        u -= w
    return live[-1][0]


def pick_prefill(
    cfg: PrefillSourceConfig,
    example_id: str,
    kind: str,
    static_text: str | None,
    buffer: PrefixBuffer | None,
    rng: random.Random,
) -> tuple[str | None, str]:
    """The prefill of one example and the source actually used.

    The source is drawn by ``choose_source``; an on-policy draw takes one of this example's prefixes
    (else one of its kind) from ``buffer``. When the buffer has nothing of this kind the static text is
    used and the source is reported as ``"static(fallback)"``.
    """
    if choose_source(cfg, rng) == "on_policy":
        entry = buffer.sample(kind, rng, example_id) if buffer is not None else None
        if entry is not None:
            return entry.prefix, "on_policy"
        return static_text, "static(fallback)"
    return static_text, "static"


# --------------------------------------------------------------------------------------------
# During training: choose each step's prefills, harvest the policy's own flawed prefixes
# --------------------------------------------------------------------------------------------
class PrefillPlanner:
    """Decides, at every training step, the prefill of each prefill slot of the mixture (a row the
    mixture selected for prefilling) and refills the on-policy buffer from the step's rollouts.

    * ``prepare(rows, step)``: for each slot, ``pick_prefill`` draws the source (static or on-policy, by
      weight); a static prefill is the row's counter-aligned reasoning cut to ``schedule.length_at(step)``
      words (or the mixture's own prefill when there is no schedule); an on-policy one is a stored cut of
      the policy's own reasoning. With no static weight and nothing stored yet the slot gets no prefill.
      The draw is seeded by (seed, step, id), so every rollout of one prompt group — and a resumed run —
      gets the same prefill. The row's ``prompt`` is re-rendered with ``render(messages, prefill)``.
    * ``harvest(rows, completions, step)``: every ``refresh_every`` steps, the reasoning of each
      completion of a harmful or benign row *without* prefill (the policy's own thinking) is cut at its
      first unsafe step (``step_judge(prompt, kind)``) and stored.

    ``history`` holds one row per scan (step, scanned, cut, added, buffer size) for the run's logs.
    """

    def __init__(
        self,
        cfg: PrefillSourceConfig,
        render: Callable[[list[dict], str | None], str],
        step_judge: Callable[[str, str], StepJudge],
        schedule=None,
        max_steps: int = 1,
        seed: int = 0,
    ):
        self.cfg, self.render, self.step_judge = cfg, render, step_judge
        self.schedule, self.max_steps, self.seed = schedule, max_steps, seed
        self.gate = LengthGate(schedule) if schedule is not None and schedule.kind == "gated" else None
        self.buffer = PrefixBuffer(cfg.buffer_size, cfg.per_example)
        self.history: list[dict] = []
        self.sources: Counter = Counter()

    def prepare(self, rows: list[dict], step: int) -> list[dict]:
        out = []
        static_on = self.cfg.weights.get("static", 0.0) > 0
        for row in rows:
            if not row.get("prefilled"):
                out.append({**row, "prefill_source": ""})  # every row has the column (TRL reads inputs[0]'s keys)
                continue
            rng = random.Random(zlib.crc32(f"{self.seed}:{step}:{row['id']}".encode()))
            static = None
            if static_on:
                if self.schedule is not None and row.get("counter_reasoning"):
                    words = self.gate.length if self.gate else self.schedule.length_at(step, self.max_steps, rng)
                    static = truncate_words(row["counter_reasoning"], words)
                else:
                    static = row.get("static_prefill") or None
            text, source = pick_prefill(self.cfg, row["id"], row["kind"], static, self.buffer, rng)
            self.sources[source if text else "none"] += 1
            out.append({**row, "prompt": self.render(json.loads(row["conversation"]), text), "prefill_source": source})
        return out

    def harvest(self, rows: list[dict], completions: list[str], step: int) -> int:
        if step % self.cfg.refresh_every:
            return 0
        found, scanned = [], 0
        for row, completion in zip(rows, completions):
            if row.get("prefilled") or row["kind"] not in ("harmful", "benign"):
                continue
            scanned += 1
            reasoning = split_reasoning(completion).reasoning
            user = next((m["content"] for m in reversed(json.loads(row["conversation"])) if m["role"] == "user"), "")
            cut = first_unsafe_cut(reasoning, self.step_judge(user, row["kind"]))
            if cut is not None:
                found.append(BufferEntry(row["id"], row["kind"], cut.prefix, cut.step, cut.n_steps))
        added = self.buffer.add(found, step)
        self.history.append(
            {"step": step, "scanned": scanned, "cut": len(found), "added": added, "size": len(self.buffer)}
        )
        return added

    def observe(self, step: int, reward: float | None) -> None:
        """The step's mean reward of prefilled harmful groups (``None``: none this step), for a gated schedule."""
        if self.gate is not None:
            self.gate.observe(step, reward)

    def stats(self) -> dict:
        """Buffer statistics plus refresh rate (entries added per scan) and where prefills came from."""
        scans = len(self.history)
        return {
            **self.buffer.stats(),
            "scans": scans,
            "refresh_rate": sum(h["added"] for h in self.history) / scans if scans else None,
            "cut_rate": (
                sum(h["cut"] for h in self.history) / max(1, sum(h["scanned"] for h in self.history)) if scans else None
            ),
            "prefill_sources": dict(sorted(self.sources.items())),
        }

    def state(self) -> dict:
        return {
            "entries": self.buffer.to_rows(),
            "history": self.history,
            "sources": dict(self.sources),
            **({"gate": self.gate.state()} if self.gate else {}),
        }

    def load_state(self, state: dict) -> None:
        self.buffer = PrefixBuffer.from_rows(state["entries"], self.cfg.buffer_size, self.cfg.per_example)
        self.history = list(state.get("history", []))
        self.sources = Counter(state.get("sources", {}))
        if self.gate is not None and "gate" in state:
            self.gate.load_state(state["gate"])
