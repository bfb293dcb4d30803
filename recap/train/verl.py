"""Export of a RECAP mixture for verl (``recap export verl``): verl's Parquet schema, a reward module, and
the dataset class and agent loop that make verl condition on recap's exact prompt ids.

Rows follow verl's data-preparation schema::

    data_source   "recap/<kind>" (recap/harmful, recap/benign, recap/task)
    prompt        the conversation, [{"role": ..., "content": ...}, ...] (no prefill: see below)
    ability       "safety" (harmful), "overrefusal" (benign) or "math" (task)
    reward_model  {"style": "rule", "ground_truth": the task's reference answer, "" otherwise}
    extra_info    {"index", "id", "kind", "split", "question": the user's request,
                   "prefill": the counter-aligned reasoning ("" when not prefilled),
                   "prompt_text": the text verl tokenizes (see below), "" without the policy's tokenizer,
                   "prompt_tokens": its length in tokens (null without the tokenizer)}

The prefill belongs at the start of the assistant's thinking, *after* the chat template's generation
prompt, and only the continuation is trained. verl builds prompt ids from
``apply_chat_template(prompt, add_generation_prompt=True)``, which knows nothing of a prefill, and
tokenizes text with ``add_special_tokens=False``. ``recap train`` (TRL) tokenizes its rendered prompt
(``recap.inference.chat.render_prompt``) with the tokenizer's default special tokens, and that text has the
template's literal BOS removed when the tokenizer adds one itself (Llama, DeepSeek-R1-Distill-Llama).
``prompt_text`` is therefore ``verl_prompt_text``: the rendered prompt with the special tokens the
tokenizer adds written out, checked at export to give, under ``add_special_tokens=False``, exactly the
ids ``recap train`` conditions on — BOS included. Two verl hooks read it:

* ``RecapRLHFDataset`` (``data.custom_cls``), for verl versions whose ``RLHFDataset.__getitem__``
  tokenizes (``input_ids``, ``attention_mask``, ``position_ids``, ``raw_prompt_ids``);
* ``RecapAgentLoop`` (``actor_rollout_ref.rollout.agent``), for versions where the agent loop tokenizes
  ``raw_prompt`` itself (verl's ``SingleTurnAgentLoop`` with the prompt ids swapped).

Both subclass verl's classes and are built on first use (``from recap.train.verl import RecapRLHFDataset``),
so verl is needed only where they run; the tokenization they use (``verl_prompt_ids``,
``apply_recap_prompt``) is plain code. The response — the only part in verl's loss, and
``solution_str`` in the reward — is then the policy's continuation, as in ``recap train``.

``compute_score(data_source, solution_str, ground_truth, extra_info)`` is verl's reward signature
(``custom_reward_function.path`` points at the module the export writes). The score is recap's reward
(``AnswerReward``) on the response: the final answer after ``</think>`` judged by the kind's judge on the user's
request, the format penalty when there is none.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from recap.data.examples import Example
from recap.util.files import atomic_write, write_text

ABILITY = {"harmful": "safety", "benign": "overrefusal", "task": "math"}
AGENT_LOOP_NAME = "recap_prefill"
REWARD_MODULE = '''"""RECAP reward for verl, written by `recap export verl` (settings below).

verl: custom_reward_function.path={path} custom_reward_function.name=compute_score
"""

from recap.train.verl import compute_score as _compute_score

JUDGE = {judge!r}
UNCLOSED = {unclosed!r}
FORMAT_PENALTY = {format_penalty!r}


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    return _compute_score(data_source, solution_str, ground_truth, extra_info, judge=JUDGE, unclosed=UNCLOSED,
                          format_penalty=FORMAT_PENALTY)
'''
DATASET_MODULE = '''"""verl's data.custom_cls for a RECAP export, written by `recap export verl`: prompt ids from
extra_info.prompt_text, exactly recap train's (needs recap and verl importable in verl's workers).

verl: data.custom_cls.path={path} data.custom_cls.name=RecapRLHFDataset
"""

from recap.train.verl import RecapRLHFDataset  # noqa: F401
'''
AGENT_LOOP_CONFIG = """# verl agent loop for a RECAP export, written by `recap export verl`: verl's single-turn agent loop
# with recap's prompt ids (extra_info.prompt_text, the prefill included).
# verl: actor_rollout_ref.rollout.agent.agent_loop_config_path={path}
#       actor_rollout_ref.rollout.agent.default_agent_loop={name}
- name: {name}
  _target_: recap.train.verl.RecapAgentLoop
"""


def verl_prompt_text(tokenizer, text: str) -> str:
    """The text that verl's tokenization, ``tokenizer(text, add_special_tokens=False)``, turns into the ids
    of ``tokenizer(text)`` — the ids ``recap train`` (TRL) conditions on: ``text`` with the special tokens
    the tokenizer adds itself (a Llama BOS) written out. Raises ``ValueError`` when no such text gives
    exactly those ids (checked, never assumed)."""
    ids = list(tokenizer(text)["input_ids"])
    plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    if ids == plain:
        return text
    k = next((k for k in range(len(ids) - len(plain) + 1) if ids[k : k + len(plain)] == plain), None)
    if k is not None:
        head, tail = ids[:k], ids[k + len(plain) :]
        # a special token's own string (the metaspace decoder rewrites the "▁" in "<｜begin▁of▁sentence｜>"),
        # else its decoded text
        spellings = (
            [lambda t: "".join(tokenizer.convert_ids_to_tokens(t))]
            if hasattr(tokenizer, "convert_ids_to_tokens")
            else []
        )
        for spell in [*spellings, tokenizer.decode]:
            out = spell(head) + text + spell(tail)
            if list(tokenizer(out, add_special_tokens=False)["input_ids"]) == ids:
                return out
    source = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
    raise ValueError(
        f"tokenizer {source!r}: no prompt text gives verl (add_special_tokens=False) the ids recap "
        f"trains on (the tokenizer adds {len(ids) - len(plain)} special tokens; written out as text "
        "they tokenize differently), so a verl run would not train what recap trains"
    )


def verl_prompt_ids(tokenizer, prompt_text: str) -> list[int]:
    """verl's tokenization of ``prompt_text``: ``tokenizer(prompt_text, add_special_tokens=False)``."""
    return list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])


def prompt_text_of(row: dict) -> str:
    """``extra_info.prompt_text`` of a verl row; an error when the export had no tokenizer."""
    info = row.get("extra_info") or {}
    text = info.get("prompt_text") if isinstance(info, dict) else None
    if not text:
        raise ValueError(
            f"verl row {info.get('id', '?') if isinstance(info, dict) else '?'!r}: extra_info.prompt_text "
            "is empty; export with the policy's tokenizer (`recap export verl … --model MODEL`)"
        )
    return text


def _truncate(ids: list[int], max_length: int, truncation: str) -> list[int]:
    """verl's prompt truncation (``data.truncation``): left, right, middle, or error."""
    if len(ids) <= max_length:
        return ids
    if truncation == "left":
        return ids[-max_length:]
    if truncation == "right":
        return ids[:max_length]
    if truncation == "middle":
        left = max_length // 2
        return ids[:left] + ids[len(ids) - (max_length - left) :]
    raise ValueError(
        f"prompt of {len(ids)} tokens is longer than data.max_prompt_length = {max_length} (the "
        "prefill is part of the prompt: raise max_prompt_length to the export's longest prompt)"
    )


def apply_recap_prompt(row: dict, tokenizer, max_length: int, truncation: str = "error") -> dict:
    """``row`` (what verl's ``RLHFDataset.__getitem__`` returned) with its prompt tensors rebuilt from
    ``extra_info.prompt_text`` as verl builds them: ids left-padded to ``max_length`` with the pad token,
    attention mask, position ids (cumsum of the mask − 1, clipped at 0), ``raw_prompt_ids`` (unpadded,
    truncated the same way), ``full_prompts``. Only the keys the row already has are replaced, so a verl
    version that tokenizes in its agent loop instead gets the row unchanged (``RecapAgentLoop`` does it)."""
    import torch

    text = prompt_text_of(row)
    out = dict(row)
    if not {"input_ids", "raw_prompt_ids", "full_prompts"} & set(row):
        return out
    ids = _truncate(verl_prompt_ids(tokenizer, text), max_length, truncation)
    if "input_ids" in row:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        n_pad = max_length - len(ids)
        mask = torch.tensor([0] * n_pad + [1] * len(ids), dtype=torch.long)
        out["input_ids"] = torch.tensor([pad] * n_pad + ids, dtype=torch.long)
        out["attention_mask"] = mask
        out["position_ids"] = torch.clip(torch.cumsum(mask, dim=-1) - 1, min=0)
    if "raw_prompt_ids" in row:
        out["raw_prompt_ids"] = ids
    if "full_prompts" in row:
        out["full_prompts"] = text
    return out


@functools.cache
def _dataset_class():
    try:
        from verl.utils.dataset.rl_dataset import RLHFDataset
    except ImportError as e:
        raise ModuleNotFoundError(
            f"RecapRLHFDataset subclasses verl's RLHFDataset: install verl where it runs ({e})"
        ) from None

    class RecapRLHFDataset(RLHFDataset):
        """verl's ``RLHFDataset`` whose prompt ids are recap's: ``extra_info.prompt_text`` (template, opened
        think block, prefill, and the BOS the tokenizer adds) tokenized as verl tokenizes."""

        def __getitem__(self, item):
            return apply_recap_prompt(
                super().__getitem__(item), self.tokenizer, self.max_prompt_length, self.truncation
            )

    RecapRLHFDataset.__module__, RecapRLHFDataset.__qualname__ = (
        __name__,
        "RecapRLHFDataset",
    )  # picklable as recap.train.verl.RecapRLHFDataset
    return RecapRLHFDataset


@functools.cache
def _agent_loop_class():
    try:
        from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop
    except ImportError as e:
        raise ModuleNotFoundError(
            f"RecapAgentLoop subclasses verl's SingleTurnAgentLoop: install verl where it runs ({e})"
        ) from None

    class RecapAgentLoop(SingleTurnAgentLoop):
        """verl's single-turn agent loop with recap's prompt ids: ``extra_info.prompt_text`` tokenized as verl
        tokenizes, in place of ``apply_chat_template(raw_prompt)`` (verl makes one loop per sample)."""

        async def run(self, sampling_params, **kwargs):
            self._recap_prompt_ids = verl_prompt_ids(self.tokenizer, prompt_text_of(kwargs))
            return await super().run(sampling_params, **kwargs)

        async def apply_chat_template(self, messages, *args, **kwargs):
            return list(self._recap_prompt_ids)

    RecapAgentLoop.__module__, RecapAgentLoop.__qualname__ = (
        __name__,
        "RecapAgentLoop",
    )  # picklable as recap.train.verl.RecapAgentLoop
    return RecapAgentLoop


def __getattr__(name: str):
    if name == "RecapRLHFDataset":
        return _dataset_class()
    if name == "RecapAgentLoop":
        return _agent_loop_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def verl_rows(
    examples: Sequence[Example], tokenizer=None, split: str = "train", think_system_prompt: bool = False
) -> list[dict]:
    """One verl row per example (see the module docstring for the schema). With ``tokenizer`` the prompt
    is ``recap.train.rl_rows``'s — the text ``recap train`` renders — turned into ``verl_prompt_text``."""
    from recap.inference.chat import with_think_system

    rendered = None
    if tokenizer is not None:
        from recap.train import rl_rows

        rendered = [r["prompt"] for r in rl_rows(list(examples), tokenizer, think_system_prompt)]
    rows = []
    for i, e in enumerate(examples):
        if e.kind not in ABILITY:
            raise ValueError(f"example {e.id!r}: kind {e.kind!r} has no verl ability (known: {', '.join(ABILITY)})")
        messages = with_think_system(e.messages()) if think_system_prompt else e.messages()
        text = verl_prompt_text(tokenizer, rendered[i]) if rendered is not None else ""
        rows.append(
            {
                "data_source": f"recap/{e.kind}",
                "prompt": [{"role": m["role"], "content": m["content"]} for m in messages],
                "ability": ABILITY[e.kind],
                "reward_model": {"style": "rule", "ground_truth": e.reference or ""},
                "extra_info": {
                    "index": i,
                    "id": e.id,
                    "kind": e.kind,
                    "split": split,
                    "question": e.user_text(),
                    "prefill": e.prefill or "",
                    "prompt_text": text,
                    "prompt_tokens": len(verl_prompt_ids(tokenizer, text)) if text else None,
                },
            }
        )
    return rows


def export_verl(
    examples: Sequence[Example],
    out_dir: str | Path,
    *,
    tokenizer=None,
    judge: str = "rules",
    unclosed: str = "invalid",
    format_penalty: float = 0.0,
    think_system_prompt: bool = False,
) -> dict:
    """Write ``train.parquet``, ``recap_reward.py`` (the reward), ``recap_verl_dataset.py`` (the
    ``data.custom_cls`` module) and ``recap_agent_loop.yaml`` (the agent loop config) into ``out_dir``, each
    via a temporary file and a rename, so a crash never leaves a half-written file. Returns their paths
    and ``max_prompt_tokens``, the longest prompt (what ``data.max_prompt_length`` must hold; None without
    a tokenizer)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recap.inference.chat import UNCLOSED_MODES
    from recap.rewards.factory import load_judges

    if unclosed not in UNCLOSED_MODES:
        raise ValueError(f"unclosed must be one of {', '.join(UNCLOSED_MODES)}, got {unclosed!r}")
    load_judges(judge)  # a bad judge spec fails here, not inside a verl worker
    rows = verl_rows(examples, tokenizer, think_system_prompt=think_system_prompt)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "data": out / "train.parquet",
        "reward": out / "recap_reward.py",
        "dataset": out / "recap_verl_dataset.py",
        "agent_loop": out / "recap_agent_loop.yaml",
    }
    with atomic_write(paths["data"], "wb") as fh:
        pq.write_table(pa.Table.from_pylist(rows), fh)
    write_text(
        paths["reward"],
        REWARD_MODULE.format(
            path=paths["reward"].resolve(), judge=judge, unclosed=unclosed, format_penalty=float(format_penalty)
        ),
    )
    write_text(paths["dataset"], DATASET_MODULE.format(path=paths["dataset"].resolve()))
    write_text(paths["agent_loop"], AGENT_LOOP_CONFIG.format(path=paths["agent_loop"].resolve(), name=AGENT_LOOP_NAME))
    lengths = [r["extra_info"]["prompt_tokens"] for r in rows if r["extra_info"]["prompt_tokens"] is not None]
    return {**paths, "max_prompt_tokens": max(lengths) if lengths else None}


@functools.lru_cache(maxsize=8)
def _answer_reward(judge: str, unclosed: str, format_penalty: float):
    from recap.rewards.factory import load_judges
    from recap.rewards.reward import AnswerReward

    return AnswerReward(load_judges(judge).judges, format_penalty=format_penalty, unclosed=unclosed)


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth,
    extra_info: dict | None = None,
    *,
    judge: str = "rules",
    unclosed: str = "invalid",
    format_penalty: float = 0.0,
) -> float:
    """verl's reward function: recap's reward for one response (``solution_str``, the continuation)."""
    info = dict(extra_info or {})
    kind = info.get("kind") or str(data_source).removeprefix("recap/")
    if kind not in ABILITY:
        raise ValueError(
            f"data_source {data_source!r}: not a recap row (expected recap/harmful, recap/benign or recap/task)"
        )
    reference = ground_truth if ground_truth not in (None, "") else None
    reward = _answer_reward(judge, unclosed, float(format_penalty))
    return float(reward([info.get("question", "")], [solution_str], kind=[kind], reference=[reference])[0])
