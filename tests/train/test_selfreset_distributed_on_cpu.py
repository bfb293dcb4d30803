"""Self-ReSET with re-rolls adding steps (``reroll_steps: add``) on two real processes (torchrun, gloo): the
run stops only once no rank has a fresh group of the planned steps left. Rank 0's cuts displace its fresh
groups past the plan while rank 1 has none: both ranks train the extra step together (rank 1 fills it from
the next pass of its data), stop at the same step with the same weights, and rank 0 trains every fresh group
of its plan once. Stopped after step 2's checkpoint and resumed, each rank gets its own queue and waiting
groups back and the run ends as the uninterrupted one (slow: -m slow)."""

from pathlib import Path

import pytest
from conftest import torchrun_two_ranks

pytestmark = pytest.mark.slow  # two processes, about a minute on 2 cores

WORKER = Path(__file__).parent / "helpers" / "ddp_selfreset_worker.py"
PLAN = 2


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return torchrun_two_ranks(WORKER, tmp_path_factory.mktemp("ddp-selfreset"), str(PLAN), "whole")


@pytest.fixture(scope="module")
def stopped_and_resumed(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp-selfreset-resume")
    stopped = torchrun_two_ranks(WORKER, out, str(PLAN), "stop")
    saved = sorted(p.name for p in (out / "run" / "checkpoint-2").glob("selfreset_queue*.json"))
    return stopped, saved, torchrun_two_ranks(WORKER, out, str(PLAN), "resume")  # logs of both parts


def _one(rows, event):
    (row,) = [r for r in rows if r["event"] == event]
    return row


def test_both_ranks_train_the_added_step_and_stop_together_with_the_same_weights(logs):
    done = {r: _one(logs[r], "done") for r in (0, 1)}
    assert done[0]["steps"] == done[1]["steps"] == PLAN + 1  # one step added for rank 0's displaced group
    assert done[0]["pending"] == done[1]["pending"] == 0
    sha = {r: {row["step"]: row["sha"] for row in logs[r] if row["event"] == "weights"} for r in (0, 1)}
    assert sha[0] == sha[1] and sorted(sha[0]) == list(range(1, PLAN + 2))


def test_rank_0_trains_each_fresh_group_once_and_rank_1_fills_the_added_step(logs):
    trained = {r: [g for row in logs[r] if row["event"] == "trained" for g in row["groups"]] for r in (0, 1)}
    sources = {r: [source for _, source in trained[r]] for r in (0, 1)}
    assert sources[0] == ["", "cut", ""]  # step 2: step 1's cut first; step 3: the displaced fresh group
    fresh0 = [i for i, source in trained[0] if source == ""]
    assert len(fresh0) == len(set(fresh0)) == PLAN
    assert sources[1] == [""] * (PLAN + 1)  # no cuts on rank 1: its third group is from the next pass
    assert _one(logs[1], "done")["counts"].get("overflow_groups") == 1
    assert not _one(logs[0], "done")["counts"].get("overflow_groups")
    planned = {i for r in (0, 1) for i, source in trained[r][:PLAN] if source == ""} | set(fresh0)
    assert planned == {f"h{i}" for i in range(2 * PLAN)}  # every prompt of the plan was trained
    stats = _one(logs[0], "stats")["stats"]
    assert stats["trained_steps"] == PLAN + 1 and stats["pending_fresh_groups"] == 0


def test_each_rank_saves_its_own_queue_and_resumes_to_the_uninterrupted_run(logs, stopped_and_resumed):
    stopped, saved, both = stopped_and_resumed
    assert saved == ["selfreset_queue.json", "selfreset_queue.rank1.json"]
    assert not [r for r in stopped[0] if r["event"] == "done" and r["steps"] != 2]
    done = {r: [row for row in both[r] if row["event"] == "done"][-1] for r in (0, 1)}
    assert done[0]["steps"] == done[1]["steps"] == PLAN + 1 and done[0]["pending"] == 0
    for r in (0, 1):  # the same groups in the same steps as the uninterrupted run, and the same weights
        trained = [g for row in both[r] if row["event"] == "trained" for g in row["groups"]]
        assert trained == [g for row in logs[r] if row["event"] == "trained" for g in row["groups"]]
        sha = {row["step"]: row["sha"] for row in both[r] if row["event"] == "weights"}
        assert sha == {row["step"]: row["sha"] for row in logs[r] if row["event"] == "weights"}
