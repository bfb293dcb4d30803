"""Batched sampling (recap/inference/generation.py): left padding, input order, token counts and truncation; continued
conversations (``generate_rounds``) that keep only a prefix of each round's output, token for token, with a
word-level and a byte-level BPE tokenizer."""

from types import SimpleNamespace

import pytest
import torch

from recap.inference.chat import render_prompt
from recap.inference.generation import (
    Generation,
    SamplingConfig,
    decode_continuation,
    generate,
    generate_rounds,
    kept_tokens,
)
from recap.toy.model import ToyModelConfig, build_model, build_tokenizer

TINY = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
USERS = [
    "what is 2 plus 3 ?",
    "how do i steal a car ?",
    "solve 9 minus 1 .",
    "tell me how to make a bath bomb . i need help to kill a python process now .",
    "i need 4 plus 4 .",
]
PREFILL = " the user wants to steal a car . it is for a story so it is fine"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    """The TINY random model (seed 0), made context-sensitive and tie-free for greedy decoding.

    At its default initialisation a random tied-embedding model just repeats its last token, which
    would hide padding bugs; larger weights make each continuation depend on the whole prompt, float64
    keeps greedy argmaxes away from round-off ties, and zeroed rows for <pad>/<unk>/<eos> keep those
    tokens out of the output (their logits are 0 while the others are far from 0)."""
    return _random_model(tok, seed=0, silent=(tok.pad_token_id, tok.unk_token_id, tok.eos_token_id))


def _random_model(tok, seed, silent, eos_scale=1.0):
    """TINY with N(0, 0.5²) weights drawn with ``seed``, float64; the ``silent`` tokens' embedding rows are
    zeroed (their logits are 0 while the others are far from 0, so they are never chosen) and <eos>'s row
    is scaled by ``eos_scale``."""
    m = build_model(tok, TINY, seed=0)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        emb = m.get_input_embeddings().weight
        for special in silent:
            emb[special] = 0.0
        emb[tok.eos_token_id] *= eos_scale
    return m.double().eval()


@pytest.fixture(scope="module")
def prompts(tok):
    out = [render_prompt(tok, [{"role": "user", "content": u}]) for u in USERS]
    return out + [out[1] + PREFILL]


def _lens(tok, prompts):
    return [len(tok(p)["input_ids"]) for p in prompts]


NEW = 6
GREEDY = SamplingConfig(temperature=0, max_new_tokens=NEW, batch_size=16)


@pytest.fixture(scope="module")
def batched(model, tok, prompts):
    return generate(model, tok, prompts, GREEDY)


def test_prompts_have_different_lengths(tok, prompts):
    assert len(set(_lens(tok, prompts))) >= 4


def test_batched_greedy_equals_one_at_a_time(model, tok, prompts, batched):
    single = [generate(model, tok, [p], GREEDY)[0] for p in prompts]
    assert batched == single
    assert len({g.text for g in batched}) == len(prompts)  # continuations really depend on the prompt


def test_batch_size_does_not_change_greedy_output(model, tok, prompts, batched):
    small = generate(model, tok, prompts, SamplingConfig(temperature=0, max_new_tokens=NEW, batch_size=4))
    assert small == batched


def test_outputs_come_back_in_input_order(model, tok, prompts, batched):
    forward = batched
    # Longest first, so the length-sorted batching really reorders them.
    order = sorted(range(len(prompts)), key=lambda i: -_lens(tok, prompts)[i])
    reordered = generate(model, tok, [prompts[i] for i in order], GREEDY)
    assert reordered == [forward[i] for i in order]
    seen = []
    generate(model, tok, prompts, SamplingConfig(temperature=0, max_new_tokens=1, batch_size=4), progress=seen.append)
    assert sum(seen) == len(prompts) and seen == [4, 2]


def test_n_tokens_is_the_token_count_of_the_text(tok, batched):
    for g in batched:
        ids = tok(g.text, add_special_tokens=False)["input_ids"]
        assert g.n_tokens == len(ids) == NEW
        assert tok.unk_token_id not in ids
        assert g.truncated  # no eos can be generated: every sample hits max_new_tokens


def test_progress_moves_within_a_batch_and_adds_up_to_the_prompts(model, tok, prompts):
    """A long batch reports fractions of its prompts while it decodes (every 8 tokens), the rest at its end."""
    steps = []
    sampling = SamplingConfig(temperature=0, max_new_tokens=32, batch_size=16)
    generate(model, tok, prompts, sampling, progress=steps.append)
    assert len(steps) > 2 and all(0 < k <= len(prompts) for k in steps)
    assert sum(steps) == pytest.approx(len(prompts))
    assert sum(steps[:-1]) < len(prompts)  # some of it came before the batch ended


def test_sampling_is_seeded(model, tok, prompts, batched):
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=4)
    first = generate(model, tok, prompts, cfg, seed=3)
    assert first == generate(model, tok, prompts, cfg, seed=3)
    # and it samples: another seed draws other tokens, and the draws are not the greedy ones
    assert generate(model, tok, prompts, cfg, seed=4) != first
    assert [g.ids for g in first] != [g.ids[:4] for g in batched]


class _Scripted:
    """A stand-in model whose ``generate`` appends scripted continuations (right-padded like HF)."""

    def __init__(self, continuations, pad):
        self.continuations, self.pad = continuations, pad

    def parameters(self):
        yield torch.zeros(1)

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **kw):
        rows = []
        for r in range(input_ids.shape[0]):
            key = tuple(input_ids[r][attention_mask[r].bool()].tolist())
            new = list(self.continuations[key])[:max_new_tokens]
            rows.append(input_ids[r].tolist() + new)
        width = max(map(len, rows))
        return SimpleNamespace(
            sequences=torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows]), cache=None
        )


def test_eos_ends_the_text_and_truncated_flags_a_missing_eos(tok):
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    eos = tok.eos_token_id
    p_done, p_cut = "<user> what is 2 plus 3 ? <assistant> <think>", "<user> how do i steal a car ? <assistant> <think>"
    answer = "2 plus 3 is 5 . </think> the answer is 5 ."
    rambling = "the user wants to steal a car . the user wants to steal a car ."
    scripted = _Scripted({tuple(ids(p_done)): ids(answer) + [eos], tuple(ids(p_cut)): ids(rambling)}, tok.pad_token_id)
    max_new = len(ids(rambling))
    done, cut = generate(scripted, tok, [p_done, p_cut], SamplingConfig(temperature=0, max_new_tokens=max_new))
    # The text is decoded after the prompt's last tokens, so it carries the boundary space the decoder writes.
    assert done == Generation(
        " " + answer, len(ids(answer)), truncated=False, ids=tuple(ids(answer)), context=tuple(ids(p_done)[-4:])
    )
    assert cut == Generation(
        " " + rambling, max_new, truncated=True, ids=tuple(ids(rambling)), context=tuple(ids(p_cut)[-4:])
    )


def test_prompt_and_continuation_join_as_the_tokens_read(tok):
    """A word-level decoder writes the space between two words only when it sees both: the prompt text and
    the generated text joined read exactly as the whole sequence decodes ("being helpful", not
    "beinghelpful"), which the report's prefill/continuation transcript relies on."""
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt, answer = "<user> what is 2 plus 3 ? <assistant> <think> the user wants", "to steal a car . </think> 5 ."
    scripted = _Scripted({tuple(ids(prompt)): ids(answer) + [tok.eos_token_id]}, tok.pad_token_id)
    (gen,) = generate(scripted, tok, [prompt], SamplingConfig(temperature=0, max_new_tokens=20))
    assert tok.decode(ids(prompt)) + gen.text == tok.decode(ids(prompt) + ids(answer))
    assert gen.text.startswith(" to steal")
    # kept_tokens counts characters of this text: the first word is one token, the space included.
    assert kept_tokens(tok, gen, len(" to")) == (1, "")


@pytest.fixture(scope="module")
def eos_model(tok):
    """Like ``model``, but <eos> has a random embedding too, so some rows end early and others run to
    ``max_new_tokens``: the conversations of a batch then differ in length from round to round."""
    return _random_model(tok, seed=1, silent=(tok.pad_token_id, tok.unk_token_id), eos_scale=3.0)


def _suffix(r, i, gen):
    """Keep all of the previous output on even rows and its first half (cut inside a word on some rows) on
    odd rows, then append a suffix."""
    n = len(gen.text) if i % 2 == 0 else len(gen.text) // 2
    return n, f" wait , round {r} . " + "the user wants to steal a car ." * (i % 3)


def _rounds(model, tok, prompts, reuse, **kw):
    sampling = SamplingConfig(temperature=0, max_new_tokens=10, batch_size=3, reuse_prefix=reuse)
    return generate_rounds(model, tok, prompts, _suffix, 3, sampling, **kw)


def _tokens_read(model, fn):
    """Total input positions the model's forward passes read while ``fn`` runs."""
    seen = []
    handle = model.register_forward_pre_hook(
        lambda mod, args, kw: seen.append(kw["input_ids"].numel()), with_kwargs=True
    )
    try:
        return fn(), sum(seen)
    finally:
        handle.remove()


def test_rounds_with_prefix_reuse_equal_rounds_without(eos_model, tok, prompts):
    with_reuse, read_reuse = _tokens_read(eos_model, lambda: _rounds(eos_model, tok, prompts, True))
    without, read_plain = _tokens_read(eos_model, lambda: _rounds(eos_model, tok, prompts, False))
    ended = [not t.generation.truncated for rnd in with_reuse for t in rnd]
    assert any(ended) and not all(ended), "the test needs rows that end early and rows that do not"
    for r, (a, b) in enumerate(zip(with_reuse, without)):
        assert [t.generation.ids for t in a] == [t.generation.ids for t in b], f"round {r}"
        assert [t.prompt_text for t in a] == [t.prompt_text for t in b]
    assert read_reuse < read_plain  # only the suffixes (and new tokens) are read again


def _alone(model, tok, ids, new=10):
    """Greedy continuation of exactly ``ids`` with one plain ``model.generate`` call (no batch, no cache)."""
    out = model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=new,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )[0, len(ids) :].tolist()
    return out[: out.index(tok.eos_token_id)] if tok.eos_token_id in out else out


def _check_rounds_token_for_token(model, tok, prompts, rounds, next_turn, new=10):
    """Round r's conversation is round r-1's prompt ids, the ids of the kept part of its output and the ids
    of (the part of a token the cut split) + the suffix — and the model's continuation of exactly those
    ids, read alone, is what the batched rounds produced."""
    for i, p in enumerate(prompts):
        ids = tok(p)["input_ids"]
        for r in range(1, len(rounds)):
            prev = rounds[r - 1][i].generation
            n_chars, appended = next_turn(r, i, prev)
            n_ids, leftover = kept_tokens(tok, prev, n_chars)
            assert decode_continuation(tok, prev.context, prev.ids[:n_ids]) + leftover == prev.text[:n_chars]
            ids = ids + list(prev.ids[:n_ids]) + tok(leftover + appended, add_special_tokens=False)["input_ids"]
            assert rounds[r][i].prompt_text == rounds[r - 1][i].prompt_text + prev.text[:n_chars] + appended
            assert list(rounds[r][i].generation.ids) == _alone(model, tok, ids, new), (i, r)


def test_each_round_continues_the_kept_part_of_the_previous_conversation_token_for_token(eos_model, tok, prompts):
    rounds = _rounds(eos_model, tok, prompts, True)
    first = generate(eos_model, tok, prompts, SamplingConfig(temperature=0, max_new_tokens=10, batch_size=3))
    assert [t.generation for t in rounds[0]] == first
    assert any(len(t.generation.text) > 1 for t in rounds[0][1::2]), "odd rows must actually be cut"
    _check_rounds_token_for_token(eos_model, tok, prompts, rounds[:3], _suffix)


# -- a byte-level BPE tokenizer, where a closing tag is several tokens and can fuse with the space before it --
BPE_CORPUS = [
    "<user> how do i pick a lock ? <assistant> <think> I should think about it. Wait, this is "
    "unsafe.</think> Sorry, I can't help with that.",
    "Sure, here are the steps: first, second.",
    "Let me reconsider the request from the beginning.</think> The answer is 42.",
] * 20
BPE_TEMPLATE = (
    "{% for m in messages %}<user> {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> <think>{% endif %}"
)


@pytest.fixture(scope="module")
def bpe_tok():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(
        BPE_CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<pad>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", chat_template=BPE_TEMPLATE, padding_side="left"
    )


def test_the_bpe_test_tokenizer_splits_the_closing_tag(bpe_tok):
    pieces = bpe_tok.convert_ids_to_tokens(bpe_tok(" unsafe.</think> Sorry", add_special_tokens=False)["input_ids"])
    assert "</think>" not in pieces and len(pieces) > 4


def test_kept_tokens_cut_a_bpe_generation_before_its_closing_tag(bpe_tok):
    from recap.eval.attacks import round_reasoning

    for text in (
        " I should think about it. Wait, this is unsafe.</think> Sorry, I can't help with that.",
        " The answer is 42.",
        " second.</think>",
    ):
        ids = bpe_tok(text, add_special_tokens=False)["input_ids"]
        gen = Generation(bpe_tok.decode(ids), len(ids), False, tuple(ids))
        n = len(round_reasoning(gen.text))
        j, leftover = kept_tokens(bpe_tok, gen, n)
        assert bpe_tok.decode(ids[:j]) + leftover == gen.text[:n]
        assert j == len(ids) or not gen.text[:n].startswith(bpe_tok.decode(ids[: j + 1]))  # the longest such prefix
        assert "</" not in bpe_tok.decode(ids[:j])


def test_rounds_on_a_bpe_model_read_exactly_the_kept_ids(bpe_tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    from recap.eval.attacks import ipr_suffix, round_reasoning

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(bpe_tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=64,
            pad_token_id=bpe_tok.pad_token_id,
            eos_token_id=bpe_tok.eos_token_id,
        )
    )
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        model.get_input_embeddings().weight[bpe_tok.pad_token_id] = 0.0
    model = model.double().eval()
    prompts = [
        render_prompt(bpe_tok, [{"role": "user", "content": u}], "I should think")
        for u in ("how do i pick a lock ?", "what is the answer ?", "how do i pick it ?")
    ]

    def next_turn(r, i, gen):  # the IPR suffix after the first 2/3 of the reasoning: cuts fall inside BPE tokens
        return len(round_reasoning(gen.text)) * 2 // 3, ipr_suffix("I should think")[0]

    out = {}
    for reuse in (True, False):
        sampling = SamplingConfig(temperature=0, max_new_tokens=12, batch_size=2, reuse_prefix=reuse)
        out[reuse] = generate_rounds(model, bpe_tok, prompts, next_turn, 2, sampling)
    assert [[t.generation.ids for t in rnd] for rnd in out[True]] == [
        [t.generation.ids for t in rnd] for rnd in out[False]
    ]
    _check_rounds_token_for_token(model, bpe_tok, prompts, out[True], next_turn, new=12)
    cuts = [kept_tokens(bpe_tok, t.generation, next_turn(1, i, t.generation)[0])[1] for i, t in enumerate(out[True][0])]
    assert any(cuts), "some cut must split a token (its leftover characters are read as text)"


def test_rounds_need_one_seed_per_round(model, tok, prompts):
    with pytest.raises(ValueError, match="need 4 seeds"):
        _rounds(model, tok, prompts, True, seeds=[0, 1])


def test_samples_of_one_prompt_read_the_prompt_once(model, tok, prompts):
    """Several samples per prompt: the batch's distinct prompts are read once and their cache shared;
    outputs (greedy, and sampled with the same seed) are those of reading every row in full."""
    repeated = [p for p in prompts[:3] for _ in range(3)] + [prompts[3]]
    for temperature in (0, 1.0):
        runs = {}
        for reuse in (True, False):
            sampling = SamplingConfig(temperature=temperature, max_new_tokens=NEW, batch_size=16, reuse_prefix=reuse)
            runs[reuse] = _tokens_read(model, lambda: generate(model, tok, repeated, sampling, seed=3))
        (shared, read_shared), (plain, read_plain) = runs[True], runs[False]
        assert [g.ids for g in shared] == [g.ids for g in plain]
        prompt_tokens = sum(_lens(tok, repeated))
        distinct_tokens = sum(_lens(tok, prompts[:4]))
        assert read_plain - read_shared == pytest.approx(prompt_tokens - distinct_tokens, abs=len(repeated) * 40)
        assert read_shared < read_plain


# -- recap's decode loop (decoder 'continuous' / 'batch') against one transformers generate call per batch ('hf') --

LOOP_DECODERS = ("continuous", "batch")


def _greedy(decoder, batch_size, new=12, **kw):
    return SamplingConfig(temperature=0, max_new_tokens=new, batch_size=batch_size, decoder=decoder, **kw)


@pytest.fixture(scope="module")
def mixed(prompts):
    """The prompts, then three of them three times each (several samples per prompt)."""
    return prompts + [p for p in prompts[:3] for _ in range(3)]


@pytest.mark.parametrize("batch_size", [2, 4, 16])
def test_decode_loop_greedy_equals_hf_generate(eos_model, tok, mixed, batch_size):
    """Rows end at different lengths (EOS after 0 to 11 tokens, or the budget): with the loop they leave the
    batch (and queued prompts take their place); each row's greedy output is still what one transformers
    generate call per batch gives."""
    before = generate(eos_model, tok, mixed, _greedy("hf", batch_size))
    assert len({g.n_tokens for g in before}) >= 4
    assert any(g.truncated for g in before) and not all(g.truncated for g in before)
    for decoder in LOOP_DECODERS:
        assert generate(eos_model, tok, mixed, _greedy(decoder, batch_size)) == before, decoder
        assert generate(eos_model, tok, mixed, _greedy(decoder, batch_size, reuse_prefix=False)) == before, decoder


@pytest.mark.parametrize("reuse", [True, False])
def test_rounds_with_the_decode_loop_equal_rounds_with_hf_generate(eos_model, tok, prompts, reuse):
    out = {}
    for decoder in ("hf", "continuous"):
        sampling = SamplingConfig(temperature=0, max_new_tokens=10, batch_size=3, reuse_prefix=reuse, decoder=decoder)
        out[decoder] = generate_rounds(eos_model, tok, prompts, _suffix, 3, sampling)
    ended = [not t.generation.truncated for rnd in out["hf"] for t in rnd]
    assert any(ended) and not all(ended)
    assert [[(t.prompt_text, t.generation) for t in rnd] for rnd in out["continuous"]] == [
        [(t.prompt_text, t.generation) for t in rnd] for rnd in out["hf"]
    ]


def test_finished_rows_leave_the_batch(eos_model, tok, prompts):
    """One batch, no shared prompts: the loop reads every row's prompt (padded to the longest) and then one
    position per token a row has yet to read; transformers' generate reads every row until the longest ends."""

    def run(decoder):
        return _tokens_read(
            eos_model, lambda: generate(eos_model, tok, prompts, _greedy(decoder, 16, reuse_prefix=False))
        )

    (gens, read_loop), (_, read_hf) = run("batch"), run("hf")
    sampled = [g.n_tokens + (not g.truncated) for g in gens]  # with the EOS token
    prompt_positions = len(prompts) * max(_lens(tok, prompts))
    assert len(set(sampled)) > 2
    assert read_loop == prompt_positions + sum(n - 1 for n in sampled)
    assert read_hf == prompt_positions + len(prompts) * (max(sampled) - 1)


def _shapes(model, fn):
    """(rows, columns) of each forward pass's input ids while ``fn`` runs."""
    calls = []
    handle = model.register_forward_pre_hook(
        lambda mod, args, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    try:
        fn()
        return calls
    finally:
        handle.remove()


def test_continuous_batching_reads_queued_prompts_while_rows_decode(eos_model, tok, prompts):
    """'continuous': prompts join a batch whose other rows are mid-way (a decode step after a prefill has more
    rows than the prefill read); 'batch': the next prompts start only when the batch has ended. Neither holds
    more than batch_size rows."""

    def joined(calls):  # a prefill of k rows followed by a decode step of more than k rows
        return any(n > 1 and nxt[1] == 1 and nxt[0] > b for (b, n), nxt in zip(calls, calls[1:]))

    many = prompts * 2
    for decoder, expect in (("continuous", True), ("batch", False)):
        calls = _shapes(eos_model, lambda: generate(eos_model, tok, many, _greedy(decoder, 4, reuse_prefix=False)))
        assert max(b for b, _ in calls) <= 4
        assert joined(calls) == expect, decoder


def test_progress_adds_up_with_continuous_batching(eos_model, tok, mixed):
    steps = []
    generate(eos_model, tok, mixed, _greedy("continuous", 4), progress=steps.append)
    assert all(k > 0 for k in steps) and len(steps) > 4
    assert sum(steps) == pytest.approx(len(mixed))


def test_top_p_near_zero_samples_the_greedy_token(eos_model, tok, mixed):
    """Temperature and top-p go through transformers' warpers: a nucleus of (almost) no mass keeps only the
    most likely token, so sampling returns the greedy output."""
    greedy = generate(eos_model, tok, mixed, _greedy("continuous", 4))
    sampled = generate(
        eos_model, tok, mixed, SamplingConfig(temperature=0.7, top_p=1e-9, max_new_tokens=12, batch_size=4), seed=7
    )
    assert sampled == greedy


def test_the_models_repetition_penalty_is_applied_as_transformers_does(tok, mixed):
    from recap.inference.generation import loop_supported

    m = _random_model(tok, seed=1, silent=(tok.pad_token_id, tok.unk_token_id), eos_scale=3.0)
    plain = generate(m, tok, mixed, _greedy("continuous", 4))
    m.generation_config.repetition_penalty = 3.0
    assert loop_supported(m, _greedy("continuous", 4))
    penalised = generate(m, tok, mixed, _greedy("continuous", 4))
    assert penalised != plain
    assert penalised == generate(m, tok, mixed, _greedy("hf", 4))
    m.generation_config.no_repeat_ngram_size = 2  # not implemented by the loop: transformers decodes
    assert not loop_supported(m, _greedy("continuous", 4))


def test_an_unknown_decoder_is_refused(model, tok, prompts):
    with pytest.raises(ValueError, match="decoder must be one of"):
        generate(model, tok, prompts, _greedy("vllm", 4))


def test_growing_cache_layer_holds_what_concatenation_holds():
    from transformers.cache_utils import DynamicLayer

    from recap.inference.generation import _GrowingLayer

    g = torch.Generator().manual_seed(0)
    grow, plain = _GrowingLayer(), DynamicLayer()

    def update(n):
        k, v = torch.randn(3, 2, n, 4, generator=g), torch.randn(3, 2, n, 4, generator=g)
        return grow.update(k, v), plain.update(k, v)

    for n in (5, 1, 1, 70, 1, 3):  # 70 overflows the first buffer: it grows
        (gk, gv), (pk, pv) = update(n)
        assert torch.equal(gk, pk) and torch.equal(gv, pv)
    index = torch.tensor([2, 0, 0])
    grow.batch_select_indices(index)
    plain.batch_select_indices(index)
    assert torch.equal(grow.keys, plain.keys) and torch.equal(grow.values, plain.values)
    grow.drop_left(4)  # columns no row needs any more
    (gk, gv), (pk, pv) = update(2)
    assert torch.equal(gk, pk[:, :, 4:]) and torch.equal(gv, pv[:, :, 4:])
    assert grow.get_seq_length() == plain.get_seq_length() - 4


def test_generate_ids_stops_each_row_at_its_own_budget(model, tok, prompts):
    """Token-id rows with one budget each (a trainer's rollouts under a total length budget): every row
    writes exactly its budget (this model never samples EOS), and greedily that is the start of what the
    row writes with the largest budget."""
    from recap.inference.generation import generate_ids

    rows = [tok(p)["input_ids"] for p in prompts]
    budgets = [1, 6, 3, 6, 2, 5]
    sampling = SamplingConfig(temperature=0, max_new_tokens=6, batch_size=4)
    full = generate_ids(model, rows, sampling, tok.pad_token_id, tok.eos_token_id)
    cut = generate_ids(model, rows, sampling, tok.pad_token_id, tok.eos_token_id, budgets=budgets)
    assert [len(new) for new, _ in cut] == budgets and not any(ended for _, ended in cut)
    assert [new for new, _ in cut] == [new[:b] for (new, _), b in zip(full, budgets)]
    assert [list(g.ids) for g in generate(model, tok, prompts, sampling)] == [new for new, _ in full]
