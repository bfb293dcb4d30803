"""The reward functions TRL calls: ``AnswerReward`` (judges on the final answer only) and the overlong punishment.

The policy's completion is cut at the closing think tag; only the text after it is judged, together
with the user's request — the last user message of the row's conversation, exactly what evaluation
gives a judge (``Example.user_text()``), never the rendered template or the injected prefill. A
completion that never closes its thinking, or closes it with an empty answer, gets ``format_penalty``
whatever the judge would have said (a missing answer on a harmful prompt must not count as a safe
refusal). With ``unclosed="continuation"`` (models without thinking tags) a completion that never
closes the block is judged as a whole instead (see ``recap.inference.chat.final_answer``).

``SoftOverlongPunishment`` is DAPO's soft overlong punishment (TRL's ``get_soft_overlong_punishment``)
applied with each row's own token budget, an extra reward function next to ``AnswerReward``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from recap.inference.chat import THINK_CLOSE, THINK_OPEN, final_answer
from recap.rewards.judges import INVALID, Judge, JudgeItem, KindRouter, Verdict


def user_request(conversation: str | Sequence[Mapping]) -> str:
    """The last user message of a conversation (a list of messages or its JSON text, the ``conversation``
    column of ``recap.train.rl_rows``): what ``Example.user_text()`` returns."""
    messages = json.loads(conversation) if isinstance(conversation, str) else conversation
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


class AnswerReward:
    """Callable reward for TRL's ``GRPOTrainer``: ``(prompts, completions, kind, reference, conversation)
    -> scores``.

    It cuts each completion at the closing think tag, gives the format penalty where there is no answer,
    sends the answers to their kind's judge through a ``KindRouter`` (``self.router``) and, when TRL
    passes ``log_metric``, logs the mean reward per kind (``reward/<kind>``).

    Judges get the user's request from the ``conversation`` column (TRL passes dataset columns to reward
    functions by name). TRL's ``prompts`` are the rendered template with the prefill, so a call from a
    trainer (TRL passes ``trainer_state``) without that column is an error. Called directly without
    ``conversation`` (verl, tests), ``prompts`` must already be the user's requests.

    Args:
        judges: a judge for each kind (``harmful``, ``benign``, ``task``).
        format_penalty: reward for a completion with no closing think tag or an empty answer.
        unclosed: ``"invalid"`` (no closing tag ⇒ format penalty) or ``"continuation"`` (the whole
            completion is the answer when the tag never comes).
    """

    def __init__(
        self,
        judges: Mapping[str, Judge],
        format_penalty: float = 0.0,
        think_open: str = THINK_OPEN,
        think_close: str = THINK_CLOSE,
        unclosed: str = "invalid",
    ):
        self.router = KindRouter(judges)
        self.format_penalty = format_penalty
        self.unclosed = unclosed
        self.think_open, self.think_close = think_open, think_close
        self.__name__ = "recap_reward"  # TRL names reward columns after it
        self.last_verdicts: list[Verdict] = []

    def verdicts(
        self,
        requests: Sequence[str],
        completions: Sequence[str],
        kinds: Sequence[str],
        references: Sequence[str | None],
    ) -> list[Verdict]:
        """Verdicts on the final answers of ``completions`` to the user's ``requests``."""
        out: list[Verdict | None] = [None] * len(completions)
        judged: list[int] = []
        items: list[JudgeItem] = []
        for i, (p, c, k, r) in enumerate(zip(requests, completions, kinds, references, strict=True)):
            if k not in self.router.judges:
                raise ValueError(f"unknown kind {k!r} for completion {i}")
            split = final_answer(c, "", self.unclosed, self.think_open, self.think_close)
            if not split.answer:
                why = "no closing think tag" if not split.closed and self.unclosed == "invalid" else "empty answer"
                out[i] = Verdict(self.format_penalty, INVALID, why)
                continue
            judged.append(i)
            items.append(JudgeItem(prompt=p, answer=split.answer, kind=k, reference=r))
        for i, v in zip(judged, self.router.judge(items), strict=True):
            out[i] = v
        self.last_verdicts = out  # type: ignore[assignment]
        return out  # type: ignore[return-value]

    def __call__(
        self, prompts, completions, kind, reference=None, conversation=None, log_metric=None, **kwargs
    ) -> list[float]:
        if conversation is not None:
            requests = [user_request(c) for c in conversation]
        elif "trainer_state" in kwargs:
            raise ValueError(
                "AnswerReward: the training dataset has no 'conversation' column, so the judges would "
                "see the rendered prompt and prefill instead of the user's request; build the rows "
                "with recap.train.rl_rows"
            )
        else:
            requests = prompts
        refs = reference if reference is not None else [None] * len(completions)
        verdicts = self.verdicts(requests, completions, kind, refs)
        scores = [v.score for v in verdicts]
        if log_metric is not None:
            for k in sorted(set(kind)):
                ks = [s for s, kk in zip(scores, kind) if kk == k]
                log_metric(f"reward/{k}", sum(ks) / len(ks))
        return scores


class SoftOverlongPunishment:
    """DAPO's soft overlong punishment (Eq. 13; TRL's ``get_soft_overlong_punishment``) with each row's
    own length limit: 0 up to ``limit − buffer`` tokens, then falling linearly to −1 at the limit, −1
    beyond it. The limit is the row's ``completion_budget`` column when the trainer sets one (a total
    length budget leaves prefilled rows fewer tokens), else ``max_completion_length``. Returns values in
    [−1, 0]; TRL adds them, times the reward weight, to the judge's reward."""

    __name__ = "overlong_punishment"

    def __init__(self, max_completion_length: int, buffer: int):
        if buffer <= 0:
            raise ValueError(f"overlong buffer must be positive, got {buffer}")
        self.max_completion_length, self.buffer = max_completion_length, buffer

    def __call__(self, completion_ids, completion_budget=None, **kwargs) -> list[float]:
        from trl.rewards import get_soft_overlong_punishment

        limits = completion_budget or [self.max_completion_length] * len(completion_ids)
        return [
            get_soft_overlong_punishment(limit, min(self.buffer, limit))([ids])[0]
            for ids, limit in zip(completion_ids, limits, strict=True)
        ]
