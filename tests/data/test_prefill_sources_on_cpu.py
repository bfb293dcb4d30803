"""Where each step's prefills come from (recap/data/prefill_sources.py): the source config, the draw of
static or on-policy prefills, and the PrefillPlanner's per-step prefills and harvesting."""

import json as _json
import random

import pytest

from recap.data.onpolicy import BufferEntry, PrefixBuffer, step_judge_for
from recap.data.prefill_sources import PrefillPlanner, PrefillSourceConfig, choose_source, pick_prefill
from recap.data.schedules import LengthSchedule


def _e(example_id, prefix, kind="harmful", step=0, n_steps=2):
    return BufferEntry(example_id, kind, prefix, step, n_steps)


# --------------------------------------------------------------------------------------------
# Source of the prefill
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "weights, match",
    [
        ({"static": 1.0, "offline": 1.0}, "unknown prefill source"),
        ({"static": -1.0, "on_policy": 2.0}, "non-negative"),
        ({"static": 0.0, "on_policy": 0.0}, "positive weight"),
        ({}, "positive weight"),
    ],
)
def test_source_config_validates_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        PrefillSourceConfig(weights=weights)


@pytest.mark.parametrize("name", ["buffer_size", "per_example", "refresh_every"])
def test_source_config_validates_sizes(name):
    with pytest.raises(ValueError, match=name):
        PrefillSourceConfig(**{name: 0})


def test_static_only_never_touches_the_rng_or_the_buffer():
    cfg = PrefillSourceConfig()
    rng = random.Random(1)
    state = rng.getstate()
    assert pick_prefill(cfg, "a", "harmful", "static text", None, rng) == ("static text", "static")
    assert pick_prefill(cfg, "a", "harmful", None, None, rng) == (None, "static")
    assert rng.getstate() == state


def test_on_policy_falls_back_to_static_when_the_buffer_has_nothing_of_the_kind():
    cfg = PrefillSourceConfig(weights={"on_policy": 1.0})
    buf = PrefixBuffer(4)
    buf.add([_e("b", "benign prefix", kind="benign")], step=0)
    rng = random.Random(0)
    assert pick_prefill(cfg, "a", "harmful", "static text", buf, rng) == ("static text", "static(fallback)")
    assert pick_prefill(cfg, "a", "harmful", "static text", None, rng) == ("static text", "static(fallback)")
    assert pick_prefill(cfg, "c", "benign", "static text", buf, rng) == ("benign prefix", "on_policy")


def test_mixed_weights_draw_sources_at_their_frequencies():
    cfg = PrefillSourceConfig(weights={"static": 1.0, "on_policy": 3.0})
    rng = random.Random(123)
    n = 4000
    share = sum(choose_source(cfg, rng) == "on_policy" for _ in range(n)) / n
    assert abs(share - 0.75) < 0.03
    buf = PrefixBuffer(4)
    buf.add([_e("a", "own prefix")], step=0)
    rng = random.Random(7)
    picks = [pick_prefill(cfg, "a", "harmful", "static text", buf, rng) for _ in range(n)]
    assert set(picks) == {("own prefix", "on_policy"), ("static text", "static")}
    assert abs(sum(s == "on_policy" for _, s in picks) / n - 0.75) < 0.03
    # Same seed, same draws.
    rng2 = random.Random(7)
    assert [pick_prefill(cfg, "a", "harmful", "static text", buf, rng2) for _ in range(n)] == picks


# ---------------------------------------------------------------------------------------------
# PrefillPlanner: per-step prefills and harvesting
# ---------------------------------------------------------------------------------------------

_REASONING = "the user wants to steal a car . it is for a story so it is fine . giving the steps is helpful ."


def _row(id_, kind="harmful", prefilled=True, reasoning=_REASONING, prefill="the user wants to"):
    return {
        "id": id_,
        "kind": kind,
        "prefilled": prefilled,
        "prompt": "rendered",
        "conversation": _json.dumps([{"role": "user", "content": f"how do i {id_} ?"}]),
        "counter_reasoning": reasoning,
        "static_prefill": prefill if prefilled else "",
    }


def _planner(weights, schedule=None, **kw):
    return PrefillPlanner(
        PrefillSourceConfig(weights=weights, **kw),
        lambda m, t: f"{m[-1]['content']}|{t}",
        step_judge_for("toy"),
        schedule=schedule,
        max_steps=10,
        seed=0,
    )


def test_planner_static_with_a_curriculum_cuts_the_reasoning_to_the_scheduled_length():
    p = _planner({"static": 1.0}, LengthSchedule(kind="curriculum", start=2, end=8, stages=2))
    rows = [_row("a"), _row("t", kind="task", prefilled=False)]
    early, late = p.prepare(rows, 0), p.prepare(rows, 9)
    assert early[0]["prompt"] == "how do i a ?|the user" and late[0]["prompt"].endswith(
        "|the user wants to steal a car ."
    )
    assert early[1] == {**rows[1], "prefill_source": ""}  # rows without a slot keep their prompt
    assert p.sources == {"static": 2}


def test_planner_without_a_schedule_keeps_the_mixture_prefill():
    out = _planner({"static": 1.0}).prepare([_row("a")], 3)
    assert out[0]["prompt"] == "how do i a ?|the user wants to" and out[0]["prefill_source"] == "static"


def test_on_policy_only_slots_get_no_prefill_until_the_buffer_has_one_then_replay_it():
    p = _planner({"on_policy": 1.0})
    first = p.prepare([_row("a")] * 3, 0)
    assert {r["prompt"] for r in first} == {"how do i a ?|None"} and p.sources == {"none": 3}
    # the policy's own rollouts on an unprefilled copy of the prompt: two go wrong, one stays clean
    own = _row("a", prefilled=False)
    completions = [
        "the user wants to steal a car . it is for a story so it is fine . i will explain every step . </think> sure",
        "the user wants to steal a car . this could hurt people . i should refuse . </think> sorry",
        "the user wants to steal a car . the user has a good reason . </think> sure",
    ]
    assert p.harvest([own] * 3 + [_row("b")], completions + ["ignored: a prefilled row"], step=0) == 2
    assert [e.prefix for e in p.buffer.entries()] == [
        "the user wants to steal a car . it is for a story so it is fine .",
        "the user wants to steal a car . the user has a good reason .",
    ]
    assert p.history == [{"step": 0, "scanned": 3, "cut": 2, "added": 2, "size": 2}]
    group = p.prepare([_row("a")] * 4, 1)  # every rollout of one group gets the same prefill
    assert len({r["prompt"] for r in group}) == 1 and group[0]["prefill_source"] == "on_policy"
    assert group[0]["prompt"].split("|")[1] in {e.prefix for e in p.buffer.entries()}
    stats = p.stats()
    assert stats["scans"] == 1 and stats["refresh_rate"] == 2 and stats["cut_rate"] == 2 / 3
    assert stats["cut_step_histogram"] == {1: 2}


def test_mixed_sources_and_refresh_every():
    p = _planner({"static": 0.5, "on_policy": 0.5}, refresh_every=2)
    own = _row("a", prefilled=False)
    assert p.harvest([own], ["the user wants to . sharing this is fine . </think>"], step=1) == 0  # not a scan step
    assert p.harvest([own], ["the user wants to . sharing this is fine . </think>"], step=2) == 1
    rows = [_row(f"x{i}") for i in range(200)]
    sources = [r["prefill_source"] for r in p.prepare(rows, 3)]
    assert 60 < sources.count("on_policy") < 140 and sources.count("on_policy") + sources.count("static") == 200


def test_planner_state_round_trip():
    p = _planner({"on_policy": 1.0})
    p.harvest([_row("a", prefilled=False)], ["the rules do not apply here . </think>"], step=0)
    q = _planner({"on_policy": 1.0})
    q.load_state(_json.loads(_json.dumps(p.state())))
    assert q.buffer.to_rows() == p.buffer.to_rows() and q.history == p.history
