"""The shipped training configs reward with the paper's judges (guard P(safe) on harmful prompts, the
over-refusal rubric on benign ones, math-verify on math) and its total length budget; CPU configs that
use a stand-in judge say so. The guard model is never loaded here."""

from dataclasses import replace
from pathlib import Path

import pytest

from recap.data.recipe import paper_parts
from recap.rewards.factory import load_judge
from recap.rewards.guard import GuardConfig
from recap.rewards.judges import JudgeItem, RuleJudge
from recap.rewards.rubric import RubricConfig
from recap.train import TrainConfig, check_train_config
from recap.train.config import with_epochs
from recap.util.config import load_config

ROOT = Path(__file__).resolve().parents[2]
PAPER = ["recap-dapo.yaml", "recap-mixed-curriculum.yaml", "scale/recap-8b.yaml", "scale/recap-8b-vllm-server.yaml"]
GUARD, RUBRIC = "guard:configs/judges/guard.yaml", "rubric:configs/judges/overrefusal-rubric.yaml"


def _specs(cfg: TrainConfig) -> dict[str, str]:
    return {k: cfg.judges.get(k, cfg.judge) for k in ("harmful", "benign", "task")}


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_use_the_papers_rewards_and_length_budget(name):
    cfg = load_config(TrainConfig, ROOT / "configs" / name)
    check_train_config(cfg)
    assert _specs(cfg) == {"harmful": GUARD, "benign": RUBRIC, "task": "rules"}
    assert cfg.max_total_length == 8000 and cfg.max_completion_length >= cfg.max_total_length
    assert cfg.dynamic_sampling and (cfg.dynamic_sampling_rule, cfg.dynamic_sampling_tau) == ("paper", 0.9)
    text = (ROOT / "configs" / name).read_text(encoding="utf-8")
    assert "rarely tie" in text or "almost never happen" in text  # why: continuous guard rewards


def test_the_judge_files_the_paper_configs_name():
    guard = load_config(GuardConfig, ROOT / GUARD.split(":", 1)[1])
    assert guard.model == "ibm-granite/granite-guardian-3.1-8b" and guard.kinds == ["harmful"]
    rubric = load_config(RubricConfig, ROOT / RUBRIC.split(":", 1)[1])
    assert rubric.rubric == "overrefusal"
    assert type(load_judge(f"rubric:{ROOT / RUBRIC.split(':', 1)[1]}")).__name__ == "RubricJudge"  # no call made
    rules = load_judge("rules")  # math rows: math-verify
    assert isinstance(rules, RuleJudge)
    assert [
        v.score
        for v in rules.judge(
            [
                JudgeItem("what is 1/2 + 1/4?", "\\boxed{\\frac{3}{4}}", "task", "0.75"),
                JudgeItem("what is 1/2 + 1/4?", "\\boxed{0.7}", "task", "0.75"),
            ]
        )
    ] == [1.0, 0.0]


@pytest.mark.parametrize("name", PAPER + ["toy/train.yaml", "smollm2/train.yaml"])
def test_a_config_with_a_stand_in_judge_says_so(name):
    path = ROOT / "configs" / name
    cfg = load_config(TrainConfig, path)
    check_train_config(cfg)
    stand_ins = {k: s for k, s in _specs(cfg).items() if k != "task" and s.split(":")[0] in ("rules", "classifier")}
    assert not stand_ins or "stand-in" in path.read_text(encoding="utf-8"), f"{name}: {stand_ins} unnamed"
    assert name != "smollm2/train.yaml" or stand_ins  # the CPU run does use one


@pytest.mark.parametrize("name", ["toy/train.yaml", "smollm2/train.yaml", "smollm2/rl.yaml", "self-reset.yaml"])
def test_cpu_and_self_reset_configs_keep_the_zero_variance_rule_and_say_why(name):
    path = ROOT / "configs" / name
    cfg = load_config(TrainConfig, path)
    check_train_config(cfg)
    assert (cfg.dynamic_sampling_rule, cfg.dynamic_sampling_tau) == ("zero_variance", None)
    line = next(x for x in path.read_text(encoding="utf-8").splitlines() if x.startswith("dynamic_sampling_rule:"))
    assert "#" in line  # the reason, next to the choice


def test_every_shipped_tau_comes_with_the_paper_rule():
    with_tau = [
        p for p in (ROOT / "configs").rglob("*.yaml") if "dynamic_sampling_tau" in p.read_text(encoding="utf-8")
    ]
    assert with_tau and all("dynamic_sampling_rule: paper" in p.read_text(encoding="utf-8") for p in with_tau)


@pytest.mark.parametrize("name", ["scale/recap-8b.yaml", "scale/recap-8b-vllm-server.yaml"])
@pytest.mark.parametrize("corpus", [5000, sum(part.n for part in paper_parts())])  # the paper's 5K; the recipe's 4915
def test_scale_configs_train_one_epoch_of_the_papers_corpus(name, corpus):
    """App. C: one epoch. TRL's sampler serves whole rollout batches (prompts_per_step × updates_per_generation
    prompts; prompts_per_step is global) and drops the last partial one, so one epoch is the whole batches'
    updates: every prompt drawn at most once, fewer than one rollout batch left undrawn."""
    cfg = load_config(TrainConfig, ROOT / "configs" / name)
    batch = cfg.prompts_per_step * cfg.updates_per_generation
    assert (cfg.prompts_per_step, cfg.updates_per_generation) == (32, 16)  # DAPO's 512-prompt batch, 16 updates
    assert cfg.max_steps == (corpus // batch) * cfg.updates_per_generation == 144
    assert cfg.max_steps * cfg.prompts_per_step <= corpus < cfg.max_steps * cfg.prompts_per_step + batch


def test_rl_and_sft_trainer_arguments_share_seeds_saving_and_logging(tmp_path):
    """GRPOConfig (RL) and SFTConfig (warm start) take the same TrainingArguments from the shared fields of
    TrainConfig and SFTTrainConfig — seeds, learning rate, where and how often to save and log, device — and
    keep the last two checkpoints, which resume needs."""
    from recap.train.build import grpo_config
    from recap.train.sft import SFTTrainConfig, sft_args

    shared = dict(seed=7, learning_rate=3e-5, lr_scheduler_type="linear", logging_steps=3, save_steps=11, use_cpu=True)
    rl = grpo_config(
        TrainConfig(model="m", output_dir=str(tmp_path / "rl"), prompts_per_step=2, num_generations=4, **shared)
    )
    sft = sft_args(SFTTrainConfig(model="m", train_file="f", output_dir=str(tmp_path / "sft"), **shared))
    for args, out in ((rl, "rl"), (sft, "sft")):
        assert args.output_dir == str(tmp_path / out)
        assert (args.seed, args.data_seed, args.learning_rate) == (7, 7, 3e-5)
        assert (args.logging_steps, args.save_steps, args.save_total_limit) == (3, 11, 2)
        assert args.lr_scheduler_type == "linear" and args.use_cpu and args.disable_tqdm
        assert args.dataloader_num_workers == 0 and args.report_to == []


def test_activation_checkpointing_reaches_both_trainers_without_a_deprecation_warning(tmp_path):
    """``gradient_checkpointing: true`` turns recomputation on in GRPOConfig and SFTConfig under the field name
    the installed transformers uses, so a run no longer prints transformers' FutureWarning about the old name."""
    import warnings

    from recap.train.build import grpo_config
    from recap.train.sft import SFTTrainConfig, sft_args

    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*gradient_checkpointing.*deprecated", category=FutureWarning)
        on = dict(use_cpu=True, gradient_checkpointing=True)
        rl = grpo_config(TrainConfig(model="m", output_dir=str(tmp_path / "rl"), **on))
        sft = sft_args(SFTTrainConfig(model="m", train_file="f", output_dir=str(tmp_path / "sft"), **on))
        off = grpo_config(
            TrainConfig(model="m", output_dir=str(tmp_path / "off"), use_cpu=True, gradient_checkpointing=False)
        )
    assert rl.gradient_checkpointing and sft.gradient_checkpointing and not off.gradient_checkpointing


def test_self_reset_config_takes_the_reference_optimizer_and_defaults(tmp_path):
    """configs/self-reset.yaml: AdamW as the Self-ReSET launch script (weight decay 0.1, β2 0.98), handed to
    TRL; the cut stops at the first risky token and refusing benign prompts are not re-queued. TrainConfig's
    own defaults stay transformers' (0, 0.999), so other runs are unchanged."""
    from recap.train.build import grpo_config

    cfg = load_config(TrainConfig, ROOT / "configs" / "self-reset.yaml")
    assert (cfg.weight_decay, cfg.adam_beta2) == (0.1, 0.98)
    assert cfg.self_reset.extend_to_punctuation is False and cfg.self_reset.requeue_refusals is False
    # 4 epochs of 1,500 fresh prompts at 64 a step, re-rolls adding steps under a constant learning rate
    assert cfg.epochs == 4 and cfg.self_reset.reroll_steps == "add"
    on_cpu = with_epochs(replace(cfg, output_dir=str(tmp_path / "sr"), bf16=False, use_cpu=True), 1500)
    assert on_cpu.max_steps == 94
    assert cfg.lr_scheduler_type == "constant" and grpo_config(on_cpu).max_steps == 94 * (1 + 256 // 64)
    small = dict(model="m", prompts_per_step=2, num_generations=4, use_cpu=True)
    args = grpo_config(TrainConfig(output_dir=str(tmp_path / "a"), weight_decay=0.1, adam_beta2=0.98, **small))
    assert (args.weight_decay, args.adam_beta1, args.adam_beta2) == (0.1, 0.9, 0.98)
    plain = grpo_config(TrainConfig(output_dir=str(tmp_path / "b"), **small))
    assert (plain.weight_decay, plain.adam_beta2) == (0.0, 0.999)


def test_re_rolls_adding_steps_need_a_learning_rate_that_ignores_the_run_length(tmp_path):
    from recap.data.selfreset import SelfResetConfig

    base = dict(model="m", output_dir=str(tmp_path), lr_scheduler_type="linear")
    with pytest.raises(ValueError, match="lr_scheduler_type: constant"):
        check_train_config(TrainConfig(**base, self_reset=SelfResetConfig()))
    check_train_config(TrainConfig(**base, self_reset=SelfResetConfig(reroll_steps="displace")))
    check_train_config(
        TrainConfig(**{**base, "lr_scheduler_type": "constant_with_warmup"}, self_reset=SelfResetConfig())
    )


def test_the_toy_demo_self_reset_block_takes_the_reference_defaults():
    from recap.demo import DemoConfig

    cfg = load_config(DemoConfig, ROOT / "configs" / "toy" / "demo.yaml")
    assert cfg.self_reset.extend_to_punctuation is False and cfg.self_reset.requeue_refusals is False
    assert cfg.self_reset.judge == "auto" and cfg.self_reset.reroll_steps == "add"


def test_self_reset_rewards_and_cut_judge_are_the_qwen3guard_configs():
    """Self-ReSET's rewards (rm_hub/safety_rm.py): Qwen3Guard-Gen, harmful 1 only for "Safe" (controversial
    counts as unsafe), benign 1 for "Safe" and not refused; the cut judge is Qwen3Guard-Stream."""
    from recap.data.selfreset import StreamGuardConfig
    from recap.rewards.judges import BinaryJudge, Verdict

    cfg = load_config(TrainConfig, ROOT / "configs" / "self-reset.yaml")
    spec = "binary:guard:configs/judges/qwen3guard-gen.yaml"
    assert (cfg.judges["harmful"], cfg.judges["benign"]) == (spec, spec)
    gen = load_config(GuardConfig, ROOT / "configs" / "judges" / "qwen3guard-gen.yaml")
    assert gen.model == "Qwen/Qwen3Guard-Gen-8B" and gen.prefix_after_generation_prompt == "Safety:"
    assert gen.safe_tokens == [" Safe"] and gen.unsafe_tokens == [" Unsafe", " Controversial"]
    assert gen.kinds == ["harmful", "benign"] and gen.template_kwargs == {}
    stream = load_config(StreamGuardConfig, ROOT / "configs" / "judges" / "qwen3guard-stream.yaml")
    assert stream == cfg.self_reset.stream_guard and stream.model == "Qwen/Qwen3Guard-Stream-8B"
    assert cfg.self_reset.risky == ["unsafe", "controversial"]

    class Fixed:  # what the guard judge returns: P(safe) with safe = P ≥ 0.5, refused from the string rules
        name = "guard"

        def judge(self, items):
            return [
                Verdict(0.9, "safe", safe=True, refused=False),
                Verdict(0.2, "unsafe", safe=False, refused=False),
                Verdict(0.9, "safe", safe=True, refused=False),
                Verdict(0.9, "safe", safe=True, refused=True),
                Verdict(0.2, "unsafe", safe=False, refused=False),
            ][: len(items)]

    items = [JudgeItem("h", "a", "harmful")] * 2 + [JudgeItem("b", "a", "benign")] * 3
    assert [v.score for v in BinaryJudge(Fixed()).judge(items)] == [1.0, 0.0, 1.0, 0.0, 0.0]
