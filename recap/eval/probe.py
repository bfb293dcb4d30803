"""A quick probe of a policy under the prefilling attack: harmful prompts, each with its own counter-aligned
reasoning cut to ℓ words inside the open think block, a few samples each; the answers judged by the string
rules (refused or not) and, if given, by a reward judge (its scores). ℓ = 0 is the clean prompt.

The full evaluation (``recap.eval.runner``) writes every sample to a result store; this probe is the cheap
number watched during RL (``recap experiment``) and per prefill length
(``benchmarks/prefill_recovery.py``): how often the model overrides a compliant start, and whether a GRPO
group of its samples has any signal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from recap.data.examples import Example
from recap.data.mixture import truncate_words
from recap.inference.chat import final_answer, render_prompt
from recap.inference.generation import SamplingConfig, generate
from recap.rewards.judges import JudgeItem, RuleJudge


@dataclass
class ProbeResult:
    """One probe at one prefill length: per sample (prompt-major, ``samples`` per prompt) the answer, whether
    the string rules call it a refusal, and the reward judge's score (``None`` without a judge)."""

    words: int
    samples: int
    answers: list[str]
    refused: list[bool]
    scores: list[float] | None

    @property
    def refusal_rate(self) -> float:
        return sum(self.refused) / len(self.refused)

    @property
    def mean_score(self) -> float | None:
        return None if self.scores is None else sum(self.scores) / len(self.scores)

    def spread_share(self, threshold: float = 0.5) -> float | None:
        """Share of prompts whose ``samples`` scores differ by more than ``threshold`` (groups with signal)."""
        if self.scores is None:
            return None
        k = self.samples
        groups = [self.scores[i : i + k] for i in range(0, len(self.scores), k)]
        return sum(max(g) - min(g) > threshold for g in groups) / len(groups)


def probe_under_prefill(
    model,
    tokenizer,
    examples: Sequence[Example],
    words: int,
    sampling: SamplingConfig,
    *,
    samples: int = 1,
    seed: int = 0,
    system_prompt: str = "",
    judge=None,
    unclosed: str = "continuation",
) -> ProbeResult:
    """Sample ``samples`` answers per harmful example after the first ``words`` words of its
    ``counter_reasoning`` (the clean prompt when ``words`` is 0), with ``system_prompt`` as a system message
    when given; the answer is the continuation's final answer (``unclosed`` as in ``final_answer``; the
    prefill is never part of it). Examples without counter-aligned reasoning are an error."""
    missing = [e.id for e in examples if words and not e.counter_reasoning]
    if missing:
        raise ValueError(f"example {missing[0]!r} has no counter_reasoning to prefill")
    if not examples or samples < 1:
        raise ValueError("the probe needs at least one example and one sample per example")
    rows = [e for e in examples for _ in range(samples)]
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    prefills = [truncate_words(e.counter_reasoning, words) if words else "" for e in rows]
    prompts = [render_prompt(tokenizer, system + e.messages(), p or None) for e, p in zip(rows, prefills)]
    gens = generate(model, tokenizer, prompts, sampling, seed=seed)
    answers = [final_answer(g.text, p, unclosed).answer for g, p in zip(gens, prefills)]
    items = [JudgeItem(e.user_text(), a, "harmful") for e, a in zip(rows, answers)]
    refused = [bool(v.refused) for v in RuleJudge().judge(items)]
    scores = None if judge is None else [v.score for v in judge.judge(items)]
    return ProbeResult(words, samples, answers, refused, scores)
