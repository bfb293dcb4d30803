"""Thinking-aware rendering: prompts that end *inside* the assistant's think block, and the split of a
generated text into (reasoning, final answer).

Three template families are handled by one rule, "open the think block unless the template already
did":

* templates whose generation prompt already opens ``<think>`` (DeepSeek-R1-Distill): the prefill is
  appended right after it;
* templates with a thinking switch (Qwen3): rendered with ``enable_thinking=True`` (the switch is never
  allowed to write an empty ``<think></think>`` pair) and the think block is opened by us;
* templates with no thinking tags at all (SmolLM2, Llama): response prefill — the assistant turn starts
  with ``<think>\\n`` followed by the prefill. Optionally a system prompt asks the model to think in
  tags first (``THINK_SYSTEM_PROMPT``).

The rendered prompt is text meant for ``tokenizer(text)`` with its default special tokens, which is how
TRL's ``GRPOTrainer`` tokenizes raw-text prompts. When the tokenizer itself adds a BOS token, the
template's literal BOS is removed from the text so the ids never start with two BOS tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
UNCLOSED_MODES = ("invalid", "continuation")
THINK_SYSTEM_PROMPT = (
    "You are a helpful assistant. First think step by step inside <think> </think> tags, "
    "then write your final answer after </think>."
)


def with_think_system(messages: Sequence[dict]) -> list[dict]:
    """``messages`` with ``THINK_SYSTEM_PROMPT`` as a system message in front, unless they have one."""
    msgs = list(messages)
    if any(m["role"] == "system" for m in msgs):
        return msgs
    return [{"role": "system", "content": THINK_SYSTEM_PROMPT}, *msgs]


def _template_opens_think(generation_prompt: str, think_open: str, think_close: str) -> bool:
    """Whether the rendered generation prompt leaves a think block open."""
    opened = generation_prompt.rfind(think_open)
    return opened != -1 and generation_prompt.rfind(think_close) < opened


def _tokenizer_adds_bos(tokenizer) -> bool:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    ids = tokenizer("x")["input_ids"]
    return len(ids) > 0 and ids[0] == bos


def render_prompt(
    tokenizer,
    messages: Sequence[dict],
    prefill: str | None = None,
    *,
    think_open: str = THINK_OPEN,
    think_close: str = THINK_CLOSE,
    chat_template: str | None = None,
) -> str:
    """Render ``messages`` with the tokenizer's chat template, ending inside an open think block
    that holds ``prefill`` (if any).

    Args:
        tokenizer: a Hugging Face tokenizer with a chat template.
        messages: the conversation; its last message is the user's.
        prefill: reasoning text the model must continue (counter-aligned prefill or attack).
        think_open / think_close: the model's thinking tags.
        chat_template: override the tokenizer's template.

    Returns:
        The prompt text; ``tokenizer(text)`` gives the exact ids the policy conditions on.
    """
    kwargs = dict(tokenize=False, enable_thinking=True, chat_template=chat_template)
    source = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"tokenizer {source!r} has no chat template: a prompt with a thinking prefill cannot be "
            "rendered (use a chat/instruct model, or give a template)"
        )
    text = tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, **kwargs)
    # Only the generation prompt (what the template adds for the assistant) may open the think block:
    # a "<think>" inside the user's own text must not count.
    history = tokenizer.apply_chat_template(list(messages), add_generation_prompt=False, **kwargs)
    generation_prompt = text[len(history) :] if text.startswith(history) else text[-64:]
    if not generation_prompt.strip():
        raise ValueError(
            f"the chat template of {source!r} adds no assistant turn for add_generation_prompt: a "
            "thinking prefill has nowhere to go"
        )
    closes = generation_prompt.rfind(think_close)
    if (
        closes != -1
        and closes > generation_prompt.rfind(think_open) > -1
        or (closes != -1 and think_open not in generation_prompt)
    ):
        raise ValueError(
            f"the chat template of {source!r} closes the think block in its generation prompt "
            f"({generation_prompt.strip()!r}): a thinking prefill cannot be placed inside it "
            "(enable thinking in the template, or give another chat_template)"
        )
    if not _template_opens_think(generation_prompt, think_open, think_close):
        sep = "" if text.endswith((" ", "\n")) or not text else "\n"
        text = f"{text}{sep}{think_open}\n"
    if prefill:
        # A separator keeps the first prefill word from fusing with the tag.
        if not text.endswith((" ", "\n")):
            text += " "
        text += prefill
    bos = getattr(tokenizer, "bos_token", None)
    if bos and text.startswith(bos) and _tokenizer_adds_bos(tokenizer):
        text = text[len(bos) :]
    return text


@dataclass(frozen=True)
class SplitText:
    """A generated text cut at the closing think tag."""

    reasoning: str
    answer: str
    closed: bool  # False: the model never wrote the closing tag (no final answer)


def split_reasoning(text: str, think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE) -> SplitText:
    """Split ``text`` (a completion, or prefill + completion) into reasoning and final answer.

    The answer is everything after the *first* closing tag; an opening tag at the start is dropped.
    Without a closing tag the whole text is reasoning and the answer is empty.
    """
    body = text.lstrip()
    if body.startswith(think_open):
        body = body[len(think_open) :]
    cut = body.find(think_close)
    if cut == -1:
        return SplitText(reasoning=body.strip(), answer="", closed=False)
    return SplitText(reasoning=body[:cut].strip(), answer=body[cut + len(think_close) :].strip(), closed=True)


def final_answer(
    completion: str,
    injected: str = "",
    unclosed: str = "invalid",
    think_open: str = THINK_OPEN,
    think_close: str = THINK_CLOSE,
) -> SplitText:
    """The (reasoning, answer) of a model's ``completion`` that continued the attacker's or trainer's
    ``injected`` text (the prefill; ``""`` when nothing was injected).

    ``unclosed`` says what a completion that never writes the closing tag counts as:

    * ``"invalid"`` (reasoning models): no final answer; callers give it the format penalty;
    * ``"continuation"`` (models without thinking tags, e.g. SmolLM2, which never close a think block
      they did not open): everything the model itself wrote is the answer the user reads, so it is
      judged; the returned split has ``closed=False`` and the injected text as reasoning.
    """
    if unclosed not in UNCLOSED_MODES:
        raise ValueError(f"unclosed must be one of {', '.join(UNCLOSED_MODES)}, got {unclosed!r}")
    split = split_reasoning(injected + completion, think_open, think_close)
    if split.closed or unclosed == "invalid":
        return split
    return SplitText(reasoning=injected.strip(), answer=completion.strip(), closed=False)
