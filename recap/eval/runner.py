"""Run every evaluation condition on a model and stream the judged samples to a ``ResultStore``.

Stages run in order — clean, prefill, refusal_prefill, hijack, ipr round 1..k (each round continues the
previous one) — and each is written with its completion marker, so a rerun skips finished stages.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

from recap.chat import UNCLOSED_MODES, final_answer, split_reasoning
from recap.data.examples import Example
from recap.data.mixture import draw_length, truncate_words
from recap.eval import attacks
from recap.eval.metrics import has_reflection
from recap.eval.store import ResultStore
from recap.generation import SamplingConfig, generate
from recap.rewards.judges import Judge, JudgeItem


@dataclass
class EvalConfig:
    """Which conditions to run and how to sample."""

    attacks: list[str] = field(
        default_factory=lambda: list(attacks.ATTACKS),
        metadata={"help": f"Conditions to run, among {', '.join(attacks.ATTACKS)}."})
    prefill_words: int | list[int] | str = field(
        default=500, metadata={"help": "Attack prefill length ℓ in words (int, list or 'lo-hi' range)."})
    ipr_rounds: int = field(default=3, metadata={"help": "Rounds k of iterative prefill reset (the paper reports 1–3)."})
    samples_per_prompt: int = field(default=1, metadata={"help": "Samples drawn per prompt and condition."})
    sampling: SamplingConfig = field(default_factory=SamplingConfig, metadata={"help": "Decoding settings."})
    seed: int = field(default=0, metadata={"help": "Seed of the prefill lengths and of sampling."})
    unclosed: str = field(default="invalid", metadata={"help": "A completion that never closes the think block: 'invalid' (no answer; reasoning models) or 'continuation' (the model's own text is the answer; models without thinking tags such as SmolLM2)."})

    def __post_init__(self):
        if self.unclosed not in UNCLOSED_MODES:
            raise ValueError(f"unclosed must be one of {', '.join(UNCLOSED_MODES)}, got {self.unclosed!r}")
        unknown = set(self.attacks) - set(attacks.ATTACKS)
        if unknown:
            raise ValueError(f"unknown attack(s) {sorted(unknown)}; known: {', '.join(attacks.ATTACKS)}")


def _prefill_for(example: Example, cfg: EvalConfig) -> str:
    if not example.counter_reasoning:
        raise ValueError(f"example {example.id!r} has no counter-aligned reasoning to attack with")
    rng = random.Random(zlib.crc32(f"{cfg.seed}:{example.id}".encode()))
    return truncate_words(example.counter_reasoning, draw_length(cfg.prefill_words, rng))


def evaluate(model, tokenizer, examples: list[Example], judge: Judge, cfg: EvalConfig, store: ResultStore,
             tag: dict, log: Callable[[str], None] = lambda s: None,
             progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """Evaluate ``model`` on ``examples`` under every condition of ``cfg``; records carry ``tag`` (e.g.
    ``{"method": "recap", "seed": 0}``). Returns the records of this run (including resumed ones).
    ``progress(stage, done, total)`` is called after each generated batch."""
    prefix = ":".join(f"{k}={v}" for k, v in sorted(tag.items()))
    n = cfg.samples_per_prompt

    def ntok(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def run_stage(name: str, jobs: list[tuple[Example, attacks.AttackPrompt]], attack: str, rnd: int = 0):
        stage = f"{prefix}:{name}"
        if store.done(stage):
            log(f"  {name}: already in the store")
            return store.records(stage=stage)
        seed = zlib.crc32(stage.encode()) % 2**31
        done = [0]

        def step(k: int) -> None:
            done[0] += k
            if progress:
                progress(name, done[0], len(jobs))

        gens = generate(model, tokenizer, [p.text for _, p in jobs], cfg.sampling, seed=seed, progress=step)
        splits = [final_answer(g.text, p.injected, cfg.unclosed) for (_, p), g in zip(jobs, gens)]
        verdicts = judge.judge([JudgeItem(e.user_text(), s.answer, e.kind, e.reference)
                                for (e, _), s in zip(jobs, splits)])
        records = []
        for i, ((e, p), g, s, v) in enumerate(zip(jobs, gens, splits, verdicts)):
            # The model's own reasoning (none after a hijack, none when its whole text is the answer).
            own = split_reasoning(g.text) if attack != "hijack" and (s.closed or cfg.unclosed == "invalid") else None
            own_reasoning = own.reasoning if own else ""
            if not s.closed and cfg.unclosed == "invalid":
                label, score = "invalid", 0.0
            else:
                label, score = v.label, v.score
            records.append({
                **tag, "attack": attack, "round": rnd, "example_id": e.id, "sample": i % n, "kind": e.kind,
                "prompt": e.user_text(), "injected": p.injected, "prompt_text": p.text, "completion": g.text,
                "answer": s.answer, "label": label, "score": score, "reflected": has_reflection(own_reasoning),
                "reasoning_tokens": ntok(own_reasoning), "answer_tokens": ntok(s.answer),
                "truncated": g.truncated,
            })
        store.add_stage(stage, records)
        log(f"  {name}: {len(records)} samples")
        return store.records(stage=stage)  # the same shape as resumed records

    harmful = [e for e in examples if e.kind == "harmful"]
    benign = [e for e in examples if e.kind == "benign"]
    out: list[dict] = []
    if "clean" in cfg.attacks:
        out += run_stage("clean", [(e, attacks.clean_prompt(tokenizer, e.messages()))
                                   for e in examples for _ in range(n)], "clean")
    prefill_records: list[dict] = []
    if "prefill" in cfg.attacks or "ipr" in cfg.attacks:
        prefill_records = run_stage("prefill", [(e, attacks.prefill_prompt(tokenizer, e.messages(), _prefill_for(e, cfg)))
                                                for e in harmful for _ in range(n)], "prefill")
        out += prefill_records
    if "refusal_prefill" in cfg.attacks:
        out += run_stage("refusal_prefill", [(e, attacks.prefill_prompt(tokenizer, e.messages(), _prefill_for(e, cfg)))
                                             for e in benign for _ in range(n)], "refusal_prefill")
    if "hijack" in cfg.attacks:
        out += run_stage("hijack", [(e, attacks.hijack_prompt(tokenizer, e.messages(), e.counter_reasoning))
                                    for e in harmful for _ in range(n)], "hijack")
    if "ipr" in cfg.attacks:
        by_id = {e.id: e for e in harmful}
        previous = prefill_records
        for k in range(1, cfg.ipr_rounds + 1):
            jobs = [(by_id[r["example_id"]],
                     attacks.ipr_prompt(attacks.AttackPrompt(r["prompt_text"], r["injected"]), r["completion"],
                                        _prefill_for(by_id[r["example_id"]], cfg)))
                    for r in previous]
            previous = run_stage(f"ipr{k}", jobs, "ipr", k)
            out += previous
    return out
