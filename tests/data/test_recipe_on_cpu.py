"""The paper's data recipe (recap/data/recipe.py, `recap data recipe`): the corpus from local files (the
shared datasets) with provenance per row, the hub-then-local fallback (the hub stubbed: tests never use
the network), test splits refused by name and by content, evaluation prompts refused, and the optional
prefill and mixture steps."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from recap.cli import app
from recap.data.examples import DataError, read_examples
from recap.data.recipe import (
    RecipeConfig,
    RecipePart,
    RecipeSource,
    build_corpus,
    fingerprint,
    last_boxed,
    manifest_path,
    paper_parts,
    run_recipe,
)
from recap.util.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT / ".." / "shared" / "datasets"
needs_shared = pytest.mark.usefixtures("shared_datasets")  # skipped without ../shared, a failure in CI
BALANCED = str(SHARED / "training" / "balanced_safe_unsafe_3000.jsonl")
GSM8K_TRAIN = str(SHARED / "math" / "gsm8k_train.jsonl")
GSM8K_TEST = SHARED / "math" / "gsm8k_test.jsonl"


def _lines(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _local_cfg(**kw):
    parts = [
        RecipePart("harmful", "harmful", 40, [RecipeSource(path=BALANCED, format="chat-jsonl")]),
        RecipePart("benign", "benign", 30, [RecipeSource(path=BALANCED, format="chat-jsonl")]),
        RecipePart("gsm8k", "task", 50, [RecipeSource(path=GSM8K_TRAIN, format="gsm8k")]),
    ]
    return RecipeConfig(parts=parts, offline=True, **kw)


@needs_shared
def test_cpu_config_builds_the_papers_corpus_shape_from_local_files(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the config's paths are relative to the project root
    cfg = load_config(RecipeConfig, ROOT / "configs" / "recipe" / "cpu.yaml")
    manifest = run_recipe(cfg, tmp_path / "corpus.jsonl")
    corpus = read_examples(tmp_path / "corpus.jsonl")
    assert manifest["kinds"] == {"harmful": 1000, "benign": 1000, "task": 3000} and len(corpus) == 5000
    assert json.loads(manifest_path(tmp_path / "corpus.jsonl").read_text())["kinds"] == manifest["kinds"]
    assert all(e.prefill is None and e.counter_reasoning is None for e in corpus)  # `recap data prefill` fills them
    sources = {"balanced": _lines(BALANCED), "gsm8k": _lines(GSM8K_TRAIN)}
    for e in corpus[::97]:  # provenance names the file, the split and the row the prompt came from
        prov = json.loads(e.source)
        assert prov["split"] == "train" and e.id == f"{prov['part']}-{prov['row']:05d}"
        row = sources["gsm8k" if "gsm8k" in prov["dataset"] else "balanced"][prov["row"] - 1]
        if e.kind == "task":
            assert e.prompt == row["question"] and e.reference == row["answer"].rsplit("####", 1)[1].strip().replace(
                ",", ""
            )
        else:
            assert e.messages() == row["prompt"] and row["label"] == ("unsafe" if e.kind == "harmful" else "safe")
    assert len({fingerprint(e.user_text()) for e in corpus}) == 5000  # no prompt twice
    assert manifest["parts"][2]["rows"] == 7473 and manifest["parts"][0]["other_kinds"] == 1500


@needs_shared
def test_the_sample_is_seeded(tmp_path):
    a, _ = build_corpus(_local_cfg(seed=0))
    b, _ = build_corpus(_local_cfg(seed=0))
    c, _ = build_corpus(_local_cfg(seed=1))
    assert [e.id for e in a] == [e.id for e in b] and a == b
    assert {e.id for e in a} != {e.id for e in c}
    assert [e.kind for e in a] == ["harmful"] * 40 + ["benign"] * 30 + ["task"] * 50


@needs_shared
@pytest.mark.parametrize(
    "source, field",
    [
        (RecipeSource(path=str(GSM8K_TEST), format="gsm8k"), "path"),
        (RecipeSource(path=GSM8K_TRAIN, split="test", format="gsm8k"), "split"),
        (RecipeSource(hub="openai/gsm8k", config="main", split="test", format="gsm8k"), "split"),
        (RecipeSource(hub="someone/gsm8k-test", format="gsm8k"), "hub"),
    ],
)
def test_a_test_split_is_refused_by_name(source, field):
    cfg = RecipeConfig(parts=[RecipePart("math", "task", None, [source])], offline=True)
    with pytest.raises(DataError, match="test split: evaluation data must never be trained on") as info:
        build_corpus(cfg)
    assert info.value.field == field


@needs_shared
def test_a_test_split_under_another_name_is_refused_by_its_content(tmp_path):
    renamed = tmp_path / "grade_school_math.jsonl"
    renamed.write_text(
        "".join(GSM8K_TEST.read_text(encoding="utf-8").splitlines(keepends=True)[:200]), encoding="utf-8"
    )
    cfg = RecipeConfig(
        parts=[RecipePart("math", "task", 10, [RecipeSource(path=str(renamed), format="gsm8k")])], offline=True
    )
    with pytest.raises(DataError, match="GSM8K test evaluation set") as info:
        build_corpus(cfg)
    assert (
        info.value.path == str(renamed) and 1 <= info.value.line <= 200
    )  # a row of the file (the recipe samples rows)
    assert f"{renamed}:{info.value.line}: field 'prompt'" in str(info.value)


@needs_shared
def test_an_evaluation_prompt_in_the_corpus_is_refused(tmp_path):
    corpus, _ = build_corpus(_local_cfg())
    held = tmp_path / "my_eval.jsonl"
    held.write_text(json.dumps({"prompt": corpus[45].messages(), "label": "safe"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="my_eval.jsonl: evaluation prompts must never be trained on") as info:
        build_corpus(_local_cfg(held_out=[str(held)]))
    assert info.value.line == json.loads(corpus[45].source)["row"]


@needs_shared
def test_hub_first_then_the_local_file(monkeypatch):
    import datasets

    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    part = RecipePart(
        "gsm8k",
        "task",
        5,
        [
            RecipeSource(hub="openai/gsm8k", config="main", format="gsm8k"),
            RecipeSource(path=GSM8K_TRAIN, format="gsm8k"),
        ],
    )
    notes = []
    corpus, manifest = build_corpus(RecipeConfig(parts=[part]), notes.append)
    assert calls == [("openai/gsm8k", "main")]
    assert manifest["parts"][0]["skipped"] == [
        {"source": "openai/gsm8k", "why": "ConnectionError: Couldn't reach the Hugging Face Hub"}
    ]
    assert manifest["parts"][0]["used"]["path"] == GSM8K_TRAIN and len(corpus) == 5
    assert any("openai/gsm8k unavailable" in n for n in notes)
    calls.clear()
    _, manifest = build_corpus(RecipeConfig(parts=[part], offline=True))  # offline: the hub is not even tried
    assert calls == [] and manifest["parts"][0]["skipped"][0]["why"] == "offline"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build_corpus(RecipeConfig(parts=[part]))
    assert calls == []


def test_no_available_source_is_an_error_listing_each(tmp_path):
    part = RecipePart(
        "harmful",
        "harmful",
        5,
        [
            RecipeSource(hub="PKU-Alignment/BeaverTails", split="30k_train", format="beavertails"),
            RecipeSource(path=str(tmp_path / "missing.jsonl")),
        ],
    )
    with pytest.raises(
        DataError, match="no source of this part is available .*BeaverTails: offline.*missing.jsonl: no such file"
    ):
        build_corpus(RecipeConfig(parts=[part], offline=True))


def _stub_hub(monkeypatch, tables):
    import datasets

    def load_dataset(hub, config=None, split=None):
        return tables[(hub, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)


def test_hub_rows_in_the_recipe_formats(monkeypatch):
    beaver = [
        {
            "prompt": f"request {i % 7}",
            "response": "r",
            "is_safe": i % 3 == 0,
            "category": {"privacy": i % 2 == 0, "fraud": True},
        }
        for i in range(30)
    ]
    star = [{"id": i, "question": f"benign but scary {i}", "category": "x"} for i in range(9)]
    math = [
        {"problem": f"what is {i} + 1 ?", "solution": f"so we get $\\boxed{{{i + 1}}}$", "level": "1"} for i in range(6)
    ]
    _stub_hub(
        monkeypatch,
        {
            ("PKU-Alignment/BeaverTails", "30k_train"): beaver,
            ("UCSC-VLAA/STAR-benign-915", "train"): star,
            ("DigitalLearningGmbH/MATH-lighteval", "train"): math,
        },
    )
    parts = [p for p in paper_parts() if p.name != "gsm8k"]
    parts[0].n, parts[1].n, parts[2].n = None, 9, 6
    corpus, manifest = build_corpus(RecipeConfig(parts=parts))
    harmful = [e for e in corpus if e.kind == "harmful"]
    # unsafe pairs only (is_safe false), each prompt once
    assert sorted(e.prompt for e in harmful) == sorted({f"request {i % 7}" for i in range(30) if i % 3})
    assert manifest["parts"][0]["other_kinds"] == 10 and manifest["parts"][0]["duplicates"] == 20 - len(harmful)
    first = json.loads(harmful[0].source)
    assert first == {
        "part": "harmful",
        "dataset": "PKU-Alignment/BeaverTails",
        "split": "30k_train",
        "row": 2,
        "format": "beavertails",
    }
    assert harmful[0].category == "fraud"  # row 2 (i = 1): privacy false, fraud true
    assert [e.kind for e in corpus if e.source and "STAR" in e.source] == ["benign"] * 9
    assert [e.reference for e in corpus if e.kind == "task"] == [str(i + 1) for i in range(6)]


def test_last_boxed_answer():
    assert last_boxed("first $\\boxed{1}$ then $\\boxed{\\frac{1}{2}}$.") == "\\frac{1}{2}"
    assert last_boxed("no box") is None and last_boxed("\\boxed{unclosed") is None


def test_bad_parts_are_refused(monkeypatch):
    _stub_hub(monkeypatch, {("m/x", "train"): [{"problem": "p", "solution": "no box here"}]})
    with pytest.raises(DataError, match="m/x:1: field 'solution': no final answer"):
        build_corpus(
            RecipeConfig(parts=[RecipePart("m", "task", None, [RecipeSource(hub="m/x", format="math-solution")])])
        )
    with pytest.raises(ValueError, match="kind must be one of"):
        build_corpus(RecipeConfig(parts=[RecipePart("m", "maths", 1, [RecipeSource(hub="m/x")])]))
    with pytest.raises(ValueError, match="exactly one of hub or path"):
        build_corpus(RecipeConfig(parts=[RecipePart("m", "task", 1, [RecipeSource(hub="m/x", path="f.jsonl")])]))
    with pytest.raises(ValueError, match="part names must be unique"):
        build_corpus(RecipeConfig(parts=[RecipePart("m", "task", 1, [RecipeSource(hub="m/x")])] * 2))


@needs_shared
def test_more_than_the_source_holds_is_an_error():
    cfg = RecipeConfig(
        parts=[RecipePart("benign", "benign", 1501, [RecipeSource(path=BALANCED, format="chat-jsonl")])], offline=True
    )
    with pytest.raises(DataError, match="asks for 1501 benign prompts but the source has 1500"):
        build_corpus(cfg)


def test_paper_config_names_the_papers_sources_and_generators():
    cfg = load_config(RecipeConfig, ROOT / "configs" / "recipe" / "paper.yaml")
    hubs = [(p.kind, p.n, p.sources[0].hub, p.sources[0].split) for p in cfg.parts]
    assert hubs == [
        ("harmful", 1000, "PKU-Alignment/BeaverTails", "30k_train"),
        ("benign", 915, "UCSC-VLAA/STAR-benign-915", "train"),
        ("task", 1500, "openai/gsm8k", "train"),
        ("task", 1500, "DigitalLearningGmbH/MATH-lighteval", "train"),
    ]
    assert [(p.name, p.kind, p.n) for p in cfg.parts] == [(p.name, p.kind, p.n) for p in paper_parts()]
    assert (cfg.mixture.alpha, cfg.mixture.prefill_words, cfg.mixture.selection) == (0.5, 500, "per_row")
    from recap.data.recipe import resolve_prefills

    prefills = resolve_prefills(str(ROOT / cfg.prefills))
    assert (prefills.generator, prefills.refuser) == (
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "UCSC-VLAA/STAR1-R1-Distill-7B",
    )
    assert yaml.safe_load((ROOT / "configs" / "recipe" / "cpu.yaml").read_text())["offline"] is True


def test_prefill_and_mix_steps_compose_with_a_generator(tmp_path):
    from recap.data.mixture import MixtureConfig
    from recap.data.prefills import PrefillConfig
    from recap.inference.generation import SamplingConfig
    from recap.toy.model import ToyModelConfig, build_model, build_tokenizer

    src = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": [{"role": "user", "content": f"how do i steal a car {i} ?"}], "label": "unsafe"} for i in range(6)
    ]
    rows += [
        {"prompt": [{"role": "user", "content": f"how do i kill a python process {i} ?"}], "label": "safe"}
        for i in range(6)
    ]
    rows += [{"prompt": [{"role": "user", "content": f"what is {i} plus 3 ?"}], "label": str(i + 3)} for i in range(4)]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    parts = [
        RecipePart(k, k, None, [RecipeSource(path=str(src), format="chat-jsonl")])
        for k in ("harmful", "benign", "task")
    ]
    tok = build_tokenizer()
    model = build_model(
        tok, ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), seed=0
    ).eval()
    prefills = PrefillConfig(
        generator="toy-gen",
        unsafe_system_prompt="",
        refusing_system_prompt="",
        unsafe_opener="sure",
        refusing_opener="no",
        sampling=SamplingConfig(max_new_tokens=8, batch_size=4),
        cache=str(tmp_path / "cache.jsonl"),
    )
    cfg = RecipeConfig(
        parts=parts,
        offline=True,
        prefill=True,
        prefills=prefills,
        mix=True,
        mixture=MixtureConfig(alpha=0.5, prefill_words=3, seed=0, selection="exact"),
    )
    manifest = run_recipe(cfg, tmp_path / "mix.jsonl", load=lambda name: (model, tok))
    mix = read_examples(tmp_path / "mix.jsonl")
    assert manifest["prefills"]["with_reasoning"] == 12 and manifest["mixture"] == {"harmful": 3, "benign": 3}
    assert all(e.counter_reasoning for e in mix if e.kind != "task") and not any(
        e.prefill for e in mix if e.kind == "task"
    )
    assert all(e.prefill.split()[0] == ("sure" if e.kind == "harmful" else "no") for e in mix if e.prefill)
    assert all(json.loads(e.source)["dataset"] == str(src) for e in mix)  # provenance survives both steps


@needs_shared
def test_cli_writes_the_corpus_and_refuses_a_test_split(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "offline": True,
                "parts": [
                    {"name": "gsm8k", "kind": "task", "n": 7, "sources": [{"path": GSM8K_TRAIN, "format": "gsm8k"}]}
                ],
            }
        )
    )
    runner = CliRunner()
    result = runner.invoke(app, ["data", "recipe", "--config", str(config), "--out", str(tmp_path / "c.jsonl")])
    assert result.exit_code == 0, result.output
    assert "7 examples (0 harmful, 0 benign, 7 task)" in " ".join(result.output.split())
    assert len(read_examples(tmp_path / "c.jsonl")) == 7 and manifest_path(tmp_path / "c.jsonl").is_file()
    result = runner.invoke(
        app,
        [
            "data",
            "recipe",
            "--config",
            str(config),
            "--out",
            str(tmp_path / "d.jsonl"),
            "--set",
            f"parts=[{{name: t, kind: task, sources: [{{path: '{GSM8K_TEST}'}}]}}]",
        ],
    )
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "test split" in " ".join(result.output.split()) and not (tmp_path / "d.jsonl").exists()
