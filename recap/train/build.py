"""From a ``TrainConfig`` to a ready ``RecapTrainer``: the dataset rows TRL reads, the ``GRPOConfig``
mapping (batch split over processes, vLLM mode), the judges and planners, and the length checks."""

from __future__ import annotations

import json

import torch
from trl import GRPOConfig

from recap.data.examples import Example, read_examples
from recap.data.onpolicy import step_judge_for
from recap.data.prefill_sources import PrefillPlanner
from recap.data.selfreset import SelfResetPlanner, cutter_for
from recap.inference.chat import render_prompt, with_think_system
from recap.train.config import (
    PAPER_TAU,
    TrainConfig,
    check_train_config,
    common_trainer_args,
    dynamic_prefills,
    with_epochs,
)
from recap.train.distributed import world_size
from recap.train.trainer import RecapTrainer, completion_budget

VLLM_MODES = ("auto", "off", "colocate", "server")


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


def vllm_mode(cfg: TrainConfig) -> str | None:
    """The TRL ``vllm_mode`` the run uses, or None for transformers rollouts."""
    if cfg.vllm not in VLLM_MODES:
        raise ValueError(f"vllm must be one of {', '.join(VLLM_MODES)}, got {cfg.vllm!r}")
    if cfg.vllm == "off" or (cfg.vllm == "auto" and (cfg.use_cpu or not _vllm_usable())):
        return None
    return "colocate" if cfg.vllm == "auto" else cfg.vllm


def _vllm_usable() -> bool:
    from recap.inference.engines import vllm_usable

    return vllm_usable()


def step_limit(cfg: TrainConfig) -> int:
    """The optimizer steps TRL may run: ``max_steps``, or with Self-ReSET's re-rolls adding steps the limit of
    ``SelfResetConfig.step_limit`` (each process re-rolls from its own queue into its share of a round)."""
    if cfg.self_reset is None:
        return cfg.max_steps
    share = cfg.prompts_per_step * cfg.updates_per_generation // world_size()
    return cfg.self_reset.step_limit(cfg.max_steps, share)


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
    accumulation = total // (micro * world)
    return GRPOConfig(
        **common_trainer_args(cfg),
        loss_type=cfg.loss_type,
        epsilon=cfg.epsilon,
        epsilon_high=cfg.epsilon_high,
        beta=cfg.beta,
        num_generations=cfg.num_generations,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=accumulation,
        steps_per_generation=accumulation * cfg.updates_per_generation,  # TRL counts micro-batches
        num_iterations=cfg.num_iterations,
        max_steps=step_limit(cfg),
        warmup_steps=0,
        weight_decay=cfg.weight_decay,
        adam_beta2=cfg.adam_beta2,
        temperature=cfg.temperature,
        max_completion_length=cfg.max_completion_length,
        mask_truncated_completions=cfg.mask_truncated_completions,
        reward_weights=[1.0, cfg.overlong_penalty] if cfg.overlong_buffer else None,
        log_completions=False,
        use_vllm=mode is not None,
        vllm_mode=mode or "colocate",
        vllm_server_host=cfg.vllm_server_host,
        vllm_server_port=cfg.vllm_server_port,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
    )


def build_trainer(cfg: TrainConfig, examples: list[Example] | None = None, model=None, tokenizer=None) -> RecapTrainer:
    from datasets import Dataset

    from recap.inference.models import apply_lora, check_context, load_model, prepare_tokenizer
    from recap.rewards.factory import load_judges
    from recap.rewards.reward import AnswerReward, SoftOverlongPunishment

    check_train_config(cfg)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    if examples is None:
        examples = read_examples(cfg.train_file)
    cfg = with_epochs(cfg, len(examples))
    if model is None or tokenizer is None:
        loaded, loaded_tok = load_model(
            cfg.model, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle_weights
        )
        model, tokenizer = model or loaded, tokenizer or loaded_tok
    prepare_tokenizer(model, tokenizer)
    if cfg.lora_r:
        from transformers import set_seed

        set_seed(cfg.seed)  # the adapters' initial weights: the run's, whatever this process drew before
        model = apply_lora(model, r=cfg.lora_r, alpha=cfg.lora_alpha)
    rows = rl_rows(examples, tokenizer, cfg.think_system_prompt)
    labelled = [(f"{cfg.train_file or 'examples'}: example {r['id']!r}", r["prompt"]) for r in rows]
    if cfg.max_total_length:
        check_budgets(tokenizer, model, labelled, cfg)
    else:
        check_context(tokenizer, model, labelled, cfg.max_completion_length, "max_completion_length")
    judges = load_judges(cfg.judge, cfg.judges).judges
    reward_funcs = [AnswerReward(judges, format_penalty=cfg.format_penalty, unclosed=cfg.unclosed)]
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
            fresh_until=cfg.max_steps if cfg.self_reset.reroll_steps == "add" else None,
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
        dynamic_sampling_rule=cfg.dynamic_sampling_rule,
        dynamic_sampling_tau=PAPER_TAU if cfg.dynamic_sampling_tau is None else cfg.dynamic_sampling_tau,
        max_total_length=cfg.max_total_length,
        loss_length_buckets=cfg.loss_length_buckets,
        rollout_decoder=cfg.rollout_decoder,
        shared_prefix=cfg.shared_prefix,
        planner=planner,
        selfreset=selfreset,
    )


def check_budgets(tokenizer, model, labelled: list[tuple[str, str]], cfg: TrainConfig) -> None:
    """With a total length budget, every ``(label, prompt)`` must leave the rollout something to write,
    and prompt + budget must fit the model's context."""
    from recap.inference.models import context_length, min_tokens

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
