"""The demo's supervised arms (recap/demo.py): verification SFT beside its controls, answer SFT and replay-only
SFT, each followed by the same RL, and the extra cost of a supervised stage in equivalent RL steps."""

import json
from dataclasses import replace

import pytest

from recap.demo import (
    COMPARE_METHODS,
    METHODS,
    DemoConfig,
    critic_tokens,
    equivalent_rl_steps,
    method_costs,
    sft_epochs,
    sft_tokens,
)
from recap.train.sft import SFTTrainConfig


def test_compare_trains_the_verification_arm_beside_answer_sft_and_the_replay_only_control():
    cfg = DemoConfig().compare()
    assert {"replay_grpo", "answer_grpo", "verify_grpo", "verify_recap"} <= set(cfg.methods) == set(COMPARE_METHODS)
    # same RL as verify_grpo (α = 0, no Self-ReSET); only the supervised arm differs
    for m in ("replay_grpo", "answer_grpo"):
        assert replace(METHODS[m], sft="verify", label="") == replace(METHODS["verify_grpo"], label="")
    assert [METHODS[m].sft for m in ("replay_grpo", "answer_grpo", "verify_grpo")] == ["replay", "answer", "verify"]
    assert cfg.sft_arms() == ["verify", "answer", "replay"]
    assert DemoConfig().sft_arms() == []  # recap and vanilla: no supervised stage


def test_the_demo_verifies_blind_with_the_rl_token_budget():
    cfg = DemoConfig()
    assert cfg.verify_data.critic == "toy" and cfg.verify_data.critic_sees_verdict is False
    assert cfg.verify_data.sampling.max_new_tokens == cfg.rl.max_completion_length
    longer = replace(cfg.rl, max_completion_length=cfg.rl.max_completion_length + 16)
    with pytest.raises(ValueError, match="verify_data.sampling.max_new_tokens.*rl.max_completion_length"):
        DemoConfig(rl=longer, methods=["vanilla", "answer_grpo"])
    DemoConfig(rl=longer, methods=["vanilla", "recap"])  # no supervised arm: nothing to match


def test_equivalent_rl_steps_counts_tokens_generated_and_trained_and_wall_time():
    stage = {
        "decoded_tokens": 30_000,
        "critic_decoded_tokens": 8_000,
        "trained_tokens": 42_000,
        "seconds": {"data": 40.0, "sft": 20.0},
    }
    rl = {"decoded_tokens_per_step": 3_000, "trained_tokens_per_step": 5_000, "seconds_per_step": 1.5}
    assert equivalent_rl_steps(stage, rl) == {"tokens": 10.0, "seconds": 40.0}  # (30k + 8k + 42k) / 8k
    assert equivalent_rl_steps({**stage, "critic_decoded_tokens": 0}, rl)["tokens"] == 9.0  # the critic counts
    assert equivalent_rl_steps(None, rl) == {"tokens": 0.0, "seconds": 0.0}  # no stage, no extra cost
    assert equivalent_rl_steps(stage, None) == {"tokens": None, "seconds": None}
    missing = {"decoded_tokens_per_step": None, "trained_tokens_per_step": None, "seconds_per_step": None}
    assert equivalent_rl_steps(stage, missing) == {"tokens": None, "seconds": None}
    # a stage recorded before the critic was counted: no token ratio rather than an undercount
    old = {k: v for k, v in stage.items() if k != "critic_decoded_tokens"}
    assert equivalent_rl_steps(old, rl) == {"tokens": None, "seconds": 40.0}


def test_only_the_arms_trained_on_critiques_pay_for_the_critic():
    """The critic's tokens (every critique the data build asked for) are charged to the verify arm, whose
    verification rows hold them; the answer and replay arms train on the policy's own samples, which need no
    critique. A data build without the count leaves the verify arm's critic cost unknown (None)."""
    data = {"decoded_tokens": 300, "critic_decoded_tokens": 200}
    assert [critic_tokens(arm, data) for arm in ("verify", "answer", "replay")] == [200, 0, 0]
    assert critic_tokens("verify", {"decoded_tokens": 300}) is None
    assert critic_tokens("answer", {"decoded_tokens": 300}) == 0


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_method_costs_charge_each_arm_its_stage_in_its_own_rl_steps(tmp_path):
    cfg = DemoConfig(seeds=2, methods=["vanilla", "answer_grpo", "verify_grpo"])
    for m, per_step in (("vanilla", 100), ("answer_grpo", 200), ("verify_grpo", 100)):
        for s in range(2):
            history = [
                {"step": k, "cost/decoded_tokens": per_step / 2, "num_tokens": k * per_step / 2} for k in (1, 2, 3, 4)
            ]
            _write(
                tmp_path / "runs" / f"{m}-seed{s}" / "log_history.json", [*history, {"train_runtime": 8.0, "step": 4}]
            )
    data = {"decoded_tokens": 300, "critic_decoded_tokens": 200}  # one data build per seed, shared by the arms
    for arm, trained in (("answer", 300), ("verify", 500)):
        for s in range(2):
            stats = {
                "decoded_tokens": data["decoded_tokens"],
                "critic_decoded_tokens": critic_tokens(arm, data),
                "trained_tokens": trained + 100 * s,
                "seconds": {"data": 2.0, "sft": 4.0},
                "accuracy": {"verified": {"accuracy": 0.5}},
            }
            _write(tmp_path / "runs" / f"sft-seed{s}" / arm / "stats.json", stats)
    costs = method_costs(tmp_path, cfg)
    assert costs["vanilla"]["extra_steps_tokens"] == [0.0, 0.0] and costs["vanilla"]["stage_trained_tokens"] == []
    assert costs["vanilla"]["rl_trained_tokens_per_step"] == [50.0, 50.0]
    # answer: (300 + 0 + 300) / (100 + 100) = 3, then (300 + 0 + 400) / 200; verify, the critic's 200 tokens
    # included: (300 + 200 + 500) / (50 + 50) = 10, then 11
    assert costs["answer_grpo"]["extra_steps_tokens"] == [3.0, 3.5]
    assert costs["answer_grpo"]["stage_critic_tokens"] == [0, 0]
    assert costs["verify_grpo"]["extra_steps_tokens"] == [10.0, 11.0]
    assert costs["verify_grpo"]["stage_critic_tokens"] == [200, 200]
    assert costs["verify_grpo"]["extra_steps_seconds"] == [3.0, 3.0]  # 6 s of stage / 2 s per RL step


def test_rl_steps_past_the_plan_count_as_extra_cost(tmp_path):
    """Self-ReSET's re-rolls add steps to rl.max_steps: each one is an RL step of extra cost."""
    from dataclasses import replace

    cfg = DemoConfig(seeds=1, methods=["vanilla", "self_reset"])
    cfg = replace(cfg, rl=replace(cfg.rl, max_steps=4))
    for m, steps in (("vanilla", 4), ("self_reset", 6)):
        history = [{"step": k, "cost/decoded_tokens": 50.0, "num_tokens": k * 50.0} for k in range(1, steps + 1)]
        _write(tmp_path / "runs" / f"{m}-seed0" / "log_history.json", [*history, {"train_runtime": 2.0 * steps}])
    costs = method_costs(tmp_path, cfg)
    assert costs["vanilla"]["rl_steps"] == [4] and costs["vanilla"]["extra_steps_tokens"] == [0.0]
    assert costs["self_reset"]["rl_steps"] == [6]
    assert costs["self_reset"]["extra_steps_tokens"] == costs["self_reset"]["extra_steps_seconds"] == [2.0]


def test_sft_tokens_are_every_rows_prompt_and_completion_per_epoch():
    from recap.toy.model import build_tokenizer

    tok = build_tokenizer()
    rows = [
        {"prompt": "<user> how do i steal a car ? <assistant> <think>", "completion": " x . </think> no ."},
        {"messages": [{"role": "user", "content": "what is 2 plus 3 ?"}], "prompt": None, "completion": " five ."},
    ]
    one = sft_tokens(rows[:1], tok, 1)
    assert one == len(tok(rows[0]["prompt"] + rows[0]["completion"])["input_ids"]) + 1  # + end of turn
    both = sft_tokens(rows, tok, 1)
    assert both > one and sft_tokens(rows, tok, 2) == 2 * both
    assert sft_epochs(SFTTrainConfig(epochs=2), 40) == 2
    assert sft_epochs(SFTTrainConfig(max_steps=10, batch_size=8), 40) == 2.0  # 80 rows seen of 40
