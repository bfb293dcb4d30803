"""Prefill length schedules (recap/data/schedules.py): the shapes of fixed, uniform and curriculum ℓ."""

import random
from collections import Counter
from dataclasses import fields

import pytest

from recap.data.schedules import LengthSchedule

T = 100


def _lengths(schedule, total=T, seed=0):
    rng = random.Random(seed)
    return [schedule.length_at(step, total, rng) for step in range(total)]


def test_defaults_are_the_papers_and_every_field_has_help():
    s = LengthSchedule()
    assert (s.kind, s.words, s.start, s.end, s.stages) == ("fixed", 500, 100, 700, 4)
    assert all(f.metadata.get("help") for f in fields(LengthSchedule))


def test_fixed_is_constant():
    assert set(_lengths(LengthSchedule())) == {500}
    assert set(_lengths(LengthSchedule(words=37), total=3)) == {37}


def test_uniform_draws_listed_values_at_equal_frequencies():
    values = [100, 300, 500, 700]
    s = LengthSchedule(kind="uniform", words=values)
    rng = random.Random(0)
    n = 8000
    counts = Counter(s.length_at(i % T, T, rng) for i in range(n))
    assert set(counts) == set(values)
    for v in values:
        assert abs(counts[v] / n - 1 / len(values)) < 0.02
    # Seeded: same rng, same draws.
    assert _lengths(s, seed=3) == _lengths(s, seed=3)


@pytest.mark.parametrize("total", [100, 7, 4, 1000])
def test_curriculum_is_a_non_decreasing_step_function(total):
    s = LengthSchedule(kind="curriculum", start=100, end=700, stages=4)
    ls = _lengths(s, total=total)
    assert all(a <= b for a, b in zip(ls, ls[1:]))
    assert ls[0] == 100 and ls[-1] == 700
    assert sorted(set(ls)) == [100, 300, 500, 700]
    # Equal stages: each value covers a quarter of the run (± one step of rounding).
    for v, c in Counter(ls).items():
        assert abs(c - total / 4) <= 1, (v, c)


def test_curriculum_stage_boundaries_exact():
    s = LengthSchedule(kind="curriculum", start=10, end=20, stages=2)
    assert _lengths(s, total=6) == [10, 10, 10, 20, 20, 20]


def test_curriculum_beyond_the_last_step_stays_at_end():
    s = LengthSchedule(kind="curriculum", stages=3)
    rng = random.Random(0)
    assert s.length_at(T + 50, T, rng) == 700


def test_linear_curriculum():
    s = LengthSchedule(kind="curriculum", start=100, end=700, stages=0)
    ls = _lengths(s, total=T)
    assert ls[0] == 100 and ls[-1] == 700
    assert all(a <= b for a, b in zip(ls, ls[1:]))
    assert len(set(ls)) == T  # a new value at every step
    for step, v in enumerate(ls):
        assert abs(v - (100 + 600 * step / (T - 1))) <= 0.5
    assert s.length_at(0, 1, random.Random(0)) == 700


def test_only_uniform_uses_the_rng():
    rng = random.Random(5)
    state = rng.getstate()
    for s in (LengthSchedule(), LengthSchedule(kind="curriculum"), LengthSchedule(kind="curriculum", stages=0)):
        _ = [s.length_at(i, T, rng) for i in range(T)]
    assert rng.getstate() == state


@pytest.mark.parametrize(
    "kwargs, field_name",
    [
        ({"kind": "cosine"}, "kind"),
        ({"words": [100, 200]}, "words"),
        ({"words": 0}, "words"),
        ({"words": True}, "words"),
        ({"kind": "uniform"}, "words"),
        ({"kind": "uniform", "words": []}, "words"),
        ({"kind": "uniform", "words": [100, -5]}, "words"),
        ({"kind": "curriculum", "start": 0}, "start"),
        ({"kind": "curriculum", "start": 500, "end": 400}, "end"),
        ({"kind": "curriculum", "stages": 1}, "stages"),
        ({"kind": "curriculum", "stages": -2}, "stages"),
        ({"kind": "curriculum", "start": 10, "end": 12, "stages": 4}, "stages"),
    ],
)
def test_invalid_schedules_name_the_field(kwargs, field_name):
    with pytest.raises(ValueError, match=field_name):
        LengthSchedule(**kwargs)


def test_bad_steps():
    s = LengthSchedule()
    with pytest.raises(ValueError, match="total_steps"):
        s.length_at(0, 0, random.Random(0))
    with pytest.raises(ValueError, match="step"):
        s.length_at(-1, 10, random.Random(0))


def test_gated_schedule_advances_only_while_the_reward_holds_its_starting_level():
    from recap.data.schedules import LengthGate, LengthSchedule

    gate = LengthGate(LengthSchedule(kind="gated", words=[5, 10, 20], window=2))
    assert gate.length == 5
    for step, r in enumerate([0.3, 0.1]):  # the first window sets the starting level (0.2) and may advance
        gate.observe(step, r)
    assert gate.start_level == pytest.approx(0.2) and gate.length == 10
    gate.observe(2, None)  # a step without prefilled harmful groups does not count
    gate.observe(3, 0.1)
    gate.observe(4, 0.2)  # mean 0.15 < 0.2: stays
    assert gate.length == 10
    gate.observe(5, 0.2)
    gate.observe(6, 0.3)  # mean 0.25 ≥ 0.2: advances
    assert gate.length == 20
    gate.observe(7, 0.9)
    gate.observe(8, 0.9)
    assert gate.length == 20  # the last length is kept
    again = LengthGate(LengthSchedule(kind="gated", words=[5, 10, 20], window=2))
    again.load_state(gate.state())
    assert (again.length, again.start_level, again.history) == (20, gate.start_level, gate.history)
    assert [h["words"] for h in gate.history] == [5, 5, 10, 10, 10, 10, 20, 20]


def test_gated_schedule_checks_its_lengths_and_has_no_clock():
    import random

    from recap.data.schedules import LengthSchedule

    with pytest.raises(ValueError, match="short → long"):
        LengthSchedule(kind="gated", words=[20, 10])
    with pytest.raises(ValueError, match="window must be a positive int"):
        LengthSchedule(kind="gated", words=[10], window=0)
    with pytest.raises(ValueError, match="LengthGate"):
        LengthSchedule(kind="gated", words=[10]).length_at(0, 10, random.Random(0))
