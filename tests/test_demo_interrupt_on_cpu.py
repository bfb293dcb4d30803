"""Ctrl-C during `recap demo`: one line, exit status 130, no traceback from the workers, the progress manager or
its reader thread; the rerun resumes, and summary.json's wall time covers both parts. A demo shrunk to seconds
(5 pre-training steps, one method, one worker, clean prompts only)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from recap.cli import INTERRUPTED
from recap.demo import WALL_TIME, _WallClock

TINY = [
    *("--set", "pretrain.steps=5", "--set", "rl.max_steps=12", "--set", "rl.save_steps=2"),
    *("--set", "eval.attacks=[clean]", "--set", "eval.sampling.max_new_tokens=8"),
    *("--set", "methods=[recap]", "--set", "workers=1"),
]


def _demo(out):
    # A subprocess in its own process group (as a shell runs a command): Ctrl-C signals the whole group.
    return subprocess.Popen(
        [sys.executable, "-m", "recap.cli", "demo", "--quick", "--out", str(out), *TINY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _interrupted(out) -> float:
    """Run the tiny demo into ``out``, Ctrl-C it once RL has saved a checkpoint, check what it printed, and
    return the seconds it recorded for that part."""
    proc = _demo(out)
    try:
        deadline = time.time() + 120
        while not (out / "runs" / "recap-seed0" / "checkpoint-2").is_dir():  # RL is running in a worker
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, (stdout, stderr)
    for text in (stdout, stderr):
        assert "Traceback" not in text and "KeyboardInterrupt" not in text and "Exception" not in text, text
    assert stderr.count(INTERRUPTED) == 1 and stderr.rstrip("\n").splitlines()[-1] == INTERRUPTED, stderr
    assert INTERRUPTED not in stdout
    (first,) = json.loads((out / WALL_TIME).read_text())["parts"]
    assert first > 0
    return first


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    """Before: the worker and the manager's reader thread each printed a traceback into the progress bars."""
    _interrupted(tmp_path / "demo")


@pytest.mark.slow
def test_the_rerun_of_an_interrupted_demo_resumes_and_its_wall_time_covers_both_parts(tmp_path):
    """Before: wall_seconds covered only the last part (about 35 s: two starts of the tiny demo)."""
    out = tmp_path / "demo"
    first = _interrupted(out)
    rerun = _demo(out)
    stdout, stderr = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, stdout + stderr
    assert "base model: reusing" in stdout
    summary = json.loads((out / "summary.json").read_text())
    parts = summary["wall_seconds_parts"]
    assert len(parts) == 2 and parts[0] == first and parts[1] > 0
    assert summary["wall_seconds"] == round(sum(parts), 1)


def test_the_wall_clock_adds_the_parts_before_it(tmp_path):
    clock = _WallClock(tmp_path)
    clock.t0 -= 10
    clock.save()
    again = _WallClock(tmp_path)
    again.t0 -= 5
    assert [round(x) for x in again.parts()] == [10, 5]
    (tmp_path / WALL_TIME).write_text("{torn")
    assert len(_WallClock(tmp_path).parts()) == 1  # an unreadable file: this part only
