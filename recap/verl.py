"""Export of a RECAP mixture for verl (``recap export verl``): verl's Parquet schema and a reward module.

Rows follow verl's data-preparation schema::

    data_source   "recap/<kind>" (recap/harmful, recap/benign, recap/task)
    prompt        the conversation, [{"role": ..., "content": ...}, ...] (no prefill: see below)
    ability       "safety" (harmful), "overrefusal" (benign) or "math" (task)
    reward_model  {"style": "rule", "ground_truth": the task's reference answer, "" otherwise}
    extra_info    {"index", "id", "kind", "split", "question": the user's request,
                   "prefill": the counter-aligned reasoning ("" when not prefilled),
                   "prompt_text": the exact text recap trains on — chat template, opened think block
                   and prefill — when the export was given the policy's tokenizer, else ""}

The prefill belongs at the start of the assistant's thinking, *after* the chat template's generation
prompt, and only the continuation is trained. verl's ``RLHFDataset`` tokenizes
``apply_chat_template(prompt, add_generation_prompt=True)``, which knows nothing of a prefill, so a
RECAP run on verl tokenizes ``extra_info.prompt_text`` instead (a small ``data.custom_cls`` dataset;
docs/scaling.md shows it). The prompt ids then end with the prefill's ids and the response — the
only part in verl's loss — is the policy's continuation, as in ``recap train``.

``compute_score(data_source, solution_str, ground_truth, extra_info)`` is verl's reward signature
(``custom_reward_function.path`` points at the module the export writes). ``solution_str`` is the
decoded response: the continuation after the prefill. The score is recap's reward router on it:
the final answer after ``</think>`` judged by the kind's judge, the format penalty when there is none.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from recap.chat import render_prompt
from recap.data.examples import Example
from recap.files import atomic_write, write_text

ABILITY = {"harmful": "safety", "benign": "overrefusal", "task": "math"}
REWARD_MODULE = '''"""RECAP reward for verl, written by `recap export verl` (settings below).

verl: custom_reward_function.path={path} custom_reward_function.name=compute_score
"""

from recap.verl import compute_score as _compute_score

JUDGE = {judge!r}
UNCLOSED = {unclosed!r}
FORMAT_PENALTY = {format_penalty!r}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return _compute_score(data_source, solution_str, ground_truth, extra_info, judge=JUDGE, unclosed=UNCLOSED,
                          format_penalty=FORMAT_PENALTY)
'''


def verl_rows(examples: Sequence[Example], tokenizer=None, split: str = "train") -> list[dict]:
    """One verl row per example (see the module docstring for the schema)."""
    rows = []
    for i, e in enumerate(examples):
        if e.kind not in ABILITY:
            raise ValueError(f"example {e.id!r}: kind {e.kind!r} has no verl ability (known: {', '.join(ABILITY)})")
        rows.append({
            "data_source": f"recap/{e.kind}",
            "prompt": [{"role": m["role"], "content": m["content"]} for m in e.messages()],
            "ability": ABILITY[e.kind],
            "reward_model": {"style": "rule", "ground_truth": e.reference or ""},
            "extra_info": {"index": i, "id": e.id, "kind": e.kind, "split": split, "question": e.user_text(),
                           "prefill": e.prefill or "",
                           "prompt_text": render_prompt(tokenizer, e.messages(), e.prefill) if tokenizer else ""},
        })
    return rows


def export_verl(examples: Sequence[Example], out_dir: str | Path, *, tokenizer=None, judge: str = "rules",
                unclosed: str = "invalid", format_penalty: float = 0.0) -> dict[str, Path]:
    """Write ``train.parquet`` and ``recap_reward.py`` into ``out_dir`` (each via a temporary file and a
    rename, so a crash never leaves a half-written file). Returns their paths."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recap.chat import UNCLOSED_MODES
    from recap.rewards.judges import load_judges

    if unclosed not in UNCLOSED_MODES:
        raise ValueError(f"unclosed must be one of {', '.join(UNCLOSED_MODES)}, got {unclosed!r}")
    load_judges(judge)  # a bad judge spec fails here, not inside a verl worker
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data, module = out / "train.parquet", out / "recap_reward.py"
    with atomic_write(data, "wb") as fh:
        pq.write_table(pa.Table.from_pylist(verl_rows(examples, tokenizer)), fh)
    write_text(module, REWARD_MODULE.format(path=module.resolve(), judge=judge, unclosed=unclosed,
                                            format_penalty=float(format_penalty)))
    return {"data": data, "reward": module}


@functools.lru_cache(maxsize=8)
def _router(judge: str, unclosed: str, format_penalty: float):
    from recap.rewards.judges import load_judges
    from recap.rewards.router import RewardRouter

    return RewardRouter(load_judges(judge).judges, format_penalty=format_penalty, unclosed=unclosed)


def compute_score(data_source: str, solution_str: str, ground_truth, extra_info: dict | None = None, *,
                  judge: str = "rules", unclosed: str = "invalid", format_penalty: float = 0.0) -> float:
    """verl's reward function: recap's reward for one response (``solution_str``, the continuation)."""
    info = dict(extra_info or {})
    kind = info.get("kind") or str(data_source).removeprefix("recap/")
    if kind not in ABILITY:
        raise ValueError(f"data_source {data_source!r}: not a recap row (expected recap/harmful, recap/benign or recap/task)")
    reference = ground_truth if ground_truth not in (None, "") else None
    router = _router(judge, unclosed, float(format_penalty))
    return float(router([info.get("question", "")], [solution_str], kind=[kind], reference=[reference])[0])
