"""On-policy flawed prefixes: the policy's own unsafe reasoning, cut at its first unsafe step.

Static RECAP prefills are written by other models (a helpful-only one, an over-conservative one). In the
style of Self-ReSET, this module scans the policy's *own* rollouts instead: each unsafe trajectory is
split into steps at sentence boundaries, the growing prefixes are judged in one batch, and the
trajectory is cut right after its first unsafe step. That prefix — reasoning the policy itself wrote
and that already went wrong — is stored in a bounded buffer and replayed later as a prefill, so the
policy learns to recover from the mistakes it actually makes. This is an approximation inside RECAP's
prefill slots (sentence cuts, replayed as a slot's prefill); Self-ReSET itself — token-level streaming
cuts re-rolled as groups of their own, benign prompts re-queued — is ``recap.data.selfreset``.

* ``split_steps`` / ``first_unsafe_cut``: where to cut one reasoning.
* ``toy_step_judge`` (exact, miniature world) / ``judge_step_fn`` (any recap ``Judge``): which
  prefixes are unsafe.
* ``PrefixBuffer``: the bounded store of cuts (FIFO, per-example cap, duplicates dropped).
* ``step_judge_for``: the step judge a run's ``prefill_sources.judge`` names.

Which prefill a training step uses — static, on-policy or both by weight, and how long — is
``recap.data.prefill_sources`` (``PrefillSourceConfig``, ``PrefillPlanner``).
"""

from __future__ import annotations

import random
import re
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields, replace

from recap.rewards.judges import INVALID, Judge, JudgeItem, checked_judge
from recap.toy import world

StepJudge = Callable[[list[str]], list[bool]]

# A step ends after sentence punctuation that is followed by whitespace (or the end of the text) —
# closing quotes/brackets stay with it — or at a newline. The whitespace after the end joins the step.
_STEP_END = re.compile(r"(?:[.!?]+[\"')\]]*(?=\s|\Z)|\n)\s*")
_CONTENT = re.compile(r"\w")


def split_steps(reasoning: str) -> list[str]:
    """Split ``reasoning`` into steps at sentence boundaries: after ``.``, ``!`` or ``?`` followed by
    whitespace (this covers the miniature world's ``" . "`` separator, where the period is a word of
    its own) and at newlines.

    ``"".join(split_steps(text)) == text`` exactly: the whitespace after a boundary stays with the
    step it ends. A piece without any word character (leading whitespace, a stray ``" . "``) is merged
    into its neighbour — the preceding step, or the following one at the very start — so every step
    says something. Empty or whitespace-only text gives ``[]``.
    """
    if not reasoning.strip():
        return []
    pieces, start = [], 0
    for m in _STEP_END.finditer(reasoning):
        if m.end() > start:
            pieces.append(reasoning[start : m.end()])
            start = m.end()
    if start < len(reasoning):
        pieces.append(reasoning[start:])
    steps: list[str] = []
    carry = ""  # content-free text seen before the first real step
    for piece in pieces:
        if _CONTENT.search(piece):
            steps.append(carry + piece)
            carry = ""
        elif steps:
            steps[-1] += piece
        else:
            carry += piece
    if carry:  # no step has a word character (e.g. "... ?"): keep the text whole
        steps.append(carry)
    return steps


@dataclass(frozen=True)
class Cut:
    """Where a reasoning first goes wrong."""

    prefix: str  # the reasoning through the end of the first unsafe step, trailing whitespace stripped
    step: int  # 0-based index of that step
    n_steps: int  # number of steps of the whole reasoning


def first_unsafe_cut(reasoning: str, is_unsafe: StepJudge) -> Cut | None:
    """Cut ``reasoning`` after its first unsafe step, or None when no prefix is unsafe.

    ``is_unsafe`` is called once, with every growing prefix (through step 0, through step 1, …, each
    with trailing whitespace stripped), and must return one bool per prefix.
    """
    steps = split_steps(reasoning)
    if not steps:
        return None
    prefixes, text = [], ""
    for step in steps:
        text += step
        prefixes.append(text.rstrip())
    flags = list(is_unsafe(prefixes))
    if len(flags) != len(prefixes):
        raise ValueError(
            f"the step judge returned {len(flags)} flags for {len(prefixes)} prefixes (expected one bool per prefix)"
        )
    for i, unsafe in enumerate(flags):
        if unsafe:
            return Cut(prefix=prefixes[i], step=i, n_steps=len(steps))
    return None


def _sentence_key(text: str) -> str:
    """A sentence compared as the world writes it: lower-case, single spaces, no final punctuation."""
    words = text.lower().split()
    while words and words[-1] in {".", "!", "?"}:
        words.pop()
    return " ".join(words)


def toy_step_judge(kind: str) -> StepJudge:
    """The miniature world's exact step judge for requests of ``kind``.

    A prefix is unsafe when one of its sentences *is* a counter-aligned sentence of the world — any of
    ``world.UNSAFE_SENTENCES`` for ``"harmful"``, any of ``world.REFUSING_SENTENCES`` for ``"benign"``
    (train and eval pools alike). Sentences are compared whole after normalisation, so a sentence that
    merely contains one (or a longer word that contains its words) does not count.
    """
    pools = {"harmful": world.UNSAFE_SENTENCES, "benign": world.REFUSING_SENTENCES}
    if kind not in pools:
        raise ValueError(f"toy_step_judge: kind must be 'harmful' or 'benign', got {kind!r}")
    counter = {_sentence_key(s) for s in pools[kind]}

    def is_unsafe(prefixes: list[str]) -> list[bool]:
        return [any(_sentence_key(s) in counter for s in split_steps(p)) for p in prefixes]

    return is_unsafe


def judge_step_fn(judge: Judge, prompt: str, kind: str, threshold: float = 0.5) -> StepJudge:
    """A step judge for real models: ``judge`` reads every growing prefix as if it were the answer to
    ``prompt`` (one batched call) and a prefix is unsafe when its score is below ``threshold`` — for
    a harmful prompt the prefix complies, for a benign one it refuses.

    A verdict labelled ``invalid`` (the judge could not read the prefix) never counts as unsafe. Use a
    judge that reads reasoning (an LLM guard or rubric): to a string-match judge every non-refusing
    prefix of a harmful prompt looks like compliance, so it would cut at step 0.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")

    def is_unsafe(prefixes: list[str]) -> list[bool]:
        verdicts = checked_judge(judge, [JudgeItem(prompt, p, kind, None) for p in prefixes], "prefixes")
        return [v.label != INVALID and v.score < threshold for v in verdicts]

    return is_unsafe


# --------------------------------------------------------------------------------------------
# The buffer of on-policy prefixes
# --------------------------------------------------------------------------------------------
@dataclass
class BufferEntry:
    """One on-policy prefix of one training example."""

    example_id: str
    kind: str
    prefix: str
    step: int  # 0-based index of the cut step
    n_steps: int  # steps of the whole reasoning it was cut from
    added_at: int = 0  # training step at which the buffer stored it (set by ``PrefixBuffer.add``)


class PrefixBuffer:
    """A bounded store of on-policy prefixes.

    Entries leave oldest first (FIFO) once there are more than ``capacity``; an example keeps at most
    ``per_example`` entries, its oldest leaving first. An entry equal to one already stored (same
    example id and prefix) is not stored again.
    """

    def __init__(self, capacity: int, per_example: int = 4):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        if per_example < 1:
            raise ValueError(f"per_example must be at least 1, got {per_example}")
        self.capacity = capacity
        self.per_example = per_example
        self._entries: OrderedDict[tuple[str, str], BufferEntry] = OrderedDict()  # oldest first
        self.added = self.evicted = self.duplicates = self.refreshes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[BufferEntry]:
        """The stored entries, oldest first."""
        return list(self._entries.values())

    def _insert(self, entry: BufferEntry) -> None:
        mine = [k for k in self._entries if k[0] == entry.example_id]
        for key in mine[: max(0, len(mine) - self.per_example + 1)]:
            del self._entries[key]
            self.evicted += 1
        self._entries[(entry.example_id, entry.prefix)] = entry
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self.evicted += 1

    def add(self, entries: Iterable[BufferEntry], step: int) -> int:
        """Store ``entries`` as added at training step ``step``; returns how many were stored."""
        n = 0
        for entry in entries:
            if (entry.example_id, entry.prefix) in self._entries:
                self.duplicates += 1
                continue
            self._insert(replace(entry, added_at=step))
            n += 1
        self.added += n
        self.refreshes += n > 0
        return n

    def sample(self, kind: str, rng: random.Random, example_id: str | None = None) -> BufferEntry | None:
        """An entry of ``example_id`` (of ``kind``) if it has one, else one drawn uniformly among the
        entries of ``kind``, else None."""
        pool = [e for e in self._entries.values() if e.kind == kind]
        own = [e for e in pool if e.example_id == example_id] if example_id is not None else []
        if own:
            return rng.choice(own)
        return rng.choice(pool) if pool else None

    def stats(self) -> dict:
        """Counters since creation (or restore) and the shape of the current entries.

        ``cut_step_mean`` and ``cut_fraction_mean`` (mean of ``(step + 1) / n_steps``: how far into
        the reasoning the cut falls) are None when the buffer is empty.
        """
        entries = list(self._entries.values())
        n = len(entries)
        return {
            "size": n,
            "capacity": self.capacity,
            "added": self.added,
            "evicted": self.evicted,
            "duplicates": self.duplicates,
            "refreshes": self.refreshes,
            "by_kind": dict(sorted(Counter(e.kind for e in entries).items())),
            "cut_step_mean": sum(e.step for e in entries) / n if n else None,
            "cut_fraction_mean": sum((e.step + 1) / e.n_steps for e in entries) / n if n else None,
            "cut_step_histogram": dict(sorted(Counter(e.step for e in entries).items())),
        }

    def to_rows(self) -> list[dict]:
        """The entries as JSON-ready dicts, oldest first."""
        return [asdict(e) for e in self._entries.values()]

    @classmethod
    def from_rows(cls, rows: Iterable[dict], capacity: int, per_example: int = 4) -> PrefixBuffer:
        """A buffer holding ``rows`` (from ``to_rows``) in their order with their ``added_at``; the
        bounds apply as if they were added again. The counters of ``stats`` start from zero."""
        buf = cls(capacity, per_example)
        names = {f.name for f in fields(BufferEntry)}
        for i, row in enumerate(rows):
            missing = names - set(row)
            if missing:
                raise ValueError(f"prefix buffer row {i} lacks {', '.join(sorted(missing))}")
            buf._insert(BufferEntry(**{k: row[k] for k in names}))
        buf.evicted = 0
        return buf


def step_judge_for(spec: str, run_judges: dict[str, Judge] | None = None) -> Callable[[str, str], StepJudge]:
    """The step judge factory of ``PrefillSourceConfig.judge``: ``toy`` (or ``auto`` with the toy run
    judge) is the world's exact judge; ``auto`` otherwise applies the run's judge of each kind to growing
    prefixes; any other value is a judge spec (``recap.rewards.factory.load_judge``)."""
    from recap.rewards.factory import load_judge
    from recap.rewards.judges import judge_name

    run_judges = run_judges or {}
    if spec == "toy" or (spec == "auto" and any(judge_name(j) == "toy-exact" for j in run_judges.values())):
        return lambda prompt, kind: toy_step_judge(kind)
    if spec == "auto":
        if not run_judges:
            raise ValueError("prefill_sources.judge 'auto' needs the run's judges")
        return lambda prompt, kind: judge_step_fn(run_judges[kind], prompt, kind)
    judge = load_judge(spec)
    return lambda prompt, kind: judge_step_fn(judge, prompt, kind)
