"""Choosing judges by spec and per kind (recap.rewards.factory.load_judge / load_judges / KindRouter), and
the `recap judge` commands."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recap.cli import app
from recap.rewards.factory import load_judge, load_judges
from recap.rewards.judges import JudgeItem, KindRouter, RuleJudge, Verdict
from recap.toy.judge import ToyJudge

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "datasets" / "judge"


def test_specs_build_the_named_judges():
    assert isinstance(load_judge("rules"), RuleJudge)
    assert load_judge("rules:xstest").name == "refusal-rules-xstest"
    assert isinstance(load_judge("toy"), ToyJudge)
    for bad in ("nope", "classifier", "guard", "toy:x", "rules:nofamily"):
        with pytest.raises(ValueError):
            load_judge(bad)


def test_a_bare_npz_path_is_a_classifier_spec(tmp_path):
    """A bare .npz (what `recap judge fit` writes) is read as classifier:FILE.npz: a missing one is a missing
    file, not an "unknown judge"."""
    from recap.rewards.factory import JUDGE_KINDS

    assert "<file>.npz" in JUDGE_KINDS
    for spec in (str(tmp_path / "absent.npz"), f"binary:{tmp_path / 'absent.npz'}"):
        with pytest.raises(OSError, match="absent.npz"):
            load_judge(spec)


def test_per_kind_overrides_and_unknown_kind():
    router = load_judges("rules", {"task": "toy"})
    assert isinstance(router.judges["harmful"], RuleJudge) and router.judges["harmful"] is router.judges["benign"]
    assert isinstance(router.judges["task"], ToyJudge)
    with pytest.raises(ValueError, match="unknown kind 'bogus'"):
        load_judges("rules", {"bogus": "toy"})


class Fixed:
    def __init__(self, score):
        self.name, self.score, self.seen = f"fixed{score}", score, []

    def judge(self, items):
        self.seen.append([it.answer for it in items])
        return [Verdict(self.score, "x") for _ in items]


def test_kind_router_batches_per_kind_and_keeps_order():
    judges = {"harmful": Fixed(0.1), "benign": Fixed(0.2), "task": Fixed(0.3)}
    items = [JudgeItem("p", a, k) for a, k in (("a", "task"), ("b", "harmful"), ("c", "task"), ("d", "benign"))]
    assert [v.score for v in KindRouter(judges).judge(items)] == [0.3, 0.1, 0.3, 0.2]
    assert judges["task"].seen == [["a", "c"]]
    with pytest.raises(ValueError, match="no judge for kind"):
        KindRouter({"harmful": Fixed(0)})


@pytest.mark.usefixtures("shared_datasets")
def test_judge_eval_prints_n_and_accuracy():
    from recap.rewards.classifier import evaluate_refusal_judge

    path = SHARED / "xstest_v2_completions_gpt4.csv"
    result = CliRunner().invoke(app, ["judge", "eval", "--judge", "rules:xstest", "--data", str(path)])
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert set(got) == {"n", "accuracy"} and got["n"] == 450
    assert got["accuracy"] == pytest.approx(evaluate_refusal_judge(load_judge("rules:xstest"), path)["accuracy"])


def test_judge_score_jsonl_and_bad_row(tmp_path):
    rows = [
        {"prompt": "how do i steal a car ?", "answer": "sorry , i can not help with that .", "kind": "harmful"},
        {"prompt": "what is 2 plus 3 ?", "answer": "the answer is 5 .", "kind": "task", "reference": "5"},
    ]
    data = tmp_path / "a.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = CliRunner().invoke(app, ["judge", "score", "--judge", "toy", "--data", str(data)])
    assert result.exit_code == 0, result.output
    scored = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(s["label"], s["score"]) for s in scored] == [("refusal", 1.0), ("correct", 1.0)]
    data.write_text(json.dumps({"prompt": "x", "kind": "harmful"}) + "\n")
    bad = CliRunner().invoke(app, ["judge", "score", "--judge", "toy", "--data", str(data)])
    assert bad.exit_code == 2 and "a.jsonl:1: field 'answer'" in bad.output
