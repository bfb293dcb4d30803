"""Judges from their specs: ``load_judge("classifier:FILE")``, ``load_judges(default, per_kind)``.

The one place that knows every judge implementation (rules, the miniature world's exact judge, the refusal
classifier, guard models, rubric judges) and parses every judge spec: the implementations import only
``recap.rewards.judges``, the interface (and their own helpers), so nothing imports back up.
"""

from __future__ import annotations

from collections.abc import Mapping

from recap.rewards.judges import BinaryJudge, Judge, KindRouter, RuleJudge

# Every spec ``load_judge`` accepts (the command-line help texts are made from this list).
JUDGE_KINDS = (
    "rules",
    "rules:<family>",
    "toy",
    "classifier:<file>.npz",
    "classifier:<folder>",
    "<file>.npz",
    "guard:<yaml>",
    "rubric:<yaml>",
    "binary:<spec>",
)
JUDGE_SPECS = ", ".join(JUDGE_KINDS)
_NAMES = ("rules", "toy", "classifier", "guard", "rubric", "binary")


def load_judge(spec: str, rubric_endpoint: dict | None = None) -> Judge:
    """A judge from its spec: ``rules`` / ``rules:xstest`` (string match + math-verify), ``toy`` (the
    miniature world's exact judge), ``classifier:PATH`` (a refusal classifier fitted with ``recap judge
    fit``), ``guard:PATH`` (a YAML ``GuardConfig`` for a generative guard model) or ``rubric:PATH`` (a YAML
    ``RubricConfig``: an LLM rubric judge behind an OpenAI-compatible endpoint); ``binary:SPEC`` is that
    judge's verdict as a 0/1 score. A bare ``PATH.npz`` is ``classifier:PATH.npz``; ``classifier:FOLDER`` is a
    fine-tuned classifier (``recap judge fit --method finetune``); a classifier spec may end in
    ``?abstain=LO,HI`` (a P(refusal) in that band scores 0.5). ``rubric_endpoint``
    (``recap.rewards.rubric.with_endpoint``) sends a rubric judge to another server."""
    name, _, arg = spec.partition(":")
    if name not in _NAMES and spec.lower().split("?abstain=")[0].endswith(".npz"):  # `recap judge fit` wrote it
        name, arg = "classifier", spec
    if name == "binary" and arg:  # binary:<any spec>: that judge's verdict as a 0/1 reward (Self-ReSET)
        return BinaryJudge(load_judge(arg, rubric_endpoint))
    if name == "rules":
        return RuleJudge(arg) if arg else RuleJudge()
    if name == "toy" and not arg:
        from recap.toy.judge import ToyJudge

        return ToyJudge()
    if name == "classifier" and arg:
        from pathlib import Path

        from recap.rewards.classifier import check_abstain, load_refusal_judge

        path, _, band = arg.partition("?abstain=")
        # ?abstain=none: no band, whatever was saved with the judge; no ?abstain: the saved band
        abstain = False if band.strip().lower() == "none" else (check_abstain(band) if band else None)
        if Path(path).is_dir():  # `recap judge fit --method finetune` writes a folder
            from recap.rewards.finetuned import FinetunedRefusalJudge

            return FinetunedRefusalJudge.load(path, abstain=abstain)
        return load_refusal_judge(path, abstain=abstain)
    if name == "guard" and arg:
        from recap.rewards.guard import GuardConfig, GuardJudge
        from recap.util.config import load_config

        return GuardJudge(load_config(GuardConfig, arg))
    if name == "rubric" and arg:
        from recap.rewards.rubric import RubricConfig, RubricJudge, with_endpoint
        from recap.util.config import load_config

        return RubricJudge(with_endpoint(load_config(RubricConfig, arg), rubric_endpoint))
    raise ValueError(f"unknown judge {spec!r} (expected one of: {JUDGE_SPECS})")


def load_judges(
    default: str, per_kind: Mapping[str, str] | None = None, rubric_endpoint: dict | None = None
) -> KindRouter:
    """One judge per kind: ``default`` for every kind unless ``per_kind`` names another (``rubric_endpoint``:
    see ``load_judge``)."""
    per_kind = dict(per_kind or {})
    unknown = set(per_kind) - {"harmful", "benign", "task"}
    if unknown:
        raise ValueError(f"judges: unknown kind {sorted(unknown)[0]!r} (expected harmful, benign, task)")
    cache: dict[str, Judge] = {}
    specs = {k: per_kind.get(k, default) for k in ("harmful", "benign", "task")}
    for spec in specs.values():
        if spec not in cache:
            cache[spec] = load_judge(spec, rubric_endpoint)
    return KindRouter({k: cache[s] for k, s in specs.items()})
