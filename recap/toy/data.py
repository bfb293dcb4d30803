"""Data files of the miniature world: RL training prompts (train phrasings, counter-aligned reasoning
from the train pool) and evaluation prompts (held-out phrasings; attacks use the eval pool)."""

from __future__ import annotations

import random

from recap.data.examples import Example
from recap.toy import world


def _examples(split: str, seed: int, per_request: int, n_tasks: int) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for req in [*world.harmful_requests(), *world.benign_requests()]:
        for j, template in enumerate(
            rng.sample(world.phrasings(req.kind, split), k=per_request)
            if per_request <= len(world.phrasings(req.kind, split))
            else [rng.choice(world.phrasings(req.kind, split)) for _ in range(per_request)]
        ):
            out.append(
                Example(
                    id=f"toy-{split}-{req.kind}-{len(out)}",
                    kind=req.kind,
                    prompt=world.phrase(req, template),
                    counter_reasoning=world.flawed_reasoning(req, rng, split),
                    counter_source=f"toy-grammar:{'unsafe' if req.kind == 'harmful' else 'refusing'}:{split}-pool",
                    source=f"toy-{split}",
                )
            )
    tasks = world.task_requests()
    for req in rng.sample(tasks, k=min(n_tasks, len(tasks))):
        template = rng.choice(world.phrasings("task", split))
        out.append(
            Example(
                id=f"toy-{split}-task-{len(out)}",
                kind="task",
                prompt=world.phrase(req, template),
                reference=req.reference,
                source=f"toy-{split}",
            )
        )
    return out


def train_examples(seed: int = 0, per_request: int = 4, n_tasks: int = 120) -> list[Example]:
    """RL prompts: every request in each train phrasing, with counter-aligned reasoning from the train pool."""
    return _examples("train", seed, per_request, n_tasks)


def unseen_reasoning(examples: list[Example], seed: int = 0) -> dict[str, str]:
    """``{id: reasoning}`` for the harmful and benign examples, from ``world.unseen_reasoning``: a
    generator of counter-aligned reasoning that RL never saw (other construction, eval-pool sentences)."""
    rng = random.Random(seed + 20_000)
    requests = [*world.harmful_requests(), *world.benign_requests()]
    out = {}
    for e in examples:
        if e.kind not in ("harmful", "benign"):
            continue
        matches = [r for r in requests if r.kind == e.kind and f" {r.content} " in f" {e.user_text()} "]
        if not matches:
            raise ValueError(f"example {e.id!r}: not a request of the miniature world")
        out[e.id] = world.unseen_reasoning(max(matches, key=lambda r: len(r.content)), rng)
    return out


def eval_examples(seed: int = 0, per_request: int = 2, n_tasks: int = 80) -> list[Example]:
    """Evaluation prompts in the held-out phrasings, with counter-aligned reasoning from the eval pool
    (sentences RL never saw)."""
    return _examples("eval", seed + 10_000, per_request, n_tasks)
