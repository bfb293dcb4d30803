"""Resuming a run: complete checkpoints (torn ones set aside), and the checks that a resumed run trains
what the first one trained (its config and the content hashes of its inputs)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from recap.data.examples import Example
from recap.train.config import TrainConfig, dynamic_prefills
from recap.train.distributed import world_size
from recap.train.trainer import PLANNER_STATE, SELFRESET_STATE, process_state_files, saved_processes

RESUME_MODES = ("auto", "must", "never")
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


def last_checkpoint(out: Path, log: Callable[[str], None] = print, require: tuple[str, ...] = ()) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``out`` (found by transformers' ``get_last_checkpoint``,
    numeric order). Newer incomplete ones (a kill or a full disk during a save) are renamed
    ``incomplete-checkpoint-N`` — kept for inspection, never loaded — and reported."""
    from transformers.trainer_utils import get_last_checkpoint

    while out.is_dir() and (found := get_last_checkpoint(str(out))) is not None:
        folder = Path(found)
        if checkpoint_complete(folder, require):
            return folder
        aside = folder.with_name(f"incomplete-{folder.name}")
        shutil.rmtree(aside, ignore_errors=True)
        folder.rename(aside)  # no longer named checkpoint-N: the next look finds the one before it
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
    given, secrets redacted (``recap.util.security``)."""
    from recap.util.security import redacted

    dump = asdict(cfg)
    if inputs is not None:
        dump["inputs"] = inputs
    return json.loads(json.dumps(redacted(dump)))


def _defaults(cls) -> dict:
    """The JSON dump of every field of ``cls`` that has a default (as ``config_dump`` writes it)."""
    import dataclasses

    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return json.loads(
        json.dumps(out, default=lambda x: dataclasses.asdict(x) if dataclasses.is_dataclass(x) else str(x))
    )


def check_same_run(cfg: TrainConfig, out: Path, inputs: dict | None = None) -> None:
    """A resumed run must train what the first run trained: compare its ``train_config.json`` with the
    same dump of ``cfg`` (redacted alike, so a secret in a field is no difference), then the content
    hashes of its inputs (``input_hashes``) with those it recorded."""
    saved_file = out / "train_config.json"
    if not saved_file.is_file():
        return
    saved, now = json.loads(saved_file.read_text(encoding="utf-8")), config_dump(cfg)
    # A field added to TrainConfig after the run was recorded is missing from its dump: the run trained
    # with that field's default, so only a value other than the default is a change.
    defaults = _defaults(type(cfg))
    for key in sorted((set(saved) | set(now)) - {"inputs"}):
        was = saved[key] if key in saved else defaults.get(key, saved.get(key))
        if key not in _RESUMABLE_CHANGES and was != now.get(key):
            raise ValueError(
                f"{saved_file}: field '{key}' was {was!r} in the run being resumed, now "
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


def finished_step(out: Path) -> int | None:
    """The step a finished run of ``out`` ended at (the last entry of its ``log_history.json``, written just
    before the final model); None when unknown."""
    try:
        history = json.loads((out / "log_history.json").read_text(encoding="utf-8"))
        return int(history[-1]["step"])
    except (OSError, ValueError, LookupError, TypeError):
        return None


def check_finished_length(out: Path, was, now) -> None:
    """A finished run asked for another ``max_steps`` is refused with one line that says how to go on. It is
    not extended: its checkpoints' learning-rate schedule (warm-up and decay over the old ``max_steps``)
    ended with the run, so training on from them would be a run that no config describes, and equal to
    neither the old run nor a run of the new ``max_steps``."""
    if was is None or was == now:
        return
    step = finished_step(out)
    at = f" at step {step}" if step is not None else ""
    raise ValueError(
        f"{out} holds a run that finished{at} (max_steps {was}); max_steps is now {now}: to train further, "
        f"start a new run from its final model (model: {out / 'final'}) in another output_dir, or set "
        f"max_steps back to {was}"
    )


def check_processes(out: Path, names: tuple[str, ...], processes: int) -> None:
    """Refuse to resume, with a ``ValueError`` naming the file, when the newest checkpoint that holds process
    0's state files (``names``) was saved by a run of another number of processes: each process's on-policy
    buffer and re-roll queue belong to its share of the data. Checked before torn checkpoints are set aside,
    so that a checkpoint of another number of processes is never mistaken for a torn one."""
    if not names or not out.is_dir():
        return
    folders = sorted(
        (f for f in out.iterdir() if _CHECKPOINT.match(f.name) and f.is_dir()),
        key=lambda f: int(_CHECKPOINT.match(f.name).group(1)),
        reverse=True,
    )
    for folder in folders:
        if checkpoint_complete(folder, names):
            saved = saved_processes(folder / names[0])
            if saved != processes:
                raise ValueError(
                    f"{folder / names[0]}: saved by a run of {saved} process(es); this one has {processes}: "
                    f"resume it with {saved}, or start a new run in another output_dir"
                )
            return


def resume_point(cfg: TrainConfig, out: Path, inputs: dict, log: Callable[[str], None]) -> Path | None:
    """Where the run starts (the checkpoint to resume, None: step 0), or a ``ValueError`` saying why it
    may not. Torn checkpoints are set aside first, so they never decide: an earlier run that left no
    complete checkpoint restarts from step 0 (when it trained the same thing) instead of being a dead
    end."""
    # A checkpoint whose on-policy buffer or Self-ReSET queue was not written (by every process: each keeps its
    # own) is torn: resuming without it would train on other data than an uninterrupted run.
    processes = world_size()
    names = ((PLANNER_STATE,) if dynamic_prefills(cfg) else ()) + ((SELFRESET_STATE,) if cfg.self_reset else ())
    check_processes(out, names, processes)
    ckpt = last_checkpoint(out, log, require=tuple(f for n in names for f in process_state_files(n, processes)))
    torn = sorted(p.name for p in out.glob("incomplete-checkpoint-*")) if out.is_dir() else []
    if ckpt is not None:
        if cfg.resume == "never":
            raise ValueError(
                f"{out} holds checkpoints of an earlier run (last complete: {ckpt.name}); pass "
                "--resume to continue it, or choose another output_dir"
            )
        check_same_run(cfg, out, inputs)
        log(f"resuming from {ckpt}")
        return ckpt
    started = (out / "train_config.json").is_file()
    if cfg.resume == "must" and not started and not torn:
        raise ValueError(f"{out}: no complete checkpoint to resume from; run without --resume to start")
    if torn or cfg.resume == "must":  # an earlier run of this output_dir trained (or is to be continued)
        check_same_run(cfg, out, inputs)
        left = f"left only incomplete checkpoints ({', '.join(torn)})" if torn else "saved no checkpoint"
        log(f"{out}: the earlier run of this config {left}; starting from step 0")
    return None
