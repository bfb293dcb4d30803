"""``train(cfg)``: one RECAP (or vanilla DAPO) run from its config to the saved final model — resume,
checkpoint write failures, the training log and progress."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from recap.data.examples import Example
from recap.train.build import build_trainer
from recap.train.config import TrainConfig, with_epochs
from recap.train.distributed import broadcast_checkpoint, world_size
from recap.train.resume import (
    RESUME_MODES,
    check_finished_length,
    check_same_run,
    config_dump,
    finished_step,
    input_hashes,
    resume_point,
)
from recap.train.trainer import RecapTrainer


def _stop_on_write_failures(trainer: RecapTrainer, out: Path) -> None:
    """A checkpoint that cannot be written (a full or read-only disk) stops the run with one ``OSError``
    naming it, instead of torch's two chained ``RuntimeError``s that name no file."""
    from recap.util.files import write_failure

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


def _train_log_callback(path: Path, progress: Callable[[int, int, dict], None] | None, planned: int):
    """A ``TrainerCallback`` that appends every log of the run to ``path`` (instead of printing TRL's dicts)
    and tells ``progress(step, total, latest logs)`` after every optimizer step: ``total`` is the ``planned``
    steps (``max_steps``), or the step itself once Self-ReSET's re-rolls add steps beyond them (TRL's own
    ``max_steps`` is then only a limit)."""
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
                progress(state.global_step, max(planned, state.global_step), self.latest)

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
    model, which is written whole or not at all; a finished run is returned as is only when it is the run
    of this config (fields, input hashes and ``max_steps``: otherwise a ``ValueError`` says what differs and
    how to go on, ``check_finished_length``). TRL's log dicts go to ``output_dir/train_log.jsonl``,
    not to the terminal; ``progress(step, max_steps, latest logs)`` follows every step. One run at a
    time per ``output_dir``: another process training into it gets an error naming its PID."""
    from recap.util.locks import output_lock

    main = int(os.environ.get("RANK", "0")) == 0  # the ranks of one distributed run share the folder
    with output_lock(cfg.output_dir, "this training output_dir", folder=True) if main else contextlib.nullcontext():
        return _train(cfg, examples, log, progress)


def _train(cfg: TrainConfig, examples, log, progress) -> Path:
    from recap.util.files import atomic_dir, write_text

    if cfg.resume not in RESUME_MODES:
        raise ValueError(f"resume must be one of {', '.join(RESUME_MODES)}, got {cfg.resume!r}")
    if cfg.epochs is not None:  # the run's length in steps, from the training set's size
        from recap.data.examples import read_examples

        cfg = with_epochs(cfg, len(examples) if examples is not None else len(read_examples(cfg.train_file)))
    out = Path(cfg.output_dir)
    final = out / "final"
    if (final / "config.json").exists():
        if cfg.resume == "never":
            raise ValueError(f"{out} already holds a finished run ({final}); choose another output_dir")
        # The finished run must be this config's run, as for an unfinished one: same fields, same inputs
        # (training file, judge files), same max_steps; otherwise one line says what differs.
        check_same_run(cfg, out, input_hashes(cfg, examples))
        saved = out / "train_config.json"
        was = json.loads(saved.read_text(encoding="utf-8")).get("max_steps") if saved.is_file() else None
        check_finished_length(out, was, cfg.max_steps)
        step = finished_step(out)
        log(f"{out}: the run finished{'' if step is None else f' at step {step}'}; nothing left to train")
        return final
    accelerator_main = int(os.environ.get("RANK", "0")) == 0
    ckpt, problem, inputs = None, None, {}
    if accelerator_main:  # one process looks at (and tidies) output_dir; the others follow its decision
        inputs = input_hashes(cfg, examples)
        try:
            ckpt = resume_point(cfg, out, inputs, log)
        except ValueError as e:
            problem = str(e)
    if world_size() > 1:
        ckpt, problem = broadcast_checkpoint(ckpt, problem)
    if problem is not None:
        raise ValueError(problem)
    if ckpt is None and accelerator_main:
        write_text(out / "train_config.json", json.dumps(config_dump(cfg, inputs), indent=1))
    if cfg.report_to not in ("none", ""):
        log(f"reporting scalar metrics to {cfg.report_to}; completions and prompts are not sent (log_completions off)")
    trainer = build_trainer(cfg, examples)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # the logs go to train_log.jsonl (and to `progress`) instead
    trainer.add_callback(_train_log_callback(out / TRAIN_LOG, progress, cfg.max_steps))
    _stop_on_write_failures(trainer, out)
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
