"""Supervised fine-tuning and context distillation (recap/train/sft.py): the loss covers the answer tokens only,
in exactly the context RL and evaluation render; distilled rows never hold the teacher's system prompt
and carry their provenance; a tiny run changes the weights, with LoRA and with every weight trained."""

import json
from dataclasses import replace

import pytest
import torch

from recap.data.examples import DataError, Example
from recap.data.mixture import count_words
from recap.inference.chat import render_prompt
from recap.inference.generation import Generation, SamplingConfig
from recap.toy.model import ToyModelConfig, build_model, build_tokenizer
from recap.train.sft import (
    DistillConfig,
    SFTTrainConfig,
    build_sft_trainer,
    distill,
    graft_rows,
    prompt_completion,
    read_rows,
    train_sft,
    trim_to_sentence,
    write_rows,
)

TINY = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
SYSTEM = "Be safe. Refuse anything harmful."


@pytest.fixture(scope="module")
def smol(smollm2_tokenizer_dir):
    """SmolLM2's tokenizer (its ChatML template, byte-level BPE) and a tiny random model over its vocabulary."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from recap.inference.models import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            intermediate_size=32,
            tie_word_embeddings=True,
        )
    )
    prepare_tokenizer(model, tok)
    return model, tok


def _cfg(tmp_path, **kw):
    base = dict(
        model="unused",
        output_dir=str(tmp_path / "sft"),
        lora_r=0,
        learning_rate=1e-2,
        max_steps=2,
        batch_size=2,
        use_cpu=True,
        save_steps=100,
        logging_steps=1,
    )
    base.update(kw)
    return SFTTrainConfig(**base)


def test_loss_is_on_the_answer_tokens_only_in_the_rl_context(smol, tmp_path):
    model, tok = smol
    user = [{"role": "user", "content": "How do I hotwire a car?"}]
    rows = [
        {"id": "a", "messages": user, "completion": "I'm sorry, but I can't help with that."},
        {
            "id": "b",
            "messages": user,
            "prefill": "The user wants steps.",
            "completion": " Wait, this is theft. I won't help.",
        },
        {"id": "c", "prompt": "plain context:", "completion": " an answer"},
    ]
    trainer = build_sft_trainer(_cfg(tmp_path), rows, model=model, tokenizer=tok)
    contexts = [render_prompt(tok, user), render_prompt(tok, user, "The user wants steps."), "plain context:"]
    assert contexts[0].endswith("<|im_start|>assistant\n<think>\n")  # the RL/evaluation prompt, think block open
    for row, context, processed in zip(rows, contexts, trainer.train_dataset):
        ids, labels = processed["input_ids"], processed["labels"]
        prompt_ids = tok(context)["input_ids"]  # tokenized as GRPOTrainer tokenizes RL prompts
        assert ids[: len(prompt_ids)] == prompt_ids
        trained = [i for i, label in enumerate(labels) if label != -100]
        assert trained == list(range(len(prompt_ids), len(ids)))  # every answer token, nothing else
        assert [labels[i] for i in trained] == ids[len(prompt_ids) :]
        assert tok.decode(ids[len(prompt_ids) :]) == row["completion"] + tok.eos_token  # the answer, then end of turn
    assert "The user wants steps." in tok.decode(
        trainer.train_dataset[1]["input_ids"][: len(tok(contexts[1])["input_ids"])]
    )


def test_a_prompt_rendered_for_another_template_and_a_merged_boundary_are_errors(smol, tmp_path):
    model, tok = smol
    user = [{"role": "user", "content": "hi"}]
    with pytest.raises(DataError, match=r"row 'x': the 'prompt' text differs from its messages"):
        prompt_completion(
            [{"id": "x", "messages": user, "prompt": "<user> hi <assistant> <think>", "completion": "ok"}], tok
        )
    toy = build_tokenizer()
    rows = [
        {
            "id": "m",
            "messages": [{"role": "user", "content": "how do i steal a car ?"}],
            "prefill": "it is fine",
            "completion": "wait , no",
        }
    ]  # "fine" + "wait" fuse into one unknown word
    with pytest.raises(ValueError, match=r"row 'm': the prompt's tokens are not a prefix"):
        build_sft_trainer(_cfg(tmp_path), rows, model=build_model(toy, TINY, 0), tokenizer=toy)
    with pytest.raises(ValueError, match=r"row 'm' is \d+ tokens, more than max_length 4"):
        build_sft_trainer(
            _cfg(tmp_path, max_length=4),
            [dict(rows[0], completion=" wait , no")],
            model=build_model(toy, TINY, 0),
            tokenizer=toy,
        )


def test_bad_rows_name_the_line_and_the_field(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = {"id": "a", "messages": [{"role": "user", "content": "q"}], "completion": "ok"}
    for bad, field in (
        ({"id": "b", "messages": [{"role": "user", "content": "q"}]}, "completion"),
        ({"id": "b", "completion": "ok"}, "messages"),
        ({"id": "b", "messages": [{"role": "user"}], "completion": "ok"}, r"messages\[0\]"),
        ({"id": "b", "prompt": "p", "prefill": "x", "completion": "ok"}, "prefill"),
        ({"id": "a", "prompt": "p", "completion": "ok"}, "id"),
    ):
        path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
        with pytest.raises(DataError, match=rf"rows.jsonl:2: field '{field}'"):
            read_rows(path)
    write_rows(path, [good])
    assert read_rows(path) == [good]


@pytest.mark.parametrize("lora_r", [0, 4])
def test_a_tiny_run_changes_the_weights(tmp_path, lora_r):
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer()
    model = build_model(tok, TINY, 0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows = [
        {"id": f"r{i}", "messages": [{"role": "user", "content": q}], "completion": a}
        for i, (q, a) in enumerate(
            [
                ("how do i steal a car ?", "i can not help with that . </think> no"),
                ("what is 2 plus 3 ?", "2 plus 3 is 5 . </think> 5"),
            ]
        )
    ]
    lines = []
    final = train_sft(_cfg(tmp_path, lora_r=lora_r), rows, model=model, tokenizer=tok, log=lines.append)
    after = dict(AutoModelForCausalLM.from_pretrained(final).named_parameters())
    changed = {n for n, p in before.items() if not torch.equal(p, after[n].detach())}
    linear = {n for n in before if "proj" in n}
    if lora_r:  # adapters on every linear layer, merged into them; nothing else moves
        assert changed == linear
    else:
        assert changed == set(before)
    assert any(line.startswith("sft step 2/2: loss") for line in lines)
    out = tmp_path / "sft"
    assert json.loads((out / "sft_config.json").read_text())["inputs"]["rows"] == 2
    assert [h["step"] for h in json.loads((out / "log_history.json").read_text()) if "loss" in h] == [1, 2]
    assert train_sft(_cfg(tmp_path, lora_r=lora_r), rows, model=model, tokenizer=tok) == final  # finished: as is


def test_resuming_with_other_rows_is_refused(tmp_path):
    import shutil

    tok = build_tokenizer()
    rows = [{"id": "r", "messages": [{"role": "user", "content": "how do i steal a car ?"}], "completion": "no"}]
    cfg = _cfg(tmp_path, max_steps=1, save_steps=1, batch_size=1)
    final = train_sft(cfg, rows, model=build_model(tok, TINY, 0), tokenizer=tok)
    shutil.rmtree(final)  # as if killed after its checkpoint
    other = [dict(rows[0], completion="yes")]
    with pytest.raises(ValueError, match="'inputs' was .* in the run being resumed"):
        train_sft(cfg, other, model=build_model(tok, TINY, 0), tokenizer=tok)
    with pytest.raises(ValueError, match="holds checkpoints of an earlier run"):
        train_sft(
            _cfg(tmp_path, max_steps=1, save_steps=1, batch_size=1, resume="never"),
            rows,
            model=build_model(tok, TINY, 0),
            tokenizer=tok,
        )
    assert train_sft(cfg, rows, model=build_model(tok, TINY, 0), tokenizer=tok) == final  # resumes, finishes


def test_trim_to_sentence():
    assert trim_to_sentence("I can't help. It is illegal because") == "I can't help."
    assert trim_to_sentence("Step 1: mix\nStep 2: he") == "Step 1: mix"
    assert trim_to_sentence("no sentence end") == ""


class FakeTeacher:
    """Stands in for ``recap.inference.generation.generate``: fixed answers per (kind, sample), the prompts recorded."""

    ANSWERS = {
        "harmful": [
            "Sure, here are the steps: first",
            "I'm sorry, but I can't help with that. It is illegal and",
            "I can't help with that.",
        ],
        "benign": [
            "I'm sorry, I cannot help.",
            "Use the kill command with the process id.",
            "As told: refuse anything harmful, answer the rest.",
        ],
    }

    def __init__(self):
        self.prompts = []

    def __call__(self, model, tokenizer, prompts, sampling, seed=0, progress=None):
        self.prompts += prompts
        out, k = [], 3
        for n, p in enumerate(prompts):
            text = self.ANSWERS["harmful" if "steal" in p else "benign"][n % k]
            out.append(Generation(text, len(text.split()), truncated=not text.endswith(".")))
        return out


def test_context_distillation_rows(smol, tmp_path, monkeypatch):
    _, tok = smol
    teacher = FakeTeacher()
    monkeypatch.setattr("recap.inference.generation.generate", teacher)
    loads = []

    def load(name):
        loads.append(name)
        return None, tok

    examples = [
        Example("h1", "harmful", "how do i steal a car ?"),
        Example("b1", "benign", "how do i kill a python process ?"),
        Example("t1", "task", "what is 2 plus 3 ?", reference="5"),
    ]
    cfg = DistillConfig(
        teacher="teacher-x",
        system_prompt=SYSTEM,
        samples_per_prompt=3,
        judge="rules",
        echo_words=3,
        unclosed="continuation",
        seed=7,
        cache=str(tmp_path / "cache.jsonl"),
        sampling=SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=16, batch_size=6),
    )
    rows, stats = distill(examples, cfg, load=load)
    assert loads == ["teacher-x"] and len(teacher.prompts) == 6
    assert all(SYSTEM in p for p in teacher.prompts)  # the teacher answers under the safety system prompt
    by_id = {r["id"]: r for r in rows}
    # harmful: samples 1 (trimmed to its full sentence) and 2 both refuse; equal scores, the lower index wins
    assert set(by_id) == {"h1#distill-1", "b1#distill-1"}
    h, b = by_id["h1#distill-1"], by_id["b1#distill-1"]
    assert h["completion"] == "I'm sorry, but I can't help with that."
    assert b["completion"] == "Use the kill command with the process id."
    for row, ex in ((h, examples[0]), (b, examples[1])):
        assert row["messages"] == ex.messages() and row["kind"] == ex.kind
        prompt = prompt_completion([row], tok)[0]["prompt"]
        assert SYSTEM not in prompt and prompt == render_prompt(tok, ex.messages())  # the RL / evaluation context
    p = h["provenance"]
    assert p["teacher"] == "teacher-x" and p["teacher_system_prompt"] == SYSTEM and p["sample"] == 1
    assert p["truncated"] is True and p["trimmed"] is True and isinstance(p["seed"], int)
    assert (p["temperature"], p["top_p"], p["max_new_tokens"]) == (0.7, 0.9, 16)
    assert p["judge"] == "refusal-rules" and p["verdict"]["safe"] is True and p["verdict"]["refused"] is True
    assert p["qualified_samples"] == 2 and b["provenance"]["verdict"]["refused"] is False
    # harmful sample 0 was cut before any full sentence; benign sample 2 recites the system prompt
    assert stats["harmful"] == {
        "prompts": 1,
        "samples": 3,
        "dropped_truncated": 1,
        "dropped_echo": 0,
        "dropped_no_answer": 0,
        "dropped_disagreement": 0,
        "qualified": 2,
        "prompts_kept": 1,
        "rows": 1,
    }
    assert (stats["benign"]["dropped_echo"], stats["benign"]["qualified"]) == (1, 1)
    path = write_rows(tmp_path / "rows.jsonl", rows)
    assert read_rows(path) == rows
    # a rerun reads the cache: no teacher is loaded, the same rows come back
    again, _ = distill(examples, cfg, load=load)
    assert loads == ["teacher-x"] and again == rows


class _CallsAllAligned:
    """A judge with false positives: every harmful answer safe, every benign one answered."""

    name = "all-aligned"

    def judge(self, items):
        from recap.rewards.judges import Verdict

        return [
            Verdict(
                1.0,
                "refusal" if it.kind == "harmful" else "compliance",
                "",
                safe=it.kind == "harmful",
                refused=it.kind == "harmful",
            )
            for it in items
        ]


def test_distillation_keeps_a_sample_only_when_the_second_judge_agrees(smol, tmp_path, monkeypatch):
    _, tok = smol
    monkeypatch.setattr("recap.inference.generation.generate", FakeTeacher())
    examples = [Example("h1", "harmful", "how do i steal a car ?"), Example("b1", "benign", "how do i kill it ?")]
    base = DistillConfig(
        teacher="t",
        system_prompt=SYSTEM,
        samples_per_prompt=3,
        keep_per_prompt=3,
        truncated="keep",
        echo_words=0,
        unclosed="continuation",
        cache=str(tmp_path / "cache.jsonl"),
        sampling=SamplingConfig(max_new_tokens=16, batch_size=6),
    )
    alone, stats = distill(examples, base, load=lambda name: (None, tok), judge=_CallsAllAligned())
    assert len(alone) == 6 and stats["harmful"]["dropped_disagreement"] == 0  # the compliance "Sure, here…" too
    cfg = replace(base, agree_judge="rules")
    rows, stats = distill(examples, cfg, load=lambda name: (None, tok), judge=_CallsAllAligned())
    kept = sorted(r["completion"] for r in rows)
    assert "Sure, here are the steps: first" not in kept and "I'm sorry, I cannot help." not in kept
    assert stats["harmful"]["dropped_disagreement"] == 1 and stats["benign"]["dropped_disagreement"] == 1
    assert all(r["provenance"]["agree_judge"] == "refusal-rules" for r in rows)
    with pytest.raises(ValueError, match="is the judge itself"):
        distill(examples, replace(base, judge="rules", agree_judge="rules"), load=lambda name: (None, tok))


def test_distillation_refuses_examples_that_already_hold_the_system_prompt(smol, tmp_path, monkeypatch):
    monkeypatch.setattr("recap.inference.generation.generate", FakeTeacher())
    ex = Example("h", "harmful", [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "steal ?"}])
    cfg = DistillConfig(teacher="t", system_prompt=SYSTEM, cache=str(tmp_path / "c.jsonl"))
    with pytest.raises(ValueError, match="already holds the teacher's system prompt"):
        distill([ex], cfg, load=lambda name: (None, smol[1]))


def _with_reasoning() -> list[Example]:
    """A harmful example with counter-aligned reasoning, one without (distilled clean only), and a benign one
    whose reasoning must never be prefilled or grafted."""
    reasoning = "Okay, the user wants this, and I will help them steal it step by step."
    return [
        Example("h1", "harmful", "how do i steal a car ?", counter_reasoning=reasoning, counter_source="gen-x"),
        Example("h2", "harmful", "how do i steal a bike ?"),
        Example("b1", "benign", "how do i kill a python process ?", counter_reasoning="I must refuse this."),
    ]


def _reasoning_cfg(tmp_path, batch_size: int, **kw) -> DistillConfig:
    return DistillConfig(
        teacher="teacher-x",
        system_prompt=SYSTEM,
        samples_per_prompt=3,
        judge="rules",
        echo_words=3,
        unclosed="continuation",
        cache=str(tmp_path / "cache.jsonl"),
        sampling=SamplingConfig(temperature=0.7, top_p=0.9, max_new_tokens=16, batch_size=batch_size),
        **kw,
    )


def test_distillation_under_prefills_keeps_the_prefill_as_context(smol, tmp_path, monkeypatch):
    """With prefill_words, a harmful example with counter-aligned reasoning is also sampled under its first ℓ
    words: the teacher sees system prompt + prefill, the judge reads only the continuation, and the row trains
    the continuation after the prefill, without the system prompt."""
    _, tok = smol
    teacher = FakeTeacher()
    monkeypatch.setattr("recap.inference.generation.generate", teacher)
    examples = _with_reasoning()
    cfg = _reasoning_cfg(tmp_path, batch_size=6, prefill_words=4)
    rows, stats = distill(examples, cfg, load=lambda name: (None, tok))
    prefill = "Okay, the user wants"
    prefilled = [p for p in teacher.prompts if prefill in p]
    assert len(teacher.prompts) == 12 and len(prefilled) == 3  # 3 clean examples + 1 prefilled, 3 samples each
    assert all(SYSTEM in p and p.endswith(prefill) for p in prefilled)
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"h1#distill-1", "h2#distill-1", "b1#distill-1", "h1+prefill#distill-1"}
    row = by_id["h1+prefill#distill-1"]
    assert row["prefill"] == prefill and row["messages"] == examples[0].messages()
    assert row["completion"] == "I'm sorry, but I can't help with that."
    assert row["provenance"]["prefill_words"] == 4 and row["provenance"]["prefill_source"] == "gen-x"
    assert by_id["h1#distill-1"]["prefill"] is None and "prefill_words" not in by_id["h1#distill-1"]["provenance"]
    prompt = prompt_completion([row], tok)[0]["prompt"]
    assert SYSTEM not in prompt and prompt == render_prompt(tok, examples[0].messages(), prefill)
    assert stats["harmful_prefilled"]["prompts"] == 1 and stats["harmful_prefilled"]["rows"] == 1
    assert stats["harmful"]["prompts"] == 2 and stats["benign"]["prompts"] == 1
    # the cache keeps clean and prefilled samples apart: a rerun samples nothing
    again, _ = distill(examples, cfg, load=lambda name: pytest.fail("the teacher was loaded again"))
    assert again == rows


def test_grafted_rows_put_the_kept_refusal_after_a_compliant_prefill(smol, tmp_path, monkeypatch):
    """With graft_words, each kept clean refusal of a harmful example with counter-aligned reasoning is written
    again after the reasoning's first ℓ words; benign rows, examples without reasoning and unkept prompts get
    none, and the teacher samples nothing more."""
    _, tok = smol
    teacher = FakeTeacher()
    monkeypatch.setattr("recap.inference.generation.generate", teacher)
    examples = _with_reasoning()
    cfg = _reasoning_cfg(tmp_path, batch_size=9, graft_words=5)
    rows, stats = distill(examples, cfg, load=lambda name: (None, tok))
    assert len(teacher.prompts) == 9  # clean sampling only
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"h1#distill-1", "h2#distill-1", "b1#distill-1", "h1+graft#distill-1"}
    clean, graft = by_id["h1#distill-1"], by_id["h1+graft#distill-1"]
    assert graft["prefill"] == "Okay, the user wants this," and clean["prefill"] is None
    assert clean["completion"] == "I'm sorry, but I can't help with that."
    assert graft["completion"] == "\n\nI'm sorry, but I can't help with that."  # a break after the prefill
    assert graft["messages"] == clean["messages"] == examples[0].messages()
    p = graft["provenance"]
    assert p["method"] == "context-distillation-graft" and clean["provenance"]["method"] == "context-distillation"
    assert (p["prefill_words"], p["prefill_source"], p["sample"]) == (5, "gen-x", 1)
    pair = prompt_completion([graft], tok)[0]
    assert SYSTEM not in pair["prompt"]
    assert pair["prompt"] == render_prompt(tok, examples[0].messages(), "Okay, the user wants this,")
    assert pair["completion"] == graft["completion"]
    assert stats["harmful_grafted"] == {"prompts": 1, "rows": 1} and stats["harmful"]["rows"] == 2
    # a range draws ℓ per row, reproducibly from the seed and the row id
    ranged = graft_rows(rows[:1], {e.id: e for e in examples}, "1-9", seed=3)
    again = graft_rows(rows[:1], {e.id: e for e in examples}, "1-9", seed=3)
    assert ranged == again and 1 <= ranged[0]["provenance"]["prefill_words"] <= 9
    lengths = {
        graft_rows([dict(clean, id=f"h1#distill-{i}")], {"h1": examples[0]}, "1-9")[0]["provenance"]["prefill_words"]
        for i in range(20)
    }
    assert len(lengths) > 3 and lengths <= set(range(1, 10))
    assert all(count_words(g["prefill"]) == g["provenance"]["prefill_words"] for g in ranged)
    for bad in (-1, "9-1", "many"):
        with pytest.raises(ValueError, match="graft_words"):
            DistillConfig(graft_words=bad)


def test_lora_adapters_start_from_the_seed_not_from_what_the_process_drew_before(tmp_path):
    """The adapters' initial weights depend on the config's seed only: a worker that ran other jobs first
    (and so drew other random numbers) starts the same SFT and RL runs (issue 36, item 4)."""
    from recap.train import TrainConfig, build_trainer

    tok = build_tokenizer()
    rows = [{"id": "r0", "messages": [{"role": "user", "content": "what is 2 plus 3 ?"}], "completion": "5 ."}]

    def sft_adapters(draws: int, seed: int = 0):
        model = build_model(tok, TINY, 0)
        torch.rand(draws)  # what the process drew since (building the model seeds it)
        trainer = build_sft_trainer(_cfg(tmp_path, lora_r=4, seed=seed), rows, model=model, tokenizer=tok)
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_A" in n}

    def rl_adapters(draws: int):
        model = build_model(tok, TINY, 0)
        torch.rand(draws)
        cfg = TrainConfig(
            model="unused",
            output_dir=str(tmp_path / "rl"),
            judge="toy",
            lora_r=4,
            num_generations=2,
            prompts_per_step=1,
            max_steps=1,
            use_cpu=True,
            seed=3,
            max_completion_length=8,
        )
        trainer = build_trainer(
            cfg,
            [Example("t", "task", "what is 2 plus 3 ?", reference="5")],
            model=model,
            tokenizer=tok,
        )
        return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_A" in n}

    for adapters in (sft_adapters, rl_adapters):
        a, b = adapters(0), adapters(1000)
        assert a and all(torch.equal(a[n], b[n]) for n in a)
    other = sft_adapters(0, seed=1)
    assert any(not torch.equal(other[n], sft_adapters(0)[n]) for n in other)


ROWS = [
    {"id": f"r{i}", "messages": [{"role": "user", "content": q}], "completion": a}
    for i, (q, a) in enumerate(
        [
            ("how do i steal a car ?", "i can not help with that . </think> no"),
            ("what is 2 plus 3 ?", "2 plus 3 is 5 . </think> 5"),
            ("what is 1 plus 1 ?", "1 plus 1 is 2 . </think> 2"),
            ("how do i make a bomb ?", "i can not help . </think> no"),
        ]
    )
]


class _Killed(Exception):
    """Stands in for SIGKILL right after a checkpoint was written."""


def _kill_after_checkpoint(monkeypatch, step: int) -> None:
    """The next ``train_sft`` dies as soon as ``checkpoint-<step>`` is whole."""
    from transformers import TrainerCallback

    import recap.train.sft as sft

    class Kill(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise _Killed(f"killed after checkpoint-{step}")

    build = sft.build_sft_trainer
    monkeypatch.setattr(
        sft, "build_sft_trainer", lambda *a, callbacks=(), **kw: build(*a, callbacks=[*callbacks, Kill()], **kw)
    )


def _per_step(out):
    """Every per-step entry of a run's log (loss, grad norm, learning rate, token count, accuracy…), exactly."""
    return [h for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]


def test_lora_sft_is_bit_identical_run_to_run_and_after_a_kill_and_resume(tmp_path, monkeypatch):
    """Two LoRA runs of one config give the same per-step log and weights, bit for bit; a run killed after a
    checkpoint (in a process that drew other random numbers) resumes to the same log and weights (issue 36,
    item 4): the adapters are seeded, and weights, optimizer, scheduler, RNG, data position and TRL's token
    count come back."""
    from safetensors.torch import load_file

    tok = build_tokenizer()

    def run(name: str, draws: int = 0, **kw):
        model = build_model(tok, TINY, 0)
        torch.rand(draws)  # what this process drew before: another job, another import order
        cfg = _cfg(tmp_path, output_dir=str(tmp_path / name), lora_r=4, max_steps=4, micro_batch_size=1, save_steps=1)
        lines = []
        final = train_sft(replace(cfg, seed=5, **kw), ROWS, model=model, tokenizer=tok, log=lines.append)
        return final, lines

    a, _ = run("a")
    b, _ = run("b", draws=1000)
    with monkeypatch.context() as m:
        _kill_after_checkpoint(m, 1)  # mid-epoch: the resumed run must skip the data already trained on
        with pytest.raises(_Killed):
            run("c", draws=7)
    assert not (tmp_path / "c" / "final").exists() and (tmp_path / "c" / "checkpoint-1").is_dir()
    c, lines = run("c", draws=3, resume="must")
    assert any(line.startswith("resuming from") and line.endswith("checkpoint-1") for line in lines)
    steps = _per_step(tmp_path / "a")
    assert [h["step"] for h in steps] == [1, 2, 3, 4] and len({h["loss"] for h in steps}) == 4
    assert _per_step(tmp_path / "b") == steps and _per_step(tmp_path / "c") == steps  # num_tokens included
    weights = load_file(a / "model.safetensors")
    for other in (b, c):
        assert all(torch.equal(weights[k], v) for k, v in load_file(other / "model.safetensors").items())


def test_a_finished_sft_run_is_returned_only_for_its_own_config_rows_and_length(tmp_path):
    """A finished run is the run of its config: the same config and rows return it as is; other rows, another
    field or another max_steps are refused with one line saying what differs (issue 36, item 8), instead of
    returning a model trained on something else."""
    tok = build_tokenizer()
    cfg = _cfg(tmp_path, max_steps=1, batch_size=1, resume="must")
    lines = []
    final = train_sft(replace(cfg, resume="never"), ROWS[:2], model=build_model(tok, TINY, 0), tokenizer=tok)
    assert train_sft(cfg, ROWS[:2], log=lines.append) == final  # no model needed: nothing is trained
    assert lines == [f"{tmp_path / 'sft'}: the run finished at step 1; nothing left to train"]
    assert train_sft(replace(cfg, save_steps=7, logging_steps=3), ROWS[:2], log=lines.append) == final
    with pytest.raises(
        ValueError, match=r"'inputs' was .* in the run being resumed, now .*: the rows passed in changed"
    ):
        train_sft(cfg, ROWS[1:3], log=lines.append)
    with pytest.raises(ValueError, match=r"'learning_rate' was 0.01 in the run being resumed, now 0.5"):
        train_sft(replace(cfg, learning_rate=0.5), ROWS[:2], log=lines.append)
    with pytest.raises(ValueError) as info:
        train_sft(replace(cfg, max_steps=3), ROWS[:2], log=lines.append)
    assert str(info.value) == (
        f"{tmp_path / 'sft'} holds a run that finished at step 1 (max_steps 1); max_steps is now 3: to train "
        f"further, start a new run from its final model (model: {final}) in another output_dir, or set max_steps "
        "back to 1"
    )
    with pytest.raises(ValueError, match="already holds a finished run"):
        train_sft(replace(cfg, resume="never"), ROWS[:2])


def test_recap_sft_train_resume_refuses_a_finished_run_whose_training_file_changed(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from recap.cli import app

    tok = build_tokenizer()
    build_model(tok, TINY, 0).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    rows = write_rows(tmp_path / "rows.jsonl", ROWS[:2])
    config = tmp_path / "sft.yaml"
    cfg = dict(model=str(tmp_path / "base"), train_file=str(rows), output_dir=str(tmp_path / "sft"), lora_r=0)
    config.write_text(yaml.safe_dump({**cfg, "max_steps": 1, "batch_size": 1, "use_cpu": True, "save_steps": 1}))
    first = CliRunner().invoke(app, ["sft", "train", "--config", str(config)])
    assert first.exit_code == 0, first.output
    again = CliRunner().invoke(app, ["sft", "train", "--config", str(config), "--resume"])
    assert again.exit_code == 0 and "the run finished at step 1; nothing left to train" in again.output
    write_rows(rows, ROWS[1:3])  # rebuilt in place
    result = CliRunner().invoke(app, ["sft", "train", "--config", str(config), "--resume"])
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(errors) == 1, result.output
    assert f"the rows of {rows} changed since the run started" in errors[0]
