"""``RecapTrainer``: TRL's ``GRPOTrainer`` plus DAPO's dynamic sampling, the per-row total length budget,
the per-step prefills of the prefill planner and Self-ReSET, and groups that read their prompt once (the
shared-prefix loss pass of ``recap.train.shared_prefix`` and rollouts with recap's decode loop).

``RecapTrainer`` overrides private methods of TRL's ``GRPOTrainer``; they are listed, with the parameters
they are called with, in ``TRL_PRIVATE_API``, and ``trl_private_api_changes`` (checked when a trainer is
built, and by a test) names any that the installed TRL no longer has as written."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import math
import zlib
from pathlib import Path

import torch
from transformers import StoppingCriteria, TrainerCallback
from trl import GRPOTrainer
from trl.trainer.grpo_trainer import RepeatSampler
from trl.trainer.utils import split_tensor_dict

from recap.data.prefill_sources import PrefillPlanner
from recap.data.selfreset import SelfResetPlanner
import recap.train.shared_prefix as sp
from recap.train.config import DYNAMIC_SAMPLING_RULES, PAPER_TAU, SHARED_PREFIX_MODES

log = logging.getLogger(__name__)

PLANNER_STATE = "prefix_buffer.json"  # the on-policy buffer, saved with each checkpoint
SELFRESET_STATE = "selfreset_queue.json"  # the Self-ReSET re-roll queue, saved with each checkpoint


def process_state_file(name: str, index: int) -> str:
    """The checkpoint file of process ``index``'s ``name`` state (``PLANNER_STATE``, ``SELFRESET_STATE``):
    each process's buffer and queue hold what its own groups found. Process 0 keeps ``name`` (a
    single-process checkpoint is unchanged); process r writes ``<stem>.rank<r>.json``."""
    if index == 0:
        return name
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.rank{index}.{suffix}"


def process_state_files(name: str, processes: int) -> tuple[str, ...]:
    """Every process's file of ``name`` in a checkpoint of a run of ``processes`` processes."""
    return tuple(process_state_file(name, i) for i in range(processes))


def saved_processes(path: Path) -> int:
    """The number of processes of the run that saved process 0's state file ``path`` (1 for a checkpoint
    written before the number was recorded, when only one process's state was saved)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); the checkpoint is torn") from None
    return int(state.get("processes", 1)) if isinstance(state, dict) else 1


#: The private ``GRPOTrainer`` methods ``RecapTrainer`` overrides or calls, with the parameters it passes (TRL
#: 1.16.0). A TRL release that renames or drops one would make the override dead code or a crash deep in a step.
TRL_PRIVATE_API = {
    "_get_train_sampler": ("dataset",),
    "_save_checkpoint": ("model", "trial"),
    "_prepare_inputs": ("generation_batch",),
    "_generate_and_score_completions": ("inputs",),
    "_generate_single_turn": ("prompt_ids", "images", "multimodal_fields", "num_generations", "has_tool_images"),
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
    "_compute_loss": ("model", "inputs"),
    "_get_per_token_logps_and_entropies": (
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
        "compute_aux_loss",
    ),
}


def trl_private_api_changes(base: type = GRPOTrainer) -> list[str]:
    """What of ``TRL_PRIVATE_API`` the installed TRL's ``base`` lacks: one line per method that is gone or whose
    parameters no longer start with the listed ones, naming the TRL version. Empty when all is as expected."""
    import trl

    problems = []
    for name, expected in TRL_PRIVATE_API.items():
        method = getattr(base, name, None)
        if method is None:
            problems.append(f"trl {trl.__version__}: GRPOTrainer.{name} is gone")
            continue
        params = [p for p in inspect.signature(method).parameters if p != "self"]
        if tuple(params[: len(expected)]) != expected:
            problems.append(
                f"trl {trl.__version__}: GRPOTrainer.{name}({', '.join(params)}) — RecapTrainer overrides it as "
                f"{name}({', '.join(expected)})"
            )
    return problems


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


def dynamic_sampling_drops(
    rewards: torch.Tensor,
    group_size: int,
    rule: str = "zero_variance",
    tau: float = PAPER_TAU,
    tolerance: float = 0.0,
) -> dict[str, torch.Tensor]:
    """Why dynamic sampling drops each prompt group (``group_size`` consecutive total rewards each): one
    boolean mask over the groups per reason, named as logged (``dynamic_sampling/dropped_<reason>``); a group
    is dropped when any mask holds it, and counts under one reason only.

    * ``rule="zero_variance"`` (DAPO as verl, NeMo RL and SkyRL filter groups): ``zero_variance`` — the
      rewards are all equal (``zero_variance_groups``).
    * ``rule="paper"`` (the RECAP paper's rule): ``all_zero`` — every reward is 0 (|r| ≤ ``tolerance``);
      ``all_above_tau`` — every reward is > ``tau``. The spread does not matter: a saturated group such as
      P(safe) 0.95–0.99 is dropped though its advantages are not 0, and an all-0.5 group is kept though they
      are.

    NaN rewards (unscorable completions) are ignored; a group with none scored is dropped (zero variance, or
    all 0 under the paper rule)."""
    if rule == "zero_variance":
        return {"zero_variance": zero_variance_groups(rewards, group_size, tolerance)}
    if rule != "paper":
        raise ValueError(f"dynamic sampling rule must be one of {', '.join(DYNAMIC_SAMPLING_RULES)}, got {rule!r}")
    grouped = rewards.float().view(-1, group_size)
    nan = torch.isnan(grouped)
    all_zero = ((grouped.abs() <= tolerance) | nan).all(1)
    return {"all_zero": all_zero, "all_above_tau": ((grouped > tau) | nan).all(1) & ~all_zero}


def dropped_groups(
    rewards: torch.Tensor,
    group_size: int,
    rule: str = "zero_variance",
    tau: float = PAPER_TAU,
    tolerance: float = 0.0,
) -> torch.Tensor:
    """Boolean mask over prompt groups that dynamic sampling drops under ``rule`` (``dynamic_sampling_drops``,
    whose reasons this joins)."""
    masks = list(dynamic_sampling_drops(rewards, group_size, rule, tau, tolerance).values())
    return functools.reduce(torch.logical_or, masks)


class _RowBudget(StoppingCriteria):
    """A transformers stopping criterion that ends row i after ``budgets[i]`` new tokens."""

    def __init__(self, budgets: list[int]):
        self.budgets = torch.tensor(budgets)
        self.start: int | None = None

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        if self.start is None:  # called once each new token is appended: the first call sees prompt + 1
            self.start = input_ids.shape[1] - 1
        return (input_ids.shape[1] - self.start) >= self.budgets.to(input_ids.device)


class _StopWhenFreshDone(TrainerCallback):
    """Ends a Self-ReSET run whose re-rolls add steps (``reroll_steps: add``) after the step at which every
    fresh prompt of its planned steps has been trained (``RecapTrainer._stop_at``)."""

    def __init__(self, trainer: RecapTrainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        stop = self.trainer._stop_at
        if stop is not None and state.global_step >= stop:
            control.should_training_stop = True


class EpochSampler(RepeatSampler):
    """TRL's ``RepeatSampler`` whose shuffled order depends only on the seed and the pass over the prompts.

    TRL's sampler draws each pass's order from one generator that every pass advances, so a run resumed in
    its second or a later pass (a fresh sampler) drew the first pass's order again. Before each pass,
    transformers and accelerate call ``set_epoch(epoch)``: the generator is re-seeded and advanced past
    ``epoch`` orders, where an uninterrupted run's generator stands; an uninterrupted run's order is
    unchanged."""

    @classmethod
    def of(cls, sampler: RepeatSampler) -> EpochSampler:
        out = cls.__new__(cls)
        out.__dict__.update(sampler.__dict__)
        return out

    def set_epoch(self, epoch: int) -> None:
        if not self.shuffle or self.seed is None:
            return  # an unseeded order is not reproducible anyway
        self.generator.manual_seed(self.seed)
        for _ in range(epoch):
            torch.randperm(self.num_samples, generator=self.generator)


class RecapTrainer(GRPOTrainer):
    """``GRPOTrainer`` plus DAPO's dynamic sampling, the per-row total length budget, the prefill planner's
    per-step prefills, and groups that read their prompt once.

    Dynamic sampling (``dynamic_sampling``): after each generation round, the prompt groups whose total
    rewards the rule drops (``dynamic_sampling_rule``: ``zero_variance``, all equal; ``paper``, all 0 or all
    > τ; ``dynamic_sampling_drops``) are dropped; while the step has fewer than its ``prompts_per_step``
    groups it keeps ("with signal"), another round draws as many prompts again from the training
    set (seeded by seed, step, round and process; prompts already in the step are avoided while others
    remain) — at most ``max_extra_rounds`` rounds. The step then trains on the first groups with signal,
    up to its size; if refilling ran out, the missing groups are taken from dropped ones with their
    completion mask and advantages zeroed, so TRL gets the tensor shapes it expects while they give no
    gradient and no tokens to the DAPO normaliser. With several processes each fills its own share of
    groups, and all of them run a round while any is short. Logged per step:
    ``dynamic_sampling/effective_batch_size`` (groups with signal trained on),
    ``dynamic_sampling/dropped_groups`` (groups generated and dropped, all rounds), the same split by the
    rule's reasons (``dynamic_sampling/dropped_zero_variance``; with the paper rule
    ``dynamic_sampling/dropped_all_zero`` and ``dynamic_sampling/dropped_all_above_tau``, plus
    ``dynamic_sampling/kept_zero_variance``: kept groups whose rewards are all equal, which give no gradient)
    and ``dynamic_sampling/extra_rounds``.

    Length budget (``max_total_length``): each row may write ``completion_budget(prompt tokens)``; for
    transformers generation a stopping criterion ends each row at its budget (with ``rollout_decoder:
    continuous`` the row leaves recap's decode loop there instead, and stops costing), and every backend's
    completions are cut to it afterwards (vLLM takes per-request limits, but TRL sends one for the batch:
    cutting a sampled rollout at n tokens gives what sampling with a limit of n gives). The budget is
    passed to reward functions as the ``completion_budget`` column.

    Shared prefix (``shared_prefix``: auto, on, off): every forward TRL makes over completions — the loss
    pass and the old and reference log-probabilities — reads each distinct prompt of the batch once, and its
    rows' completions attend to it (``recap.train.shared_prefix``); the result is the unshared one up to
    float rounding. The rows of a group stay together when the rollout batch is shuffled and split into
    micro-batches. The first shared forward of a run is checked against TRL's unshared one; ``auto`` falls
    back to TRL's pass (one log line, ``shared_prefix/active`` 0) for a model it cannot run exactly or that
    fails the check, ``on`` raises. Logged: ``shared_prefix/read_fraction`` (tokens read over the tokens of
    the unshared rows).

    Self-ReSET (``selfreset``) re-rolls cuts of the policy's own unsafe reasoning before fresh prompts in each
    round; with ``fresh_until`` set on the planner (``reroll_steps: add``) the trainer's ``max_steps`` is
    only a limit, and the run stops after the step at which the planner has no fresh group of the planned
    steps left (every process agreeing); ``selfreset_stats.json`` gives ``trained_steps``.

    Rollouts (``rollout_decoder: continuous``) decode with recap's loop, which reads each group's prompt
    once and copies its KV cache to the group's rows. Where the loop cannot decode (vLLM, paged batching,
    samplers it lacks) TRL's ``generate`` does, with one log line per reason and ``rollouts/fallback`` 1.
    """

    def __init__(
        self,
        *args,
        dynamic_sampling: bool = False,
        max_extra_rounds: int = 9,
        dynamic_sampling_tolerance: float = 1e-6,
        dynamic_sampling_rule: str = "zero_variance",
        dynamic_sampling_tau: float = PAPER_TAU,
        max_total_length: int = 0,
        loss_length_buckets: int = 1,
        rollout_decoder: str = "hf",
        shared_prefix: str = "off",
        planner: PrefillPlanner | None = None,
        selfreset: SelfResetPlanner | None = None,
        **kwargs,
    ):
        changed = trl_private_api_changes()
        if changed:
            raise RuntimeError(
                "RecapTrainer relies on private GRPOTrainer methods that changed in the installed TRL; pin "
                "trl==1.16.0 (pyproject.toml) or update recap/train/trainer.py: " + "; ".join(changed)
            )
        if shared_prefix not in SHARED_PREFIX_MODES:
            raise ValueError(f"shared_prefix must be one of {', '.join(SHARED_PREFIX_MODES)}, got {shared_prefix!r}")
        if dynamic_sampling_rule not in DYNAMIC_SAMPLING_RULES:
            raise ValueError(
                f"dynamic_sampling_rule must be one of {', '.join(DYNAMIC_SAMPLING_RULES)}, got {dynamic_sampling_rule!r}"
            )
        super().__init__(*args, **kwargs)
        self.dynamic_sampling = dynamic_sampling
        self.max_extra_rounds = max_extra_rounds
        self.dynamic_sampling_tolerance = dynamic_sampling_tolerance
        self.dynamic_sampling_rule = dynamic_sampling_rule
        self.dynamic_sampling_tau = dynamic_sampling_tau
        if dynamic_sampling:
            log.info(
                "dynamic sampling: rule %s (drops groups whose rewards are %s), up to %d refill rounds a step",
                dynamic_sampling_rule,
                f"all 0 or all > τ = {dynamic_sampling_tau:g}" if dynamic_sampling_rule == "paper" else "all equal",
                max_extra_rounds,
            )
        self.max_total_length = max_total_length
        self.loss_length_buckets = loss_length_buckets
        self.rollout_decoder = rollout_decoder
        self.shared_prefix = shared_prefix
        self.planner = planner
        self.selfreset = selfreset
        self._last_rewards: torch.Tensor | None = None
        self._last_completions: list[str] = []
        self._last_verdicts: list | None = None
        self._trained_groups: set | None = None  # this step's trained (round, local group); None: every group
        self._row_budgets: list[int] | None = None
        self._dataset_ids: list | None = None
        self._step_rounds: list[tuple[list[dict], torch.Tensor, list[str], list | None]] = []
        self._decoded_tokens = 0  # tokens this process decoded in the current step (every round)
        self._fallbacks: set[str] = set()  # why rollouts went to TRL's generate (each logged once)
        self._shared = self._shared_prefix_usable()
        self._shared_checked = False  # the first shared forward is compared with TRL's
        self._stop_at: int | None = None  # Self-ReSET with re-rolls adding steps: the run's last step, once known
        if selfreset is not None and selfreset.fresh_until is not None:
            self.add_callback(_StopWhenFreshDone(self))
            log.info(
                "Self-ReSET: the run trains %d steps of fresh prompts; re-rolls add steps (at most %d in all)",
                selfreset.fresh_until,
                self.args.max_steps,
            )

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """TRL's training loop; with Self-ReSET the re-roll queue of the checkpoint resumed from is restored
        first, and ``output_dir/selfreset_stats.json`` is written at the end. The shared-prefix attention is
        taken off the model at the end (it is the model's own attention without a layout in any case)."""
        if isinstance(resume_from_checkpoint, str):
            for holder, name in ((self.planner, PLANNER_STATE), (self.selfreset, SELFRESET_STATE)):
                if holder is not None:
                    self._restore(Path(resume_from_checkpoint), name, holder)
        try:
            result = super().train(resume_from_checkpoint, *args, **kwargs)
        finally:
            for model in (self.model, self.ref_model):
                if model is not None:
                    sp.uninstall(self.accelerator.unwrap_model(model))
        if self.selfreset is not None:
            self._write_selfreset_stats()
        return result

    def _restore(self, checkpoint: Path, name: str, holder) -> None:
        """Give ``holder`` (the on-policy planner or the Self-ReSET planner) this process's saved ``name``
        state from ``checkpoint``. A checkpoint saved by another number of processes is refused on every
        process alike (process 0's file records the number): its buffers and queues belong to other shares
        of the data."""
        first = checkpoint / name
        if not first.is_file():
            return  # nothing saved (the run wrote no state of this kind)
        index, processes = self.accelerator.process_index, self.accelerator.num_processes
        saved = saved_processes(first)
        if saved != processes:
            raise ValueError(
                f"{first}: saved by a run of {saved} process(es); this one has {processes}: resume it with "
                f"{saved}, or start a new run in another output_dir"
            )
        path = checkpoint / process_state_file(name, index)
        if not path.is_file():
            raise ValueError(f"{path}: missing (the checkpoint is torn); resume from an earlier checkpoint")
        holder.load_state(json.loads(path.read_text(encoding="utf-8")))

    def _write_selfreset_stats(self) -> None:
        """``output_dir/selfreset_stats.json``: the counters of every process's planner combined (each
        process re-rolls its own groups), with each process's own under ``processes`` when there are
        several; a run stopped by the step limit with fresh groups still waiting says so."""
        from accelerate.utils import gather_object

        every = gather_object([{**self.selfreset.stats(), "history": self.selfreset.history}])
        if self.accelerator.is_main_process:
            from recap.util.files import write_text

            stats = {**SelfResetPlanner.combine(every), "trained_steps": self.state.global_step}
            if len(every) > 1:
                stats["processes"] = every
            if self.selfreset.fresh_until is not None and stats["pending_fresh_groups"]:
                log.warning(
                    "Self-ReSET: the step limit %d ended the run with %d fresh groups never trained "
                    "(self_reset.max_added_steps)",
                    self.args.max_steps,
                    stats["pending_fresh_groups"],
                )
            if len(every) == 1:
                stats["history"] = every[0]["history"]
            write_text(Path(self.args.output_dir) / "selfreset_stats.json", json.dumps(stats, indent=1))

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

    # ---------------------------------------------------------------------------------------------------
    # Overrides of GRPOTrainer's private methods (TRL_PRIVATE_API lists them; keep both in step).
    # ---------------------------------------------------------------------------------------------------

    def _get_train_sampler(self, dataset=None):
        """TRL's sampler, with a ``set_epoch`` that makes a resumed run's later passes draw the prompts in
        the uninterrupted run's order (``EpochSampler``)."""
        sampler = super()._get_train_sampler(dataset)
        return EpochSampler.of(sampler) if type(sampler) is RepeatSampler else sampler

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.planner is not None or self.selfreset is not None:
            from recap.util.files import write_text

            # Every process writes its own buffer and queue (as transformers writes each one's RNG state).
            folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            index, processes = self.accelerator.process_index, self.accelerator.num_processes
            for holder, name in ((self.planner, PLANNER_STATE), (self.selfreset, SELFRESET_STATE)):
                if holder is not None:  # the on-policy buffer and the re-roll queue resume with the run
                    state = {**holder.state(), "processes": processes}
                    write_text(folder / process_state_file(name, index), json.dumps(state))

    def _prepare_inputs(self, generation_batch):
        """TRL's buffering of a rollout batch into micro-batches, except that with the shared prefix on the
        batch is shuffled group by group (TRL shuffles rows), so a group's rows share their micro-batches."""
        if not (self._shared and self.model.training):
            return super()._prepare_inputs(generation_batch)
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score_completions(generation_batch)
            batch = _shuffle_groups(batch, sp.group_rows(batch["prompt_ids"], batch["prompt_mask"]))
            self._buffered_inputs = split_tensor_dict(batch, self.args.steps_per_generation)
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def _generate_and_score_completions(self, inputs):
        if not self.model.training:
            return super()._generate_and_score_completions(inputs)
        self._step_rounds, self._decoded_tokens, self._trained_groups = [], 0, None
        if not self.dynamic_sampling:
            batch, out, _, texts = self._round(inputs)
            self._planner_step([(batch, texts)])
        else:
            out = self._dynamic_sampling_step(inputs)
        self._signal_step()
        self._selfreset_step()
        self._check_fresh_done()
        decoded = self.accelerator.gather(torch.tensor(float(self._decoded_tokens), device=self.accelerator.device))
        self._metrics["train"]["cost/decoded_tokens"].append(decoded.sum().item())
        return out

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        budgets = [completion_budget(len(ids), self.max_completion_length, self.max_total_length) for ids in prompt_ids]
        self._row_budgets = budgets
        completion_ids = logprobs = None
        if self.rollout_decoder == "continuous":
            completion_ids, why = (
                (None, "multimodal prompts") if images else self._continuous_rollouts(prompt_ids, budgets)
            )
            if why is not None and why not in self._fallbacks:
                self._fallbacks.add(why)
                log.warning("rollouts: TRL's generate decodes instead of recap's loop (%s)", why)
            self._metrics["train" if self.model.training else "eval"]["rollouts/fallback"].append(
                float(why is not None)
            )
        if completion_ids is None:
            with self._row_stopping(budgets) if self.max_total_length else contextlib.nullcontext():
                completion_ids, logprobs = super()._generate_single_turn(
                    prompt_ids, images, multimodal_fields, num_generations, has_tool_images
                )
        self._decoded_tokens += sum(len(ids) for ids in completion_ids)  # what was decoded, before the cut
        if self.max_total_length:
            completion_ids = [list(ids[:b]) for ids, b in zip(completion_ids, budgets, strict=True)]
            if logprobs is not None:
                logprobs = [list(lp[:b]) for lp, b in zip(logprobs, budgets, strict=True)]
        return completion_ids, logprobs

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if self._row_budgets is not None and len(self._row_budgets) == len(inputs):
            for row, budget in zip(inputs, self._row_budgets):  # a column for reward functions
                row["completion_budget"] = budget
        self._last_completions = list(completions)  # local, what the reward functions read
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards_per_func  # gathered over processes, in global order
        reward = self.reward_funcs[0] if self.reward_funcs else None
        verdicts = getattr(reward, "last_verdicts", None)  # AnswerReward: the local rows' verdicts
        self._last_verdicts = list(verdicts) if verdicts is not None and len(verdicts) == len(inputs) else None
        return rewards_per_func

    def _compute_loss(self, model, inputs):
        if self._shared and _has_groups(inputs["prompt_ids"], inputs["prompt_mask"]):
            return super()._compute_loss(model, inputs)  # one shared-prefix forward (no padding to trim)
        chunks = self.length_buckets(inputs)
        if chunks is None:
            return super()._compute_loss(model, inputs)
        # The DAPO normaliser is the step's token count (num_items_in_batch), the same for every chunk,
        # so the chunks' losses add up to the micro-batch's loss.
        return sum(super(RecapTrainer, self)._compute_loss(model, chunk) for chunk in chunks)

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **model_inputs,
    ):
        """TRL's per-token log-probabilities (and entropies) of the completion columns, from one shared-prefix
        forward per chunk of groups when the shared prefix is on and the batch holds groups (text only: any
        further model input, e.g. images, takes TRL's pass)."""
        # With several processes the old/reference passes (in chunks of batch_size) stay TRL's: a rank's number
        # of shared forwards depends on its groups, and sharded engines need every rank to run the same forwards.
        usable = (
            self._shared
            and not compute_aux_loss
            and all(v is None for v in model_inputs.values())
            and (batch_size is None or self.accelerator.num_processes == 1)
        )
        packs = self._packs(input_ids, attention_mask, logits_to_keep, batch_size) if usable else None
        if usable and not self._shared_checked and self._on_every_process(packs is not None):
            self._check_shared_prefix(model, input_ids, attention_mask, logits_to_keep, batch_size, packs)
        if not packs or not self._shared:
            return super()._get_per_token_logps_and_entropies(
                model,
                input_ids,
                attention_mask,
                logits_to_keep,
                batch_size,
                compute_entropy,
                compute_aux_loss,
                **model_inputs,
            )
        logps, entropies = self._shared_forward(model, packs, compute_entropy)
        mode = "train" if self.model.training else "eval"
        unshared = attention_mask.sum().item()
        read = sum(p.input_ids.shape[1] for p in packs)
        self._metrics[mode]["shared_prefix/read_fraction"].append(read / max(1, unshared))
        return logps, entropies, None

    # ---------------------------------------------------------------------------------------------------
    # Shared prefix
    # ---------------------------------------------------------------------------------------------------

    def _shared_prefix_usable(self) -> bool:
        """Whether the loss pass shares prefixes: ``shared_prefix`` is not off and the model can run the split
        attention exactly (``auto`` logs why not; ``on`` raises). Routes the model's attention through it."""
        if self.shared_prefix == "off":
            return False
        models = [self.accelerator.unwrap_model(m) for m in (self.model, self.ref_model) if m is not None]
        why = next((w for w in map(sp.why_unsupported, models) if w is not None), None)
        if why is None and getattr(self, "aux_loss_enabled", False):
            why = "a mixture-of-experts load-balancing loss (it is computed over every token read)"
        if why is not None:
            if self.shared_prefix == "on":
                raise ValueError(f"shared_prefix: on cannot run this model exactly: {why}; set shared_prefix: off")
            log.warning("shared_prefix: TRL's unshared loss pass is used (%s)", why)
            self._metrics["train"]["shared_prefix/active"].append(0.0)
            return False
        for m in models:
            sp.install(m)
        return True

    def _packs(self, input_ids, attention_mask, logits_to_keep, batch_size) -> list[sp.Packed] | None:
        """The shared-prefix forwards of a batch (each at most ``batch_size`` rows, groups kept whole where
        they fit), or None when no prompt of the batch has two rows or no row has a completion token."""
        prompt_ids, prompt_mask = input_ids[:, :-logits_to_keep], attention_mask[:, :-logits_to_keep]
        if not _has_groups(prompt_ids, prompt_mask):
            return None
        groups = sp.group_rows(prompt_ids, prompt_mask)
        size = batch_size or input_ids.shape[0]
        chunks, current = [], []
        for group in groups:
            for start in range(0, len(group), size):
                part = group[start : start + size]
                if current and sum(map(len, current)) + len(part) > size:
                    chunks.append(current)
                    current = []
                current.append(part)
        chunks.append(current)
        completion_ids, completion_mask = input_ids[:, -logits_to_keep:], attention_mask[:, -logits_to_keep:]
        packs = [sp.pack(prompt_ids, prompt_mask, completion_ids, completion_mask, chunk) for chunk in chunks]
        return [p for p in packs if p is not None] or None

    def _shared_forward(self, model, packs: list[sp.Packed], compute_entropy: bool):
        """Per-token log-probabilities (and entropies) of the packed forwards, in TRL's (rows, completion width)
        layout; 0 where TRL's masked positions are 0."""
        sp.install(self.accelerator.unwrap_model(model))  # again after train() took it off
        logps = entropies = None
        for packed in packs:
            device = packed.input_ids.device
            with self.accelerator.autocast():
                out = model(
                    input_ids=packed.input_ids,
                    attention_mask=sp.placeholder_mask(device),
                    position_ids=packed.position_ids,
                    shift_labels=packed.shift_labels,
                    fused_lm_head=True,
                    **{sp.LAYOUT_KWARG: packed.layout},
                )
            if not packed.layout.calls:  # the check of the first forward catches a model that bypasses it partly
                raise RuntimeError(
                    "shared_prefix: no attention layer of the model read the shared-prefix layout (its attention "
                    "bypasses transformers' attention interface); set shared_prefix: off"
                )
            lp = sp.unpack(out.log_probs, packed)
            logps = lp if logps is None else logps + lp
            if compute_entropy:
                ent = sp.unpack(out.entropy, packed)
                entropies = ent if entropies is None else entropies + ent
        return logps, entropies

    def _on_every_process(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every process (one small all-gather with several)."""
        if self.accelerator.num_processes == 1:
            return flag
        flags = self.accelerator.gather(torch.tensor([float(flag)], device=self.accelerator.device))
        return bool(flags.min().item())

    def _check_shared_prefix(self, model, input_ids, attention_mask, logits_to_keep, batch_size, packs) -> None:
        """Compare the first shared forward of the run with TRL's unshared one (no gradient, dropout off; every
        process at once, the verdict taken over all of them). The mean absolute difference of the scored
        log-probabilities must be float rounding — 1e-4 in fp32, 2e-2 in half precision, where a wrong layout
        gives differences of order 1 — or the shared prefix is turned off (``auto``, one log line) or the run
        stops (``on``)."""
        self._shared_checked = True
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                shared, _ = self._shared_forward(model, packs, False)
                unshared, _, _ = super()._get_per_token_logps_and_entropies(
                    model, input_ids, attention_mask, logits_to_keep, batch_size
                )
        finally:
            model.train(was_training)
        scored = attention_mask[:, -logits_to_keep:].bool()
        gap = (shared - unshared).abs()[scored].float()
        stats = torch.stack(
            [gap.sum(), gap.new_tensor(float(gap.numel())), gap.max() if gap.numel() else gap.new_zeros(())]
        )
        if self.accelerator.num_processes > 1:
            every = self.accelerator.gather(stats[None].to(self.accelerator.device))
            stats = torch.stack([every[:, 0].sum(), every[:, 1].sum(), every[:, 2].max()])
        mean, largest = (stats[0] / stats[1].clamp(min=1)).item(), stats[2].item()
        half = self.args.bf16 or self.args.fp16 or next(model.parameters()).dtype in (torch.float16, torch.bfloat16)
        tolerance = 2e-2 if half else 1e-4
        self._metrics["train"]["shared_prefix/check_mean_diff"].append(mean)
        self._metrics["train"]["shared_prefix/check_max_diff"].append(largest)
        if mean <= tolerance:
            self._metrics["train"]["shared_prefix/active"].append(1.0)
            return
        message = (
            f"shared_prefix: the shared-prefix log-probabilities differ from TRL's by {mean:.3g} on average (at "
            f"most {largest:.3g}; tolerance {tolerance:g}) on this model"
        )
        if self.shared_prefix == "on":
            raise RuntimeError(message + "; set shared_prefix: off")
        log.warning("%s; TRL's unshared loss pass is used", message)
        self._metrics["train"]["shared_prefix/active"].append(0.0)
        self._shared = False

    # ---------------------------------------------------------------------------------------------------
    # Rollouts
    # ---------------------------------------------------------------------------------------------------

    @property
    def _decodes_with_generate(self) -> bool:
        """Whether TRL's rollouts are one transformers ``generate`` call (not vLLM, not paged batching)."""
        return not (self.use_vllm or getattr(self, "use_transformers_continuous_batching", False))

    def _continuous_rollouts(
        self, prompt_ids: list[list[int]], budgets: list[int]
    ) -> tuple[list[list[int]] | None, str | None]:
        """Rollouts with recap's decode loop (``rollout_decoder: continuous``): every row is sampled with TRL's
        temperature and top-p and leaves the batch at its EOS (kept, as TRL keeps it) or at its own budget;
        each group's prompt is read once and its KV cache copied to the group's rows. The model is unwrapped,
        its generation config overridden and its parameters gathered exactly as for TRL's transformers
        rollouts. Returns ``(completion ids, None)``, or ``(None, why)`` when TRL's generate must decode: vLLM
        or transformers' paged batching, several EOS tokens, extra ``generation_kwargs``, or a sampler setting
        the loop does not implement (top-k, min-p, repetition penalty, suppressed tokens, …)."""
        from trl.models.utils import unwrap_model_for_generation

        from recap.inference.generation import SamplingConfig, generate_ids, loop_supported

        gc = self.generation_config
        why = None
        if not self._decodes_with_generate:
            why = "vLLM or paged rollouts"
        elif len(self.eos_token_ids) != 1:
            why = f"{len(self.eos_token_ids)} end-of-sequence tokens"
        elif self.args.generation_kwargs:
            why = "generation_kwargs"
        elif gc.top_k not in (0, None):
            why = "top_k sampling"
        elif (gc.repetition_penalty or 1.0) != 1.0:
            why = "repetition_penalty"
        if why is not None:
            return None, why
        sampling = SamplingConfig(
            temperature=gc.temperature if gc.do_sample else 0.0,
            top_p=gc.top_p if gc.top_p is not None else 1.0,
            max_new_tokens=max(budgets),
            batch_size=len(prompt_ids),
        )
        eos = self.eos_token_ids[0]
        pad = self._tokenizer.pad_token_id  # TRL's tokenizer (a processor's own, for multimodal models)
        with (
            unwrap_model_for_generation(
                self.model_wrapped,
                self.accelerator,
                gather_deepspeed3_params=self.args.ds3_gather_for_generation,
                generation_kwargs=self.generation_kwargs,
                gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
            ) as model,
            torch.no_grad(),
            self._dist.summon_full_params(self.model_wrapped, recurse=False),
        ):
            own, model.generation_config = model.generation_config, gc  # what TRL's generate would sample with
            try:
                if not loop_supported(model, sampling):
                    return None, "a sampler setting or cache the decode loop lacks"
                out = generate_ids(model, prompt_ids, sampling, eos if pad is None else pad, eos, budgets=budgets)
            finally:
                model.generation_config = own
        return [new + [eos] if ended else new for new, ended in out], None

    @contextlib.contextmanager
    def _row_stopping(self, budgets: list[int]):
        """For transformers generation: stop each row at its budget, and the batch at the largest one."""
        if not self._decodes_with_generate:
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

    # ---------------------------------------------------------------------------------------------------
    # Generation rounds: dynamic sampling, the prefill planner, Self-ReSET
    # ---------------------------------------------------------------------------------------------------

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

    def _signal_step(self) -> None:
        """RECAP's signal this step, over every round (refills included): how many prefilled harmful groups
        were rolled out, how many had a reward spread (a group without one teaches nothing), their mean
        reward — which a gated length schedule is shown — and the prefill length in use."""
        size = self.num_generations
        n = spread = 0
        reward_sum = 0.0
        for rows, total, _, _ in self._step_rounds:
            flat = zero_variance_groups(total, size, self.dynamic_sampling_tolerance).tolist()
            for g, is_flat in enumerate(flat):
                row = rows[g * size]
                if row.get("kind") != "harmful" or not row.get("prefilled"):
                    continue
                n += 1
                spread += not is_flat
                rewards = total[g * size : (g + 1) * size]
                reward_sum += float(rewards[~torch.isnan(rewards)].mean()) if (~torch.isnan(rewards)).any() else 0.0
        both = self.accelerator.gather(torch.tensor([n, spread, reward_sum], device=self.accelerator.device).float())
        n, spread, reward_sum = both.view(-1, 3).sum(0).tolist()
        metrics = self._metrics["train"]
        metrics["signal/harmful_prefilled_groups"].append(n)
        metrics["signal/harmful_prefilled_spread_groups"].append(spread)
        if self.planner is not None:
            self.planner.observe(self.state.global_step, reward_sum / n if n else None)
            if self.planner.gate is not None:
                metrics["prefill/gated_words"].append(self.planner.gate.length)

    def _selfreset_step(self) -> None:
        """Cut and re-queue from the groups the step trains on (Self-ReSET, as the reference scans the rollouts
        it trains on), once per step, and log it. With dynamic sampling, a group it dropped, or a kept group
        beyond the step's quota, is not trained and not scanned."""
        if self.selfreset is None:
            return
        size, rows, texts, rewards, verdicts = self.num_generations, [], [], [], []
        for r, (batch, total, ts, vs) in enumerate(self._step_rounds):
            for g in range(len(batch) // size):
                if self._trained_groups is not None and (r, g) not in self._trained_groups:
                    continue
                part = slice(g * size, (g + 1) * size)
                rows += batch[part]
                texts += ts[part]
                rewards += [float(x) for x in total[part].tolist()]
                verdicts += list(vs[part]) if vs is not None else [None] * size
        if any(v is None for v in verdicts):
            verdicts = None
        found = self.selfreset.harvest(rows, texts, rewards, verdicts, self.state.global_step)
        metrics = self._metrics["train"]
        metrics["selfreset/queue_size"].append(found["queue"])
        metrics["selfreset/cuts"].append(found["cuts"])
        metrics["selfreset/requeued"].append(found["requeued"])
        groups = [row.get("reroll", "") for row in rows[:: self.num_generations]]
        metrics["selfreset/reroll_share"].append(sum(g != "" for g in groups) / max(1, len(groups)))

    def _check_fresh_done(self) -> None:
        """With re-rolls adding steps: once no process has a fresh group of the planned steps left after this
        round, the run ends with the round's last optimizer step."""
        if self.selfreset is None or self.selfreset.fresh_until is None:
            return
        span = self.args.steps_per_generation * self.num_iterations // self.args.gradient_accumulation_steps
        last = self.state.global_step + span  # the round trains steps global_step + 1 … last
        done = torch.tensor(float(self.selfreset.fresh_done(last)), device=self.accelerator.device)
        if self.accelerator.gather(done).min().item() == 1.0:
            self._stop_at = last

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
        rounds, kept, flat = [], [], []  # kept / flat (dropped): (round, local group)
        reasons: dict[str, int] = {}  # groups dropped per reason of the rule, every process, all rounds
        dropped, kept_equal, extra, batch = 0, 0, 0, inputs
        rule, tau, tolerance = self.dynamic_sampling_rule, self.dynamic_sampling_tau, self.dynamic_sampling_tolerance
        while True:
            batch, out, total, texts = self._round(batch, fresh=extra == 0)
            rounds.append((batch, out, texts))
            why = dynamic_sampling_drops(total, size, rule, tau, tolerance)
            drop = functools.reduce(torch.logical_or, why.values())
            for reason, mask in why.items():
                reasons[reason] = reasons.get(reason, 0) + int(mask.sum())
            dropped += int(drop.sum())
            if rule != "zero_variance":  # kept groups without spread: trained on, no gradient
                kept_equal += int((zero_variance_groups(total, size, tolerance) & ~drop).sum())
            for g, is_dropped in enumerate(drop[first_group : first_group + quota].tolist()):
                (flat if is_dropped else kept).append((len(rounds) - 1, g))
            short = torch.tensor(float(len(kept) < quota), device=self.accelerator.device)
            if self.accelerator.gather(short).sum().item() == 0 or extra >= self.max_extra_rounds:
                break
            extra += 1
            batch = self._refill(quota, used, extra)
        signal = kept[:quota]
        self._trained_groups = set(signal)  # (round, local group): what Self-ReSET scans (fillers are not trained)
        out = self._assemble([r[1] for r in rounds], signal + flat[: quota - len(signal)], len(signal))
        self._planner_step([(b, t) for b, _, t in rounds])
        effective = self.accelerator.gather(torch.tensor(float(len(signal)), device=self.accelerator.device))
        metrics = self._metrics["train"]
        metrics["dynamic_sampling/effective_batch_size"].append(int(effective.sum().item()))
        metrics["dynamic_sampling/dropped_groups"].append(dropped)
        for reason, n in reasons.items():  # which rule dropped how many
            metrics[f"dynamic_sampling/dropped_{reason}"].append(n)
        if rule != "zero_variance":
            metrics["dynamic_sampling/kept_zero_variance"].append(kept_equal)
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


def _has_groups(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> bool:
    """Whether two rows of a left-padded batch share their prompt (so a shared-prefix forward saves reading)."""
    if prompt_ids.shape[0] < 2 or not sp.left_padded(prompt_mask):
        return False
    return max(map(len, sp.group_rows(prompt_ids, prompt_mask))) > 1


def _shuffle_groups(batch: dict, groups: list[list[int]]) -> dict:
    """``batch`` (TRL's rollout-batch dict) with its groups in random order and each group's rows together, in
    their order. The order is read off TRL's own draw (``shuffle_sequence_dict``: one permutation of the rows,
    each group placed where its first row lands), so the random stream, and with it every later rollout, is
    the same with the shared prefix on or off."""
    group_of = {row: g for g, rows in enumerate(groups) for row in rows}
    drawn = dict.fromkeys(group_of[row] for row in torch.randperm(len(group_of)).tolist())  # first-seen order
    order = torch.tensor([row for g in drawn for row in groups[g]])
    rows = len(order)

    def permute(value):
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == rows:
            return value[order.to(value.device)]
        if isinstance(value, list) and len(value) == rows:
            return [value[i] for i in order.tolist()]
        return value

    return {key: permute(value) for key, value in batch.items()}
