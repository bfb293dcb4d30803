"""The exact judge of the miniature world: answers come from a closed grammar, so the label is read
off the text, not estimated."""

from __future__ import annotations

from collections.abc import Sequence

from recap.rewards.judges import CORRECT, INCORRECT, INVALID, REFUSAL, JudgeItem, Verdict, refusal_verdict
from recap.toy import world


class ToyJudge:
    name = "toy-exact"

    def judge(self, items: Sequence[JudgeItem]) -> list[Verdict]:
        out = []
        for it in items:
            label = world.classify_answer(it.answer)
            if it.kind == "task":
                ok = label == f"number:{it.reference}"
                out.append(Verdict(float(ok), CORRECT if ok else INCORRECT, label))
            elif label == "invalid" or label.startswith("number:"):
                out.append(Verdict(0.0, INVALID, label))
            else:
                out.append(refusal_verdict(it.kind, label == REFUSAL))
        return out
