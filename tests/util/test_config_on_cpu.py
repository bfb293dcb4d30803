"""YAML configs into typed dataclasses (recap/util/config.py), using the evaluation config that nests sampling."""

from dataclasses import dataclass, field

import pytest

from recap.data.mixture import MixtureConfig
from recap.eval.runner import EvalConfig
from recap.inference.generation import SamplingConfig
from recap.util.config import ConfigError, describe, from_dict, load_config, to_dict


def _yaml(tmp_path, text, name="eval.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file():
    cfg = load_config(EvalConfig)
    assert cfg == EvalConfig()
    assert isinstance(cfg.sampling, SamplingConfig)


def test_nested_yaml(tmp_path):
    path = _yaml(
        tmp_path,
        "attacks: [clean, ipr]\nprefill_words: 100-700\nipr_rounds: 2\n"
        "sampling:\n  temperature: 0\n  max_new_tokens: 128\nseed: 5\n",
    )
    cfg = load_config(EvalConfig, path)
    assert cfg.attacks == ["clean", "ipr"]
    assert cfg.prefill_words == "100-700"
    assert cfg.ipr_rounds == 2 and cfg.seed == 5
    assert cfg.sampling == SamplingConfig(temperature=0.0, max_new_tokens=128)
    assert isinstance(cfg.sampling.temperature, float)  # an int where a float is expected becomes a float
    assert cfg.samples_per_prompt == 1  # untouched fields keep their defaults


@pytest.mark.parametrize("value, expected", [("500", 500), ("[100, 300]", [100, 300]), ("'3-9'", "3-9")])
def test_union_field(tmp_path, value, expected):
    cfg = load_config(EvalConfig, _yaml(tmp_path, f"prefill_words: {value}\n"))
    assert cfg.prefill_words == expected


def test_overrides(tmp_path):
    path = _yaml(tmp_path, "sampling:\n  temperature: 0.7\nipr_rounds: 2\n")
    cfg = load_config(
        EvalConfig,
        path,
        [
            "sampling.temperature=0",
            "sampling.batch_size = 8",
            "ipr_rounds=3",
            "attacks=[clean]",
            "prefill_words=100-700",
        ],
    )
    assert cfg.sampling.temperature == 0.0 and cfg.sampling.batch_size == 8
    assert cfg.sampling.max_new_tokens == SamplingConfig().max_new_tokens
    assert cfg.ipr_rounds == 3 and cfg.attacks == ["clean"] and cfg.prefill_words == "100-700"
    # overrides on defaults create the nested mapping
    cfg = load_config(EvalConfig, None, ["sampling.top_p=0.9"])
    assert cfg.sampling.top_p == 0.9 and cfg.sampling.temperature == 1.0
    # value containing '=' is kept whole
    cfg = load_config(MixtureConfig, None, ["prefill_words=a=b"])
    assert cfg.prefill_words == "a=b"


def test_override_without_equals(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(EvalConfig, None, ["sampling.temperature"])


def test_unknown_field_names_file_and_field(tmp_path):
    path = _yaml(tmp_path, "ipr_rounds: 2\nipr_round: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "unknown field 'ipr_round'" in msg and "ipr_rounds" in msg
    path = _yaml(tmp_path, "sampling:\n  temprature: 0.5\n", "nested.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "field 'sampling'" in msg and "unknown field 'temprature'" in msg
    with pytest.raises(ConfigError, match=r"^--set sampling.nope=1: unknown field 'sampling.nope'"):
        load_config(EvalConfig, None, ["sampling.nope=1"])


@pytest.mark.parametrize(
    "yaml_text, field_name",
    [
        ("ipr_rounds: three\n", "ipr_rounds"),
        ("ipr_rounds: 2.5\n", "ipr_rounds"),
        ("ipr_rounds: true\n", "ipr_rounds"),
        ("seed: null\n", "seed"),
        ("attacks: clean\n", "attacks"),
        ("attacks: [clean, 3]\n", "attacks"),
        ("prefill_words: true\n", "prefill_words"),
        ("prefill_words: {min: 1, max: 2}\n", "prefill_words"),
        ("sampling: 3\n", "sampling"),
        ("sampling:\n  temperature: hot\n", "temperature"),
        ("sampling:\n  temperature: false\n", "temperature"),
    ],
)
def test_wrong_type_names_file_and_field(tmp_path, yaml_text, field_name):
    path = _yaml(tmp_path, yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and f"field '{field_name}'" in msg


def test_invalid_yaml_names_file_and_line(tmp_path):
    path = _yaml(tmp_path, "seed: 1\nsampling: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:") and "not valid YAML" in msg


def test_missing_file_and_non_mapping(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(EvalConfig, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="top level"):
        load_config(EvalConfig, _yaml(tmp_path, "- a\n- b\n"))
    assert load_config(EvalConfig, _yaml(tmp_path, "# only a comment\n", "empty.yaml")) == EvalConfig()


def test_dataclass_validation_still_runs(tmp_path):
    with pytest.raises(ValueError, match="unknown attack"):
        load_config(EvalConfig, _yaml(tmp_path, "attacks: [clean, jailbreak]\n"))


def test_from_dict_to_dict_round_trip():
    cfg = EvalConfig(attacks=["clean"], prefill_words=[5, 6], sampling=SamplingConfig(top_p=0.5), seed=2)
    data = to_dict(cfg)
    assert data["sampling"] == {
        "temperature": 1.0,
        "top_p": 0.5,
        "max_new_tokens": 64,
        "batch_size": 64,
        "reuse_prefix": True,
        "decoder": "continuous",
    }
    assert from_dict(EvalConfig, data) == cfg


@dataclass
class _Opt:
    name: str | None = None
    ratio: float = field(default=0.5, metadata={"help": "a ratio"})
    tags: dict[str, int] = field(default_factory=dict)


def test_optional_and_dict_fields_and_describe():
    assert from_dict(_Opt, {"name": None, "tags": {"a": 1}}) == _Opt(None, 0.5, {"a": 1})
    with pytest.raises(ConfigError, match="field 'tags'"):
        from_dict(_Opt, {"tags": [1]})
    with pytest.raises(ConfigError, match="field 'name'"):
        from_dict(_Opt, {"name": 3})
    rows = {r[0]: r for r in describe(_Opt)}
    assert rows["ratio"] == ("ratio", "0.5", "a ratio")
    assert rows["tags"][1] == "{}"


def test_override_through_scalar_field_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"--set seed.x=1: 'seed' is not a section"):
        load_config(EvalConfig, None, ["seed.x=1"])
    path = _yaml(tmp_path, "seed: 5\n")
    with pytest.raises(ConfigError, match=r"--set seed.x=1: 'seed' is not a section"):
        load_config(EvalConfig, path, ["seed.x=1"])


def test_override_typos_name_the_override_and_the_closest_field(tmp_path):
    path = _yaml(tmp_path, "seed: 5\n")
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path, ["sampling.temprature=0"])
    msg = str(info.value)
    assert (
        msg.startswith("--set sampling.temprature=0: unknown field 'sampling.temprature' (did you mean 'temperature'?)")
        and "defaults" not in msg
    )


def test_overrides_reach_list_items(tmp_path):
    from recap.eval.suite import SuiteConfig

    path = _yaml(
        tmp_path, "benchmarks:\n  - {name: sr, path: a.csv, limit: 50}\n  - {name: xs, path: b.csv}\n", "suite.yaml"
    )
    cfg = load_config(SuiteConfig, path, ["benchmarks.1.limit=20", "benchmarks.0.attacks=[clean, prefill]"])
    assert [b.limit for b in cfg.benchmarks] == [50, 20]
    assert cfg.benchmarks[0].attacks == ["clean", "prefill"] and cfg.benchmarks[1].attacks == ["clean"]
    with pytest.raises(ConfigError, match=r"--set benchmarks.2.limit=5: 'benchmarks.2': no item 2 \(the list has 2"):
        load_config(SuiteConfig, path, ["benchmarks.2.limit=5"])
    with pytest.raises(ConfigError, match=r"unknown field 'benchmarks.0.limt' \(did you mean 'limit'\?\)"):
        load_config(SuiteConfig, path, ["benchmarks.0.limt=5"])
    # a list that only has its default (no file) is reachable too
    cfg = load_config(EvalConfig, None, ["sweep_lengths.1=150"])
    assert cfg.sweep_lengths == [50, 150, 200, 500]


def test_overrides_apply_on_top_of_a_preset_and_into_optional_sections():
    from recap.train import TrainConfig

    preset = {"max_steps": 7, "prefill_sources": {"weights": {"static": 1.0}}}
    cfg = load_config(
        TrainConfig, None, ["prefill_sources.weights.on_policy=0.5", "prefill_length.kind=fixed"], defaults=preset
    )
    assert cfg.max_steps == 7 and cfg.prefill_sources.weights == {"static": 1.0, "on_policy": 0.5}
    assert cfg.prefill_length is not None and cfg.prefill_length.kind == "fixed"


def test_a_float_written_without_a_dot_is_a_float():
    """YAML 1.1 reads ``2e-3`` as text; a float field takes it as the number it means."""
    from recap.train import TrainConfig

    assert load_config(TrainConfig, None, ["learning_rate=2e-3"]).learning_rate == 0.002
    with pytest.raises(ConfigError, match="learning_rate"):
        load_config(TrainConfig, None, ["learning_rate=fast"])


def test_a_choice_of_on_off_takes_yamls_bare_on_and_off(tmp_path):
    """YAML 1.1 reads an unquoted ``off`` as ``False``: a field whose choices are on / off / … takes it as
    written, in a file and in an override; anything outside the choices names the field and the choices."""
    from recap.train import TrainConfig

    assert load_config(TrainConfig, _yaml(tmp_path, "shared_prefix: off\n", "train.yaml")).shared_prefix == "off"
    assert load_config(TrainConfig, None, ["shared_prefix=on"]).shared_prefix == "on"
    assert load_config(TrainConfig, None, ["shared_prefix='off'"]).shared_prefix == "off"
    path = _yaml(tmp_path, "shared_prefix: sometimes\n", "bad.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(TrainConfig, path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "field 'shared_prefix'" in msg and "one of auto, on, off" in msg
    with pytest.raises(ConfigError, match="one of auto, on, off, got 1"):
        load_config(TrainConfig, None, ["shared_prefix=1"])
