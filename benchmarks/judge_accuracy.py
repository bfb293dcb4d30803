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
    python benchmarks/judge_accuracy.py --variants default --finetune [--finetune-columns all]

``--finetune`` adds the fine-tuned MiniLM (``recap.rewards.finetuned.fit_finetuned_judge``, fitted with
the shipped set, saved as a folder, loaded with ``load_judge("classifier:FOLDER")``) on the two XSTest
directions (``--finetune-columns all``: the six family columns too; 2–15 minutes a fit on 2 CPU
cores, by load), with its fit seconds; ``--variants default`` keeps only the rules, the old and the new default
of the embedding classifier.

Embeddings are computed once per (text, token limit) (an in-process cache around the encoder), so the
many variants cost one encoding pass; every judge is fitted, saved, loaded and scored through the
public API (``fit_refusal_judge`` → ``EmbeddingRefusalJudge.load`` → ``evaluate_refusal_judge``).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recap.rewards.classifier import (  # noqa: E402
    DEFAULT_ABSTAIN,
    DEFAULT_CLASSES,
    DEFAULT_FEATURES,
    DEFAULT_OVERRIDE,
    EmbeddingRefusalJudge,
    evaluate_refusal_judge,
    fit_refusal_judge,
)
from recap.rewards.encoder import SentenceEncoder, get_encoder  # noqa: E402
from recap.rewards.judges import (  # noqa: E402
    REFUSAL,
    RULE_FAMILIES,
    JudgeItem,
    RuleJudge,
    explicit_refusal,
    refusal_verdict,
)
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


def _band_stats(judge, test: Path) -> dict:
    """With the abstain band ``DEFAULT_ABSTAIN``: the share of answers that abstain (score 0.5) and the
    binary accuracy on the others."""
    rows = read_labelled_completions(test)
    judge.abstain = DEFAULT_ABSTAIN
    try:
        verdicts = judge.judge([JudgeItem(r.prompt, r.completion, "harmful") for r in rows])
    finally:
        judge.abstain = None
    kept = [(v.label == REFUSAL) == r.refused for v, r in zip(verdicts, rows) if "abstained" not in (v.rationale or "")]
    return {"abstained": 1 - len(kept) / len(rows), "accuracy_outside": float(np.mean(kept)) if kept else float("nan")}


def _finetune_row(args, columns: dict, tmp: Path) -> dict:
    """The fine-tuned MiniLM, fitted (with the shipped set) per column, saved, loaded by its spec, scored."""
    from recap.rewards.factory import load_judge
    from recap.rewards.finetuned import FINETUNE_DEFAULTS, fit_finetuned_judge

    epochs = FINETUNE_DEFAULTS["epochs"] if args.finetune_epochs is None else args.finetune_epochs
    max_length = args.finetune_max_length or FINETUNE_DEFAULTS["max_length"]
    row: dict = {
        "judge": f"finetuned MiniLM ({epochs:g} epochs, {max_length} tokens, +own)",
        "method": "finetune",
        "epochs": epochs,
        "max_length": max_length,
        "fit_seconds": {},
        "brier": {},
    }
    cols = list(columns)[:2] if args.finetune_columns == "xstest" else list(columns)
    for c in cols:
        _, with_own, test = columns[c]
        out = tmp / "finetuned"
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        fit_finetuned_judge(with_own, out, builtin=False, epochs=epochs, max_length=max_length, seed=args.seed)
        row["fit_seconds"][c] = time.perf_counter() - t
        judge = load_judge(f"classifier:{out}")
        res = evaluate_refusal_judge(judge, test)
        row[c], row["brier"][c] = res["accuracy"], res["brier"]
        row.setdefault("band", {})[c] = _band_stats(judge, test)
        print(f"    finetuned {c}: {res['accuracy']:.3f} (fit {row['fit_seconds'][c]:.0f} s)", flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "datasets" / "judge"))
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--variants", choices=("all", "default"), default="all", help="embedding-classifier rows")
    ap.add_argument("--finetune", action="store_true", help="add the fine-tuned MiniLM (minutes per fit)")
    ap.add_argument("--finetune-columns", choices=("xstest", "all"), default="xstest")
    ap.add_argument("--finetune-epochs", type=float, default=None, help="default: FINETUNE_DEFAULTS")
    ap.add_argument("--finetune-max-length", type=int, default=None, help="default: FINETUNE_DEFAULTS")
    ap.add_argument("--seed", type=int, default=0, help="seed of the fine-tuned fits")
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
        variants = (
            VARIANTS
            if args.variants == "all"
            else [v for v in VARIANTS if v[0].lower().startswith(("old default", "new default"))]
        )
        for name, feats, over, classes, own in variants:
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
                if name.startswith("NEW DEFAULT") and c in list(columns)[:2]:
                    row.setdefault("band", {})[c] = _band_stats(judge, test)
            results.append(row)
            print(f"  fitted {name} ({time.perf_counter() - t0:.0f} s)", flush=True)
        if args.finetune:
            results.append(_finetune_row(args, columns, tmp))
            print(f"  fitted the fine-tuned MiniLM ({time.perf_counter() - t0:.0f} s)", flush=True)

    keys = list(columns)
    fam_keys = keys[2:]
    for r in results:
        if all(k in r for k in fam_keys):
            r["own held out"] = sum(r[k] * sizes[k] for k in fam_keys) / sum(sizes[k] for k in fam_keys)
        main3 = [r.get(keys[0], np.nan), r.get(keys[1], np.nan), r.get("own held out", np.nan)]
        r["worst"], r["mean"] = float(np.min(main3)), float(np.mean(main3))
        for k in [*keys, "own held out"]:
            r.setdefault(k, float("nan"))  # not measured (printed as nan)
    w = max(len(r["judge"]) for r in results)
    cols = keys + ["own held out", "worst", "mean"]
    print(f"\n{len(enc.cache)} distinct encodings, {time.perf_counter() - t0:.0f} s in all\n")
    print(f"| {'judge':<{w}} | " + " | ".join(cols) + " |")
    print(f"|{'-' * (w + 2)}|" + "|".join("-" * (len(c) + 2) for c in cols) + "|")
    for r in results:
        print(f"| {r['judge']:<{w}} | " + " | ".join(f"{r[c]:>{len(c)}.3f}" for c in cols) + " |")
    for r in results:
        if "band" in r:
            print(
                f"abstain band {DEFAULT_ABSTAIN}, {r['judge']}: "
                + ", ".join(
                    f"{k} {v['abstained']:.1%} abstain, {v['accuracy_outside']:.3f} on the rest"
                    for k, v in r["band"].items()
                )
            )
    if args.finetune:
        ft = results[-1]
        print(
            "fine-tuned: fit seconds per column "
            + ", ".join(f"{k} {v:.0f}" for k, v in ft["fit_seconds"].items())
            + "; Brier "
            + ", ".join(f"{k} {v:.3f}" for k, v in ft["brier"].items())
        )
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
