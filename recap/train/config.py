"""The RL training config (``TrainConfig``, every field documented, paper defaults), the checks of its
settings that the trainer cannot run, and the trainer arguments RL and SFT share (``common_trainer_args``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, get_args

from recap.data.prefill_sources import PrefillSourceConfig
from recap.data.schedules import LengthSchedule
from recap.data.selfreset import SelfResetConfig
from recap.train.distributed import world_size
from recap.util.config import check_ranges

ROLLOUT_DECODERS = ("continuous", "hf")  # TrainConfig.rollout_decoder
SharedPrefixMode = Literal["auto", "on", "off"]  # TrainConfig.shared_prefix (YAML's bare on / off read as such)
SHARED_PREFIX_MODES = get_args(SharedPrefixMode)
DynamicSamplingRule = Literal["zero_variance", "paper"]  # TrainConfig.dynamic_sampling_rule
DYNAMIC_SAMPLING_RULES = get_args(DynamicSamplingRule)
PAPER_TAU = 0.9  # τ of the paper rule when dynamic_sampling_tau is unset (see its help)
CONSTANT_LR = ("constant", "constant_with_warmup")  # schedules that do not depend on the run's length


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
            "help": "Judge of every kind's reward: rules, rules:<family>, toy, classifier:<file>.npz (or a bare <file>.npz), guard:<yaml>, rubric:<yaml>, binary:<spec> (see recap.rewards.factory.load_judge)."
        },
    )
    judges: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "help": "Per-kind judge overrides, e.g. {harmful: 'guard:configs/guard.yaml'}; kinds not named use `judge`."
        },
    )
    num_generations: int = field(
        default=16,
        metadata={"range": "[2, inf)", "help": "Rollouts per prompt (the group of GRPO/DAPO); the paper uses 16."},
    )
    prompts_per_step: int = field(
        default=8,
        metadata={
            "range": "[1, inf)",
            "help": "Prompts per optimizer step over all processes (global batch = prompts × generations).",
        },
    )
    max_steps: int = field(
        default=100,
        metadata={
            "range": "[1, inf)",
            "help": "Optimizer steps (with Self-ReSET's self_reset.reroll_steps: add, the steps of fresh prompts; its re-rolls add steps to them). Replaced by epochs when that is set.",
        },
    )
    epochs: float | None = field(
        default=None,
        metadata={
            "range": "(0, inf)",
            "help": "Passes over the training prompts; when set, max_steps = ⌈epochs × prompts / prompts_per_step⌉ (Self-ReSET's reference counts its run so: --num-epoch 4). Empty: max_steps as given.",
        },
    )
    learning_rate: float = field(
        default=1e-6,
        metadata={
            "range": "(0, inf)",
            "help": "Learning rate (DAPO uses 1e-6 for 7–32B models; tiny models need far more).",
        },
    )
    lr_scheduler_type: str = field(default="constant", metadata={"help": "transformers scheduler name."})
    weight_decay: float = field(
        default=0.0,
        metadata={
            "range": "[0, inf)",
            "help": "AdamW weight decay (transformers' default 0; the Self-ReSET launch script: 0.1).",
        },
    )
    adam_beta2: float = field(
        default=0.999,
        metadata={
            "range": "[0, 1)",
            "help": "AdamW β2 (transformers' default 0.999; the Self-ReSET launch script: 0.98).",
        },
    )
    epsilon: float = field(
        default=0.2, metadata={"range": "[0, 1]", "help": "Lower clip range ε_low (DAPO clip-higher: 0.2)."}
    )
    epsilon_high: float = field(
        default=0.28, metadata={"range": "[0, inf)", "help": "Upper clip range ε_high (DAPO clip-higher: 0.28)."}
    )
    loss_type: str = field(default="dapo", metadata={"help": "TRL loss type; 'dapo' is the token-level loss of DAPO."})
    beta: float = field(
        default=0.0,
        metadata={"range": "[0, inf)", "help": "KL coefficient; DAPO drops the KL term (0 ⇒ no reference model)."},
    )
    temperature: float = field(default=1.0, metadata={"range": "(0, inf)", "help": "Rollout sampling temperature."})
    max_completion_length: int = field(
        default=1024,
        metadata={
            "range": "[1, inf)",
            "help": "Longest continuation in tokens (after the prefill); with max_total_length, the cap of every row's budget.",
        },
    )
    max_total_length: int = field(
        default=0,
        metadata={
            "range": "[0, inf)",
            "help": "Length budget of a rollout counting prompt + prefill + continuation (the paper's Lmax = 8,000 tokens, Appendix C): each row may write min(max_completion_length, max_total_length − its prompt tokens), so a prefilled row writes less and costs what an unprefilled one costs. 0: off (every row gets max_completion_length).",
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
            "range": "[0, inf)",
            "help": "DAPO soft overlong punishment (TRL get_soft_overlong_punishment), an extra reward: 0 up to the row's limit − this many tokens, then down linearly to −1 at the limit (DAPO: 4096 of 20480). 0: off.",
        },
    )
    overlong_penalty: float = field(
        default=1.0,
        metadata={
            "range": "[0, inf)",
            "help": "Weight of the soft overlong punishment in the reward (with overlong_buffer > 0).",
        },
    )
    dynamic_sampling: bool = field(
        default=True,
        metadata={
            "help": "DAPO dynamic sampling (on in the paper): drop the prompt groups dynamic_sampling_rule names and generate more groups until the step has prompts_per_step groups it keeps."
        },
    )
    dynamic_sampling_rule: DynamicSamplingRule = field(
        default="zero_variance",
        metadata={
            "help": "Which groups dynamic sampling drops. zero_variance (DAPO as verl, NeMo RL and SkyRL implement it): every group whose rewards are all equal (max − min ≤ dynamic_sampling_tolerance: all 0, all 1, all −1 from the format penalty, all 0.4 from a continuous judge — no advantage, no gradient). paper (the RECAP paper's rule): every group whose rewards are all 0 or all > dynamic_sampling_tau, whatever their spread — with continuous guard rewards exact ties almost never happen, so zero_variance keeps saturated safety groups (e.g. P(safe) 0.95–0.99) that the paper drops; it keeps an all-0.5 group, which gives no gradient."
        },
    )
    dynamic_sampling_max_extra_rounds: int = field(
        default=9,
        metadata={
            "range": "[0, inf)",
            "help": "Extra generation rounds per step to refill dropped groups (each draws as many prompts as the step; verl's max_num_gen_batches − 1, 10 − 1 in its DAPO recipe). When they are spent the step trains on the groups with signal it has: the others are masked out of the loss and the token normaliser. 0: drop without refilling.",
        },
    )
    dynamic_sampling_tolerance: float = field(
        default=1e-6,
        metadata={
            "range": "[0, inf)",
            "help": "A group's rewards count as equal when max − min ≤ this, and a reward as 0 (paper rule) when abs(r) ≤ this. 0 is verl's exact test (std > 0); the default only adds float noise (e.g. 0.99999994 vs 1.0 from a judge's probability), far below any real difference.",
        },
    )
    dynamic_sampling_tau: float | None = field(
        default=None,
        metadata={
            "range": "[0, inf)",
            "help": "τ of dynamic_sampling_rule: paper: a group whose rewards are all > τ is dropped as solved. Only with that rule (an error otherwise); unset: 0.9, so an all-1 group (math-verify, the rubric) is dropped as DAPO drops it — any τ in [0, 1) gives DAPO's 0 < correct < G on 0/1 rewards — and so is a guard group whose P(safe) are all above 0.9.",
        },
    )
    format_penalty: float = field(
        default=0.0,
        metadata={
            "range": "(-inf, inf)",
            "help": "Reward of a completion with no closing think tag or an empty answer.",
        },
    )
    seed: int = field(default=0, metadata={"range": "[0, 4294967295]", "help": "Seed of sampling and data order."})
    save_steps: int = field(default=50, metadata={"range": "[1, inf)", "help": "Checkpoint every N steps (resumable)."})
    logging_steps: int = field(default=10, metadata={"range": "[1, inf)", "help": "Log every N steps."})
    num_threads: int = field(
        default=0, metadata={"range": "[0, inf)", "help": "torch CPU threads (0: leave torch's default)."}
    )
    gradient_checkpointing: bool = field(
        default=True,
        metadata={
            "help": "Recompute activations in the backward pass (TRL's default; saves memory on real models, costs ~40% extra compute — turn off for tiny models)."
        },
    )
    micro_batch_size: int = field(
        default=0,
        metadata={
            "range": "[0, inf)",
            "help": "Completions per forward/backward pass on each process (gradient accumulation over the step's prompts × generations; the token-level loss is normalised over the whole step). 0: the process's whole share of the step in one pass. With several processes, prompts_per_step × num_generations is the global batch, split across them; a multiple of num_generations keeps each prompt's group on one process.",
        },
    )
    loss_length_buckets: int = field(
        default=2,
        metadata={
            "range": "[1, inf)",
            "help": "Run each micro-batch's loss pass in this many chunks of rows with similar lengths, each trimmed of its own padding (TRL pads every row to the longest prompt of the generation batch, and prefilled prompts are the longest). Same loss and gradient up to float rounding; 1 turns it off. Single-process runs only (with several processes each forward must pair with one backward).",
        },
    )
    rollout_decoder: str = field(
        default="continuous",
        metadata={
            "help": "How transformers rollouts are decoded (vLLM rollouts are vLLM's): 'continuous' (recap's decode loop, recap.inference.generation: each group's prompt is read once and its KV cache copied to the group's rows, and a row leaves the batch at its EOS or its own max_total_length budget, so ended rows and prefilled rows with less budget left stop costing) or 'hf' (TRL's one generate call per step: every row reads its prompt and is computed until the longest row ends). Same sampling distribution (TRL's temperature and top-p; greedy rollouts are token for token TRL's), but the same seed draws different samples. Where the loop cannot decode (top_k, min_p, repetition penalty, several EOS tokens, generation_kwargs, vLLM) TRL's generate does, with one log line and the metric rollouts/fallback."
        },
    )
    shared_prefix: SharedPrefixMode = field(
        default="auto",
        metadata={
            "help": "Read each group's prompt (prefill included) once in the loss pass and in the old/reference log-probabilities (Prefix Grouper, Liu et al. 2025, arXiv 2506.05433; recap.train.shared_prefix): the prompt is encoded once with gradient and the group's completions attend to it, so log-probabilities and gradients are the unshared ones up to float rounding while RECAP's longer prompts cost little. 'auto' uses it whenever a batch holds groups and the model supports it (sdpa or eager attention through transformers' attention interface, no sliding windows, text only; the first shared forward is checked against TRL's), else falls back to TRL's pass with one log line; 'on' raises instead of falling back; 'off' is TRL's pass."
        },
    )
    num_iterations: int = field(
        default=1,
        metadata={
            "range": "[1, inf)",
            "help": "Optimizer passes over each rollout batch (μ of GRPO, TRL num_iterations). With one pass and one update per rollout batch the importance ratio π/π_old is exactly 1 and DAPO's clip (epsilon, epsilon_high) never acts; more passes or updates make the policy drift from the one that sampled, and the clip bounds the drift. The paper trains with verl's DAPO recipe, whose PPO epochs are 1.",
        },
    )
    updates_per_generation: int = field(
        default=1,
        metadata={
            "range": "[1, inf)",
            "help": "Optimizer steps each rollout batch is split into (PPO mini-batches; TRL steps_per_generation = this × gradient accumulation steps). A rollout batch holds updates_per_generation × prompts_per_step prompts and each optimizer step trains on prompts_per_step of them, so every update after the first is off-policy and clip-higher binds (DAPO: 512 prompts per rollout batch, mini-batches of 32, i.e. 16 updates). max_steps counts optimizer steps.",
        },
    )
    lora_r: int = field(
        default=0,
        metadata={
            "range": "[0, inf)",
            "help": "LoRA rank (peft); 0 trains every weight. The final model is saved merged.",
        },
    )
    lora_alpha: int = field(default=32, metadata={"range": "[1, inf)", "help": "LoRA scaling α."})
    unclosed: str = field(
        default="invalid",
        metadata={
            "help": "A completion that never closes the think block: 'invalid' (format penalty) or 'continuation' (judged as the answer; models without thinking tags such as SmolLM2)."
        },
    )
    think_system_prompt: bool = field(
        default=False,
        metadata={
            "help": "Put recap.inference.chat.THINK_SYSTEM_PROMPT in a system message of prompts that have none."
        },
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
    vllm_server_port: int = field(
        default=8000, metadata={"range": "[1, 65535]", "help": "Port of the rollout server (vllm: server)."}
    )
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "range": "(0, 1]",
            "help": "GPU memory fraction vLLM may take in colocate mode (the rest is for training).",
        },
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


def dynamic_prefills(cfg: TrainConfig) -> bool:
    """Whether prefills are chosen at each step (on-policy source or a length schedule) rather than fixed
    by the mixture file."""
    return cfg.prefill_sources.weights.get("on_policy", 0.0) > 0 or cfg.prefill_length is not None


def with_epochs(cfg: TrainConfig, prompts: int) -> TrainConfig:
    """``cfg`` with ``max_steps`` = ⌈epochs × prompts / prompts_per_step⌉ when ``epochs`` is set (``prompts``:
    the training set's size), else ``cfg`` itself."""
    if cfg.epochs is None:
        return cfg
    return replace(cfg, max_steps=max(1, math.ceil(cfg.epochs * prompts / cfg.prompts_per_step)))


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ``ValueError`` naming the field for settings the trainer cannot run."""
    if cfg.dynamic_sampling_rule not in DYNAMIC_SAMPLING_RULES:
        raise ValueError(
            f"dynamic_sampling_rule must be one of {', '.join(DYNAMIC_SAMPLING_RULES)}, got {cfg.dynamic_sampling_rule!r}"
        )
    if cfg.dynamic_sampling_tau is not None and cfg.dynamic_sampling_rule != "paper":
        raise ValueError(
            f"dynamic_sampling_tau is the τ of dynamic_sampling_rule: paper (drop groups whose rewards are all 0 "
            f"or all > τ); the rule is {cfg.dynamic_sampling_rule!r}, which drops every group with zero reward "
            "variance and reads no τ: set dynamic_sampling_rule: paper to keep the τ rule (what configs that "
            "set dynamic_sampling_tau before the rule choice meant), or delete dynamic_sampling_tau"
        )
    check_ranges(cfg, "TrainConfig")  # what load_config checks, for a config built in Python
    for name in ("dynamic_sampling_max_extra_rounds", "max_total_length", "overlong_buffer"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"{name} must be ≥ 0, got {getattr(cfg, name)}")
    if cfg.rollout_decoder not in ROLLOUT_DECODERS:
        raise ValueError(f"rollout_decoder must be one of {', '.join(ROLLOUT_DECODERS)}, got {cfg.rollout_decoder!r}")
    if cfg.shared_prefix not in SHARED_PREFIX_MODES:
        raise ValueError(f"shared_prefix must be one of {', '.join(SHARED_PREFIX_MODES)}, got {cfg.shared_prefix!r}")
    for name in ("num_iterations", "updates_per_generation"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"{name} must be ≥ 1, got {getattr(cfg, name)}")
    if cfg.dynamic_sampling_tolerance < 0:
        raise ValueError(f"dynamic_sampling_tolerance must be ≥ 0, got {cfg.dynamic_sampling_tolerance}")
    if cfg.self_reset is not None and cfg.self_reset.reroll_steps == "add" and cfg.lr_scheduler_type not in CONSTANT_LR:
        raise ValueError(
            f"self_reset.reroll_steps: add makes the run's length known only at its end (re-rolls add steps), "
            f"so the learning rate cannot follow lr_scheduler_type {cfg.lr_scheduler_type!r} over max_steps: use "
            "lr_scheduler_type: constant (the Self-ReSET reference's --lr-decay-style constant), or "
            "self_reset.reroll_steps: displace for a fixed number of steps"
        )
    world = world_size()
    share = cfg.prompts_per_step * cfg.num_generations / world
    if cfg.dynamic_sampling and world > 1 and share % cfg.num_generations:
        raise ValueError(
            f"dynamic_sampling with {world} processes: each process's share of the step "
            f"(prompts_per_step × num_generations / {world} = {share:g} completions) must be whole "
            f"groups of num_generations = {cfg.num_generations}, since each process refills its own "
            "groups; make prompts_per_step a multiple of the number of processes"
        )


def _checkpointing_field() -> str:
    """The TrainingArguments field of ``gradient_checkpointing``: later transformers 5.x releases renamed it
    ``activation_checkpointing`` and warn at every run that sets the old name; earlier ones know only the old."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def common_trainer_args(cfg) -> dict:
    """The ``transformers.TrainingArguments`` both of our TRL configs (``GRPOConfig`` for RL, ``SFTConfig`` for
    SFT) set the same way, from the fields ``TrainConfig`` and ``SFTTrainConfig`` share: where and how often to
    save (the last two checkpoints kept, which resume needs) and log, seeds, device and precision, and no
    progress bars or dataloader workers (our own progress lines; rows are in memory)."""
    return {
        "output_dir": cfg.output_dir,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.lr_scheduler_type,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "logging_steps": cfg.logging_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": 2,
        "report_to": cfg.report_to,
        "use_cpu": cfg.use_cpu,
        "bf16": cfg.bf16,
        _checkpointing_field(): cfg.gradient_checkpointing,
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
    }
