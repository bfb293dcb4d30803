"""The shared-prefix forward (recap/train/shared_prefix.py) and RecapTrainer's use of it (``shared_prefix``):
the packed layout, and every forward TRL makes over completions — the loss pass with its gradients, the old
and the reference log-probabilities — against TRL's unshared pass on the same inputs, in fp32: per-token
log-probabilities within 1e-5, every trained parameter's gradient within 1e-4 of its largest entry, on the
miniature world's Llama and on a SmolLM2-shaped random model, with eager and sdpa attention, LoRA and full
fine-tuning, gradient checkpointing, DAPO's token normalisation, dynamic-sampling filler groups and groups
of different prompt lengths in one batch. Run with ``-s`` to see the measured maxima."""

import logging

import pytest
import torch
from helpers.grpo import (
    EXAMPLES,
    G,
    WIDTH,
    completion_logps,
    grpo_batch,
    grpo_trainer,
    loss_and_grads,
    smollm2_shaped,
    toy_model,
    toy_prompts,
)
from transformers import LlamaForCausalLM, MistralConfig, MistralForCausalLM
from trl.trainer.utils import shuffle_sequence_dict

import recap.train.shared_prefix as sp
from recap.toy.model import build_tokenizer
from recap.train import rl_rows


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _grad_gap(grads: dict, reference: dict) -> float:
    """The largest |shared − unshared| gradient entry of any trained parameter, relative to that parameter's
    largest unshared entry."""
    assert grads.keys() == reference.keys()
    gaps = []
    for name, ref in reference.items():
        scale = ref.abs().max().item()
        assert scale > 0, f"{name} got no gradient"
        gaps.append((grads[name] - ref).abs().max().item() / scale)
    return max(gaps)


# --- the packed layout --------------------------------------------------------------------------------


def test_rows_are_grouped_by_their_unpadded_prompt():
    ids = torch.tensor([[0, 5, 6], [7, 5, 6], [0, 5, 6], [0, 0, 6]])
    mask = torch.tensor([[0, 1, 1], [1, 1, 1], [0, 1, 1], [0, 0, 1]])
    assert sp.group_rows(ids, mask) == [[0, 2], [1], [3]]
    assert sp.left_padded(mask)
    assert not sp.left_padded(torch.tensor([[1, 1, 0]]))  # right padding
    assert not sp.left_padded(torch.tensor([[0, 0, 0]]))  # an empty prompt


def test_the_packed_stream_holds_each_prompt_once_and_each_row_its_own_labels():
    prompt_ids = torch.tensor([[0, 11, 12, 13]] * 2 + [[0, 0, 21, 22]] * 2)
    prompt_mask = (prompt_ids > 0).long()
    completion_ids = torch.tensor([[31, 32, 33], [41, 42, 0], [51, 0, 0], [61, 62, 63]])
    completion_mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 0, 0], [1, 1, 0]])
    packed = sp.pack(prompt_ids, prompt_mask, completion_ids, completion_mask, [[0, 1], [2, 3]])
    # group a: prefix 11 12, then (13 | the row's completion up to its last masked-in token) per row; group b:
    # row 2 has no token in the loss (a filler) and is left out: prefix 21, then (22 | 61 62). No padding.
    assert packed.input_ids.tolist() == [[11, 12, 13, 31, 32, 33, 13, 41, 42, 21, 22, 61, 62]]
    assert packed.position_ids.tolist() == [[0, 1, 2, 3, 4, 5, 2, 3, 4, 0, 1, 2, 3]]
    assert packed.shift_labels.tolist() == [[-100, -100, 31, 32, 33, -100, 41, 42, -100, -100, 61, 62, -100]]
    layout = packed.layout
    assert (layout.starts, layout.prefixes, layout.rows, layout.widths) == ([0, 9], [2, 1], [2, 1], [4, 3])
    assert [t.tolist() for t in layout.slots] == [[0, 1, 2, 3, 4, 5, 6], [0, 1, 2]]  # row × width + column
    assert layout.keys[0].tolist() == [[True] * 4, [True, True, True, False]]
    values = torch.arange(13.0)[None]
    assert sp.unpack(values, packed).tolist() == [[2, 3, 4], [6, 7, 0], [0, 0, 0], [10, 11, 0]]
    none = torch.zeros_like(completion_mask)
    assert sp.pack(prompt_ids, prompt_mask, completion_ids, none, [[0, 1], [2, 3]]) is None


# --- against TRL's unshared pass ----------------------------------------------------------------------


def _check_against_unshared(model, tokenizer, prompts, vocab, tmp_path, **kw):
    """Log-probabilities, entropies, loss and gradients of the shared and the unshared pass on one batch; the
    shared pass must have read fewer tokens."""
    batch = grpo_batch(prompts, vocab)
    results = {}
    for mode in ("off", "on"):
        trainer = grpo_trainer(model, tokenizer, tmp_path, mode, **kw)
        with torch.no_grad():
            logps, entropies, _ = completion_logps(trainer, batch, compute_entropy=True)
        results[mode] = (logps, entropies, *loss_and_grads(trainer, batch), trainer)
    logps, entropies, loss, grads, shared = results["on"]
    ref_logps, ref_entropies, ref_loss, ref_grads, _ = results["off"]
    read = shared._metrics["train"]["shared_prefix/read_fraction"]
    assert shared._shared and read and max(read) < 0.8  # the shared pass ran, on far fewer tokens
    scored = batch["completion_mask"].bool()
    assert scored.any() and (logps[~scored] == 0).all() and (ref_logps[~scored] == 0).all()
    logp_gap = (logps - ref_logps).abs().max().item()
    entropy_gap = (entropies - ref_entropies)[scored].abs().max().item()
    grad_gap = _grad_gap(grads, ref_grads)
    print(f"max |Δ log-prob| {logp_gap:.2e}, |Δ entropy| {entropy_gap:.2e}, gradient {grad_gap:.2e} relative")
    assert logp_gap <= 1e-5 and entropy_gap <= 1e-5
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=0)
    assert grad_gap <= 1e-4


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_the_miniature_worlds_llama_gets_trls_logps_and_gradients(tok, tmp_path, attn, lora):
    _check_against_unshared(
        toy_model(tok, attn), tok, toy_prompts(tok), len(tok), tmp_path, lora_r=4 if lora else 0, lora_alpha=8
    )


@pytest.mark.parametrize(("attn", "lora", "checkpointing"), [("sdpa", False, True), ("eager", True, False)])
def test_a_smollm2_shaped_model_gets_trls_logps_and_gradients(tok, tmp_path, attn, lora, checkpointing):
    vocab = 49152
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, vocab, (n,), generator=g).tolist() for n in (40, 9, 17)]
    _check_against_unshared(
        smollm2_shaped(vocab, attn),
        tok,
        prompts,
        vocab,
        tmp_path,
        lora_r=4 if lora else 0,
        lora_alpha=8,
        gradient_checkpointing=checkpointing,
    )


def test_chunked_forwards_keep_groups_whole_where_they_fit(tok, tmp_path):
    """TRL computes old and reference log-probabilities in chunks of ``batch_size`` rows: each chunk is its own
    shared forward, and the result is the unshared one."""
    model = toy_model(tok, "sdpa")
    batch = grpo_batch(toy_prompts(tok), len(tok), filler=None)
    out = {}
    for mode in ("off", "on"):
        trainer = grpo_trainer(model, tok, tmp_path, mode)
        with torch.no_grad():
            out[mode] = completion_logps(trainer, batch, batch_size=6)[0]
    assert (out["on"] - out["off"]).abs().max().item() <= 1e-5
    packs = trainer._packs(
        torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1),
        torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1),
        WIDTH,
        6,
    )
    assert [p.layout.rows for p in packs] == [[4], [4], [4]]  # a group of 4 per chunk of at most 6 rows


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_old_and_reference_logps_are_trls(tok, tmp_path, lora):
    """With two optimizer passes per rollout batch TRL computes the old log-probabilities, with β > 0 the
    reference ones (the adapter switched off under LoRA, a second model otherwise): the same rollouts give the
    same values shared and unshared."""
    folder = tmp_path / "base"
    toy_model(tok, "sdpa").save_pretrained(folder)
    tok.save_pretrained(folder)
    model = LlamaForCausalLM.from_pretrained(folder)  # the reference model loads from its path
    rows = rl_rows(EXAMPLES, tok)
    out = {}
    for mode in ("off", "on"):
        trainer = grpo_trainer(
            model,
            tok,
            tmp_path,
            mode,
            model=str(folder),
            num_iterations=2,
            beta=0.1,
            micro_batch_size=6,
            temperature=1.5,
            lora_r=4 if lora else 0,
        )
        torch.manual_seed(0)
        out[mode] = trainer._generate_and_score_completions([r for r in rows for _ in range(G)])
        if mode == "on":
            assert trainer._metrics["train"]["shared_prefix/read_fraction"]
    assert torch.equal(out["on"]["completion_ids"], out["off"]["completion_ids"])
    for key in ("old_per_token_logps", "ref_per_token_logps"):
        gap = (out["on"][key] - out["off"][key]).abs().max().item()
        print(f"{key}: max |Δ| {gap:.2e}")
        assert gap <= 1e-5


def test_a_training_step_updates_the_weights_as_the_unshared_step(tok, tmp_path):
    """One optimizer step of the real training loop (dynamic sampling, two micro-batches of gradient
    accumulation, plain SGD so that the update is the gradient): the weights after it are those of the unshared
    step. (Adam would turn float rounding in near-zero gradient entries into full-size steps.)"""
    model = toy_model(tok, "sdpa")
    weights = {}
    for mode in ("off", "on"):
        trainer = grpo_trainer(model, tok, tmp_path, mode, micro_batch_size=6, dynamic_sampling=True, temperature=1.5)
        trainer.optimizer = torch.optim.SGD(trainer.model.parameters(), lr=1.0)
        torch.manual_seed(0)
        trainer.train()
        weights[mode] = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
        assert trainer.model.config._attn_implementation == "sdpa"  # taken off after training
    steps = {n: weights["off"][n] - p for n, p in model.named_parameters()}
    scale = max(d.abs().max().item() for d in steps.values())
    assert scale > 1e-4  # the step changed the weights
    gap = max((weights["on"][n] - w).abs().max().item() for n, w in weights["off"].items())
    print(f"largest weight change {scale:.2e}, largest gap {gap:.2e}")
    assert gap <= 1e-4 * scale


def test_groups_stay_whole_when_a_rollout_batch_is_split_into_micro_batches(tok, tmp_path):
    trainer = grpo_trainer(toy_model(tok, "sdpa"), tok, tmp_path, "on", micro_batch_size=4)
    batch = grpo_batch(toy_prompts(tok), len(tok), filler=None)
    batch["row"] = torch.arange(3 * G)
    trainer._generate_and_score_completions = lambda inputs: dict(batch)
    torch.manual_seed(1)
    parts = [trainer._prepare_inputs(None)]
    after = torch.rand(1).item()
    for step in (1, 2):
        trainer._step = step
        parts.append(trainer._prepare_inputs(None))
    rows = [p["row"].tolist() for p in parts]
    assert sorted(r for part in rows for r in part) == list(range(3 * G))
    assert all(len({r // G for r in part}) == 1 for part in rows)  # each micro-batch is one whole group
    assert [part[:] for part in rows] == [sorted(part) for part in rows]  # in their order within the group
    torch.manual_seed(1)
    shuffle_sequence_dict(dict(batch))  # TRL's row shuffle draws as much from torch's generator
    assert torch.rand(1).item() == after  # so later draws (the next rollouts) are TRL's


def test_training_with_the_shared_prefix_follows_the_unshared_run_step_by_step(tok, tmp_path):
    """Several steps of the real loop with its Adam optimizer: the same rollouts and rewards at every step
    with the shared prefix on or off (the group shuffle leaves torch's random stream as TRL's row shuffle
    does), and weights apart by float rounding only."""
    model = toy_model(tok, "sdpa")
    runs = {}
    for mode in ("off", "on"):
        trainer = grpo_trainer(
            model, tok, tmp_path, mode, max_steps=4, micro_batch_size=6, temperature=1.5, logging_steps=1
        )
        torch.manual_seed(0)
        trainer.train()
        logs = [(h["reward"], h["completions/mean_length"]) for h in trainer.state.log_history if "reward" in h]
        runs[mode] = logs, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    assert len(runs["on"][0]) == 4 and len({r for r, _ in runs["off"][0]}) > 1
    assert runs["on"][0] == runs["off"][0]
    start = dict(model.named_parameters())
    moved = max((w - start[n]).abs().max().item() for n, w in runs["off"][1].items())
    gap = max((runs["on"][1][n] - w).abs().max().item() for n, w in runs["off"][1].items())
    print(f"after 4 steps: largest weight change {moved:.2e}, largest gap {gap:.2e}")
    assert gap <= 1e-2 * moved


# --- when the shared pass cannot run ------------------------------------------------------------------


def test_a_sliding_window_model_falls_back_with_auto_and_is_refused_with_on(tok, tmp_path, caplog):
    config = MistralConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        sliding_window=8,
    )
    model = MistralForCausalLM(config)
    with caplog.at_level(logging.WARNING, logger="recap.train.trainer"):
        trainer = grpo_trainer(model, tok, tmp_path, "auto")
    assert not trainer._shared and trainer._metrics["train"]["shared_prefix/active"] == [0.0]
    assert [r.getMessage() for r in caplog.records] == [
        "shared_prefix: TRL's unshared loss pass is used (sliding-window attention layers)"
    ]
    with pytest.raises(ValueError, match="shared_prefix: on cannot run this model exactly: sliding-window"):
        grpo_trainer(model, tok, tmp_path, "on")


def test_a_model_whose_attention_ignores_the_layout_is_caught(tok, tmp_path, monkeypatch):
    trainer = grpo_trainer(toy_model(tok, "sdpa"), tok, tmp_path, "on")
    sp.uninstall(trainer.model)
    monkeypatch.setattr(sp, "install", lambda model: None)  # the model keeps plain sdpa: the layout is never read
    with pytest.raises(RuntimeError, match="no attention layer of the model read the shared-prefix layout"):
        completion_logps(trainer, grpo_batch(toy_prompts(tok), len(tok)))


@pytest.mark.parametrize("mode", ["auto", "on"])
def test_a_shared_pass_that_differs_from_trls_is_not_trained_on(tok, tmp_path, monkeypatch, caplog, mode):
    """The first shared forward of a run is checked against TRL's: a wrong layout (here every suffix's positions
    shifted by 3) turns the shared prefix off with auto — the loss is TRL's — and raises with on."""
    pack = sp.pack

    def shifted(*args, **kwargs):
        packed = pack(*args, **kwargs)
        packed.position_ids = packed.position_ids + 3 * (packed.shift_labels != -100)
        return packed

    monkeypatch.setattr(sp, "pack", shifted)
    model = toy_model(tok, "sdpa")
    batch = grpo_batch(toy_prompts(tok), len(tok))
    trainer = grpo_trainer(model, tok, tmp_path, mode)
    if mode == "on":
        with pytest.raises(RuntimeError, match=r"differ from TRL's by .* on average .* set shared_prefix: off"):
            loss_and_grads(trainer, batch)
        return
    with caplog.at_level(logging.WARNING, logger="recap.train.trainer"):
        loss, _ = loss_and_grads(trainer, batch)
    assert not trainer._shared and trainer._metrics["train"]["shared_prefix/active"] == [0.0]
    assert "TRL's unshared loss pass is used" in caplog.text
    reference, _ = loss_and_grads(grpo_trainer(model, tok, tmp_path, "off"), batch)
    torch.testing.assert_close(loss, reference, atol=1e-7, rtol=0)
