"""Dynamic sampling with two real processes on CPU (torchrun, gloo): every rank runs the same number of
generation rounds (while any rank is short of groups with signal), each fills its own share, the weights
stay identical, and the logged effective batch size and extra rounds are the run's (slow: -m slow)."""

import json
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import torchrun_two_ranks

pytestmark = pytest.mark.slow  # two processes, ~40 s on 2 cores

WORKER = Path(__file__).parent / "helpers" / "ddp_dynamic_worker.py"
STEPS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-dynamic")
    logs = torchrun_two_ranks(WORKER, out, str(STEPS))
    history = [h for h in json.loads((out / "run" / "log_history.json").read_text()) if "step" in h and "loss" in h]
    return logs, history


def _rounds(rows):
    out = defaultdict(list)
    for row in rows:
        if row["event"] == "round":
            out[row["step"]].append(row)
    return out


def test_ranks_run_the_same_rounds_and_fill_their_own_share(run):
    logs, history = run
    rounds = {r: _rounds(logs[r]) for r in (0, 1)}
    assert sorted(rounds[0]) == sorted(rounds[1]) == list(range(1, STEPS + 1))
    by_step = {h["step"]: h for h in history}
    refilled = 0
    for step in range(1, STEPS + 1):
        a, b = rounds[0][step], rounds[1][step]
        assert len(a) == len(b) and all(x["groups"] == 2 for x in a + b)  # lockstep, whole groups per rank
        signal = [min(2, sum(x["signal"] for x in rs)) for rs in (a, b)]
        short_before_last = [sum(x["signal"] for x in rs[:-1]) < 2 for rs in (a, b)]
        assert len(a) == 1 or any(short_before_last)  # a round runs only while some rank is short
        assert by_step[step]["dynamic_sampling/extra_rounds"] == len(a) - 1
        assert by_step[step]["dynamic_sampling/effective_batch_size"] == sum(signal)
        refilled += len(a) > 1
    assert refilled  # the scripted rewards leave ranks short: refill happened


def test_weights_stay_identical_on_both_ranks(run):
    logs, _ = run
    sha = {r: {row["step"]: row["sha"] for row in logs[r] if row["event"] == "weights"} for r in (0, 1)}
    assert sha[0] == sha[1] and sorted(sha[0]) == list(range(1, STEPS + 1))
