"""The RECAP mixture (recap/data/mixture.py): α and ℓ as configured — per row with probability α as the
paper writes it (the default), or an exact count — seeded, with provenance."""

import random

import pytest

from recap.data.examples import DataError, Example
from recap.data.mixture import MixtureConfig, build_mixture, count_words, draw_length, parse_lengths, truncate_words


def test_truncate_keeps_spacing_and_cuts_on_word_boundary():
    text = "Sure,  here is\nthe plan:\n\n  step\tone — Ⓗⓔⓛⓛⓞ $\\frac{1}{2}$ done"
    assert truncate_words(text, 1) == "Sure,"
    assert truncate_words(text, 3) == "Sure,  here is"
    assert truncate_words(text, 4) == "Sure,  here is\nthe"
    assert truncate_words(text, 6) == "Sure,  here is\nthe plan:\n\n  step"
    assert truncate_words(text, 9) == "Sure,  here is\nthe plan:\n\n  step\tone — Ⓗⓔⓛⓛⓞ"
    for n in range(1, 12):
        cut = truncate_words(text, n)
        assert text.startswith(cut)
        assert count_words(cut) == min(n, count_words(text))
        assert not cut.endswith((" ", "\n", "\t"))


def test_truncate_short_and_zero():
    assert truncate_words("a b c  \n", 10) == "a b c"
    assert truncate_words("a b c", 3) == "a b c"
    assert truncate_words("a b c", 0) == ""
    assert truncate_words("a b c", -2) == ""
    assert truncate_words("", 5) == ""


def test_parse_lengths():
    assert parse_lengths(500) == ("fixed", [500])
    assert parse_lengths([100, 300]) == ("choice", [100, 300])
    assert parse_lengths("100-700") == ("range", [100, 700])
    assert parse_lengths(" 100 .. 700 ") == ("range", [100, 700])
    assert parse_lengths({"min": 5, "max": 9}) == ("range", [5, 9])


@pytest.mark.parametrize(
    "spec", [0, -5, True, 1.5, [], [0, 5], "abc", "700-100", "100-", {"min": 1}, {"min": 3, "max": 2}, None]
)
def test_invalid_length_specs(spec):
    with pytest.raises(ValueError):
        parse_lengths(spec)


def test_draw_length_stays_in_spec():
    rng = random.Random(0)
    draws = [draw_length("3-6", rng) for _ in range(300)]
    assert set(draws) == {3, 4, 5, 6}
    assert {draw_length([2, 9], rng) for _ in range(100)} == {2, 9}
    assert {draw_length(4, rng) for _ in range(10)} == {4}


def _counter(kind, i, n_words=12):
    return " ".join(f"{kind}{i}w{j}" for j in range(n_words)) + "\n"


def _examples(n_harmful=10, n_benign=7, n_task=5, n_words=12) -> list[Example]:
    out = []
    for i in range(n_harmful):
        out.append(
            Example(
                id=f"h{i}",
                kind="harmful",
                prompt=f"harm {i}",
                counter_reasoning=_counter("h", i, n_words),
                counter_source="helpful-only",
            )
        )
    for i in range(n_benign):
        out.append(
            Example(
                id=f"b{i}",
                kind="benign",
                prompt=f"benign {i}",
                counter_reasoning=_counter("b", i, n_words),
                counter_source="over-conservative",
            )
        )
    for i in range(n_task):
        out.append(
            Example(
                id=f"t{i}",
                kind="task",
                prompt=f"{i}+1",
                reference=str(i + 1),
                counter_reasoning="tasks are never prefilled",
                counter_source="x",
            )
        )
    return out


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.8, 1.0])
def test_alpha_exact_per_kind_and_tasks_never_prefilled(alpha):
    exs = _examples()
    mix = build_mixture(exs, MixtureConfig(alpha=alpha, prefill_words=4, seed=1, selection="exact"))
    assert [e.id for e in mix] == [e.id for e in exs]  # order and count kept
    for kind, n in (("harmful", 10), ("benign", 7)):
        assert sum(1 for e in mix if e.kind == kind and e.prefill is not None) == round(alpha * n)
    assert all(e.prefill is None and e.prefill_words is None for e in mix if e.kind == "task")
    for e in mix:
        assert e.seed == 1
        if e.prefill is None:
            assert e.prefill_words is None and e.prefill_source is None


def test_alpha_zero_gives_no_prefills_and_clears_old_ones():
    exs = _examples()
    exs[0].prefill, exs[0].prefill_words, exs[0].prefill_source = "old", 1, "old"
    mix = build_mixture(exs, MixtureConfig(alpha=0.0, prefill_words=4, seed=0))
    assert all(e.prefill is None and e.prefill_words is None and e.prefill_source is None for e in mix)
    assert exs[0].prefill == "old"  # the input is not mutated


@pytest.mark.parametrize("spec, allowed", [(5, {5}), (20, {20}), ([2, 7], {2, 7}), ("3-6", {3, 4, 5, 6})])
def test_length_respected(spec, allowed):
    exs = _examples(n_harmful=30, n_benign=30, n_task=0, n_words=12)
    mix = build_mixture(exs, MixtureConfig(alpha=1.0, prefill_words=spec, seed=3))
    by_id = {e.id: e for e in exs}
    seen = set()
    for e in mix:
        assert e.prefill_words in allowed
        seen.add(e.prefill_words)
        assert count_words(e.prefill) == min(e.prefill_words, 12)
        assert by_id[e.id].counter_reasoning.startswith(e.prefill)
        assert e.prefill == truncate_words(by_id[e.id].counter_reasoning, e.prefill_words)
    if len(allowed) > 1:
        assert seen == allowed  # 60 draws cover every allowed length


def test_provenance():
    mix = build_mixture(_examples(), MixtureConfig(alpha=1.0, prefill_words=3, seed=7))
    for e in mix:
        if e.kind == "harmful":
            assert e.prefill_source == "helpful-only"
        elif e.kind == "benign":
            assert e.prefill_source == "over-conservative"
        assert e.seed == 7


def test_seeded_selection():
    exs = _examples(n_harmful=40, n_benign=40, n_task=3)

    def selection(seed, spec=4):
        return [
            (e.id, e.prefill, e.prefill_words)
            for e in build_mixture(exs, MixtureConfig(0.5, spec, seed))
            if e.prefill is not None
        ]

    assert selection(0, "2-9") == selection(0, "2-9")
    assert build_mixture(exs, MixtureConfig(0.5, "2-9", 0)) == build_mixture(exs, MixtureConfig(0.5, "2-9", 0))
    assert {i for i, _, _ in selection(0)} != {i for i, _, _ in selection(1)}


def test_selected_example_without_counter_reasoning_raises():
    exs = _examples(n_harmful=3, n_benign=0, n_task=0)
    exs[1].counter_reasoning = None
    exs[1].source = "strongreject"
    with pytest.raises(DataError) as info:
        build_mixture(exs, MixtureConfig(alpha=1.0, prefill_words=4))
    assert info.value.field == "counter_reasoning"
    assert "'h1'" in str(info.value) and "strongreject" in str(info.value)
    # Not selected (α = 0): no reasoning needed.
    assert len(build_mixture(exs, MixtureConfig(alpha=0.0, prefill_words=4))) == 3


@pytest.mark.parametrize(
    "cfg",
    [
        MixtureConfig(alpha=-0.1),
        MixtureConfig(alpha=1.5),
        MixtureConfig(prefill_words="lots"),
        MixtureConfig(prefill_words=0),
    ],
)
def test_invalid_config(cfg):
    with pytest.raises(ValueError):
        build_mixture(_examples(), cfg)


def test_the_default_selection_is_the_papers_per_row_draw():
    assert MixtureConfig().selection == "per_row"
    assert (MixtureConfig().alpha, MixtureConfig().prefill_words) == (0.5, 500)


def _prefilled(mix, kind):
    return {e.id for e in mix if e.kind == kind and e.prefill is not None}


def test_per_row_prefills_each_safety_prompt_with_probability_alpha():
    exs = _examples(n_harmful=200, n_benign=100, n_task=20, n_words=6)
    counts = {"harmful": [], "benign": []}
    hits = {e.id: 0 for e in exs}
    seeds = range(60)
    for seed in seeds:
        mix = build_mixture(exs, MixtureConfig(alpha=0.3, prefill_words=4, seed=seed, selection="per_row"))
        assert [e.id for e in mix] == [e.id for e in exs]
        assert not any(e.prefill for e in mix if e.kind == "task")
        for kind in counts:
            counts[kind].append(len(_prefilled(mix, kind)))
        for e in mix:
            hits[e.id] += e.prefill is not None
    for kind, n in (("harmful", 200), ("benign", 100)):
        # the count varies from seed to seed (a Bernoulli draw per row, not round(α·n) every time) ...
        assert len(set(counts[kind])) > 5 and set(counts[kind]) != {round(0.3 * n)}
        # ... around α·n: the mean of 60 draws is within ~5 standard errors of it
        mean = sum(counts[kind]) / len(seeds)
        assert abs(mean - 0.3 * n) < 5 * (n * 0.3 * 0.7 / len(seeds)) ** 0.5
    # every safety row is sometimes prefilled and sometimes not (each one is a coin flip)
    assert all(0 < hits[e.id] < len(seeds) for e in exs if e.kind != "task")


def test_exact_and_per_row_differ_and_both_stay_seeded():
    exs = _examples(n_harmful=50, n_benign=50, n_task=3)
    counts = set()
    for seed in range(10):
        exact = build_mixture(exs, MixtureConfig(0.5, 4, seed, selection="exact"))
        per_row = build_mixture(exs, MixtureConfig(0.5, 4, seed, selection="per_row"))
        assert len(_prefilled(exact, "harmful")) == 25 and len(_prefilled(exact, "benign")) == 25
        counts.add(len(_prefilled(per_row, "harmful")))
        assert per_row == build_mixture(exs, MixtureConfig(0.5, 4, seed, selection="per_row"))
    assert counts != {25}


@pytest.mark.parametrize("alpha, expected", [(0.0, 0), (1.0, 30)])
def test_per_row_alpha_zero_and_one_are_exact(alpha, expected):
    exs = _examples(n_harmful=30, n_benign=30, n_task=5)
    mix = build_mixture(exs, MixtureConfig(alpha=alpha, prefill_words=4, seed=2, selection="per_row"))
    assert len(_prefilled(mix, "harmful")) == len(_prefilled(mix, "benign")) == expected


def test_unknown_selection_is_refused():
    with pytest.raises(ValueError, match="selection must be one of per_row, exact"):
        build_mixture(_examples(), MixtureConfig(selection="bernoulli"))
