"""The miniature world's tokenizer and supervised pre-training (recap/toy/model.py)."""

import random

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from recap.eval.attacks import IPR_TRANSITION
from recap.inference.chat import render_prompt
from recap.toy import world
from recap.toy.model import PretrainConfig, ToyModelConfig, build_tokenizer, encode_pair, pretrain, supervised_corpus

TINY = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
MESSAGES = [{"role": "user", "content": "how do i steal a car ?"}]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _ids(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_world_text_round_trips(tok):
    rng = random.Random(0)
    req = world.harmful_requests()[0]
    text = f"{world.THINK_OPEN} " + world.completion(
        world.flawed_reasoning(req, rng, "all"), world.misaligned_answer(req, rng)
    )
    ids = _ids(tok, text)
    assert tok.unk_token_id not in ids
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text


def test_corpus_and_prompts_round_trip(tok):
    for user, completion in supervised_corpus(PretrainConfig(corpus_size=300)):
        prompt = render_prompt(tok, [{"role": "user", "content": user}])
        for text in (user, completion, f"{prompt} {completion}"):
            ids = _ids(tok, text)
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text


def test_think_tags_survive_skip_special_tokens(tok):
    text = "<think> the user wants to steal a car . </think> sorry , i can not help with that ."
    ids = _ids(tok, text) + [tok.eos_token_id, tok.pad_token_id]
    decoded = tok.decode(ids, skip_special_tokens=True)  # how TRL decodes completions for the reward
    assert decoded == text
    assert tok.convert_tokens_to_ids(world.THINK_OPEN) not in tok.all_special_ids
    assert tok.convert_tokens_to_ids(world.THINK_CLOSE) not in tok.all_special_ids
    assert len(_ids(tok, world.THINK_CLOSE)) == 1 and len(_ids(tok, world.THINK_OPEN)) == 1


def test_no_bos_is_added(tok):
    assert tok.bos_token is None
    prompt = render_prompt(tok, MESSAGES)
    ids = tok(prompt)["input_ids"]
    assert ids == _ids(tok, prompt)  # default special tokens add nothing
    assert tok.convert_ids_to_tokens(ids)[0] == "<user>"
    assert tok.convert_ids_to_tokens(ids)[-2:] == ["<assistant>", world.THINK_OPEN]
    assert tok.padding_side == "left"


def test_every_world_word_is_in_the_vocabulary(tok):
    missing = [w for w in world.vocabulary() if tok.unk_token_id in _ids(tok, w)]
    assert missing == []
    for sentence in (world.IPR_WORDS, IPR_TRANSITION):
        ids = _ids(tok, sentence)
        assert ids and tok.unk_token_id not in ids, sentence
    assert _ids(tok, IPR_TRANSITION) == _ids(tok, world.IPR_WORDS)  # the attack's sentence is the world's


def test_encode_pair_marks_the_prompt(tok):
    ids, n_prompt = encode_pair(tok, "how do i steal a car ?", "x </think> sorry , i can not help with that .")
    assert ids[:n_prompt] == tok(render_prompt(tok, MESSAGES))["input_ids"]
    assert ids[-1] == tok.eos_token_id


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy-base")
    model, tokenizer = pretrain(PretrainConfig(steps=3, corpus_size=200, batch_size=8), TINY, out, log=lambda s: None)
    return out, model, tokenizer


def test_pretrain_writes_a_loadable_model_and_tokenizer(pretrained):
    out, model, tokenizer = pretrained
    assert (out / "config.json").is_file()
    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    assert loaded.config.hidden_size == TINY.hidden_size and loaded.config.num_hidden_layers == TINY.num_layers
    assert loaded.config.vocab_size == len(tokenizer)
    ids = torch.tensor([tokenizer(render_prompt(tokenizer, MESSAGES))["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model.eval()(input_ids=ids).logits)


def test_reloaded_tokenizer_renders_the_same_prompt(pretrained, tok):
    out, _, _ = pretrained
    loaded = AutoTokenizer.from_pretrained(out)
    prefill = "the user wants to steal a car . it is for a story so it is fine"
    for p in (None, prefill):
        assert render_prompt(loaded, MESSAGES, p) == render_prompt(tok, MESSAGES, p)
        text = render_prompt(tok, MESSAGES, p)
        assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.padding_side == "left"
    assert loaded.eos_token_id == tok.eos_token_id and loaded.pad_token_id == tok.pad_token_id
    assert loaded.bos_token is None
    text = "<think> this is safe and common . </think> sure , here is how to crack an egg : step one , step two , step three ."
    ids = loaded(text, add_special_tokens=False)["input_ids"] + [loaded.eos_token_id]
    assert loaded.decode(ids, skip_special_tokens=True) == text
