"""RECAP vs vanilla RL step cost, and generation tokens/s, with PyTorch and transformers alone.

Made for a GPU machine that has nothing else installed and no network (``benchmarks/gpu_check.sh``
runs it): the models are randomly initialised Qwen2-architecture models of ~0.5B and ~1.5B parameters
(the shapes of Qwen2.5-0.5B/1.5B), so nothing is downloaded. Random weights are fine for speed: the
cost of a step depends on shapes and token counts, not on what the tokens say.

One RL step here has the phases of TRL's ``GRPOTrainer`` step with the DAPO loss at ``beta = 0`` and
one iteration per generation batch (recap's defaults): sample ``num_generations`` rollouts for each of
``prompts_per_step`` prompts with ``model.generate``, then one forward/backward pass over prompt +
completion in micro-batches with the token-level clipped loss on completion tokens, then an AdamW step.
(TRL is not needed for this proxy; ``benchmarks/step_cost.py`` measures the real ``GRPOTrainer`` on CPU.)

Three arms share the prompts, model and seeds:

* ``vanilla``: no prompt carries a prefill;
* ``recap``: α of the safety prompts (``safety_fraction`` of all prompts) carry a prefill of
  ``prefill_tokens`` tokens *in the prompt*; every rollout may decode ``budget`` new tokens, as with
  TRL's single ``max_completion_length`` (equal decode budget);
* ``recap-shared-budget``: the same, but a prefilled rollout may decode only ``budget - prefill_tokens``
  new tokens, i.e. prefill + continuation share one reasoning budget (the paper's "same token budget";
  per-request budgets are what vLLM's ``max_tokens`` gives).

Random models rarely emit EOS, so every rollout decodes its whole budget: the worst case for RECAP
under an equal decode budget (a trained model that recovers from a prefill stops on its own).

    python benchmarks/gpu_check.py --out gpu_check.json                 # on a GPU, ~5 minutes
    python benchmarks/gpu_check.py --device cpu --sizes tiny --steps 2  # a CPU smoke run
    python benchmarks/gpu_check.py --device cpu --dtype float32 --sizes 135m --prompts-per-step 4 \
        --num-generations 4 --budget 128 --prefill-tokens 64 --gen-batch 16 --micro-batch 4 --gen-batches 1 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

SIZES = {  # Qwen2.5 shapes (vocabulary trimmed to 32k: embedding cost is not what we measure)
    "0.5b": dict(
        hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2, intermediate_size=4864
    ),
    "1.5b": dict(
        hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2, intermediate_size=8960
    ),
    "135m": dict(
        hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, intermediate_size=1536
    ),  # SmolLM2-135M's shapes, for a CPU run of the same proxy
    "tiny": dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128
    ),
}
VOCAB = 32768


def build(size: str, device: str, dtype) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=VOCAB,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
        **SIZES[size],
    )
    return Qwen2ForCausalLM(cfg).to(device=device, dtype=dtype)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def prompts_for(arm: str, args, gen: torch.Generator) -> list[tuple[list[int], int]]:
    """``(prompt ids, decode budget)`` per prompt of one step; the same base prompts for every arm."""
    out = []
    n_prefilled = round(args.prompts_per_step * args.safety_fraction * args.alpha)
    lengths = torch.randint(
        args.prompt_tokens // 2, args.prompt_tokens * 3 // 2, (args.prompts_per_step,), generator=gen
    )
    prefill_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=gen)))
    for i, n in enumerate(lengths.tolist()):
        ids = torch.randint(100, VOCAB, (n,), generator=gen).tolist()
        budget = args.budget
        if arm != "vanilla" and i < n_prefilled:
            ids += torch.randint(100, VOCAB, (args.prefill_tokens,), generator=prefill_gen).tolist()
            if arm == "recap-shared-budget":
                budget = max(1, args.budget - args.prefill_tokens)
        out.append((ids, budget))
    return out


def left_pad(rows: list[list[int]], device: str):
    width = max(map(len, rows))
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def rollouts(model, prompts, args, device):
    """Generate ``num_generations`` completions per prompt; prompts with the same budget are one call."""
    seqs = []  # (prompt ids, completion ids)
    for budget in sorted({b for _, b in prompts}):
        group = [p for p, b in prompts if b == budget]
        rows = [p for p in group for _ in range(args.num_generations)]
        for s in range(0, len(rows), args.gen_batch):
            chunk = rows[s : s + args.gen_batch]
            ids, mask = left_pad(chunk, device)
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=budget,
                min_new_tokens=budget,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                pad_token_id=0,
            )
            for r, p in enumerate(chunk):
                seqs.append((p, out[r, ids.shape[1] :].tolist()))
    return seqs


def loss_pass(model, seqs, args, device) -> int:
    """Forward/backward of the token-level clipped loss (DAPO) over completion tokens, micro-batched.
    Returns the number of tokens in the loss."""
    total = sum(len(c) for _, c in seqs)
    for s in range(0, len(seqs), args.micro_batch):
        chunk = seqs[s : s + args.micro_batch]
        ids, mask = left_pad([p + c for p, c in chunk], device)
        comp = torch.zeros_like(mask)
        for r, (_, c) in enumerate(chunk):
            comp[r, ids.shape[1] - len(c) :] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        old = logp.detach()
        adv = torch.randn(len(chunk), 1, device=device)
        ratio = torch.exp(logp - old)
        per_tok = -torch.min(ratio * adv, torch.clamp(ratio, 1 - 0.2, 1 + 0.28) * adv)
        loss = (per_tok * comp[:, 1:]).sum() / total
        loss.backward()
        del logits, logp
    return total


def step(model, opt, arm, args, device, seed):
    gen = torch.Generator().manual_seed(seed)
    prompts = prompts_for(arm, args, gen)
    torch.manual_seed(seed)
    sync(device)
    t0 = time.perf_counter()
    model.eval()
    with torch.no_grad():
        seqs = rollouts(model, prompts, args, device)
    sync(device)
    t1 = time.perf_counter()
    model.train()
    in_loss = loss_pass(model, seqs, args, device)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    t2 = time.perf_counter()
    return {
        "seconds": t2 - t0,
        "generate_s": t1 - t0,
        "train_s": t2 - t1,
        "decoded": sum(len(c) for _, c in seqs),
        "prompt_tokens": sum(len(p) for p, _ in seqs),
        "loss_tokens": in_loss,
    }


def step_cost(size, args, device, dtype) -> dict:
    model = build(size, device, dtype)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    arms = ["vanilla", "recap", "recap-shared-budget"]
    step(model, opt, "recap", args, device, seed=999)  # warm-up (kernels, allocator)
    per_arm = {a: [] for a in arms}
    for rep in range(args.steps):
        for arm in arms if rep % 2 == 0 else arms[::-1]:  # alternate the order against drift
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            row = step(model, opt, arm, args, device, seed=rep)
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
            per_arm[arm].append(row)
    out = {}
    for arm, rows in per_arm.items():
        out[arm] = {k: statistics.median(r[k] for r in rows) for k in rows[0] if rows[0][k] is not None}
    for arm in arms[1:]:
        out[arm]["ratio_vs_vanilla"] = out[arm]["seconds"] / out["vanilla"]["seconds"]
    del model, opt
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out


@torch.no_grad()
def generation_speed(size, args, device, dtype) -> dict:
    model = build(size, device, dtype).eval()
    gen = torch.Generator().manual_seed(0)
    out = {}
    for batch in args.gen_batches:
        rows = [torch.randint(100, VOCAB, (args.prompt_tokens,), generator=gen).tolist() for _ in range(batch)]
        ids, mask = left_pad(rows, device)
        model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        sync(device)
        t = time.perf_counter()
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=args.gen_tokens,
            min_new_tokens=args.gen_tokens,
            do_sample=True,
            top_k=0,
            pad_token_id=0,
        )
        sync(device)
        secs = time.perf_counter() - t
        out[str(batch)] = {"seconds": secs, "tokens_per_s": batch * args.gen_tokens / secs}
    del model
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--sizes", nargs="+", default=["0.5b", "1.5b"], choices=list(SIZES))
    ap.add_argument("--steps", type=int, default=3, help="timed steps per arm (after one warm-up step)")
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--num-generations", type=int, default=16, help="rollouts per prompt (the paper: 16)")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="mean prompt length without prefill")
    ap.add_argument("--prefill-tokens", type=int, default=256, help="prefill length in tokens")
    ap.add_argument("--budget", type=int, default=512, help="new tokens per rollout (max_completion_length)")
    ap.add_argument("--alpha", type=float, default=0.5, help="fraction of safety prompts prefilled")
    ap.add_argument("--safety-fraction", type=float, default=0.5, help="fraction of prompts that are safety prompts")
    ap.add_argument("--gen-batch", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=8)
    ap.add_argument("--gen-batches", type=int, nargs="+", default=[1, 16, 128])
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    device = args.device
    info = {
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "args": vars(args),
    }
    print(json.dumps(info), flush=True)
    result = {"info": info, "step_cost": {}, "generation": {}}
    for size in args.sizes:
        t = time.perf_counter()
        result["generation"][size] = g = generation_speed(size, args, device, dtype)
        for b, row in g.items():
            print(f"{size} generate batch {b:>4}: {row['tokens_per_s']:9.1f} tok/s", flush=True)
        result["step_cost"][size] = s = step_cost(size, args, device, dtype)
        print(f"{size} step cost (median of {args.steps}; {time.perf_counter() - t:.0f}s for this size)")
        print(
            f"  {'arm':<20} {'s/step':>7} {'gen s':>6} {'train s':>7} {'decoded':>8} {'prompt':>7} "
            f"{'in loss':>8} {'peak GiB':>8} {'ratio':>6}"
        )
        for arm, r in s.items():
            print(
                f"  {arm:<20} {r['seconds']:7.2f} {r['generate_s']:6.2f} {r['train_s']:7.2f} {r['decoded']:8.0f} "
                f"{r['prompt_tokens']:7.0f} {r['loss_tokens']:8.0f} {r.get('peak_mem_gib') or 0:8.1f} "
                f"{r.get('ratio_vs_vanilla', 1.0):6.3f}",
                flush=True,
            )
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(result, fh, indent=1)
    return result


if __name__ == "__main__":
    main()
