"""RECAP vs vanilla DAPO training-step cost with the real trainer (TRL ``GRPOTrainer``, ``recap.train``).

Both arms use the same model, the same prompts in the same order (repetition r uses seed r in both
arms), the same sampling seeds and the same generation budget (``max_completion_length``); they differ only in the mixture: RECAP prefills α = 0.5
of the safety prompts (``recap data mix``), vanilla none (α = 0). Each (arm, repetition) runs in a
fresh process — so peak memory is its own — for ``--steps`` optimizer steps after one warm-up step;
arms alternate (vanilla, recap, recap, vanilla, …) against drift on a noisy machine. Reported per arm,
medians over all timed steps: seconds per step (TRL's ``step_time``), tokens decoded per step, prompt
tokens read per step (the prefill is read, not decoded), tokens in the loss, peak resident memory;
and the ratio RECAP/vanilla. The seconds a step spends in rollouts (``_generate_single_turn``) are timed
apart from the rest (rewards, the loss pass, the optimizer step).

``--max-total-length`` turns on the paper's total budget (prompt + prefill + continuation, TrainConfig
``max_total_length``). ``--rollout-decoder`` sets TrainConfig ``rollout_decoder``: ``hf`` is TRL's
transformers rollouts (one ``generate`` call that computes every row until the longest ends; per-row
budgets are enforced by a stopping criterion that frees nothing), ``continuous`` is recap's decode loop
(rows leave the batch at EOS or at their own budget).

    python benchmarks/step_cost.py --model toy                       # miniature world, ~4 minutes
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

ARMS = ("vanilla", "recap")


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
        dynamic_sampling=not args.no_dynamic_sampling,
        micro_batch_size=args.micro_batch_size,
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
    cfg = _config(args, out_dir, seed=rep)  # both arms of a repetition see the same prompts in the same order
    trainer = build_trainer(cfg, _examples(args, 0.5 if arm == "recap" else 0.0))
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
    ap.add_argument("--steps", type=int, default=4, help="timed steps per run (after one warm-up step)")
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
        "--rollout-decoder",
        default="hf",
        choices=("hf", "continuous"),
        help="TrainConfig rollout_decoder: hf (TRL's generate) or continuous (recap's decode loop; rows leave at EOS or their budget)",
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
    ctx = mp.get_context("spawn")
    runs: dict[str, list] = {a: [] for a in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        order = [(rep, a) for rep in range(args.repeats) for a in (ARMS if rep % 2 == 0 else ARMS[::-1])]
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
    ratio = summary["recap"]["seconds"] / summary["vanilla"]["seconds"]
    cpu_ratio = summary["recap"]["cpu_s"] / summary["vanilla"]["cpu_s"]
    first = runs["recap"][0]
    print(
        f"model {args.model}; {first['prompts_per_step']} prompts × {first['num_generations']} rollouts, "
        f"max_completion_length {first['max_completion_length']}; "
        f"{args.threads} threads; load average {os.getloadavg()[0]:.1f}; medians over {summary['recap']['steps_timed']} steps"
    )
    print(
        f"  rollout_decoder: {args.rollout_decoder}; max_total_length: {args.max_total_length or 'off'}; "
        f"dynamic sampling: {'off' if args.no_dynamic_sampling else 'on'}; "
        f"{'rollouts run to their budget (--no-eos)' if args.no_eos else 'rollouts end at EOS'}"
    )
    print(
        f"  {'arm':<8} {'s/step':>7} {'cpu s':>7} {'rollout s':>9} {'rest s':>7} {'decoded':>8} {'prompt tok':>10} {'in loss':>8} {'rounds':>6} {'peak RSS MiB':>12}"
    )
    for arm, s in summary.items():
        print(
            f"  {arm:<8} {s['seconds']:7.2f} {s['cpu_s']:7.2f} {s['rollout_s']:9.2f} {s['rest_s']:7.2f} {s['decoded']:8.0f} "
            f"{s['prompt_tokens']:10.0f} {s['loss_tokens']:8.0f} {s['rounds']:6.1f} {s['peak_rss_mib']:12.0f}"
        )
    print(f"  ratio RECAP/vanilla CPU seconds per step: {cpu_ratio:.3f}")
    print(
        f"  ratio RECAP/vanilla seconds per step: {ratio:.3f} (rollouts {summary['recap']['rollout_s'] / summary['vanilla']['rollout_s']:.3f}, "
        f"rest {summary['recap']['rest_s'] / summary['vanilla']['rest_s']:.3f}); decoded tokens: "
        f"{summary['recap']['decoded'] / summary['vanilla']['decoded']:.3f}"
    )
    result = {
        "model": args.model,
        "args": vars(args),
        "arms": summary,
        "ratio": ratio,
        "cpu_ratio": cpu_ratio,
        "load_average": os.getloadavg()[0],
        "runs": runs,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
