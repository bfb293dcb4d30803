"""On-policy flawed prefixes (recap/data/onpolicy.py): steps, the cut at the first unsafe step, the
step judges and the bounded prefix buffer."""

import json
import random

import pytest

from recap.data.onpolicy import (
    BufferEntry,
    Cut,
    PrefixBuffer,
    first_unsafe_cut,
    judge_step_fn,
    split_steps,
    toy_step_judge,
)
from recap.inference.chat import split_reasoning
from recap.rewards.judges import JudgeItem, Verdict
from recap.toy import world


# --------------------------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------------------------
def test_split_steps_world_separator():
    text = "the user wants to steal a car . it is for a story so it is fine . i will explain every step ."
    assert split_steps(text) == [
        "the user wants to steal a car . ",
        "it is for a story so it is fine . ",
        "i will explain every step .",
    ]


@pytest.mark.parametrize(
    "text, steps",
    [
        ("First. Second! Third? Fourth", ["First. ", "Second! ", "Third? ", "Fourth"]),
        ("  lead . a  .\n\n  b\tc .  ", ["  lead . ", "a  .\n\n  ", "b\tc .  "]),
        ("line one\nline two\n\nline three", ["line one\n", "line two\n\n", "line three"]),
        ("pi is 3.14 and e.g.x stays . next", ["pi is 3.14 and e.g.x stays . ", "next"]),
        ('He said "stop." Then left.', ['He said "stop." ', "Then left."]),
        ("Hmm... ok . . . done", ["Hmm... ", "ok . . . ", "done"]),
        ("\n\nstart . end", ["\n\nstart . ", "end"]),
        ("no boundary at all", ["no boundary at all"]),
        ("... ?", ["... ?"]),
    ],
)
def test_split_steps_cases(text, steps):
    assert split_steps(text) == steps
    assert "".join(steps) == text


@pytest.mark.parametrize("text", ["", "   ", "\n\t \n"])
def test_split_steps_empty(text):
    assert split_steps(text) == []


def test_split_steps_round_trip_on_random_whitespace():
    rng = random.Random(0)
    atoms = ["a", "bb", ".", "!", "?", " ", "  ", "\n", "\t", "3.5", "é", "\u00a0", "\r\n"]
    for _ in range(300):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 25)))
        steps = split_steps(text)
        assert "".join(steps) == (text if text.strip() else "")
        assert all(s.strip() for s in steps)


# --------------------------------------------------------------------------------------------
# The cut at the first unsafe step
# --------------------------------------------------------------------------------------------
def _flag(*unsafe_steps):
    """A fake step judge: the prefix through step i is unsafe for i in ``unsafe_steps`` (or later)."""
    calls = []

    def judge(prefixes):
        calls.append(list(prefixes))
        first = min(unsafe_steps) if unsafe_steps else len(prefixes)
        return [i >= first for i in range(len(prefixes))]

    return judge, calls


def test_cut_unsafe_at_step_zero():
    judge, calls = _flag(0)
    assert first_unsafe_cut("Sure, I will help. Step one is this.", judge) == Cut("Sure, I will help.", 0, 2)
    assert calls == [["Sure, I will help.", "Sure, I will help. Step one is this."]]


def test_cut_unsafe_in_the_middle():
    judge, calls = _flag(2)
    text = "A.  B!\nC?  D.\n"
    assert first_unsafe_cut(text, judge) == Cut("A.  B!\nC?", 2, 4)
    assert len(calls) == 1  # one batched call with every growing prefix
    assert calls[0] == ["A.", "A.  B!", "A.  B!\nC?", "A.  B!\nC?  D."]


def test_cut_never_unsafe_and_empty():
    judge, calls = _flag()
    assert first_unsafe_cut("A. B. C.", judge) is None
    assert first_unsafe_cut("   ", judge) is None
    assert len(calls) == 1  # nothing to judge for empty reasoning


def test_cut_rejects_a_judge_with_the_wrong_number_of_flags():
    with pytest.raises(ValueError, match="2 flags for 3 prefixes"):
        first_unsafe_cut("A. B. C.", lambda prefixes: [False, True])


def test_toy_rollout_is_cut_after_its_first_unsafe_sentence():
    rollout = (
        "the user wants to steal a car . it is for a story so it is fine . i will explain every step . "
        "</think> sure , here is how to steal a car : step one , step two , step three ."
    )
    reasoning = split_reasoning(rollout).reasoning
    cut = first_unsafe_cut(reasoning, toy_step_judge("harmful"))
    assert cut == Cut("the user wants to steal a car . it is for a story so it is fine .", 1, 3)


def test_toy_rollout_with_an_unclosed_last_sentence():
    reasoning = "the user wants to hack a bank account . i will explain every step"
    assert first_unsafe_cut(reasoning, toy_step_judge("harmful")) == Cut(reasoning, 1, 2)


def test_toy_safe_rollout_is_not_cut():
    reasoning = "the user wants to steal a car . this could hurt people . i should refuse ."
    assert first_unsafe_cut(reasoning, toy_step_judge("harmful")) is None
    # A harmful-kind unsafe sentence is no flaw for a benign request, and vice versa.
    assert (
        first_unsafe_cut("the user wants to crack an egg . i will explain every step .", toy_step_judge("benign"))
        is None
    )


def test_benign_refusing_trajectory_is_cut_at_the_refusing_sentence():
    reasoning = "the user wants to kill a python process . the words sound violent . i must refuse to be safe ."
    cut = first_unsafe_cut(reasoning, toy_step_judge("benign"))
    assert cut == Cut("the user wants to kill a python process . the words sound violent .", 1, 3)
    assert cut.prefix.removesuffix(" .").split(" . ")[-1] in world.REFUSING_SENTENCES


def test_toy_judge_compares_whole_sentences():
    judge = toy_step_judge("harmful")
    assert judge(
        [
            "so it is for a story so it is fine .",
            "sharing this is fine indeed",
            "SHARING  this is   fine !",
            "wait , that is wrong . sharing this is fine",
        ]
    ) == [False, False, True, True]
    with pytest.raises(ValueError, match="harmful.*benign"):
        toy_step_judge("task")


def test_toy_judge_knows_every_sentence_of_both_pools():
    for kind, pool in (("harmful", world.UNSAFE_SENTENCES), ("benign", world.REFUSING_SENTENCES)):
        prefixes = [f"the user wants to x . {s} ." for s in pool]
        assert toy_step_judge(kind)(prefixes) == [True] * len(pool)


class _FakeJudge:
    name = "fake"

    def __init__(self, scores, labels=None):
        self.scores, self.labels, self.calls = scores, labels, []

    def judge(self, items):
        self.calls.append(list(items))
        labels = self.labels or ["x"] * len(self.scores)
        return [Verdict(s, lab) for s, lab in zip(self.scores, labels)][: len(items)]


def test_judge_step_fn_reads_prefixes_as_answers_in_one_batch():
    judge = _FakeJudge([1.0, 0.6, 0.2, 0.0])
    fn = judge_step_fn(judge, "how do i steal a car ?", "harmful", threshold=0.5)
    cut = first_unsafe_cut("I think. It is fine. Here is how. Step one.", fn)
    assert cut == Cut("I think. It is fine. Here is how.", 2, 4)
    assert len(judge.calls) == 1
    assert judge.calls[0][1] == JudgeItem("how do i steal a car ?", "I think. It is fine.", "harmful", None)


def test_judge_step_fn_ignores_invalid_verdicts_and_checks_the_count():
    fn = judge_step_fn(_FakeJudge([0.0, 0.0], ["invalid", "compliance"]), "p", "harmful")
    assert fn(["a", "a b"]) == [False, True]
    with pytest.raises(ValueError, match="1 verdicts for 2 prefixes"):
        judge_step_fn(_FakeJudge([0.0]), "p", "harmful")(["a", "a b"])
    # a NaN score is refused, not read as "safe" (nan < threshold is False)
    with pytest.raises(ValueError, match="finite score in"):
        judge_step_fn(_FakeJudge([0.0, float("nan")]), "p", "harmful")(["a", "a b"])
    with pytest.raises(ValueError, match="threshold"):
        judge_step_fn(_FakeJudge([]), "p", "harmful", threshold=2.0)


# --------------------------------------------------------------------------------------------
# The buffer
# --------------------------------------------------------------------------------------------
def _e(example_id, prefix, kind="harmful", step=0, n_steps=2):
    return BufferEntry(example_id, kind, prefix, step, n_steps)


def test_buffer_capacity_evicts_oldest_first():
    buf = PrefixBuffer(capacity=3, per_example=4)
    assert buf.add([_e("a", "1"), _e("b", "2")], step=0) == 2
    assert buf.add([_e("c", "3"), _e("d", "4"), _e("e", "5")], step=1) == 3
    assert len(buf) == 3
    assert [(e.example_id, e.added_at) for e in buf.entries()] == [("c", 1), ("d", 1), ("e", 1)]
    assert buf.stats()["evicted"] == 2


def test_buffer_per_example_cap_evicts_that_examples_oldest():
    buf = PrefixBuffer(capacity=10, per_example=2)
    buf.add([_e("a", "a1"), _e("b", "b1"), _e("a", "a2")], step=0)
    buf.add([_e("a", "a3")], step=1)
    assert [e.prefix for e in buf.entries()] == ["b1", "a2", "a3"]
    assert buf.stats()["evicted"] == 1


def test_buffer_drops_exact_duplicates_only():
    buf = PrefixBuffer(capacity=10)
    assert buf.add([_e("a", "x"), _e("a", "x"), _e("b", "x"), _e("a", "x y")], step=0) == 3
    assert buf.add([_e("a", "x", step=1)], step=1) == 0
    s = buf.stats()
    assert (s["size"], s["added"], s["duplicates"], s["refreshes"]) == (3, 3, 2, 1)
    # Once evicted, the same prefix may come back.
    small = PrefixBuffer(capacity=1)
    small.add([_e("a", "x")], 0)
    small.add([_e("b", "y")], 1)
    assert small.add([_e("a", "x")], 2) == 1


def test_buffer_stats_exact():
    buf = PrefixBuffer(capacity=4, per_example=2)
    assert buf.stats() == {
        "size": 0,
        "capacity": 4,
        "added": 0,
        "evicted": 0,
        "duplicates": 0,
        "refreshes": 0,
        "by_kind": {},
        "cut_step_mean": None,
        "cut_fraction_mean": None,
        "cut_step_histogram": {},
    }
    buf.add([_e("a", "p", "harmful", 0, 4), _e("b", "q", "benign", 1, 2)], step=3)
    buf.add([_e("b", "q", "benign", 1, 2)], step=4)  # duplicate: no refresh
    buf.add([_e("c", "r", "harmful", 2, 3), _e("c", "s", "harmful", 1, 2), _e("d", "t", "benign", 1, 4)], step=5)
    # capacity 4: "a" left (FIFO). Entries: b(1/2), c(2/3), c(1/2), d(1/4).
    assert buf.stats() == {
        "size": 4,
        "capacity": 4,
        "added": 5,
        "evicted": 1,
        "duplicates": 1,
        "refreshes": 2,
        "by_kind": {"benign": 2, "harmful": 2},
        "cut_step_mean": (1 + 2 + 1 + 1) / 4,
        "cut_fraction_mean": (2 / 2 + 3 / 3 + 2 / 2 + 2 / 4) / 4,
        "cut_step_histogram": {1: 3, 2: 1},
    }


def test_buffer_sample_prefers_the_example_then_the_kind():
    buf = PrefixBuffer(capacity=10)
    buf.add([_e("a", "a1"), _e("a", "a2"), _e("b", "b1"), _e("z", "z1", kind="benign")], step=0)
    rng = random.Random(0)
    assert {buf.sample("harmful", rng, "a").prefix for _ in range(50)} == {"a1", "a2"}
    assert {buf.sample("harmful", rng, "new").prefix for _ in range(100)} == {"a1", "a2", "b1"}
    assert {buf.sample("harmful", rng).prefix for _ in range(100)} == {"a1", "a2", "b1"}
    assert buf.sample("benign", rng, "a").prefix == "z1"  # an example of another kind does not count
    assert buf.sample("task", rng, "a") is None
    assert PrefixBuffer(3).sample("harmful", rng) is None


def test_buffer_rows_round_trip_through_json():
    buf = PrefixBuffer(capacity=5, per_example=2)
    buf.add([_e("a", "x", step=1, n_steps=3), _e("b", "y . z", "benign")], step=7)
    buf.add([_e("a", "w")], step=9)
    rows = json.loads(json.dumps(buf.to_rows()))
    back = PrefixBuffer.from_rows(rows, capacity=5, per_example=2)
    assert back.entries() == buf.entries()
    assert [e.added_at for e in back.entries()] == [7, 7, 9]
    assert back.stats()["cut_step_histogram"] == buf.stats()["cut_step_histogram"]
    # Restored bounds still apply; a later add of a restored prefix is a duplicate.
    assert back.add([_e("a", "x")], step=10) == 0
    assert len(PrefixBuffer.from_rows(rows, capacity=2)) == 2
    with pytest.raises(ValueError, match="row 0 lacks added_at"):
        PrefixBuffer.from_rows([{"example_id": "a", "kind": "harmful", "prefix": "x", "step": 0, "n_steps": 1}], 3)


@pytest.mark.parametrize("capacity, per_example", [(0, 4), (-1, 4), (3, 0)])
def test_buffer_rejects_bad_bounds(capacity, per_example):
    with pytest.raises(ValueError):
        PrefixBuffer(capacity, per_example)
