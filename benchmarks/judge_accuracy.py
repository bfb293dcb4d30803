"""Cross-model accuracy of the offline refusal judges on XSTest v2 human-labelled completions.

Binary target: compliance (``1_full_compliance``) vs any refusal (``2_full_refusal``,
``3_partial_refusal``). Every learned judge is scored only on completions it was not fitted on:

* ``gpt4 → llama2new`` / ``llama2new → gpt4``: fit on one model's XSTest completions (plus the shipped
  set ``recap/rewards/data/refusal_labels.csv`` on rows marked ``+own``), score the other model's;
* ``own:<family>``: fit on both XSTest files plus the shipped set *without* one style family, score
  that family (rows without ``+own`` fit on the two XSTest files only).

The rule judges need no fitting and are simply scored on each set. ``own held out`` pools the family
columns (accuracy over all rows of the shipped set, each scored by a judge fitted without its
family); ``worst`` is the minimum of the two XSTest directions and ``own held out``. The default is
chosen by ``worst`` (then by the mean of those three).

    python benchmarks/judge_accuracy.py [--data-dir ../shared/datasets/judge] [--json out.json]

Embeddings are computed once per (text, token limit) (an in-process cache around the encoder), so the
many variants cost one encoding pass; every judge is fitted, saved, loaded and scored through the
public API (``fit_refusal_judge`` → ``EmbeddingRefusalJudge.load`` → ``evaluate_refusal_judge``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recap.rewards.classifier import (  # noqa: E402
    DEFAULT_CLASSES,
    DEFAULT_FEATURES,
    DEFAULT_OVERRIDE,
    EmbeddingRefusalJudge,
    evaluate_refusal_judge,
    fit_refusal_judge,
)
from recap.rewards.encoder import SentenceEncoder, get_encoder  # noqa: E402
from recap.rewards.judges import RULE_FAMILIES, RuleJudge, explicit_refusal, refusal_verdict  # noqa: E402
from recap.rewards.labelled import BUILTIN_LABELS, read_labelled_completions  # noqa: E402

FILES = {"gpt4": "xstest_v2_completions_gpt4.csv", "llama2new": "xstest_v2_completions_llama2new.csv"}
OLD = ("answer+rules", "xstest", "binary")  # the default before the transfer work

# (row name, features, override, classes, fit on the shipped set too)
VARIANTS = [
    ("old default: answer+rules, xstest override, binary", *OLD, False),
    ("old default + own data", *OLD, True),
    ("new default, XSTest files only", DEFAULT_FEATURES, DEFAULT_OVERRIDE, DEFAULT_CLASSES, False),
    ("NEW DEFAULT (+own data)", DEFAULT_FEATURES, DEFAULT_OVERRIDE, DEFAULT_CLASSES, True),
    (
        "  classes binary" if DEFAULT_CLASSES == "partial" else "  classes partial",
        DEFAULT_FEATURES,
        DEFAULT_OVERRIDE,
        "binary" if DEFAULT_CLASSES == "partial" else "partial",
        True,
    ),
    ("  answer+rules (+own)", "answer+rules", None, DEFAULT_CLASSES, True),
    ("  answer+rules+flags (no opening)", "answer+rules+flags", None, DEFAULT_CLASSES, True),
    ("  answer+opening+rules (no flags)", "answer+opening+rules", None, DEFAULT_CLASSES, True),
    ("  answer+opening (no rules, no flags)", "answer+opening", None, DEFAULT_CLASSES, True),
    ("  default + explicit override", DEFAULT_FEATURES, "explicit", DEFAULT_CLASSES, True),
    ("  default + xstest override", DEFAULT_FEATURES, "xstest", DEFAULT_CLASSES, True),
    ("  default + prompt block *", DEFAULT_FEATURES + "+prompt", DEFAULT_OVERRIDE, DEFAULT_CLASSES, True),
]


class CachedEncoder:
    """Memoises ``encode`` per (text, token limit); otherwise the same encoder."""

    def __init__(self, enc: SentenceEncoder):
        self.enc, self.cache = enc, {}
        self.dim, self.max_length, self.path = enc.dim, enc.max_length, enc.path

    def encode(self, texts, batch_size=32, max_length=None):
        limit = min(max_length or self.max_length, self.max_length)
        new = list(dict.fromkeys(t for t in texts if (t, limit) not in self.cache))
        if new:
            for t, v in zip(new, self.enc.encode(new, batch_size, max_length=limit)):
                self.cache[(t, limit)] = v
        return np.stack([self.cache[(t, limit)] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


class ExplicitRuleJudge:
    """``explicit_refusal`` as a judge (for the table)."""

    name = "refusal-rules-explicit"

    def judge(self, items):
        return [refusal_verdict(it.kind, explicit_refusal(it.answer)) for it in items]


def _write_subset(path: Path, src: Path, keep) -> Path:
    with open(src, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if keep(r)]
        fields = reader.fieldnames
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fields)
        w.writeheader()
        w.writerows(rows)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "judge"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    data = Path(args.data_dir)
    paths = {k: data / v for k, v in FILES.items()}
    for p in paths.values():
        if not p.exists():
            print(f"missing {p}: pass --data-dir", file=sys.stderr)
            return 2
    import torch

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    print("reproduce: python benchmarks/judge_accuracy.py --data-dir", args.data_dir)
    own_rows = read_labelled_completions(BUILTIN_LABELS)
    families = sorted({r.family for r in own_rows})
    for k, p in [*paths.items(), ("own", BUILTIN_LABELS)]:
        r = read_labelled_completions(p)
        print(f"{k}: {len(r)} completions, {sum(x.refused for x in r)} refusals ({sum(x.partial for x in r)} partial)")

    t0 = time.perf_counter()
    enc = CachedEncoder(get_encoder())
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        own_without = {
            f: _write_subset(tmp / f"own-without-{f}.csv", BUILTIN_LABELS, lambda r, f=f: r["family"] != f)
            for f in families
        }
        own_only = {
            f: _write_subset(tmp / f"own-{f}.csv", BUILTIN_LABELS, lambda r, f=f: r["family"] == f) for f in families
        }
        # column → (training files without own data, training files with own data, scored file)
        columns = {
            "gpt4 → llama2new": ([paths["gpt4"]], [paths["gpt4"], BUILTIN_LABELS], paths["llama2new"]),
            "llama2new → gpt4": ([paths["llama2new"]], [paths["llama2new"], BUILTIN_LABELS], paths["gpt4"]),
        }
        for f in families:
            columns[f"own:{f}"] = (
                [paths["gpt4"], paths["llama2new"]],
                [paths["gpt4"], paths["llama2new"], own_without[f]],
                own_only[f],
            )

        sizes = {c: len(read_labelled_completions(test)) for c, (_, _, test) in columns.items()}
        for fam in RULE_FAMILIES:
            results.append(
                {
                    "judge": f"rules: {fam}",
                    **{
                        c: evaluate_refusal_judge(RuleJudge(fam), test)["accuracy"]
                        for c, (_, _, test) in columns.items()
                    },
                }
            )
        results.append(
            {
                "judge": "rules: explicit",
                **{
                    c: evaluate_refusal_judge(ExplicitRuleJudge(), test)["accuracy"]
                    for c, (_, _, test) in columns.items()
                },
            }
        )
        for name, feats, over, classes, own in VARIANTS:
            row: dict = {
                "judge": name,
                "features": feats,
                "override": over,
                "classes": classes,
                "own_data": own,
                "C": {},
                "brier": {},
            }
            for c, (plain, with_own, test) in columns.items():
                out = tmp / "judge.npz"
                fit_refusal_judge(
                    with_own if own else plain,
                    out,
                    features=feats,
                    override=over,
                    classes=classes,
                    builtin=False,
                    encoder=enc,
                    batch_size=args.batch_size,
                )
                judge = EmbeddingRefusalJudge.load(out, encoder=enc)  # type: ignore[arg-type]
                res = evaluate_refusal_judge(judge, test)
                row[c], row["C"][c], row["brier"][c] = res["accuracy"], judge.meta["classifier"]["C"], res["brier"]
            results.append(row)
            print(f"  fitted {name} ({time.perf_counter() - t0:.0f} s)", flush=True)

    keys = list(columns)
    fam_keys = keys[2:]
    for r in results:
        r["own held out"] = sum(r[k] * sizes[k] for k in fam_keys) / sum(sizes[k] for k in fam_keys)
        main3 = [r[keys[0]], r[keys[1]], r["own held out"]]
        r["worst"], r["mean"] = min(main3), float(np.mean(main3))
    w = max(len(r["judge"]) for r in results)
    cols = keys + ["own held out", "worst", "mean"]
    print(f"\n{len(enc.cache)} distinct encodings, {time.perf_counter() - t0:.0f} s in all\n")
    print(f"| {'judge':<{w}} | " + " | ".join(cols) + " |")
    print(f"|{'-' * (w + 2)}|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
    for r in results:
        print(f"| {r['judge']:<{w}} | " + " | ".join(f"{r[c]:>{len(c)}.3f}" for c in cols) + " |")
    learned = [r for r in results if "features" in r]
    best = max(learned, key=lambda r: (r["worst"], r["mean"]))
    print(f"\nbest worst-column accuracy: {best['judge']} (worst {best['worst']:.3f}, mean {best['mean']:.3f})")
    default = next(r for r in results if r["judge"].startswith("NEW DEFAULT"))
    print("NEW DEFAULT: C chosen per column " + ", ".join(f"{k} {v:g}" for k, v in default["C"].items()))
    print("NEW DEFAULT: Brier score per column " + ", ".join(f"{k} {v:.3f}" for k, v in default["brier"].items()))
    print(
        "* the XSTest files answer the same 450 prompts, and the own families share their prompts, so the "
        "prompt block sees the scored prompts during fitting (optimistic)."
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
