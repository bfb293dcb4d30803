"""Evaluation wall time: the whole default suite, and iterative prefill reset with and without reusing
the shared prefix's KV cache.

``--suite FILE`` runs ``recap.eval.suite.run_suite`` on a fresh result store and prints the wall time
and new tokens/s of every stage (prefill generation, clean, prefill, ipr1..k, …) and the total.

``--ipr N`` (default 32; 0 skips it) takes the first N harmful prompts of the suite's first benchmark
that has the ``ipr`` attack, with their attack reasoning, and runs the prefill attack plus k IPR rounds
twice, side by side and greedy: ``reuse_prefix`` on (each batch's KV cache carried from round to round)
and off (every round re-reads the whole conversation). It reports the time of each and whether the
outputs are identical token for token. The modes alternate over ``--repeats``; medians are reported.

    python benchmarks/eval_suite.py --suite configs/smollm2/eval.yaml --ipr 32
    python benchmarks/eval_suite.py --suite configs/smollm2/eval-full.yaml --ipr 0 --full
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from recap.eval import attacks
from recap.eval.runner import prefill_for
from recap.eval.suite import SuiteConfig, load_suite, run_suite
from recap.inference.generation import generate_rounds
from recap.util.config import load_config


def ipr_side_by_side(cfg: SuiteConfig, n: int, repeats: int) -> dict:
    from recap.data.prefills import generate_prefills
    from recap.inference.engines import load_engine

    bench = next(b for b in cfg.benchmarks if "ipr" in b.attacks)
    harmful = [e for e in load_suite(cfg)[bench.name] if e.kind == "harmful"][:n]
    harmful = generate_prefills(harmful, replace(cfg.prefills, kinds=["harmful"]))
    model, tok = load_engine("hf", cfg.model, dtype=cfg.dtype)
    ecfg = cfg.eval
    prompts = [attacks.prefill_prompt(tok, e.messages(), prefill_for(e, ecfg)).text for e in harmful]

    def suffix(r, i, g):  # the paper's IPR: the round's reasoning, then the transition and the prefill
        return len(attacks.round_reasoning(g.text)), attacks.ipr_suffix(
            prefill_for(harmful[i], ecfg), ecfg.ipr_transition, ecfg.ipr_separator
        )[0]

    times: dict[bool, list[float]] = {True: [], False: []}
    outs: dict[bool, list] = {}
    k = ecfg.ipr_rounds - 1  # resets after round 1 (the prefill attack)
    for rep in range(repeats):
        for reuse in (True, False) if rep % 2 == 0 else (False, True):
            sampling = replace(ecfg.sampling, temperature=0, reuse_prefix=reuse)
            t = time.perf_counter()
            outs[reuse] = generate_rounds(model, tok, prompts, suffix, k, sampling)
            times[reuse].append(time.perf_counter() - t)
    same = [
        sum(a.generation.ids == b.generation.ids for a, b in zip(ra, rb)) for ra, rb in zip(outs[True], outs[False])
    ]
    new = sum(t.generation.n_tokens for rnd in outs[True] for t in rnd)
    last_len = statistics.mean(len(tok(t.prompt_text)["input_ids"]) for t in outs[True][-1])
    res = {
        "prompts": len(prompts),
        "rounds": k,
        "new_tokens": new,
        "mean_last_prompt_tokens": last_len,
        "seconds_reuse": statistics.median(times[True]),
        "seconds_no_reuse": statistics.median(times[False]),
        "all_seconds": {"reuse": times[True], "no_reuse": times[False]},
        "identical_per_round": same,
    }
    res["speedup"] = res["seconds_no_reuse"] / res["seconds_reuse"]
    print(
        f"IPR k={k} on {len(prompts)} {bench.name} prompts (prefill ℓ={ecfg.prefill_words} words, greedy, "
        f"max_new_tokens {ecfg.sampling.max_new_tokens}, batch {ecfg.sampling.batch_size}; round-{k} prompts "
        f"{last_len:.0f} tokens on average); median of {repeats}:"
    )
    print(f"  with prefix reuse    {res['seconds_reuse']:7.1f}s")
    print(f"  without prefix reuse {res['seconds_no_reuse']:7.1f}s   speed-up {res['speedup']:.2f}x")
    print(f"  identical outputs per IPR round (1 = the prefill attack .. {k + 1}): {same} of {len(prompts)}")
    return res


def full_suite(cfg: SuiteConfig, results: str) -> dict:
    """Run the suite on a fresh store; time each part from the suite's own log lines (prefill generation
    of a benchmark, then its evaluation) and count the tokens the model wrote in each."""
    from recap.eval.store import ResultStore

    marks: list[tuple[float, str]] = []
    clock = time.perf_counter()

    def log(line: str) -> None:
        marks.append((time.perf_counter() - clock, line))
        print(f"  [{marks[-1][0]:7.1f}s] {line}", flush=True)

    metrics = run_suite(replace(cfg, results=results), log=log)
    wall = time.perf_counter() - clock
    records = ResultStore(results).records()
    parts = []
    starts = [(t, line) for t, line in marks if not line.startswith(" ")]  # "<bench>: …" lines open a part
    for (t, line), nxt in zip(starts, [*starts[1:], (wall, "")]):
        bench = line.split(":")[0]
        kind = "prefill generation" if "counter-aligned" in line else "evaluation"
        new = (
            sum(r.get("new_tokens", 0) for r in records if r.get("benchmark") == bench)
            if kind == "evaluation"
            else None
        )
        parts.append({"benchmark": bench, "part": kind, "seconds": nxt[0] - t, "new_tokens": new})
    print(
        f"full suite: {wall / 60:.1f} min wall on {torch.get_num_threads()} threads "
        f"(load average {os.getloadavg()[0]:.1f}); {len(records)} judged samples"
    )
    for part in parts:
        rate = f"{part['new_tokens'] / part['seconds']:6.1f} new tok/s" if part["new_tokens"] else ""
        print(f"  {part['benchmark']:<14} {part['part']:<19} {part['seconds'] / 60:6.1f} min  {rate}")
    return {"wall_seconds": wall, "parts": parts, "samples": len(records), "metrics": metrics}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--suite", default="configs/smollm2/eval.yaml")
    ap.add_argument("--ipr", type=int, default=32, help="prompts of the IPR side-by-side (0: skip)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--full", action="store_true", help="also time the whole suite on a fresh store")
    ap.add_argument("--results", default="", help="result store of --full (default: a temporary file)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="suite override, key=value")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    cfg = load_config(SuiteConfig, Path(args.suite), args.overrides)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    out: dict = {"suite": args.suite}
    if args.ipr:
        out["ipr"] = ipr_side_by_side(cfg, args.ipr, args.repeats)
    if args.full:
        with tempfile.TemporaryDirectory() as tmp:
            out["full"] = full_suite(cfg, args.results or os.path.join(tmp, "eval.jsonl"))
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1, default=str))
    return out


if __name__ == "__main__":
    main()
