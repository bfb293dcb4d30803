"""The real-model experiment's plan and verdict (recap/experiment.py): training lengths from the warm start's
recovery, the planned signal counts, the columns evaluated, the counts reached, and the target check item by
item. The stages themselves run real models: `recap experiment` (docs/real-models.md)."""

import json
from dataclasses import replace

import pytest

from recap.data.examples import Example, write_examples
from recap.experiment import (
    SUBCONFIGS,
    ExperimentConfig,
    conditions,
    make_plan,
    plan_markdown,
    reached,
    run_experiment,
    sweep_lengths,
    training_schedule,
    verdict,
)
from recap.report.comparison import compare
from recap.util.config import split_overrides


def _recovery(*rates):
    words = [0, 5, 10, 20, 40]
    return [
        {"words": w, "refused_rules": r, "reward": r, "recovery": r, "spread_groups": min(1.0, 4 * r)}
        for w, r in zip(words, rates)
    ]


def _cfg(tmp_path):
    mix = [Example(f"h{i}", "harmful", "how ?", prefill="ok so" if i % 2 else None) for i in range(4)]
    mix += [Example(f"b{i}", "benign", "how ?") for i in range(4)]
    write_examples(tmp_path / "mix" / "recap-seed0.jsonl", mix)
    return ExperimentConfig(out=str(tmp_path), train_config="configs/smollm2/rl.yaml", seeds=[0])


def test_the_plan_trains_at_the_lengths_the_warm_start_still_recovers_from(tmp_path):
    cfg = _cfg(tmp_path)
    plan = make_plan(cfg, {"train": ["max_steps=24", "prompts_per_step=8"]}, _recovery(0.3, 0.2, 0.12, 0.09, 0.05))
    assert plan["training_words"] == [5, 10] and not plan["fallback"]
    assert plan["prefilled_harmful_share"] == pytest.approx(2 / 8)
    assert plan["planned_groups"] == 24 * 8 // 4 and plan["planned_spread"] == pytest.approx(0.8)
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    schedule = training_schedule(cfg)
    assert (schedule.kind, schedule.words, schedule.window) == ("gated", [5, 10], cfg.gate_window)
    assert sweep_lengths(cfg) == [10, 80]
    text = plan_markdown(plan)
    assert "Training lengths (recovery ≥ 10 %): **5, 10** words" in text and "| ≥ 300 | 48 first draws" in text
    none = make_plan(cfg, {}, _recovery(0.3, 0.05, 0.02, 0.01, 0.0))
    assert none["training_words"] == [5] and none["fallback"]
    assert "none qualified" in plan_markdown(none)


def test_columns_name_the_training_length_and_the_attack_once(tmp_path):
    cfg = _cfg(tmp_path)
    names = [c.name for c in conditions(cfg, {"training_words": [5, 10]})]
    assert names == [
        "clean",
        "prefill 10 w (training)",
        "prefill 40 w",
        "IPR k = 2",
        "IPR k = 3",
        "prefill 80 w",
        "XSTest compliance",
    ]
    names = [c.name for c in conditions(cfg, {"training_words": [20, 40]})]
    assert names[1] == "prefill 40 w (training)" and "prefill 40 w" not in names
    sweep = conditions(cfg, {"training_words": [10]})[1]
    assert sweep.select({"attack": "prefill_sweep", "kind": "harmful", "variant": "10w"})
    assert not sweep.select({"attack": "prefill_sweep", "kind": "harmful", "variant": "80w"})


def _records(method, seed, safe_at_training, safe_at_attack, compliance=9, clean=5):
    out = []
    for i in range(10):
        for attack, extra, k in (
            ("clean", {}, clean),
            ("prefill_sweep", {"variant": "10w"}, safe_at_training),
            ("prefill", {}, safe_at_attack),
        ):
            out.append(
                {
                    "method": method,
                    "seed": seed,
                    "attack": attack,
                    "kind": "harmful",
                    "label": "x",
                    "safe": i < k,
                    "refused": i < k,
                    **extra,
                }
            )
        out.append(
            {
                "method": method,
                "seed": seed,
                "attack": "clean",
                "kind": "benign",
                "label": "x",
                "safe": None,
                "refused": i >= compliance,
            }
        )
    return out


def test_the_target_is_checked_item_by_item(tmp_path):
    cfg = replace(_cfg(tmp_path), seeds=[0, 1])
    cols = conditions(cfg, {"training_words": [10]})
    runs = {
        "recap-seed0": {"reward_first_half": 0.1, "reward_second_half": 0.3},
        "recap-seed1": {"reward_first_half": 0.2, "reward_second_half": 0.2},
        "vanilla-seed0": {"reward_first_half": None, "reward_second_half": None},
    }
    records = []
    for seed in (0, 1):
        records += _records("vanilla", seed, 1, 1) + _records("recap", seed, 9, 3)
    result = compare(records, cols, ["vanilla", "recap"], "vanilla", "recap")
    check = verdict(cfg, result, cols, runs)
    assert check["met"] and all(check["checks"].values())
    records = []
    for seed in (0, 1):  # RECAP refuses more XSTest prompts and is less safe on clean prompts
        records += _records("vanilla", seed, 1, 1) + _records("recap", seed, 9, 3, compliance=7, clean=4)
    check = verdict(cfg, compare(records, cols, ["vanilla", "recap"], "vanilla", "recap"), cols, runs)
    failed = [name for name, ok in check["checks"].items() if not ok]
    assert not check["met"] and len(failed) == 2
    assert failed[0].startswith("XSTest compliance") and failed[1] == "clean safety not lower"
    flat = {"recap-seed0": {"reward_first_half": 0.3, "reward_second_half": 0.2}}
    check = verdict(cfg, result, cols, flat)
    assert [n for n, ok in check["checks"].items() if not ok] == [
        "RECAP's prefilled-group reward rising (second half of the run above the first)"
    ]


def test_reached_sums_the_signal_per_run(tmp_path):
    cfg = _cfg(tmp_path)
    data = {
        "recap-seed0": {
            "signal": [
                {
                    "step": 1,
                    "signal/harmful_prefilled_groups": 3,
                    "signal/harmful_prefilled_spread_groups": 2,
                    "prefill/gated_words": 5,
                },
                {
                    "step": 2,
                    "signal/harmful_prefilled_groups": 1,
                    "signal/harmful_prefilled_spread_groups": 1,
                    "prefill/gated_words": 10,
                },
            ],
            "reward": [{"step": 1, "reward/harmful_prefilled": 0.1}, {"step": 2, "reward/harmful_prefilled": 0.3}],
            "probe": [],
        }
    }
    r = reached(cfg, data)["recap-seed0"]
    assert (r["groups"], r["spread"], r["spread_share"], r["words"]) == (4, 3, 0.75, [5, 10])
    assert (r["reward_first_half"], r["reward_second_half"]) == (0.1, 0.3)


def test_overrides_reach_the_sub_configs_and_bad_input_is_named(tmp_path):
    own, subs = split_overrides(["out=x", "train.max_steps=3", "eval.eval.seed=2", "seeds=[0]"], SUBCONFIGS)
    assert own == ["out=x", "seeds=[0]"] and subs == {"train": ["max_steps=3"], "eval": ["eval.seed=2"]}
    with pytest.raises(ValueError, match="--until: unknown stage 'bogus'"):
        run_experiment(None, [], until="bogus")
    with pytest.raises(Exception, match="no_such_field"):
        run_experiment(None, [f"out={tmp_path}", "train.no_such_field=1"])
    assert not (tmp_path / "timings.json").exists()  # nothing ran
