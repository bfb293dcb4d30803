"""What one busy core costs `recap demo --quick`: the same run on an idle machine and beside a process that
keeps one core busy, side by side in one run, and the ratio.

A torch job that runs as many threads as the machine has cores, beside another busy process, spins its
threads against each other (we once measured the demo's pre-training 8× slower, not 2×). recap sizes
threads to the cores idle when a job starts (``recap.util.threads``); with one of two cores taken, the ideal is
2× (half the CPU), and the goal is "at most about 2×".

    python benchmarks/contention.py                      # a shortened --quick (about 2 + 4 minutes)
    python benchmarks/contention.py --full               # the real `recap demo --quick` (about 3 + 6 minutes)

Prints one line per condition and the ratio; ``--json FILE`` writes them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time


def _spin() -> None:
    while True:
        pass


def _demo(args: argparse.Namespace, out: str) -> float:
    cmd = [sys.executable, "-m", "recap.cli", "demo", "--quick", "--out", out]
    if not args.full:
        cmd += ["--set", f"pretrain.steps={args.pretrain_steps}", "--set", f"rl.max_steps={args.rl_steps}"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--full", action="store_true", help="run the real `recap demo --quick` (default: shortened)")
    ap.add_argument("--pretrain-steps", type=int, default=150, help="pre-training steps of the shortened run")
    ap.add_argument("--rl-steps", type=int, default=10, help="RL steps of the shortened run")
    ap.add_argument("--json", help="write the measurements to this file")
    args = ap.parse_args(argv)
    print(f"cores: {len(os.sched_getaffinity(0))}, load average before: {os.getloadavg()[0]:.2f}", flush=True)
    root = tempfile.mkdtemp(prefix="contention-")
    try:
        idle = _demo(args, os.path.join(root, "idle"))
        print(f"idle machine:        {idle:7.1f} s", flush=True)
        spinner = mp.get_context("spawn").Process(target=_spin, daemon=True)
        spinner.start()
        try:
            time.sleep(1.0)  # let the spinner take its core before recap counts the idle ones
            busy = _demo(args, os.path.join(root, "busy"))
        finally:
            spinner.terminate()
            spinner.join()
        print(f"one core kept busy:  {busy:7.1f} s", flush=True)
        print(f"ratio busy / idle:   {busy / idle:7.2f}  (ideal 2.0 on 2 cores; goal ≤ ~2)", flush=True)
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(
                    {
                        "idle_s": idle,
                        "busy_s": busy,
                        "ratio": busy / idle,
                        "full": args.full,
                        "cores": len(os.sched_getaffinity(0)),
                    },
                    fh,
                    indent=1,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
