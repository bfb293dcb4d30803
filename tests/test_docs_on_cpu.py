"""The documentation that is generated from code stays in step with it."""

from pathlib import Path

import yaml

from recap.config import config_reference, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_current():
    assert (ROOT / "docs" / "configs.md").read_text(encoding="utf-8") == config_reference(), (
        "docs/configs.md is stale: run `python -m recap.config > docs/configs.md`")


def test_shipped_configs_load():
    from recap.data.mixture import MixtureConfig
    from recap.demo import DemoConfig
    from recap.eval.runner import EvalConfig
    from recap.train import TrainConfig

    classes = {"mixture.yaml": MixtureConfig, "train.yaml": TrainConfig, "eval.yaml": EvalConfig,
               "demo.yaml": DemoConfig, "recap-dapo.yaml": TrainConfig}
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    assert {f.name for f in files} == set(classes)
    for f in files:
        cfg = load_config(classes[f.name], f)
        assert yaml.safe_load(f.read_text())  # not empty


def test_demo_yaml_spells_out_the_demo_defaults():
    from dataclasses import asdict

    from recap.demo import DemoConfig

    assert asdict(load_config(DemoConfig, ROOT / "configs" / "toy" / "demo.yaml")) == asdict(DemoConfig())
