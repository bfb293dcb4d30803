"""Rewards on the final answer only, routed by the example's kind.

The policy's completion is cut at the closing think tag; only the text after it is judged. A
completion that never closes its thinking, or closes it with an empty answer, gets
``format_penalty`` whatever the judge would have said (a missing answer on a harmful prompt must not
count as a safe refusal). With ``unclosed="continuation"`` (models without thinking tags) a completion
that never closes the block is judged as a whole instead (see ``recap.chat.final_answer``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from recap.chat import THINK_CLOSE, THINK_OPEN, final_answer
from recap.rewards.judges import INVALID, Judge, JudgeItem, KindRouter, Verdict


class RewardRouter:
    """Callable reward for TRL's ``GRPOTrainer``: ``(prompts, completions, kind, reference) -> scores``.

    Args:
        judges: a judge for each kind (``harmful``, ``benign``, ``task``).
        format_penalty: reward for a completion with no closing think tag or an empty answer.
        unclosed: ``"invalid"`` (no closing tag ⇒ format penalty) or ``"continuation"`` (the whole
            completion is the answer when the tag never comes).
    """

    def __init__(self, judges: Mapping[str, Judge], format_penalty: float = 0.0,
                 think_open: str = THINK_OPEN, think_close: str = THINK_CLOSE, unclosed: str = "invalid"):
        self.router = KindRouter(judges)
        self.format_penalty = format_penalty
        self.unclosed = unclosed
        self.think_open, self.think_close = think_open, think_close
        self.__name__ = "recap_reward"  # TRL names reward columns after it
        self.last_verdicts: list[Verdict] = []

    def verdicts(self, prompts: Sequence[str], completions: Sequence[str], kinds: Sequence[str],
                 references: Sequence[str | None]) -> list[Verdict]:
        out: list[Verdict | None] = [None] * len(completions)
        judged: list[int] = []
        items: list[JudgeItem] = []
        for i, (p, c, k, r) in enumerate(zip(prompts, completions, kinds, references, strict=True)):
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

    def __call__(self, prompts, completions, kind, reference=None, log_metric=None, **kwargs) -> list[float]:
        refs = reference if reference is not None else [None] * len(completions)
        verdicts = self.verdicts(prompts, completions, kind, refs)
        scores = [v.score for v in verdicts]
        if log_metric is not None:
            for k in sorted(set(kind)):
                ks = [s for s, kk in zip(scores, kind) if kk == k]
                log_metric(f"reward/{k}", sum(ks) / len(ks))
        return scores
