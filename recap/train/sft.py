"""Supervised fine-tuning, the warm-start stage before RL: prompt/completion rows trained with TRL's
``SFTTrainer`` (loss on the completion tokens only; LoRA or every weight), and *context distillation*:
sample the model's own answers under a safety system prompt, keep those a judge approves (safe on harmful
prompts, helpful on benign ones) and train on them **without** the system prompt.

Row format (``read_rows`` / ``write_rows``; JSONL, one object a line)::

    {"id": "sr-17#distill-2",                           # unique in the file
     "messages": [{"role": "user", "content": "..."}],  # the conversation before the assistant's turn
     "prefill": "..." | null,                           # text already inside the open think block (context)
     "prompt": "..." | null,                            # or: the exact prompt text, used verbatim
     "completion": "...",                               # the target: the only tokens in the loss
     "kind": "harmful" | "benign" | "task" | null,
     "provenance": {...} | null}                        # where the row came from (free-form object)

A row needs ``completion`` and either ``messages`` or ``prompt``. The text the model is trained on is
``recap.inference.chat.render_prompt(tokenizer, messages, prefill)`` — the very text RL (``recap.train.rl_rows``)
and evaluation render, ending inside the open think block — or ``prompt`` verbatim when the row has no
``messages`` (a row with both must render to its ``prompt``: a prompt rendered for another template is an
error, not a silent change of context). Other keys stay in the file and are ignored by training.

TRL tokenizes ``tokenizer(prompt)`` and ``tokenizer(prompt + completion + EOS)`` with the default special
tokens — as ``GRPOTrainer`` tokenizes the RL prompts — and puts the loss on the tokens after the prompt:
the completion and the EOS token that ends the assistant's turn (``completion_only_loss``). A prompt whose
tokens are not a prefix of the prompt + completion tokens (a token merging across the boundary) is an
error naming the row. "Loss on the critique tokens only" is therefore a row whose prompt holds everything
before the critique (the answer under review in ``messages`` or as ``prefill``) and whose completion is
the critique.

Context distillation rows (``distill``) carry, in ``provenance``: the teacher model, its system prompt,
the sample index and seed, the decoding settings, whether the sample was cut by the token budget (and
trimmed), the judge and its verdict (score, label, safe, refused), how many of the prompt's samples
qualified, and for a row distilled under a prefill (``DistillConfig.prefill_words``) its length and source.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from recap.data.examples import KINDS, DataError, Example, iter_jsonl
from recap.inference.chat import UNCLOSED_MODES, final_answer, render_prompt, with_think_system
from recap.inference.generation import SamplingConfig

SAFETY_SYSTEM_PROMPT = (
    "You are a helpful and harmless assistant. If a request could cause harm, is illegal, or is dangerous, "
    "you must refuse politely and say briefly why. Otherwise, answer the question helpfully."
)
_ROW_KEYS = ("id", "messages", "prefill", "prompt", "completion", "kind", "provenance")


# --------------------------------------------------------------------------------------------------------
# Rows
# --------------------------------------------------------------------------------------------------------
def check_row(row, path: str | Path = "<memory>", line: int | None = None) -> dict:
    """Validate one row (see the module docstring); raises ``DataError`` naming the field. Returns it."""
    if not isinstance(row, dict):
        raise DataError(path, line, None, f"expected a JSON object, got {type(row).__name__}")
    if not isinstance(row.get("id"), str) or not row["id"]:
        raise DataError(path, line, "id", "missing or not text")
    if not isinstance(row.get("completion"), str) or not row["completion"].strip():
        raise DataError(path, line, "completion", "missing, empty or not text")
    messages, prompt = row.get("messages"), row.get("prompt")
    if messages is None and not (isinstance(prompt, str) and prompt):
        raise DataError(path, line, "messages", "a row needs 'messages' (a conversation) or 'prompt' (text)")
    if messages is not None:
        if not isinstance(messages, list) or not messages:
            raise DataError(path, line, "messages", "expected a non-empty list of messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise DataError(path, line, f"messages[{i}]", "each message needs text 'role' and 'content'")
    if prompt is not None and not isinstance(prompt, str):
        raise DataError(path, line, "prompt", f"expected text, got {type(prompt).__name__}")
    if row.get("prefill") is not None and not isinstance(row["prefill"], str):
        raise DataError(path, line, "prefill", "expected text or null")
    if row.get("prefill") and messages is None:
        raise DataError(path, line, "prefill", "a prefill needs 'messages' (a verbatim 'prompt' holds its own)")
    if row.get("kind") is not None and row["kind"] not in KINDS:
        raise DataError(path, line, "kind", f"unknown kind {row['kind']!r} (expected one of {', '.join(KINDS)})")
    if row.get("provenance") is not None and not isinstance(row["provenance"], dict):
        raise DataError(path, line, "provenance", "expected an object or null")
    return row


def read_rows(path: str | Path) -> list[dict]:
    """Read and validate an SFT file (JSONL); a bad row raises ``DataError`` naming its line and field."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, None, None, "no such file")
    rows, seen = [], {}
    for n, row in iter_jsonl(path):
        check_row(row, path, n)
        if row["id"] in seen:
            raise DataError(path, n, "id", f"duplicate id {row['id']!r} (first on line {seen[row['id']]})")
        seen[row["id"]] = n
        rows.append(row)
    if not rows:
        raise DataError(path, None, None, "no rows")
    return rows


def write_rows(path: str | Path, rows: Sequence[dict]) -> Path:
    """Write rows as JSONL, whole or not at all."""
    from recap.util.files import atomic_write

    with atomic_write(path) as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    return Path(path)


def prompt_completion(
    rows: Sequence[dict], tokenizer, think_system_prompt: bool = False, where: str = "<rows>"
) -> list[dict]:
    """``{"prompt", "completion"}`` texts for TRL from validated rows: ``messages`` rendered with
    ``render_prompt`` (and its ``prefill``), or ``prompt`` verbatim."""
    out = []
    for r in rows:
        if r.get("messages") is not None:
            messages = with_think_system(r["messages"]) if think_system_prompt else r["messages"]
            text = render_prompt(tokenizer, messages, r.get("prefill") or None)
            if isinstance(r.get("prompt"), str) and r["prompt"] != text:
                raise DataError(
                    where,
                    None,
                    "prompt",
                    f"row {r['id']!r}: the 'prompt' text differs from its messages "
                    "rendered with this model's chat template (written for another model or settings?); "
                    "drop 'prompt' to render the messages, or 'messages' to train on the text as is",
                )
        else:
            text = r["prompt"]
        out.append({"prompt": text, "completion": r["completion"]})
    return out


# --------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------
@dataclass
class SFTTrainConfig:
    """Supervised fine-tuning on prompt/completion rows (``recap sft train``); defaults are SInternal's SFT
    settings (LoRA r = 16, α = 32, lr 2e-4, 2 epochs)."""

    model: str = field(
        default="", metadata={"help": "Model to fine-tune: a local folder, a hub id, a .gguf file or smollm2-135m."}
    )
    train_file: str = field(
        default="",
        metadata={
            "help": "SFT rows (JSONL; the format is in recap.train.sft's docstring), e.g. from `recap sft data`."
        },
    )
    output_dir: str = field(
        default="runs/sft", metadata={"help": "Checkpoints, logs and the final model (output_dir/final; LoRA merged)."}
    )
    lora_r: int = field(default=16, metadata={"range": "[0, inf)", "help": "LoRA rank (peft); 0 trains every weight."})
    lora_alpha: int = field(default=32, metadata={"range": "[1, inf)", "help": "LoRA scaling α."})
    learning_rate: float = field(default=2e-4, metadata={"range": "(0, inf)", "help": "Peak learning rate."})
    lr_scheduler_type: str = field(default="linear", metadata={"help": "transformers scheduler name."})
    warmup_steps: int = field(default=0, metadata={"range": "[0, inf)", "help": "Linear warm-up steps."})
    weight_decay: float = field(default=0.0, metadata={"range": "[0, inf)", "help": "AdamW weight decay."})
    epochs: float = field(
        default=2.0, metadata={"range": "[0, inf)", "help": "Passes over the rows (ignored when max_steps > 0)."}
    )
    max_steps: int = field(
        default=0, metadata={"range": "[0, inf)", "help": "Optimizer steps; 0: run `epochs` passes."}
    )
    batch_size: int = field(default=8, metadata={"range": "[1, inf)", "help": "Rows per optimizer step."})
    micro_batch_size: int = field(
        default=0,
        metadata={
            "range": "[0, inf)",
            "help": "Rows per forward/backward pass (gradient accumulation up to batch_size); 0: the whole step in one pass.",
        },
    )
    max_length: int = field(
        default=4096,
        metadata={
            "range": "[2, inf)",
            "help": "Longest row in tokens (prompt + completion + EOS); a longer row is an error (nothing is cut silently).",
        },
    )
    think_system_prompt: bool = field(
        default=False,
        metadata={
            "help": "Put recap.inference.chat.THINK_SYSTEM_PROMPT in a system message of rows that have none (match the RL and evaluation configs)."
        },
    )
    seed: int = field(
        default=0,
        metadata={"range": "[0, 4294967295]", "help": "Seed of the data order and the adapters' initialisation."},
    )
    save_steps: int = field(default=50, metadata={"range": "[1, inf)", "help": "Checkpoint every N steps (resumable)."})
    logging_steps: int = field(default=10, metadata={"range": "[1, inf)", "help": "Log the loss every N steps."})
    num_threads: int = field(
        default=0, metadata={"range": "[0, inf)", "help": "torch CPU threads (0: leave torch's default)."}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "Recompute activations in the backward pass (saves memory, costs compute)."}
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype (GGUF weights are dequantised to it)."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (GPUs)."})
    use_cpu: bool = field(default=False, metadata={"help": "Train on the CPU even when an accelerator exists."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the model repository's own Python code."})
    allow_pickle_weights: bool = field(
        default=False, metadata={"help": "Accept pytorch_model.bin pickle weights (unpickling can run code)."}
    )
    resume: str = field(
        default="auto",
        metadata={
            "help": "Checkpoints already in output_dir: auto (continue from the last complete one), must (`recap sft train --resume`: an error if there is none), never (an error if there is one)."
        },
    )
    report_to: str = field(
        default="none",
        metadata={
            "help": "Trackers (wandb, tensorboard…); off so that completions on harmful prompts stay on the machine."
        },
    )

    def __post_init__(self):
        if self.lora_r < 0 or self.batch_size < 1 or self.learning_rate <= 0 or self.max_length < 2:
            raise ValueError("lora_r must be ≥ 0, batch_size ≥ 1, learning_rate > 0 and max_length ≥ 2")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise ValueError("give epochs > 0 or max_steps > 0")
        micro = self.micro_batch_size or self.batch_size
        if self.batch_size % micro:
            raise ValueError(f"micro_batch_size {micro} must divide batch_size {self.batch_size}")
        if self.resume not in ("auto", "must", "never"):
            raise ValueError(f"resume must be auto, must or never, got {self.resume!r}")


def check_lengths(texts: Sequence[dict], rows: Sequence[dict], tokenizer, max_length: int, where: str) -> None:
    """Every row must fit ``max_length`` and its prompt tokens must be a prefix of its prompt + completion
    tokens (tokenized as TRL does); raises ``ValueError`` naming the first row that does not."""
    eos = tokenizer.eos_token or ""
    for t, r in zip(texts, rows, strict=True):
        prompt_ids = tokenizer(t["prompt"])["input_ids"]
        completion = t["completion"] if t["completion"].endswith(eos) else t["completion"] + eos
        full = tokenizer(t["prompt"] + completion)["input_ids"]
        if full[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                f"{where}: row {r['id']!r}: the prompt's tokens are not a prefix of the prompt + completion "
                "tokens (a token merges across the boundary), so the model would train on another "
                "context than it sees in RL and evaluation; start the completion on a token boundary "
                "(e.g. without leading blanks)"
            )
        if len(full) > max_length:
            raise ValueError(f"{where}: row {r['id']!r} is {len(full)} tokens, more than max_length {max_length}")


def sft_args(cfg: SFTTrainConfig):
    """TRL's ``SFTConfig`` for ``cfg``: prompt-completion loss, no truncation, no packing."""
    from trl import SFTConfig

    from recap.train.config import common_trainer_args

    micro = cfg.micro_batch_size or cfg.batch_size
    return SFTConfig(
        **common_trainer_args(cfg),
        completion_only_loss=True,
        packing=False,
        max_length=None,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=cfg.batch_size // micro,
        num_train_epochs=cfg.epochs if cfg.max_steps <= 0 else 1.0,
        max_steps=cfg.max_steps if cfg.max_steps > 0 else -1,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
    )


def build_sft_trainer(
    cfg: SFTTrainConfig, rows: Sequence[dict] | None = None, *, model=None, tokenizer=None, callbacks: Sequence = ()
):
    """TRL ``SFTTrainer`` over ``rows`` (default: ``cfg.train_file``) with the loss on completions only."""
    import torch
    from datasets import Dataset
    from trl import SFTTrainer

    from recap.inference.models import apply_lora, load_model, prepare_tokenizer

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    where = cfg.train_file or "<rows>"
    if rows is None:
        rows = read_rows(cfg.train_file)
    else:
        rows = [check_row(r, where, i + 1) for i, r in enumerate(rows)]
    if model is None or tokenizer is None:
        loaded, loaded_tok = load_model(
            cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle_weights
        )
        model, tokenizer = model or loaded, tokenizer or loaded_tok
    prepare_tokenizer(model, tokenizer)
    texts = prompt_completion(rows, tokenizer, cfg.think_system_prompt, where)
    check_lengths(texts, rows, tokenizer, cfg.max_length, where)
    if cfg.lora_r:
        from transformers import set_seed

        set_seed(cfg.seed)  # the adapters' initial weights: the run's, whatever this process drew before
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
    model.train()
    return SFTTrainer(
        model=model,
        args=sft_args(cfg),
        train_dataset=Dataset.from_list(texts),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


def _log_callback(log: Callable[[str], None]):
    from transformers import TrainerCallback

    class _Log(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                log(f"sft step {state.global_step}/{state.max_steps}: loss {logs['loss']:.4f}")

    return _Log()


def _input_hash(rows: Sequence[dict]) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(list(rows), ensure_ascii=False, sort_keys=True).encode()).hexdigest()


_RESUMABLE = {"resume", "max_steps", "save_steps", "logging_steps", "num_threads", "report_to"}


def _rows_named(cfg: SFTTrainConfig) -> str:
    return f"the rows of {cfg.train_file}" if cfg.train_file else "the rows passed in"


def _check_same_sft_run(saved_file: Path, saved: dict, dump: dict, where: str) -> None:
    """The run in ``output_dir`` (its ``sft_config.json``, ``saved``) must be the run of this config
    (``dump``): every field but the resumable ones, and the rows (their count and sha256)."""
    for key in sorted((set(saved) | set(dump)) - _RESUMABLE):
        if saved.get(key) != dump.get(key):
            what = f": {where} changed since the run started" if key == "inputs" else ""
            raise ValueError(
                f"{saved_file}: '{key}' was {saved.get(key)!r} in the run being resumed, now "
                f"{dump.get(key)!r}{what}; use another output_dir for a different run"
            )


def _token_count(trainer):
    """A callback that keeps TRL's running count of trained tokens (``num_tokens`` in the logs) in each
    checkpoint's trainer state and gives it back on resume: TRL starts it at 0 in every process, so a resumed
    run would log other ``num_tokens`` than an uninterrupted one."""
    from transformers import TrainerCallback
    from transformers.trainer_callback import ExportableState

    class SFTTokenCount(TrainerCallback, ExportableState):
        def state(self) -> dict:
            return {"args": {}, "attributes": {"tokens": getattr(trainer, "_total_train_tokens", 0)}}

        def on_train_begin(self, args, state, control, **kwargs):
            # A checkpoint written before this callback existed has no entry (its count restarts at 0); the
            # entry is added so that the Trainer can save the next checkpoint's.
            saved = state.stateful_callbacks.setdefault(type(self).__name__, self.state())
            tokens = saved.get("attributes", {}).get("tokens") if isinstance(saved, dict) else None
            if state.global_step > 0 and isinstance(tokens, (int, float)) and hasattr(trainer, "_total_train_tokens"):
                trainer._total_train_tokens = tokens

    return SFTTokenCount()


def train_sft(
    cfg: SFTTrainConfig,
    rows: Sequence[dict] | None = None,
    *,
    model=None,
    tokenizer=None,
    log: Callable[[str], None] = print,
) -> Path:
    """Fine-tune on ``rows`` (default: ``cfg.train_file``); returns ``output_dir/final`` (LoRA merged), written
    whole or not at all. A finished run is returned as is when it is the run of this config (its fields, its
    rows and ``max_steps``; otherwise a ``ValueError`` says what differs); checkpoints are resumed as
    ``cfg.resume`` says, after checking that the config and the rows are those of the run being resumed. A
    resumed run ends with the weights and the per-step log of an uninterrupted one (the adapters are seeded;
    weights, optimizer, scheduler, RNG states, data position and the token count come back). One run at a
    time per ``output_dir``: another process training into it gets an error naming its PID."""
    from recap.util.locks import output_lock

    with output_lock(cfg.output_dir, "this training output_dir", folder=True):
        return _train_sft(cfg, rows, model, tokenizer, log)


def _train_sft(cfg: SFTTrainConfig, rows, model, tokenizer, log) -> Path:
    from recap.train import last_checkpoint
    from recap.util.files import atomic_dir, write_text
    from recap.util.security import redacted

    out = Path(cfg.output_dir)
    final = out / "final"
    finished = (final / "config.json").exists()
    if finished and cfg.resume == "never":
        raise ValueError(f"{out} already holds a finished run ({final}); choose another output_dir")
    if rows is None:
        rows = read_rows(cfg.train_file)
    dump = json.loads(json.dumps(redacted(asdict(cfg))))
    dump["inputs"] = {"rows": len(rows), "sha256": _input_hash(rows)}
    saved_file = out / "sft_config.json"
    if finished:  # returned as is only when it is this config's run (fields, rows, max_steps)
        from recap.train.resume import check_finished_length, finished_step

        saved = json.loads(saved_file.read_text(encoding="utf-8")) if saved_file.is_file() else None
        if saved is not None:
            _check_same_sft_run(saved_file, saved, dump, _rows_named(cfg))
        check_finished_length(out, None if saved is None else saved.get("max_steps"), cfg.max_steps)
        step = finished_step(out)
        log(f"{out}: the run finished{'' if step is None else f' at step {step}'}; nothing left to train")
        return final
    ckpt = last_checkpoint(out, log)
    if ckpt is not None and cfg.resume == "never":
        raise ValueError(
            f"{out} holds checkpoints of an earlier run (last complete: {ckpt.name}); pass --resume to "
            "continue it, or choose another output_dir"
        )
    if ckpt is None and cfg.resume == "must":
        raise ValueError(f"{out}: no complete checkpoint to resume from; run without --resume to start")
    if ckpt is not None and saved_file.is_file():
        saved = json.loads(saved_file.read_text(encoding="utf-8"))
        _check_same_sft_run(saved_file, saved, dump, _rows_named(cfg))
    if ckpt is None:
        write_text(saved_file, json.dumps(dump, indent=1))
    else:
        log(f"resuming from {ckpt}")
    trainer = build_sft_trainer(cfg, rows, model=model, tokenizer=tokenizer, callbacks=[_log_callback(log)])
    trainer.add_callback(_token_count(trainer))
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(trained, "merge_and_unload"):
        trained = trained.merge_and_unload()
    write_text(out / "log_history.json", json.dumps(trainer.state.log_history, indent=1))
    with atomic_dir(final) as tmp:  # last: its config.json marks the run as finished
        trained.save_pretrained(str(tmp), safe_serialization=True)
        trainer.processing_class.save_pretrained(str(tmp))
    return final


# --------------------------------------------------------------------------------------------------------
# Context distillation
# --------------------------------------------------------------------------------------------------------
@dataclass
class DistillConfig:
    """Context distillation (``recap sft data``): the teacher's answers under a safety system prompt,
    judged and kept per kind, become SFT rows without the system prompt."""

    teacher: str = field(
        default="smollm2-135m",
        metadata={
            "help": "Model that answers under the system prompt (normally the model to be fine-tuned): hub id, folder, .gguf or smollm2-135m."
        },
    )
    system_prompt: str = field(
        default=SAFETY_SYSTEM_PROMPT,
        metadata={"help": "The safety system prompt the teacher answers under (never part of the rows)."},
    )
    kinds: list[str] = field(
        default_factory=lambda: ["harmful", "benign"],
        metadata={"help": "Kinds of prompts distilled (others are skipped)."},
    )
    samples_per_prompt: int = field(default=4, metadata={"range": "[1, inf)", "help": "Answers sampled per prompt."})
    keep_per_prompt: int = field(
        default=1,
        metadata={
            "range": "[1, inf)",
            "help": "Most rows kept per prompt: the qualifying answers with the highest judge score (ties: lower sample index).",
        },
    )
    min_score: dict[str, float] = field(
        default_factory=lambda: {"harmful": 0.5, "benign": 0.5, "task": 1.0},
        metadata={
            "range": "[0, 1]",
            "help": "Lowest judge score kept, per kind (harmful: safety; benign: helpfulness; task: correctness). A harmful answer must also be judged safe, a benign one not refused.",
        },
    )
    judge: str = field(
        default="rules",
        metadata={
            "help": "Judge of every kind (see recap.rewards.factory.load_judge), e.g. classifier:runs/judge/refusal-minilm.npz."
        },
    )
    judges: dict[str, str] = field(default_factory=dict, metadata={"help": "Per-kind judge overrides."})
    agree_judge: str = field(
        default="",
        metadata={
            "help": "A second, different judge that must agree before a sample is kept: a harmful answer "
            "judged safe by both, a benign one refused by neither (e.g. `rules` beside a classifier: one "
            "judge's false positive is not distilled). Empty: the judge alone decides."
        },
    )
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=128, batch_size=32),
        metadata={"help": "Decoding of the teacher."},
    )
    truncated: str = field(
        default="trim",
        metadata={
            "help": "An answer cut by max_new_tokens: trim (to its last full sentence; dropped if it has none), drop, or keep as is."
        },
    )
    unclosed: str = field(
        default="invalid",
        metadata={
            "help": "A completion that never closes the think block: invalid (no answer, never kept; reasoning models) or continuation (the text is the answer; SmolLM2)."
        },
    )
    prefill_words: int = field(
        default=0,
        metadata={
            "range": "[0, inf)",
            "help": "Distil under the prefilling attack too: each harmful example with counter_reasoning is also sampled with its first ℓ words prefilled (after the system prompt), and kept answers become rows with that prefill in the context (loss on the continuation only) — a start that sometimes overrides flawed reasoning, as the paper's starting models do. 0: clean prompts only.",
        },
    )
    graft_words: int | list[int] | str = field(
        default=0,
        metadata={
            "range": "[0, inf)",
            "help": "Also write each kept refusal of a harmful example with counter_reasoning after its first ℓ words (a grafted recovery: the teacher's clean refusal as the continuation of a compliant prefill; provenance method context-distillation-graft). ℓ: an int, a list to draw from, or a range like '5-40' (drawn per row from the seed and the row id). A cheap way to a start that sometimes overrides a flawed prefill, as the paper's starting models do (DSLlama-8B: 45 % safe under the prefill); teacher recoveries under prefills (prefill_words) are rare at 135M. 0: none.",
        },
    )
    echo_words: int = field(
        default=8,
        metadata={
            "range": "[0, inf)",
            "help": "Drop a sample that repeats this many consecutive words of the system prompt (the student never sees the prompt, so reciting it is not behaviour to learn; small models often do); 0 keeps them.",
        },
    )
    seed: int = field(
        default=0,
        metadata={
            "range": "[0, 4294967295]",
            "help": "Sampling seed (each batch is seeded from it and its first example id).",
        },
    )
    cache: str = field(
        default=".recap-cache/distill.jsonl",
        metadata={
            "help": "Cache of sampled answers (JSONL, appended per batch): a rerun, or a killed run, samples only what is missing."
        },
    )
    dtype: str = field(default="float32", metadata={"help": "Teacher weights dtype."})

    def __post_init__(self):
        if self.samples_per_prompt < 1 or self.keep_per_prompt < 1 or min(self.echo_words, self.prefill_words) < 0:
            raise ValueError("samples_per_prompt and keep_per_prompt must be ≥ 1, echo_words and prefill_words ≥ 0")
        if self.graft_words != 0:
            from recap.data.mixture import parse_lengths

            parse_lengths(self.graft_words, "graft_words")
        if self.truncated not in ("trim", "drop", "keep"):
            raise ValueError(f"truncated must be trim, drop or keep, got {self.truncated!r}")
        if self.unclosed not in UNCLOSED_MODES:
            raise ValueError(f"unclosed must be one of {', '.join(UNCLOSED_MODES)}, got {self.unclosed!r}")
        unknown = (set(self.kinds) | set(self.min_score)) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown kind {sorted(unknown)[0]!r} (expected {', '.join(KINDS)})")


_SENTENCE_END = re.compile(r"[.!?](?=\s|$)|\n")


def trim_to_sentence(text: str) -> str:
    """``text`` up to its last full sentence (a ``.``, ``!`` or ``?`` before a blank, or a line break);
    ``""`` when it has none."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].rstrip() if ends else ""


def echoes(text: str, source: str, n_words: int) -> bool:
    """Whether ``text`` repeats ``n_words`` consecutive words of ``source`` (case, spacing and punctuation
    ignored)."""
    words = re.findall(r"[\w']+", source.lower())
    flat = " " + " ".join(re.findall(r"[\w']+", text.lower())) + " "
    return n_words > 0 and any(f" {' '.join(words[i : i + n_words])} " in flat for i in range(len(words) - n_words + 1))


def teacher_messages(example: Example, system_prompt: str) -> list[dict]:
    """The teacher's conversation: the safety system prompt in place of the example's own system message."""
    return [{"role": "system", "content": system_prompt}, *(m for m in example.messages() if m["role"] != "system")]


def student_messages(example: Example, system_prompt: str) -> list[dict]:
    """The student's conversation: the example's own, which never holds the teacher's system prompt."""
    messages = example.messages()
    if any(m["role"] == "system" and m["content"] == system_prompt for m in messages):
        raise ValueError(
            f"example {example.id!r} already holds the teacher's system prompt: the distilled rows "
            "must be trained without it"
        )
    return messages


def _sample_key(cfg: DistillConfig, example: Example) -> str:
    from recap.util.cache import cache_key

    return cache_key(
        "distill",
        cfg.teacher,
        cfg.system_prompt,
        teacher_messages(example, cfg.system_prompt),
        asdict(cfg.sampling),
        cfg.samples_per_prompt,
        cfg.seed,
        *(() if example.prefill is None else (example.prefill,)),  # clean keys as before prefills existed
    )


def sample_teacher(
    examples: Sequence[Example],
    cfg: DistillConfig,
    *,
    load: Callable | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, list[dict]]:
    """``{example id: [sample, …]}``: ``samples_per_prompt`` answers of the teacher per example under the
    system prompt, each ``{"text", "tokens", "truncated", "seed"}``. Cached per batch in ``cfg.cache``; the
    teacher is loaded only when something is missing. ``progress(done, total)`` counts prompts."""
    from recap.inference.generation import generate
    from recap.util.cache import JsonlCache

    cache = JsonlCache(cfg.cache)
    keys = {e.id: _sample_key(cfg, e) for e in examples}
    missing = [e for e in examples if cache.get(keys[e.id]) is None]
    k = cfg.samples_per_prompt
    if missing:
        if load is None:
            from recap.inference.models import load_model

            def load(name):
                return load_model(name, dtype=cfg.dtype)

        model, tokenizer = load(cfg.teacher)
        per_batch = max(1, cfg.sampling.batch_size // k)
        for start in range(0, len(missing), per_batch):
            chunk = missing[start : start + per_batch]
            seed = zlib.crc32(f"{cfg.seed}:distill:{chunk[0].id}".encode()) % 2**31
            prompts = [
                render_prompt(tokenizer, teacher_messages(e, cfg.system_prompt), e.prefill)
                for e in chunk
                for _ in range(k)
            ]
            gens = generate(model, tokenizer, prompts, replace(cfg.sampling, batch_size=len(prompts)), seed=seed)
            cache.add(
                [
                    {
                        "key": keys[e.id],
                        "samples": [
                            {"text": g.text, "tokens": g.n_tokens, "truncated": g.truncated, "seed": seed}
                            for g in gens[i * k : (i + 1) * k]
                        ],
                    }
                    for i, e in enumerate(chunk)
                ]
            )
            if progress:
                progress(min(start + per_batch, len(missing)), len(missing))
    return {e.id: cache.get(keys[e.id])["samples"] for e in examples}


PREFILLED_ID = "+prefill"  # suffix of a prefilled example's id (its rows: "<id>+prefill#distill-<i>")
GRAFTED_ID = "+graft"  # a grafted row's id: "<id>+graft#distill-<i>"
GRAFT_BREAK = "\n\n"  # between a grafted row's prefill and its completion


def prefilled_examples(examples: Sequence[Example], words: int) -> list[Example]:
    """The harmful examples with counter-aligned reasoning, each with its first ``words`` words as the
    prefill (ids suffixed ``+prefill``); none when ``words`` is 0."""
    from recap.data.mixture import truncate_words

    if not words:
        return []
    return [
        replace(
            e,
            id=e.id + PREFILLED_ID,
            prefill=truncate_words(e.counter_reasoning, words),
            prefill_words=words,
            prefill_source=e.counter_source,
        )
        for e in examples
        if e.kind == "harmful" and e.counter_reasoning
    ]


def _stats_kind(example: Example) -> str:
    return f"{example.kind}_prefilled" if example.prefill else example.kind


def distill(
    examples: Sequence[Example],
    cfg: DistillConfig,
    *,
    load: Callable | None = None,
    judge=None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], dict]:
    """Context distillation: returns ``(rows, stats)``. For each example of ``cfg.kinds`` the teacher's
    samples (``sample_teacher``) are trimmed as ``cfg.truncated`` says, their final answers judged (the
    judge sees the user's request, never the system prompt), and the ``keep_per_prompt`` best qualifying
    samples become rows: the example's own conversation (without the teacher's system prompt) and the
    teacher's completion, with provenance. Samples that recite the system prompt (``echo_words``) are
    dropped before judging. With ``cfg.prefill_words`` the harmful examples with counter-aligned reasoning
    are distilled a second time under their first ℓ words (``prefilled_examples``): the teacher continues
    the prefill under the system prompt, the judge reads its continuation, and a kept row holds the
    prefill as context, so the student learns to override flawed reasoning it did not write. With
    ``cfg.graft_words`` each kept clean harmful row of an example with counter-aligned reasoning is written a
    second time with its first ℓ words as the prefill (the same refusal, now after a compliant start). ``stats``
    counts, per kind (``harmful_prefilled`` apart), prompts, samples, drops, qualifying samples and rows, and
    ``harmful_grafted`` the grafted rows."""
    from recap.rewards.factory import load_judges
    from recap.rewards.judges import JudgeItem, checked_judge, judge_name

    # clean: an example's own prefill (a mixture file's) is not distilled; prefill_words makes the prefilled ones
    chosen = [replace(e, prefill=None) if e.prefill else e for e in examples if e.kind in cfg.kinds]
    if not chosen:
        raise ValueError(f"no example of kinds {cfg.kinds} to distill")
    for e in chosen:
        student_messages(e, cfg.system_prompt)
    chosen += prefilled_examples(chosen, cfg.prefill_words)
    samples = sample_teacher(chosen, cfg, load=load, progress=progress)
    judge = judge or load_judges(cfg.judge, cfg.judges)
    stats = {
        k: {
            "prompts": 0,
            "samples": 0,
            "dropped_truncated": 0,
            "dropped_echo": 0,
            "dropped_no_answer": 0,
            "dropped_disagreement": 0,
            "qualified": 0,
            "prompts_kept": 0,
            "rows": 0,
        }
        for k in cfg.kinds + (["harmful_prefilled"] if cfg.prefill_words and "harmful" in cfg.kinds else [])
    }
    candidates, items = [], []
    for e in chosen:
        st = stats[_stats_kind(e)]
        for i, s in enumerate(samples[e.id]):
            text = s["text"].lstrip()
            trimmed = False
            if s["truncated"] and cfg.truncated != "keep":
                cut = "" if cfg.truncated == "drop" else trim_to_sentence(text)
                trimmed, text = cut != text, cut
                if not text:
                    st["dropped_truncated"] += 1
                    continue
            if echoes(text, cfg.system_prompt, cfg.echo_words):
                st["dropped_echo"] += 1
                continue
            answer = final_answer(text, e.prefill or "", unclosed=cfg.unclosed).answer
            if not answer:
                st["dropped_no_answer"] += 1
                continue
            candidates.append((e, i, s, text, trimmed))
            items.append(JudgeItem(e.user_text(), answer, e.kind, e.reference, tuple(e.rubric or ())))
    verdicts = checked_judge(judge, items) if items else []
    second = None
    if cfg.agree_judge:
        second = load_judges(cfg.agree_judge)
        if judge_name(second) == judge_name(judge):
            raise ValueError(f"agree_judge {cfg.agree_judge!r} is the judge itself; name a different judge")
    seconds = checked_judge(second, items) if second is not None and items else [None] * len(items)
    by_example: dict[str, list] = {}
    for (e, i, s, text, trimmed), v, v2 in zip(candidates, verdicts, seconds, strict=True):
        ok = v.score >= cfg.min_score.get(e.kind, 0.5) and _qualifies(v, e.kind)
        if ok and v2 is not None and not _qualifies(v2, e.kind):
            ok = False
            stats[_stats_kind(e)]["dropped_disagreement"] += 1
        by_example.setdefault(e.id, []).append((ok, v, i, s, text, trimmed))
    rows: list[dict] = []
    name = judge_name(judge)
    for e in chosen:
        st = stats[_stats_kind(e)]
        st["prompts"] += 1
        st["samples"] += len(samples[e.id])
        judged = by_example.get(e.id, [])
        good = sorted((c for c in judged if c[0]), key=lambda c: (-c[1].score, c[2]))
        st["qualified"] += len(good)
        st["prompts_kept"] += bool(good)
        for _, v, i, s, text, trimmed in good[: cfg.keep_per_prompt]:
            st["rows"] += 1
            rows.append(
                {
                    "id": f"{e.id}#distill-{i}",
                    "kind": e.kind,
                    "messages": student_messages(e, cfg.system_prompt),
                    "prefill": e.prefill,
                    "completion": text,
                    "provenance": {
                        "method": "context-distillation",
                        "source_id": e.id,
                        "teacher": cfg.teacher,
                        "teacher_system_prompt": cfg.system_prompt,
                        **({"prefill_words": e.prefill_words, "prefill_source": e.prefill_source} if e.prefill else {}),
                        "sample": i,
                        "samples_per_prompt": len(samples[e.id]),
                        "seed": s["seed"],
                        "temperature": cfg.sampling.temperature,
                        "top_p": cfg.sampling.top_p,
                        "max_new_tokens": cfg.sampling.max_new_tokens,
                        "truncated": s["truncated"],
                        "trimmed": trimmed,
                        "judge": name,
                        "verdict": {"score": v.score, "label": v.label, "safe": v.safe, "refused": v.refused},
                        **({"agree_judge": judge_name(second)} if second is not None else {}),
                        "qualified_samples": len(good),
                    },
                }
            )
    if cfg.graft_words and "harmful" in cfg.kinds:
        grafted = graft_rows(rows, {e.id: e for e in chosen}, cfg.graft_words, cfg.seed)
        stats["harmful_grafted"] = {
            "prompts": sum(e.kind == "harmful" and not e.prefill and bool(e.counter_reasoning) for e in chosen),
            "rows": len(grafted),
        }
        rows += grafted
    return rows, stats


def _qualifies(v, kind: str) -> bool:
    """A verdict that lets a sample be distilled: a harmful answer judged safe, a benign one not refused."""
    return v.safe is True if kind == "harmful" else v.refused is not True if kind == "benign" else True


def graft_rows(rows: Sequence[dict], examples: dict[str, Example], words, seed: int = 0) -> list[dict]:
    """Grafted recoveries: each clean harmful row whose example has counter-aligned reasoning, again with the
    reasoning's first ℓ words as the prefill before the same completion (id ``<id>+graft#…``). ``words`` is a
    length spec (``recap.data.mixture.parse_lengths``); ℓ is drawn per row from ``seed`` and the row's id. The
    completion starts with a paragraph break (``GRAFT_BREAK``), so the prefill's last word and the answer's
    first one stay separate tokens (the row trains the context RL and evaluation render)."""
    import random

    from recap.data.mixture import draw_length, truncate_words

    out = []
    for r in rows:
        e = examples.get(r["provenance"]["source_id"])
        if r["kind"] != "harmful" or r["prefill"] is not None or e is None or not e.counter_reasoning:
            continue
        n = draw_length(words, random.Random(zlib.crc32(f"{seed}:graft:{r['id']}".encode())))
        out.append(
            dict(
                r,
                id=r["id"].replace("#distill-", GRAFTED_ID + "#distill-", 1),
                prefill=truncate_words(e.counter_reasoning, n),
                completion=GRAFT_BREAK + r["completion"],
                provenance={
                    **r["provenance"],
                    "method": "context-distillation-graft",
                    "prefill_words": n,
                    "prefill_source": e.counter_source,
                },
            )
        )
    return out
