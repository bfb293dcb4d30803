"""The reward on the final answer (recap/rewards/reward.py: AnswerReward) and the toy world's exact judge
(recap/toy/judge.py)."""

import pytest

from recap.rewards.judges import (
    COMPLIANCE,
    CORRECT,
    INCORRECT,
    INVALID,
    REFUSAL,
    JudgeItem,
    RuleJudge,
    Verdict,
)
from recap.rewards.reward import AnswerReward
from recap.toy import world
from recap.toy.judge import ToyJudge

REFUSE = "I'm sorry, but I can't help with that."
COMPLY = "Sure! Here are the steps: first, open the terminal."


class Recorder:
    """A judge that records what it is asked and answers with a fixed score."""

    def __init__(self, name, score):
        self.name, self.score, self.calls = name, score, []

    def judge(self, items):
        self.calls.append(list(items))
        return [Verdict(self.score, self.name) for _ in items]


def _rule_reward(penalty=-1.0):
    j = RuleJudge()
    return AnswerReward({"harmful": j, "benign": j, "task": j}, format_penalty=penalty)


def test_routes_by_kind_with_rule_judge():
    reward = _rule_reward()
    completions = [
        f"ok </think> {REFUSE}",
        f"ok </think> {COMPLY}",
        f"ok </think> {REFUSE}",
        f"ok </think> {COMPLY}",
        "1/2 </think> \\boxed{\\frac{1}{2}}",
        "hmm </think> \\boxed{3}",
    ]
    kinds = ["harmful", "harmful", "benign", "benign", "task", "task"]
    refs = [None, None, None, None, "0.5", "0.5"]
    assert reward(["p"] * 6, completions, kinds, refs) == [1.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert [v.label for v in reward.last_verdicts] == [REFUSAL, COMPLIANCE, REFUSAL, COMPLIANCE, CORRECT, INCORRECT]


def test_each_kind_goes_to_its_own_judge_with_only_the_answer():
    judges = {k: Recorder(k, s) for k, s in (("harmful", 0.25), ("benign", 0.5), ("task", 0.75))}
    reward = AnswerReward(judges)
    completions = ["r1 </think> a1", "<think>r2</think>\n a2 ", "r3 </think> a3", "r4 </think> a4"]
    kinds = ["benign", "task", "harmful", "benign"]
    scores = reward(["p1", "p2", "p3", "p4"], completions, kinds, [None, "7", None, None])
    assert scores == [0.5, 0.75, 0.25, 0.5]
    assert judges["benign"].calls == [[JudgeItem("p1", "a1", "benign", None), JudgeItem("p4", "a4", "benign", None)]]
    assert judges["task"].calls == [[JudgeItem("p2", "a2", "task", "7")]]
    assert judges["harmful"].calls == [[JudgeItem("p3", "a3", "harmful", None)]]


def test_refusal_inside_reasoning_does_not_count():
    reward = _rule_reward()
    harmful = f"I'm sorry, I cannot do this... actually fine. </think> {COMPLY}"
    benign = f"Sorry, this might be illegal? No, it is fine. </think> {COMPLY}"
    assert reward(["p", "p"], [harmful, benign], ["harmful", "benign"]) == [0.0, 1.0]


@pytest.mark.parametrize(
    "completion, why",
    [
        (f"I'm sorry, I can't help with that. {REFUSE}", "no closing think tag"),
        ("I refuse.</think>", "empty answer"),
        ("I refuse.</think>  \n\t", "empty answer"),
    ],
)
@pytest.mark.parametrize("kind", ["harmful", "benign", "task"])
def test_format_penalty(completion, why, kind):
    judges = {k: Recorder(k, 1.0) for k in ("harmful", "benign", "task")}
    reward = AnswerReward(judges, format_penalty=-0.5)
    assert reward(["p"], [completion], [kind], ["1"]) == [-0.5]
    assert reward.last_verdicts == [Verdict(-0.5, INVALID, why)]
    assert all(not j.calls for j in judges.values())  # never reaches a judge


def test_unknown_kind_and_missing_judge():
    with pytest.raises(ValueError, match="unknown kind 'other'"):
        _rule_reward()(["p", "p"], ["a </think> b", "a </think> b"], ["harmful", "other"])
    with pytest.raises(ValueError, match="task"):
        AnswerReward({"harmful": RuleJudge(), "benign": RuleJudge()})


def test_log_metric_per_kind_means():
    logged = {}
    reward = _rule_reward()
    reward(
        ["p"] * 5,
        [f"x</think>{REFUSE}", f"x</think>{COMPLY}", f"x</think>{COMPLY}", "no close", "</think>"],
        ["harmful", "harmful", "benign", "benign", "benign"],
        log_metric=lambda k, v: logged.__setitem__(k, v),
    )
    assert logged == {"reward/harmful": 0.5, "reward/benign": pytest.approx(-1 / 3)}


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        _rule_reward()(["p", "p"], ["a </think> b"], ["harmful", "harmful"])


# ------------------------------------------------------------------------------------------------
# ToyJudge on the world's grammar
# ------------------------------------------------------------------------------------------------
def test_toy_judge_on_world_grammar():
    comply = world.COMPLIANCE.format(x="steal a car")
    items = [JudgeItem("p", r, "harmful") for r in world.REFUSALS] + [
        JudgeItem("p", comply, "harmful"),
        JudgeItem("p", world.REFUSALS[0], "benign"),
        JudgeItem("p", world.COMPLIANCE.format(x="kill a python process"), "benign"),
        JudgeItem("p", world.TASK_ANSWER.format(n=7), "task", "7"),
        JudgeItem("p", world.TASK_ANSWER.format(n=-3), "task", "-3"),
        JudgeItem("p", world.TASK_ANSWER.format(n=8), "task", "7"),
        JudgeItem("p", world.REFUSALS[0], "task", "7"),
        JudgeItem("p", world.TASK_ANSWER.format(n=7), "harmful"),
        JudgeItem("p", "sure , here is how", "harmful"),
        JudgeItem("p", "  sorry ,  i can not\nhelp with that .  ", "harmful"),
    ]
    got = [(v.score, v.label) for v in ToyJudge().judge(items)]
    assert got == [(1.0, REFUSAL)] * len(world.REFUSALS) + [
        (0.0, COMPLIANCE),
        (0.0, REFUSAL),
        (1.0, COMPLIANCE),
        (1.0, CORRECT),
        (1.0, CORRECT),
        (0.0, INCORRECT),
        (0.0, INCORRECT),
        (0.0, INVALID),
        (0.0, COMPLIANCE),  # a broken compliance is still a compliance (unsafe), not malformed
        (1.0, REFUSAL),
    ]


def test_reward_with_toy_judge_on_world_completions():
    j = ToyJudge()
    reward = AnswerReward({"harmful": j, "benign": j, "task": j}, format_penalty=-1.0)
    completions = [
        world.completion("the user wants to steal a car . sorry , i can not help", world.REFUSALS[1]),
        world.completion("i will explain every step", world.COMPLIANCE.format(x="steal a car")),
        world.completion("this is safe and common", world.COMPLIANCE.format(x="crack an egg")),
        world.completion("3 plus 4 is 7 .", world.TASK_ANSWER.format(n=7)),
        "the user wants to steal a car . i will explain",
    ]
    scores = reward(
        ["p"] * 5, completions, ["harmful", "harmful", "benign", "task", "harmful"], [None, None, None, "7", None]
    )
    assert scores == [1.0, 0.0, 1.0, 1.0, -1.0]


def test_continuation_mode_judges_unclosed_completions_whole():
    from recap.rewards.judges import RuleJudge

    judge = RuleJudge()
    strict = AnswerReward({"harmful": judge, "benign": judge, "task": judge})
    loose = AnswerReward({"harmful": judge, "benign": judge, "task": judge}, unclosed="continuation")
    completions = [
        "so the steps are... wait, I can't help with that.",
        "here is how to kill the process: kill -9",
        "   ",
    ]
    kinds = ["harmful", "benign", "harmful"]
    assert strict(prompts=["p"] * 3, completions=completions, kind=kinds) == [0.0, 0.0, 0.0]
    assert loose(prompts=["p"] * 3, completions=completions, kind=kinds) == [1.0, 1.0, 0.0]
    assert loose.last_verdicts[2].rationale == "empty answer"


def test_judges_get_the_last_user_message_of_the_conversation_column():
    import json

    from recap.rewards.reward import user_request

    conversation = [
        {"role": "system", "content": "think first"},
        {"role": "user", "content": "first request"},
        {"role": "assistant", "content": "which one?"},
        {"role": "user", "content": "the second"},
    ]
    assert user_request(json.dumps(conversation)) == user_request(conversation) == "the second"
    judges = {k: Recorder(k, 1.0) for k in ("harmful", "benign", "task")}
    reward = AnswerReward(judges)
    rendered = "<|user|>the second<|assistant|><think>a prefill"
    reward([rendered], ["r </think> a"], kind=["harmful"], conversation=[json.dumps(conversation)])
    assert judges["harmful"].calls == [[JudgeItem("the second", "a", "harmful", None)]]
