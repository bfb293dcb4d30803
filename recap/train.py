"""RECAP training: TRL's ``GRPOTrainer`` with the DAPO loss on the counter-aligned mixture.

The prefill is part of the prompt text (rendered by ``recap.chat.render_prompt``), so TRL generates
and trains only the policy's continuation. Vanilla DAPO is the same trainer on the mixture built with
α = 0. DAPO's dynamic sampling (drop prompt groups whose rewards are all 0 or all ≥ τ) is available
as an option: dropped groups are masked out of the token-level loss and counted in the logs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from trl import GRPOConfig, GRPOTrainer

from recap.chat import render_prompt, with_think_system
from recap.data.examples import Example, read_examples
from recap.data.onpolicy import PrefillPlanner, PrefillSourceConfig, step_judge_for
from recap.data.schedules import LengthSchedule


@dataclass
class TrainConfig:
    """RL post-training with RECAP (paper defaults unless noted)."""

    model: str = field(default="", metadata={"help": "Policy: a local folder or a hub id (a causal LM with a chat template)."})
    train_file: str = field(default="", metadata={"help": "Mixture JSONL/Parquet built by `recap data mix` (prefills already set)."})
    output_dir: str = field(default="runs/recap", metadata={"help": "Checkpoints, logs and the final model (output_dir/final)."})
    judge: str = field(default="rules", metadata={"help": "Judge of every kind's reward: rules, rules:<family>, toy, classifier:<file>, guard:<yaml> (see recap.rewards.judges.load_judge)."})
    judges: dict[str, str] = field(default_factory=dict, metadata={"help": "Per-kind judge overrides, e.g. {harmful: 'guard:configs/guard.yaml'}; kinds not named use `judge`."})
    num_generations: int = field(default=16, metadata={"help": "Rollouts per prompt (the group of GRPO/DAPO); the paper uses 16."})
    prompts_per_step: int = field(default=8, metadata={"help": "Prompts per optimizer step over all processes (global batch = prompts × generations)."})
    max_steps: int = field(default=100, metadata={"help": "Optimizer steps."})
    learning_rate: float = field(default=1e-6, metadata={"help": "Learning rate (DAPO uses 1e-6 for 7–32B models; tiny models need far more)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip range ε_low (DAPO clip-higher: 0.2)."})
    epsilon_high: float = field(default=0.28, metadata={"help": "Upper clip range ε_high (DAPO clip-higher: 0.28)."})
    loss_type: str = field(default="dapo", metadata={"help": "TRL loss type; 'dapo' is the token-level loss of DAPO."})
    beta: float = field(default=0.0, metadata={"help": "KL coefficient; DAPO drops the KL term (0 ⇒ no reference model)."})
    temperature: float = field(default=1.0, metadata={"help": "Rollout sampling temperature."})
    max_completion_length: int = field(default=1024, metadata={"help": "Longest continuation in tokens (after the prefill)."})
    dynamic_sampling: bool = field(default=False, metadata={"help": "DAPO dynamic sampling: drop prompt groups whose rewards are all 0 or all ≥ tau."})
    dynamic_sampling_tau: float = field(default=1.0, metadata={"help": "Threshold τ of dynamic sampling (1.0 for 0/1 rewards)."})
    format_penalty: float = field(default=0.0, metadata={"help": "Reward of a completion with no closing think tag or an empty answer."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling and data order."})
    save_steps: int = field(default=50, metadata={"help": "Checkpoint every N steps (resumable)."})
    logging_steps: int = field(default=10, metadata={"help": "Log every N steps."})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave torch's default)."})
    gradient_checkpointing: bool = field(default=True, metadata={"help": "Recompute activations in the backward pass (TRL's default; saves memory on real models, costs ~40% extra compute — turn off for tiny models)."})
    micro_batch_size: int = field(default=0, metadata={"help": "Completions per forward/backward pass on each process (gradient accumulation over the step's prompts × generations; the token-level loss is normalised over the whole step). 0: the process's whole share of the step in one pass. With several processes, prompts_per_step × num_generations is the global batch, split across them; a multiple of num_generations keeps each prompt's group on one process."})
    loss_length_buckets: int = field(default=2, metadata={"help": "Run each micro-batch's loss pass in this many chunks of rows with similar lengths, each trimmed of its own padding (TRL pads every row to the longest prompt of the generation batch, and prefilled prompts are the longest). Same loss and gradient up to float rounding; 1 turns it off. Single-process runs only (with several processes each forward must pair with one backward)."})
    lora_r: int = field(default=0, metadata={"help": "LoRA rank (peft); 0 trains every weight. The final model is saved merged."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling α."})
    unclosed: str = field(default="invalid", metadata={"help": "A completion that never closes the think block: 'invalid' (format penalty) or 'continuation' (judged as the answer; models without thinking tags such as SmolLM2)."})
    think_system_prompt: bool = field(default=False, metadata={"help": "Put recap.chat.THINK_SYSTEM_PROMPT in a system message of prompts that have none."})
    dtype: str = field(default="float32", metadata={"help": "Policy weights dtype (float32; GGUF weights are dequantised to it)."})
    vllm: str = field(default="auto", metadata={"help": "Rollouts with vLLM (TRL use_vllm): auto (colocate when vLLM and a GPU are present, else off), off, colocate (vLLM shares the training GPUs), server (a `trl vllm-serve` process; see docs/scaling.md)."})
    vllm_server_host: str = field(default="127.0.0.1", metadata={"help": "Host of the `trl vllm-serve` rollout server (vllm: server)."})
    vllm_server_port: int = field(default=8000, metadata={"help": "Port of the rollout server (vllm: server)."})
    vllm_gpu_memory_utilization: float = field(default=0.3, metadata={"help": "GPU memory fraction vLLM may take in colocate mode (the rest is for training)."})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed-precision training (GPUs; the paper trained in bf16 with DeepSpeed ZeRO-3). Must match the accelerate config's mixed_precision."})
    use_cpu: bool = field(default=False, metadata={"help": "Force CPU even when an accelerator exists."})
    prefill_sources: PrefillSourceConfig = field(default_factory=PrefillSourceConfig, metadata={"help": "Where the prefills of the mixture's prefill slots come from at each step: static (the mixture's counter-aligned reasoning, RECAP), on_policy (the policy's own unsafe reasoning cut at its first unsafe step, Self-ReSET style) or both by weight."})
    prefill_length: LengthSchedule | None = field(default=None, metadata={"help": "Length schedule of static prefills (fixed, uniform over a set, or a short→long curriculum), applied to each slot's counter_reasoning at every step; null keeps the mixture's prefills as written."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Run the model repository's own Python code (off: only transformers' built-in architectures)."})
    allow_pickle_weights: bool = field(default=False, metadata={"help": "Accept pytorch_model.bin pickle weights (off: safetensors/GGUF only; unpickling can run code)."})
    resume: str = field(default="auto", metadata={"help": "What to do with checkpoints already in output_dir: auto (continue from the last complete one, start fresh if none), must (continue; an error if there is none — `recap train --resume`), never (an error if there is one — `recap train` without --resume, so two runs never mix)."})
    report_to: str = field(default="none", metadata={"help": "Trackers (wandb, tensorboard…). Off by default: completions on harmful prompts must not leave the machine unless you choose so."})


def rl_rows(examples: list[Example], tokenizer, think_system_prompt: bool = False) -> list[dict]:
    """Dataset rows for TRL: the rendered prompt text (prefill included) plus routing columns, and what a
    ``PrefillPlanner`` needs to choose another prefill at each step (the conversation, the counter-aligned
    reasoning and the mixture's own prefill)."""
    rows = []
    for e in examples:
        messages = with_think_system(e.messages()) if think_system_prompt else e.messages()
        rows.append({"prompt": render_prompt(tokenizer, messages, e.prefill), "kind": e.kind,
                     "reference": e.reference, "id": e.id, "prefilled": e.prefill is not None,
                     "conversation": json.dumps(messages, ensure_ascii=False),
                     "counter_reasoning": e.counter_reasoning or "", "static_prefill": e.prefill or ""})
    return rows


def dynamic_prefills(cfg: TrainConfig) -> bool:
    """Whether prefills are chosen at each step (on-policy source or a length schedule) rather than fixed
    by the mixture file."""
    return cfg.prefill_sources.weights.get("on_policy", 0.0) > 0 or cfg.prefill_length is not None


class RecapTrainer(GRPOTrainer):
    """``GRPOTrainer`` plus DAPO's dynamic-sampling filter.

    With ``dynamic_sampling`` on, every prompt group whose rewards are all 0 or all ≥ τ is dropped from
    the loss (its completion mask is zeroed, so it neither contributes gradient nor dilutes the
    token-level normaliser). Unlike DAPO we do not re-sample to refill the batch: the step trains on the
    surviving groups. ``dynamic_sampling/dropped_groups`` is logged every step.
    """

    def __init__(self, *args, dynamic_sampling: bool = False, dynamic_sampling_tau: float = 1.0,
                 loss_length_buckets: int = 1, planner: PrefillPlanner | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.dynamic_sampling = dynamic_sampling
        self.dynamic_sampling_tau = dynamic_sampling_tau
        self.loss_length_buckets = loss_length_buckets
        self.planner = planner
        self._last_rewards: torch.Tensor | None = None

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.planner is not None and self.args.should_save:  # the buffer resumes with the run
            from recap.files import write_text

            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            if folder.is_dir():
                write_text(folder / PLANNER_STATE, json.dumps(self.planner.state()))

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
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards_per_func  # gathered over processes, in global order
        return rewards_per_func

    def dropped_groups(self, rewards: torch.Tensor) -> torch.Tensor:
        """Boolean mask over prompt groups: all rewards 0, or all ≥ τ."""
        grouped = rewards.view(-1, self.num_generations)
        return (grouped == 0).all(dim=1) | (grouped >= self.dynamic_sampling_tau).all(dim=1)

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        if self.planner is not None and mode == "train":
            inputs = self.planner.prepare(inputs, self.state.global_step)
        out = super()._generate_and_score_completions(inputs)
        if self.planner is not None and mode == "train":
            ids, mask = out["completion_ids"], out["completion_mask"]
            texts = [self.processing_class.decode(i[m.bool()], skip_special_tokens=True) for i, m in zip(ids, mask)]
            # TRL repeats each prompt num_generations times in ``inputs``; one completion per input row.
            added = self.planner.harvest(inputs, texts, self.state.global_step)  # 0 on steps without a scan
            stats = self.planner.buffer.stats()
            metrics = self._metrics[mode]
            metrics["onpolicy/buffer_size"].append(stats["size"])
            metrics["onpolicy/added"].append(added)
            if stats["cut_fraction_mean"] is not None:
                metrics["onpolicy/cut_fraction_mean"].append(stats["cut_fraction_mean"])
            slots = [x for x in inputs if x.get("prefilled")]
            if slots:
                metrics["prefill/on_policy_share"].append(
                    sum(x.get("prefill_source") == "on_policy" for x in slots) / len(slots))
        if mode != "train" or not self.dynamic_sampling or self._last_rewards is None:
            return out
        weights = self.reward_weights.to(self._last_rewards.device)
        total = (self._last_rewards * weights.unsqueeze(0)).nansum(dim=1)
        drop = self.dropped_groups(total).repeat_interleave(self.num_generations)
        n = len(out["completion_ids"])
        start = self.accelerator.process_index * n
        local_drop = drop[start: start + n].to(out["completion_mask"].device)
        out["completion_mask"] = out["completion_mask"] * (~local_drop).unsqueeze(1).to(out["completion_mask"].dtype)
        local_tokens = out["completion_mask"].sum()
        out["num_items_in_batch"] = self.accelerator.gather(local_tokens).sum()
        self._metrics[mode]["dynamic_sampling/dropped_groups"].append(
            int(self.dropped_groups(total).sum().item()))
        self._metrics[mode]["dynamic_sampling/kept_groups"].append(
            int((~self.dropped_groups(total)).sum().item()))
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


def grpo_config(cfg: TrainConfig) -> GRPOConfig:
    total = cfg.prompts_per_step * cfg.num_generations
    mode = vllm_mode(cfg)
    world = world_size()
    micro = cfg.micro_batch_size or total // world
    if total % (micro * world):
        raise ValueError(f"micro_batch_size {micro} × {world} process(es) must divide prompts_per_step × "
                         f"num_generations = {total}")
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
    from recap.rewards.judges import load_judges
    from recap.rewards.router import RewardRouter

    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if examples is None:
        examples = read_examples(cfg.train_file)
    if model is None or tokenizer is None:
        loaded, loaded_tok = load_model(cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                                        allow_pickle=cfg.allow_pickle_weights)
        model, tokenizer = model or loaded, tokenizer or loaded_tok
    prepare_tokenizer(model, tokenizer)
    if cfg.lora_r:
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
    rows = rl_rows(examples, tokenizer, cfg.think_system_prompt)
    check_context(tokenizer, model, [(f"{cfg.train_file or 'examples'}: example {r['id']!r}", r["prompt"]) for r in rows],
                  cfg.max_completion_length, "max_completion_length")
    judges = load_judges(cfg.judge, cfg.judges).judges
    reward = RewardRouter(judges, format_penalty=cfg.format_penalty, unclosed=cfg.unclosed)
    planner = None
    if dynamic_prefills(cfg):
        planner = PrefillPlanner(cfg.prefill_sources, lambda messages, text: render_prompt(tokenizer, messages, text),
                                 step_judge_for(cfg.prefill_sources.judge, judges), schedule=cfg.prefill_length,
                                 max_steps=cfg.max_steps, seed=cfg.seed)
    return RecapTrainer(
        model=model, processing_class=tokenizer, reward_funcs=[reward], args=grpo_config(cfg),
        train_dataset=Dataset.from_list(rows),
        dynamic_sampling=cfg.dynamic_sampling, dynamic_sampling_tau=cfg.dynamic_sampling_tau,
        loss_length_buckets=cfg.loss_length_buckets, planner=planner,
    )


RESUME_MODES = ("auto", "must", "never")
PLANNER_STATE = "prefix_buffer.json"  # the on-policy buffer, saved with each checkpoint
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Fields that may change between a run and its resumption (they do not change what is trained).
_RESUMABLE_CHANGES = {"resume", "max_steps", "save_steps", "logging_steps", "num_threads", "report_to",
                      "vllm", "vllm_server_host", "vllm_server_port", "vllm_gpu_memory_utilization"}


def checkpoint_complete(folder: Path) -> bool:
    """A checkpoint is complete when its ``trainer_state.json`` — the last file the Trainer writes, after
    the weights, optimizer, scheduler and RNG states — is whole and names the checkpoint's own step."""
    m = _CHECKPOINT.match(folder.name)
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    weights = any((folder / f).is_file() for f in ("model.safetensors", "model.safetensors.index.json",
                                                    "adapter_model.safetensors"))
    return bool(m) and state.get("global_step") == int(m.group(1)) and weights and (folder / "optimizer.pt").is_file()


def checkpoints(out: Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``out``, oldest first."""
    if not out.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out.iterdir() for m in [_CHECKPOINT.match(p.name)] if m and p.is_dir()]
    return [p for _, p in sorted(found)]


def last_checkpoint(out: Path, log: Callable[[str], None] = print, set_aside: bool = True) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``out``. With ``set_aside``, newer incomplete ones (a kill
    during a save) are renamed ``incomplete-checkpoint-N`` — kept for inspection, never loaded — and
    reported."""
    for folder in reversed(checkpoints(out)):
        if checkpoint_complete(folder):
            return folder
        if not set_aside:
            continue
        aside = folder.with_name(f"incomplete-{folder.name}")
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)
        log(f"{folder}: incomplete (the run was killed while saving it); moved to {aside.name}, "
            "resuming from the previous checkpoint")
    return None


def config_dump(cfg: TrainConfig) -> dict:
    """The run's ``train_config.json``: the config as JSON, secrets redacted (``recap.security``)."""
    from recap.security import redacted

    return json.loads(json.dumps(redacted(asdict(cfg))))


def _check_same_run(cfg: TrainConfig, out: Path) -> None:
    """A resumed run must train what the first run trained: compare its ``train_config.json`` with the
    same dump of ``cfg`` (redacted alike, so a secret in a field is no difference)."""
    saved_file = out / "train_config.json"
    if not saved_file.is_file():
        return
    saved, now = json.loads(saved_file.read_text(encoding="utf-8")), config_dump(cfg)
    for key in sorted(set(saved) | set(now)):
        if key not in _RESUMABLE_CHANGES and saved.get(key) != now.get(key):
            raise ValueError(f"{saved_file}: field '{key}' was {saved.get(key)!r} in the run being resumed, now "
                             f"{now.get(key)!r}; use another output_dir for a different run")


def train(cfg: TrainConfig, examples: list[Example] | None = None, log: Callable[[str], None] = print) -> Path:
    """Run RECAP (or vanilla DAPO, if the mixture has no prefills). Checkpoints in ``output_dir`` are
    handled as ``cfg.resume`` says; resuming restores the weights, optimizer, scheduler, RNG states and
    the data position of the last complete checkpoint. Returns the folder of the final model, which is
    written whole or not at all."""
    from recap.files import atomic_dir, write_text

    if cfg.resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {', '.join(RESUME_MODES)}, got {cfg.resume!r}")
    out = Path(cfg.output_dir)
    final = out / "final"
    if (final / "config.json").exists():
        if cfg.resume == "never":
            raise ValueError(f"{out} already holds a finished run ({final}); choose another output_dir")
        return final
    if cfg.resume == "never" and checkpoints(out):
        last = last_checkpoint(out, set_aside=False)
        raise ValueError(f"{out} holds checkpoints of an earlier run (last complete: "
                         f"{last.name if last else 'none'}); pass --resume to continue it, or choose another output_dir")
    if cfg.resume == "must" and last_checkpoint(out, set_aside=False) is None:
        raise ValueError(f"{out}: no complete checkpoint to resume from; run without --resume to start")
    accelerator_main = int(os.environ.get("RANK", "0")) == 0
    ckpt = last_checkpoint(out, log) if accelerator_main else None
    if world_size() > 1:  # every rank resumes from the checkpoint rank 0 chose
        ckpt = _broadcast_checkpoint(ckpt)
    if ckpt is not None:
        _check_same_run(cfg, out)
        log(f"resuming from {ckpt}")
    elif accelerator_main:
        write_text(out / "train_config.json", json.dumps(config_dump(cfg), indent=1))
    if cfg.report_to not in ("none", ""):
        log(f"reporting scalar metrics to {cfg.report_to}; completions and prompts are not sent (log_completions off)")
    trainer = build_trainer(cfg, examples)
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
            write_text(out / "prefix_buffer_stats.json", json.dumps(
                {**trainer.planner.stats(), "history": trainer.planner.history}, indent=1))
        with atomic_dir(final) as tmp:  # last: its config.json marks the run as finished
            model.save_pretrained(str(tmp), safe_serialization=True)
            trainer.processing_class.save_pretrained(str(tmp))
    accelerator.wait_for_everyone()
    return final


def _broadcast_checkpoint(ckpt: Path | None) -> Path | None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # initialises the process group from the launcher's environment
    box = [str(ckpt) if ckpt is not None else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0]) if box[0] is not None else None
