"""RECAP training: TRL's ``GRPOTrainer`` with the DAPO loss on the counter-aligned mixture.

The prefill is part of the prompt text (rendered by ``recap.chat.render_prompt``), so TRL generates
and trains only the policy's continuation. Vanilla DAPO is the same trainer on the mixture built with
α = 0. Options from DAPO: dynamic sampling (drop prompt groups with zero reward variance and refill
the step with more groups), overlong filtering and soft overlong punishment; and the paper's total
length budget per rollout (prompt + prefill + continuation).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import shutil
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import StoppingCriteria
from trl import GRPOConfig, GRPOTrainer

from recap.chat import render_prompt, with_think_system
from recap.data.examples import Example, read_examples
from recap.data.onpolicy import PrefillPlanner, PrefillSourceConfig, step_judge_for
from recap.data.schedules import LengthSchedule
from recap.data.selfreset import SelfResetConfig, SelfResetPlanner, cutter_for


@dataclass
class TrainConfig:
    """RL post-training with RECAP (paper defaults unless noted)."""

    model: str = field(
        default="", metadata={"help": "Policy: a local folder or a hub id (a causal LM with a chat template)."}
    )
    train_file: str = field(
        default="", metadata={"help": "Mixture JSONL/Parquet built by `recap data mix` (prefills already set)."}
    )
    output_dir: str = field(
        default="runs/recap", metadata={"help": "Checkpoints, logs and the final model (output_dir/final)."}
    )
    judge: str = field(
        default="rules",
        metadata={
            "help": "Judge of every kind's reward: rules, rules:<family>, toy, classifier:<file>, guard:<yaml> (see recap.rewards.factory.load_judge)."
        },
    )
    judges: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Per-kind judge overrides, e.g. {harmful: 'guard:configs/guard.yaml'}; kinds not named use `judge`."
        },
    )
    num_generations: int = field(
        default=16, metadata={"help": "Rollouts per prompt (the group of GRPO/DAPO); the paper uses 16."}
    )
    prompts_per_step: int = field(
        default=8,
        metadata={"help": "Prompts per optimizer step over all processes (global batch = prompts × generations)."},
    )
    max_steps: int = field(default=100, metadata={"help": "Optimizer steps."})
    learning_rate: float = field(
        default=1e-6, metadata={"help": "Learning rate (DAPO uses 1e-6 for 7–32B models; tiny models need far more)."}
    )
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip range ε_low (DAPO clip-higher: 0.2)."})
    epsilon_high: float = field(default=0.28, metadata={"help": "Upper clip range ε_high (DAPO clip-higher: 0.28)."})
    loss_type: str = field(default="dapo", metadata={"help": "TRL loss type; 'dapo' is the token-level loss of DAPO."})
    beta: float = field(
        default=0.0, metadata={"help": "KL coefficient; DAPO drops the KL term (0 ⇒ no reference model)."}
    )
    temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature."})
    max_completion_length: int = field(
        default=1024,
        metadata={
            "help": "Longest continuation in tokens (after the prefill); with max_total_length, the cap of every row's budget."
        },
    )
    max_total_length: int = field(
        default=0,
        metadata={
            "help": "Length budget of a rollout counting prompt + prefill + continuation (the paper's Lmax = 8,000 tokens, Appendix C): each row may write min(max_completion_length, max_total_length − its prompt tokens), so a prefilled row writes less and costs what an unprefilled one costs. 0: off (every row gets max_completion_length)."
        },
    )
    mask_truncated_completions: bool = field(
        default=False,
        metadata={
            "help": "DAPO overlong filtering (TRL mask_truncated_completions): completions cut by the length limit get no loss."
        },
    )
    overlong_buffer: int = field(
        default=0,
        metadata={
            "help": "DAPO soft overlong punishment (TRL get_soft_overlong_punishment), an extra reward: 0 up to the row's limit − this many tokens, then down linearly to −1 at the limit (DAPO: 4096 of 20480). 0: off."
        },
    )
    overlong_penalty: float = field(
        default=1.0,
        metadata={"help": "Weight of the soft overlong punishment in the reward (with overlong_buffer > 0)."},
    )
    dynamic_sampling: bool = field(
        default=True,
        metadata={
            "help": "DAPO dynamic sampling (on in the paper): drop every prompt group whose rewards are all equal (zero variance: all 0, all 1, all −1 from the format penalty, all 0.4 from a continuous judge — no advantage, no gradient) and generate more groups until the step has prompts_per_step groups with signal."
        },
    )
    dynamic_sampling_max_extra_rounds: int = field(
        default=9,
        metadata={
            "help": "Extra generation rounds per step to refill dropped groups (each draws as many prompts as the step; verl's max_num_gen_batches − 1, 10 − 1 in its DAPO recipe). When they are spent the step trains on the groups with signal it has: the others are masked out of the loss and the token normaliser. 0: drop without refilling."
        },
    )
    dynamic_sampling_tolerance: float = field(
        default=1e-6,
        metadata={
            "help": "A group's rewards count as equal when max − min ≤ this. 0 is verl's exact test (std > 0); the default only adds float noise (e.g. 0.99999994 vs 1.0 from a judge's probability), far below any real difference."
        },
    )
    dynamic_sampling_tau: float | None = field(
        default=None,
        metadata={
            "help": "Removed: dynamic sampling no longer drops 'all 0 or all ≥ τ' groups but every group with zero reward variance, whatever the value; leave unset (see dynamic_sampling_tolerance)."
        },
    )
    format_penalty: float = field(
        default=0.0, metadata={"help": "Reward of a completion with no closing think tag or an empty answer."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of sampling and data order."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps (resumable)."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave torch's default)."})
    gradient_checkpointing: bool = field(
        default=True,
        metadata={
            "help": "Recompute activations in the backward pass (TRL's default; saves memory on real models, costs ~40% extra compute — turn off for tiny models)."
        },
    )
    micro_batch_size: int = field(
        default=0,
        metadata={
            "help": "Completions per forward/backward pass on each process (gradient accumulation over the step's prompts × generations; the token-level loss is normalised over the whole step). 0: the process's whole share of the step in one pass. With several processes, prompts_per_step × num_generations is the global batch, split across them; a multiple of num_generations keeps each prompt's group on one process."
        },
    )
    loss_length_buckets: int = field(
        default=2,
        metadata={
            "help": "Run each micro-batch's loss pass in this many chunks of rows with similar lengths, each trimmed of its own padding (TRL pads every row to the longest prompt of the generation batch, and prefilled prompts are the longest). Same loss and gradient up to float rounding; 1 turns it off. Single-process runs only (with several processes each forward must pair with one backward)."
        },
    )
    lora_r: int = field(
        default=0, metadata={"help": "LoRA rank (peft); 0 trains every weight. The final model is saved merged."}
    )
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling α."})
    unclosed: str = field(
        default="invalid",
        metadata={
            "help": "A completion that never closes the think block: 'invalid' (format penalty) or 'continuation' (judged as the answer; models without thinking tags such as SmolLM2)."
        },
    )
    think_system_prompt: bool = field(
        default=False,
        metadata={"help": "Put recap.chat.THINK_SYSTEM_PROMPT in a system message of prompts that have none."},
    )
    dtype: str = field(
        default="float32", metadata={"help": "Policy weights dtype (float32; GGUF weights are dequantised to it)."}
    )
    vllm: str = field(
        default="auto",
        metadata={
            "help": "Rollouts with vLLM (TRL use_vllm): auto (colocate when vLLM and a GPU are present, else off), off, colocate (vLLM shares the training GPUs), server (a `trl vllm-serve` process; see docs/scaling.md)."
        },
    )
    vllm_server_host: str = field(
        default="127.0.0.1", metadata={"help": "Host of the `trl vllm-serve` rollout server (vllm: server)."}
    )
    vllm_server_port: int = field(default=8000, metadata={"help": "Port of the rollout server (vllm: server)."})
    vllm_gpu_memory_utilization: float = field(
        default=0.3, metadata={"help": "GPU memory fraction vLLM may take in colocate mode (the rest is for training)."}
    )
    bf16: bool = field(
        default=False,
        metadata={
            "help": "bf16 mixed-precision training (GPUs; the paper trained in bf16 with DeepSpeed ZeRO-3). Must match the accelerate config's mixed_precision."
        },
    )
    use_cpu: bool = field(default=False, metadata={"help": "Force CPU even when an accelerator exists."})
    prefill_sources: PrefillSourceConfig = field(
        default_factory=PrefillSourceConfig,
        metadata={
            "help": "Where the prefills of the mixture's prefill slots come from at each step: static (the mixture's counter-aligned reasoning, RECAP), on_policy (the policy's own unsafe reasoning cut at its first unsafe step, Self-ReSET style) or both by weight."
        },
    )
    prefill_length: LengthSchedule | None = field(
        default=None,
        metadata={
            "help": "Length schedule of static prefills (fixed, uniform over a set, or a short→long curriculum), applied to each slot's counter_reasoning at every step; null keeps the mixture's prefills as written."
        },
    )
    self_reset: SelfResetConfig | None = field(
        default=None,
        metadata={
            "help": "Self-ReSET (recap.data.selfreset): cut the policy's own unsafe reasoning at its first unsafe token (streaming judge), re-roll each cut as its own group from a bounded queue (the cut is part of the prompt, out of the loss), re-queue benign prompts whose rollouts refuse; null: off. configs/self-reset.yaml is the paper's recipe."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run the model repository's own Python code (off: only transformers' built-in architectures)."
        },
    )
    allow_pickle_weights: bool = field(
        default=False,
        metadata={
            "help": "Accept pytorch_model.bin pickle weights (off: safetensors/GGUF only; unpickling can run code)."
        },
    )
    resume: str = field(
        default="auto",
        metadata={
            "help": "What to do with checkpoints already in output_dir (torn ones are set aside first): auto (continue from the last complete one, start from step 0 if none), must (`recap train --resume`: continue; with only torn checkpoints or a train_config.json of the same run, start from step 0; an error on an empty folder), never (`recap train` without --resume: an error if a complete checkpoint exists, so two runs never mix)."
        },
    )
    report_to: str = field(
        default="none",
        metadata={
            "help": "Trackers (wandb, tensorboard…). Off by default: completions on harmful prompts must not leave the machine unless you choose so."
        },
    )


def rl_rows(examples: list[Example], tokenizer, think_system_prompt: bool = False) -> list[dict]:
    """Dataset rows for TRL: the rendered prompt text (prefill included) plus routing columns, and what a
    ``PrefillPlanner`` needs to choose another prefill at each step (the conversation, the counter-aligned
    reasoning and the mixture's own prefill)."""
    rows = []
    for e in examples:
        messages = with_think_system(e.messages()) if think_system_prompt else e.messages()
        rows.append(
            {
                "prompt": render_prompt(tokenizer, messages, e.prefill),
                "kind": e.kind,
                "reference": e.reference,
                "id": e.id,
                "prefilled": e.prefill is not None,
                "conversation": json.dumps(messages, ensure_ascii=False),
                "counter_reasoning": e.counter_reasoning or "",
                "static_prefill": e.prefill or "",
            }
        )
    return rows


def dynamic_prefills(cfg: TrainConfig) -> bool:
    """Whether prefills are chosen at each step (on-policy source or a length schedule) rather than fixed
    by the mixture file."""
    return cfg.prefill_sources.weights.get("on_policy", 0.0) > 0 or cfg.prefill_length is not None


def completion_budget(prompt_tokens: int, max_completion_length: int, max_total_length: int = 0) -> int:
    """Tokens a rollout may write after a prompt of ``prompt_tokens`` tokens (prefill included): the
    total budget minus the prompt, capped by ``max_completion_length`` and at least 1; without a total
    budget (0), ``max_completion_length``."""
    if not max_total_length:
        return max_completion_length
    return max(1, min(max_completion_length, max_total_length - prompt_tokens))


def zero_variance_groups(rewards: torch.Tensor, group_size: int, tolerance: float = 0.0) -> torch.Tensor:
    """Boolean mask over prompt groups (``group_size`` consecutive rewards each) whose rewards are all
    equal — max − min ≤ ``tolerance`` — so every advantage of the group is 0. NaN rewards (unscorable
    completions, which TRL leaves out of the group baseline) are ignored."""
    grouped = rewards.float().view(-1, group_size)
    nan = torch.isnan(grouped)
    spread = grouped.masked_fill(nan, -math.inf).amax(1) - grouped.masked_fill(nan, math.inf).amin(1)
    return ~(spread > tolerance)  # a group with at most one scored reward has no spread either


class _RowBudget(StoppingCriteria):
    """A transformers stopping criterion that ends row i after ``budgets[i]`` new tokens."""

    def __init__(self, budgets: list[int]):
        self.budgets = torch.tensor(budgets)
        self.start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.start is None:  # called once each new token is appended: the first call sees prompt + 1
            self.start = input_ids.shape[1] - 1
        return (input_ids.shape[1] - self.start) >= self.budgets.to(input_ids.device)


class RecapTrainer(GRPOTrainer):
    """``GRPOTrainer`` plus DAPO's dynamic sampling, the per-row total length budget, and the prefill
    planner's per-step prefills.

    Dynamic sampling (``dynamic_sampling``): after each generation round, every prompt group whose total
    rewards are all equal (``zero_variance_groups``) is dropped; while the step has fewer than its
    ``prompts_per_step`` groups with signal, another round draws as many prompts again from the training
    set (seeded by seed, step, round and process; prompts already in the step are avoided while others
    remain) — at most ``max_extra_rounds`` rounds. The step then trains on the first groups with signal,
    up to its size; if refilling ran out, the missing groups are taken from dropped ones with their
    completion mask and advantages zeroed, so TRL gets the tensor shapes it expects while they give no
    gradient and no tokens to the DAPO normaliser. With several processes each fills its own share of
    groups, and all of them run a round while any is short. Logged per step:
    ``dynamic_sampling/effective_batch_size`` (groups with signal trained on),
    ``dynamic_sampling/dropped_groups`` (zero-variance groups generated, all rounds) and
    ``dynamic_sampling/extra_rounds``.

    Length budget (``max_total_length``): each row may write ``completion_budget(prompt tokens)``; for
    transformers generation a stopping criterion ends each row at its budget, and every backend's
    completions are cut to it afterwards (vLLM takes per-request limits, but TRL sends one for the batch:
    cutting a sampled rollout at n tokens gives what sampling with a limit of n gives). The budget is
    passed to reward functions as the ``completion_budget`` column.
    """

    def __init__(
        self,
        *args,
        dynamic_sampling: bool = False,
        max_extra_rounds: int = 9,
        dynamic_sampling_tolerance: float = 1e-6,
        max_total_length: int = 0,
        loss_length_buckets: int = 1,
        planner: PrefillPlanner | None = None,
        selfreset: SelfResetPlanner | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.dynamic_sampling = dynamic_sampling
        self.max_extra_rounds = max_extra_rounds
        self.dynamic_sampling_tolerance = dynamic_sampling_tolerance
        self.max_total_length = max_total_length
        self.loss_length_buckets = loss_length_buckets
        self.planner = planner
        self.selfreset = selfreset
        self._last_rewards: torch.Tensor | None = None
        self._last_completions: list[str] = []
        self._last_verdicts: list | None = None
        self._row_budgets: list[int] | None = None
        self._dataset_ids: list | None = None
        self._step_rounds: list[tuple[list[dict], torch.Tensor, list[str], list | None]] = []
        self._decoded_tokens = 0  # tokens this process decoded in the current step (every round)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if (self.planner is not None or self.selfreset is not None) and self.args.should_save:
            from recap.files import write_text

            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            if folder.is_dir() and self.planner is not None:  # the buffer resumes with the run
                write_text(folder / PLANNER_STATE, json.dumps(self.planner.state()))
            if folder.is_dir() and self.selfreset is not None:  # so does the re-roll queue
                write_text(folder / SELFRESET_STATE, json.dumps(self.selfreset.state()))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """TRL's training loop; with Self-ReSET the re-roll queue of the checkpoint resumed from is restored
        first, and ``output_dir/selfreset_stats.json`` is written at the end."""
        if self.selfreset is not None and isinstance(resume_from_checkpoint, str):
            saved = Path(resume_from_checkpoint) / SELFRESET_STATE
            if saved.is_file():
                self.selfreset.load_state(json.loads(saved.read_text(encoding="utf-8")))
        result = super().train(resume_from_checkpoint, *args, **kwargs)
        if self.selfreset is not None and self.accelerator.is_main_process:
            from recap.files import write_text

            write_text(
                Path(self.args.output_dir) / "selfreset_stats.json",
                json.dumps({**self.selfreset.stats(), "history": self.selfreset.history}, indent=1),
            )
        return result

    def length_buckets(self, inputs: dict) -> list[dict] | None:
        """Split a micro-batch into ``loss_length_buckets`` chunks of rows sorted by length, each with the
        prompt's left padding and the completion's right padding that no row of the chunk needs trimmed
        off. None when that would not save at least 10 % of the padded positions.

        Trimming is exact: dropped columns are masked for every row of the chunk, and left padding only
        shifts absolute positions, which rotary attention does not see (relative positions are kept)."""
        k = self.loss_length_buckets
        if self.accelerator.num_processes > 1:
            # DDP (and the sharded engines) pair each forward with one backward and one gradient
            # reduction; several forwards per backward would desynchronise the ranks' collectives.
            return None
        prompt_mask, completion_mask = inputs["prompt_mask"], inputs["completion_mask"]
        rows, width = prompt_mask.shape[0], prompt_mask.shape[1] + completion_mask.shape[1]
        if k <= 1 or rows < 2:
            return None
        length = prompt_mask.sum(1) * (completion_mask.shape[1] + 1) + completion_mask.sum(1)
        order = torch.argsort(length, stable=True)
        chunks = [c for c in torch.tensor_split(order, min(k, rows)) if len(c)]
        out, cost = [], 0
        for idx in chunks:
            pm, cm = prompt_mask[idx], completion_mask[idx]
            first = int(pm.any(0).float().argmax()) if pm.any() else pm.shape[1]
            last = int(cm.any(0).nonzero().max()) + 1 if cm.any() else 1
            chunk = {}
            for key, value in inputs.items():
                if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows:
                    value = value[idx]
                    if key.startswith("prompt_") and value.dim() == 2:
                        value = value[:, first:]
                    elif value.dim() == 2 and value.shape[1] == cm.shape[1]:
                        value = value[:, :last]
                chunk[key] = value
            out.append(chunk)
            cost += len(idx) * (pm.shape[1] - first + last)
        return out if cost <= 0.9 * rows * width else None

    def _compute_loss(self, model, inputs):
        chunks = self.length_buckets(inputs)
        if chunks is None:
            return super()._compute_loss(model, inputs)
        # The DAPO normaliser is the step's token count (num_items_in_batch), the same for every chunk,
        # so the chunks' losses add up to the micro-batch's loss.
        return sum(super(RecapTrainer, self)._compute_loss(model, chunk) for chunk in chunks)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self._row_budgets is not None and len(self._row_budgets) == len(inputs):
            for row, budget in zip(inputs, self._row_budgets):  # a column for reward functions
                row["completion_budget"] = budget
        self._last_completions = list(completions)  # local, what the reward functions read
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards_per_func  # gathered over processes, in global order
        router = self.reward_funcs[0] if self.reward_funcs else None
        verdicts = getattr(router, "last_verdicts", None)  # RewardRouter: the local rows' verdicts
        self._last_verdicts = list(verdicts) if verdicts is not None and len(verdicts) == len(inputs) else None
        return rewards_per_func

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        budgets = [completion_budget(len(ids), self.max_completion_length, self.max_total_length) for ids in prompt_ids]
        self._row_budgets = budgets
        if not self.max_total_length:
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            self._decoded_tokens += sum(len(ids) for ids in completion_ids)
            return completion_ids, logprobs
        with self._row_stopping(budgets):
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        self._decoded_tokens += sum(len(ids) for ids in completion_ids)  # what was decoded, before the cut
        completion_ids = [list(ids[:b]) for ids, b in zip(completion_ids, budgets, strict=True)]
        if logprobs is not None:
            logprobs = [list(lp[:b]) for lp, b in zip(logprobs, budgets, strict=True)]
        return completion_ids, logprobs

    @contextlib.contextmanager
    def _row_stopping(self, budgets: list[int]):
        """For transformers generation: stop each row at its budget, and the batch at the largest one."""
        if self.use_vllm or getattr(self, "use_transformers_continuous_batching", False):
            yield
            return
        from transformers import StoppingCriteriaList

        model = self.accelerator.unwrap_model(self.model_wrapped)  # what TRL's generation context yields
        own = model.__dict__.get("generate")
        cap = self.generation_config.max_new_tokens
        model.generate = functools.partial(
            model.generate, stopping_criteria=StoppingCriteriaList([_RowBudget(budgets)])
        )
        self.generation_config.max_new_tokens = min(cap, max(budgets))
        try:
            yield
        finally:
            self.generation_config.max_new_tokens = cap
            if own is None:
                del model.generate
            else:
                model.generate = own

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        self._step_rounds, self._decoded_tokens = [], 0
        if not self.dynamic_sampling:
            batch, out, _, texts = self._round(inputs)
            self._planner_step([(batch, texts)])
        else:
            out = self._dynamic_sampling_step(inputs)
        self._selfreset_step()
        decoded = self.accelerator.gather(torch.tensor(float(self._decoded_tokens), device=self.accelerator.device))
        self._metrics["train"]["cost/decoded_tokens"].append(decoded.sum().item())
        return out

    def _round(self, inputs: list[dict], fresh: bool = True) -> tuple[list[dict], dict, torch.Tensor, list[str]]:
        """One generation round: Self-ReSET's re-rolls first, per-step prefills, TRL's generation and scoring.
        Returns the rows as generated, TRL's output, the total reward of every row of every process, and the
        local texts. ``fresh``: the rows are the dataloader's (not a refill draw)."""
        if self.selfreset is not None:
            inputs = self.selfreset.compose(inputs, self.state.global_step, fresh=fresh)
        if self.planner is not None:
            inputs = self.planner.prepare(inputs, self.state.global_step)
        out = super()._generate_and_score_completions(inputs)
        rewards = self._last_rewards
        total = (rewards * self.reward_weights.to(rewards.device).unsqueeze(0)).nansum(dim=1)
        total[torch.isnan(rewards).all(dim=1)] = torch.nan  # as TRL: unscorable rows leave the baseline
        start = self.accelerator.process_index * len(inputs)  # this process's rows in the gathered rewards
        self._step_rounds.append(
            (inputs, total[start : start + len(inputs)].cpu(), self._last_completions, self._last_verdicts)
        )
        return inputs, out, total, self._last_completions

    def _selfreset_step(self) -> None:
        """Cut and re-queue from every round of the step (Self-ReSET), once per step, and log it."""
        if self.selfreset is None:
            return
        rows = [row for batch, _, _, _ in self._step_rounds for row in batch]
        texts = [t for _, _, ts, _ in self._step_rounds for t in ts]
        rewards = [float(x) for _, total, _, _ in self._step_rounds for x in total.tolist()]
        verdicts = None
        if all(v is not None for _, _, _, v in self._step_rounds):
            verdicts = [v for _, _, _, vs in self._step_rounds for v in vs]
        found = self.selfreset.harvest(rows, texts, rewards, verdicts, self.state.global_step)
        metrics = self._metrics["train"]
        metrics["selfreset/queue_size"].append(found["queue"])
        metrics["selfreset/cuts"].append(found["cuts"])
        metrics["selfreset/requeued"].append(found["requeued"])
        groups = [row.get("reroll", "") for row in rows[:: self.num_generations]]
        metrics["selfreset/reroll_share"].append(sum(g != "" for g in groups) / max(1, len(groups)))

    def _planner_step(self, rounds: list[tuple[list[dict], list[str]]]) -> None:
        """Harvest the step's completions (every round) into the on-policy buffer once, and log it."""
        if self.planner is None:
            return
        rows = [row for batch, _ in rounds for row in batch]
        texts = [t for _, ts in rounds for t in ts]
        # TRL repeats each prompt num_generations times in ``inputs``; one completion per input row.
        added = self.planner.harvest(rows, texts, self.state.global_step)  # 0 on steps without a scan
        stats = self.planner.buffer.stats()
        metrics = self._metrics["train"]
        metrics["onpolicy/buffer_size"].append(stats["size"])
        metrics["onpolicy/added"].append(added)
        if stats["cut_fraction_mean"] is not None:
            metrics["onpolicy/cut_fraction_mean"].append(stats["cut_fraction_mean"])
        slots = [x for x in rows if x.get("prefilled")]
        if slots:
            metrics["prefill/on_policy_share"].append(
                sum(x.get("prefill_source") == "on_policy" for x in slots) / len(slots)
            )

    def _dynamic_sampling_step(self, inputs: list[dict]) -> dict:
        size = self.num_generations
        quota = len(inputs) // size  # this process's groups (whole groups: checked by check_train_config)
        first_group = self.accelerator.process_index * quota
        used = {row.get("id") for row in inputs}
        rounds, kept, flat = [], [], []  # kept / flat: (round, local group)
        dropped, extra, batch = 0, 0, inputs
        while True:
            batch, out, total, texts = self._round(batch, fresh=extra == 0)
            rounds.append((batch, out, texts))
            zero = zero_variance_groups(total, size, self.dynamic_sampling_tolerance)
            dropped += int(zero.sum())
            for g, is_zero in enumerate(zero[first_group : first_group + quota].tolist()):
                (flat if is_zero else kept).append((len(rounds) - 1, g))
            short = torch.tensor(float(len(kept) < quota), device=self.accelerator.device)
            if self.accelerator.gather(short).sum().item() == 0 or extra >= self.max_extra_rounds:
                break
            extra += 1
            batch = self._refill(quota, used, extra)
        signal = kept[:quota]
        out = self._assemble([r[1] for r in rounds], signal + flat[: quota - len(signal)], len(signal))
        self._planner_step([(b, t) for b, _, t in rounds])
        effective = self.accelerator.gather(torch.tensor(float(len(signal)), device=self.accelerator.device))
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/effective_batch_size"].append(int(effective.sum().item()))
        metrics["dynamic_sampling/dropped_groups"].append(dropped)
        metrics["dynamic_sampling/extra_rounds"].append(extra)
        return out

    def _refill(self, groups: int, used: set, round_: int) -> list[dict]:
        """``groups`` prompts of the training set for an extra round, each repeated num_generations times."""
        dataset = self.train_dataset
        if self._dataset_ids is None:
            self._dataset_ids = dataset["id"] if "id" in dataset.column_names else [None] * len(dataset)
        key = f"{self.args.seed}:{self.state.global_step}:{round_}:{self.accelerator.process_index}"
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(zlib.crc32(key.encode()))).tolist()
        fresh = [i for i in order if self._dataset_ids[i] is None or self._dataset_ids[i] not in used]
        seen = set(fresh)
        picks = (fresh + [i for i in order if i not in seen])[:groups]  # repeats only when nothing new is left
        rows = [dataset[i] for i in picks]
        used.update(row.get("id") for row in rows)
        return [dict(row) for row in rows for _ in range(self.num_generations)]

    def _assemble(self, outs: list[dict], groups: list[tuple[int, int]], n_signal: int) -> dict:
        """The step's batch from the chosen ``groups`` (round, local group) of the rounds' outputs; the
        groups after the first ``n_signal`` are fillers: completion mask and advantages zeroed."""
        size = self.num_generations
        parts, fillers = [], []
        for r, out in enumerate(outs):
            mine = [(i, g) for i, (rr, g) in enumerate(groups) if rr == r]
            if not mine:
                continue
            index = torch.tensor(
                [g * size + k for _, g in mine for k in range(size)], device=out["completion_ids"].device
            )
            parts.append(
                {
                    key: value[index] if isinstance(value, torch.Tensor) and value.dim() >= 1 else value
                    for key, value in out.items()
                }
            )
            fillers += [i >= n_signal for i, _ in mine for _ in range(size)]
        filler = torch.tensor(fillers, device=outs[0]["completion_ids"].device)
        out = _stack_rows(parts, self._tokenizer.pad_token_id)
        out["completion_mask"] = out["completion_mask"] * (~filler).unsqueeze(1).to(out["completion_mask"].dtype)
        out["advantages"] = out["advantages"].masked_fill(filler, 0.0)
        mask = out["completion_mask"] if out.get("tool_mask") is None else out["completion_mask"] * out["tool_mask"]
        out["num_items_in_batch"] = self.accelerator.gather(mask.sum()).sum()
        return out


def _stack_rows(parts: list[dict], pad_id: int) -> dict:
    """Concatenate TRL batch dicts row-wise: prompt tensors are left-padded and completion-shaped tensors
    right-padded to the widest part (pad id for ``*_ids``, 0 elsewhere: masked positions)."""
    out = {}
    for key, first in parts[0].items():
        values = [p[key] for p in parts]
        if not isinstance(first, torch.Tensor) or first.dim() == 0:
            out[key] = first  # num_items_in_batch: recomputed by the caller
            continue
        if first.dim() == 1 or len({v.shape[1:] for v in values}) == 1:
            out[key] = torch.cat(values)
            continue
        if first.dim() != 2 or not (
            key.startswith("prompt_") or all(v.shape[1] == p["completion_ids"].shape[1] for v, p in zip(values, parts))
        ):
            raise ValueError(f"dynamic sampling cannot merge the batch field {key!r} of shape {tuple(first.shape)}")
        width = max(v.shape[1] for v in values)
        fill = pad_id if key.endswith("_ids") else 0
        padded = []
        for v in values:
            pad = v.new_full((v.shape[0], width - v.shape[1]), fill)
            padded.append(torch.cat([pad, v] if key.startswith("prompt_") else [v, pad], dim=1))
        out[key] = torch.cat(padded)
    return out


VLLM_MODES = ("auto", "off", "colocate", "server")


def world_size() -> int:
    """Processes of this run (``WORLD_SIZE``, set by ``accelerate launch`` and ``torchrun``; 1 otherwise)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def vllm_mode(cfg: TrainConfig) -> str | None:
    """The TRL ``vllm_mode`` the run uses, or None for transformers rollouts."""
    if cfg.vllm not in VLLM_MODES:
        raise ValueError(f"vllm must be one of {', '.join(VLLM_MODES)}, got {cfg.vllm!r}")
    if cfg.vllm == "off" or (cfg.vllm == "auto" and (cfg.use_cpu or not _vllm_usable())):
        return None
    return "colocate" if cfg.vllm == "auto" else cfg.vllm


def _vllm_usable() -> bool:
    from recap.engines import vllm_usable

    return vllm_usable()


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the field for settings the trainer cannot run."""
    if cfg.dynamic_sampling_tau is not None:
        raise ValueError(
            "dynamic_sampling_tau was removed: dynamic sampling now drops every prompt group whose "
            "rewards are all equal (zero variance, as DAPO does), whatever their value, and refills "
            "the step (dynamic_sampling_max_extra_rounds); delete the field"
        )
    for name in ("dynamic_sampling_max_extra_rounds", "max_total_length", "overlong_buffer"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be ≥ 0, got {getattr(cfg, name)}")
    if cfg.dynamic_sampling_tolerance < 0:
        raise ValueError(f"dynamic_sampling_tolerance must be ≥ 0, got {cfg.dynamic_sampling_tolerance}")
    world = world_size()
    share = cfg.prompts_per_step * cfg.num_generations / world
    if cfg.dynamic_sampling and world > 1 and share % cfg.num_generations:
        raise ValueError(
            f"dynamic_sampling with {world} processes: each process's share of the step "
            f"(prompts_per_step × num_generations / {world} = {share:g} completions) must be whole "
            f"groups of num_generations = {cfg.num_generations}, since each process refills its own "
            "groups; make prompts_per_step a multiple of the number of processes"
        )


def grpo_config(cfg: TrainConfig) -> GRPOConfig:
    check_train_config(cfg)
    total = cfg.prompts_per_step * cfg.num_generations
    mode = vllm_mode(cfg)
    world = world_size()
    micro = cfg.micro_batch_size or total // world
    if total % (micro * world):
        raise ValueError(
            f"micro_batch_size {micro} × {world} process(es) must divide prompts_per_step × num_generations = {total}"
        )
    return GRPOConfig(
        output_dir=cfg.output_dir,
        loss_type=cfg.loss_type,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        beta=cfg.beta,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=total // (micro * world),
        max_steps=cfg.max_steps,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=0,
        temperature=cfg.temperature,
        max_completion_length=cfg.max_completion_length,
        mask_truncated_completions=cfg.mask_truncated_completions,
        reward_weights=[1.0, cfg.overlong_penalty] if cfg.overlong_buffer else None,
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        report_to=cfg.report_to,
        use_cpu=cfg.use_cpu,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=cfg.bf16,
        log_completions=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        use_vllm=mode is not None,
        vllm_mode=mode or "colocate",
        vllm_server_host=cfg.vllm_server_host,
        vllm_server_port=cfg.vllm_server_port,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
    )


def build_trainer(cfg: TrainConfig, examples: list[Example] | None = None, model=None, tokenizer=None) -> RecapTrainer:
    from datasets import Dataset

    from recap.models import apply_lora, check_context, load_model, prepare_tokenizer
    from recap.rewards.factory import load_judges
    from recap.rewards.router import RewardRouter, SoftOverlongPunishment

    check_train_config(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if examples is None:
        examples = read_examples(cfg.train_file)
    if model is None or tokenizer is None:
        loaded, loaded_tok = load_model(
            cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle_weights
        )
        model, tokenizer = model or loaded, tokenizer or loaded_tok
    prepare_tokenizer(model, tokenizer)
    if cfg.lora_r:
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
    rows = rl_rows(examples, tokenizer, cfg.think_system_prompt)
    labelled = [(f"{cfg.train_file or 'examples'}: example {r['id']!r}", r["prompt"]) for r in rows]
    if cfg.max_total_length:
        check_budgets(tokenizer, model, labelled, cfg)
    else:
        check_context(tokenizer, model, labelled, cfg.max_completion_length, "max_completion_length")
    judges = load_judges(cfg.judge, cfg.judges).judges
    reward_funcs = [RewardRouter(judges, format_penalty=cfg.format_penalty, unclosed=cfg.unclosed)]
    if cfg.overlong_buffer:
        reward_funcs.append(SoftOverlongPunishment(cfg.max_completion_length, cfg.overlong_buffer))
    planner = None
    if dynamic_prefills(cfg):
        planner = PrefillPlanner(
            cfg.prefill_sources,
            lambda messages, text: render_prompt(tokenizer, messages, text),
            step_judge_for(cfg.prefill_sources.judge, judges),
            schedule=cfg.prefill_length,
            max_steps=cfg.max_steps,
            seed=cfg.seed,
        )
    selfreset = None
    if cfg.self_reset is not None:
        if cfg.prefill_sources.weights.get("on_policy", 0.0) > 0:
            raise ValueError(
                "self_reset and the on_policy prefill source both harvest the policy's own reasoning; "
                "use one of them (self_reset is the paper's method, on_policy the RECAP-slot variant)"
            )
        selfreset = SelfResetPlanner(
            cfg.self_reset,
            lambda messages, text: render_prompt(tokenizer, messages, text),
            cutter_for(cfg.self_reset, judges),
            cfg.num_generations,
            tolerance=cfg.dynamic_sampling_tolerance,
        )
    return RecapTrainer(
        model=model,
        processing_class=tokenizer,
        reward_funcs=reward_funcs,
        args=grpo_config(cfg),
        train_dataset=Dataset.from_list(rows),
        dynamic_sampling=cfg.dynamic_sampling,
        max_extra_rounds=cfg.dynamic_sampling_max_extra_rounds,
        dynamic_sampling_tolerance=cfg.dynamic_sampling_tolerance,
        max_total_length=cfg.max_total_length,
        loss_length_buckets=cfg.loss_length_buckets,
        planner=planner,
        selfreset=selfreset,
    )


def check_budgets(tokenizer, model, labelled: list[tuple[str, str]], cfg: TrainConfig) -> None:
    """With a total length budget, every ``(label, prompt)`` must leave the rollout something to write,
    and prompt + budget must fit the model's context."""
    from recap.models import context_length, min_tokens

    limit = context_length(model)
    for label, text in labelled:
        if min_tokens(tokenizer, text) >= cfg.max_total_length:  # cheap: a huge prompt is never tokenized
            raise ValueError(
                f"{label}: the prompt is {len(text)} characters, at least {min_tokens(tokenizer, text)} "
                f"tokens, leaving nothing to write under max_total_length {cfg.max_total_length}; "
                "shorten the prompt or prefill, or raise max_total_length"
            )
        n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
        if n >= cfg.max_total_length:
            raise ValueError(
                f"{label}: the prompt is {n} tokens, leaving nothing to write under max_total_length "
                f"{cfg.max_total_length}; shorten the prompt or prefill, or raise max_total_length"
            )
        budget = completion_budget(n, cfg.max_completion_length, cfg.max_total_length)
        if limit is not None and n + budget > limit:
            raise ValueError(
                f"{label}: the prompt is {n} tokens and its budget adds {budget}, more than the "
                f"model's context of {limit} tokens; lower max_total_length"
            )


RESUME_MODES = ("auto", "must", "never")
PLANNER_STATE = "prefix_buffer.json"  # the on-policy buffer, saved with each checkpoint
SELFRESET_STATE = "selfreset_queue.json"  # the Self-ReSET re-roll queue, saved with each checkpoint
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Fields that may change between a run and its resumption (they do not change what is trained).
_RESUMABLE_CHANGES = {
    "resume",
    "max_steps",
    "save_steps",
    "logging_steps",
    "num_threads",
    "report_to",
    "vllm",
    "vllm_server_host",
    "vllm_server_port",
    "vllm_gpu_memory_utilization",
}
_FILE_JUDGES = ("classifier", "guard", "rubric")  # judge specs that name a file


def checkpoint_complete(folder: Path, require: tuple[str, ...] = ()) -> bool:
    """A checkpoint is complete when its ``trainer_state.json`` — the last file the Trainer writes, after
    the weights, optimizer, scheduler and RNG states — is whole and names the checkpoint's own step, and it
    holds the ``require``d files (the on-policy buffer, written after the trainer state)."""
    m = _CHECKPOINT.match(folder.name)
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights = any(
        (folder / f).is_file()
        for f in ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors")
    )
    return (
        bool(m)
        and isinstance(state, dict)
        and state.get("global_step") == int(m.group(1))
        and weights
        and (folder / "optimizer.pt").is_file()
        and all((folder / f).is_file() for f in require)
    )


def checkpoints(out: Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``out``, oldest first."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() for m in [_CHECKPOINT.match(p.name)] if m and p.is_dir()]
    return [p for _, p in sorted(found)]


def last_checkpoint(
    out: Path, log: Callable[[str], None] = print, set_aside: bool = True, require: tuple[str, ...] = ()
) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``out``. With ``set_aside``, newer incomplete ones (a kill
    or a full disk during a save) are renamed ``incomplete-checkpoint-N`` — kept for inspection, never
    loaded — and reported."""
    for folder in reversed(checkpoints(out)):
        if checkpoint_complete(folder, require):
            return folder
        if not set_aside:
            continue
        aside = folder.with_name(f"incomplete-{folder.name}")
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        log(
            f"{folder}: incomplete (the run was killed, or the disk filled, while saving it); moved to "
            f"{aside.name}, never loaded"
        )
    return None


def _sha256(path: Path) -> str | None:
    """The sha256 of a file (of a folder: of its files' relative paths and contents); None if absent."""
    import hashlib

    if not path.exists():
        return None
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]:
        if path.is_dir():
            digest.update(f.relative_to(path).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def input_hashes(cfg: TrainConfig, examples: list[Example] | None = None) -> dict:
    """Content hashes (sha256) of what the run trains on, recorded in ``train_config.json`` so that a
    resume on other data is refused: the training file (or the examples passed in memory) and every file a
    judge spec names (``classifier:``, ``guard:``, ``rubric:`` in ``judge``, ``judges`` and the
    on-policy step judge)."""
    import hashlib

    found: dict[str, dict] = {}
    if examples is not None:
        blob = json.dumps([asdict(e) for e in examples], ensure_ascii=False, sort_keys=True)
        found["examples"] = {"count": len(examples), "sha256": hashlib.sha256(blob.encode()).hexdigest()}
    elif cfg.train_file and (digest := _sha256(Path(cfg.train_file))):
        found["train_file"] = {"path": cfg.train_file, "sha256": digest}
    specs = {
        "judge": cfg.judge,
        **{f"judges.{k}": v for k, v in sorted(cfg.judges.items())},
        "prefill_sources.judge": cfg.prefill_sources.judge,
    }
    for name, spec in specs.items():
        kind, _, arg = str(spec).partition(":")
        if kind in _FILE_JUDGES and arg and (digest := _sha256(Path(arg))):
            found[name] = {"path": arg, "sha256": digest}
    return found


def config_dump(cfg: TrainConfig, inputs: dict | None = None) -> dict:
    """The run's ``train_config.json``: the config as JSON, with the ``input_hashes`` under ``inputs`` when
    given, secrets redacted (``recap.security``)."""
    from recap.security import redacted

    dump = asdict(cfg)
    if inputs is not None:
        dump["inputs"] = inputs
    return json.loads(json.dumps(redacted(dump)))


def _check_same_run(cfg: TrainConfig, out: Path, inputs: dict | None = None) -> None:
    """A resumed run must train what the first run trained: compare its ``train_config.json`` with the
    same dump of ``cfg`` (redacted alike, so a secret in a field is no difference), then the content
    hashes of its inputs (``input_hashes``) with those it recorded."""
    saved_file = out / "train_config.json"
    if not saved_file.is_file():
        return
    saved, now = json.loads(saved_file.read_text(encoding="utf-8")), config_dump(cfg)
    for key in sorted((set(saved) | set(now)) - {"inputs"}):
        if key not in _RESUMABLE_CHANGES and saved.get(key) != now.get(key):
            raise ValueError(
                f"{saved_file}: field '{key}' was {saved.get(key)!r} in the run being resumed, now "
                f"{now.get(key)!r}; use another output_dir for a different run"
            )
    before = saved.get("inputs")
    if inputs is None or not isinstance(before, dict):  # a run recorded before recap hashed its inputs
        return
    for name in sorted(set(before) & set(inputs), key=lambda n: (n not in ("train_file", "examples"), n)):
        was, now_ = before[name], inputs[name]
        if not isinstance(was, dict) or was.get("sha256") == now_["sha256"]:
            continue
        what = (
            f"the training examples ({was.get('count')} → {now_['count']})"
            if name == "examples"
            else f"{name} {now_['path']}"
        )
        raise ValueError(
            f"{saved_file}: {what} changed since the run started (sha256 {str(was.get('sha256'))[:12]}… → "
            f"{now_['sha256'][:12]}…); resuming would train on other data: restore it, or use another "
            "output_dir for a new run"
        )


def _resume_point(cfg: TrainConfig, out: Path, inputs: dict, log: Callable[[str], None]) -> Path | None:
    """Where the run starts (the checkpoint to resume, None: step 0), or a ``ValueError`` saying why it
    may not. Torn checkpoints are set aside first, so they never decide: an earlier run that left no
    complete checkpoint restarts from step 0 (when it trained the same thing) instead of being a dead
    end."""
    # A checkpoint whose on-policy buffer or Self-ReSET queue was not written is torn: resuming without it
    # would train on other data than an uninterrupted run.
    require = ((PLANNER_STATE,) if dynamic_prefills(cfg) else ()) + ((SELFRESET_STATE,) if cfg.self_reset else ())
    ckpt = last_checkpoint(out, log, require=require)
    torn = sorted(p.name for p in out.glob("incomplete-checkpoint-*")) if out.is_dir() else []
    if ckpt is not None:
        if cfg.resume == "never":
            raise ValueError(
                f"{out} holds checkpoints of an earlier run (last complete: {ckpt.name}); pass "
                "--resume to continue it, or choose another output_dir"
            )
        _check_same_run(cfg, out, inputs)
        log(f"resuming from {ckpt}")
        return ckpt
    started = (out / "train_config.json").is_file()
    if cfg.resume == "must" and not started and not torn:
        raise ValueError(f"{out}: no complete checkpoint to resume from; run without --resume to start")
    if torn or cfg.resume == "must":  # an earlier run of this output_dir trained (or is to be continued)
        _check_same_run(cfg, out, inputs)
        left = f"left only incomplete checkpoints ({', '.join(torn)})" if torn else "saved no checkpoint"
        log(f"{out}: the earlier run of this config {left}; starting from step 0")
    return None


def _stop_on_write_failures(trainer: RecapTrainer, out: Path) -> None:
    """A checkpoint that cannot be written (a full or read-only disk) stops the run with one ``OSError``
    naming it, instead of torch's two chained ``RuntimeError``s that name no file."""
    from recap.files import write_failure

    save = trainer._save_checkpoint

    def guarded(model, trial):
        try:
            return save(model, trial)
        except Exception as e:
            why = write_failure(e)
            if why is None:
                raise
            folder = out / f"checkpoint-{trainer.state.global_step}"
            try:
                free = f"; {shutil.disk_usage(out).free / 2**20:.1f} MiB free there"
            except OSError:
                free = ""
            error = OSError(
                f"cannot write checkpoint {folder}: {why}{free}. The run stopped at step "
                f"{trainer.state.global_step}; make room, then `recap train --resume` sets the torn "
                "checkpoint aside and continues from the last complete one"
            )
            error.errno = getattr(e, "errno", None)
            raise error from None

    trainer._save_checkpoint = guarded


TRAIN_LOG = "train_log.jsonl"  # every log of the run, one JSON object a line


def _train_log_callback(path: Path, progress: Callable[[int, int, dict], None] | None):
    """A ``TrainerCallback`` that appends every log of the run to ``path`` (instead of printing TRL's dicts)
    and tells ``progress(step, max_steps, latest logs)`` after every optimizer step."""
    from transformers import TrainerCallback

    class TrainLog(TrainerCallback):
        latest: dict = {}

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                self.latest = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
                path.parent.mkdir(parents=True, exist_ok=True)
                with path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"step": state.global_step, **logs}) + "\n")

        def on_step_end(self, args, state, control, **kwargs):
            if progress is not None and state.is_world_process_zero:
                progress(state.global_step, state.max_steps, self.latest)

    return TrainLog()


def train(
    cfg: TrainConfig,
    examples: list[Example] | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int, int, dict], None] | None = None,
) -> Path:
    """Run RECAP (or vanilla DAPO, if the mixture has no prefills). Checkpoints in ``output_dir`` are
    handled as ``cfg.resume`` says; resuming restores the weights, optimizer, scheduler, RNG states and
    the data position of the last complete checkpoint, after checking that the config and the content of
    the inputs (``input_hashes``) are those of the run being resumed. Returns the folder of the final
    model, which is written whole or not at all. TRL's log dicts go to ``output_dir/train_log.jsonl``,
    not to the terminal; ``progress(step, max_steps, latest logs)`` follows every step."""
    from recap.files import atomic_dir, write_text

    if cfg.resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {', '.join(RESUME_MODES)}, got {cfg.resume!r}")
    out = Path(cfg.output_dir)
    final = out / "final"
    if (final / "config.json").exists():
        if cfg.resume == "never":
            raise ValueError(f"{out} already holds a finished run ({final}); choose another output_dir")
        return final
    accelerator_main = int(os.environ.get("RANK", "0")) == 0
    ckpt, problem, inputs = None, None, {}
    if accelerator_main:  # one process looks at (and tidies) output_dir; the others follow its decision
        inputs = input_hashes(cfg, examples)
        try:
            ckpt = _resume_point(cfg, out, inputs, log)
        except ValueError as e:
            problem = str(e)
    if world_size() > 1:
        ckpt, problem = _broadcast_checkpoint(ckpt, problem)
    if problem is not None:
        raise ValueError(problem)
    if ckpt is None and accelerator_main:
        write_text(out / "train_config.json", json.dumps(config_dump(cfg, inputs), indent=1))
    if cfg.report_to not in ("none", ""):
        log(f"reporting scalar metrics to {cfg.report_to}; completions and prompts are not sent (log_completions off)")
    trainer = build_trainer(cfg, examples)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the logs go to train_log.jsonl (and to `progress`) instead
    trainer.add_callback(_train_log_callback(out / TRAIN_LOG, progress))
    _stop_on_write_failures(trainer, out)
    if trainer.planner is not None and ckpt is not None and (ckpt / PLANNER_STATE).is_file():
        trainer.planner.load_state(json.loads((ckpt / PLANNER_STATE).read_text(encoding="utf-8")))
    trainer.train(resume_from_checkpoint=str(ckpt) if ckpt is not None else None)
    accelerator = trainer.accelerator
    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(trainer.model)
    if accelerator.is_main_process:  # one writer; every rank holds the same weights
        if hasattr(model, "merge_and_unload"):  # LoRA: save a plain model the evaluation can load
            model = model.merge_and_unload()
        write_text(out / "log_history.json", json.dumps(trainer.state.log_history, indent=1))
        if trainer.planner is not None:
            write_text(
                out / "prefix_buffer_stats.json",
                json.dumps({**trainer.planner.stats(), "history": trainer.planner.history}, indent=1),
            )
        with atomic_dir(final) as tmp:  # last: its config.json marks the run as finished
            model.save_pretrained(str(tmp), safe_serialization=True)
            trainer.processing_class.save_pretrained(str(tmp))
    accelerator.wait_for_everyone()
    return final


def _broadcast_checkpoint(ckpt: Path | None, problem: str | None = None) -> tuple[Path | None, str | None]:
    """Rank 0's decision (the checkpoint to resume, or why the run may not start), sent to every rank."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # initialises the process group from the launcher's environment
    box = [str(ckpt) if ckpt is not None else None, problem]
    dist.broadcast_object_list(box, src=0)
    return (Path(box[0]) if box[0] is not None else None), box[1]
