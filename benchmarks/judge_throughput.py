"""Answers per second of the rule judge and the embedding-classifier judge, on CPU, from one run.

    python benchmarks/judge_throughput.py [--data-dir ../shared/datasets/judge] [--threads 2] [--batch-size 32]
                                          [--judge classifier:runs/judge/refusal-minilm-ft ...]

Both judges score the same answers: the 900 XSTest v2 completions (GPT-4 and Llama-2), as batched
``judge(items)`` calls of ``--batch-size`` items (the classifier encodes each call's answers in one
batch). The classifier is fitted first (not timed) on the GPT-4 completions; the encoder is loaded
before timing. Each ``--judge SPEC`` (e.g. a fine-tuned folder, ``classifier:FOLDER``) is loaded with
``load_judge`` and timed the same way, in the same run, after the classifier.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recap.rewards.judges import JudgeItem, RuleJudge  # noqa: E402
from recap.rewards.classifier import fit_refusal_judge  # noqa: E402
from recap.rewards.encoder import get_encoder  # noqa: E402
from recap.rewards.labelled import read_labelled_completions  # noqa: E402

FILES = ("xstest_v2_completions_gpt4.csv", "xstest_v2_completions_llama2new.csv")


def _rate(judge, items, batch_size, min_seconds):
    n, t0 = 0, time.perf_counter()
    while True:
        for s in range(0, len(items), batch_size):
            judge.judge(items[s : s + batch_size])
        n += len(items)
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return n / dt, n, dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "judge"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens of each answer the encoder reads (default: the encoder's 256)",
    )
    ap.add_argument("--min-seconds", type=float, default=2.0, help="repeat the rule judge at least this long")
    ap.add_argument("--judge", action="append", default=[], help="also time this fitted judge spec (repeatable)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    paths = [Path(args.data_dir) / f for f in FILES]
    rows = [r for p in paths for r in read_labelled_completions(p)]
    items = [JudgeItem(r.prompt, r.completion, "harmful") for r in rows]
    enc = get_encoder(max_length=args.max_length)
    ntok = [len(enc.tokenizer(r.completion, truncation=True, max_length=enc.max_length)["input_ids"]) for r in rows]
    judge = fit_refusal_judge([paths[0]], encoder=enc, batch_size=args.batch_size)
    judge.judge(items[: args.batch_size])  # warm-up

    rule_rate, rn, rdt = _rate(RuleJudge(), items, args.batch_size, args.min_seconds)
    clf_rate, cn, cdt = _rate(judge, items, args.batch_size, 0.0)  # one pass over the 900 answers
    from recap.rewards.factory import load_judge

    extra = []
    for spec in args.judge:
        j = load_judge(spec)
        if hasattr(j, "batch_size"):
            j.batch_size = args.batch_size
        j.judge(items[: args.batch_size])  # warm-up
        extra.append((spec, *_rate(j, items, args.batch_size, 0.0)))
    ml = f" --max-length {args.max_length}" if args.max_length else ""
    ml += "".join(f" --judge {spec}" for spec in args.judge)
    print(
        f"reproduce: python benchmarks/judge_throughput.py --threads {args.threads} --batch-size {args.batch_size}{ml}"
    )
    print(
        f"{len(items)} answers, mean {sum(ntok) / len(ntok):.0f} tokens (max {enc.max_length} encoded), "
        f"{torch.get_num_threads()} torch threads, batch {args.batch_size}"
    )
    print("| judge | answers/s | answers timed | seconds |\n|---|---|---|---|")
    print(f"| rules (recap family) | {rule_rate:,.0f} | {rn} | {rdt:.2f} |")
    print(f"| classifier ({judge.features}) | {clf_rate:,.1f} | {cn} | {cdt:.2f} |")
    for spec, rate, n, dt in extra:
        print(f"| {spec} | {rate:,.1f} | {n} | {dt:.2f} |")
    print(f"ratio rules/classifier: {rule_rate / clf_rate:,.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
