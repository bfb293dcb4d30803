"""Prefill length schedules: how many words ℓ of counter-aligned reasoning a prefill carries, per
training step.

* ``fixed``: ℓ is constant (RECAP: 500 words).
* ``uniform``: ℓ is drawn uniformly from a list at every call (e.g. the paper's 100–700 ablation lengths).
* ``curriculum``: short → long over the run, from ``start`` to ``end`` — a step function of ``stages``
  equal stages, or a linear ramp when ``stages`` is 0.
* ``gated``: short → long through the list ``words``, advancing by the policy's progress, not the clock
  (``LengthGate``): after ``window`` steps at a length, ℓ moves to the next one only if the prefilled
  harmful groups' mean reward over those steps holds at or above its level over the run's first
  ``window`` steps.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

KINDS = ("fixed", "uniform", "curriculum", "gated")


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class LengthSchedule:
    """The prefill length ℓ (in words) as a function of the training step."""

    kind: str = field(
        default="fixed",
        metadata={
            "help": "'fixed' (constant ℓ = words), 'uniform' (ℓ drawn uniformly from the list words), "
            "'curriculum' (short → long from start to end over the run) or 'gated' (short → long through the "
            "list words, advancing only while the prefilled harmful groups' reward holds its starting level)."
        },
    )
    words: int | list[int] = field(
        default=500,
        metadata={
            "range": "[1, inf)",
            "help": "fixed: ℓ, an int (RECAP uses 500); uniform: the list of lengths to draw from "
            "(e.g. [100, 300, 500, 700], the paper's ablation range); gated: the lengths in the order they are "
            "reached (non-decreasing).",
        },
    )
    start: int = field(
        default=100,
        metadata={"range": "[1, inf)", "help": "curriculum: ℓ at the first step (shortest of the ablation)."},
    )
    end: int = field(
        default=700, metadata={"range": "[1, inf)", "help": "curriculum: ℓ at the last step (longest of the ablation)."}
    )
    stages: int = field(
        default=4,
        metadata={
            "range": "[0, inf)",
            "help": "curriculum: number of equal stages from start to end (a step function); 0 = a "
            "linear ramp. At least 2 unless 0.",
        },
    )

    window: int = field(
        default=5,
        metadata={
            "range": "[1, inf)",
            "help": "gated: steps per decision. The starting level is the prefilled harmful groups' mean reward "
            "over the first window steps; a length is left after window steps if its last window steps' mean "
            "holds at or above it.",
        },
    )

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind == "fixed" and not _positive_int(self.words):
            raise ValueError(f"words: a fixed schedule takes one positive int, got {self.words!r}")
        if self.kind in ("uniform", "gated"):
            if (
                not isinstance(self.words, (list, tuple))
                or not self.words
                or not all(_positive_int(w) for w in self.words)
            ):
                raise ValueError(
                    f"words: a {self.kind} schedule takes a non-empty list of positive ints, got {self.words!r}"
                )
            self.words = list(self.words)
        if self.kind == "gated":
            if self.words != sorted(self.words):
                raise ValueError(f"words: a gated schedule's lengths go short → long, got {self.words!r}")
            if not _positive_int(self.window):
                raise ValueError(f"window must be a positive int, got {self.window!r}")
        if self.kind == "curriculum":
            if not _positive_int(self.start):
                raise ValueError(f"start must be a positive int, got {self.start!r}")
            if not _positive_int(self.end) or self.end < self.start:
                raise ValueError(f"end must be an int ≥ start ({self.start}), got {self.end!r}")
            if not isinstance(self.stages, int) or self.stages < 0 or self.stages == 1:
                raise ValueError(f"stages must be 0 (linear) or at least 2, got {self.stages!r}")
            if self.stages and self.end - self.start < self.stages - 1:
                raise ValueError(
                    f"stages: {self.stages} distinct lengths do not fit between start "
                    f"({self.start}) and end ({self.end})"
                )

    def length_at(self, step: int, total_steps: int, rng: random.Random) -> int:
        """ℓ at training step ``step`` (0-based) of a run of ``total_steps`` steps.

        Only ``uniform`` draws from ``rng``. A ``gated`` schedule has no length of its own at a step: ask its
        ``LengthGate``. A curriculum gives ``start`` at step 0 and ``end`` from the
        last step on; stage ``i`` of ``k`` covers steps ``[i·T/k, (i+1)·T/k)`` and has length
        ``start + round(i·(end − start)/(k − 1))``.
        """
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        if step < 0:
            raise ValueError(f"step must be ≥ 0, got {step}")
        if self.kind == "fixed":
            return self.words
        if self.kind == "uniform":
            return rng.choice(self.words)
        if self.kind == "gated":
            raise ValueError("a gated schedule's length depends on the run's rewards: use LengthGate(schedule)")
        step = min(step, total_steps - 1)
        span = self.end - self.start
        if self.stages == 0:
            if total_steps == 1:
                return self.end
            return self.start + round(span * step / (total_steps - 1))
        stage = min(self.stages - 1, step * self.stages // total_steps)
        return self.start + round(span * stage / (self.stages - 1))


class LengthGate:
    """The state of a ``gated`` schedule: the current length, advanced by the rewards it is shown.

    ``observe(step, reward)`` takes the mean reward of the step's prefilled harmful groups (``None`` when
    the step had none: the step does not count). The first ``window`` observed steps set the starting level;
    after ``window`` observed steps at a length, the gate advances to the next length if their mean is at or
    above the starting level, and otherwise stays and looks again after the next ``window`` steps. The state
    round-trips through ``state()`` / ``load_state()`` (saved with each checkpoint, so a resumed run goes on
    at the length it had)."""

    def __init__(self, schedule: LengthSchedule):
        if schedule.kind != "gated":
            raise ValueError(f"LengthGate takes a gated schedule, got kind {schedule.kind!r}")
        self.words, self.window = list(schedule.words), schedule.window
        self.level = 0
        self.start_level: float | None = None
        self.recent: list[float] = []  # rewards observed at the current length since the last decision
        self.history: list[dict] = []  # one row per observed step

    @property
    def length(self) -> int:
        return self.words[self.level]

    def observe(self, step: int, reward: float | None) -> None:
        if reward is None:
            return
        self.recent.append(float(reward))
        self.history.append({"step": step, "words": self.length, "reward": float(reward)})
        if len(self.recent) < self.window:
            return
        mean = sum(self.recent) / len(self.recent)
        if self.start_level is None:
            self.start_level = mean
        if mean >= self.start_level and self.level < len(self.words) - 1:
            self.level += 1
        self.recent = []

    def state(self) -> dict:
        return {"level": self.level, "start_level": self.start_level, "recent": self.recent, "history": self.history}

    def load_state(self, state: dict) -> None:
        self.level = int(state["level"])
        self.start_level = state["start_level"]
        self.recent = list(state["recent"])
        self.history = list(state["history"])
