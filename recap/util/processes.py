"""Worker processes that end with their parent: a killed ``recap demo`` or experiment leaves no orphan behind.

``ProcessPoolExecutor`` workers outlive a parent killed by a signal: they finish the job in hand — an RL
run of an hour — and keep writing into the very folders a rerun resumes from, so the rerun and the orphan
train into one output. Workers of ``worker_pool`` watch their parent instead and exit within about a
second of its death (whatever they were writing is then torn, which resuming already handles: a torn
checkpoint is set aside, a torn results line is redone).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.managers import SyncManager

POLL_S = 0.5  # how often a worker looks at its parent


def _exit_with_parent(parent: int, poll_s: float) -> None:
    """Worker initializer: a daemon thread that ends the process once its parent is gone (the worker is
    then re-parented, so ``getppid`` changes)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def worker_pool(workers: int, poll_s: float = POLL_S) -> ProcessPoolExecutor:
    """A ``ProcessPoolExecutor`` of ``workers`` spawned processes that exit when this process dies."""
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=_exit_with_parent,
        initargs=(os.getpid(), poll_s),
    )


def worker_manager(poll_s: float = POLL_S) -> SyncManager:
    """A started ``multiprocessing`` manager (shared queues for progress) whose server process exits when
    this process dies. Use it as a context manager to shut it down."""
    manager = SyncManager(ctx=mp.get_context("spawn"))
    manager.start(_exit_with_parent, (os.getpid(), poll_s))
    return manager
