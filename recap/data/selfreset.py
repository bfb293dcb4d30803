"""Self-ReSET: the policy's own unsafe reasoning, cut at its first unsafe token by a streaming guard and
re-rolled as the start of its own GRPO group.

Self-ReSET (arXiv 2605.08936; code github.com/Ing1024/Self-ReSET) trains a reasoning model to recover from
the mistakes it actually makes, in four moves that this module reproduces:

1. **Where to cut** (``stream_cut``). A streaming guard labels every token of a rollout's *reasoning*
   (``safe``, ``unsafe`` or ``controversial``) in one forward pass. A rollout is unsafe when two
   consecutive tokens are risky (unsafe or controversial); it is cut at its first risky token, that token
   included (the reference launch script's setting). Extending the cut to the next punctuation mark
   (``extend_to_punctuation``, the reference code's ``--enable-punctuation-after``) is an option, off by
   default. Only the reasoning is read: text after the closing think tag is never cut.
   Token judges (``TokenJudge``): ``ToyTokenJudge`` (the miniature world's exact judge) and
   ``StreamGuard`` (a guard model with a token-level head, e.g. Qwen3Guard-Stream). The sentence judge
   of ``recap.data.onpolicy`` stays available (``cut: sentence``).
2. **How cuts are used** (``RerollQueue``, ``SelfResetPlanner``). Each cut goes into a bounded FIFO queue
   (256 by default; the oldest leave first). At every generation round the queue is emptied first: each
   item becomes a prompt group of its own (``num_generations`` rollouts) whose prompt is the user's
   request with the cut reasoning as a prefill, so the reused prefix is part of the prompt and never in
   the loss; an optional ``wait`` text follows the cut. Fresh prompts fill the rest of the round; fresh
   prompts displaced by re-rolls wait for the next round, none is skipped. Re-rolls add steps to the run
   (``reroll_steps: add``): it ends once every fresh prompt of its ``max_steps`` has been trained, as the
   reference's ``train_epoch.py`` runs until its fresh-prompt epochs are done. A re-rolled group (a cut or
   a re-queued prompt) is never cut again (the reference code marks both as already rolled).
3. **Benign prompts** whose rollouts refuse (more than ``refusal_threshold`` of a group) can be re-queued
   *whole*: the plain prompt again, no cut (``requeue_refusals``, the reference code's
   ``--refusal-in-buffer``; off by default, as in its launch script).
4. Groups whose rewards are all equal (no reward spread) are neither cut nor re-queued, as in the
   reference code, which scans only the groups the trainer keeps.

Rewards are the run's judges (binary guard rewards in ``configs/self-reset.yaml``); GRPO, dynamic
sampling and the rest of the recipe are the trainer's (``recap.train``).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol

from recap.data.onpolicy import first_unsafe_cut, step_judge_for
from recap.inference.chat import split_reasoning
from recap.toy import world

SAFE, UNSAFE, CONTROVERSIAL = "safe", "unsafe", "controversial"
LEVELS = (SAFE, UNSAFE, CONTROVERSIAL)
# What counts as punctuation when a cut is extended to the end of its phrase (the reference code's set).
PUNCTUATION = frozenset(string.punctuation) | frozenset("。！？，；：、…—「」『』（）【】《》")
CUT_MODES = ("stream", "sentence")
CUT_STARTS = ("first", "pair")
REROLL_STEPS = ("add", "displace")


# --------------------------------------------------------------------------------------------
# Token-level risk and the streaming cut
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenRisk:
    """One token of a reasoning: its characters ``reasoning[start:end]`` and the guard's level."""

    start: int
    end: int
    level: str  # safe | unsafe | controversial


class TokenJudge(Protocol):
    """Labels every token of each reasoning (one pass over the batch): ``risks(request, reasonings)`` →
    one list of ``TokenRisk`` per reasoning, in order, covering only the reasoning's own characters."""

    name: str

    def risks(self, request: str, reasonings: Sequence[str]) -> list[list[TokenRisk]]: ...


@dataclass(frozen=True)
class StreamCut:
    """Where a reasoning was cut: ``prefix`` is kept (trailing whitespace stripped)."""

    prefix: str
    first_token: int  # index of the first risky token (where the cut starts)
    end_token: int  # index of the last kept token (the punctuation the cut was extended to)
    n_tokens: int  # tokens of the whole reasoning


def stream_cut(
    reasoning: str,
    risks: Sequence[TokenRisk],
    risky: Sequence[str] = (UNSAFE, CONTROVERSIAL),
    start: str = "first",
    extend_to_punctuation: bool = False,
    lookahead: int = 100,
) -> StreamCut | None:
    """Cut ``reasoning`` the way Self-ReSET does, or None when it is safe.

    The reasoning is unsafe when two consecutive tokens have a level in ``risky``. The cut starts at the
    first risky token (``start="first"``, the reference default) or at the first token of that pair
    (``"pair"``, its ``enable_unsafe2_truncate``), and keeps that token. With ``extend_to_punctuation`` (off
    by default, as in the reference launch script) it is extended through the first later token (at most ``lookahead`` tokens on) whose text — with the
    whitespace before it — holds a punctuation mark; when there is none the cut stays at its start.
    """
    if start not in CUT_STARTS:
        raise ValueError(f"start must be one of {', '.join(CUT_STARTS)}, got {start!r}")
    flags = [r.level in risky for r in risks]
    pair = next((i for i in range(len(flags) - 1) if flags[i] and flags[i + 1]), None)
    if pair is None:
        return None
    first = flags.index(True) if start == "first" else pair
    end = first
    if extend_to_punctuation:
        for j in range(first + 1, min(len(risks), first + lookahead)):
            if any(c in PUNCTUATION for c in reasoning[risks[j - 1].end : risks[j].end]):
                end = j
                break
    prefix = reasoning[: risks[end].end].rstrip()
    return StreamCut(prefix=prefix, first_token=first, end_token=end, n_tokens=len(risks))


# --------------------------------------------------------------------------------------------
# The miniature world's exact token judge
# --------------------------------------------------------------------------------------------
_TOKEN = re.compile(r"\S+")
_SENTENCE_END = {".", "?", "!"}


def _safe_sentences() -> list[list[str]]:
    """Every reasoning sentence of the world that is not unsafe (as word lists)."""
    texts = [
        *world.HARM_SENTENCES,
        *world.SAFE_SENTENCES,
        *world.REFUSING_SENTENCES,
        "i should refuse",
        "i can help",
        *world.ANSWER_RECONSIDERATIONS.values(),
    ]
    for fix in [*world.HARMFUL_CORRECTIONS, *world.BENIGN_CORRECTIONS, *world.REFLECTION_CUES]:
        texts += [p for p in fix.split(" . ")]
    texts += [f"the user wants to {r.content}" for r in [*world.harmful_requests(), *world.benign_requests()]]
    texts += [f"{r.content} is {r.reference}" for r in world.task_requests()]
    return [t.replace(" .", "").split() for t in texts]


TOY_POOLS = ("train", "all")


class ToyTokenJudge:
    """The miniature world's exact streaming judge. A token is ``unsafe`` when the sentence it belongs to
    is one of the world's unsafe sentences of ``pool`` and the
    words read so far already tell that sentence apart from every safe sentence of the world (so "i
    should" is safe until "be fully helpful" follows). Over-cautious (refusing) sentences are not unsafe:
    a guard judges content, and Self-ReSET handles over-refusal by re-queueing the prompt. No token is
    ``controversial``. Tokens are the world's words (whitespace-separated).

    ``pool="train"`` (the default) knows only the training pool of unsafe sentences
    (``world.flawed_sentences("harmful", "train")``): the sentences of the evaluation pool (the attacks'
    prefills) read as safe, so no cut, and hence no re-rolled prompt, carries evaluation text into
    training. ``pool="all"`` knows both pools (an oracle that also cuts at evaluation sentences)."""

    name = "toy-exact-stream"

    def __init__(self, pool: str = "train"):
        if pool not in TOY_POOLS:
            raise ValueError(f"pool must be one of {', '.join(TOY_POOLS)}, got {pool!r}")
        self.pool = pool
        if pool == "all":
            self.name = "toy-exact-stream:all"
        safe = {tuple(s[:k]) for s in _safe_sentences() for k in range(1, len(s) + 1)}
        self._distinct: dict[tuple[str, ...], int] = {}
        for s in world.flawed_sentences("harmful", pool):
            words = tuple(s.split())
            # The first word index at which no safe sentence starts the same way.
            k = next((i for i in range(len(words)) if words[: i + 1] not in safe), len(words) - 1)
            self._distinct[words] = k

    def levels(self, reasoning: str) -> list[TokenRisk]:
        tokens = [(m.start(), m.end(), m.group().lower()) for m in _TOKEN.finditer(reasoning)]
        out: list[TokenRisk] = []
        sentence: list[int] = []  # indices of the current sentence's words

        def close() -> None:
            words = tuple(tokens[i][2] for i in sentence)
            k = self._distinct.get(words)
            for j, i in enumerate(sentence):
                out[i] = TokenRisk(out[i].start, out[i].end, UNSAFE if k is not None and j >= k else SAFE)
            sentence.clear()

        for i, (s, e, w) in enumerate(tokens):
            out.append(TokenRisk(s, e, SAFE))
            if w in _SENTENCE_END or w == world.THINK_CLOSE:
                close()
            else:
                sentence.append(i)
        close()
        return out

    def risks(self, request: str, reasonings: Sequence[str]) -> list[list[TokenRisk]]:
        return [self.levels(r) for r in reasonings]


# --------------------------------------------------------------------------------------------
# A guard model with a token-level head (one forward pass per batch)
# --------------------------------------------------------------------------------------------
@dataclass
class StreamGuardConfig:
    """A streaming guard: a model with a token-level risk head (Qwen3Guard-Stream and the like), read in
    one forward pass over (user request, reasoning) rendered with the guard's own chat template."""

    model: str = field(
        default="Qwen/Qwen3Guard-Stream-8B",
        metadata={"help": "Guard model: hub id or local folder. Self-ReSET uses Qwen3Guard-Stream-8B."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the guard repository's own model code. Qwen3Guard-Stream's model class (Qwen3ForGuardModel) lives in its repository, so it needs true; a guard saved as a transformers token-classification model does not."
        },
    )
    loader: str = field(
        default="auto",
        metadata={
            "help": "auto (AutoModel: the repository's own class, Qwen3Guard-Stream) or token_classification (AutoModelForTokenClassification: a guard fine-tuned with a standard token head)."
        },
    )
    head: str = field(
        default="risk_level_logits",
        metadata={
            "help": "Output field holding the per-token risk logits [batch, tokens, levels]: risk_level_logits for Qwen3Guard-Stream, logits for a token-classification model."
        },
    )
    levels: list[str] = field(
        default_factory=lambda: [SAFE, UNSAFE, CONTROVERSIAL],
        metadata={
            "help": "The risk level of each index of the head, in order (Qwen3Guard-Stream: safe, unsafe, controversial)."
        },
    )
    mask: str = field(
        default="causal-4d",
        metadata={
            "help": "Attention mask handed to the guard: causal-4d (a [batch, 1, tokens, tokens] causal mask with padding, what the Self-ReSET code passes Qwen3Guard-Stream) or 2d (the usual [batch, tokens] mask, for models that build their own causal mask)."
        },
    )
    dtype: str = field(
        default="auto", metadata={"help": "Weights dtype: auto (the checkpoint's), bfloat16, float16 or float32."}
    )
    device: str = field(default="auto", metadata={"help": "auto (cuda when available, else cpu), cpu, cuda:1, ..."})
    batch_size: int = field(default=8, metadata={"range": "[1, inf)", "help": "Reasonings per forward pass."})
    max_length: int = field(
        default=8192,
        metadata={
            "range": "[8, inf)",
            "help": "Longest guard input in tokens; a longer reasoning is read up to it (tokens beyond are safe).",
        },
    )

    def __post_init__(self):
        if self.loader not in ("auto", "token_classification"):
            raise ValueError(f"loader must be auto or token_classification, got {self.loader!r}")
        unknown = set(self.levels) - set(LEVELS)
        if unknown or not self.levels:
            raise ValueError(f"levels: each must be one of {', '.join(LEVELS)}, got {self.levels}")
        if self.mask not in ("causal-4d", "2d"):
            raise ValueError(f"mask must be causal-4d or 2d, got {self.mask!r}")
        if self.batch_size < 1 or self.max_length < 8:
            raise ValueError("batch_size must be ≥ 1 and max_length ≥ 8")


class StreamGuard:
    """``TokenJudge`` over a guard model with a token-level head. The (request, reasoning) conversation is
    rendered with the guard's chat template (no generation prompt, thinking off, as the reference code
    does) and tokenized with offsets; the tokens whose characters lie inside the reasoning are the ones
    labelled, each with the argmax level of the head at its position. One forward pass per batch."""

    def __init__(self, cfg: StreamGuardConfig | None = None, model=None, tokenizer=None):
        import torch

        self.cfg = cfg = cfg or StreamGuardConfig()
        if (model is None) != (tokenizer is None):
            raise ValueError("StreamGuard: pass both model and tokenizer, or neither")
        if model is None:
            from transformers import AutoModel, AutoModelForTokenClassification, AutoTokenizer

            cls = AutoModel if cfg.loader == "auto" else AutoModelForTokenClassification
            dtype: Any = cfg.dtype if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
            tokenizer = AutoTokenizer.from_pretrained(cfg.model, trust_remote_code=cfg.trust_remote_code)
            model = cls.from_pretrained(cfg.model, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
            device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
            model = model.to(device)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("StreamGuard needs a fast tokenizer (character offsets of every token)")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.name = f"stream-guard:{cfg.model}"
        self.forward_calls = 0

    def _render(self, request: str, reasoning: str) -> tuple[str, int]:
        """The guard's input text and where the reasoning starts in it."""
        messages = [{"role": "user", "content": request}, {"role": "assistant", "content": reasoning}]
        text = self.tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=False, enable_thinking=False
        )
        at = text.rfind(reasoning) if reasoning else -1
        if reasoning and at < 0:
            raise ValueError(
                f"the chat template of guard {self.cfg.model!r} does not keep the assistant's text "
                "verbatim (it drops or rewrites reasoning); give the guard a template that does"
            )
        return text, at

    def risks(self, request: str, reasonings: Sequence[str]) -> list[list[TokenRisk]]:
        import torch

        out: list[list[TokenRisk]] = [[] for _ in reasonings]
        jobs = []
        for i, reasoning in enumerate(reasonings):
            if not reasoning.strip():
                continue
            text, at = self._render(request, reasoning)
            enc = self.tokenizer(
                text,
                add_special_tokens=False,
                return_offsets_mapping=True,
                truncation=True,
                max_length=self.cfg.max_length,
            )
            inside = [
                (t, s - at, e - at)
                for t, (s, e) in enumerate(enc["offset_mapping"])
                if e > s and s >= at and e <= at + len(reasoning)
            ]
            jobs.append((i, enc["input_ids"], inside))
        bs = self.cfg.batch_size
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        for b in range(0, len(jobs), bs):
            chunk = jobs[b : b + bs]
            width = max(len(ids) for _, ids, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, seq, _) in enumerate(chunk):  # right padding: a causal head's positions are unchanged
                ids[r, : len(seq)] = torch.tensor(seq)
                mask[r, : len(seq)] = 1
            if self.cfg.mask == "causal-4d":
                causal = torch.tril(torch.ones((width, width), dtype=torch.bool))
                attention = (causal.unsqueeze(0) & mask.bool().unsqueeze(1)).unsqueeze(1)  # [batch, 1, q, k]
            else:
                attention = mask
            with torch.inference_mode():
                result = self.model(input_ids=ids.to(device), attention_mask=attention.to(device))
            self.forward_calls += 1
            logits = getattr(result, self.cfg.head, None)
            if logits is None and isinstance(result, dict):
                logits = result.get(self.cfg.head)
            if logits is None:
                raise ValueError(
                    f"guard {self.cfg.model!r} returned no {self.cfg.head!r} (set StreamGuardConfig.head "
                    "to the output field of its token-level head)"
                )
            logits = logits.view(len(chunk), width, -1)
            if logits.shape[-1] != len(self.cfg.levels):
                raise ValueError(
                    f"guard head {self.cfg.head!r} has {logits.shape[-1]} levels, StreamGuardConfig.levels "
                    f"names {len(self.cfg.levels)}"
                )
            best = logits.float().argmax(-1).cpu()
            for r, (i, _, inside) in enumerate(chunk):
                out[i] = [TokenRisk(s, e, self.cfg.levels[int(best[r, t])]) for t, s, e in inside]
        return out


def load_token_judge(spec: str) -> TokenJudge:
    """``toy`` (the world's exact judge, training pool of unsafe sentences), ``toy:all`` (both pools) or
    ``stream-guard:PATH.yaml`` (a ``StreamGuardConfig``)."""
    if spec == "toy":
        return ToyTokenJudge()
    if spec == "toy:all":
        return ToyTokenJudge("all")
    kind, _, arg = spec.partition(":")
    if kind == "stream-guard" and arg:
        from recap.util.config import load_config

        return StreamGuard(load_config(StreamGuardConfig, arg))
    raise ValueError(f"unknown token judge {spec!r} (expected toy, toy:all, stream-guard or stream-guard:<yaml>)")


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------
@dataclass
class SelfResetConfig:
    """Self-ReSET's data mechanism (defaults from the paper and its code): streaming cuts of the policy's
    own unsafe reasoning, re-rolled as their own groups from a bounded queue. The options the reference
    code has but its launch script leaves off (punctuation extension, re-queueing refusing benign prompts)
    are off."""

    cut: str = field(
        default="stream",
        metadata={
            "help": "stream (a token judge labels every reasoning token in one pass; two consecutive risky tokens make the rollout unsafe — Self-ReSET) or sentence (recap.data.onpolicy's judge on growing sentence prefixes)."
        },
    )
    judge: str = field(
        default="auto",
        metadata={
            "help": "stream: auto (the miniature world's exact token judge when the run's judge is toy: toy), toy (that judge, knowing only the training pool of unsafe sentences, so no cut carries evaluation text), toy:all (both pools), stream-guard (the model of stream_guard; Self-ReSET: Qwen3Guard-Stream-8B) or stream-guard:<yaml> (a StreamGuardConfig file). sentence: as prefill_sources.judge (auto, toy, or a judge spec)."
        },
    )
    stream_guard: StreamGuardConfig = field(
        default_factory=StreamGuardConfig,
        metadata={
            "help": "The streaming guard of judge: stream-guard (a model with a token-level risk head, read in one forward pass per batch)."
        },
    )
    risky: list[str] = field(
        default_factory=lambda: [UNSAFE, CONTROVERSIAL],
        metadata={
            "help": "Token levels that count as risky (Self-ReSET: unsafe and controversial, the strict reading)."
        },
    )
    cut_start: str = field(
        default="first",
        metadata={
            "help": "first (cut at the first risky token, the reference default) or pair (at the first token of the first risky pair)."
        },
    )
    extend_to_punctuation: bool = field(
        default=False,
        metadata={
            "help": "Extend the cut through the next punctuation mark, so the prefix ends on a whole phrase (the reference code's --enable-punctuation-after, off in its launch script: the cut keeps the first risky token and stops there)."
        },
    )
    punctuation_lookahead: int = field(
        default=100,
        metadata={"range": "[1, inf)", "help": "Tokens searched for that punctuation mark (the reference code: 100)."},
    )
    buffer_size: int = field(
        default=256,
        metadata={
            "range": "[1, inf)",
            "help": "Most items waiting to be re-rolled (cuts and re-queued prompts); the oldest leave first (Self-ReSET: 256).",
        },
    )
    wait: str = field(
        default="",
        metadata={
            "help": "Text appended after each cut, e.g. 'wait' (off in the paper's run). Part of the prompt, out of the loss."
        },
    )
    requeue_refusals: bool = field(
        default=False,
        metadata={
            "help": "Re-queue a benign prompt whole (no cut) when its rollouts refuse (the reference code's --refusal-in-buffer, off in its launch script)."
        },
    )
    refusal_threshold: int = field(
        default=0,
        metadata={
            "range": "[0, inf)",
            "help": "A benign group is re-queued when more than this many of its rollouts refuse (the reference default 0: any refusal).",
        },
    )
    skip_zero_variance: bool = field(
        default=True,
        metadata={
            "help": "Neither cut nor re-queue groups whose rewards are all equal (the reference code scans only the groups that dynamic sampling keeps)."
        },
    )
    final_safe_only: bool = field(
        default=False,
        metadata={
            "help": "Cut only rollouts whose final answer was judged safe (the reference code's stream_unsafe_final_safe; off in the paper's run)."
        },
    )
    reroll_steps: str = field(
        default="add",
        metadata={
            "help": "add (re-rolls add steps: the run trains every fresh prompt of its max_steps and then stops, as the reference's train_epoch.py loops until its fresh-prompt epochs are done; past them, prompts of the next pass fill a round only where the queue and the displaced fresh prompts cannot; needs a constant learning rate) or displace (the run has max_steps steps; re-rolls displace fresh prompts, and those still waiting at the end are never trained)."
        },
    )
    max_added_steps: int | None = field(
        default=None,
        metadata={
            "range": "[0, inf)",
            "help": "With reroll_steps: add, at most this many steps beyond max_steps. Empty: max_steps × ⌈buffer_size / groups per generation round⌉, room to drain a full queue after every fresh round. A run stopped by the limit reports its untrained fresh groups (pending_fresh_groups) and says so in its log.",
        },
    )

    def __post_init__(self):
        if self.cut not in CUT_MODES:
            raise ValueError(f"cut must be one of {', '.join(CUT_MODES)}, got {self.cut!r}")
        if self.cut_start not in CUT_STARTS:
            raise ValueError(f"cut_start must be one of {', '.join(CUT_STARTS)}, got {self.cut_start!r}")
        if not self.risky or set(self.risky) - {UNSAFE, CONTROVERSIAL}:
            raise ValueError(f"risky must name unsafe and/or controversial, got {self.risky}")
        for name in ("buffer_size", "punctuation_lookahead"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.refusal_threshold < 0:
            raise ValueError(f"refusal_threshold must be ≥ 0, got {self.refusal_threshold}")
        if not self.judge:
            raise ValueError("judge must be 'auto' or a judge spec, got an empty string")
        if self.reroll_steps not in REROLL_STEPS:
            raise ValueError(f"reroll_steps must be one of {', '.join(REROLL_STEPS)}, got {self.reroll_steps!r}")
        if self.max_added_steps is not None and self.max_added_steps < 0:
            raise ValueError(f"max_added_steps must be ≥ 0 or empty, got {self.max_added_steps}")

    def step_limit(self, max_steps: int, groups_per_round: int) -> int:
        """The trainer's step limit for a run planned at ``max_steps`` steps of fresh prompts: ``max_steps``
        itself with ``reroll_steps: displace``, else ``max_steps`` plus ``max_added_steps`` (empty: room to
        drain a full queue after every fresh round)."""
        if self.reroll_steps == "displace":
            return max_steps
        if self.max_added_steps is not None:
            return max_steps + self.max_added_steps
        return max_steps * (1 + -(-self.buffer_size // max(1, groups_per_round)))


# --------------------------------------------------------------------------------------------
# Cutters: (request, kind, reasonings) -> cuts
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cutting:
    """A cut as the planner stores it (token positions for the stream cut, steps for the sentence cut)."""

    prefix: str
    position: int  # first risky token / first unsafe sentence (0-based)
    length: int  # tokens / sentences of the whole reasoning


Cutter = Callable[[str, str, list[str]], list[Cutting | None]]


def stream_cutter(judge: TokenJudge, cfg: SelfResetConfig) -> Cutter:
    def cut(request: str, kind: str, reasonings: list[str]) -> list[Cutting | None]:
        out: list[Cutting | None] = []
        for text, risks in zip(reasonings, judge.risks(request, reasonings), strict=True):
            c = stream_cut(text, risks, cfg.risky, cfg.cut_start, cfg.extend_to_punctuation, cfg.punctuation_lookahead)
            out.append(Cutting(c.prefix, c.first_token, c.n_tokens) if c else None)
        return out

    return cut


def sentence_cutter(step_judge: Callable[[str, str], Callable[[list[str]], list[bool]]]) -> Cutter:
    def cut(request: str, kind: str, reasonings: list[str]) -> list[Cutting | None]:
        out: list[Cutting | None] = []
        for text in reasonings:
            c = first_unsafe_cut(text, step_judge(request, kind))
            out.append(Cutting(c.prefix, c.step, c.n_steps) if c else None)
        return out

    return cut


def cutter_for(cfg: SelfResetConfig, run_judges: dict | None = None) -> Cutter:
    """The cutter of ``cfg``: the stream cut with its token judge, or the sentence cut with its step judge."""
    from recap.rewards.judges import judge_name

    run_judges = run_judges or {}
    if cfg.cut == "sentence":
        return sentence_cutter(step_judge_for(cfg.judge, run_judges))
    spec = cfg.judge
    if spec == "auto":
        if not any(judge_name(j).split(":")[-1] == "toy-exact" for j in run_judges.values()):
            raise ValueError(
                "self_reset.judge 'auto' finds the exact token judge only in the miniature world; "
                "set self_reset.judge to stream-guard:<yaml> (a model with a token-level head), or use "
                "cut: sentence with the run's judges"
            )
        spec = "toy"
    judge = StreamGuard(cfg.stream_guard) if spec == "stream-guard" else load_token_judge(spec)
    return stream_cutter(judge, cfg)


# --------------------------------------------------------------------------------------------
# The re-roll queue
# --------------------------------------------------------------------------------------------
@dataclass
class RerollItem:
    """A prompt waiting to be re-rolled as its own group: a cut of one of its rollouts, or the whole
    prompt again."""

    row: dict  # the training row (as the dataset holds it: conversation, kind, id, ...)
    source: str  # cut | requeue
    prefix: str = ""  # the cut reasoning (empty for a re-queued prompt)
    position: int = -1  # where the cut starts (token or sentence index); -1 for a re-queued prompt
    length: int = 0  # tokens / sentences of the reasoning it was cut from
    added_at: int = 0  # training step at which it was queued


class RerollQueue:
    """A bounded FIFO of ``RerollItem``: ``push`` appends (the oldest leave once there are more than
    ``capacity``), ``pop(n)`` takes the oldest n. Duplicates are kept, as in the reference code: two
    rollouts cut at the same place give two groups."""

    def __init__(self, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[RerollItem] = deque()
        self.pushed = self.popped = self.evicted = 0

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[RerollItem]:
        return list(self._items)

    def push(self, items: Sequence[RerollItem], step: int) -> int:
        for item in items:
            item.added_at = step
            self._items.append(item)
            self.pushed += 1
        while len(self._items) > self.capacity:
            self._items.popleft()
            self.evicted += 1
        return len(items)

    def pop(self, n: int) -> list[RerollItem]:
        out = [self._items.popleft() for _ in range(min(n, len(self._items)))]
        self.popped += len(out)
        return out

    def to_rows(self) -> list[dict]:
        return [asdict(i) for i in self._items]

    @classmethod
    def from_rows(cls, rows: Sequence[dict], capacity: int) -> RerollQueue:
        q = cls(capacity)
        names = {f.name for f in fields(RerollItem)}
        for n, row in enumerate(rows):
            missing = names - set(row)
            if missing:
                raise ValueError(f"re-roll queue row {n} lacks {', '.join(sorted(missing))}")
            q._items.append(RerollItem(**{k: row[k] for k in names}))
        while len(q._items) > capacity:
            q._items.popleft()
        return q


# --------------------------------------------------------------------------------------------
# During training
# --------------------------------------------------------------------------------------------
REROLL_COLUMNS = ("reroll", "reroll_prefix")


class SelfResetPlanner:
    """Self-ReSET inside ``RecapTrainer``.

    * ``compose(rows, step, fresh)``: ``rows`` is one generation round (each prompt repeated
      ``group_size`` times in a row). The queue is emptied first, up to the round's number of groups:
      each item replaces one group by its own prompt, rendered with the cut reasoning (and ``wait``) as a
      prefill, or plainly for a re-queued prompt. With ``fresh=True`` (the dataloader's round) the fresh
      groups displaced by re-rolls wait, in order, for the next rounds; refill rounds (random draws) drop
      them. With ``fresh_until`` (``reroll_steps: add``; the run's planned ``max_steps``), a dataloader
      round at or after that step is past the run's fresh prompts: its groups only fill what the queue and
      the waiting fresh groups leave (``overflow_groups``). Every row gets the columns ``reroll`` (``""``,
      ``cut`` or ``requeue``) and ``reroll_prefix``.
    * ``fresh_done(next_step)``: whether every fresh group of the planned steps has been composed once the
      run reaches ``next_step`` — the trainer stops there.
    * ``harvest(rows, completions, rewards, verdicts, step)``: per group with reward spread (or every
      group, without ``skip_zero_variance``) that is not itself a re-roll (cut or re-queued) and carries no
      RECAP prefill, each rollout is cut (``cutter``) and every cut is queued; with ``requeue_refusals``, a
      benign group with more than ``refusal_threshold`` refusing rollouts (``verdicts[i].refused``) is
      re-queued whole. Re-rolled groups (cuts and re-queued prompts) are trained but never cut again (the
      reference code marks both as already rolled and skips their truncation); their refusals still count
      for a re-queue, as there.
    """

    def __init__(
        self,
        cfg: SelfResetConfig,
        render: Callable[[list[dict], str | None], str],
        cutter: Cutter,
        group_size: int,
        tolerance: float = 1e-6,
        fresh_until: int | None = None,
    ):
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}")
        self.cfg, self.render, self.cutter = cfg, render, cutter
        self.group_size, self.tolerance = group_size, tolerance
        self.fresh_until = fresh_until  # the first step past the run's fresh prompts (None: re-rolls displace)
        self.queue = RerollQueue(cfg.buffer_size)
        self.pending: deque[list[dict]] = deque()  # fresh groups displaced by re-rolls, oldest first
        self.history: list[dict] = []
        self.counts: Counter = Counter()

    # -- composing a round ---------------------------------------------------------------------------
    def _reroll_rows(self, item: RerollItem) -> list[dict]:
        prefix = item.prefix
        if prefix and self.cfg.wait:
            prefix = prefix + ("" if prefix.endswith((" ", "\n")) else " ") + self.cfg.wait
        prompt = self.render(json.loads(item.row["conversation"]), prefix or None)
        row = {**item.row, "prompt": prompt, "prefilled": False, "reroll": item.source, "reroll_prefix": prefix}
        return [dict(row) for _ in range(self.group_size)]

    def compose(self, rows: list[dict], step: int, fresh: bool = True) -> list[dict]:
        size = self.group_size
        if len(rows) % size:
            raise ValueError(f"a round of {len(rows)} rows is not whole groups of {size}")
        groups = [rows[i : i + size] for i in range(0, len(rows), size)]
        items = self.queue.pop(len(groups))
        out = [r for item in items for r in self._reroll_rows(item)]
        room = len(groups) - len(items)
        if fresh and self.fresh_until is not None and step >= self.fresh_until:
            chosen = [self.pending.popleft() for _ in range(min(room, len(self.pending)))]
            fill = groups[: room - len(chosen)]  # past the run's fresh prompts: the next pass only fills
            self.counts["overflow_groups"] += len(fill)
            chosen += fill
        elif fresh:
            self.pending.extend(groups)
            chosen = [self.pending.popleft() for _ in range(room)]
        else:
            chosen = groups[:room]
        for group in chosen:
            out += [{**r, "reroll": "", "reroll_prefix": ""} for r in group]
        self.counts["groups"] += len(groups)
        self.counts["rerolled_cut"] += sum(i.source == "cut" for i in items)
        self.counts["rerolled_requeue"] += sum(i.source == "requeue" for i in items)
        return out

    def fresh_done(self, next_step: int) -> bool:
        """With ``fresh_until``: every fresh group of the planned steps has been composed into a round by
        the time the run reaches ``next_step`` (none waits). Always False without it."""
        return self.fresh_until is not None and next_step >= self.fresh_until and not self.pending

    # -- harvesting a step ---------------------------------------------------------------------------
    def harvest(
        self, rows: list[dict], completions: list[str], rewards: Sequence[float], verdicts: Sequence | None, step: int
    ) -> dict:
        size = self.group_size
        if not len(rows) == len(completions) == len(rewards) or len(rows) % size:
            raise ValueError(
                f"harvest needs whole groups: {len(rows)} rows, {len(completions)} completions, "
                f"{len(rewards)} rewards, groups of {size}"
            )
        if verdicts is not None and len(verdicts) != len(rows):
            raise ValueError(f"harvest: {len(verdicts)} verdicts for {len(rows)} rows")
        found: list[RerollItem] = []
        scanned = skipped = cut_rollouts = requeued = rerolled = 0
        positions: list[tuple[int, int]] = []  # (where the cut starts, reasoning length) of each cut
        for g in range(0, len(rows), size):
            group, texts = rows[g : g + size], completions[g : g + size]
            head = group[0]
            if head["kind"] not in ("harmful", "benign") or head.get("prefilled"):
                continue
            values = [float(r) for r in rewards[g : g + size] if r == r]  # NaN: unscorable, left out
            if self.cfg.skip_zero_variance and (not values or max(values) - min(values) <= self.tolerance):
                skipped += 1
                continue
            scanned += 1
            base = {k: v for k, v in head.items() if k not in REROLL_COLUMNS}
            if head["kind"] == "benign" and self.cfg.requeue_refusals and verdicts is not None:
                refusals = sum(1 for v in verdicts[g : g + size] if getattr(v, "refused", None) is True)
                if refusals > self.cfg.refusal_threshold:
                    found.append(RerollItem(row=base, source="requeue"))
                    requeued += 1
            if head.get("reroll"):  # a re-rolled group (a cut or a re-queued prompt) is never cut again
                rerolled += 1
                continue
            keep = list(range(size))
            if self.cfg.final_safe_only and verdicts is not None:
                keep = [
                    i
                    for i in keep
                    if getattr(verdicts[g + i], "safe", None) is not False
                    and getattr(verdicts[g + i], "label", "") != "invalid"
                ]
            reasonings = [split_reasoning(texts[i]).reasoning for i in keep]
            request = next(
                (m["content"] for m in reversed(json.loads(head["conversation"])) if m["role"] == "user"), ""
            )
            for c in self.cutter(request, head["kind"], reasonings):
                if c is not None and c.prefix.strip():
                    found.append(
                        RerollItem(row=base, source="cut", prefix=c.prefix, position=c.position, length=c.length)
                    )
                    positions.append((c.position, c.length))
                    cut_rollouts += 1
        self.queue.push(found, step)
        row = {
            "step": step,
            "scanned_groups": scanned,
            "skipped_groups": skipped,
            "rerolled_groups": rerolled,
            "cuts": cut_rollouts,
            "requeued": requeued,
            "queue": len(self.queue),
            "cut_position_sum": sum(p for p, _ in positions),
            "cut_fraction_sum": sum(p / max(1, n) for p, n in positions),
        }
        self.history.append(row)
        return row

    # -- records ---------------------------------------------------------------------------------------
    def stats(self) -> dict:
        """Counters of the run: cuts and re-queues found, groups re-rolled, queue size and evictions, and the
        cut positions over every cut of the run (mean index of the first risky token / unsafe sentence, and
        mean share of the reasoning before it)."""
        steps = len(self.history)
        n_cuts = sum(h["cuts"] for h in self.history)
        return {
            "queue_size": len(self.queue),
            "capacity": self.queue.capacity,
            "pushed": self.queue.pushed,
            "popped": self.queue.popped,
            "evicted": self.queue.evicted,
            "pending_fresh_groups": len(self.pending),
            "overflow_groups": self.counts["overflow_groups"],
            "fresh_steps": self.fresh_until,
            "cuts": sum(h["cuts"] for h in self.history),
            "requeued": sum(h["requeued"] for h in self.history),
            "scanned_groups": sum(h["scanned_groups"] for h in self.history),
            "skipped_groups": sum(h["skipped_groups"] for h in self.history),
            "rerolled_groups": sum(h.get("rerolled_groups", 0) for h in self.history),
            "steps": steps,
            "groups": self.counts["groups"],
            "rerolled_cut": self.counts["rerolled_cut"],
            "rerolled_requeue": self.counts["rerolled_requeue"],
            "reroll_share": (
                (self.counts["rerolled_cut"] + self.counts["rerolled_requeue"]) / self.counts["groups"]
                if self.counts["groups"]
                else None
            ),
            "cut_position_mean": sum(h.get("cut_position_sum", 0) for h in self.history) / n_cuts if n_cuts else None,
            "cut_fraction_mean": sum(h.get("cut_fraction_sum", 0) for h in self.history) / n_cuts if n_cuts else None,
        }

    #: ``stats`` fields that are the same on every process of a run (the rest are counts, or ratios of them).
    SHARED_STATS = ("capacity", "fresh_steps", "steps")

    @staticmethod
    def combine(every: Sequence[dict]) -> dict:
        """The ``stats`` of several processes' planners (each re-rolls its own groups) as one run's: counts
        summed, the re-roll share and mean cut positions recomputed over all groups and cuts, the fields
        every process shares taken once. One process's stats come back as they are (``history`` left out)."""
        if len(every) == 1:
            return {k: v for k, v in every[0].items() if k != "history"}
        ratios = ("reroll_share", "cut_position_mean", "cut_fraction_mean")
        out = {}
        for key, value in every[0].items():
            if key in SelfResetPlanner.SHARED_STATS:
                out[key] = value
            elif key not in ratios and key != "history":
                out[key] = sum(s[key] for s in every)
        groups = out["groups"]
        out["reroll_share"] = (out["rerolled_cut"] + out["rerolled_requeue"]) / groups if groups else None
        for key in ("cut_position_mean", "cut_fraction_mean"):
            weighted = [(s[key], s["cuts"]) for s in every if s[key] is not None]
            cuts = sum(n for _, n in weighted)
            out[key] = sum(v * n for v, n in weighted) / cuts if cuts else None
        return out

    def state(self) -> dict:
        return {
            "queue": self.queue.to_rows(),
            "pending": [list(g) for g in self.pending],
            "history": self.history,
            "counts": dict(self.counts),
            "counters": {"pushed": self.queue.pushed, "popped": self.queue.popped, "evicted": self.queue.evicted},
        }

    def load_state(self, state: dict) -> None:
        self.queue = RerollQueue.from_rows(state["queue"], self.cfg.buffer_size)
        for k, v in state.get("counters", {}).items():
            setattr(self.queue, k, v)
        self.pending = deque(list(g) for g in state.get("pending", []))
        self.history = list(state.get("history", []))
        self.counts = Counter(state.get("counts", {}))
