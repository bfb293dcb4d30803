"""How often a model recovers under a compliant prefill of ℓ words — the signal RECAP's prefilled groups have.

RECAP rewards a rollout that overrides the injected reasoning; GRPO learns only from groups whose rewards
differ. If a model (the RL start) almost never refuses after a compliant prefill, its prefilled groups give
RECAP little to reinforce. This script samples ``--samples`` answers per harmful prompt under prefills of
each length (the prompts' own ``counter_reasoning``, cut to ℓ words; ℓ = 0 is the clean prompt) and prints,
per ℓ: the share refused by the string rules, the mean reward of the training judge, and the share of
groups whose rewards spread by more than 0.5 (groups with a clear signal).

    python benchmarks/prefill_recovery.py --model runs/pilot/warm/final \\
        --prompts runs/pilot/probe-prompts.jsonl --judge classifier:runs/judge/refusal-minilm.npz

``--system-prompt`` adds a system message (e.g. the context-distillation prompt, to see what a distillation
under prefills could keep).
"""

from __future__ import annotations

import argparse
import time

from recap.data.examples import read_examples
from recap.data.mixture import truncate_words
from recap.inference.chat import final_answer, render_prompt
from recap.inference.generation import SamplingConfig, generate
from recap.inference.models import load_model
from recap.rewards.factory import load_judge
from recap.rewards.judges import JudgeItem, RuleJudge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="Model folder, hub id or alias (smollm2-135m).")
    ap.add_argument("--prompts", required=True, help="recap JSONL of harmful prompts with counter_reasoning.")
    ap.add_argument("--judge", default="rules", help="The training reward's judge spec.")
    ap.add_argument("--words", default="0,3,6,10,20,40", help="Prefill lengths ℓ, comma-separated.")
    ap.add_argument("--samples", type=int, default=4, help="Answers per prompt and length (a GRPO group).")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0, help="The RL rollouts' temperature.")
    ap.add_argument("--system-prompt", default="", help="A system message put before each prompt.")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default).")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    examples = [e for e in read_examples(args.prompts) if e.kind == "harmful" and e.counter_reasoning]
    if not examples:
        raise SystemExit(f"error: {args.prompts}: no harmful example with counter_reasoning")
    model, tokenizer = load_model(args.model)
    judge, rules = load_judge(args.judge), RuleJudge()
    system = [{"role": "system", "content": args.system_prompt}] if args.system_prompt else []
    k = args.samples
    print(f"{len(examples)} prompts × {k} samples, {args.model}, judge {args.judge}")
    print("| ℓ words | refused (rules) | mean reward | groups with spread > 0.5 | seconds |")
    print("|---|---|---|---|---|")
    for words in (int(w) for w in args.words.split(",")):
        start = time.time()
        rows = [e for e in examples for _ in range(k)]
        prefills = [truncate_words(e.counter_reasoning, words) if words else "" for e in rows]
        prompts = [render_prompt(tokenizer, system + e.messages(), p or None) for e, p in zip(rows, prefills)]
        sampling = SamplingConfig(
            temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_size=min(64, len(prompts))
        )
        gens = generate(model, tokenizer, prompts, sampling, seed=args.seed)
        answers = [final_answer(g.text, p, "continuation").answer for g, p in zip(gens, prefills)]
        items = [JudgeItem(e.user_text(), a, "harmful") for e, a in zip(rows, answers)]
        refused = sum(bool(v.refused) for v in rules.judge(items)) / len(items)
        scores = [v.score for v in judge.judge(items)]
        groups = [scores[i : i + k] for i in range(0, len(scores), k)]
        spread = sum(max(g) - min(g) > 0.5 for g in groups) / len(groups)
        mean = sum(scores) / len(scores)
        print(f"| {words} | {100 * refused:.1f} % | {mean:.3f} | {100 * spread:.1f} % | {time.time() - start:.0f} |")


if __name__ == "__main__":
    main()
