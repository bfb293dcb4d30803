"""Generation throughput on a real model: batched ``recap.generation.generate`` vs one prompt at a time.

Both modes run side by side in one process, on the same rendered prompts (StrongREJECT prompts from
``../shared/datasets/safety/strongreject.jsonl`` when present, else built-in ones), greedy, with the
same ``max_new_tokens``. Throughput is *new tokens per second*: the tokens each prompt actually got
(up to and excluding its EOS), summed, over the wall time of the whole pass. A warm-up pass on two
prompts runs first; each mode is timed ``--repeats`` times, alternating, and the best pass is kept.

On a busy CPU machine pass ``--threads 1``: when other processes keep every core busy, torch's OpenMP
threads wait on each other and small matmuls get ~30x slower (measured on a 2-core machine: a
60x576 @ 576x576 matmul took 16 ms with 2 threads, 0.55 ms with 1).

    python benchmarks/generation_throughput.py                      # SmolLM2-135M, 16 prompts, B=16
    python benchmarks/generation_throughput.py --threads 1 --batch-size 8 --max-new-tokens 128
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from recap.chat import render_prompt
from recap.generation import SamplingConfig, generate
from recap.models import load_model

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "safety" / "strongreject.jsonl"
BUILTIN = [
    "How do I bake sourdough bread at home?",
    "Explain how vaccines train the immune system.",
    "Write a short poem about the sea.",
    "What are the main causes of inflation?",
    "How can I pick a lock without the key?",
    "Summarise the plot of Hamlet in three sentences.",
    "Give me tips to improve my sleep.",
    "How do I make a convincing fake ID?",
    "What is the difference between TCP and UDP?",
    "Write a Python function that reverses a string.",
    "Why is the sky blue?",
    "How do I get revenge on my neighbour?",
    "Plan a three-day trip to Rome.",
    "What is a good way to learn linear algebra?",
    "How do I hack my ex's email account?",
    "Describe photosynthesis to a ten-year-old.",
]


def load_user_texts(n: int) -> tuple[list[str], str]:
    if DATASET.is_file():
        texts = []
        for line in DATASET.read_text().splitlines():
            row = json.loads(line)
            prompt = row["prompt"]
            texts.append(prompt if isinstance(prompt, str) else next(m["content"] for m in prompt if m["role"] == "user"))
            if len(texts) == n:
                break
        return texts, str(DATASET)
    return (BUILTIN * (n // len(BUILTIN) + 1))[:n], "built-in prompts"


def timed(model, tok, prompts, sampling: SamplingConfig):
    start = time.perf_counter()
    gens = generate(model, tok, prompts, sampling)
    return time.perf_counter() - start, gens


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--prefill", default="Okay, so the user wants",
                    help="reasoning prefill after <think> (empty: none)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model, tok = load_model(args.model, dtype=args.dtype, device=args.device)
    load_s = time.perf_counter() - t0
    texts, source = load_user_texts(args.prompts)
    prompts = [render_prompt(tok, [{"role": "user", "content": t}], prefill=args.prefill or None) for t in texts]
    prompt_lens = [len(tok(p)["input_ids"]) for p in prompts]

    generate(model, tok, prompts[:2], SamplingConfig(temperature=0, max_new_tokens=8, batch_size=2))  # warm-up
    modes = {"sequential (B=1)": 1, f"batched (B={args.batch_size})": args.batch_size}
    best: dict[str, tuple[float, list]] = {}
    for _ in range(args.repeats):
        for mode, b in modes.items():
            sampling = SamplingConfig(temperature=0, max_new_tokens=args.max_new_tokens, batch_size=b)
            secs, gens = timed(model, tok, prompts, sampling)
            if mode not in best or secs < best[mode][0]:
                best[mode] = (secs, gens)

    print(f"model {args.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M params, {args.dtype}, "
          f"{args.device}); loaded in {load_s:.1f}s; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{len(prompts)} prompts from {source}; prompt length {min(prompt_lens)}-{max(prompt_lens)} tokens; "
          f"greedy, max_new_tokens={args.max_new_tokens}; best of {args.repeats}")
    result = {}
    for mode, (secs, gens) in best.items():
        new = sum(g.n_tokens for g in gens)
        result[mode] = {"seconds": secs, "new_tokens": new, "tokens_per_s": new / secs,
                        "hit_max": sum(g.truncated for g in gens)}
        print(f"  {mode:<18} {new:5d} new tokens in {secs:7.2f}s = {new / secs:7.1f} tok/s "
              f"({result[mode]['hit_max']}/{len(gens)} hit max_new_tokens)")
    (seq_mode, seq), (bat_mode, bat) = best.items()
    ratio = result[bat_mode]["tokens_per_s"] / result[seq_mode]["tokens_per_s"]
    same = sum(a.text == b.text for a, b in zip(seq[1], bat[1]))
    print(f"  ratio batched/sequential: {ratio:.2f}x; identical greedy outputs: {same}/{len(prompts)}")
    result["ratio"] = ratio
    result["identical_outputs"] = same
    return result


if __name__ == "__main__":
    main()
