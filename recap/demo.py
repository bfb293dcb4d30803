"""``recap demo``: the whole RECAP experiment in the miniature world, on a CPU, in minutes.

1. pre-train the base reasoning model of the world (once; shared by every seed);
2. for each seed, RL with the same budget: vanilla DAPO (α = 0) and RECAP (α = 0.5) — and with
   ``--compare`` also on-policy prefixes (Self-ReSET style) and mixed static + on-policy prefills;
3. evaluate base and every method under every attack on held-out phrasings and prefill sentences
   (``--compare`` adds H-CoT, prefills from an unseen generator and the adaptive attacker's worst case);
4. write ``report.md``, ``report.html``, plots and ``summary.json`` (with the on-policy buffer statistics).

RL runs and evaluations are independent jobs spread over worker processes (one torch thread each:
at this model size two 1-thread jobs use two cores better than one 2-thread job). Every step is
resumable: a rerun with the same ``--out`` reuses the base model, finished runs and finished
evaluation stages.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from recap.data.mixture import MixtureConfig
from recap.data.onpolicy import PrefillSourceConfig
from recap.eval.runner import EvalConfig
from recap.files import write_text
from recap.security import inside
from recap.threads import threads_for
from recap.eval.attacks import TOY_HCOT_FRAME
from recap.generation import SamplingConfig
from recap.toy import world
from recap.toy.model import PretrainConfig, ToyModelConfig
from recap.train import TrainConfig


def _toy_rl() -> TrainConfig:
    return TrainConfig(judge="toy", num_generations=8, prompts_per_step=8, max_steps=90, learning_rate=1e-4,
                       max_completion_length=48, save_steps=45, logging_steps=10, num_threads=1, use_cpu=True,
                       gradient_checkpointing=False)


def _toy_eval() -> EvalConfig:
    # The IPR transition in the world's own words (its reasonings join sentences with " ").
    return EvalConfig(prefill_words="8-30", ipr_rounds=3, samples_per_prompt=2, ipr_transition=world.IPR_TRANSITION,
                      ipr_separator=" ", sampling=SamplingConfig(temperature=1.0, max_new_tokens=64, batch_size=256))


# method -> (α of the mixture, prefill sources). Every method has the same RL budget.
METHODS = {
    "vanilla": (0.0, {"static": 1.0}),
    "recap": (None, {"static": 1.0}),  # None: the mixture's α
    "on_policy": (None, {"on_policy": 1.0}),
    "mixed": (None, {"static": 0.5, "on_policy": 0.5}),
}
COMPARE_ATTACKS = ["hcot", "prefill_unseen", "adaptive"]


@dataclass
class DemoConfig:
    """The miniature-world experiment. Sizes are the smallest that show an honest effect on 2 cores."""

    seeds: int = field(default=3, metadata={"help": "Number of RL/evaluation seeds (0..seeds-1)."})
    workers: int = field(default=2, metadata={"help": "Parallel worker processes (one torch thread each)."})
    model: ToyModelConfig = field(default_factory=ToyModelConfig, metadata={"help": "Size of the miniature model."})
    pretrain: PretrainConfig = field(default_factory=PretrainConfig, metadata={"help": "Supervised pre-training of the base."})
    mixture: MixtureConfig = field(
        default_factory=lambda: MixtureConfig(alpha=0.5, prefill_words="8-30", selection="exact"),
        metadata={"help": "RECAP mixture; ℓ is in words of the world (its reasonings are 10–30 words long). Exactly "
                          "round(α·n) prompts per kind are prefilled (not the paper's per-row draw): with ~90 safety "
                          "prompts a Bernoulli draw would give each seed a different number of prefills."})
    rl: TrainConfig = field(default_factory=_toy_rl, metadata={"help": "RL settings shared by vanilla DAPO and RECAP."})
    eval: EvalConfig = field(default_factory=_toy_eval, metadata={"help": "Evaluation settings."})
    methods: list[str] = field(default_factory=lambda: ["recap", "vanilla"], metadata={"help": f"RL methods trained and evaluated beside the base model, among {', '.join(METHODS)} (--compare: all of them)."})
    onpolicy: PrefillSourceConfig = field(default_factory=lambda: PrefillSourceConfig(buffer_size=256, per_example=2), metadata={"help": "Buffer settings of the on_policy and mixed methods (their weights come from the method)."})

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise ValueError(f"methods: unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")

    def compare(self) -> DemoConfig:
        """Every method, and the stronger attacks in the evaluation (``recap demo --compare``)."""
        attacks = [*self.eval.attacks, *[a for a in COMPARE_ATTACKS if a not in self.eval.attacks]]
        return replace(self, methods=list(METHODS),
                       eval=replace(self.eval, attacks=attacks, hcot_frame=self.eval.hcot_frame or TOY_HCOT_FRAME,
                                    adaptive_lengths=[6, 12, 20, 40]))

    @classmethod
    def quick(cls) -> DemoConfig:
        """A 1-seed pipeline check: every stage runs, the effect is not expected to show."""
        cfg = cls(seeds=1)
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


def _rl_job(method: str, seed: int, cfg: DemoConfig, out: str) -> str:
    """Train one method for one seed (skipped when already done), then evaluate it. Returns the store."""
    import torch

    _quiet_worker()

    from recap.data.mixture import build_mixture
    from recap.train import train
    from recap.toy.data import train_examples

    torch.set_num_threads(1)
    alpha, weights = METHODS[method]
    alpha = cfg.mixture.alpha if alpha is None else alpha
    examples = build_mixture(train_examples(seed=seed), replace(cfg.mixture, alpha=alpha, seed=seed))
    run_dir = inside(Path(out) / "runs", f"{method}-seed{seed}")
    rl = replace(cfg.rl, model=str(Path(out) / "base"), output_dir=str(run_dir), seed=seed,
                 prefill_sources=replace(cfg.onpolicy, weights=weights))
    final = train(rl, examples, log=lambda s: None)
    return _eval_job(method, seed, str(final), cfg, out)


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
    evaluate(model, tokenizer, examples, ToyJudge(), replace(cfg.eval, seed=seed), store,
             {"method": method, "seed": seed}, unseen=unseen_reasoning(examples, seed=0))
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
        runs = [json.loads(p.read_text()) for s in range(cfg.seeds)
                if (p := out / "runs" / f"{method}-seed{s}" / "prefix_buffer_stats.json").is_file()]
        if not runs:
            continue
        shares = []
        for r in runs:
            src = r["prefill_sources"]
            total = sum(src.values())
            shares.append(src.get("on_policy", 0) / total if total else 0.0)
        result[method] = {"size": _mean([r["size"] for r in runs]), "refresh_rate": _mean([r["refresh_rate"] for r in runs]),
                          "cut_rate": _mean([r["cut_rate"] for r in runs]),
                          "cut_fraction_mean": _mean([r["cut_fraction_mean"] for r in runs]),
                          "cut_step_mean": _mean([r["cut_step_mean"] for r in runs]),
                          "on_policy_share": _mean(shares), "evicted": _mean([r["evicted"] for r in runs]),
                          "seeds": len(runs)}
    return result


def run_demo(cfg: DemoConfig, out: str | Path, log=print) -> dict:
    """Run (or resume) the experiment into ``out`` and return the summary written to summary.json."""
    from recap.eval.store import ResultStore
    from recap.report import write_report
    from recap.toy.model import pretrain

    t0 = time.time()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = out / "base"
    stamp = {"model": asdict(cfg.model), "pretrain": asdict(cfg.pretrain)}
    stamp_file = out / "base_config.json"
    if (base / "config.json").exists() and stamp_file.exists():
        if json.loads(stamp_file.read_text()) != stamp:
            raise SystemExit(f"{out} holds a base model trained with other settings; use another --out")
        log(f"[demo] base model: reusing {base}")
    else:
        log(f"[demo] pre-training the base model ({cfg.pretrain.steps} steps)…")
        import torch

        # As many threads as there are idle cores now (two threads on one free core spin against each other).
        torch.set_num_threads(threads_for(cfg.workers))
        pretrain(cfg.pretrain, cfg.model, base, log=lambda s: log(f"[demo]   {s}"))
        write_text(stamp_file, json.dumps(stamp, indent=1))
    seeds = list(range(cfg.seeds))
    jobs = [("rl", m, s) for s in seeds for m in cfg.methods] + [("eval", "base", s) for s in seeds]
    log(f"[demo] {len(jobs)} jobs (RL + evaluation) on {cfg.workers} workers…")
    stores = []
    # Workers run one thread each: separate single-threaded processes share a busy machine fairly, unlike
    # the threads of one process, which wait for each other.
    with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {}
        for kind, method, seed in jobs:
            if kind == "rl":
                f = pool.submit(_rl_job, method, seed, cfg, str(out))
            else:
                f = pool.submit(_eval_job, method, seed, str(base), cfg, str(out))
            futures[f] = (method, seed)
        for done, f in enumerate(as_completed(futures), start=1):
            method, seed = futures[f]
            stores.append(f.result())
            log(f"[demo]   {done}/{len(jobs)} done: {method} seed {seed} ({time.time() - t0:.0f}s)")
    records = [r for p in sorted(stores) for r in ResultStore(p).records()]
    notes = [
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
        notes.append(f"On-policy methods: the buffer holds at most {cfg.onpolicy.buffer_size} prefixes "
                     f"({cfg.onpolicy.per_example} per prompt), refreshed every {cfg.onpolicy.refresh_every} step(s) "
                     "from the policy's unprefilled rollouts cut at their first unsafe sentence (exact judge); "
                     "slots with nothing stored yet get no prefill (on_policy) or a static one (mixed).")
        for method, b in buffers.items():
            notes.append(f"{method} buffer (mean over seeds): size {b['size']:.0f}, {b['refresh_rate']:.1f} prefixes "
                         f"added per step, {100 * b['cut_rate']:.0f}% of scanned rollouts cut, cut after "
                         f"{100 * b['cut_fraction_mean']:.0f}% of the reasoning (mean), on-policy share of prefills "
                         f"{100 * b['on_policy_share']:.0f}%.")
    summary = write_report(records, out, title="RECAP in the miniature world", notes=notes)
    summary = {"wall_seconds": round(time.time() - t0, 1), "peak_rss_mib": round(_peak_rss_mib(cfg.workers), 1),
               **({"onpolicy_buffers": buffers} if buffers else {}), **summary}
    write_text(out / "summary.json", json.dumps(summary, indent=1))
    log(f"[demo] done in {summary['wall_seconds']:.0f}s — report: {out / 'report.html'}")
    return summary
