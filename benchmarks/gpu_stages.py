"""The GPU check's stages, time-boxed, in one process and one JSON (``benchmarks/gpu_check.sh`` runs this).

Made for one H100/H200 with no network: models are randomly initialised (Qwen2.5-0.5B/1.5B shapes, from
``benchmarks/gpu_check.py``) or the miniature world's, so nothing is downloaded. Each stage records what it
measured or why it was skipped (a package that does not import, too little time left, an error with its
traceback); none stops the others, and the JSON is rewritten after every stage so a timeout keeps what ran.

Stages (run in the order generation, trainer, step_cost: the proxy is the one to lose when time runs short):

* ``env``: versions of torch / transformers / trl / datasets / vllm, the GPU.
* ``generation``: new tokens/s of transformers ``generate``, recap's decode loop
  (``recap.inference.generation.generate_ids``) and vLLM (offline ``LLM`` on the same token ids, when it imports), at
  batch 1, 16 and 128 with a fixed length, and one batch of 128 rows with per-row budgets spread over
  1/8..1 of the length (rows that end at different times: ``generate`` computes every row to the longest,
  the loop drops ended rows, vLLM schedules each request).
* ``step_cost``: the proxy RL step of ``gpu_check.py`` (vanilla; RECAP at an equal decode budget; RECAP with
  prefill and continuation sharing one budget) with rollouts from ``generate`` (``hf``) and from recap's loop
  with per-row budgets (``loop``).
* ``trainer`` (needs trl and datasets, e.g. carried as wheels): the real ``RecapTrainer`` — a short RECAP
  run of the miniature world at the paper's 16 rollouts per prompt, then the RECAP/vanilla step-time ratio
  on a random Qwen2-shaped model with the miniature world's vocabulary and prompts, with rollouts from vLLM
  colocated (``vllm: colocate``, when vLLM imports), from TRL's transformers ``generate`` and from recap's
  loop (TrainConfig ``rollout_decoder: continuous``), at an equal budget and under ``max_total_length``.

Without a GPU it writes ``{"status": "no-gpu", ...}`` and exits with status 3, unless ``--allow-cpu`` (a dry
run of every stage on tiny shapes, for checking the script itself):

    python benchmarks/gpu_stages.py --out gpu_check.json            # on the GPU machine (gpu_check.sh)
    python benchmarks/gpu_stages.py --allow-cpu --sizes tiny --proxy-sizes tiny --trainer-size tiny --steps 1 --toy-steps 2 \\
        --gen-tokens 8 --gen-batches 1 4 --mixed-batch 8 --budget 16 --prefill-tokens 8 --prompts-per-step 2 \\
        --num-generations 4 --gen-batch 8 --micro-batch 4 --trainer-budget 8 --trainer-total 0 64 --trainer-steps 1 \\
        --trainer-prompts 2 --trainer-generations 4 --toy-base /tmp/toy-base --toy-pretrain-steps 20
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_check as proxy  # noqa: E402  (the transformers-only proxy step and model shapes)

OPTIONAL = ("transformers", "trl", "datasets", "vllm", "accelerate", "peft")


def env_info(device: str) -> dict:
    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": device,
        "cpus": os.cpu_count(),
    }
    for name in OPTIONAL:
        try:
            info[name] = getattr(__import__(name), "__version__", "?")
        except Exception as e:  # noqa: BLE001 - any import failure is a fact to record
            info[name] = None
            info[f"{name}_error"] = f"{type(e).__name__}: {e}"[:300]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1)}
    return info


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _timed(fn, device: str) -> float:
    proxy.sync(device)
    t = time.perf_counter()
    fn()
    proxy.sync(device)
    return time.perf_counter() - t


# -- generation -----------------------------------------------------------------------------------------


def _loop(model, rows, budgets, batch_size):
    from recap.inference.generation import SamplingConfig, generate_ids

    sampling = SamplingConfig(temperature=1.0, top_p=1.0, max_new_tokens=max(budgets), batch_size=batch_size)
    return generate_ids(model, rows, sampling, pad=0, eos=-1, budgets=budgets)  # eos -1: rows run to their budget


def _hf(model, rows, budgets, device):
    ids, mask = proxy.left_pad(rows, device)
    n = max(budgets)  # one call: every row is computed to the longest budget
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=n,
        min_new_tokens=n,
        do_sample=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        pad_token_id=0,
    )


class _Vllm:
    """vLLM's offline engine on a saved copy of the model (no tokenizer: token ids in, token ids out)."""

    def __init__(self, model, folder: str, args):
        from vllm import LLM

        model.save_pretrained(folder)
        self.llm = LLM(
            model=folder,
            skip_tokenizer_init=True,
            dtype="bfloat16",
            seed=0,
            gpu_memory_utilization=args.vllm_memory,
            max_model_len=args.prompt_tokens * 2 + args.gen_tokens + 64,
        )

    def generate(self, rows, budgets):
        from vllm import SamplingParams

        params = [
            SamplingParams(temperature=1.0, top_p=1.0, max_tokens=b, min_tokens=b, ignore_eos=True, detokenize=False)
            for b in budgets
        ]
        return self.llm.generate([{"prompt_token_ids": r} for r in rows], params, use_tqdm=False)

    def close(self):
        del self.llm


def generation_stage(args, device, dtype, deadline) -> dict:
    out = {}
    engines = ["hf", "loop"] + (["vllm"] if args.vllm and _imports("vllm") else [])
    for size in args.sizes:
        if time.time() > deadline - 30:
            out[size] = {"skipped": "time budget"}
            continue
        model = proxy.build(size, device, dtype).eval()
        g = torch.Generator().manual_seed(0)
        vllm = None
        if "vllm" in engines:
            try:
                vllm = _Vllm(model, tempfile.mkdtemp(prefix="gpu-vllm-"), args)
            except Exception as e:  # noqa: BLE001
                out.setdefault(size, {})["vllm_error"] = f"{type(e).__name__}: {e}"[:500]
        res = out.setdefault(size, {})
        cases = [(str(b), b, [args.gen_tokens] * b) for b in args.gen_batches]
        mixed = torch.randint(
            max(1, args.gen_tokens // 8), args.gen_tokens + 1, (args.mixed_batch,), generator=g
        ).tolist()
        cases.append((f"mixed{args.mixed_batch}", args.mixed_batch, mixed))
        for name, batch, budgets in cases:
            rows = [torch.randint(100, proxy.VOCAB, (args.prompt_tokens,), generator=g).tolist() for _ in range(batch)]
            row = res.setdefault(name, {"rows": batch, "new_tokens": sum(budgets)})
            for engine in engines:
                if time.time() > deadline - 20:
                    row[engine] = {"skipped": "time budget"}
                    continue
                fn = {
                    "hf": lambda m=model: _hf(m, rows, budgets, device),
                    "loop": lambda m=model: _loop(m, rows, budgets, batch),
                    "vllm": (lambda: vllm.generate(rows, budgets)) if vllm else None,
                }[engine]
                if fn is None:
                    continue
                with torch.no_grad():
                    fn() if name == str(args.gen_batches[0]) else None  # warm-up once per engine and size
                    secs = _timed(fn, device)
                row[engine] = {"seconds": secs, "tokens_per_s": sum(budgets) / secs}
            print(
                f"{size} generate {name:>9}: "
                + ", ".join(
                    f"{e} {r['tokens_per_s']:9.1f} tok/s"
                    for e, r in row.items()
                    if isinstance(r, dict) and "tokens_per_s" in r
                ),
                flush=True,
            )
        if vllm:
            vllm.close()
        del model
        _free(device)
    return out


# -- the proxy step with two rollout engines ------------------------------------------------------------


def _loop_rollouts(model, prompts, args, device):
    """``gpu_check.rollouts`` with recap's loop: one call, every rollout with its own budget."""
    rows = [p for p, _ in prompts for _ in range(args.num_generations)]
    budgets = [b for _, b in prompts for _ in range(args.num_generations)]
    out = _loop(model, rows, budgets, args.gen_batch)
    return [(p, new) for p, (new, _) in zip(rows, out)]


def step_cost_stage(args, device, dtype, deadline) -> dict:
    out = {}
    hf_rollouts = proxy.rollouts
    for size in args.proxy_sizes:
        for engine in args.rollouts:
            if time.time() > deadline - 60:
                out.setdefault(size, {})[engine] = {"skipped": "time budget"}
                continue
            proxy.rollouts = _loop_rollouts if engine == "loop" else hf_rollouts
            try:
                t = time.perf_counter()
                res = proxy.step_cost(size, args, device, dtype)
                res["wall_s"] = time.perf_counter() - t
            finally:
                proxy.rollouts = hf_rollouts
                _free(device)
            out.setdefault(size, {})[engine] = res
            print(
                f"{size} step cost, rollouts {engine}: "
                + ", ".join(
                    f"{arm} {r['seconds']:.2f}s"
                    + (f" ({r['ratio_vs_vanilla']:.3f})" if "ratio_vs_vanilla" in r else "")
                    for arm, r in res.items()
                    if isinstance(r, dict)
                ),
                flush=True,
            )
    return out


# -- the real trainer -----------------------------------------------------------------------------------


def _imports(name: str) -> bool:
    try:
        __import__(name)
        return True
    except Exception:  # noqa: BLE001
        return False


def _toy_base(args) -> str:
    from recap.toy.model import PretrainConfig, ToyModelConfig, pretrain

    folder = Path(args.toy_base)
    if not (folder / "config.json").exists():
        pretrain(
            replace(PretrainConfig(), **({"steps": args.toy_pretrain_steps} if args.toy_pretrain_steps else {})),
            ToyModelConfig(),
            folder,
            log=lambda s: None,
        )
    return str(folder)


def _train(cfg, examples) -> dict:
    """Train ``cfg`` on ``examples``; per-step seconds (TRL's step_time), rollout seconds and mean reward."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from recap.train import build_trainer

    trainer = build_trainer(cfg, examples)
    for cb in (PrinterCallback, ProgressCallback):  # the JSON has the numbers; keep the log short
        trainer.remove_callback(cb)
    rollout_s: dict[int, float] = {}
    inner = trainer._generate_single_turn

    def timed(*a, _trainer=trainer, **kw):
        t = time.perf_counter()
        try:
            return inner(*a, **kw)
        finally:
            step = _trainer.state.global_step + 1
            rollout_s[step] = rollout_s.get(step, 0.0) + time.perf_counter() - t

    trainer._generate_single_turn = timed
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t
    logs = [h for h in trainer.state.log_history if "step_time" in h]
    steps = [
        {
            "step": h["step"],
            "seconds": h["step_time"],
            "rollout_s": rollout_s.get(h["step"], 0.0),
            "reward": h.get("reward"),
            "completion_length": h.get("completions/mean_length"),
        }
        for h in logs
    ]
    res = {
        "wall_s": wall,
        "steps": steps,
        "peak_mem_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }
    del trainer
    return res


def _median(steps: list[dict], key: str, skip_first: bool = True) -> float | None:
    vals = [s[key] for s in (steps[1:] if skip_first and len(steps) > 1 else steps) if s.get(key) is not None]
    return statistics.median(vals) if vals else None


def _random_policy(size: str, dtype, folder: Path) -> str:
    """A random Qwen2-shaped model with the miniature world's tokenizer (vocabulary and chat template), saved."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from recap.toy.model import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(
        vocab_size=len(tok),
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.eos_token_id,
        **proxy.SIZES[size],
    )
    Qwen2ForCausalLM(cfg).to(dtype).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def trainer_stage(args, device, dtype, deadline) -> dict:
    missing = [m for m in ("trl", "datasets") if not _imports(m)]
    if missing:
        return {
            "skipped": f"{', '.join(missing)} not importable: carry them as wheels (docs/performance.md, GPU check)"
        }
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    from recap.data.mixture import MixtureConfig, build_mixture
    from recap.demo import DemoConfig
    from recap.toy.data import train_examples

    on_cpu = not device.startswith("cuda")
    out: dict = {}
    tmp = Path(tempfile.mkdtemp(prefix="gpu-trainer-"))
    train = train_examples(seed=0)
    recap_mix = build_mixture(train, MixtureConfig(alpha=0.5, prefill_words="8-30", seed=0))
    vanilla_mix = build_mixture(train, MixtureConfig(alpha=0.0, prefill_words="8-30", seed=0))

    # 1. The miniature world: a short RECAP run at the paper's 16 rollouts per prompt.
    try:
        t = time.perf_counter()
        base = _toy_base(args)
        pretrain_s = time.perf_counter() - t
        cfg = replace(
            DemoConfig().rl,
            model=base,
            output_dir=str(tmp / "toy"),
            num_generations=16,
            max_steps=args.toy_steps,
            logging_steps=1,
            save_steps=10**6,
            use_cpu=on_cpu,
            num_threads=0 if not on_cpu else 1,
            seed=0,
            vllm="off",
        )
        res = _train(cfg, recap_mix)
        res.update(
            pretrain_s=pretrain_s,
            prompts_per_step=cfg.prompts_per_step,
            num_generations=16,
            median_step_s=_median(res["steps"], "seconds"),
            reward_first=res["steps"][0]["reward"] if res["steps"] else None,
            reward_last=res["steps"][-1]["reward"] if res["steps"] else None,
        )
        out["toy_recap_16_rollouts"] = res
        print(
            f"miniature world RECAP, 16 rollouts: {len(res['steps'])} steps, median {res['median_step_s']:.2f} s/step, "
            f"reward {res['reward_first']} -> {res['reward_last']}",
            flush=True,
        )
    except Exception as e:  # noqa: BLE001
        out["toy_recap_16_rollouts"] = {
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc()[-3000:],
        }
    _free(device)

    # 2. RECAP/vanilla on the real trainer, a random Qwen2-shaped policy, per rollout engine and budget rule.
    try:
        policy = _random_policy(args.trainer_size, dtype, tmp / "policy")
    except Exception as e:  # noqa: BLE001
        out["ratio"] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        return out
    engines = (["vllm"] if _imports("vllm") and not on_cpu else []) + ["trl", "loop"]
    out["ratio"] = {"policy": args.trainer_size, "engines": engines, "runs": {}}
    for total in args.trainer_total:
        for engine in engines:
            key = f"{engine}/total{total}" if total else engine
            runs = out["ratio"]["runs"].setdefault(key, {})
            for arm, mix in (("vanilla", vanilla_mix), ("recap", recap_mix)):
                if time.time() > deadline - args.trainer_arm_s:
                    runs[arm] = {"skipped": "time budget"}
                    continue
                cfg = replace(
                    DemoConfig().rl,
                    model=policy,
                    output_dir=str(tmp / f"{key.replace('/', '-')}-{arm}"),
                    num_generations=args.trainer_generations,
                    prompts_per_step=args.trainer_prompts,
                    max_steps=args.trainer_steps + 1,
                    logging_steps=1,
                    save_steps=10**6,
                    use_cpu=on_cpu,
                    num_threads=0 if not on_cpu else 1,
                    seed=0,
                    learning_rate=1e-6,
                    max_completion_length=args.trainer_budget,
                    max_total_length=total,
                    vllm="colocate" if engine == "vllm" else "off",
                    rollout_decoder="continuous" if engine == "loop" else "hf",
                    bf16=not on_cpu,
                    gradient_checkpointing=False,
                )
                try:
                    res = _train(cfg, mix)
                    res.update(
                        median_step_s=_median(res["steps"], "seconds"),
                        median_rollout_s=_median(res["steps"], "rollout_s"),
                    )
                    runs[arm] = res
                except Exception as e:  # noqa: BLE001
                    runs[arm] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
                _free(device)
            if all("median_step_s" in runs.get(a, {}) for a in ("vanilla", "recap")):
                runs["ratio"] = runs["recap"]["median_step_s"] / runs["vanilla"]["median_step_s"]
                print(
                    f"trainer {key}: vanilla {runs['vanilla']['median_step_s']:.2f} s/step, recap "
                    f"{runs['recap']['median_step_s']:.2f} s/step, ratio {runs['ratio']:.3f}",
                    flush=True,
                )
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--allow-cpu", action="store_true", help="run without a GPU (a dry run of the script on tiny shapes)"
    )
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument(
        "--stages",
        nargs="+",
        default=["generation", "trainer", "step_cost"],
        choices=["generation", "step_cost", "trainer"],
    )
    ap.add_argument(
        "--budget-s",
        type=float,
        default=540,
        help="wall-clock budget of all stages; later work is skipped when it runs out",
    )
    ap.add_argument(
        "--sizes",
        nargs="+",
        default=["0.5b", "1.5b"],
        choices=list(proxy.SIZES),
        help="model shapes of the generation stage",
    )
    ap.add_argument(
        "--proxy-sizes", nargs="+", default=["0.5b"], choices=list(proxy.SIZES), help="model shapes of the proxy step"
    )
    ap.add_argument("--vllm", action=argparse.BooleanOptionalAction, default=True, help="use vLLM where it imports")
    ap.add_argument(
        "--vllm-memory", type=float, default=0.35, help="GPU memory fraction of vLLM's engine (generation stage)"
    )
    # generation
    ap.add_argument("--gen-batches", type=int, nargs="+", default=[1, 16, 128])
    ap.add_argument("--gen-tokens", type=int, default=256)
    ap.add_argument("--mixed-batch", type=int, default=128)
    # proxy step (names as in gpu_check.py)
    ap.add_argument("--rollouts", nargs="+", default=["hf", "loop"], choices=["hf", "loop"])
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--prompts-per-step", type=int, default=8)
    ap.add_argument("--num-generations", type=int, default=16)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--prefill-tokens", type=int, default=128)
    ap.add_argument("--budget", type=int, default=384)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--safety-fraction", type=float, default=0.5)
    ap.add_argument("--gen-batch", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=16)
    # real trainer
    ap.add_argument(
        "--toy-base", default="runs/bench/toy-base", help="miniature base model folder (pre-trained here when absent)"
    )
    ap.add_argument("--toy-steps", type=int, default=12)
    ap.add_argument(
        "--toy-pretrain-steps",
        type=int,
        default=0,
        help="pre-training steps when the base is made here (0: the demo's)",
    )
    ap.add_argument("--trainer-size", default="0.5b", choices=list(proxy.SIZES))
    ap.add_argument("--trainer-steps", type=int, default=2, help="timed steps per arm (after one warm-up step)")
    ap.add_argument("--trainer-prompts", type=int, default=8)
    ap.add_argument("--trainer-generations", type=int, default=16)
    ap.add_argument("--trainer-budget", type=int, default=256, help="max_completion_length of the ratio runs")
    ap.add_argument("--trainer-total", type=int, nargs="+", default=[0, 288], help="max_total_length values (0: off)")
    ap.add_argument("--trainer-arm-s", type=float, default=60, help="time an arm needs; skipped when less is left")
    ap.add_argument("--out", default="gpu_check.json")
    args = ap.parse_args(argv)
    start = time.time()
    deadline = start + args.budget_s
    result: dict = {"status": "running", "args": vars(args), "env": env_info(args.device), "stages": {}}
    out = Path(args.out)

    def write(status: str | None = None):
        if status:
            result["status"] = status
        result["elapsed_s"] = round(time.time() - start, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1, default=str))

    print(json.dumps(result["env"]), flush=True)
    if not args.device.startswith("cuda") and not args.allow_cpu:
        result["reason"] = (
            "no CUDA device: nothing measured (run on the GPU machine, or pass --allow-cpu for a dry run)"
        )
        write("no-gpu")
        print(result["reason"], flush=True)
        return 3
    dtype = getattr(torch, args.dtype)
    stages = {"generation": generation_stage, "step_cost": step_cost_stage, "trainer": trainer_stage}
    for name in args.stages:
        if time.time() > deadline - 10:
            result["stages"][name] = {"skipped": "time budget"}
            continue
        print(f"== {name} ({time.time() - start:.0f}s elapsed)", flush=True)
        t = time.perf_counter()
        try:
            result["stages"][name] = stages[name](args, args.device, dtype, deadline)
        except Exception as e:  # noqa: BLE001 - one stage's failure must not cost the others
            result["stages"][name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
            print(f"{name} failed: {type(e).__name__}: {e}", flush=True)
        result["stages"][name]["stage_s"] = (
            round(time.perf_counter() - t, 1) if isinstance(result["stages"][name], dict) else None
        )
        write()
        _free(args.device)
    write("done")
    print(f"wrote {out} ({time.time() - start:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
