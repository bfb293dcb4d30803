"""Workers of ``worker_pool`` and ``worker_manager`` exit when their parent is killed (SIGKILL: no handler
runs), instead of finishing an hour-long job as orphans and writing into the folders a rerun resumes."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from pathlib import Path

PARENT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from recap.util.processes import worker_manager, worker_pool

    def job(path):
        Path(path).write_text(str(os.getpid()))
        time.sleep(120)  # an RL run in hand

    if __name__ == "__main__":
        out = Path(sys.argv[1])
        manager = worker_manager(poll_s=0.1)
        (out / "manager").write_text(str(manager._process.pid))
        pool = worker_pool(1, poll_s=0.1)
        pool.submit(job, str(out / "worker"))
        time.sleep(120)
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its new parent) counts as gone
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _wait_for(path: Path, timeout: float = 60.0) -> int:
    end = time.time() + timeout
    while time.time() < end:
        if path.is_file() and path.read_text():
            return int(path.read_text())
        time.sleep(0.1)
    raise AssertionError(f"{path.name} never started")


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    try:
        worker, manager = _wait_for(tmp_path / "worker"), _wait_for(tmp_path / "manager")
        assert _alive(worker) and _alive(manager)
        time.sleep(0.5)
        assert _alive(worker) and _alive(manager)  # they run while the parent lives
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        end = time.time() + 10
        while time.time() < end and (_alive(worker) or _alive(manager)):
            time.sleep(0.1)
        assert not _alive(worker), "the pool worker outlived its killed parent"
        assert not _alive(manager), "the manager process outlived its killed parent"
    finally:
        parent.kill()
        for name in ("worker", "manager"):
            f = tmp_path / name
            if f.is_file() and f.read_text() and _alive(int(f.read_text())):
                os.kill(int(f.read_text()), signal.SIGKILL)


def _job_value(x):
    import os

    return x * 10, os.getpid()


def test_run_jobs_returns_results_by_name_and_starts_a_job_after_the_one_it_waits_for():
    from recap.util.processes import Job, run_jobs

    order = []
    jobs = [
        Job("b", _job_value, (2,), after="a"),
        Job("a", _job_value, (1,)),
        Job("c", _job_value, (3,)),
    ]
    results = run_jobs(jobs, 2, lambda job, result, done, total: order.append((job.name, done, total)))
    assert {k: v[0] for k, v in results.items()} == {"a": 10, "b": 20, "c": 30}
    assert [o[0] for o in order].index("a") < [o[0] for o in order].index("b")
    assert sorted(o[1] for o in order) == [1, 2, 3] and {o[2] for o in order} == {3}
    with pytest.raises(ValueError, match="waits for 'x'"):
        run_jobs([Job("a", _job_value, (1,), after="x")], 1)
    with pytest.raises(ValueError, match="names repeat"):
        run_jobs([Job("a", _job_value, (1,)), Job("a", _job_value, (2,))], 1)


INTERRUPTED = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from recap.util.processes import Job, run_jobs, worker_manager

    def job(path):
        Path(path).write_text(str(os.getpid()))
        time.sleep(600)  # an RL run in hand

    if __name__ == "__main__":
        out = Path(sys.argv[1])
        try:
            with worker_manager(poll_s=0.1) as manager:
                (out / "manager").write_text(str(manager._process.pid))
                run_jobs([Job("a", job, (str(out / "worker"),)), Job("b", job, (str(out / "other"),))], 1)
        except KeyboardInterrupt:
            print("stopped", flush=True)
    """
)


def test_ctrl_c_reaches_only_the_parent_which_stops_its_workers(tmp_path):
    """Ctrl-C sends SIGINT to the whole foreground process group. Before: each worker and the manager died of
    it with a traceback of its own, and the parent then waited at its pool's exit for the jobs in hand."""
    script = tmp_path / "parent.py"
    script.write_text(INTERRUPTED)
    parent = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
        # and SIGINT at its default, as a terminal's shell gives it: a test run started in the background
        # or under nohup ignores SIGINT, and a child inherits an ignored signal (Python then never raises
        # KeyboardInterrupt)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        worker, manager = _wait_for(tmp_path / "worker"), _wait_for(tmp_path / "manager")
        os.killpg(parent.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        # A hang guard, not a timing threshold: well under the 600 s of the job in hand, with room for a
        # loaded machine (30 s was exceeded with two test suites sharing 2 cores).
        out, err = parent.communicate(timeout=180)
        assert parent.returncode == 0 and out == "stopped\n", (out, err)
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
        assert not _alive(worker) and not _alive(manager)
        assert not (tmp_path / "other").exists()  # the pending job never started
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
        for name in ("worker", "manager"):
            f = tmp_path / name
            if f.is_file() and f.read_text() and _alive(int(f.read_text())):
                os.kill(int(f.read_text()), signal.SIGKILL)
