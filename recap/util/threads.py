"""How many CPU threads a job should use: the cores that are idle now, not the cores the machine has.

torch (OpenMP) threads spin while they wait for each other. Two threads on a machine where one of the
two cores is busy with another process therefore run far slower than one thread (we measured a
supervised pre-training 8× slower, not 2×). ``idle_cores`` samples ``/proc/stat`` for a moment and
returns how many of this process's cores were idle; ``threads_for`` turns it into a thread count.
"""

from __future__ import annotations

import os
import time


def _cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies summed over all CPUs, from /proc/stat (None where it does not exist)."""
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values[:8])


def cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def idle_cores(window: float = 0.3) -> float:
    """How many of this process's cores were idle during ``window`` seconds (between 0 and ``cores()``)."""
    n = cores()
    first = _cpu_times()
    if first is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        return max(0.0, n - load)
    time.sleep(window)
    second = _cpu_times()
    idle, total = second[0] - first[0], second[1] - first[1]
    machine = os.cpu_count() or n
    return max(0.0, min(float(n), machine * idle / total)) if total > 0 else float(n)


def threads_for(wanted: int, window: float = 0.3) -> int:
    """Threads for a job that would like ``wanted``: at most the cores idle now, at least 1."""
    return max(1, min(wanted, int(idle_cores(window) + 0.5)))
