"""Worker processes that end with their parent: a killed ``recap demo`` or experiment leaves no orphan behind.

``ProcessPoolExecutor`` workers outlive a parent killed by a signal: they finish the job in hand — an RL
run of an hour — and keep writing into the very folders a rerun resumes from, so the rerun and the orphan
train into one output. Workers of ``worker_pool`` watch their parent instead and exit within about a
second of its death (whatever they were writing is then torn, which resuming already handles: a torn
checkpoint is set aside, a torn results line is redone).

Ctrl-C reaches only the parent: the terminal sends SIGINT to every process of the foreground group, and a
worker (or the manager) would die of it with a traceback of its own, in the middle of the progress bars.
The workers ignore SIGINT from their first instruction on (they start with it blocked, then ignore it);
the parent stops them (``run_jobs`` ends its pool on any exception, the manager's ``with`` shuts it down).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from multiprocessing.context import SpawnContext, SpawnProcess
from multiprocessing.managers import SyncManager

POLL_S = 0.5  # how often a worker looks at its parent


class _Process(SpawnProcess):
    """A spawned process that starts with SIGINT blocked (a signal mask is inherited through fork and exec),
    so that a Ctrl-C in the instants before its initializer runs cannot kill it with a traceback. A SIGINT
    for the parent meanwhile waits and is delivered to it afterwards."""

    def start(self) -> None:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Context(SpawnContext):
    Process = _Process


_CONTEXT = _Context()


def _exit_with_parent(parent: int, poll_s: float) -> None:
    """Worker initializer: SIGINT ignored (the parent stops its workers), and a daemon thread that ends the
    process once its parent is gone (the worker is then re-parented, so ``getppid`` changes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def worker_pool(workers: int, poll_s: float = POLL_S) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` spawned processes that exit when this process dies."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=_CONTEXT,
        initializer=_exit_with_parent,
        initargs=(os.getpid(), poll_s),
    )


def worker_manager(poll_s: float = POLL_S) -> SyncManager:
    """A started ``multiprocessing`` manager (shared queues for progress) whose server process exits when
    this process dies. Use it as a context manager to shut it down."""
    manager = SyncManager(ctx=_CONTEXT)
    manager.start(_exit_with_parent, (os.getpid(), poll_s))
    return manager


@dataclass(frozen=True)
class Job:
    """One unit of work for ``run_jobs``: ``fn(*args)`` in a worker, started once the job named ``after``
    (if any) has finished."""

    name: str
    fn: Callable
    args: tuple = ()
    after: str | None = None


def run_jobs(
    jobs: Sequence[Job], workers: int, on_done: Callable[[Job, object, int, int], None] | None = None
) -> dict[str, object]:
    """Run ``jobs`` on a ``worker_pool`` of ``workers`` processes, in the given order except that a job waits
    for its ``after``; ``on_done(job, result, done, total)`` follows each finished one. Returns every job's
    result by name. A job's exception, or a KeyboardInterrupt, is raised here once the pool has ended: pending
    jobs are cancelled and running ones killed."""
    names = [j.name for j in jobs]
    if len(set(names)) != len(names):
        raise ValueError(f"run_jobs: job names repeat: {names}")
    unknown = [j.after for j in jobs if j.after is not None and j.after not in names]
    if unknown:
        raise ValueError(f"run_jobs: a job waits for {unknown[0]!r}, which is not a job")
    results: dict[str, object] = {}
    with worker_pool(workers) as pool:
        try:
            futures, waiting = {}, [j for j in jobs if j.after is not None]
            for j in jobs:
                if j.after is None:
                    futures[pool.submit(j.fn, *j.args)] = j
            while futures:
                finished, _ = wait(list(futures), return_when=FIRST_COMPLETED)
                for f in finished:
                    job = futures.pop(f)
                    results[job.name] = f.result()
                    if on_done is not None:
                        on_done(job, results[job.name], len(results), len(jobs))
                    for j in [j for j in waiting if j.after == job.name]:
                        waiting.remove(j)
                        futures[pool.submit(j.fn, *j.args)] = j
        except BaseException:
            _stop(pool)
            raise
    return results


def _stop(pool: ProcessPoolExecutor) -> None:
    """End ``pool`` now: pending jobs cancelled, running ones killed. (Its ``with`` would wait for the jobs in
    hand — an RL run of an hour — while they keep writing into the folders a rerun resumes.)"""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in processes:
        if p.is_alive():
            p.terminate()
    for p in processes:
        p.join(timeout=10)
