"""Data-parallel RECAP training with two real processes on CPU (torchrun, gloo): prompts are sharded
without duplicates, every rank holds the same weights after every optimizer step, rewards from both
ranks make the logged metrics, and the checkpoint and final model are written once."""

import json
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import torchrun_two_ranks
from safetensors.torch import load_file

WORKER = Path(__file__).parent / "helpers" / "ddp_worker.py"
STEPS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    logs = torchrun_two_ranks(WORKER, out, str(STEPS))
    return out, logs


def _by_step(rows, event, key):
    out = defaultdict(list)
    for row in rows:
        if row["event"] == event:
            out[row["step"]] += row[key] if isinstance(row[key], list) else [row[key]]
    return out


def test_each_rank_gets_its_own_prompts(run):
    _, logs = run
    ids = {r: _by_step(logs[r], "prompts", "ids") for r in (0, 1)}
    assert sorted(ids[0]) == sorted(ids[1]) == list(range(1, STEPS + 1))
    seen = set()
    for step in range(1, STEPS + 1):
        a, b = set(ids[0][step]), set(ids[1][step])
        assert a and b and not a & b, f"step {step}: ranks share prompts {a & b}"
        assert len(ids[0][step]) == len(ids[1][step]) == 8  # 2 prompts × 4 rollouts on each rank
        assert all(ids[r][step].count(i) == 4 for r in (0, 1) for i in set(ids[r][step]))  # whole groups
        assert not (a | b) & seen  # no prompt twice in the epoch
        seen |= a | b


def test_weights_are_identical_on_both_ranks_after_every_step(run):
    _, logs = run
    sha = {r: _by_step(logs[r], "weights", "sha") for r in (0, 1)}
    assert list(sha[0]) == list(range(1, STEPS + 1))
    for step in sha[0]:
        assert sha[0][step] == sha[1][step], f"weights differ after step {step}"
    assert len({s[0] for s in sha[0].values()}) == STEPS  # and they changed every step


def test_logged_rewards_are_gathered_from_both_ranks(run):
    out, logs = run
    rewards = {r: _by_step(logs[r], "rewards", "values") for r in (0, 1)}
    history = {h["step"]: h for h in json.loads((out / "run" / "log_history.json").read_text()) if "reward" in h}
    for step in range(1, STEPS + 1):
        both = rewards[0][step] + rewards[1][step]
        assert len(both) == 16
        assert history[step]["reward"] == pytest.approx(sum(both) / len(both), abs=1e-6)
        local = sum(rewards[0][step]) / 8
        if local != sum(both) / 16:  # the logged number is not rank 0's alone
            assert history[step]["reward"] != pytest.approx(local)


def test_one_checkpoint_and_one_final_model(run):
    out, logs = run
    run_dir = out / "run"
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("checkpoint-")) == [f"checkpoint-{STEPS}"]
    final = load_file(run_dir / "final" / "model.safetensors")
    ckpt = load_file(run_dir / f"checkpoint-{STEPS}" / "model.safetensors")
    assert final.keys() == ckpt.keys() and all((final[k] == ckpt[k]).all() for k in final)
    assert [r["final"] for r in logs[0] + logs[1] if r["event"] == "done"] == [str(run_dir / "final")] * 2


def test_both_ranks_trained_with_the_shared_prefix_loss_pass(run):
    """The default shared-prefix pass ran in the data-parallel run (its first-forward check passed on both
    ranks at once), and the identical weights above are its weights."""
    out, _ = run
    history = json.loads((out / "run" / "log_history.json").read_text())
    active = [h["shared_prefix/active"] for h in history if "shared_prefix/active" in h]
    read = [h["shared_prefix/read_fraction"] for h in history if "shared_prefix/read_fraction" in h]
    assert active == [1.0] and len(read) == STEPS and max(read) < 1
