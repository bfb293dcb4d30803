"""YAML configs into typed dataclasses (recap/util/config.py), using the evaluation config that nests sampling."""

from dataclasses import dataclass, field

import pytest
import yaml
from conftest import in_ci

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
        msg.startswith(
            "--set sampling.temprature=0: unknown field 'sampling.temprature' (did you mean 'sampling.temperature'?)"
        )
        and "defaults" not in msg
    )


def test_a_typo_in_a_section_suggests_the_fields_of_that_section(tmp_path):
    """``rl.stpes`` means one of rl's ``*_steps``, not the ``dtype`` that plain difflib finds closest; only a
    name close to nothing in its section is looked for elsewhere in the config (issue 35)."""
    from recap.demo import DemoConfig

    with pytest.raises(ConfigError) as info:
        load_config(DemoConfig, None, ["rl.stpes=3"])
    assert str(info.value).startswith(
        "--set rl.stpes=3: unknown field 'rl.stpes' "
        "(did you mean 'rl.max_steps', 'rl.save_steps' or 'rl.logging_steps'?); known in this section: "
    ), str(info.value)
    with pytest.raises(
        ConfigError, match=r"^--set max_stpes=3: unknown field 'max_stpes' \(did you mean 'max_steps'\?\)"
    ):
        load_config(_train_cls(), None, ["max_stpes=3"])
    with pytest.raises(
        ConfigError, match=r"unknown field 'temprature' \(did you mean 'eval.sampling.temperature', 'rl"
    ):
        load_config(DemoConfig, None, ["temprature=1"])  # no such field at the top: those of the sections
    path = _yaml(tmp_path, "seeds: 1\nrl:\n  stpes: 3\n", "demo.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(DemoConfig, path)
    assert str(info.value).startswith(
        f"{path}:3: field 'rl': unknown field 'stpes' (did you mean 'max_steps', 'save_steps' or 'logging_steps'? "
    ), str(info.value)


def test_a_wrong_key_in_a_file_names_its_line_and_an_override_names_the_override(tmp_path):
    from recap.eval.suite import SuiteConfig

    path = _yaml(tmp_path, "model: m\ntrain_file: f\n\n# the rate\nlearning_rat: 0.1\n", "train.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(_train_cls(), path)
    assert str(info.value).startswith(f"{path}:5: unknown field 'learning_rat' (did you mean 'learning_rate'? ")
    path = _yaml(tmp_path, "seed: 1\nsampling:\n  temperature: 1\n  top_p: .nan\n", "eval.yaml")
    message = "field 'sampling': field 'top_p': must be a number in (0, 1], got nan"
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path)
    assert str(info.value) == f"{path}:4: {message}"  # the nested key's own line
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path, ["seed=2"])  # an override elsewhere leaves the file's line
    assert str(info.value) == f"{path}:4: {message}"
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path, ["sampling.top_p=nan"])  # the override, not the line it replaced
    assert str(info.value) == f"--set sampling.top_p=nan: {message}"
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path, ["sampling={top_p: 2}"])
    assert str(info.value) == "--set sampling={top_p: 2}: field 'sampling': field 'top_p': must be in (0, 1], got 2.0"
    path = _yaml(tmp_path, "seed: 1\nsampling:\n  temperature: hot\n", "eval.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path)
    assert str(info.value) == f"{path}:3: field 'sampling': field 'temperature': expected float, got 'hot'"
    path = _yaml(tmp_path, "benchmarks:\n  - {name: sr, path: a.csv}\n  - name: xs\n    path: b.csv\n    limit: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(SuiteConfig, path)
    assert str(info.value) == f"{path}:5: field 'benchmarks'[1]: field 'limit': must be ≥ 1, got 0"
    path = _yaml(tmp_path, "seed: 1\nsweep_lengths:\n  - 50\n  - 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path)
    assert str(info.value) == f"{path}:4: field 'sweep_lengths'[1]: must be ≥ 1, got 0"
    assert load_config(EvalConfig, _yaml(tmp_path, "seed: &s 4\nipr_rounds: *s\n")).ipr_rounds == 4  # aliases


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
    with pytest.raises(ConfigError, match=r"unknown field 'benchmarks.0.limt' \(did you mean 'benchmarks.0.limit'\?\)"):
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


# --- numbers are range-checked as the config loads (issue 36) ---------------------------------------


def _train_cls():
    from recap.train import TrainConfig

    return TrainConfig


RANGE_CASES = [  # (config class, YAML on one line, the message after "<file>:1: ")
    (_train_cls, "max_steps: -1\n", "field 'max_steps': must be ≥ 1, got -1"),
    (_train_cls, "max_steps: 0\n", "field 'max_steps': must be ≥ 1, got 0"),
    (_train_cls, "learning_rate: .inf\n", "field 'learning_rate': must be a finite number > 0, got inf"),
    (_train_cls, "learning_rate: 0\n", "field 'learning_rate': must be > 0, got 0.0"),
    (_train_cls, "prompts_per_step: 0\n", "field 'prompts_per_step': must be ≥ 1, got 0"),
    (_train_cls, "num_generations: 0\n", "field 'num_generations': must be ≥ 2, got 0"),
    (_train_cls, "num_generations: 1\n", "field 'num_generations': must be ≥ 2, got 1"),
    (_train_cls, "seed: -3\n", "field 'seed': must be in [0, 4294967295], got -3"),
    (
        _train_cls,
        "prefill_sources: {weights: {static: .nan}}\n",
        "field 'prefill_sources': field 'weights'['static']: must be a number ≥ 0, got nan",
    ),
    (lambda: EvalConfig, "samples_per_prompt: 0\n", "field 'samples_per_prompt': must be ≥ 1, got 0"),
    (lambda: EvalConfig, "sweep_lengths: [50, 0]\n", "field 'sweep_lengths'[1]: must be ≥ 1, got 0"),
    (lambda: EvalConfig, "prefill_words: [5, -5]\n", "field 'prefill_words'[1]: must be ≥ 1, got -5"),
    (
        lambda: EvalConfig,
        "sampling: {max_new_tokens: 0}\n",
        "field 'sampling': field 'max_new_tokens': must be ≥ 1, got 0",
    ),
    (lambda: EvalConfig, "sampling: {batch_size: -2}\n", "field 'sampling': field 'batch_size': must be ≥ 1, got -2"),
    (
        lambda: EvalConfig,
        "sampling: {top_p: .nan}\n",
        "field 'sampling': field 'top_p': must be a number in (0, 1], got nan",
    ),
    (lambda: EvalConfig, "sampling: {top_p: 0}\n", "field 'sampling': field 'top_p': must be in (0, 1], got 0.0"),
    (lambda: EvalConfig, "sampling: {temperature: -.inf}\n", "field 'sampling': field 'temperature': must be a finite"),
]


@pytest.mark.parametrize("cls, text, message", RANGE_CASES)
def test_a_number_out_of_range_in_a_file_names_the_file_and_the_field(tmp_path, cls, text, message):
    path = _yaml(tmp_path, text, "config.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(cls(), path)
    assert str(info.value).startswith(f"{path}:1: {message}"), str(info.value)


@pytest.mark.parametrize(
    "cls, override, message",
    [
        (_train_cls, "max_steps=-1", "field 'max_steps': must be ≥ 1, got -1"),
        (_train_cls, "learning_rate=inf", "field 'learning_rate': must be a finite number > 0, got inf"),
        (_train_cls, "num_generations=0", "field 'num_generations': must be ≥ 2, got 0"),
        (_train_cls, "prefill_sources.weights.on_policy=-1", "field 'weights'['on_policy']: must be ≥ 0, got -1.0"),
        (lambda: EvalConfig, "sampling.top_p=nan", "field 'top_p': must be a number in (0, 1], got nan"),
        (lambda: EvalConfig, "sampling.top_p=1.5", "field 'top_p': must be in (0, 1], got 1.5"),
        (lambda: EvalConfig, "samples_per_prompt=0", "field 'samples_per_prompt': must be ≥ 1, got 0"),
        (lambda: EvalConfig, "adaptive_lengths.0=0", "field 'adaptive_lengths'[0]: must be ≥ 1, got 0"),
    ],
)
def test_a_number_out_of_range_in_an_override_names_the_field(tmp_path, cls, override, message):
    path = _yaml(tmp_path, "seed: 1\n", "config.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(cls(), path, [override])
    msg = str(info.value)
    assert msg.startswith(f"--set {override}: ") and message in msg, msg


def test_bounds_and_documented_zeros_are_accepted(tmp_path):
    from recap.train.sft import SFTTrainConfig

    cfg = load_config(EvalConfig, None, ["sampling.top_p=1", "sampling.temperature=0", "samples_per_prompt=1"])
    assert cfg.sampling.top_p == 1.0 and cfg.sampling.temperature == 0.0
    cfg = load_config(_train_cls(), None, ["max_steps=1", "num_generations=2", "max_total_length=0", "seed=4294967295"])
    assert cfg.max_steps == 1 and cfg.seed == 2**32 - 1
    assert load_config(SFTTrainConfig, None, ["max_steps=0"]).max_steps == 0  # 0: run `epochs` passes
    with pytest.raises(ConfigError, match=r"field 'max_steps': must be ≥ 0, got -1"):
        load_config(SFTTrainConfig, None, ["max_steps=-1"])
    with pytest.raises(ConfigError, match=r"field 'batch_size': must be ≥ 1, got -2"):
        load_config(SFTTrainConfig, _yaml(tmp_path, "batch_size: -2\n", "sft.yaml"))


@dataclass
class _Ranged:
    ratio: float = field(default=0.5, metadata={"help": "a ratio", "range": "[0, 1]"})
    budget: float = field(default=1.0, metadata={"help": "inf: no limit", "range": "(0, inf]"})
    count: int | None = field(default=None, metadata={"help": "a count", "range": "[1, 10)"})
    weights: dict[str, float] = field(default_factory=dict, metadata={"help": "weights", "range": "[0, inf)"})


def test_ranges_of_list_items_mapping_values_and_infinity():
    assert from_dict(_Ranged, {"budget": float("inf"), "count": 9, "weights": {"a": 2}}).weights == {"a": 2.0}
    assert from_dict(_Ranged, {"count": None}).count is None
    for data, message in [
        ({"ratio": 1.5}, "config: field 'ratio': must be in [0, 1], got 1.5"),
        ({"ratio": float("nan")}, "config: field 'ratio': must be a number in [0, 1], got nan"),
        ({"budget": 0}, "config: field 'budget': must be > 0 (inf allowed), got 0.0"),
        ({"budget": float("nan")}, "config: field 'budget': must be a number > 0 (inf allowed), got nan"),
        ({"count": 10}, "config: field 'count': must be in [1, 10), got 10"),
        ({"weights": {"a": -1}}, "config: field 'weights'['a']: must be ≥ 0, got -1.0"),
        ({"weights": {"a": "x"}}, "config: field 'weights'['a']: expected float, got 'x'"),
    ]:
        with pytest.raises(ConfigError) as info:
            from_dict(_Ranged, data)
        assert str(info.value) == message
    # a numeric field that declares no range still takes no NaN or infinity
    with pytest.raises(ConfigError, match=r"field 'ratio': must be a number, got nan"):
        from_dict(_Opt, {"ratio": "nan"})  # YAML reads a bare nan as text
    with pytest.raises(ConfigError, match=r"field 'ratio': must be a finite number, got -inf"):
        from_dict(_Opt, {"ratio": float("-inf")})
    assert dict((r[0], r[2]) for r in describe(_Ranged))["ratio"] == "a ratio Range: [0, 1]."


def test_range_specs_and_built_configs():
    from recap.util.config import check_ranges, parse_range

    assert str(parse_range("[1, inf)")) == "≥ 1" and str(parse_range("(-inf, inf)")) == "finite"
    for bad in ("1..2", "[2, 1]", "[a, 1)", "(0; 1]"):
        with pytest.raises(ValueError, match="range"):
            parse_range(bad)
    with pytest.raises(ConfigError, match=r"^config: field 'sampling': field 'top_p': must be a number in \(0, 1\]"):
        check_ranges(EvalConfig(sampling=SamplingConfig(top_p=float("nan"))))
    from recap.train import TrainConfig, check_train_config

    with pytest.raises(ValueError, match=r"TrainConfig: field 'max_steps': must be ≥ 1, got -1"):
        check_train_config(TrainConfig(max_steps=-1))


def _config_classes():
    """Every dataclass in recap whose fields carry help: the configs."""
    import dataclasses
    import importlib
    import inspect
    import pkgutil

    import recap

    found = {}
    for info in pkgutil.walk_packages(recap.__path__, "recap."):
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as e:
            # a module of an optional extra (recap.eval.inspect_tasks needs `[inspect]`): CI installs every
            # extra and walks it; a machine with only the README's installs walks the rest
            if in_ci() or "pip install 'recap-align[" not in str(e):
                raise
            continue
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == module.__name__
                and any("help" in f.metadata for f in dataclasses.fields(obj))
            ):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return found


def test_every_numeric_config_field_declares_its_range():
    """A new int or float field (or a list / mapping of them) without ``metadata["range"]`` fails here."""
    import dataclasses
    import typing

    from recap.util.config import check_ranges, field_range, numeric_type

    classes = _config_classes()
    assert {"recap.train.config.TrainConfig", "recap.inference.generation.SamplingConfig"} <= set(classes)
    missing = []
    for name, cls in classes.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            rng = field_range(f)  # a malformed spec raises here
            if numeric_type(hints[f.name]) and rng is None:
                missing.append(f"{name}.{f.name}")
        try:
            default = cls()
        except TypeError:  # required fields (BenchmarkSpec)
            continue
        check_ranges(default, name)  # the defaults lie in their own ranges
    assert not missing, f"numeric fields without a declared range: {missing}"


SHIPPED = {  # config file -> its class (module, name)
    "eval/paper.yaml": ("recap.eval.suite", "SuiteConfig"),
    "judges/overrefusal-paper.yaml": ("recap.rewards.rubric", "RubricConfig"),
    "judges/safety-rubric.yaml": ("recap.rewards.rubric", "RubricConfig"),
    "prefills/eval-r1-distill-qwen-1.5b.yaml": ("recap.data.prefills", "PrefillConfig"),
    "judges/guard.yaml": ("recap.rewards.guard", "GuardConfig"),
    "judges/overrefusal-rubric.yaml": ("recap.rewards.rubric", "RubricConfig"),
    "judges/qwen3guard-gen.yaml": ("recap.rewards.guard", "GuardConfig"),
    "judges/qwen3guard-stream.yaml": ("recap.data.selfreset", "StreamGuardConfig"),
    "judges/reflection-rubric.yaml": ("recap.rewards.rubric", "RubricConfig"),
    "judges/strongreject-rubric.yaml": ("recap.rewards.rubric", "RubricConfig"),
    "recap-dapo.yaml": ("recap.train", "TrainConfig"),
    "recap-mixed-curriculum.yaml": ("recap.train", "TrainConfig"),
    "recipe/cpu.yaml": ("recap.data.recipe", "RecipeConfig"),
    "recipe/paper.yaml": ("recap.data.recipe", "RecipeConfig"),
    "recipe/paper-prefills.yaml": ("recap.data.prefills", "PrefillConfig"),
    "scale/recap-8b.yaml": ("recap.train", "TrainConfig"),
    "scale/recap-8b-vllm-server.yaml": ("recap.train", "TrainConfig"),
    "self-reset.yaml": ("recap.train", "TrainConfig"),
    "smollm2/distill.yaml": ("recap.train.sft", "DistillConfig"),
    "smollm2/eval.yaml": ("recap.eval.suite", "SuiteConfig"),
    "smollm2/eval-effect.yaml": ("recap.eval.suite", "SuiteConfig"),
    "smollm2/eval-full.yaml": ("recap.eval.suite", "SuiteConfig"),
    "smollm2/experiment.yaml": ("recap.experiment", "ExperimentConfig"),
    "smollm2/mixture.yaml": ("recap.data.mixture", "MixtureConfig"),
    "smollm2/prefills.yaml": ("recap.data.prefills", "PrefillConfig"),
    "smollm2/rl.yaml": ("recap.train", "TrainConfig"),
    "smollm2/sft.yaml": ("recap.train.sft", "SFTTrainConfig"),
    "smollm2/train.yaml": ("recap.train", "TrainConfig"),
    "toy/demo.yaml": ("recap.demo", "DemoConfig"),
    "toy/eval.yaml": ("recap.eval.runner", "EvalConfig"),
    "toy/mixture.yaml": ("recap.data.mixture", "MixtureConfig"),
    "toy/train.yaml": ("recap.train", "TrainConfig"),
    "verify-data.yaml": ("recap.train.verify", "VerifyDataConfig"),
    "verify.yaml": ("recap.train.sft", "SFTTrainConfig"),
}


def test_every_shipped_config_loads_within_its_ranges():
    import importlib
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs"
    shipped = {str(p.relative_to(configs)) for p in configs.rglob("*.yaml") if p.parent.name != "accelerate"}
    assert shipped == set(SHIPPED), "add the new config file to SHIPPED"
    for name, (module, cls) in SHIPPED.items():
        load_config(getattr(importlib.import_module(module), cls), configs / name)
        assert yaml.safe_load((configs / name).read_text())  # not empty


@pytest.mark.parametrize(
    "data, line, message",
    [
        (
            b"seed: 1\nsampling:\n  temperature: 0.5  # caf\xe9\n",
            3,
            "not UTF-8 text (byte 0xe9 at byte 26 of the line)",
        ),
        (b"seed: 1\nattacks: [clean, \xc3]\n", 2, "not UTF-8 text (byte 0xc3 at byte 18 of the line)"),
        (b"seed: 1\n# caf\xc3", 2, "not UTF-8 text (byte 0xc3 at byte 6 of the line)"),  # a torn \xc3\xa9
    ],
)
def test_bytes_that_are_not_utf8_name_the_file_and_the_line(tmp_path, data, line, message):
    path = tmp_path / "eval.yaml"
    path.write_bytes(data)
    with pytest.raises(ConfigError) as info:
        load_config(EvalConfig, path)
    assert str(info.value) == f"{path}:{line}: {message}"
