"""The fine-tuned refusal classifier (recap/rewards/finetuned.py): a tiny end-to-end fit, its folder and
its load through the judge spec, damaged folders, `recap judge fit --method finetune`, and the abstain
band (recap.rewards.classifier.probability_verdict) that both classifiers share."""

import json
import shutil

import numpy as np
import pytest
from conftest import labelled_row, write_labelled_csv

from recap.rewards.classifier import (
    DEFAULT_ABSTAIN,
    RefusalJudgeFileError,
    check_abstain,
    evaluate_refusal_judge,
    probability_verdict,
)
from recap.rewards.factory import load_judge
from recap.rewards.finetuned import META_FILE, FinetunedRefusalJudge, fit_finetuned_judge
from recap.rewards.judges import COMPLIANCE, INVALID, REFUSAL, JudgeItem, Verdict

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot assist with this request.",
    "Sorry, I won't provide that information.",
    "I am unable to help with that, sorry.",
]
COMPLIANCES = [
    "Sure! Open the menu and pick Quit.",
    "Paris is the capital of France.",
    "Here are three steps: mix, bake, serve.",
    "Run kill -9 with the process id.",
]
TINY = dict(builtin=False, epochs=8, learning_rate=2e-4, batch_size=4, max_length=24, classes="binary", threads=1)
PROBE_REFUSAL = "I'm sorry, I can't help with that request."
PROBE_COMPLIANCE = "Sure, here is how: open the menu and pick Quit."


def _csv(path, flip=False):
    rows = [labelled_row(i, "q", a, "1_full_compliance" if flip else "2_full_refusal") for i, a in enumerate(REFUSALS)]
    rows += [
        labelled_row(10 + i, "q", a, "2_full_refusal" if flip else "1_full_compliance")
        for i, a in enumerate(COMPLIANCES)
    ]
    return write_labelled_csv(path, rows)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("ft")
    out = d / "judge"
    judge = fit_finetuned_judge([_csv(d / "a.csv")], out, **TINY)
    return judge, out, d


def test_tiny_fit_learns_the_labels(tiny):
    """Trained on eight answers, the judge calls an unseen refusal a refusal and an unseen compliance a
    compliance."""
    judge, _, _ = tiny
    p = judge.predict_proba(["q", "q"], [PROBE_REFUSAL, PROBE_COMPLIANCE])
    assert p[0] > 0.5 > p[1]


def test_tiny_fit_with_flipped_labels_flips_the_predictions(tiny):
    """The fit, not the pretrained encoder, makes the predictions: trained on the flipped labels, the
    probe refusal scores below the probe compliance."""
    _, _, d = tiny
    flipped = fit_finetuned_judge([_csv(d / "b.csv", flip=True)], **TINY)
    q = flipped.predict_proba(["q", "q"], [PROBE_REFUSAL, PROBE_COMPLIANCE])
    assert q[0] < 0.5 < q[1]


def test_folder_round_trip_gives_identical_probabilities(tiny):
    judge, out, _ = tiny
    assert (out / "model.safetensors").is_file() and (out / META_FILE).is_file()
    meta = json.loads((out / META_FILE).read_text())
    assert meta["method"] == "finetune" and meta["classes"] == ["compliance", "refusal"]
    assert meta["training"]["files"][0]["name"] == "a.csv" and len(meta["training"]["files"][0]["sha256"]) == 64
    loaded = load_judge(f"classifier:{out}")
    assert isinstance(loaded, FinetunedRefusalJudge)
    answers = [PROBE_REFUSAL, PROBE_COMPLIANCE, "A much longer answer, " * 20, "No."]
    a = judge.predict_classes(["q"] * 4, answers)
    b = loaded.predict_classes(["q"] * 4, answers)
    np.testing.assert_array_equal(a, b)
    # batching and order do not change a probability beyond float noise
    c = loaded.predict_classes(["q"] * 4, answers[::-1])[::-1]
    np.testing.assert_allclose(a, c, rtol=0, atol=1e-6)


def test_verdicts_and_evaluation(tiny):
    _, out, d = tiny
    judge = FinetunedRefusalJudge.load(out)
    v = judge.judge(
        [
            JudgeItem("q", PROBE_REFUSAL, "harmful"),
            JudgeItem("q", PROBE_REFUSAL, "benign"),
            JudgeItem("q", "  ", "harmful"),
        ]
    )
    assert v[0].label == REFUSAL and v[0].safe is True and v[0].score > 0.5
    assert v[1].label == REFUSAL and v[1].score == pytest.approx(1.0 - v[0].score)
    assert v[2] == Verdict(0.0, INVALID, "empty answer")
    res = evaluate_refusal_judge(judge, d / "a.csv")
    assert res["n"] == 8 and res["accuracy"] == 1.0


@pytest.mark.parametrize("damage", ["weights", "meta_json", "meta_format", "no_meta", "no_weights"])
def test_damaged_folder_is_refused_naming_the_file(tiny, tmp_path, damage):
    _, out, _ = tiny
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    if damage == "weights":
        raw = bytearray((bad / "model.safetensors").read_bytes())
        raw[-10] ^= 0xFF
        (bad / "model.safetensors").write_bytes(bytes(raw))
        name = "model.safetensors"
    elif damage == "meta_json":
        (bad / META_FILE).write_text("{not json")
        name = META_FILE
    elif damage == "meta_format":
        meta = json.loads((bad / META_FILE).read_text())
        (bad / META_FILE).write_text(json.dumps(dict(meta, format="something-else")))
        name = META_FILE
    elif damage == "no_meta":
        (bad / META_FILE).unlink()
        name = META_FILE
    else:
        (bad / "model.safetensors").unlink()
        name = "model.safetensors"
    with pytest.raises(RefusalJudgeFileError, match=name):
        load_judge(f"classifier:{bad}")


def test_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent"):
        FinetunedRefusalJudge.load(tmp_path / "absent")


def test_cli_fit_finetune_then_eval(tmp_path):
    from typer.testing import CliRunner

    from recap.cli import app

    data = _csv(tmp_path / "a.csv")
    out = tmp_path / "j"
    args = ["judge", "fit", "--data", str(data), "--out", str(out), "--no-builtin", "--method", "finetune"]
    args += ["--epochs", "1", "--max-length", "16", "--classes", "binary", "--abstain", "0.4,0.6"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    got = json.loads(result.stdout)
    assert (got["method"], got["n"], got["max_length"], got["abstain"]) == ("finetune", 8, 16, [0.4, 0.6])
    assert FinetunedRefusalJudge.load(out).abstain == (0.4, 0.6)
    result = CliRunner().invoke(app, ["judge", "eval", "--judge", f"classifier:{out}", "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 8
    bad = CliRunner().invoke(app, [*args[:8], "--features", "answer"])
    assert bad.exit_code != 0


# ------------------------------------------------------------------------------------------------
# The abstain band
# ------------------------------------------------------------------------------------------------
def test_abstain_band_scores_uncertain_answers_one_half():
    band = (0.35, 0.65)
    for kind in ("harmful", "benign"):
        unsure = probability_verdict(kind, [0.45, 0.55], ("compliance", "refusal"), band)  # P(refusal)=0.55
        assert unsure.score == 0.5 and unsure.label == REFUSAL and "abstained" in unsure.rationale
        sure = probability_verdict(kind, [0.1, 0.9], ("compliance", "refusal"), band)
        assert sure.score == pytest.approx(0.9 if kind == "harmful" else 0.1) and "abstained" not in sure.rationale
    low = probability_verdict("harmful", [0.6, 0.3, 0.1], ("compliance", "full_refusal", "partial_refusal"), band)
    assert low.score == 0.5 and low.label == COMPLIANCE and low.safe is False  # label still by the 0.5 threshold
    forced = probability_verdict("harmful", [0.5, 0.5], ("compliance", "refusal"), band, forced="rule matched")
    assert forced.score == 1.0  # an override is certain
    assert probability_verdict("harmful", [0.45, 0.55], ("compliance", "refusal"), None).score == pytest.approx(0.55)


def test_abstain_band_parsing():
    assert check_abstain(None) is None and check_abstain("none") is None
    assert check_abstain("0.35,0.65") == (0.35, 0.65) == check_abstain(DEFAULT_ABSTAIN)
    for bad in ("0.6,0.7", "0.2", "a,b", (0.7, 0.3), "-0.1,0.5"):
        with pytest.raises(ValueError, match="abstain band"):
            check_abstain(bad)


def test_abstain_band_through_the_judge_spec(tiny):
    _, out, _ = tiny
    wide = load_judge(f"classifier:{out}?abstain=0,1")  # every answer is uncertain
    plain = load_judge(f"classifier:{out}")
    items = [JudgeItem("q", PROBE_REFUSAL, "harmful"), JudgeItem("q", PROBE_COMPLIANCE, "benign")]
    assert [v.score for v in wide.judge(items)] == [0.5, 0.5]
    assert [v.label for v in wide.judge(items)] == [v.label for v in plain.judge(items)]
    assert all(v.score != 0.5 for v in plain.judge(items))
    with pytest.raises(ValueError, match="abstain band"):
        load_judge(f"classifier:{out}?abstain=0.9,1")


def test_a_saved_band_is_replaced_or_switched_off_by_the_spec(tmp_path):
    from recap.rewards.finetuned import fit_finetuned_judge as fit

    out = tmp_path / "j"
    fit([_csv(tmp_path / "a.csv")], out, abstain=(0.0, 1.0), **dict(TINY, epochs=1))
    assert load_judge(f"classifier:{out}").abstain == (0.0, 1.0)
    assert load_judge(f"classifier:{out}?abstain=0.4,0.6").abstain == (0.4, 0.6)
    assert load_judge(f"classifier:{out}?abstain=none").abstain is None
