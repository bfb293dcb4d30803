"""The documentation that is generated from code stays in step with it."""

import sys
from pathlib import Path

import yaml

from recap.util.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    sys.path.insert(0, str(ROOT / "scripts"))
    from config_reference import config_reference

    assert (ROOT / "docs" / "configs.md").read_text(encoding="utf-8") == config_reference(), (
        "docs/configs.md is stale: run `python scripts/config_reference.py > docs/configs.md`"
    )


def test_shipped_configs_load():
    from recap.data.mixture import MixtureConfig
    from recap.data.prefills import PrefillConfig
    from recap.data.recipe import RecipeConfig
    from recap.data.selfreset import StreamGuardConfig  # (self-reset.yaml is a TrainConfig with its section)
    from recap.demo import DemoConfig
    from recap.eval.runner import EvalConfig
    from recap.eval.suite import SuiteConfig
    from recap.rewards.guard import GuardConfig
    from recap.rewards.rubric import RubricConfig
    from recap.train import TrainConfig
    from recap.train.sft import DistillConfig, SFTTrainConfig
    from recap.train.verify import VerifyDataConfig

    from recap.experiment import ExperimentConfig

    classes = {
        "toy/mixture.yaml": MixtureConfig,
        "toy/train.yaml": TrainConfig,
        "toy/eval.yaml": EvalConfig,
        "toy/demo.yaml": DemoConfig,
        "recap-dapo.yaml": TrainConfig,
        "smollm2/prefills.yaml": PrefillConfig,
        "smollm2/mixture.yaml": MixtureConfig,
        "smollm2/eval.yaml": SuiteConfig,
        "smollm2/eval-full.yaml": SuiteConfig,
        "smollm2/train.yaml": TrainConfig,
        "scale/recap-8b.yaml": TrainConfig,
        "scale/recap-8b-vllm-server.yaml": TrainConfig,
        "judges/strongreject-rubric.yaml": RubricConfig,
        "judges/overrefusal-rubric.yaml": RubricConfig,
        "judges/guard.yaml": GuardConfig,
        "judges/qwen3guard-gen.yaml": GuardConfig,
        "judges/qwen3guard-stream.yaml": StreamGuardConfig,
        "recap-mixed-curriculum.yaml": TrainConfig,
        "recipe/paper.yaml": RecipeConfig,
        "recipe/cpu.yaml": RecipeConfig,
        "recipe/paper-prefills.yaml": PrefillConfig,
        "judges/reflection-rubric.yaml": RubricConfig,
        "self-reset.yaml": TrainConfig,
        "verify.yaml": SFTTrainConfig,
        "verify-data.yaml": VerifyDataConfig,
        "smollm2/distill.yaml": DistillConfig,
        "smollm2/sft.yaml": SFTTrainConfig,
        "smollm2/rl.yaml": TrainConfig,
        "smollm2/eval-effect.yaml": SuiteConfig,
        "smollm2/experiment.yaml": ExperimentConfig,
    }
    files = sorted(f for f in (ROOT / "configs").rglob("*.yaml") if f.parent.name != "accelerate")
    names = {f.relative_to(ROOT / "configs").as_posix(): f for f in files}
    assert set(names) == set(classes)
    for name, f in names.items():
        load_config(classes[name], f)
        assert yaml.safe_load(f.read_text())  # not empty


def test_demo_yaml_spells_out_the_demo_defaults():
    from dataclasses import asdict

    from recap.demo import DemoConfig

    assert asdict(load_config(DemoConfig, ROOT / "configs" / "toy" / "demo.yaml")) == asdict(DemoConfig())


def test_accelerate_launch_configs_load_and_match_the_train_configs():
    """The launch configs are valid for `accelerate launch`, in bf16 like the training configs they launch."""
    from accelerate.commands.config.config_args import load_config_from_file

    from recap.train import TrainConfig, vllm_mode

    kinds = {}
    for f in sorted((ROOT / "configs" / "accelerate").glob("*.yaml")):
        c = load_config_from_file(str(f))
        assert c.mixed_precision == "bf16" and not c.use_cpu
        kinds[f.stem] = str(c.distributed_type).split(".")[-1]
        if f.stem == "zero3":
            assert c.deepspeed_config["zero_stage"] == 3
    assert kinds == {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}
    for name, mode in (("recap-8b", "colocate"), ("recap-8b-vllm-server", "server")):
        cfg = load_config(TrainConfig, ROOT / "configs" / "scale" / f"{name}.yaml")
        assert (cfg.num_generations, cfg.epsilon, cfg.epsilon_high, cfg.max_completion_length) == (16, 0.2, 0.28, 8000)
        assert cfg.bf16 and cfg.vllm == mode and vllm_mode(cfg) == mode and cfg.report_to == "none"
