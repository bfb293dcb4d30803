"""Token budget per model: mean reasoning and answer tokens per benchmark and condition (the analogue of
the RECAP paper's Table 11, which shows RECAP does not think longer than vanilla DAPO).

Reads result stores written by ``recap eval`` / ``recap demo`` (every record carries
``reasoning_tokens``, ``answer_tokens`` and ``new_tokens``, all tokens the model wrote — older stores
lack the last, and their reasoning + answer tokens stand in) and
prints one row per method × benchmark × condition, plus each method's ratio to ``--baseline``.

    python benchmarks/token_budget.py demo-out/results/*.jsonl             # miniature world
    python benchmarks/token_budget.py runs/smollm2/eval.jsonl --baseline base
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from recap.eval.store import ResultStore


def condition(r: dict) -> str:
    return f"ipr{r['round']}" if r["attack"] == "ipr" else r["attack"]


def table(records: list[dict]) -> dict:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r.get("method", "?"), r.get("benchmark", r.get("kind", "?")), condition(r))].append(r)
    out = {}
    for key, rows in sorted(groups.items()):
        new = [r.get("new_tokens", r["reasoning_tokens"] + r["answer_tokens"]) for r in rows]
        out[key] = {
            "n": len(rows),
            "reasoning": statistics.mean(r["reasoning_tokens"] for r in rows),
            "answer": statistics.mean(r["answer_tokens"] for r in rows),
            "written": statistics.mean(new),
            "hit_budget": sum(bool(r.get("truncated")) for r in rows) / len(rows),
        }
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stores", nargs="+", type=Path)
    ap.add_argument("--baseline", default="vanilla", help="method the ratios are taken against")
    ap.add_argument("--out", default="")
    args = ap.parse_args(argv)
    records = [r for p in args.stores for r in ResultStore(p).records()]
    rows = table(records)
    print(
        f"{'method':<9} {'benchmark':<13} {'condition':<16} {'n':>5} {'reasoning':>9} {'answer':>7} "
        f"{'written':>8} {'hit max':>7} {'written / ' + args.baseline:>18}"
    )
    for (method, bench, cond), r in rows.items():
        base = rows.get((args.baseline, bench, cond))
        ratio = f"{r['written'] / base['written']:.2f}" if base and base["written"] else ""
        print(
            f"{method:<9} {bench:<13} {cond:<16} {r['n']:5d} {r['reasoning']:9.1f} {r['answer']:7.1f} "
            f"{r['written']:8.1f} {r['hit_budget']:7.0%} {ratio:>18}"
        )
    result = {" / ".join(k): v for k, v in rows.items()}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
