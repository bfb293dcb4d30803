"""Batched sampling with a Hugging Face causal LM: left padding, length-sorted batches, settings from a
config, a progress callback. Used by evaluation and by the attacks; training generates inside TRL."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class SamplingConfig:
    """Decoding settings for evaluation."""

    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature; 0 means greedy."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest continuation, in tokens."})
    batch_size: int = field(default=64, metadata={"help": "Prompts per forward batch."})


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    truncated: bool  # hit max_new_tokens without an end-of-sequence token


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> list[Generation]:
    """Continue each prompt text once. Prompts are tokenized exactly as TRL does for raw text
    (``tokenizer(text)``), sorted by length into batches, left-padded, and returned in input order."""
    torch.manual_seed(seed)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[Generation | None] = [None] * len(prompts)
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = next(model.parameters()).device
    for start in range(0, len(order), sampling.batch_size):
        idx = order[start: start + sampling.batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for r, i in enumerate(idx):
            ids[r, width - len(encoded[i]):] = torch.tensor(encoded[i])
            mask[r, width - len(encoded[i]):] = 1
        kwargs = dict(do_sample=False) if sampling.temperature == 0 else dict(
            do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        seqs = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=sampling.max_new_tokens,
            pad_token_id=pad, eos_token_id=eos, **kwargs)
        for r, i in enumerate(idx):
            new = seqs[r, width:].tolist()
            ended = eos in new
            if ended:
                new = new[: new.index(eos)]
            else:
                while new and new[-1] == pad:
                    new.pop()
            out[i] = Generation(tokenizer.decode(new, skip_special_tokens=True), len(new), not ended)
        if progress:
            progress(len(idx))
    return out  # type: ignore[return-value]
