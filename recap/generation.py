"""Batched sampling with a Hugging Face causal LM: left padding, length-sorted batches, settings from a
config, a progress callback, and KV-cache reuse across continued conversations. Used by evaluation and
by the attacks; training generates inside TRL.

``generate`` continues each prompt once. ``generate_rounds`` continues each prompt, then keeps a prefix of
what the model wrote (for iterative prefill reset: its reasoning, the answer dropped), appends a suffix
and continues again, ``rounds`` times. The conversation grows by exact token concatenation — prompt ids,
the kept generated ids, suffix ids — so with ``reuse_prefix`` each batch's KV cache is carried from one
round to the next and only the suffix is read again (the dropped tokens stay in the cache, masked);
without it every round re-reads the whole conversation. Both read the same token ids in the same
batches, so greedy outputs agree (up to floating-point ties).

``generate`` also reads a prompt once when a batch holds several samples of it (``samples_per_prompt``).

``model`` may also be an *engine* (``recap.engines``: llama.cpp, vLLM) — any object with
``generate(prompts, sampling, seed, progress)`` — in which case the call is handed to it.
"""

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
    batch_size: int = field(default=64, metadata={"help": "Prompts per forward batch (sorted by length, so a batch holds prompts of similar length)."})
    reuse_prefix: bool = field(default=True, metadata={"help": "Read a shared prefix once: the prompt of several samples of the same prompt, and each batch's conversation from one round of iterative prefill reset to the next (its KV cache is carried over, so only the new text is read)."})


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    truncated: bool  # hit max_new_tokens without an end-of-sequence token
    ids: tuple[int, ...] = ()  # the new token ids, without the end-of-sequence token


def is_engine(model) -> bool:
    """An engine object (llama.cpp, vLLM) rather than a transformers model."""
    return not isinstance(model, torch.nn.Module) and callable(getattr(model, "generate", None)) \
        and hasattr(model, "engine_name")


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r))
            mask[i, width - len(r):] = 1
    return ids, mask


def _decode_kwargs(sampling: SamplingConfig) -> dict:
    if sampling.temperature == 0:
        return dict(do_sample=False)
    return dict(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)


class _TokenTicker:
    """A stopping criterion that never stops: it reports the share of ``max_new_tokens`` decoded so far in
    the current batch (every ``every`` tokens), so long batches move a progress bar."""

    def __init__(self, tick: Callable[[float], None], start: int, max_new: int, every: int = 8):
        self.tick, self.start, self.max_new, self.every = tick, start, max(1, max_new), every

    def __call__(self, input_ids, scores, **kwargs):
        done = input_ids.shape[1] - self.start
        if done % self.every == 0:
            self.tick(min(1.0, done / self.max_new))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def _sample(model, ids, mask, cache, sampling: SamplingConfig, pad: int, eos: int,
            tick: Callable[[float], None] | None = None):
    """One ``model.generate`` call; returns (sequences, cache, list of new-id lists, ended flags). ``tick``
    receives the share of the token budget decoded so far, every few tokens."""
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    extra = {"stopping_criteria": StoppingCriteriaList([_TokenTicker(tick, ids.shape[1], sampling.max_new_tokens)])} \
        if tick else {}
    out = model.generate(
        input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=sampling.max_new_tokens,
        pad_token_id=pad, eos_token_id=eos, cache=cache, use_cache=True, return_dict_in_generate=True,
        **_decode_kwargs(sampling), **extra)
    seqs = out.sequences.cpu()
    news, ended = [], []
    for r in range(len(ids)):
        new = seqs[r, ids.shape[1]:].tolist()
        stop = eos in new
        if stop:
            new = new[: new.index(eos)]
        else:
            while new and new[-1] == pad and pad != eos:
                new.pop()
        news.append(new)
        ended.append(stop)
    return seqs, out.cache, news, ended


def _generation(tokenizer, new: list[int], ended: bool) -> Generation:
    return Generation(tokenizer.decode(new, skip_special_tokens=True), len(new), not ended, tuple(new))


def _pad_eos(tokenizer) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    return (tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos), eos


def _shared_prompt_cache(model, ids, mask, rows):
    """The KV cache of a batch whose rows repeat prompts (several samples per prompt): each distinct
    prompt is read once (all but its last token) and its cache copied to every row that holds it.
    None when all prompts of the batch differ. Identical prompts sort next to each other, so the
    samples of a prompt share a batch."""
    groups: dict[tuple, int] = {}
    inverse = [groups.setdefault(tuple(r), len(groups)) for r in rows]  # each row's distinct prompt
    if len(groups) == len(rows) or ids.shape[1] < 2:
        return None
    device = next(model.parameters()).device
    distinct = torch.tensor([inverse.index(g) for g in range(len(groups))])  # first row of each prompt
    u_ids, u_mask = ids[distinct, :-1].to(device), mask[distinct, :-1].to(device)
    positions = (u_mask.cumsum(-1) - 1).clamp(min=0)
    cache = model(input_ids=u_ids, attention_mask=u_mask, position_ids=positions, use_cache=True).cache
    cache.batch_select_indices(torch.tensor(inverse, device=device))
    return cache


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[str],
    sampling: SamplingConfig,
    seed: int = 0,
    progress: Callable[[float], None] | None = None,
) -> list[Generation]:
    """Continue each prompt text once. Prompts are tokenized exactly as TRL does for raw text
    (``tokenizer(text)``), sorted by length into batches, left-padded, and returned in input order.
    ``progress(n)`` adds ``n`` prompts done: fractions of a batch while it decodes, the rest when it ends."""
    if is_engine(model):
        return model.generate(prompts, sampling, seed=seed, progress=progress)
    torch.manual_seed(seed)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[Generation | None] = [None] * len(prompts)
    pad, eos = _pad_eos(tokenizer)
    for start in range(0, len(order), sampling.batch_size):
        idx = order[start: start + sampling.batch_size]
        rows = [encoded[i] for i in idx]
        ids, mask = _left_pad(rows, pad)
        cache = _shared_prompt_cache(model, ids, mask, rows) if sampling.reuse_prefix else None
        reported = [0.0]

        def tick(share: float, n: int = len(idx)) -> None:
            if progress and share * n > reported[0]:
                progress(share * n - reported[0])
                reported[0] = share * n
        _, _, news, ended = _sample(model, ids, mask, cache, sampling, pad, eos, tick if progress else None)
        for r, i in enumerate(idx):
            out[i] = _generation(tokenizer, news[r], ended[r])
        if progress and len(idx) > reported[0]:
            progress(len(idx) - reported[0])
    return out  # type: ignore[return-value]


@dataclass(frozen=True)
class Turn:
    """One round of a continued conversation: what the model read (as text, for the record) and wrote."""

    prompt_text: str
    generation: Generation


#: ``next_turn(round, row, previous generation) -> (characters of its text kept, text appended)``.
NextTurn = Callable[[int, int, Generation], tuple[int, str]]


def kept_tokens(tokenizer, generation: Generation, n_chars: int) -> tuple[int, str]:
    """How many of ``generation.ids`` make up the first ``n_chars`` characters of its text: the longest
    prefix of ids whose decoded text is a prefix of ``text[:n_chars]``, and the characters after it (part
    of a token that straddles the cut, e.g. the space fused with a closing tag), which the next round
    reads as text."""
    ids, target = list(generation.ids), generation.text[:n_chars]
    if n_chars >= len(generation.text):
        return len(ids), ""

    def decoded(j: int) -> str:
        return tokenizer.decode(ids[:j], skip_special_tokens=True) if j else ""

    lo, hi = 0, len(ids)  # decoded(lo) is a prefix of target; find the largest such j by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if target.startswith(decoded(mid)):
            lo = mid
        else:
            hi = mid - 1
    while lo and not target.startswith(decoded(lo)):  # decoding is not monotone in rare byte-level cases
        lo -= 1
    return lo, target[len(decoded(lo)):]


@torch.no_grad()
def generate_rounds(
    model,
    tokenizer,
    prompts: Sequence[str],
    next_turn: NextTurn,
    rounds: int,
    sampling: SamplingConfig,
    seeds: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[Turn]]:
    """Round 0 continues each prompt; round r ≥ 1 continues round r-1's conversation: its prompt ids, the
    ids of the first ``n`` characters the model wrote in round r-1 and the ids of the appended text, where
    ``(n, appended) = next_turn(r, i, previous generation)``. Returns one list of ``Turn`` per round, in
    input order. ``seeds[r]`` seeds round r (each batch adds its offset); ``progress(round, n)`` is called
    after each batch of each round.

    With ``sampling.reuse_prefix`` the batch's KV cache is kept between rounds: positions that are not
    part of the conversation (left padding, the dropped end of a generation, padding after an
    end-of-sequence token, the end token itself) stay in the cache but are masked out, and position ids
    follow the mask, so each row sees exactly its own conversation. Rows keep their batch across rounds in
    both modes.
    """
    seeds = list(seeds) if seeds is not None else [0] * (rounds + 1)
    if len(seeds) != rounds + 1:
        raise ValueError(f"need {rounds + 1} seeds (one per round), got {len(seeds)}")
    if is_engine(model):
        if hasattr(model, "generate_rounds"):
            return model.generate_rounds(prompts, next_turn, rounds, sampling, seeds, progress)
        return _engine_rounds(model, prompts, next_turn, rounds, sampling, seeds, progress)
    pad, eos = _pad_eos(tokenizer)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[list[Turn | None]] = [[None] * len(prompts) for _ in range(rounds + 1)]
    for b, start in enumerate(range(0, len(order), sampling.batch_size)):
        idx = order[start: start + sampling.batch_size]
        convo = [list(encoded[i]) for i in idx]  # each row's conversation so far, as token ids
        texts = [prompts[i] for i in idx]
        ids, mask = _left_pad(convo, pad)
        cache = None
        for r in range(rounds + 1):
            if r:
                kept, added_ids = [], []
                for row, i in enumerate(idx):
                    previous = out[r - 1][i].generation  # type: ignore[union-attr]
                    n_chars, appended = next_turn(r, i, previous)
                    n_ids, leftover = kept_tokens(tokenizer, previous, n_chars)
                    kept.append(n_ids)
                    added_ids.append(tokenizer(leftover + appended, add_special_tokens=False)["input_ids"])
                    convo[row] += last_new[row][:n_ids] + added_ids[-1]
                    texts[row] += previous.text[:n_chars] + appended
                if sampling.reuse_prefix:
                    # Keep everything read and written so far; mask what is not conversation.
                    block, block_mask = _left_pad(added_ids, pad)
                    gen_mask = torch.zeros((len(idx), seqs.shape[1] - ids.shape[1]), dtype=torch.long)
                    for row, n_ids in enumerate(kept):
                        gen_mask[row, :n_ids] = 1
                    ids = torch.cat([seqs, block], dim=1)
                    mask = torch.cat([mask, gen_mask, block_mask], dim=1)
                else:
                    ids, mask = _left_pad(convo, pad)
                    cache = None
            torch.manual_seed(seeds[r] + b)
            reported = [0.0]

            def tick(share: float, r: int = r, n: int = len(idx)) -> None:
                if share * n > reported[0]:
                    progress(r, share * n - reported[0])  # type: ignore[misc]
                    reported[0] = share * n
            seqs, cache, last_new, ended = _sample(model, ids, mask, cache if sampling.reuse_prefix else None,
                                                   sampling, pad, eos, tick if progress else None)
            for row, i in enumerate(idx):
                out[r][i] = Turn(texts[row], _generation(tokenizer, last_new[row], ended[row]))
            if progress and len(idx) > reported[0]:
                progress(r, len(idx) - reported[0])
        del cache
    return out  # type: ignore[return-value]


def _engine_rounds(engine, prompts, next_turn, rounds, sampling, seeds, progress) -> list[list[Turn]]:
    """Rounds on an engine, at the text level: each round's prompt is the previous round's prompt, the kept
    part of its completion and the appended text (engines such as llama.cpp and vLLM reuse a shared
    prefix's cache themselves)."""
    texts = list(prompts)
    out: list[list[Turn]] = []
    for r in range(rounds + 1):
        if r:
            nxt = []
            for i, (t, turn) in enumerate(zip(texts, out[-1])):
                n_chars, appended = next_turn(r, i, turn.generation)
                nxt.append(t + turn.generation.text[:n_chars] + appended)
            texts = nxt
        gens = engine.generate(texts, sampling, seed=seeds[r],
                               progress=(lambda n, r=r: progress(r, n)) if progress else None)
        out.append([Turn(t, g) for t, g in zip(texts, gens)])
    return out
