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
from recap.eval.probe import probe_under_prefill
from recap.inference.generation import SamplingConfig
from recap.inference.models import load_model
from recap.rewards.factory import load_judge


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
    judge = load_judge(args.judge)
    k = args.samples
    print(f"{len(examples)} prompts × {k} samples, {args.model}, judge {args.judge}")
    print("| ℓ words | refused (rules) | mean reward | groups with spread > 0.5 | seconds |")
    print("|---|---|---|---|---|")
    sampling = SamplingConfig(
        temperature=args.temperature, max_new_tokens=args.max_new_tokens, batch_size=min(64, len(examples) * k)
    )
    for words in (int(w) for w in args.words.split(",")):
        start = time.time()
        r = probe_under_prefill(
            model,
            tokenizer,
            examples,
            words,
            sampling,
            samples=k,
            seed=args.seed,
            system_prompt=args.system_prompt,
            judge=judge,
        )
        print(
            f"| {words} | {100 * r.refusal_rate:.1f} % | {r.mean_score:.3f} | {100 * r.spread_share():.1f} % "
            f"| {time.time() - start:.0f} |"
        )


if __name__ == "__main__":
    main()
