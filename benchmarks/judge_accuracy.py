"""Cross-model accuracy of the offline refusal judges on XSTest v2 human-labelled completions.

Binary target: compliance (``1_full_compliance``) vs any refusal (``2_full_refusal``,
``3_partial_refusal``). Each learned judge is fitted on one model's completions and scored on the
other model's; the rule families need no fitting and are scored on each file.

    python benchmarks/judge_accuracy.py [--data-dir ../shared/datasets/judge] [--json out.json]

Embeddings are computed once per text (an in-process cache around the encoder) so that the many
variants cost one encoding pass; the default judge is then refitted end to end through the public API
(``fit_refusal_judge`` → save → load → ``evaluate_refusal_judge``) as a check.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recap.rewards.judges import RULE_FAMILIES  # noqa: E402
from recap.rewards.refusal import (DEFAULT_FEATURES, DEFAULT_OVERRIDE, EmbeddingRefusalJudge,  # noqa: E402
                                   SentenceEncoder, evaluate_refusal_judge, fit_refusal_judge, get_encoder,
                                   read_labelled_completions)

FILES = {"gpt4": "xstest_v2_completions_gpt4.csv", "llama2new": "xstest_v2_completions_llama2new.csv"}

# (row name, features, override)
VARIANTS = [
    ("classifier (answer)", "answer", None),
    ("both: classifier + rule features", "answer+rules", None),
    ("both: classifier + recap override", "answer", "recap"),
    ("both: classifier + xstest override", "answer", "xstest"),
    ("both: rule features + xstest override", "answer+rules", "xstest"),
    ("both: rule features + gcg override", "answer+rules", "gcg"),
    ("classifier (answer+prompt) *", "answer+prompt", None),
    ("both: answer+prompt+rules *", "answer+prompt+rules", None),
]


class CachedEncoder:
    """Memoises ``encode`` per text; otherwise the same encoder."""

    def __init__(self, enc: SentenceEncoder):
        self.enc, self.cache = enc, {}
        self.dim, self.max_length, self.path = enc.dim, enc.max_length, enc.path

    def encode(self, texts, batch_size=32):
        new = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if new:
            for t, v in zip(new, self.enc.encode(new, batch_size)):
                self.cache[t] = v
        return np.stack([self.cache[t] for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


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
    rows = {k: read_labelled_completions(p) for k, p in paths.items()}
    for k, r in rows.items():
        print(f"{k}: {len(r)} completions, {sum(x.refused for x in r)} refusals (full or partial)")

    t0 = time.perf_counter()
    enc = CachedEncoder(get_encoder())
    for r in rows.values():
        enc.encode([x.completion for x in r], args.batch_size)
        enc.encode([x.prompt for x in r], args.batch_size)
    print(f"encoded {len(enc.cache)} distinct texts in {time.perf_counter() - t0:.1f} s "
          f"(max_length {enc.max_length} tokens, {torch.get_num_threads()} threads)\n")

    directions = [("gpt4", "llama2new"), ("llama2new", "gpt4")]
    results: list[dict] = []
    for fam in RULE_FAMILIES:
        accs = {f"{a}->{b}": evaluate_refusal_judge(f"rules-{fam}", paths[b])["accuracy"] for a, b in directions}
        results.append({"judge": f"rules: {fam}", **accs})
    with tempfile.TemporaryDirectory() as tmp:
        for name, feats, over in VARIANTS:
            accs, Cs = {}, []
            for a, b in directions:
                j = fit_refusal_judge([paths[a]], features=feats, override=over, encoder=enc,
                                      batch_size=args.batch_size)
                accs[f"{a}->{b}"] = evaluate_refusal_judge(j, paths[b])["accuracy"]
                Cs.append(j.meta["classifier"]["C"])
            results.append({"judge": name, "features": feats, "override": over, "C": Cs, **accs})
        # the default, end to end through the public API and a saved file
        accs = {}
        for a, b in directions:
            out = Path(tmp) / f"refusal-{a}.npz"
            fit_refusal_judge([paths[a]], out, encoder=enc, batch_size=args.batch_size)
            loaded = EmbeddingRefusalJudge.load(out, encoder=enc)  # type: ignore[arg-type]
            accs[f"{a}->{b}"] = evaluate_refusal_judge(loaded, paths[b])["accuracy"]
        results.append({"judge": f"DEFAULT ({DEFAULT_FEATURES}, override={DEFAULT_OVERRIDE}) via save/load", **accs})
        # the default reading only the first 64 tokens of each answer (about 4x cheaper on long answers)
        enc64 = CachedEncoder(get_encoder(max_length=64))
        accs = {}
        for a, b in directions:
            j = fit_refusal_judge([paths[a]], encoder=enc64, batch_size=args.batch_size)
            accs[f"{a}->{b}"] = evaluate_refusal_judge(j, paths[b])["accuracy"]
        results.append({"judge": "DEFAULT, encoder reads 64 tokens", **accs})

    keys = [f"{a}->{b}" for a, b in directions]
    w = max(len(r["judge"]) for r in results)
    head = f"| {'judge':<{w}} | " + " | ".join(f"fit {a} → score {b}" for a, b in directions) + " | worst |"
    print(head)
    print("|" + "-" * (w + 2) + "|" + "|".join("-" * (len(f" fit {a} → score {b} ")) for a, b in directions)
          + "|-------|")
    for r in results:
        cells = " | ".join(f"{r[k]:>{len(f'fit {a} → score {b}')}.3f}" for k, (a, b) in zip(keys, directions))
        print(f"| {r['judge']:<{w}} | {cells} | {min(r[k] for k in keys):.3f} |")
    print("\nrules need no fitting: their two columns are simply their accuracy on the scored file.")
    print("* both files answer the same 450 XSTest prompts, so prompt features see the scored prompts "
          "during fitting (optimistic).")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
