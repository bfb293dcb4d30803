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
``max_total_length``). ``--rollouts loop`` is a measurement of a proposed trainer change, patched in this
process only: TRL's transformers rollouts (one ``generate`` call that computes every row until the longest
ends, per-row budgets enforced by a stopping criterion that frees nothing) are replaced by
``recap.inference.generation.generate_ids`` (rows leave the batch at EOS or at their own budget).

    python benchmarks/step_cost.py --model toy                       # miniature world, ~4 minutes
    python benchmarks/step_cost.py --model smollm2-135m --steps 3    # needs runs/smollm2/train-prompts.jsonl
    python benchmarks/step_cost.py --model smollm2-135m --max-completion-length 512 --max-total-length 640 --rollouts loop
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
    return build_mixture(read_examples(data), MixtureConfig(alpha=alpha, prefill_words=args.prefill_words, seed=0))


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
    rollout_s: dict[int, float] = {}
    inner = trainer._generate_single_turn if args.rollouts == "trl" else _loop_rollouts(trainer)

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


def _loop_rollouts(trainer):
    """The proposed trainer change, for measurement: TRL's transformers rollouts done by
    ``recap.inference.generation.generate_ids`` — same prompts, same sampling settings, each row stopping at EOS or at
    its own budget (``completion_budget``, set by ``RecapTrainer`` in ``_row_budgets``) and leaving the batch.
    Returns what TRL's ``_generate_single_turn`` returns (completion ids with their EOS, no logprobs)."""
    import torch

    from recap.inference.generation import SamplingConfig, generate_ids
    from recap.train import completion_budget

    def rollouts(prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        gc = trainer.generation_config
        plain = (
            gc.top_k in (0, None)
            and not gc.min_p
            and (gc.repetition_penalty or 1.0) == 1.0
            and len(trainer.eos_token_ids) == 1
        )  # what the loop samples like TRL's generate
        if trainer.use_vllm or getattr(trainer, "use_transformers_continuous_batching", False) or images or not plain:
            return type(trainer)._generate_single_turn(
                trainer, prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        budgets = [
            completion_budget(len(ids), trainer.max_completion_length, trainer.max_total_length) for ids in prompt_ids
        ]
        trainer._row_budgets = budgets
        sampling = SamplingConfig(
            temperature=gc.temperature if gc.do_sample else 0.0,
            top_p=gc.top_p or 1.0,
            max_new_tokens=max(budgets),
            batch_size=len(prompt_ids),
        )
        tok = trainer.processing_class
        eos = trainer.eos_token_ids[0]
        pad = tok.pad_token_id if tok.pad_token_id is not None else eos
        model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                out = generate_ids(model, prompt_ids, sampling, pad, eos, budgets=budgets)
        finally:
            model.train(was_training)
        completion_ids = [new + ([eos] if ended else []) for new, ended in out]
        trainer._decoded_tokens += sum(len(c) for c in completion_ids)
        return completion_ids, None

    return rollouts


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="toy", help="toy, or a real model (smollm2-135m, a folder, a .gguf)")
    ap.add_argument(
        "--data", default="runs/smollm2/train-prompts.jsonl", help="prompts with counter_reasoning (real models)"
    )
    ap.add_argument("--prefill-words", default="20-60", help="ℓ of the RECAP arm (real models)")
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
        "--rollouts",
        default="trl",
        choices=("trl", "loop"),
        help="trl: TRL's transformers generate; loop: recap.inference.generation.generate_ids patched in (a proposed trainer change)",
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
    print(f"  rollouts: {args.rollouts}; max_total_length: {args.max_total_length or 'off'}")
    print(
        f"  {'arm':<8} {'s/step':>7} {'cpu s':>7} {'rollout s':>9} {'rest s':>7} {'decoded':>8} {'prompt tok':>10} {'in loss':>8} {'peak RSS MiB':>12}"
    )
    for arm, s in summary.items():
        print(
            f"  {arm:<8} {s['seconds']:7.2f} {s['cpu_s']:7.2f} {s['rollout_s']:9.2f} {s['rest_s']:7.2f} {s['decoded']:8.0f} "
            f"{s['prompt_tokens']:10.0f} {s['loss_tokens']:8.0f} {s['peak_rss_mib']:12.0f}"
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
