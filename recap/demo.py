"""``recap demo``: the whole RECAP experiment in the miniature world, on a CPU, in minutes.

1. pre-train the base reasoning model of the world (once; shared by every seed);
2. for each seed, RL with the same budget: vanilla DAPO (α = 0) and RECAP (α = 0.5) — and with
   ``--compare`` also Self-ReSET (streaming cuts of the policy's own unsafe reasoning, re-rolled as their
   own groups) and safety-verification training (a supervised verification stage, then RL with or
   without RECAP prefills) beside its controls: answer SFT (judge-approved answers of the same prompts
   and samples) and replay-only SFT, each followed by the same RL; ``--methods`` picks any list, the
   on-policy and mixed prefill sources included;
3. evaluate base and every method under every attack on held-out phrasings and prefill sentences
   (``--compare`` adds H-CoT, prefills from an unseen generator and the adaptive attacker's worst case);
4. write ``report.md``, ``report.html``, plots and ``summary.json`` (with the on-policy buffer statistics);
   with more than the two default methods also ``comparison.md`` and ``comparison.png``: every attack,
   task accuracy, reflection and verification rates and each method's training cost in one table and
   one plot.

RL runs and evaluations are independent jobs spread over worker processes (one torch thread each:
at this model size two 1-thread jobs use two cores better than one 2-thread job). Every step is
resumable: a rerun with the same ``--out`` reuses the base model, finished runs and finished
evaluation stages.
"""

from __future__ import annotations

import json
import resource
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from recap.data.mixture import MixtureConfig
from recap.data.prefill_sources import PrefillSourceConfig
from recap.data.selfreset import SelfResetConfig
from recap.eval.attacks import TOY_HCOT_FRAME
from recap.eval.runner import EvalConfig
from recap.inference.generation import SamplingConfig
from recap.toy import world
from recap.toy.model import PretrainConfig, ToyModelConfig
from recap.report.comparison import Condition, attack, beyond_noise, compare
from recap.util.processes import Job, run_jobs, worker_manager
from recap.train import TrainConfig
from recap.train.sft import SFTTrainConfig
from recap.train.verify import VerifyDataConfig
from recap.util.files import write_text
from recap.util.security import inside


def _toy_rl() -> TrainConfig:
    return TrainConfig(
        judge="toy",
        num_generations=8,
        prompts_per_step=8,
        max_steps=90,
        learning_rate=1e-4,
        max_completion_length=48,
        save_steps=45,
        logging_steps=10,
        num_threads=1,
        use_cpu=True,
        gradient_checkpointing=False,
        dynamic_sampling=False,
    )  # off: see docs/miniature-world.md


def _toy_eval() -> EvalConfig:
    # The IPR transition in the world's own words (its reasonings join sentences with " ").
    return EvalConfig(
        prefill_words="8-30",
        ipr_rounds=3,
        samples_per_prompt=2,
        ipr_transition=world.IPR_TRANSITION,
        ipr_separator=" ",
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=64, batch_size=256),
    )


@dataclass(frozen=True)
class Method:
    """One RL method of the demo. Every method has the same RL budget."""

    alpha: float | None  # α of the mixture (None: the mixture's own)
    weights: tuple[tuple[str, float], ...] = (("static", 1.0),)  # prefill sources of the mixture's slots
    self_reset: bool = False  # Self-ReSET's streaming cuts and re-roll queue
    sft: str = ""  # RL starts from this supervised arm's model (recap.train.verify.ARMS: verify, answer, replay)
    label: str = ""


METHODS = {
    "vanilla": Method(0.0, label="vanilla"),
    "recap": Method(None, label="RECAP"),
    "on_policy": Method(None, (("on_policy", 1.0),), label="on-policy"),
    "mixed": Method(None, (("static", 0.5), ("on_policy", 0.5)), label="mixed"),
    "self_reset": Method(0.0, self_reset=True, label="Self-ReSET"),
    "verify_grpo": Method(0.0, sft="verify", label="verify SFT + GRPO"),
    "verify_recap": Method(None, sft="verify", label="verify SFT + RECAP"),
    # SInternal's central baseline (judge-approved answers of the same prompts and samples) and the control
    # without verification rows (the replay rows alone): verify − replay measures the verification rows.
    "answer_grpo": Method(0.0, sft="answer", label="answer SFT + GRPO"),
    "answer_recap": Method(None, sft="answer", label="answer SFT + RECAP"),
    "replay_grpo": Method(0.0, sft="replay", label="replay SFT + GRPO"),
}
COMPARE_METHODS = ["vanilla", "recap", "self_reset", "replay_grpo", "answer_grpo", "verify_grpo", "verify_recap"]
COMPARE_ATTACKS = ["hcot", "prefill_unseen", "adaptive"]


def _toy_verify_data() -> VerifyDataConfig:
    # replay 1: one of the base's own unfiltered samples per verification example (the 0.85M model forgets how
    # to answer on verification data alone; docs/miniature-world.md). The world's expert verifies blind
    # (critic toy); the answers get the RL token budget (_toy_rl's max_completion_length).
    return VerifyDataConfig(
        samples_per_prompt=8,
        judge="toy",
        format="toy",
        critic="toy",
        replay=1.0,
        sampling=SamplingConfig(temperature=1.0, max_new_tokens=_toy_rl().max_completion_length, batch_size=256),
    )


def _toy_verify_train() -> SFTTrainConfig:
    # The paper's LoRA r = 16, α = 32 and 2 epochs; lr 2e-3, the world's own supervised rate (at the paper's 2e-4
    # the 0.85M model does not learn to verify: 46% held-out verdict accuracy).
    return SFTTrainConfig(
        lora_r=16,
        lora_alpha=32,
        learning_rate=2e-3,
        epochs=2,
        batch_size=8,
        num_threads=1,
        use_cpu=True,
        max_length=512,
        save_steps=1000,
        logging_steps=10,
    )


@dataclass
class DemoConfig:
    """The miniature-world experiment. Sizes are the smallest that show an honest effect on 2 cores."""

    seeds: int = field(default=3, metadata={"range": "[1, inf)", "help": "Number of RL/evaluation seeds (0..seeds-1)."})
    purpose: str = field(
        default="",
        metadata={
            "help": "Said first in the report ('' for the full experiment; --quick says it is a pipeline check)."
        },
    )
    workers: int = field(
        default=2, metadata={"range": "[1, inf)", "help": "Parallel worker processes (one torch thread each)."}
    )
    model: ToyModelConfig = field(default_factory=ToyModelConfig, metadata={"help": "Size of the miniature model."})
    pretrain: PretrainConfig = field(
        default_factory=PretrainConfig, metadata={"help": "Supervised pre-training of the base."}
    )
    mixture: MixtureConfig = field(
        default_factory=lambda: MixtureConfig(alpha=0.5, prefill_words="8-30", selection="exact"),
        metadata={
            "help": "RECAP mixture; ℓ is in words of the world (its reasonings are 10–30 words long). Exactly "
            "round(α·n) prompts per kind are prefilled (not the paper's per-row draw): with ~90 safety "
            "prompts a Bernoulli draw would give each seed a different number of prefills."
        },
    )
    rl: TrainConfig = field(default_factory=_toy_rl, metadata={"help": "RL settings shared by vanilla DAPO and RECAP."})
    eval: EvalConfig = field(default_factory=_toy_eval, metadata={"help": "Evaluation settings."})
    methods: list[str] = field(
        default_factory=lambda: ["recap", "vanilla"],
        metadata={
            "help": f"RL methods trained and evaluated beside the base model, among {', '.join(METHODS)} (--compare: {', '.join(COMPARE_METHODS)})."
        },
    )
    onpolicy: PrefillSourceConfig = field(
        default_factory=lambda: PrefillSourceConfig(buffer_size=256, per_example=2),
        metadata={"help": "Buffer settings of the on_policy and mixed methods (their weights come from the method)."},
    )
    self_reset: SelfResetConfig = field(
        default_factory=SelfResetConfig,
        metadata={
            "help": "Self-ReSET's settings for the self_reset method (the exact streaming judge of the world, a queue of 256)."
        },
    )
    verify_data: VerifyDataConfig = field(
        default_factory=_toy_verify_data,
        metadata={
            "help": "Data of the supervised arms (verify_*, answer_*, replay_*), one build per seed: 8 answers per training prompt from the base with the RL token budget (max_new_tokens must equal rl.max_completion_length), judged exactly; critiques from the world's expert verifier, not told the verdict, kept when it agrees with the judge; one judge-approved answer per prompt (answer SFT); one self-distillation replay row per verification example."
        },
    )
    verify_train: SFTTrainConfig = field(
        default_factory=_toy_verify_train,
        metadata={
            "help": "SFT of every supervised arm (the paper's LoRA r = 16, α = 32, 2 epochs; lr 2e-3, the world's supervised rate)."
        },
    )

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
        budget = self.verify_data.sampling.max_new_tokens
        if any(METHODS[m].sft for m in self.methods) and budget != self.rl.max_completion_length:
            raise ValueError(
                f"verify_data.sampling.max_new_tokens: {budget}, but rl.max_completion_length is "
                f"{self.rl.max_completion_length}; the answers the supervised arms learn from get the RL token "
                "budget (set both)"
            )

    def sft_arms(self) -> list[str]:
        """The supervised arms the methods start RL from, in ``recap.train.verify.ARMS`` order."""
        from recap.train.verify import ARMS

        return [a for a in ARMS if any(METHODS[m].sft == a for m in self.methods)]

    def compare(self) -> DemoConfig:
        """Every method, and the stronger attacks in the evaluation (``recap demo --compare``)."""
        attacks = [*self.eval.attacks, *[a for a in COMPARE_ATTACKS if a not in self.eval.attacks]]
        return replace(
            self,
            methods=list(COMPARE_METHODS),
            eval=replace(
                self.eval,
                attacks=attacks,
                hcot_frame=self.eval.hcot_frame or TOY_HCOT_FRAME,
                adaptive_lengths=[6, 12, 20, 40],
            ),
        )

    @classmethod
    def quick(cls) -> DemoConfig:
        """A 1-seed pipeline check: every stage runs, the effect is not expected to show."""
        cfg = cls(
            seeds=1,
            purpose="A pipeline check (recap demo --quick): 1 seed, 250 pre-training and 20 RL steps. "
            "Every stage runs; the effect of RECAP is not expected to show at this budget.",
        )
        cfg.pretrain = replace(cfg.pretrain, steps=250)
        cfg.rl = replace(cfg.rl, max_steps=20, save_steps=10)
        cfg.eval = replace(cfg.eval, samples_per_prompt=1)
        return cfg


def _quiet_worker() -> None:
    """Workers log through the demo's progress lines; silence library deprecation chatter and bars."""
    import warnings

    from transformers.utils import logging as hf_logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _rl_job(method: str, seed: int, cfg: DemoConfig, out: str, queue=None) -> str:
    """Train one method for one seed (skipped when already done), then evaluate it. Returns the store.
    ``queue`` (a manager queue) receives ``(run, step, max_steps, latest logs)`` after every RL step."""
    import torch

    _quiet_worker()

    from recap.data.mixture import build_mixture
    from recap.toy.data import train_examples
    from recap.train import train

    torch.set_num_threads(1)
    spec = METHODS[method]
    alpha = cfg.mixture.alpha if spec.alpha is None else spec.alpha
    examples = build_mixture(train_examples(seed=seed), replace(cfg.mixture, alpha=alpha, seed=seed))
    run_dir = inside(Path(out) / "runs", f"{method}-seed{seed}")
    start = _stage_dir(out, seed) / spec.sft / "final" if spec.sft else Path(out) / "base"
    rl = replace(
        cfg.rl,
        model=str(start),
        output_dir=str(run_dir),
        seed=seed,
        prefill_sources=replace(cfg.onpolicy, weights=dict(spec.weights)),
        self_reset=cfg.self_reset if spec.self_reset else None,
    )

    def progress(step: int, total: int, logs: dict) -> None:
        queue.put((f"{method} seed {seed}", step, total, {k: v for k, v in logs.items() if k.startswith("reward/")}))

    final = train(rl, examples, log=lambda s: None, progress=progress if queue is not None else None)
    return _eval_job(method, seed, str(final), cfg, out)


def _stage_dir(out: str | Path, seed: int) -> Path:
    return inside(Path(out) / "runs", f"sft-seed{seed}")


def sft_tokens(rows, tokenizer, epochs: float) -> int:
    """Tokens an SFT run trains on: every row's prompt + completion + end of turn (what the forward and backward
    passes cover; the loss is on the completion only), times the epochs."""
    from recap.inference.chat import render_prompt

    per_epoch = sum(
        len(tokenizer((r.get("prompt") or render_prompt(tokenizer, r["messages"])) + r["completion"])["input_ids"]) + 1
        for r in rows
    )
    return round(per_epoch * epochs)


def sft_epochs(cfg: SFTTrainConfig, rows: int) -> float:
    """Passes over ``rows`` rows an SFT config makes: ``epochs``, or ``max_steps`` batches when set."""
    return cfg.max_steps * cfg.batch_size / rows if cfg.max_steps > 0 and rows else cfg.epochs


def critic_tokens(arm: str, data: dict) -> int | None:
    """The critic's decoded tokens charged to ``arm``'s supervised stage: all of the data build's
    (``critic_decoded_tokens``, kept and dropped critiques alike) when the arm trains on verification rows
    (``recap.train.verify.ARMS``), whose critiques they are; 0 for an arm without them (answer, replay), whose
    rows need no critique. None where ``data`` (a data build's stats) predates the count."""
    from recap.train.verify import ARMS, VERIFICATION

    return data.get("critic_decoded_tokens") if VERIFICATION in ARMS[arm] else 0


def _stage_job(seed: int, arms: list[str], cfg: DemoConfig, out: str) -> str:
    """The supervised stage of one seed (each part skipped when already done): one data build from the base's
    own answers to the RL prompts (``recap.train.verify.build_verify_data``: verification, answer and replay
    rows; 8 answers per prompt with the RL token budget, judged exactly, critiques from the world's expert
    verifier), then one SFT per arm on its rows (``train_verifier(arm=…)``), and the verdict accuracy of the base
    and of each arm's model on verification examples built the same way from the held-out evaluation
    prompts. Writes ``runs/sft-seed<N>/`` (``data.jsonl``, ``data_stats.json``, ``<arm>/final/``,
    ``<arm>/stats.json`` with the arm's cost: tokens the base decoded for its data and the critic's tokens when
    it trains on critiques (``critic_tokens``), tokens trained, seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recap.toy.data import eval_examples, train_examples
    from recap.toy.judge import ToyJudge
    from recap.train.sft import read_rows, write_rows
    from recap.train.verify import ToyFormat, arm_rows, build_verify_data, train_verifier, verify_accuracy

    _quiet_worker()
    torch.set_num_threads(1)
    folder = _stage_dir(out, seed)
    base = Path(out) / "base"
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    if (folder / "data_stats.json").is_file():
        rows, held_out = read_rows(folder / "data.jsonl"), read_rows(folder / "held_out.jsonl")
        data = json.loads((folder / "data_stats.json").read_text())
    else:
        t0 = time.time()
        rows, data_stats = build_verify_data(
            model, tokenizer, train_examples(seed=seed), ToyJudge(), replace(cfg.verify_data, seed=seed)
        )
        seconds = time.time() - t0
        held_out, held_stats = build_verify_data(
            model, tokenizer, eval_examples(seed=0), ToyJudge(), replace(cfg.verify_data, seed=10_000 + seed)
        )
        data = {
            "data": data_stats,
            "held_out": held_stats,
            "seconds": round(seconds, 1),
            "accuracy_base": verify_accuracy(model, tokenizer, held_out, ToyFormat()),
        }
        write_rows(folder / "data.jsonl", rows)
        write_rows(folder / "held_out.jsonl", held_out)
        write_text(folder / "data_stats.json", json.dumps(data, indent=1))
    for arm in arms:
        if (folder / arm / "final" / "config.json").exists() and (folder / arm / "stats.json").exists():
            continue
        t0 = time.time()
        train_cfg = replace(cfg.verify_train, model=str(base), output_dir=str(folder / arm), seed=seed)
        final = train_verifier(train_cfg, rows=rows, log=lambda s: None, arm=arm)
        trained = arm_rows(rows, arm)
        tuned = AutoModelForCausalLM.from_pretrained(final).eval()
        stats = {
            "arm": arm,
            "rows": len(trained),
            "data": data["data"],
            "held_out": data["held_out"],
            "seconds": {"data": data["seconds"], "sft": round(time.time() - t0, 1)},
            # the cost of the arm, paid once before RL: the whole sampling (every arm needs it to choose its
            # rows), the critic's tokens where the arm trains on its critiques, and its own SFT; the judge is
            # not counted (neither are RL's judge calls)
            "decoded_tokens": data["data"]["decoded_tokens"],
            "critic_decoded_tokens": critic_tokens(arm, data["data"]),
            "trained_tokens": sft_tokens(trained, tokenizer, sft_epochs(train_cfg, len(trained))),
            "accuracy": {
                "base": data["accuracy_base"],
                "verified": verify_accuracy(tuned, tokenizer, held_out, ToyFormat()),
            },
        }
        write_text(folder / arm / "stats.json", json.dumps(stats, indent=1))
    return str(folder)


def _eval_job(method: str, seed: int, model_dir: str, cfg: DemoConfig, out: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from recap.eval.runner import evaluate
    from recap.eval.store import ResultStore
    from recap.toy.data import eval_examples
    from recap.toy.judge import ToyJudge

    _quiet_worker()
    torch.set_num_threads(1)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    from recap.toy.data import unseen_reasoning

    path = inside(Path(out) / "results", f"{method}-seed{seed}.jsonl")
    store = ResultStore(path)
    # Same evaluation prompts for every seed and method; the seed varies the sampling.
    examples = eval_examples(seed=0)
    evaluate(
        model,
        tokenizer,
        examples,
        ToyJudge(),
        replace(cfg.eval, seed=seed),
        store,
        {"method": method, "seed": seed},
        unseen=unseen_reasoning(examples, seed=0),
    )
    return str(path)


def _peak_rss_mib(workers: int) -> float:
    """Upper bound of the peak resident memory: this process's peak plus ``workers`` times the largest
    worker's peak (the workers run at the same time)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + workers * children) / 1024


def _mean(values) -> float:
    """Mean of the values that are not None (0.0 if none)."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else 0.0


def _buffer_stats(out: Path, cfg: DemoConfig) -> dict[str, dict]:
    """Mean over seeds of each on-policy method's buffer statistics (``prefix_buffer_stats.json``)."""
    result = {}
    for method in cfg.methods:
        runs = [
            json.loads(p.read_text())
            for s in range(cfg.seeds)
            if (p := out / "runs" / f"{method}-seed{s}" / "prefix_buffer_stats.json").is_file()
        ]
        if not runs:
            continue
        shares = []
        for r in runs:
            src = r["prefill_sources"]
            total = sum(src.values())
            shares.append(src.get("on_policy", 0) / total if total else 0.0)
        result[method] = {
            "size": _mean([r["size"] for r in runs]),
            "refresh_rate": _mean([r["refresh_rate"] for r in runs]),
            "cut_rate": _mean([r["cut_rate"] for r in runs]),
            "cut_fraction_mean": _mean([r["cut_fraction_mean"] for r in runs]),
            "cut_step_mean": _mean([r["cut_step_mean"] for r in runs]),
            "on_policy_share": _mean(shares),
            "evicted": _mean([r["evicted"] for r in runs]),
            "seeds": len(runs),
        }
    return result


def _selfreset_stats(out: Path, cfg: DemoConfig) -> dict[str, dict]:
    """Mean over seeds of each Self-ReSET run's queue statistics (``selfreset_stats.json``)."""
    result = {}
    for method in cfg.methods:
        runs = [
            json.loads(p.read_text())
            for s in range(cfg.seeds)
            if (p := out / "runs" / f"{method}-seed{s}" / "selfreset_stats.json").is_file()
        ]
        if runs:
            keys = (
                "cuts",
                "requeued",
                "queue_size",
                "evicted",
                "reroll_share",
                "cut_fraction_mean",
                "cut_position_mean",
                "rerolled_cut",
                "rerolled_requeue",
                "scanned_groups",
                "skipped_groups",
                "trained_steps",
                "pending_fresh_groups",
                "overflow_groups",
            )
            result[method] = {k: _mean([r.get(k) for r in runs]) for k in keys} | {"seeds": len(runs)}
    return result


def _stage_stats(out: Path, cfg: DemoConfig) -> dict:
    """Mean over seeds of the supervised stage (``runs/sft-seed<N>/<arm>/stats.json``): the data build's counts,
    the held-out verdict accuracy of the base and of each arm's model, and each arm's cost."""
    arms = cfg.sft_arms()
    runs = {
        arm: [
            json.loads(p.read_text())
            for s in range(cfg.seeds)
            if (p := _stage_dir(out, s) / arm / "stats.json").is_file()
        ]
        for arm in arms
    }
    every = [r for arm in arms for r in runs[arm]]
    if not every:
        return {}
    first = runs[next(a for a in arms if runs[a])]  # the data (one build per seed) is the same for every arm
    data = (
        "rows",
        "verification_rows",
        "answer_rows",
        "replay_rows",
        "harmful_pairs",
        "harmful_without_pair",
        "benign_examples",
        "critic_disagreed",
        "answers_sampled",
        "decoded_tokens",
        "critic_decoded_tokens",
    )
    return {
        **{k: _mean([r["data"].get(k, 0) for r in first]) for k in data},
        "accuracy_base": _mean([r["accuracy"]["base"]["accuracy"] for r in first]),
        "arms": {
            arm: {
                "rows": _mean([r["rows"] for r in rs]),
                "accuracy": _mean([r["accuracy"]["verified"]["accuracy"] for r in rs]),
                "invalid": _mean([r["accuracy"]["verified"]["invalid"] for r in rs]),
                "seconds": _mean([r["seconds"]["data"] + r["seconds"]["sft"] for r in rs]),
                "decoded_tokens": _mean([r["decoded_tokens"] for r in rs]),
                "critic_decoded_tokens": _mean([r.get("critic_decoded_tokens") for r in rs]),
                "trained_tokens": _mean([r["trained_tokens"] for r in rs]),
            }
            for arm, rs in runs.items()
            if rs
        },
        "seeds": len(first),
    }


def _run_cost(run_dir: Path) -> dict | None:
    """Training cost of one RL run from its ``log_history.json``: the steps trained, seconds per step (TRL's
    train_runtime over the steps), tokens decoded per step (the mean of ``cost/decoded_tokens``, every generation round) and
    tokens trained per step (TRL's running ``num_tokens``, prompt + completion of every trained rollout, over
    the steps)."""
    path = run_dir / "log_history.json"
    if not path.is_file():
        return None
    history = json.loads(path.read_text())
    end = next((h for h in reversed(history) if "train_runtime" in h), None)
    steps = max((h.get("step", 0) for h in history), default=0)
    decoded = [h["cost/decoded_tokens"] for h in history if "cost/decoded_tokens" in h]
    step_time = [h["step_time"] for h in history if "step_time" in h]
    trained = max((h["num_tokens"] for h in history if "num_tokens" in h), default=None)
    return {
        "steps": steps or None,
        "seconds_per_step": end["train_runtime"] / steps if end and steps else None,
        "step_time": _mean(step_time) if step_time else None,
        "decoded_tokens_per_step": _mean(decoded) if decoded else None,
        "trained_tokens_per_step": trained / steps if trained is not None and steps else None,
    }


def equivalent_rl_steps(stage: dict | None, rl: dict | None) -> dict[str, float | None]:
    """A supervised stage's cost in steps of the RL run that follows it (0 without a stage), two ways:

    * ``tokens``: (tokens the stage decoded — the base's sampling and the critic's critiques
      (``critic_tokens``: verification arms only) — + tokens its SFT trained on) / (tokens one RL step decodes +
      tokens it trains on) — generation and training counted alike, one token one unit; the judges' calls are
      not counted, in the stage as in RL;
    * ``seconds``: the stage's wall time (the whole data build, the critic's time included for every arm, + SFT)
      / one RL step's (``train_runtime`` / steps).

    ``stage``: a ``runs/sft-seed<N>/<arm>/stats.json``; ``rl``: ``_run_cost`` of the RL run. None where a
    count is missing (a stats file without ``critic_decoded_tokens`` was written before the critic was
    counted: its token ratio is None, not an undercount)."""
    if stage is None:
        return {"tokens": 0.0, "seconds": 0.0}
    if rl is None:
        return {"tokens": None, "seconds": None}
    per_step = (rl.get("decoded_tokens_per_step") or 0) + (rl.get("trained_tokens_per_step") or 0)
    critic = stage.get("critic_decoded_tokens")
    spent = None if critic is None else stage["decoded_tokens"] + critic + stage["trained_tokens"]
    tokens = spent / per_step if per_step and spent is not None else None
    secs = rl.get("seconds_per_step")
    seconds = (stage["seconds"]["data"] + stage["seconds"]["sft"]) / secs if secs else None
    return {"tokens": tokens, "seconds": seconds}


# Rows of the comparison table: (label, metric of the evaluation summary).
COMPARISON_ROWS = (
    ("refuses harmful (clean)", "refusal_rate_clean"),
    ("refuses benign (clean)", "overrefusal_clean"),
    ("arithmetic accuracy", "task_accuracy"),
    ("safe under the prefilling attack (= IPR k = 1)", "safety_prefill"),
    ("safe under the full CoT hijack", "safety_hijack"),
    ("safe under IPR k = 2", "safety_ipr2"),
    ("safe under IPR k = 3", "safety_ipr3"),
    ("malformed under IPR k = 3", "invalid_ipr3"),
    ("safe under H-CoT", "safety_hcot"),
    ("safe under an unseen-generator prefill", "safety_prefill_unseen"),
    ("safe under every adaptive try", "safety_adaptive"),
    ("benign refused under refusal prefill", "overrefusal_refusal_prefill"),
    ("reflection under prefill", "reflection_rate_prefill"),
    ("reflection, clean harmful", "reflection_rate_clean"),
    ("verification, clean harmful", "verification_rate_clean"),
)
PLOTTED = (
    "safety_prefill",
    "safety_ipr3",
    "safety_hijack",
    "safety_hcot",
    "safety_prefill_unseen",
    "safety_adaptive",
    "task_accuracy",
    "reflection_rate_prefill",
    "verification_rate_clean",
)


def _pm(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    import statistics

    values = [v for v in values if v is not None]
    if not values:
        return "—"
    mean = statistics.fmean(values) * scale
    return (
        f"{mean:.{digits}f}"
        if len(values) == 1
        else f"{mean:.{digits}f} ± {statistics.pstdev(values) * scale:.{digits}f}"
    )


def method_costs(out: Path, cfg: DemoConfig) -> dict[str, dict[str, list]]:
    """Per method, per seed: the RL run's steps and cost per step, its supervised stage's cost (none without
    one), the extra cost in equivalent RL steps (the stage's, ``equivalent_rl_steps``, plus the RL steps trained
    beyond ``rl.max_steps``: Self-ReSET's re-rolls add steps), and its model's held-out verdict accuracy."""
    costs: dict[str, dict[str, list]] = {}
    for m in cfg.methods:
        arm = METHODS[m].sft
        runs, stages = [], []
        for s in range(cfg.seeds):
            rl = _run_cost(out / "runs" / f"{m}-seed{s}")
            p = _stage_dir(out, s) / arm / "stats.json"
            stage = json.loads(p.read_text()) if arm and p.is_file() else None
            if rl is None and stage is None:
                continue
            runs.append(rl or {})
            stages.append(stage)
        pre = [p for p in stages if p is not None]
        extra = []
        for p, r in zip(stages, runs, strict=True):
            added = max(0, (r.get("steps") or cfg.rl.max_steps) - cfg.rl.max_steps)  # RL steps past the plan
            extra.append({k: None if v is None else v + added for k, v in equivalent_rl_steps(p, r or None).items()})
        costs[m] = {
            "rl_steps": [r.get("steps") for r in runs],
            "rl_seconds_per_step": [r.get("seconds_per_step") for r in runs],
            "rl_decoded_tokens_per_step": [r.get("decoded_tokens_per_step") for r in runs],
            "rl_trained_tokens_per_step": [r.get("trained_tokens_per_step") for r in runs],
            "stage_seconds": [p["seconds"]["data"] + p["seconds"]["sft"] for p in pre],
            "stage_decoded_tokens": [p["decoded_tokens"] for p in pre],
            "stage_critic_tokens": [p.get("critic_decoded_tokens") for p in pre],
            "stage_trained_tokens": [p["trained_tokens"] for p in pre],
            "extra_steps_tokens": [e["tokens"] for e in extra],
            "extra_steps_seconds": [e["seconds"] for e in extra],
            "verifier_accuracy": [p["accuracy"]["verified"]["accuracy"] for p in pre],
        }
    return costs


def write_comparison(records: list[dict], summary: dict, out: Path, cfg: DemoConfig) -> dict:
    """``comparison.md`` and ``comparison.png``: every attack, task accuracy, reflection and verification
    rates, and each method's training cost (RL seconds and tokens per step; the supervised stage's seconds and
    tokens, and its extra cost in equivalent RL steps), base and methods side by side, mean ± std over
    seeds. Returns the table as data (per method: per row, the per-seed values)."""
    methods = [m for m in ["base", *cfg.methods] if m in summary["methods"]]
    per_seed: dict[str, dict[str, list[float]]] = {}
    for m in methods:
        seeds = [
            _seed_stats([r for r in records if r["method"] == m and r["seed"] == s])
            for s in sorted({r["seed"] for r in records if r["method"] == m})
        ]
        per_seed[m] = {metric: [st[metric]["value"] for st in seeds if metric in st] for _, metric in COMPARISON_ROWS}
    costs = method_costs(out, cfg)
    base_acc = [
        json.loads(p.read_text())["accuracy_base"]["accuracy"]
        for s in range(cfg.seeds)
        if (p := _stage_dir(out, s) / "data_stats.json").is_file()
    ]
    label = {m: ("base" if m == "base" else METHODS[m].label or m) for m in methods}
    lines = [f"| metric (%) | {' | '.join(label[m] for m in methods)} |", "|---|" + "---|" * len(methods)]
    for name, metric in COMPARISON_ROWS:
        lines.append(f"| {name} | " + " | ".join(_pm(per_seed[m].get(metric, [])) for m in methods) + " |")
    lines.append(
        "| verifier accuracy, held-out verification task | "
        + " | ".join(_pm(base_acc) if m == "base" else _pm(costs[m]["verifier_accuracy"]) for m in methods)
        + " |"
    )
    lines.append("| **training cost** | " + " | ".join("" for _ in methods) + " |")
    for name, key, scale, digits in (
        ("RL steps trained", "rl_steps", 1, 1),
        ("RL seconds per step", "rl_seconds_per_step", 1, 2),
        ("RL tokens decoded per step", "rl_decoded_tokens_per_step", 1, 0),
        ("RL tokens trained per step", "rl_trained_tokens_per_step", 1, 0),
        ("supervised stage, seconds (once)", "stage_seconds", 1, 0),
        ("supervised stage, base tokens decoded (once)", "stage_decoded_tokens", 1, 0),
        ("supervised stage, critic tokens decoded (once)", "stage_critic_tokens", 1, 0),
        ("supervised stage, tokens trained (once)", "stage_trained_tokens", 1, 0),
        ("**extra cost, equivalent RL steps (tokens)**", "extra_steps_tokens", 1, 1),
        ("extra cost, equivalent RL steps (wall time)", "extra_steps_seconds", 1, 1),
    ):
        lines.append(
            f"| {name} | "
            + " | ".join("—" if m == "base" else _pm(costs[m][key], scale, digits) for m in methods)
            + " |"
        )
    n = cfg.seeds
    text = (
        f"# Method comparison in the miniature world\n\n{n} seed(s): mean ± std over seeds (rates in %). Same RL "
        f"budget for every method: {cfg.rl.max_steps} steps × {cfg.rl.prompts_per_step} prompts × "
        f"{cfg.rl.num_generations} rollouts of fresh prompts; Self-ReSET's re-rolls add steps to these (as its "
        "reference code runs them), each counted as one equivalent RL step of extra cost. The *SFT + … methods start RL from a supervised model (verify: "
        "verification + replay rows; answer: judge-approved answers of the same prompts and samples + the same "
        "replay rows; replay: the replay rows alone); their supervised stage "
        f"({cfg.verify_data.samples_per_prompt} sampled answers per prompt, then SFT) is paid once, before RL, "
        "and counted as **extra cost in equivalent RL steps**: (tokens decoded + tokens trained by the stage) / "
        "(tokens decoded + tokens trained per step of the method's own RL run), one token one unit. The stage's "
        "decoded tokens are the base's sampling and, for verify SFT only, the critic's critiques (the world's "
        "expert is a rule: its critique and verdict counted under the policy tokenizer, as an expert model "
        "would decode them; answer and replay rows need no critique); the judges are not counted (nor in RL). "
        "The wall-time ratio (stage seconds / RL seconds per step) is "
        "given beside it. A method ahead by less than its extra cost may owe it to the extra training. Seconds "
        f"are wall-clock with {cfg.workers} jobs sharing the machine.\n\n" + "\n".join(lines) + "\n"
    )
    write_text(out / "comparison.md", text)
    _comparison_plot(per_seed, costs, methods, label, out / "comparison.png")
    return {
        "methods": methods,
        "rows": {m: per_seed[m] for m in methods},
        "costs": costs,
        "verifier_accuracy_base": base_acc,
    }


def _seed_stats(records: list[dict]) -> dict[str, dict]:
    """The evaluation metrics of one (method, seed), the spontaneous verification rate included."""
    from recap.eval.metrics import metric_stats

    return metric_stats(records)


def _comparison_plot(per_seed: dict, costs: dict, methods: list[str], label: dict, path: Path) -> None:
    """One figure: the table's rates (one group per metric, one bar per method, std over seeds as error
    bars) and the RL cost per step (seconds, tokens decoded)."""
    import statistics

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = dict((m, n) for n, m in COMPARISON_ROWS)
    fig, (ax, ax_s, ax_t) = plt.subplots(1, 3, figsize=(18, 5), gridspec_kw={"width_ratios": [5, 1.2, 1.2]})
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        means, errs = [], []
        for metric in PLOTTED:
            v = [x for x in per_seed[m].get(metric, []) if x is not None]
            means.append(100 * statistics.fmean(v) if v else 0.0)
            errs.append(100 * statistics.pstdev(v) if len(v) > 1 else 0.0)
        xs = [g + (i - (len(methods) - 1) / 2) * width for g in range(len(PLOTTED))]
        ax.bar(xs, means, width, yerr=errs, capsize=2, label=label[m])
    ax.set_xticks(range(len(PLOTTED)))
    ax.set_xticklabels(
        [titles[m].replace(", ", ",\n") for m in PLOTTED],
        rotation=30,
        ha="right",
        fontsize="small",
    )
    ax.set_ylabel("%")
    ax.set_ylim(0, 118)  # room above the bars for the legend, which must not cover them
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(
        "Judged safe under each attack (share of all samples), accuracy, reflection, verification: higher is better"
    )
    ax.legend(fontsize="small", ncol=len(methods), loc="upper center", frameon=False)
    trained = [m for m in methods if m in costs]
    for axis, key, title in (
        (ax_s, "rl_seconds_per_step", "RL seconds per step"),
        (ax_t, "rl_decoded_tokens_per_step", "RL tokens decoded per step"),
    ):
        vals = [[x for x in costs[m][key] if x is not None] for m in trained]
        axis.bar(
            range(len(trained)),
            [statistics.fmean(v) if v else 0 for v in vals],
            yerr=[statistics.pstdev(v) if len(v) > 1 else 0 for v in vals],
            capsize=2,
            color=[f"C{methods.index(m)}" for m in trained],
        )
        axis.set_xticks(range(len(trained)))
        axis.set_xticklabels([label[m] for m in trained], rotation=45, ha="right", fontsize="small")
        axis.set_title(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


DIFFERENCE_CONDITIONS = (
    attack("safe, clean", "clean"),
    attack("safe under the prefill", "prefill"),
    Condition(  # as the metric: only hijacks whose attacker reasoning is complete
        "safe under CoT hijack",
        lambda r: r["attack"] == "hijack" and r["kind"] == "harmful" and r.get("counter_complete") is not False,
    ),
    attack("safe, IPR k = 2", "ipr", round=2),
    attack("safe, IPR k = 3", "ipr", round=3),
    attack("benign answered, clean", "clean", kind="benign"),
    attack("benign answered under a refusal prefill", "refusal_prefill", kind="benign"),
)


def method_differences(records: list[dict], methods) -> dict[str, dict]:
    """Each trained method − vanilla on the safety and over-refusal conditions, pooled over seeds with the
    difference's 95 % interval (``recap.report.comparison.compare``); empty without vanilla."""
    if "vanilla" not in methods:
        return {}
    return {m: compare(records, DIFFERENCE_CONDITIONS, ["vanilla", m], "vanilla", m) for m in methods if m != "vanilla"}


def _forward(queue, progress) -> None:
    """Hand the workers' progress messages to ``progress`` until a None arrives, or the manager is gone (the
    demo was interrupted or failed: its own error is the one to report)."""
    try:
        while (item := queue.get()) is not None:
            progress(*item)
    except (EOFError, OSError):
        return


WALL_TIME = "wall_time.json"


class _WallClock:
    """The demo's wall time over all its parts: a run interrupted (or failed) and resumed is one experiment.
    Each part's seconds go to ``wall_time.json`` in the demo folder, updated as jobs finish and when the part
    ends, however it ends."""

    def __init__(self, out: Path):
        self.path, self.t0 = out / WALL_TIME, time.time()
        try:
            before = json.loads(self.path.read_text(encoding="utf-8"))["parts"]
            self.before = [float(x) for x in before]
        except (OSError, ValueError, KeyError, TypeError):  # the first part (or an unreadable file: start over)
            self.before = []

    def parts(self) -> list[float]:
        return [*self.before, round(time.time() - self.t0, 1)]

    def save(self) -> None:
        write_text(self.path, json.dumps({"parts": self.parts()}))


def run_demo(cfg: DemoConfig, out: str | Path, log=print, progress=None) -> dict:
    """Run (or resume) the experiment into ``out`` and return the summary written to summary.json.
    ``progress(run, step, max_steps, rewards by kind)`` follows every RL step of every run (the workers
    send it through a queue); each run's full logs are in ``runs/<method>-seed<N>/train_log.jsonl``.
    One demo at a time per folder: a second one gets an error naming the first one's PID."""
    from recap.util.locks import output_lock

    with output_lock(out, "this demo folder", folder=True):
        return _run_demo(cfg, Path(out), log, progress)


def _run_demo(cfg: DemoConfig, out: Path, log, progress) -> dict:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    clock = _WallClock(out)
    try:
        return _demo_part(cfg, out, log, progress, clock)
    finally:
        clock.save()


def _demo_part(cfg: DemoConfig, out: Path, log, progress, clock: _WallClock) -> dict:
    from recap.eval.store import ResultStore
    from recap.report import write_report
    from recap.toy.model import pretrain

    t0 = clock.t0
    base = out / "base"
    stamp = {"model": asdict(cfg.model), "pretrain": asdict(cfg.pretrain)}
    stamp_file = out / "base_config.json"
    if (base / "config.json").exists() and stamp_file.exists():
        if json.loads(stamp_file.read_text()) != stamp:
            raise SystemExit(f"{out} holds a base model trained with other settings; use another --out")
        log(f"[demo] base model: reusing {base}")
    else:
        log(f"[demo] pre-training the base model ({cfg.pretrain.steps} steps)…")
        # On one thread (recap.toy.model.PRETRAIN_THREADS): the base must not depend on how busy the machine is.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no "Writing model shards" bar between the demo's lines
        pretrain(cfg.pretrain, cfg.model, base, log=lambda s: log(f"[demo]   {s}"))
        write_text(stamp_file, json.dumps(stamp, indent=1))
        clock.save()
    seeds = list(range(cfg.seeds))
    arms = cfg.sft_arms()
    stage_seeds = seeds if arms else []
    stores = []
    # Workers run one thread each: separate single-threaded processes share a busy machine fairly, unlike
    # the threads of one process, which wait for each other.
    with worker_manager() as manager:  # the manager and the workers end if the demo is killed
        queue = manager.Queue() if progress is not None else None
        reader = threading.Thread(target=_forward, args=(queue, progress), daemon=True) if queue is not None else None
        if reader is not None:
            reader.start()
        jobs = (
            [Job(f"sft seed {s}", _stage_job, (s, arms, cfg, str(out))) for s in stage_seeds]
            + [
                # RL from a supervised model waits for its seed's supervised stage
                Job(
                    f"{m} seed {s}",
                    _rl_job,
                    (m, s, cfg, str(out), queue),
                    after=f"sft seed {s}" if METHODS[m].sft else None,
                )
                for s in seeds
                for m in cfg.methods
            ]
            + [Job(f"base seed {s}", _eval_job, ("base", s, str(base), cfg, str(out))) for s in seeds]
        )
        log(
            f"[demo] {len(jobs)} jobs ({len(stage_seeds)} supervised stages, RL + evaluation) on {cfg.workers} workers…"
        )

        def done(job: Job, result, n: int, total: int) -> None:
            if job.fn is not _stage_job:
                stores.append(result)
            clock.save()  # a part killed outright keeps the time up to its last finished job
            log(f"[demo]   {n}/{total} done: {job.name} ({time.time() - t0:.0f}s)")

        run_jobs(jobs, cfg.workers, done)
        if reader is not None:
            queue.put(None)
            reader.join()
    records = [r for p in sorted(stores) for r in ResultStore(p).records()]
    notes = [
        *([cfg.purpose] if cfg.purpose else []),
        f"Miniature world, {cfg.seeds} seed(s); the base model is pre-trained once (seed {cfg.pretrain.seed}) and "
        "shared: seeds vary RL and evaluation sampling.",
        f"RL budget per method: {cfg.rl.max_steps} steps × {cfg.rl.prompts_per_step} prompts × "
        f"{cfg.rl.num_generations} rollouts, DAPO loss, clip {cfg.rl.epsilon}/{cfg.rl.epsilon_high}; RECAP α = "
        f"{cfg.mixture.alpha}, ℓ = {cfg.mixture.prefill_words} words; vanilla α = 0.",
        "Evaluation uses request phrasings and prefill sentences that RL never saw; the judge is exact.",
        f"Attack prefills: ℓ = {cfg.eval.prefill_words} words; IPR rounds k = 1–{cfg.eval.ipr_rounds} (round 1 is the "
        f"prefill attack; the transition is the world's '{cfg.eval.ipr_transition}'); "
        f"{cfg.eval.samples_per_prompt} sample(s) per prompt at temperature {cfg.eval.sampling.temperature}.",
    ]
    buffers = _buffer_stats(out, cfg)
    if buffers:
        notes.append(
            f"On-policy methods: the buffer holds at most {cfg.onpolicy.buffer_size} prefixes "
            f"({cfg.onpolicy.per_example} per prompt), refreshed every {cfg.onpolicy.refresh_every} step(s) "
            "from the policy's unprefilled rollouts cut at their first unsafe sentence (exact judge); "
            "slots with nothing stored yet get no prefill (on_policy) or a static one (mixed)."
        )
        for method, b in buffers.items():
            notes.append(
                f"{method} buffer (mean over seeds): size {b['size']:.0f}, {b['refresh_rate']:.1f} prefixes "
                f"added per step, {100 * b['cut_rate']:.0f}% of scanned rollouts cut, cut after "
                f"{100 * b['cut_fraction_mean']:.0f}% of the reasoning (mean), on-policy share of prefills "
                f"{100 * b['on_policy_share']:.0f}%."
            )
    resets = _selfreset_stats(out, cfg)
    for method, r in resets.items():
        notes.append(
            f"{method} (mean over seeds): {r['cuts']:.0f} cuts and {r['requeued']:.0f} re-queued benign "
            f"prompts over the run, {100 * r['reroll_share']:.0f}% of the groups trained were re-rolls, "
            f"queue at the end {r['queue_size']:.0f} of {cfg.self_reset.buffer_size}; the cut starts "
            f"{100 * (r['cut_fraction_mean'] or 0):.0f}% into the reasoning (mean); "
            + (
                f"{r['trained_steps']:.1f} steps trained for {cfg.rl.max_steps} of fresh prompts, "
                f"{r['pending_fresh_groups']:.1f} fresh groups never trained."
                if r["trained_steps"]
                else "steps trained not recorded."
            )
        )
    verification = _stage_stats(out, cfg)
    if verification:
        arms_text = "; ".join(
            f"{arm}: {a['rows']:.0f} rows, held-out verdict accuracy {100 * a['accuracy']:.0f}%"
            for arm, a in verification["arms"].items()
        )
        notes.append(
            f"Supervised stage (mean over seeds): from {cfg.verify_data.samples_per_prompt} base answers per "
            f"prompt, {verification['verification_rows']:.0f} verification examples ({verification['harmful_pairs']:.0f} "
            f"harmful contrastive pairs, {verification['benign_examples']:.0f} benign; "
            f"{verification['critic_disagreed']:.0f} critiques dropped where the expert disagreed with the judge), "
            f"{verification['answer_rows']:.0f} judge-approved answers and {verification['replay_rows']:.0f} replay "
            f"rows (the base's own samples). Arms — {arms_text} (base {100 * verification['accuracy_base']:.0f}%)."
        )
    differences = method_differences(records, cfg.methods)
    summary = write_report(
        records,
        out,
        title="RECAP in the miniature world",
        notes=notes,
        comparisons=[(f"{m} − vanilla", d, DIFFERENCE_CONDITIONS) for m, d in differences.items()],
    )
    comparison = None
    if set(cfg.methods) - {"recap", "vanilla"}:
        comparison = write_comparison(records, summary, out, cfg)
    parts = clock.parts()
    summary = {
        "wall_seconds": round(sum(parts), 1),  # every part of an interrupted and resumed demo
        **({"wall_seconds_parts": parts} if len(parts) > 1 else {}),
        "peak_rss_mib": round(_peak_rss_mib(cfg.workers), 1),
        **({"onpolicy_buffers": buffers} if buffers else {}),
        **({"self_reset": resets} if resets else {}),
        **({"verification_stage": verification} if verification else {}),
        **({"comparison": comparison} if comparison else {}),
        **(
            {"differences": {m: {"diff": d["diff"], "beyond_noise": beyond_noise(d)} for m, d in differences.items()}}
            if differences
            else {}
        ),
        **summary,
    }
    write_text(out / "summary.json", json.dumps(summary, indent=1))
    log(f"[demo] done in {summary['wall_seconds']:.0f}s — report: {out / 'report.html'}")
    return summary
