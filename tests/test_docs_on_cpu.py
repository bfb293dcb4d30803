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
    from recap.data.prefills import PrefillConfig
    from recap.demo import DemoConfig
    from recap.eval.runner import EvalConfig
    from recap.eval.suite import SuiteConfig
    from recap.rewards.rubric import RubricConfig
    from recap.train import TrainConfig

    classes = {"toy/mixture.yaml": MixtureConfig, "toy/train.yaml": TrainConfig, "toy/eval.yaml": EvalConfig,
               "toy/demo.yaml": DemoConfig, "recap-dapo.yaml": TrainConfig,
               "smollm2/prefills.yaml": PrefillConfig, "smollm2/mixture.yaml": MixtureConfig,
               "smollm2/eval.yaml": SuiteConfig, "smollm2/eval-full.yaml": SuiteConfig,
               "smollm2/train.yaml": TrainConfig,
               "judges/strongreject-rubric.yaml": RubricConfig, "judges/overrefusal-rubric.yaml": RubricConfig}
    files = sorted((ROOT / "configs").rglob("*.yaml"))
    names = {f.relative_to(ROOT / "configs").as_posix(): f for f in files}
    assert set(names) == set(classes)
    for name, f in names.items():
        cfg = load_config(classes[name], f)
        assert yaml.safe_load(f.read_text())  # not empty


def test_demo_yaml_spells_out_the_demo_defaults():
    from dataclasses import asdict

    from recap.demo import DemoConfig

    assert asdict(load_config(DemoConfig, ROOT / "configs" / "toy" / "demo.yaml")) == asdict(DemoConfig())
