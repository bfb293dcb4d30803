"""The miniature world's tokenizer, model and supervised pre-training.

A word-level ``tokenizers`` vocabulary wrapped in a ``PreTrainedTokenizerFast`` with a chat template
in the DeepSeek-R1-Distill style (the generation prompt opens ``<think>`` for you), and a ~1M
parameter Llama-architecture ``transformers`` model trained from scratch with a plain loop (nanoGPT
style) to think in ``<think> … </think>`` and then answer. Everything RL and evaluation touch is a
regular Hugging Face tokenizer and model saved with ``save_pretrained``.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from recap.toy import world

# R1-distill style: a BOS-free template whose generation prompt already opens the think block.
CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'user' %}<user> {{ m['content'] }} "
    "{% elif m['role'] == 'assistant' %}<assistant> <think> {{ m['content'] }} <eos> {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<assistant> <think>{% endif %}"
)
SPECIAL = ["<pad>", "<unk>", "<eos>"]
MARKERS = ["<user>", "<assistant>", world.THINK_OPEN, world.THINK_CLOSE]


def _pre_tokenizer():
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation("isolated")])


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The world's word-level tokenizer. Think tags are ordinary (non-special) added tokens so that
    TRL's ``skip_special_tokens=True`` decoding keeps them for the reward."""
    pre = _pre_tokenizer()
    words: set[str] = set()
    for w in world.vocabulary():
        if w in MARKERS:
            continue
        words.update(piece.lower() for piece, _ in pre.pre_tokenize_str(w))
    vocab = {tok: i for i, tok in enumerate([*SPECIAL, *MARKERS, *sorted(words)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<eos>",
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )
    tok.add_tokens(MARKERS)  # registered as added (non-special) tokens: matched before pre-tokenisation
    return tok


@dataclass
class ToyModelConfig:
    """Size of the miniature model (Llama architecture, tied embeddings)."""

    hidden_size: int = field(default=128, metadata={"range": "[1, inf)", "help": "Model width."})
    num_layers: int = field(default=4, metadata={"range": "[1, inf)", "help": "Decoder layers."})
    num_heads: int = field(default=4, metadata={"range": "[1, inf)", "help": "Attention heads."})
    intermediate_size: int = field(default=384, metadata={"range": "[1, inf)", "help": "MLP width."})
    max_position_embeddings: int = field(
        default=512, metadata={"range": "[1, inf)", "help": "Longest sequence (tokens)."}
    )


def build_model(tokenizer: PreTrainedTokenizerFast, cfg: ToyModelConfig, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = None
    return model


@dataclass
class PretrainConfig:
    """Supervised pre-training of the miniature base model (what makes it a "reasoning model")."""

    steps: int = field(default=600, metadata={"range": "[1, inf)", "help": "Optimizer steps."})
    batch_size: int = field(default=64, metadata={"range": "[1, inf)", "help": "Sequences per step."})
    lr: float = field(
        default=2e-3, metadata={"range": "(0, inf)", "help": "Peak learning rate (cosine decay, 5% warm-up)."}
    )
    corpus_size: int = field(
        default=20000, metadata={"range": "[1, inf)", "help": "Supervised examples drawn from the world."}
    )
    p_flawed: float = field(
        default=0.15,
        metadata={
            "range": "[0, 1]",
            "help": "Share of harmful/benign examples whose reasoning is counter-aligned and followed to "
            "the misaligned answer: what makes the base brittle under prefill.",
        },
    )
    p_wait: float = field(
        default=0.05,
        metadata={
            "range": "[0, 1]",
            "help": "Share of harmful/benign examples with a flawed start and a self-correction opened by one "
            "of the world's reflection cues ('wait ,', 'hold on ,', …). Must stay small (≤5%): RL "
            "amplifies a latent recovery, it does not create one.",
        },
    )
    p_reconsider: float = field(
        default=0.03,
        metadata={
            "range": "[0, 1]",
            "help": "Share of harmful/benign examples whose complete flawed reasoning closes and whose answer "
            "still turns aligned after a short reconsideration ('on reflection , …'): real reasoning "
            "models rarely answer against their own reasoning, so this stays below p_wait "
            "(docs/miniature-world.md).",
        },
    )
    task_share: float = field(
        default=0.4, metadata={"range": "[0, 1]", "help": "Share of arithmetic examples in the corpus."}
    )
    seed: int = field(
        default=0, metadata={"range": "[0, 4294967295]", "help": "Seed of the corpus and of the initialisation."}
    )


def supervised_corpus(cfg: PretrainConfig) -> list[tuple[str, str]]:
    rng = random.Random(cfg.seed)
    harmful, benign, tasks = world.harmful_requests(), world.benign_requests(), world.task_requests()
    out = []
    for _ in range(cfg.corpus_size):
        if rng.random() < cfg.task_share:
            req = rng.choice(tasks)
        else:
            req = rng.choice(harmful if rng.random() < 0.5 else benign)
        out.append(world.supervised_example(req, rng, cfg.p_flawed, cfg.p_wait, cfg.p_reconsider))
    return out


def encode_pair(tokenizer, user: str, completion: str) -> tuple[list[int], int]:
    """Token ids of prompt + completion + eos, and the prompt length (loss starts there)."""
    from recap.inference.chat import render_prompt

    prompt = render_prompt(tokenizer, [{"role": "user", "content": user}])
    p_ids = tokenizer(prompt)["input_ids"]
    c_ids = tokenizer(" " + completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return p_ids + c_ids, len(p_ids)


# Pre-training runs on one torch thread, whatever the machine: the number of threads changes how matrix
# products are summed, so a base trained on 2 threads (an idle machine) differs from one trained on 1 (a busy
# one), and with it every number of the demo. One thread is also the fastest beside a busy core.
PRETRAIN_THREADS = 1


def pretrain(cfg: PretrainConfig, model_cfg: ToyModelConfig, out_dir: str | Path, log=print):
    """Train the base model of the world, save model + tokenizer to ``out_dir`` and return them (on
    ``PRETRAIN_THREADS`` torch threads, so the same config gives the same base on an idle or a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(PRETRAIN_THREADS)
    try:
        return _pretrain(cfg, model_cfg, out_dir, log)
    finally:
        torch.set_num_threads(before)


def _pretrain(cfg: PretrainConfig, model_cfg: ToyModelConfig, out_dir: str | Path, log=print):
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, model_cfg, cfg.seed)
    encoded = [encode_pair(tokenizer, u, c) for u, c in supervised_corpus(cfg)]
    g = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, cfg.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))
    )
    model.train()
    t0 = time.time()
    for step in range(cfg.steps):
        idx = torch.randint(len(encoded), (cfg.batch_size,), generator=g).tolist()
        batch = [encoded[i] for i in idx]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.full((len(batch), width), tokenizer.pad_token_id)
        labels = torch.full((len(batch), width), -100)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (ids, n_prompt) in enumerate(batch):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            labels[r, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
            mask[r, : len(ids)] = 1
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == cfg.steps - 1:
            log(f"pretrain step {step + 1}/{cfg.steps} loss {loss.item():.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    from recap.util.files import atomic_dir

    with atomic_dir(out_dir) as tmp:  # a crash mid-save never leaves a base model that loads
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return model, tokenizer
