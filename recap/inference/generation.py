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

Decoding (``SamplingConfig.decoder``). The default, ``continuous``, is recap's own decode loop over the
model's forward pass: a row leaves the batch as soon as it ends (EOS or its token budget), queued prompts
take the free places (continuous batching: the batch stays full until the queue is empty), and the KV cache
is written into preallocated buffers instead of being concatenated at every step. ``batch`` is the same loop
without refilling (each batch shrinks to its end); ``hf`` is one transformers ``generate`` call per batch,
which computes every row until the batch's longest one ends. Greedy outputs are the same in all three
(each row reads exactly its own tokens; padding is masked); sampled outputs are seeded and repeatable, but
the decoders share the random draws out differently, so the same seed gives different samples in each.
The loop decodes greedily or with temperature / top-p, plus the model's own ``repetition_penalty``; a model
whose generation config asks for other logits processors, or whose cache is not a plain dynamic cache
(sliding-window layers, …), goes through ``hf``.

``model`` may also be an *engine* (``recap.inference.engines``: llama.cpp, vLLM) — any object with
``generate(prompts, sampling, seed, progress)`` — in which case the call is handed to it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass
class SamplingConfig:
    """Decoding settings for evaluation."""

    temperature: float = field(
        default=1.0, metadata={"range": "[0, inf)", "help": "Sampling temperature; 0 means greedy."}
    )
    top_p: float = field(default=1.0, metadata={"range": "(0, 1]", "help": "Nucleus sampling mass."})
    max_new_tokens: int = field(default=64, metadata={"range": "[1, inf)", "help": "Longest continuation, in tokens."})
    batch_size: int = field(
        default=64,
        metadata={
            "range": "[1, inf)",
            "help": "Most rows decoded at once (prompts are sorted by length, so a batch holds prompts of similar length; with the continuous decoder, queued prompts join as rows end).",
        },
    )
    reuse_prefix: bool = field(
        default=True,
        metadata={
            "help": "Read a shared prefix once: the prompt of several samples of the same prompt, and each batch's conversation from one round of iterative prefill reset to the next (its KV cache is carried over, so only the new text is read)."
        },
    )
    decoder: str = field(
        default="continuous",
        metadata={
            "help": "How a transformers model decodes: 'continuous' (finished rows leave the batch and queued prompts take their place; the KV cache grows in place), 'batch' (finished rows leave the batch, no refill), or 'hf' (one transformers generate call per batch; every row is computed until the batch's longest ends). Greedy outputs agree; the same seed samples differently in each."
        },
    )


@dataclass(frozen=True)
class Generation:
    text: str
    n_tokens: int
    truncated: bool  # hit max_new_tokens without an end-of-sequence token
    ids: tuple[int, ...] = ()  # the new token ids, without the end-of-sequence token
    context: tuple[int, ...] = ()  # the last prompt ids the text was decoded after (see decode_continuation)


def is_engine(model) -> bool:
    """An engine object (llama.cpp, vLLM) rather than a transformers model."""
    return (
        not isinstance(model, torch.nn.Module)
        and callable(getattr(model, "generate", None))
        and hasattr(model, "engine_name")
    )


def _left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r))
            mask[i, width - len(r) :] = 1
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


def _sample(
    model, ids, mask, cache, sampling: SamplingConfig, pad: int, eos: int, tick: Callable[[float], None] | None = None
):
    """One ``model.generate`` call; returns (sequences, cache, list of new-id lists, ended flags). ``tick``
    receives the share of the token budget decoded so far, every few tokens."""
    from transformers import StoppingCriteriaList

    device = next(model.parameters()).device
    extra = (
        {"stopping_criteria": StoppingCriteriaList([_TokenTicker(tick, ids.shape[1], sampling.max_new_tokens)])}
        if tick
        else {}
    )
    out = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        max_new_tokens=sampling.max_new_tokens,
        pad_token_id=pad,
        eos_token_id=eos,
        cache=cache,
        use_cache=True,
        return_dict_in_generate=True,
        **_decode_kwargs(sampling),
        **extra,
    )
    seqs = out.sequences.cpu()
    news, ended = [], []
    for r in range(len(ids)):
        new = seqs[r, ids.shape[1] :].tolist()
        stop = eos in new
        if stop:
            new = new[: new.index(eos)]
        else:
            while new and new[-1] == pad and pad != eos:
                new.pop()
        news.append(new)
        ended.append(stop)
    return seqs, out.cache, news, ended


#: Prompt tokens a continuation is decoded after (enough for a byte-level merge or a word-level join).
CONTEXT_TOKENS = 4


def decode_continuation(tokenizer, context: Sequence[int], new: Sequence[int]) -> str:
    """The text ``new`` adds after ``context``, decoded in context: a tokenizer whose decoder joins words
    with spaces (word-level, SentencePiece's leading '▁') writes the boundary space only when it sees the
    token before, so decoding the continuation alone would glue it to the prompt ("being" + "helpful").
    Falls back to decoding ``new`` alone when the context's text is not a prefix of the joint text."""
    if not context:
        return tokenizer.decode(list(new), skip_special_tokens=True)
    head = tokenizer.decode(list(context), skip_special_tokens=True)
    full = tokenizer.decode([*context, *new], skip_special_tokens=True)
    return full[len(head) :] if full.startswith(head) else tokenizer.decode(list(new), skip_special_tokens=True)


def _generation(tokenizer, new: list[int], ended: bool, prompt: Sequence[int] = ()) -> Generation:
    context = tuple(prompt[-CONTEXT_TOKENS:])
    return Generation(decode_continuation(tokenizer, context, new), len(new), not ended, tuple(new), context)


def _pad_eos(tokenizer) -> tuple[int, int]:
    eos = tokenizer.eos_token_id
    return (tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos), eos


def _shared_prompt_cache(model, ids, mask, rows, cache=None):
    """The KV cache of a batch whose rows repeat prompts (several samples per prompt): each distinct
    prompt is read once (all but its last token) and its cache copied to every row that holds it.
    None when all prompts of the batch differ. Identical prompts sort next to each other, so the
    samples of a prompt share a batch. ``cache``: an empty cache to fill (else the model makes one)."""
    groups: dict[tuple, int] = {}
    inverse = [groups.setdefault(tuple(r), len(groups)) for r in rows]  # each row's distinct prompt
    if len(groups) == len(rows) or ids.shape[1] < 2:
        return None
    device = next(model.parameters()).device
    distinct = torch.tensor([inverse.index(g) for g in range(len(groups))])  # first row of each prompt
    u_ids, u_mask = ids[distinct, :-1].to(device), mask[distinct, :-1].to(device)
    positions = (u_mask.cumsum(-1) - 1).clamp(min=0)
    if cache is None:
        cache = model(input_ids=u_ids, attention_mask=u_mask, position_ids=positions, use_cache=True).cache
    else:
        model(
            input_ids=u_ids, attention_mask=u_mask, position_ids=positions, use_cache=True, **{_cache_arg(model): cache}
        )
    cache.batch_select_indices(torch.tensor(inverse, device=device))
    return cache


def _cache_arg(model) -> str:
    """The forward argument that takes the KV cache (``cache`` in recent transformers, ``past_key_values``
    before)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


DECODERS = ("continuous", "batch", "hf")
#: Logits-processor settings of a model's generation config that the decode loop does not implement (a
#: model that sets one of them decodes with ``hf``).
_UNSUPPORTED = (
    "guidance_scale",
    "sequence_bias",
    "encoder_repetition_penalty",
    "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size",
    "bad_words_ids",
    "min_length",
    "min_new_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "remove_invalid_values",
    "exponential_decay_length_penalty",
    "suppress_tokens",
    "begin_suppress_tokens",
    "min_p",
    "typical_p",
    "epsilon_cutoff",
    "eta_cutoff",
    "watermarking_config",
    "renormalize_logits",
)
_CHUNK = 64  # positions a growing cache buffer adds when it is full


def _check_decoder(sampling: SamplingConfig) -> None:
    if sampling.decoder not in DECODERS:
        raise ValueError(f"SamplingConfig.decoder must be one of {', '.join(DECODERS)}, got {sampling.decoder!r}")


def loop_supported(model, sampling: SamplingConfig) -> bool:
    """Whether ``model`` decodes with recap's loop: a transformers causal LM whose cache layers are all plain
    dynamic ones and whose generation config asks for no logits processor beyond what the loop does."""
    from transformers import GenerationConfig

    if sampling.decoder == "hf" or not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
        return False
    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - a config the cache cannot read: leave it to transformers
        return False
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return False
    cfg, default = getattr(model, "generation_config", None), GenerationConfig()
    return cfg is None or all(getattr(cfg, k, None) == getattr(default, k, None) for k in _UNSUPPORTED)


class _GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are written into preallocated buffers (grown ``_CHUNK``
    positions at a time) instead of being concatenated at every step; ``keys``/``values`` are views of the
    filled columns ``[start, end)``. Left columns no row needs any more are dropped by moving ``start``."""

    def lazy_initialization(self, key_states, value_states) -> None:
        super().lazy_initialization(key_states, value_states)
        self._k = self._v = None
        self.start = self.end = 0

    def _view(self) -> None:
        self.keys, self.values = self._k[..., self.start : self.end, :], self._v[..., self.start : self.end, :]

    def fill(self, keys: torch.Tensor, values: torch.Tensor, room: int = _CHUNK) -> None:
        """Hold exactly ``keys``/``values`` (batch, heads, length, dim), with ``room`` free columns after them."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        n = keys.shape[-2]
        self._k = keys.new_empty(keys.shape[:-2] + (n + room, keys.shape[-1]))
        self._v = values.new_empty(values.shape[:-2] + (n + room, values.shape[-1]))
        self._k[..., :n, :], self._v[..., :n, :] = keys, values
        self.start, self.end = 0, n
        self._view()

    def adopt(self, keys: torch.Tensor, values: torch.Tensor, end: int) -> None:
        """Use ``keys``/``values`` (batch, heads, capacity, dim) as the buffers, filled up to column ``end``."""
        if not self.is_initialized:
            self.lazy_initialization(keys, values)
        self._k, self._v, self.start, self.end = keys, values, 0, end
        self._view()

    def update(self, key_states, value_states, *args, **kwargs):
        n = key_states.shape[-2]
        if not self.is_initialized or self._k is None:
            self.fill(key_states, value_states)
            return self.keys, self.values
        if self.end + n > self._k.shape[-2]:
            self.fill(self.keys, self.values, room=n + max(_CHUNK, (self.end - self.start) // 4))
        self._k[..., self.end : self.end + n, :] = key_states
        self._v[..., self.end : self.end + n, :] = value_states
        self.end += n
        self._view()
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized and self._k is not None:
            self._k = self._k[:, :, self.start :].index_select(0, indices)
            self._v = self._v[:, :, self.start :].index_select(0, indices)
            self.start, self.end = 0, self.end - self.start
            self._view()

    def drop_left(self, n: int) -> None:
        self.start += n
        self._view()

    def crop(self, tokens_to_remove: int) -> None:
        super().crop(tokens_to_remove)
        if self.is_initialized and self._k is not None:
            self.end = self.start + self.keys.shape[-2]
            self._view()


def _growing_cache(model) -> DynamicCache:
    cache = DynamicCache(config=model.config)
    cache.layers = [_GrowingLayer() for _ in cache.layers]
    return cache


def _cache_of(
    rows: list[list[tuple[torch.Tensor, torch.Tensor]]], width: int, align: str
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the keys and values of several groups of rows put side by side in one batch of ``width``
    columns: each group's columns aligned to the right (``align='right'``) or to the left, the rest zeros (the
    attention mask hides them)."""
    out = []
    for per_group in zip(*rows):
        b = sum(k.shape[0] for k, _ in per_group)
        k0 = per_group[0][0]
        keys = k0.new_zeros((b, k0.shape[1], width + _CHUNK, k0.shape[3]))
        values = keys.clone()
        r = 0
        for k, v in per_group:
            n = k.shape[-2]
            cols = slice(width - n, width) if align == "right" else slice(0, n)
            keys[r : r + k.shape[0], :, cols], values[r : r + k.shape[0], :, cols] = k, v
            r += k.shape[0]
        out.append((keys, values))
    return out


def _set_cache(cache: DynamicCache, tensors, width: int) -> None:
    for layer, (k, v) in zip(cache.layers, tensors):
        layer.adopt(k, v, width)


def _pad_left(t: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (width - t.shape[1], 0), value=value)


class _Decoder:
    """recap's decode loop: the rows being decoded (left-padded token ids — each row's context and what it
    sampled —, attention mask, and a KV cache of every column but the last), stepped one token at a time.
    A row leaves the batch when it samples EOS or reaches its budget (``max_new_tokens``, or its own); ``admit`` adds rows (continuous
    batching). With ``keep`` a finished row's ids and cache are set aside, and ``assemble`` returns the whole
    batch as one ``generate`` would leave it (for the next round of a continued conversation)."""

    def __init__(
        self,
        model,
        sampling: SamplingConfig,
        pad: int,
        eos: int,
        report: Callable[[float], None] | None = None,
        keep: bool = False,
    ):
        from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

        self.model, self.sampling, self.pad, self.eos, self.report, self.keep = model, sampling, pad, eos, report, keep
        self.device = next(model.parameters()).device
        self.max_new = max(1, sampling.max_new_tokens)
        self.penalty = getattr(getattr(model, "generation_config", None), "repetition_penalty", None) or 1.0
        warpers = []
        if sampling.temperature and sampling.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(sampling.temperature))
        if sampling.temperature and sampling.top_p < 1.0:
            warpers.append(TopPLogitsWarper(sampling.top_p))
        self.warpers = LogitsProcessorList(warpers)
        self.keys: list = []  # the caller's key of each row in the batch
        self.new: list[list[int]] = []  # what each row sampled so far
        self.budgets: list[int] = []  # each row's token budget
        self.ids = self.mask = self.cache = None
        self.done: dict = {}  # key -> (new ids without EOS, ended with EOS)
        self.parked: dict = {}  # key -> (ids row, [(keys, values) per layer]) with ``keep``
        self.steps, self.reported = 0, 0.0
        self.cache_arg = _cache_arg(model)

    @property
    def active(self) -> int:
        return len(self.keys)

    def _forward(self, ids, mask, positions, cache) -> torch.Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_arg: cache},
        )
        return out.logits[:, -1].to(dtype=torch.float32)

    def _pick(self, ids, mask, logits) -> torch.Tensor:
        if self.penalty != 1.0:
            from transformers import RepetitionPenaltyLogitsProcessor

            logits = RepetitionPenaltyLogitsProcessor(self.penalty, prompt_ignore_length=(mask != 0).int().argmax(1))(
                ids, logits
            )
        if not self.sampling.temperature:
            return logits.argmax(-1)
        probs = torch.softmax(self.warpers(ids, logits), dim=-1)
        return torch.multinomial(probs, num_samples=1).squeeze(1)

    def admit(
        self,
        keys: Sequence,
        ids: torch.Tensor,
        mask: torch.Tensor,
        cache: DynamicCache | None = None,
        budgets: Sequence[int] | None = None,
    ) -> None:
        """Read the left-padded rows ``ids`` (``cache`` may already hold their first columns), sample each row's
        first token and add the rows to the batch; ``budgets``: each row's token budget (else ``max_new_tokens``)."""
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = cache if cache is not None else _growing_cache(self.model)
        cached = cache.get_seq_length()
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        logits = self._forward(ids[:, cached:], mask, positions[:, cached:], cache)
        tokens = self._pick(ids, mask, logits)
        ids = torch.cat([ids, tokens[:, None]], dim=1)
        mask = torch.cat([mask, mask.new_ones((len(ids), 1))], dim=1)
        if self.ids is None:
            self.ids, self.mask, self.cache = ids, mask, cache
        else:  # side by side, each right-aligned: the narrower rows get masked columns on the left
            width = max(ids.shape[1], self.ids.shape[1])
            tensors = _cache_of(
                [[(layer.keys, layer.values) for layer in c.layers] for c in (self.cache, cache)],
                width - 1,
                align="right",
            )
            _set_cache(self.cache, tensors, width - 1)
            self.ids = torch.cat([_pad_left(self.ids, width, self.pad), _pad_left(ids, width, self.pad)])
            self.mask = torch.cat([_pad_left(self.mask, width, 0), _pad_left(mask, width, 0)])
        self.keys += list(keys)
        self.new += [[] for _ in keys]
        self.budgets += [max(1, b) for b in budgets] if budgets is not None else [self.max_new] * len(keys)
        self._record(tokens.tolist(), start=len(self.keys) - len(keys))

    def step(self) -> None:
        """Decode one token for every row of the batch."""
        positions = self.mask.sum(-1, keepdim=True) - 1
        logits = self._forward(self.ids[:, -1:], self.mask, positions, self.cache)
        tokens = self._pick(self.ids, self.mask, logits)
        self.ids = torch.cat([self.ids, tokens[:, None]], dim=1)
        self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.ids), 1))], dim=1)
        self.steps += 1
        self._record(tokens.tolist())

    def _record(self, tokens: list[int], start: int = 0) -> None:
        finished = []
        for row, t in enumerate(tokens, start):
            if t == self.eos:
                finished.append(row)
                self.done[self.keys[row]] = (self.new[row], True)
            else:
                self.new[row].append(t)
                if len(self.new[row]) >= self.budgets[row]:
                    finished.append(row)
                    self.done[self.keys[row]] = (self.new[row], False)
        if finished:
            self._drop(finished)
        if self.report and (finished or self.steps % 8 == 0):
            share = len(self.done) + sum(min(1.0, len(n) / b) for n, b in zip(self.new, self.budgets))
            if share > self.reported:
                self.report(share - self.reported)
                self.reported = share

    def _drop(self, rows: list[int]) -> None:
        if self.keep:
            for row in rows:
                width = self.ids.shape[1] - 1  # the last column (EOS or the last token) was never read
                self.parked[self.keys[row]] = (
                    self.ids[row],
                    [
                        (layer.keys[row : row + 1, :, :width].clone(), layer.values[row : row + 1, :, :width].clone())
                        for layer in self.cache.layers
                    ],
                )
        gone = set(rows)
        stay = [r for r in range(len(self.keys)) if r not in gone]
        self.keys = [self.keys[r] for r in stay]
        self.new = [self.new[r] for r in stay]
        self.budgets = [self.budgets[r] for r in stay]
        if not stay:
            self.ids = self.mask = self.cache = None
            return
        index = torch.tensor(stay, device=self.device)
        self.ids, self.mask = self.ids[index], self.mask[index]
        self.cache.batch_select_indices(index)
        first = int(self.mask.any(0).int().argmax())  # columns that are padding in every row left
        if first and not self.keep:
            self.ids, self.mask = self.ids[:, first:], self.mask[:, first:]
            for layer in self.cache.layers:
                layer.drop_left(first)

    def assemble(self, keys: Sequence) -> tuple[torch.Tensor, DynamicCache]:
        """With ``keep``, once every row is done: the rows in ``keys`` order, right-padded to one width, as
        ``(sequences, cache)`` — the layout one ``generate`` call leaves (padding after EOS, masked later)."""
        rows = [self.parked[k] for k in keys]
        width = max(ids.shape[0] for ids, _ in rows)
        seqs = torch.stack([torch.nn.functional.pad(ids, (0, width - ids.shape[0]), value=self.pad) for ids, _ in rows])
        cache = _growing_cache(self.model)
        _set_cache(cache, _cache_of([layers for _, layers in rows], width - 1, align="left"), width - 1)
        return seqs.cpu(), cache


def _loop_sample(
    model, ids, mask, cache, sampling: SamplingConfig, pad: int, eos: int, tick: Callable[[float], None] | None = None
):
    """``_sample`` with recap's decode loop (rows leave as they end; no refill, so the batch keeps its rows
    for the next round)."""
    n = len(ids)
    dec = _Decoder(
        model,
        sampling,
        pad,
        eos,
        report=(lambda k: tick(min(1.0, (dec.reported + k) / n))) if tick else None,
        keep=True,
    )
    if cache is not None and not all(isinstance(layer, _GrowingLayer) for layer in cache.layers):
        cache = None  # a cache made elsewhere: read the whole batch again
    dec.admit(list(range(n)), ids, mask, cache)
    while dec.active:
        dec.step()
    seqs, cache = dec.assemble(range(n))
    news = [dec.done[r][0] for r in range(n)]
    ended = [dec.done[r][1] for r in range(n)]
    return seqs, cache, news, ended


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
    (``tokenizer(text)``), sorted by length, decoded ``batch_size`` at a time, left-padded, and returned in
    input order. ``progress(n)`` adds ``n`` prompts done: fractions of a prompt's token budget while it
    decodes, the rest when it ends."""
    if is_engine(model):
        return model.generate(prompts, sampling, seed=seed, progress=progress)
    _check_decoder(sampling)
    torch.manual_seed(seed)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    pad, eos = _pad_eos(tokenizer)
    if loop_supported(model, sampling):
        return _generate_loop(model, tokenizer, encoded, order, sampling, pad, eos, progress)
    out: list[Generation | None] = [None] * len(prompts)
    for start in range(0, len(order), sampling.batch_size):
        idx = order[start : start + sampling.batch_size]
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
            out[i] = _generation(tokenizer, news[r], ended[r], encoded[i])
        if progress and len(idx) > reported[0]:
            progress(len(idx) - reported[0])
    return out  # type: ignore[return-value]


def _generate_loop(model, tokenizer, encoded, order, sampling, pad, eos, progress) -> list[Generation]:
    """``generate`` with recap's decode loop."""
    done = _decode_queue(model, encoded, order, sampling, pad, eos, progress)
    return [_generation(tokenizer, *done[i], encoded[i]) for i in range(len(encoded))]


def _decode_queue(model, encoded, order, sampling, pad, eos, progress, budgets=None) -> dict:
    """Decode the token-id rows ``encoded`` in ``order`` with recap's loop; ``{row: (new ids, ended)}``.
    ``continuous``: whenever a quarter of the batch's places are free, the next rows of the queue are read
    and join the batch. ``batch``: the next rows start when the whole batch has ended."""
    dec = _Decoder(model, sampling, pad, eos, report=progress)
    size, queue = max(1, sampling.batch_size), list(order)
    while queue or dec.active:
        free = size - dec.active
        if queue and (not dec.active or (sampling.decoder == "continuous" and free >= max(1, size // 4))):
            idx, queue = queue[:free], queue[free:]
            rows = [encoded[i] for i in idx]
            ids, mask = _left_pad(rows, pad)
            cache = _growing_cache(model)
            if sampling.reuse_prefix:
                cache = _shared_prompt_cache(model, ids, mask, rows, cache) or cache
            dec.admit(idx, ids, mask, cache, budgets=[budgets[i] for i in idx] if budgets is not None else None)
        else:
            dec.step()
    if progress and len(order) > dec.reported:
        progress(len(order) - dec.reported)
    return dec.done


@torch.no_grad()
def generate_ids(
    model,
    rows: Sequence[Sequence[int]],
    sampling: SamplingConfig,
    pad: int,
    eos: int,
    budgets: Sequence[int] | None = None,
    seed: int | None = None,
) -> list[tuple[list[int], bool]]:
    """Continue token-id rows (no tokenizer; e.g. a trainer's rollouts): ``(new ids without EOS, ended with
    EOS)`` per row, in input order. ``budgets`` gives each row its own token budget in place of
    ``max_new_tokens``; a row that reaches its budget leaves the batch, so shorter budgets cost less.
    Decodes with recap's loop, rows sorted by length; ``seed`` seeds torch first."""
    _check_decoder(sampling)
    if not loop_supported(model, sampling):
        raise ValueError(
            "generate_ids needs a transformers model the decode loop supports (decoder not 'hf', plain "
            "dynamic cache, no extra logits processors)"
        )
    if seed is not None:
        torch.manual_seed(seed)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    done = _decode_queue(model, [list(r) for r in rows], order, sampling, pad, eos, None, budgets)
    return [done[i] for i in range(len(rows))]


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
        return decode_continuation(tokenizer, generation.context, ids[:j]) if j else ""

    lo, hi = 0, len(ids)  # decoded(lo) is a prefix of target; find the largest such j by bisection
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if target.startswith(decoded(mid)):
            lo = mid
        else:
            hi = mid - 1
    while lo and not target.startswith(decoded(lo)):  # decoding is not monotone in rare byte-level cases
        lo -= 1
    return lo, target[len(decoded(lo)) :]


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
    _check_decoder(sampling)
    sample = _loop_sample if loop_supported(model, sampling) else _sample
    pad, eos = _pad_eos(tokenizer)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    out: list[list[Turn | None]] = [[None] * len(prompts) for _ in range(rounds + 1)]
    for b, start in enumerate(range(0, len(order), sampling.batch_size)):
        idx = order[start : start + sampling.batch_size]
        convo = [list(encoded[i]) for i in idx]  # each row's conversation so far, as token ids
        texts = [prompts[i] for i in idx]
        ids, mask = _left_pad(convo, pad)
        cache = seqs = last_new = None  # set by round 0's sampling, read from round 1 on
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

            seqs, cache, last_new, ended = sample(
                model,
                ids,
                mask,
                cache if sampling.reuse_prefix else None,
                sampling,
                pad,
                eos,
                tick if progress else None,
            )
            for row, i in enumerate(idx):
                out[r][i] = Turn(texts[row], _generation(tokenizer, last_new[row], ended[row], convo[row]))
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
        gens = engine.generate(
            texts, sampling, seed=seeds[r], progress=(lambda n, r=r: progress(r, n)) if progress else None
        )
        out.append([Turn(t, g) for t, g in zip(texts, gens)])
    return out
