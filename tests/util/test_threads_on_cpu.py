"""Thread sizing (recap/util/threads.py): threads follow the idle cores, never the machine's core count."""

import pytest

import recap.util.threads as threads


@pytest.fixture
def machine(monkeypatch):
    """A 2-core machine whose /proc/stat advances by ``busy`` busy cores over each sampling window."""
    state = {"busy": 0.0, "t": [0, 0]}

    def fake_times():
        idle, total = state["t"]
        state["t"] = [idle + int(100 * (2 - state["busy"])), total + 200]
        return idle, total

    monkeypatch.setattr(threads, "_cpu_times", fake_times)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    return state


@pytest.mark.parametrize(
    "busy, idle, wanted, expected",
    [
        (0.0, 2.0, 2, 2),  # idle machine: both cores
        (1.0, 1.0, 2, 1),  # one core busy with another process: one thread, not two fighting for one core
        (2.0, 0.0, 2, 1),  # fully busy: still one
        (0.0, 2.0, 1, 1),  # never more than asked
        (0.4, 1.6, 2, 2),  # a lightly loaded core still counts
    ],
)
def test_threads_follow_the_idle_cores(machine, busy, idle, wanted, expected):
    machine["busy"] = busy
    assert threads.idle_cores(window=0) == pytest.approx(idle)
    machine["busy"] = busy
    assert threads.threads_for(wanted, window=0) == expected


def test_real_proc_stat_gives_a_count_within_the_cores():
    assert 0.0 <= threads.idle_cores(window=0.05) <= threads.cores()
    assert 1 <= threads.threads_for(64, window=0.05) <= threads.cores()
