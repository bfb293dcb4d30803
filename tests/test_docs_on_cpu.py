"""The documentation that is generated from code stays in step with it."""

import sys
from pathlib import Path


from recap.util.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    sys.path.insert(0, str(ROOT / "scripts"))
    from config_reference import config_reference

    assert (ROOT / "docs" / "configs.md").read_text(encoding="utf-8") == config_reference(), (
        "docs/configs.md is stale: run `python scripts/config_reference.py > docs/configs.md`"
    )


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
