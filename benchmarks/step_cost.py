"""Training-step cost of RECAP vs vanilla DAPO, and of recap's trainer vs stock TRL, with the real trainers.

Arms (``--arms``, the first is the baseline of the printed ratios):

* ``vanilla``, ``recap``: ``RecapTrainer`` as configured (``--rollout-decoder``, ``--shared-prefix``; by default
  recap's decode loop and the shared-prefix loss pass) on the mixture with α = 0 and α = 0.5;
* ``vanilla-main``, ``recap-main``: the same with the previous defaults (TRL's generate, no shared prefix);
* ``trl-recap``: stock TRL ``GRPOTrainer`` (same GRPOConfig, model, LoRA, reward and rows) on the α = 0.5 mixture.

All arms use the same model, the same prompts in the same order (repetition r uses seed r in every
arm), the same sampling seeds and the same generation budget (``max_completion_length``); the mixture differs
between vanilla and RECAP: RECAP prefills α = 0.5 of the safety prompts (``recap data mix``), vanilla none.
Each (arm, repetition) runs in a
fresh process — so peak memory is its own — for ``--steps`` optimizer steps after one warm-up step;
arms alternate (a, b, b, a, …) against drift on a noisy machine. Reported per arm,
medians over all timed steps: seconds per step (TRL's ``step_time``), tokens decoded per step, prompt
tokens read per step (the prefill is read, not decoded), tokens in the loss, peak resident memory;
and the ratio of each arm to the first. The seconds a step spends in rollouts (``_generate_single_turn``) are timed
apart from the rest (rewards, the loss pass, the optimizer step).

``--max-total-length`` turns on the paper's total budget (prompt + prefill + continuation, TrainConfig
``max_total_length``). ``--rollout-decoder`` sets TrainConfig ``rollout_decoder``: ``hf`` is TRL's
transformers rollouts (one ``generate`` call that computes every row until the longest ends; per-row
budgets are enforced by a stopping criterion that frees nothing), ``continuous`` is recap's decode loop
(rows leave the batch at EOS or at their own budget).

    python benchmarks/step_cost.py --model toy                       # miniature world, ~4 minutes
    # recap vs stock TRL at the real-effect shape (6 prompts × 8 rollouts × 32 tokens, 40-word prefills, LoRA 16)
    python benchmarks/step_cost.py --model smollm2-135m --arms trl-recap recap --prefill-words 40 --prompts-per-step 6 \
        --num-generations 8 --max-completion-length 32 --lora-r 16 --micro-batch-size 16 --no-dynamic-sampling \
        --steps 2 --repeats 1 --check-gradients
    python benchmarks/step_cost.py --model smollm2-135m --steps 3    # needs runs/smollm2/train-prompts.jsonl
    python benchmarks/step_cost.py --model smollm2-135m --max-completion-length 512 --max-total-length 640 --rollout-decoder continuous
    # the paper's shape: 500-word prefills under a 2,048-token total budget (docs/performance.md, round three)
    python benchmarks/step_cost.py --model smollm2-135m --data runs/bench/long-prompts.jsonl --min-reasoning-words 500 \
        --prefill-words 500 --prompts-per-step 4 --num-generations 2 --max-completion-length 2048 \
        --max-total-length 2048 --micro-batch-size 2 --steps 1 --repeats 1 --no-dynamic-sampling --no-eos \
        --rollout-decoder continuous
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ARMS = {  # name: (α of the mixture, trainer, TrainConfig overrides)
    "vanilla": (0.0, "recap", {}),
    "recap": (0.5, "recap", {}),
    "vanilla-main": (0.0, "recap", {"shared_prefix": "off", "rollout_decoder": "hf"}),
    "recap-main": (0.5, "recap", {"shared_prefix": "off", "rollout_decoder": "hf"}),
    "trl-recap": (0.5, "trl", {"shared_prefix": "off", "rollout_decoder": "hf"}),
}


def _examples(args, alpha: float):
    from recap.data.mixture import MixtureConfig, build_mixture

    if args.model == "toy":
        from recap.toy.data import train_examples

        return build_mixture(train_examples(seed=0), MixtureConfig(alpha=alpha, prefill_words="8-30", seed=0))
    from recap.data.examples import read_examples

    data = Path(args.data)
    if not data.is_file():
        raise SystemExit(
            f"{data} not found: make it with `recap data prefill ../shared/datasets/training/"
            "balanced_safe_unsafe_3000.jsonl --limit 160 --subset-seed 0 --config "
            f"configs/smollm2/prefills.yaml --out {data}`, or pass --data"
        )
    examples = read_examples(data)
    if args.min_reasoning_words:  # e.g. the paper's 500-word prefills: only prompts with that much reasoning
        from recap.data.mixture import count_words

        examples = [e for e in examples if count_words(e.counter_reasoning or "") >= args.min_reasoning_words]
    words = int(args.prefill_words) if args.prefill_words.isdigit() else args.prefill_words
    return build_mixture(examples, MixtureConfig(alpha=alpha, prefill_words=words, seed=0))


def _config(args, out_dir: str, seed: int = 0):
    from recap.train import TrainConfig

    if args.model == "toy":
        from recap.demo import DemoConfig

        base = DemoConfig().rl
        model = args.toy_base or _toy_base(out_dir)
        return replace(
            base,
            model=model,
            output_dir=out_dir,
            max_steps=args.steps + 1,
            logging_steps=1,
            save_steps=10_000,
            num_threads=args.threads,
            seed=seed,
            max_total_length=args.max_total_length,
            rollout_decoder=args.rollout_decoder,
            shared_prefix=args.shared_prefix,
            **({"dynamic_sampling": False} if args.no_dynamic_sampling else {}),
            **({"max_completion_length": args.max_completion_length} if args.toy_budget else {}),
        )
    return TrainConfig(
        model=args.model,
        output_dir=out_dir,
        judge="rules",
        num_generations=args.num_generations,
        prompts_per_step=args.prompts_per_step,
        max_steps=args.steps + 1,
        max_completion_length=args.max_completion_length,
        learning_rate=5e-5,
        unclosed="continuation",
        gradient_checkpointing=False,
        logging_steps=1,
        save_steps=10_000,
        num_threads=args.threads,
        use_cpu=True,
        seed=seed,
        max_total_length=args.max_total_length,
        rollout_decoder=args.rollout_decoder,
        shared_prefix=args.shared_prefix,
        dynamic_sampling=not args.no_dynamic_sampling,
        micro_batch_size=args.micro_batch_size,
        lora_r=args.lora_r,
        lora_alpha=2 * args.lora_r,
    )


def _toy_base(out_dir: str) -> str:
    """The miniature base model, pre-trained once (``recap demo``'s settings) and cached under runs/bench:
    a model that reasons, closes the think block and stops, as the real base models do."""
    from recap.toy.model import PretrainConfig, ToyModelConfig, pretrain

    folder = Path("runs/bench/toy-base")
    if not (folder / "config.json").exists():
        pretrain(PretrainConfig(), ToyModelConfig(), folder, log=lambda s: None)
    return str(folder)


def _job(arm: str, rep: int, args, out_dir: str, queue) -> None:
    import warnings

    import torch

    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    from recap.train import build_trainer

    torch.set_num_threads(args.threads)
    alpha, kind, overrides = ARMS[arm]
    cfg = replace(_config(args, out_dir, seed=rep), **overrides)  # every arm of a repetition: same prompts, order
    examples = _examples(args, alpha)
    trainer = _stock_trainer(cfg, examples) if kind == "trl" else build_trainer(cfg, examples)
    if args.no_eos:  # an id no row samples: every rollout writes its whole budget
        never = len(trainer.processing_class)
        trainer.eos_token_ids = [never]
        trainer.generation_config.eos_token_id = trainer.generation_kwargs["eos_token_id"] = [never]
    rollout_s: dict[int, float] = {}
    inner = trainer._generate_single_turn

    def timed(*a, **kw):
        t = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            step = trainer.state.global_step + 1
            rollout_s[step] = rollout_s.get(step, 0.0) + time.perf_counter() - t

    trainer._generate_single_turn = timed
    cpu_s: dict[int, float] = {}
    trainer.add_callback(_CpuClock(cpu_s))
    trainer.train()
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    rows, prev_tokens = [], 0.0
    for h in logs:
        batch = cfg.prompts_per_step * cfg.num_generations
        decoded = h["completions/mean_length"] * batch
        rows.append(
            {
                "seconds": h["step_time"],
                "cpu_s": cpu_s.get(h["step"], float("nan")),
                "rollout_s": rollout_s.get(h["step"], 0.0),
                "rest_s": h["step_time"] - rollout_s.get(h["step"], 0.0),
                "decoded": decoded,
                "prompt_tokens": h["num_tokens"] - prev_tokens - decoded,
                "loss_tokens": decoded,
                "rounds": 1 + h.get("dynamic_sampling/extra_rounds", 0.0),
            }
        )
        prev_tokens = h["num_tokens"]
    queue.put(
        {
            "arm": arm,
            "prompts_per_step": cfg.prompts_per_step,
            "num_generations": cfg.num_generations,
            "max_completion_length": cfg.max_completion_length,
            "steps": rows[1:],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    )


def _stock_trainer(cfg, examples):
    """TRL's own ``GRPOTrainer`` with what ``build_trainer`` gives ``RecapTrainer``: the model (LoRA included), the
    GRPOConfig, the reward on the final answer and the dataset rows — no dynamic sampling, budgets or sharing."""
    from datasets import Dataset
    from trl import GRPOTrainer

    from recap.inference.models import apply_lora, load_model, prepare_tokenizer
    from recap.rewards.factory import load_judges
    from recap.rewards.reward import AnswerReward
    from recap.train import grpo_config, rl_rows

    if cfg.dynamic_sampling or cfg.max_total_length:
        raise SystemExit("the trl-recap arm has no dynamic sampling or total budget: add --no-dynamic-sampling")
    model, tokenizer = load_model(cfg.model, dtype=cfg.dtype)
    prepare_tokenizer(model, tokenizer)
    if cfg.lora_r:
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
    judges = load_judges(cfg.judge, cfg.judges).judges
    return GRPOTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=[AnswerReward(judges, format_penalty=cfg.format_penalty, unclosed=cfg.unclosed)],
        args=grpo_config(cfg),
        train_dataset=Dataset.from_list(rl_rows(examples, tokenizer, cfg.think_system_prompt)),
    )


def _gradient_check(args) -> dict:
    """On the benchmark's own model and RECAP mixture: one rollout batch, then its loss and gradient with the
    shared-prefix pass and with TRL's unshared one on the same weights. The batch's advantages are replaced by
    seeded random ones and LoRA's B matrices (zero at the start) by small seeded random ones, so that every
    trained parameter gets a gradient (a group whose rewards are all equal has none). Returns the largest
    per-token log-prob difference and the largest gradient difference relative to its parameter's largest
    entry."""
    import torch

    from recap.train import build_trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = replace(_config(args, tmp, seed=0), shared_prefix="on")
        trainer = build_trainer(cfg, _examples(args, 0.5))
        trainer.model.train()
        rows = [
            r for r in trainer.train_dataset.select(range(cfg.prompts_per_step)) for _ in range(cfg.num_generations)
        ]
        torch.manual_seed(0)
        batch = trainer._generate_and_score_completions([dict(r) for r in rows])
        g = torch.Generator().manual_seed(0)
        batch["advantages"] = torch.randn(batch["advantages"].shape, generator=g)
        with torch.no_grad():
            for name, param in trainer.model.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=g) * 0.01)
        # micro-batches of micro_batch_size rows (as training splits them), gradients accumulated
        from trl.trainer.utils import split_tensor_dict

        micro = cfg.micro_batch_size or len(rows)
        parts = split_tensor_dict(batch, len(rows) // micro)
        trainer.current_gradient_accumulation_steps = trainer.args.steps_per_generation = len(parts)
        input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
        mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
        width = batch["completion_ids"].shape[1]
        out = {}
        for shared in (True, False):
            trainer._shared = shared
            trainer.model.zero_grad()
            with torch.no_grad():
                logps = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, mask, width, micro)[0]
            for part in parts:
                trainer.compute_loss(trainer.model, part).backward()
            grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
            out[shared] = (logps, grads)
        scored = batch["completion_mask"].bool()
        logp_gap = (out[True][0] - out[False][0])[scored].abs().max().item()
        if any(g.abs().max().item() == 0 for g in out[False][1].values()):
            raise RuntimeError("a trained parameter got no gradient: the check would be vacuous")
        grad_gap = max(
            (out[True][1][n] - g).abs().max().item() / g.abs().max().item() for n, g in out[False][1].items()
        )
        read = trainer._metrics["train"]["shared_prefix/read_fraction"]
        return {
            "max_logp_diff": logp_gap,
            "max_grad_rel_diff": grad_gap,
            "parameters": len(out[False][1]),
            "read_fraction": min(read) if read else None,
        }


def _CpuClock(into: dict):
    """A trainer callback recording each step's process CPU seconds (all threads) into ``into[step]``: with
    ``--threads 1`` far less sensitive than the wall time to other work on a shared machine."""
    from transformers import TrainerCallback

    class CpuClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.process_time()

        def on_step_end(self, args, state, control, **kw):
            into[state.global_step] = time.process_time() - self.t

    return CpuClock()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy", help="toy, or a real model (smollm2-135m, a folder, a .gguf)")
    ap.add_argument(
        "--data", default="runs/smollm2/train-prompts.jsonl", help="prompts with counter_reasoning (real models)"
    )
    ap.add_argument("--prefill-words", default="20-60", help="ℓ of the RECAP arm (real models)")
    ap.add_argument(
        "--min-reasoning-words",
        type=int,
        default=0,
        help="use only the prompts whose counter-aligned reasoning has at least this many words (real models)",
    )
    ap.add_argument(
        "--steps",
        type=int,
        default=4,
        help="timed steps per run (after one warm-up step); 0 with --check-gradients: only the check",
    )
    ap.add_argument("--repeats", type=int, default=2, help="runs per arm, alternating")
    ap.add_argument("--prompts-per-step", type=int, default=4)
    ap.add_argument("--num-generations", type=int, default=8)
    ap.add_argument(
        "--max-completion-length",
        type=int,
        default=64,
        help="real models; the miniature world keeps its own (48) unless --toy-budget",
    )
    ap.add_argument("--toy-budget", action="store_true", help="use --max-completion-length in the miniature world too")
    ap.add_argument("--max-total-length", type=int, default=0, help="TrainConfig max_total_length (0: off)")
    ap.add_argument(
        "--arms", nargs="+", default=["vanilla", "recap"], choices=list(ARMS), help="arms to compare (first: baseline)"
    )
    ap.add_argument(
        "--rollout-decoder",
        default="continuous",
        choices=("hf", "continuous"),
        help="TrainConfig rollout_decoder of the vanilla/recap arms: continuous (recap's decode loop; each prompt read once, rows leave at EOS or their budget) or hf (TRL's generate)",
    )
    ap.add_argument(
        "--shared-prefix",
        default="auto",
        choices=("auto", "on", "off"),
        help="TrainConfig shared_prefix of the vanilla/recap arms",
    )
    ap.add_argument("--lora-r", type=int, default=0, help="TrainConfig lora_r (real models; α = 2r)")
    ap.add_argument(
        "--check-gradients",
        action="store_true",
        help="first compare one rollout batch's log-probs and gradients, shared prefix vs TRL's unshared pass",
    )
    ap.add_argument(
        "--micro-batch-size", type=int, default=0, help="TrainConfig micro_batch_size (real models; 0: one pass)"
    )
    ap.add_argument(
        "--no-eos",
        action="store_true",
        help="rollouts never end before their budget (the end-of-sequence id is one no row samples): the cost of "
        "the budgets, not of where the model happens to stop",
    )
    ap.add_argument(
        "--no-dynamic-sampling",
        action="store_true",
        help="one generation round per step in both arms (dynamic sampling refills zero-variance groups, so a "
        "step's rounds depend on the rewards)",
    )
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--toy-base", default="", help="a miniature base model folder (default: pre-train one into runs/bench/toy-base)"
    )
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    if args.model == "toy" and not args.toy_base:
        args.toy_base = _toy_base("")
    arms = args.arms
    if len(set(arms)) != len(arms) or len(arms) < 2:
        raise SystemExit("--arms: name at least two different arms")
    gradients = None
    if args.check_gradients:
        gradients = _gradient_check(args)
        print(
            f"  gradient check (one rollout batch, shared prefix vs TRL's pass): max |Δ log-prob| "
            f"{gradients['max_logp_diff']:.2e}, max gradient difference {gradients['max_grad_rel_diff']:.2e} of the "
            f"parameter's largest entry over {gradients['parameters']} parameters; tokens read "
            f"{gradients['read_fraction']:.2f} of the unshared pass's",
            flush=True,
        )
        if args.steps == 0:
            return {"gradient_check": gradients}
    ctx = mp.get_context("spawn")
    runs: dict[str, list] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        order = [(rep, a) for rep in range(args.repeats) for a in (arms if rep % 2 == 0 else arms[::-1])]
        for i, (rep, arm) in enumerate(order):
            queue = ctx.Queue()
            proc = ctx.Process(target=_job, args=(arm, rep, args, os.path.join(tmp, f"run{i}"), queue))
            proc.start()
            result = queue.get()
            proc.join()
            runs[arm].append(result)
            print(
                f"  run {i + 1}/{len(order)} {arm}: " + ", ".join(f"{s['seconds']:.2f}s" for s in result["steps"]),
                flush=True,
            )
    summary = {}
    for arm, results in runs.items():
        steps = [s for r in results for s in r["steps"]]
        summary[arm] = {k: statistics.median(s[k] for s in steps) for k in steps[0]}
        summary[arm]["peak_rss_mib"] = max(r["peak_rss_mib"] for r in results)
        summary[arm]["steps_timed"] = len(steps)
    base = arms[0]
    first = runs[base][0]
    print(
        f"model {args.model}; {first['prompts_per_step']} prompts × {first['num_generations']} rollouts, "
        f"max_completion_length {first['max_completion_length']}; "
        f"{args.threads} threads; load average {os.getloadavg()[0]:.1f}; medians over {summary[base]['steps_timed']} steps"
    )
    print(
        f"  rollout_decoder: {args.rollout_decoder}; shared_prefix: {args.shared_prefix} (the *-main and trl arms: hf, "
        f"off); max_total_length: {args.max_total_length or 'off'}; lora_r: {args.lora_r or 'off'}; "
        f"dynamic sampling: {'off' if args.no_dynamic_sampling else 'on'}; "
        f"{'rollouts run to their budget (--no-eos)' if args.no_eos else 'rollouts end at EOS'}"
    )
    print(
        f"  {'arm':<12} {'s/step':>7} {'cpu s':>7} {'rollout s':>9} {'rest s':>7} {'decoded':>8} {'prompt tok':>10} {'in loss':>8} {'rounds':>6} {'peak RSS MiB':>12}"
    )
    for arm, s in summary.items():
        print(
            f"  {arm:<12} {s['seconds']:7.2f} {s['cpu_s']:7.2f} {s['rollout_s']:9.2f} {s['rest_s']:7.2f} {s['decoded']:8.0f} "
            f"{s['prompt_tokens']:10.0f} {s['loss_tokens']:8.0f} {s['rounds']:6.1f} {s['peak_rss_mib']:12.0f}"
        )
    ratios = {}
    for arm in arms[1:]:
        a, b = summary[arm], summary[base]
        ratios[arm] = {
            "seconds": a["seconds"] / b["seconds"],
            "cpu_s": a["cpu_s"] / b["cpu_s"],
            "rollout_s": a["rollout_s"] / b["rollout_s"],
            "rest_s": a["rest_s"] / b["rest_s"],
            "decoded": a["decoded"] / b["decoded"],
        }
        r = ratios[arm]
        print(
            f"  ratio {arm}/{base} seconds per step: {r['seconds']:.3f} (CPU seconds {r['cpu_s']:.3f}; rollouts "
            f"{r['rollout_s']:.3f}, rest {r['rest_s']:.3f}); decoded tokens: {r['decoded']:.3f}"
        )
    pairs = {}
    for suffix in ("", "-main"):  # RECAP/vanilla under each trainer setting present
        v, r = f"vanilla{suffix}", f"recap{suffix}"
        if v in summary and r in summary:
            pairs[f"{r}/{v}"] = summary[r]["seconds"] / summary[v]["seconds"]
            print(
                f"  ratio {r}/{v} seconds per step: {pairs[f'{r}/{v}']:.3f} (CPU seconds "
                f"{summary[r]['cpu_s'] / summary[v]['cpu_s']:.3f}; rollouts "
                f"{summary[r]['rollout_s'] / summary[v]['rollout_s']:.3f}, rest {summary[r]['rest_s'] / summary[v]['rest_s']:.3f})"
            )
    result = {
        "model": args.model,
        "args": vars(args),
        "arms": summary,
        "ratios": ratios,
        "recap_over_vanilla": pairs,
        "gradient_check": gradients,
        "load_average": os.getloadavg()[0],
        "runs": runs,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
