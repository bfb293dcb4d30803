"""Real `recap` processes killed with SIGKILL mid-run.

* `recap train --resume` finishes a killed run with the same weights and the same per-step log as a run
  that was never killed (weights, optimizer, scheduler, RNG and data position all come back); a
  checkpoint cut off while being saved is set aside, not loaded.
* A run killed while it writes its *first* checkpoint, or whose disk fills up during it, is no dead end:
  `recap train` (with or without --resume) sets the torn checkpoint aside and starts again from step 0,
  ending with the same weights as a run that was never interrupted; a full disk is one `error:` line.
* `recap eval` rerun after a kill keeps every stored result, redoes only the chunk in flight (and a torn
  last line), and ends with the same results as an uninterrupted evaluation."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
import yaml
from conftest import require
from safetensors.torch import load_file

from recap.data.examples import write_examples
from recap.data.mixture import MixtureConfig, build_mixture
from recap.toy.data import train_examples
from recap.toy.model import ToyModelConfig, build_model, build_tokenizer

pytestmark = pytest.mark.slow
TINY = ToyModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
STEPS = 12


def _recap(*args, hang_at=None, **kw):
    """A real `recap` process. ``hang_at=(file, mark)``: when the process starts writing ``file`` (a path
    ending, e.g. ``checkpoint-1/optimizer.pt``) with torch.save, it writes half of it, touches ``mark`` and
    waits there to be killed — a kill in the middle of a checkpoint, at a moment the test controls."""
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    if hang_at is None:
        return subprocess.Popen(
            [sys.executable, "-m", "recap.cli", *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            **kw,
        )
    hook = (
        f"import pathlib, runpy, sys, time, torch\nreal = torch.save\n"
        f"def save(obj, f, *a, **kw):\n"
        f"    if str(f).endswith({hang_at[0]!r}):\n"
        f"        pathlib.Path(f).write_bytes(b'PK\\x03\\x04')\n"
        f"        pathlib.Path({str(hang_at[1])!r}).touch()\n"
        f"        time.sleep(600)\n"
        f"    return real(obj, f, *a, **kw)\n"
        f"torch.save = save\nsys.argv = ['recap', *{list(args)!r}]\n"
        f"runpy.run_module('recap.cli', run_name='__main__')\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", hook], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    tok = build_tokenizer()
    model = build_model(tok, TINY, seed=0)
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    mix = build_mixture(train_examples(seed=0)[:40], replace(MixtureConfig(alpha=0.5, prefill_words="4-8"), seed=0))
    write_examples(root / "mix.jsonl", mix)
    cfg = dict(
        model=str(root / "base"),
        train_file=str(root / "mix.jsonl"),
        judge="toy",
        num_generations=4,
        prompts_per_step=2,
        max_steps=STEPS,
        learning_rate=1e-2,
        max_completion_length=8,
        save_steps=1,
        logging_steps=1,
        use_cpu=True,
        gradient_checkpointing=False,
        num_threads=1,
        seed=0,
        temperature=1.0,
    )
    return root, cfg


def _config(root, cfg, name):
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(dict(cfg, output_dir=str(root / name))))
    return path


def _steps(log_history):
    return [(h["step"], round(h["loss"], 6), round(h.get("reward", 0.0), 6)) for h in log_history if "loss" in h]


@pytest.fixture(scope="module")
def whole(setup):
    """The uninterrupted run every interrupted one must end up equal to."""
    root, cfg = setup
    proc = _recap("train", "--config", str(_config(root, cfg, "whole")))
    assert proc.wait(timeout=600) == 0, proc.stdout.read()
    return root / "whole"


def _same_run(a, b):
    """The two runs' final weights are bit-identical and their per-step logs (loss, reward) equal."""
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    history_a = json.loads((a / "log_history.json").read_text())
    history_b = json.loads((b / "log_history.json").read_text())
    assert _steps(history_b) == _steps(history_a) and len(_steps(history_a)) == STEPS


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(setup, whole):
    root, cfg = setup

    killed_dir = root / "killed"
    proc = _recap("train", "--config", str(_config(root, cfg, "killed")))
    deadline = time.time() + 600
    while not (killed_dir / "checkpoint-3" / "trainer_state.json").exists():
        assert proc.poll() is None and time.time() < deadline, "training ended before it could be killed"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed_dir / "final").exists()
    done = sorted(int(p.name.split("-")[1]) for p in killed_dir.glob("checkpoint-*"))
    assert done and max(done) < STEPS
    # A kill during the next save: a checkpoint folder with weights but no trainer state.
    torn = killed_dir / f"checkpoint-{max(done) + 1}"
    shutil.rmtree(torn, ignore_errors=True)
    torn.mkdir()
    shutil.copy(killed_dir / f"checkpoint-{max(done)}" / "model.safetensors", torn / "model.safetensors")

    again = _recap("train", "--config", str(_config(root, cfg, "killed")))  # without --resume: refused
    assert again.wait(timeout=300) == 2
    message = again.stdout.read()
    assert "holds checkpoints of an earlier run" in message and "--resume" in message
    # The torn checkpoint was set aside first (and said so), whatever is decided next.
    assert f"incomplete-checkpoint-{max(done) + 1}" in message
    assert (killed_dir / f"incomplete-checkpoint-{max(done) + 1}").is_dir()

    resumed = _recap("train", "--config", str(_config(root, cfg, "killed")), "--resume")
    assert resumed.wait(timeout=600) == 0
    out = resumed.stdout.read()
    assert f"resuming from {killed_dir / f'checkpoint-{max(done)}'}" in out
    _same_run(whole, killed_dir)


@pytest.mark.parametrize("resume", [["--resume"], []], ids=["with --resume", "without --resume"])
def test_sigkill_during_the_first_checkpoint_starts_again_from_step_0(setup, whole, resume):
    root, cfg = setup
    name = f"first{len(resume)}"
    run, mark = root / name, root / f"{name}.saving"
    proc = _recap("train", "--config", str(_config(root, cfg, name)), hang_at=("checkpoint-1/optimizer.pt", mark))
    deadline = time.time() + 600
    while not mark.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "checkpoint-1" / "trainer_state.json").exists() and not (run / "final").exists()  # torn

    other = _recap("train", "--config", str(_config(root, dict(cfg, learning_rate=0.5), name)), *resume)
    assert other.wait(timeout=300) == 2  # another config in the same folder is still refused, naming the field
    message = other.stdout.read()
    assert "field 'learning_rate' was 0.01 in the run being resumed, now 0.5" in message
    assert "incomplete-checkpoint-1" in message and (run / "incomplete-checkpoint-1").is_dir()

    again = _recap("train", "--config", str(_config(root, cfg, name)), *resume)  # no cleanup by hand
    assert again.wait(timeout=600) == 0
    assert "starting from step 0" in again.stdout.read()
    _same_run(whole, run)


@pytest.fixture
def tiny_disk(setup):
    """A 128 KiB tmpfs: room for the run's config, not for its first checkpoint (root only)."""
    root, _ = setup
    disk = root / "disk"
    disk.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128k", "tmpfs", str(disk)], capture_output=True).returncode:
        require(False, "cannot mount a tmpfs here (needs root)")  # a failure in CI, a skip elsewhere
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_during_a_checkpoint_is_one_error_then_resume_completes(setup, whole, tiny_disk):
    root, cfg = setup
    run = tiny_disk / "run"
    conf = root / "disk.yaml"
    conf.write_text(yaml.safe_dump(dict(cfg, output_dir=str(run))))
    full = _recap("train", "--config", str(conf))
    assert full.wait(timeout=600) == 2
    out = full.stdout.read()
    errors = [line for line in out.splitlines() if "error" in line.lower()]  # progress logs aside, one message
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot write checkpoint {run / 'checkpoint-1'}: "), out
    assert "recap train --resume" in errors[0] and "Traceback" not in out

    subprocess.run(["mount", "-o", "remount,size=8m", str(tiny_disk)], check=True)  # the user makes room
    resumed = _recap("train", "--config", str(conf), "--resume")
    assert resumed.wait(timeout=600) == 0
    assert "starting from step 0" in resumed.stdout.read() and (run / "incomplete-checkpoint-1").is_dir()
    _same_run(whole, run)


def test_sigkill_during_evaluation_loses_only_the_chunk_in_flight(setup):
    root, _ = setup
    from recap.toy.data import eval_examples

    write_examples(root / "eval.jsonl", eval_examples(seed=0))
    conf = root / "eval.yaml"
    conf.write_text(
        yaml.safe_dump(
            {
                "attacks": ["clean", "prefill", "ipr"],
                "ipr_rounds": 2,
                "chunk_size": 2,
                "prefill_words": "8-30",
                "samples_per_prompt": 2,
                "sampling": {"max_new_tokens": 12, "temperature": 1.0},
            }
        )
    )

    def run(results):
        return _recap(
            "eval",
            "--model",
            str(root / "base"),
            "--data",
            str(root / "eval.jsonl"),
            "--results",
            str(results),
            "--judge",
            "toy",
            "--engine",
            "hf",
            "--config",
            str(conf),
            "--name",
            "base",
        )

    whole = run(root / "whole.jsonl")
    assert whole.wait(timeout=600) == 0, whole.stdout.read()
    path = root / "killed.jsonl"
    proc = run(path)
    deadline = time.time() + 600
    while not path.exists() or path.read_bytes().count(b"\n") < 20:
        assert proc.poll() is None and time.time() < deadline, "evaluation ended before it could be killed"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kept = path.read_bytes()
    n_whole = (root / "whole.jsonl").read_bytes().count(b"\n")
    assert 20 <= kept.count(b"\n") < n_whole
    path.write_bytes(kept[: kept.rstrip(b"\n").rfind(b"\n") + 40])  # and a torn last line, as if cut mid-write

    again = run(path)
    assert again.wait(timeout=600) == 0
    assert "truncated last line" in again.stdout.read()

    def results(p):
        rows = [json.loads(line) for line in p.read_text().splitlines()]
        return {r["key"]: (r["prompt_text"], r["completion"], r["label"]) for r in rows}

    final, reference = results(path), results(root / "whole.jsonl")
    assert final == reference  # nothing lost, nothing different
    assert path.read_text().count("\n") - len(final) <= 2  # at most the chunk in flight was written twice
