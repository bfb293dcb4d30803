"""Data-parallel scaling on this machine: the same RECAP run (same global batch) on 1 and 2 processes.

Each run is ``torchrun --nproc_per_node N -m recap.cli train`` on the miniature world (8 prompts × 8
rollouts per optimizer step, 48 new tokens), with the machine's cores split between the processes
(2 cores: one process with 2 threads vs two processes with 1 thread each). Runs alternate 1, 2, 2, 1, …;
per-step times are TRL's ``step_time`` from the run's log (first step excluded as warm-up); medians and
the speed-up are printed.

    python benchmarks/data_parallel.py                 # ~4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _setup(tmp: Path, base: str | None) -> tuple[Path, Path]:
    from recap.data.examples import write_examples
    from recap.data.mixture import MixtureConfig, build_mixture
    from recap.toy.data import train_examples

    if not base:
        from recap.toy.model import PretrainConfig, ToyModelConfig, pretrain

        base = "runs/bench/toy-base"
        if not (Path(base) / "config.json").exists():
            pretrain(PretrainConfig(), ToyModelConfig(), base, log=lambda s: None)
    data = tmp / "mix.jsonl"
    write_examples(data, build_mixture(train_examples(seed=0), MixtureConfig(alpha=0.5, prefill_words="8-30", seed=0)))
    cfg = tmp / "train.yaml"
    cfg.write_text(
        f"model: {Path(base).resolve()}\ntrain_file: {data}\njudge: toy\nnum_generations: 8\n"
        "prompts_per_step: 8\nlearning_rate: 1.0e-4\nmax_completion_length: 48\nlogging_steps: 1\n"
        "save_steps: 10000\ngradient_checkpointing: false\nuse_cpu: true\nseed: 0\n"
    )
    return data, cfg


def run(procs: int, steps: int, cfg: Path, out: Path) -> dict:
    cores = os.cpu_count() or 1
    threads = max(1, cores // procs)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(procs),
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "recap.cli",
        "train",
        "--config",
        str(cfg),
        "--set",
        f"output_dir={out}",
        "--set",
        f"max_steps={steps}",
        "--set",
        f"num_threads={threads}",
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    history = json.loads((out / "log_history.json").read_text())
    times = [h["step_time"] for h in history if "step_time" in h][1:]
    return {"procs": procs, "threads": threads, "wall_s": wall, "step_times": times}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument(
        "--toy-base", default="", help="miniature base model (default: pre-trained into runs/bench/toy-base)"
    )
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    runs: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        _, cfg = _setup(Path(tmp), args.toy_base)
        order = [p for rep in range(args.repeats) for p in ((1, 2) if rep % 2 == 0 else (2, 1))]
        for i, procs in enumerate(order):
            r = run(procs, args.steps, cfg, Path(tmp) / f"run{i}")
            runs[procs].append(r)
            print(
                f"  {procs} process(es) × {r['threads']} thread(s): {statistics.median(r['step_times']):.2f} s/step, "
                f"{r['wall_s']:.0f} s wall",
                flush=True,
            )
    med = {p: statistics.median(t for r in rs for t in r["step_times"]) for p, rs in runs.items()}
    print(
        f"same global batch (8 prompts × 8 rollouts): 1 process {med[1]:.2f} s/step, 2 processes {med[2]:.2f} s/step; "
        f"speed-up {med[1] / med[2]:.2f}x (load average {os.getloadavg()[0]:.1f})"
    )
    result = {"median_step_s": med, "speedup": med[1] / med[2], "runs": runs}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
