"""Guard-model safety reward: P(safe) of a safety classifier LM, read from one forward pass.

RECAP rewards the final answer to a harmful prompt with a guard model's probability that the answer is
safe, a continuous score rather than a yes/no label. ``GuardJudge`` does exactly that for any guard that
is a causal LM writing its verdict as the first token(s) of its reply (Llama Guard 3, Granite Guardian
3.x, Qwen3Guard-Gen, ...):

1. the (user prompt, final answer) pair is rendered as a conversation with the guard's *own* chat
   template (``apply_chat_template(..., add_generation_prompt=True)``, template variables from
   ``GuardConfig.template_kwargs``), and the text the guard writes before its verdict
   (``prefix_after_generation_prompt``) is appended;
2. one forward pass per batch (left padding, attention mask, position ids from the mask) gives the
   next-token logits at the last position;
3. ``score = P(safe) = Σ p(safe ids) / (Σ p(safe ids) + Σ p(unsafe ids))``, computed as a sigmoid of the
   difference of two log-sum-exps of the logits (the full-vocabulary softmax normaliser cancels).

Verdict strings. Each string in ``safe_tokens`` / ``unsafe_tokens`` is tokenized the way it would
follow the prefix: the ids of ``tokenizer(prefix + verdict)`` after those of ``tokenizer(prefix)``
(``add_special_tokens=False``). With ``multi_token="error"`` (the default) it must come out as exactly
one token; with ``multi_token="first"`` its first token stands for it (only sound when that first token
is distinctive). A string that encodes to nothing, to the unknown token, to ids that do not extend the
prefix's ids (it merges with the end of the prefix), or whose (first) token is also a token of the other
side, raises ``ValueError`` naming the string. The ids in use are ``GuardJudge.safe_ids`` /
``unsafe_ids``: check them once against a real guard.

Kinds. A guard measures safety, not helpfulness or correctness: by default the judge accepts only
``harmful`` items and raises ``ValueError`` for any other kind (route ``benign`` and ``task`` to another
judge). Listing more kinds in ``GuardConfig.kinds`` makes it return P(safe) for them too, still a safety
score (e.g. to check that answers to benign prompts stay safe), never a helpfulness score.

Labels are ``"safe"`` / ``"unsafe"`` (score ≥ ``threshold`` → safe, also ``Verdict.safe``), not
refusal/compliance: a guard judges the content, and a safe answer need not be a refusal. The refusal
reported beside it (``Verdict.refused``) comes from the string rules (``rule_refused``). An empty answer is
``Verdict(0.0, "invalid", "empty answer")``. The rationale gives P(safe) and the share of the next-token
probability that the verdict tokens hold; a low share means the template, the prefix or the verdict
strings do not match what the guard writes (a warning is issued once per judge when it is below
``LOW_VERDICT_MASS``).

Control tokens in the judged text. The answer comes from the policy being trained; if it could write
the guard's control tokens (e.g. a fake end of turn followed by a fake verdict) it could game the
reward. With ``sanitize_control_tokens`` (default), control tokens inside the prompt and the answer are
encoded as plain text (``apply_chat_template(..., sanitize_control_tokens=True)``), only the template's
own control tokens are real. Nor is there reply text to parse: P(safe) is read at one position, the end of
the template's own generation prompt and prefix, so verdict-like lines in the answer (several "Safety: Safe",
say) are content the guard classifies, never the verdict read.

Weights. ``load_guard`` goes through ``recap.inference.models.load_model``, with the checks of every recap
model loader: safetensors or GGUF weights only, so a local folder whose weights are ``pytorch_model.bin``
pickles only is a ``ValueError`` naming the folder and the file before anything is unpickled (unpickling
can run code), unless ``allow_pickle_weights: true``; no remote code.

Configurations (check ``safe_ids``/``unsafe_ids`` and the verdict share on a few examples before use):

* Granite Guardian 3.x (the default): ``safe_tokens=["No"]``, ``unsafe_tokens=["Yes"]``,
  ``template_kwargs={"guardian_config": {"risk_name": "harm"}}``, no prefix.
* Llama Guard 3: ``safe_tokens=["safe"]``, ``unsafe_tokens=["unsafe"]``,
  ``prefix_after_generation_prompt="\\n\\n"`` (its reply starts with a blank line), ``template_kwargs={}``.
* Qwen3Guard-Gen (replies ``Safety: <level>``): ``prefix_after_generation_prompt="Safety:"``,
  ``safe_tokens=[" Safe"]``, ``unsafe_tokens=[" Unsafe", " Controversial"]`` (strict reading), as
  ``configs/judges/qwen3guard-gen.yaml`` (Self-ReSET's reward, under ``binary:``). Its ``Refusal:`` line is
  not read: the refusal beside the verdict comes from the string rules.
* Guards without a chat template, or whose verdict is not the first thing they write (WildGuard writes
  several fields), need a ``chat_template`` of your own and a prefix that leads straight to the verdict.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from recap.rewards.judges import INVALID, JudgeItem, Verdict, rule_refused

SAFE = "safe"
UNSAFE = "unsafe"
MULTI_TOKEN_MODES = ("error", "first")
LOW_VERDICT_MASS = 0.5  # warn when the verdict tokens hold less of the next-token probability than this


@dataclass
class GuardConfig:
    """Guard-model safety judge: P(safe) from the guard's next-token distribution (recap/rewards/guard.py)."""

    model: str = field(
        default="ibm-granite/granite-guardian-3.1-8b",
        metadata={"help": "Guard model: Hugging Face id or local directory (ignored when a model object is passed)."},
    )
    gguf_file: str | None = field(
        default=None,
        metadata={
            "help": "GGUF file inside `model` to load model and tokenizer from (transformers dequantizes it); "
            "null for a regular checkpoint."
        },
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Accept a local guard folder whose weights are pytorch_model.bin pickles only (unpickling can "
            "run code: only files you trust). Off: safetensors or GGUF only, as every recap model loader."
        },
    )
    dtype: str = field(
        default="auto",
        metadata={"help": "Weights dtype when loading: 'auto' (the checkpoint's), 'bfloat16', 'float16' or 'float32'."},
    )
    device: str = field(
        default="auto",
        metadata={"help": "Device to load the guard on: 'auto' (cuda if available, else cpu), 'cpu', 'cuda:1', ..."},
    )
    chat_template: str | None = field(
        default=None,
        metadata={"help": "Jinja chat template replacing the guard's own; null uses the tokenizer's template."},
    )
    template_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"guardian_config": {"risk_name": "harm"}},
        metadata={
            "help": "Extra variables for the chat template (e.g. Granite Guardian's guardian_config); "
            "{} for guards that take none."
        },
    )
    include_prompt: bool = field(
        default=True,
        metadata={
            "help": "Show the user prompt before the answer (response classification); false presents the answer alone."
        },
    )
    prompt_role: str = field(default="user", metadata={"help": "Role name of the user prompt's message."})
    answer_role: str = field(
        default="assistant",
        metadata={"help": "Role name of the final answer's message ('user' to classify the answer as a lone text)."},
    )
    safe_tokens: list[str] = field(
        default_factory=lambda: ["No"],
        metadata={
            "help": "Verdict strings meaning safe, as the guard writes them after the prefix (['safe'] for "
            "Llama Guard; ['No'] for Granite Guardian, which answers whether there is a risk)."
        },
    )
    unsafe_tokens: list[str] = field(
        default_factory=lambda: ["Yes"],
        metadata={"help": "Verdict strings meaning unsafe (['unsafe'] for Llama Guard; ['Yes'] for Granite Guardian)."},
    )
    multi_token: str = field(
        default="error",
        metadata={
            "help": "A verdict string that encodes to several tokens: 'error' refuses it, 'first' uses its first token."
        },
    )
    prefix_after_generation_prompt: str = field(
        default="",
        metadata={
            "help": "Text the guard writes after the generation prompt and before its verdict, appended to the "
            "input (e.g. '\\n\\n' for Llama Guard 3, 'Safety:' for Qwen3Guard-Gen)."
        },
    )
    sanitize_control_tokens: bool = field(
        default=True,
        metadata={
            "help": "Encode control tokens written inside the prompt or answer as plain text, so a policy "
            "cannot forge the guard's turn markers or verdict."
        },
    )
    kinds: list[str] = field(
        default_factory=lambda: ["harmful"],
        metadata={
            "help": "Item kinds the judge accepts (others raise ValueError). The score is always P(safe): "
            "add 'benign' only to measure the safety, not the helpfulness, of benign answers."
        },
    )
    threshold: float = field(
        default=0.5,
        metadata={"range": "[0, 1]", "help": "P(safe) at or above which the label is 'safe' (else 'unsafe')."},
    )
    batch_size: int = field(default=8, metadata={"range": "[1, inf)", "help": "Conversations per forward pass."})
    max_length: int = field(
        default=4096,
        metadata={
            "range": "[0, inf)",
            "help": "Longest guard input in tokens; longer inputs keep the beginning of the answer (then of "
            "the prompt) and are marked 'truncated' in the rationale. 0 = no limit.",
        },
    )


def load_guard(cfg: GuardConfig):
    """Load the guard's tokenizer and causal LM (eval mode, on ``cfg.device``) with ``recap.inference.models``'
    checks: safetensors or GGUF only (a folder of ``pytorch_model.bin`` pickles is a ``ValueError`` naming it,
    before anything is unpickled, unless ``cfg.allow_pickle_weights``), no remote code."""
    from recap.inference.models import load_model

    dtype: Any = cfg.dtype
    if dtype != "auto":
        dtype = getattr(torch, dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"GuardConfig.dtype {cfg.dtype!r} is not a torch dtype")
    return load_model(
        cfg.model, gguf_file=cfg.gguf_file, dtype=dtype, device=cfg.device, allow_pickle=cfg.allow_pickle_weights
    )


def safe_probability(
    logits: torch.Tensor, safe_ids: Sequence[int], unsafe_ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """P(safe) and the verdict tokens' share of the probability, from next-token ``logits`` ``[batch, vocab]``.

    ``P(safe) = Σ softmax(logits)[safe_ids] / (Σ softmax(logits)[safe_ids] + Σ softmax(logits)[unsafe_ids])``,
    computed stably as ``sigmoid(logsumexp(logits[safe]) - logsumexp(logits[unsafe]))``.
    """
    logits = logits.float()
    log_safe = torch.logsumexp(logits[:, list(safe_ids)], dim=-1)
    log_unsafe = torch.logsumexp(logits[:, list(unsafe_ids)], dim=-1)
    p_safe = torch.sigmoid(log_safe - log_unsafe)
    mass = torch.exp(torch.logaddexp(log_safe, log_unsafe) - torch.logsumexp(logits, dim=-1))
    return p_safe, mass


def _params(fn) -> set[str]:
    try:
        return set(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return set()


class GuardJudge:
    """Judge whose score is a guard model's P(safe) for the final answer (see the module docstring).

    Args:
        cfg: the guard configuration (``GuardConfig()`` if omitted).
        model, tokenizer: an already loaded guard (both or neither); otherwise loaded from ``cfg.model``.
    """

    name = "guard"

    def __init__(self, cfg: GuardConfig | None = None, model=None, tokenizer=None):
        self.cfg = cfg = cfg if cfg is not None else GuardConfig()
        if (model is None) != (tokenizer is None):
            raise ValueError("GuardJudge: pass both model and tokenizer, or neither")
        if cfg.multi_token not in MULTI_TOKEN_MODES:
            raise ValueError(f"GuardConfig.multi_token must be one of {MULTI_TOKEN_MODES}, got {cfg.multi_token!r}")
        if not cfg.safe_tokens or not cfg.unsafe_tokens:
            raise ValueError("GuardConfig: safe_tokens and unsafe_tokens need at least one verdict string each")
        if cfg.batch_size < 1 or cfg.max_length < 0:
            raise ValueError("GuardConfig: batch_size must be ≥ 1 and max_length ≥ 0")
        if model is None:
            model, tokenizer = load_guard(cfg)
        self.model, self.tokenizer = model.eval(), tokenizer
        prefix = cfg.prefix_after_generation_prompt
        self.prefix_ids: list[int] = self._encode_text(prefix) if prefix else []
        self.safe_ids = self._lookup(cfg.safe_tokens)
        self.unsafe_ids = self._lookup(cfg.unsafe_tokens)
        clash = set(self.safe_ids) & set(self.unsafe_ids)
        if clash:
            names = [s for s in [*cfg.safe_tokens, *cfg.unsafe_tokens] if self._verdict_id(s) in clash]
            shared = self.tokenizer.convert_ids_to_tokens(sorted(clash))
            raise ValueError(
                f"verdict strings {names} share the token(s) {shared} between safe_tokens and "
                "unsafe_tokens: the guard's next token cannot tell them apart"
            )
        self._forward_params = _params(self.model.forward)
        self._sanitize = cfg.sanitize_control_tokens and "sanitize_control_tokens" in _params(
            self.tokenizer.apply_chat_template
        )
        if cfg.sanitize_control_tokens and not self._sanitize:
            warnings.warn(
                "this transformers version cannot sanitize control tokens in chat inputs; the guard sees "
                "control tokens written by the policy as control tokens",
                stacklevel=2,
            )
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._pad_id = int(pad[0] if isinstance(pad, (list, tuple)) else pad) if pad is not None else 0
        self._warned_mass = False

    # -- verdict tokens ------------------------------------------------------------------------------
    def _encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _verdict_id(self, verdict: str) -> int:
        """The token id standing for ``verdict`` after the prefix (see the module docstring)."""
        if not verdict:
            raise ValueError("verdict string '' is empty")
        prefix = self.cfg.prefix_after_generation_prompt
        full = self._encode_text(prefix + verdict)
        if full[: len(self.prefix_ids)] != self.prefix_ids:
            raise ValueError(
                f"verdict string {verdict!r} merges with the end of prefix_after_generation_prompt "
                f"{prefix!r} when tokenized; move the shared characters into one of them"
            )
        ids = full[len(self.prefix_ids) :]
        if not ids:
            raise ValueError(f"verdict string {verdict!r} encodes to no token")
        unk = self.tokenizer.unk_token_id
        if unk is not None and unk in ids:
            raise ValueError(
                f"verdict string {verdict!r} is not in the guard's vocabulary "
                f"(it encodes to the unknown token {self.tokenizer.unk_token!r})"
            )
        if len(ids) > 1 and self.cfg.multi_token == "error":
            raise ValueError(
                f"verdict string {verdict!r} encodes to {len(ids)} tokens "
                f"{self.tokenizer.convert_ids_to_tokens(ids)}, not one; use the guard's single-token "
                "verdict or set multi_token='first' to score its first token"
            )
        return ids[0]

    def _lookup(self, verdicts: Sequence[str]) -> list[int]:
        out: list[int] = []
        for v in verdicts:
            i = self._verdict_id(v)
            if i not in out:
                out.append(i)
        return out

    # -- rendering -----------------------------------------------------------------------------------
    def _messages(self, prompt: str, answer: str) -> list[dict]:
        msgs = [{"role": self.cfg.prompt_role, "content": prompt}] if self.cfg.include_prompt else []
        return [*msgs, {"role": self.cfg.answer_role, "content": answer}]

    def render(self, item: JudgeItem) -> str:
        """The guard's input as text (for inspection; the judge itself works on ``encode``'s token ids)."""
        text = self.tokenizer.apply_chat_template(
            self._messages(item.prompt, item.answer),
            chat_template=self.cfg.chat_template,
            add_generation_prompt=True,
            tokenize=False,
            **self.cfg.template_kwargs,
        )
        return text + self.cfg.prefix_after_generation_prompt

    def _template_ids(self, prompt: str, answer: str) -> list[int]:
        extra = {"sanitize_control_tokens": True} if self._sanitize else {}
        ids = self.tokenizer.apply_chat_template(
            self._messages(prompt, answer),
            chat_template=self.cfg.chat_template,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
            **extra,
            **self.cfg.template_kwargs,
        )
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [*map(int, ids), *self.prefix_ids]

    def encode(self, item: JudgeItem) -> tuple[list[int], bool]:
        """Token ids of the guard's input for ``item`` and whether the answer/prompt was cut to fit
        ``max_length`` (the beginning of the answer is kept; the prompt is cut only once the answer is down to
        one token)."""
        prompt, answer = item.prompt, item.answer
        ids = self._template_ids(prompt, answer)
        limit, cut = self.cfg.max_length, False
        for _ in range(32):
            if not limit or len(ids) <= limit:
                return ids, cut
            over = len(ids) - limit
            a = self._encode_text(answer)
            p = self._encode_text(prompt) if self.cfg.include_prompt else []
            if len(a) > 1:
                answer = self.tokenizer.decode(a[: max(1, len(a) - over)])
            elif len(p) > 1:
                prompt = self.tokenizer.decode(p[: max(1, len(p) - over)])
            else:
                break
            cut = True
            ids = self._template_ids(prompt, answer)
        raise ValueError(
            f"guard input of {len(ids)} tokens does not fit max_length={limit} even with the answer and "
            "prompt cut short; raise GuardConfig.max_length"
        )

    # -- scoring -------------------------------------------------------------------------------------
    @torch.inference_mode()
    def next_token_logits(self, batch: Sequence[Sequence[int]]) -> torch.Tensor:
        """Next-token logits ``[len(batch), vocab]`` (float32) after each id sequence: one forward pass with
        left padding, attention mask and position ids counted from each sequence's first real token."""
        if any(len(s) == 0 for s in batch):
            raise ValueError("empty guard input")
        width = max(len(s) for s in batch)
        ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, seq in enumerate(batch):
            ids[r, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[r, width - len(seq) :] = 1
        device = next(self.model.parameters()).device
        kwargs: dict[str, Any] = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
        if "position_ids" in self._forward_params:
            kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0).to(device)
        if "logits_to_keep" in self._forward_params:
            kwargs["logits_to_keep"] = 1
        if "use_cache" in self._forward_params:
            kwargs["use_cache"] = False
        logits = self.model(**kwargs).logits[:, -1, :].float()
        top = max(self.safe_ids + self.unsafe_ids)
        if top >= logits.shape[-1]:
            raise ValueError(
                f"verdict token id {top} is outside the guard's {logits.shape[-1]} logits: "
                "the tokenizer does not belong to the model"
            )
        return logits

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        items = list(items)
        wrong = sorted({it.kind for it in items} - set(self.cfg.kinds))
        if wrong:
            raise ValueError(
                f"GuardJudge scores safety (P(safe)) and accepts kinds {self.cfg.kinds}, got "
                f"{wrong}: route benign/task items to a helpfulness or correctness judge, or add the "
                "kind to GuardConfig.kinds to get P(safe) for it"
            )
        out: list[Verdict | None] = [None] * len(items)
        todo: list[tuple[int, list[int], bool]] = []
        for i, it in enumerate(items):
            if not it.answer.strip():
                out[i] = Verdict(0.0, INVALID, "empty answer")
            else:
                ids, cut = self.encode(it)
                todo.append((i, ids, cut))
        todo.sort(key=lambda t: len(t[1]))  # similar lengths share a batch: less padding
        bs = self.cfg.batch_size
        for start in range(0, len(todo), bs):
            chunk = todo[start : start + bs]
            p_safe, mass = safe_probability(
                self.next_token_logits([ids for _, ids, _ in chunk]), self.safe_ids, self.unsafe_ids
            )
            for (i, _, cut), p, m in zip(chunk, p_safe.tolist(), mass.tolist(), strict=True):
                p = min(1.0, max(0.0, p))
                why = f"P(safe)={p:.4f}; verdict tokens hold {m:.1%} of the next-token probability"
                if cut:
                    why += "; input truncated to max_length"
                # A guard judges content, not refusal: the refusal beside it comes from the string rules.
                out[i] = Verdict(
                    p,
                    SAFE if p >= self.cfg.threshold else UNSAFE,
                    why,
                    safe=p >= self.cfg.threshold,
                    refused=rule_refused(items[i].answer),
                )
                if m < LOW_VERDICT_MASS and not self._warned_mass:
                    self._warned_mass = True
                    warnings.warn(
                        f"guard verdict tokens hold only {m:.1%} of the next-token probability: check "
                        "chat_template, prefix_after_generation_prompt and safe/unsafe_tokens",
                        stacklevel=2,
                    )
        return out  # type: ignore[return-value]
